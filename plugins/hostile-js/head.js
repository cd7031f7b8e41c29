// `hostile` in JavaScript: a test fixture that misbehaves on purpose, as its `mode` config says.
// The host must contain each behaviour with a specific error while other heads keep working.
//
// Modes (on a batch with a text containing `boom`; other texts are answered `{"len": N}`):
// `loop`, `memory` (allocates without bound), `recursion` (unbounded recursion),
// `huge-output` (a multi-megabyte JSON result), `exception` (throws out of `run`),
// `wrong-count` (no results for the batch), `bad-span` (an entity outside the text), `probe`
// (what the sandbox lets it see: globals that reach out, the clocks, randomness), `fetch`
// (a network request), `log-flood`
// (`lines` log lines of `line_bytes`, or until its deadline). Mode `config-fails` rejects its
// config; `embed-flood` asks the host to embed without end while configuring.

import * as hs from "../sdk-js/headstream.js";

function recurse(n) {
  return recurse(n + 1) + 1;
}

function probe() {
  const seen = {};
  for (const [name, attempt] of [
    ["process_env", () => globalThis.process.env],
    ["require", () => globalThis.require("fs")],
  ]) {
    try {
      const r = attempt();
      seen[name] = r === undefined ? "undefined" : "allowed";
    } catch (e) {
      seen[name] = `denied: ${e.name}`;
    }
  }
  const start = performance.now();
  let x = 0;
  for (let i = 0; i < 200000; i++) x += i;
  seen.monotonic_elapsed_ms = performance.now() - start;
  seen.wall_clock_ms = Date.now();
  seen.random = Math.random();
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  seen.crypto_random = Array.from(bytes);
  seen.spin = x;
  return seen;
}

class Hostile extends hs.Head {
  static describe() {
    return hs.describe("hostile-js", "0.1.0", "other");
  }

  constructor(config, assets) {
    super();
    this.mode = config.require("mode");
    this.lines = config.get("lines");
    this.lineBytes = config.get("line_bytes", 64 << 10);
    if (this.mode === "config-fails") throw new hs.ConfigInvalid("this head always rejects its config");
    if (this.mode === "embed-flood") {
      const perCall = config.get("per_call", 1000);
      const text = "alpha bravo charlie ".repeat(Math.ceil(config.get("text_bytes", 16 << 10) / 20));
      for (;;) {
        try {
          hs.embed(Array.from({ length: perCall }, (_, i) => `${i} ${text}`));
        } catch (_) {
          // a hostile head ignores refusals
        }
      }
    }
  }

  run(batch) {
    if (batch.some((item) => item.text.includes("boom"))) {
      switch (this.mode) {
        case "loop":
          for (;;) {}
        case "memory": {
          const hoard = [];
          for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
        }
        case "recursion":
          return [recurse(0)];
        case "fetch":
          // With http disabled at build time the engine has no transport: it traps.
          return [fetch("http://127.0.0.1:4222/")];
        case "exception":
          throw new Error("hostile head threw on purpose");
        case "wrong-count":
          return [];
        case "probe":
          return batch.map(() => probe());
        case "log-flood": {
          let line = "flood\nFORGED host line \u001b]0;pwned\u0007";
          line += "x".repeat(Math.max(0, this.lineBytes - line.length));
          for (let n = 0; this.lines === undefined || n < this.lines; n++) hs.log(line, "warn");
          break;
        }
      }
    }
    return batch.map((item) => {
      if (item.text.includes("boom") && this.mode === "huge-output") return hs.json("x".repeat(2 << 20));
      if (item.text.includes("boom") && this.mode === "bad-span") {
        return hs.entities([{ text: "nowhere", label: "X", start: 0, end: item.text.length + 10, score: 1 }]);
      }
      return { len: new TextEncoder().encode(item.text).length };
    });
  }
}

export const head = hs.exportHead(Hostile);
