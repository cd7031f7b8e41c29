// Unit tests of the JavaScript SDK's pure parts: `npm test` in plugins/sdk-js.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as hs from "../headstream.js";

function safetensors(tensors, metadata) {
  const header = metadata ? { __metadata__: metadata } : {};
  const chunks = [];
  let offset = 0;
  for (const [name, shape, values] of tensors) {
    const data = new Uint8Array(new Float32Array(values).buffer);
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + data.length] };
    chunks.push(data);
    offset += data.length;
  }
  const text = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + text.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  let at = 8 + text.length;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

test("softmax, topK and classify", () => {
  const p = hs.softmax([1, 2, 3]);
  assert.ok(Math.abs(p.reduce((a, b) => a + b) - 1) < 1e-9);
  assert.deepEqual(hs.topK(p, 2), [2, 1]);
  const c = hs.classify(["a", "b", "c"], [1, 2, 3]);
  assert.equal(c.tag, "classification");
  assert.equal(c.val.label, "c");
  assert.equal(c.val.scores.length, 3);
  assert.ok(!hs.softmax([1000, 1001]).some(Number.isNaN));
});

test("Dense from safetensors, and what is wrong with a bad one", () => {
  const layer = hs.Dense.fromSafetensors(safetensors([["weight", [2, 3], [1, 0, 0, 0, 1, 1]], ["bias", [2], [0.5, -1]]]));
  assert.deepEqual([layer.inputs, layer.outputs], [3, 2]);
  assert.deepEqual(layer.forward(new Float32Array([2, 3, 4])), [2.5, 6]);
  assert.equal(layer.forward([1]), null);
  assert.throws(() => hs.Dense.fromSafetensors(new Uint8Array(3)), /shorter than its header/);
  assert.throws(() => hs.Dense.fromSafetensors(safetensors([["bias", [1], [0]]])), /no tensor `weight`/);
});

test("byte spans and BIO decoding over UTF-8", () => {
  const text = "Zoë Ada met Babbage in London";
  const span = (s, e) => hs.byteSpan(text, s, e);
  assert.deepEqual(span(0, 3), [0, 4]);
  const [a, b] = [span(0, 3), span(4, 7)];
  const tokens = [
    { tag: "B-PER", start: a[0], end: a[1], score: 0.9 },
    { tag: "I-PER", start: b[0], end: b[1], score: 0.7 },
    { tag: "O", ...Object.fromEntries([["start", 0], ["end", 0]]), score: 1 },
    { tag: "I-LOC", start: span(23, 29)[0], end: span(23, 29)[1], score: 0.6 },
  ];
  const entities = hs.decodeBio(text, tokens);
  assert.deepEqual(entities.map((e) => [e.label, e.text]), [["PER", "Zoë Ada"], ["LOC", "London"]]);
  assert.ok(Math.abs(entities[0].score - 0.8) < 1e-9);
});

test("viterbi never starts or switches type with an inside tag", () => {
  const tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"];
  const names = (path) => path.map((k) => tags[k]);
  // Greedy would say I-PER, I-PER, O, I-LOC: invalid at the start and after O.
  const probs = [
    [0.1, 0.35, 0.45, 0.05, 0.05],
    [0.1, 0.1, 0.7, 0.05, 0.05],
    [0.8, 0.05, 0.05, 0.05, 0.05],
    [0.2, 0.05, 0.05, 0.3, 0.4],
  ];
  assert.deepEqual(names(hs.viterbiBio(tags, probs)), ["B-PER", "I-PER", "O", "B-LOC"]);
  assert.deepEqual(names(hs.viterbiBio(tags, [[0, 1, 0, 0, 0], [0.1, 0, 0, 0, 0.9]])), ["B-PER", "O"]);
  const valid = [
    [0.1, 0.8, 0.05, 0.03, 0.02],
    [0.1, 0.1, 0.7, 0.05, 0.05],
    [0.9, 0.02, 0.03, 0.03, 0.02],
  ];
  assert.deepEqual(hs.viterbiBio(tags, valid), [1, 2, 0]);
  assert.deepEqual(hs.viterbiBio(tags, []), []);
  assert.deepEqual(hs.viterbiBio([], valid), []);
});

test("config and assets name what is missing", () => {
  const c = new hs.Config('{"threshold": 0.5}');
  assert.equal(c.get("threshold"), 0.5);
  assert.equal(c.get("absent", 3), 3);
  assert.throws(() => c.require("nope"), /missing `nope`/);
  assert.throws(() => new hs.Config("[1]"), /JSON object/);
  assert.deepEqual(new hs.Config("null").values, {});
  assert.throws(() => new hs.Assets([]).require("weights"), hs.MissingAsset);
});

test("answers that cannot be sent fail their text, not the batch", () => {
  class Odd extends hs.Head {
    static describe() {
      return hs.describe("odd", "0.1.0", "other");
    }
    runOne(item) {
      if (item.text === "nothing") return undefined;
      if (item.text === "bad") throw new hs.InvalidInput("bad text");
      return { ok: true };
    }
  }
  const head = hs.exportHead(Odd);
  head.configure("{}", []);
  const out = head.run([{ text: "fine" }, { text: "nothing" }, { text: "bad" }]);
  assert.deepEqual(out[0], { tag: "ok", val: { tag: "json", val: '{"ok":true}' } });
  assert.equal(out[1].tag, "err");
  assert.equal(out[2].val.tag, "invalid-input");
});

test("a head over layers answers its inputs and gets its layers", () => {
  const weights = safetensors([["weight", [2, 4], [1, 0, 0, 0, 0, 0, 0, 1]], ["bias", [2], [0, 0]]], { pooled_layers: "5,6" });
  assert.deepEqual(hs.safetensorsMetadata(weights), { pooled_layers: "5,6" });
  assert.deepEqual(hs.trainedInputs(weights), { pooledLayers: [5, 6], tokenLayers: [] });
  assert.deepEqual(hs.trainedInputs(safetensors([["bias", [1], [0]]])), hs.noLayers());
  assert.throws(() => hs.trainedInputs(safetensors([], { pooled_layers: "5,six" })), /"5,six" is not a list of layers/);
  assert.throws(() => hs.safetensorsMetadata(safetensors([], { pooled_layers: [5] })), /map names to strings/);
  assert.deepEqual([...hs.concat([new Float32Array([1, 2]), [3]])], [1, 2, 3]);

  let seen;
  class Probe extends hs.Head {
    static describe() {
      return hs.describe("probe", "1.0.0", "classify");
    }
    constructor(config, assets) {
      super();
      this.layer = hs.Dense.fromSafetensors(assets.require("weights"));
      this.wanted = hs.trainedInputs(assets.require("weights"));
    }
    inputs() {
      return this.wanted;
    }
    runWith(batch, layers) {
      seen = layers;
      return layers.map((s) => hs.classify(["first", "last"], this.layer.forward(hs.concat(s.pooled))));
    }
  }
  const head = hs.exportHead(Probe);
  assert.deepEqual(head.configure("{}", [{ name: "weights", data: weights }]), { pooledLayers: [5, 6], tokenLayers: [] });
  const states = [{ pooled: [new Float32Array([3, 0]), new Float32Array([0, 1])], tokens: [] }];
  const [answer] = head.run([{ id: "t1", text: "text" }], states);
  assert.equal(answer.val.val.label, "first");
  assert.equal(seen, states);

  // A head that reads no layer keeps `runOne` and answers no inputs.
  const plain = hs.exportHead(
    class extends hs.Head {
      static describe() {
        return hs.describe("plain", "1.0.0", "other");
      }
      runOne(item) {
        return { text: item.text };
      }
    },
  );
  assert.deepEqual(plain.configure("{}", []), hs.noLayers());
  assert.deepEqual(plain.run([{ text: "hi" }], [{ pooled: [], tokens: [] }])[0], { tag: "ok", val: { tag: "json", val: '{"text":"hi"}' } });

  class Wrong extends Probe {
    inputs() {
      return [5, 6];
    }
  }
  assert.throws(() => hs.exportHead(Wrong).configure("{}", [{ name: "weights", data: weights }]), (e) => e.payload?.tag === "invalid" && /inputs\(\) must return/.test(e.message));
});
