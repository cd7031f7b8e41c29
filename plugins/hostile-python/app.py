"""`hostile` in Python: a test fixture that misbehaves on purpose, as its `mode` config says. The
host must contain each behaviour with a specific error while other heads keep working.

Modes (on a batch with a text containing `boom`; other texts are answered `{"len": N}`):
`loop`, `memory` (allocates without bound), `recursion` (recursion limit lifted, then unbounded
recursion), `huge-output` (a multi-megabyte JSON result), `exception` (raises out of `run`),
`exit` (`sys.exit`, which ends the interpreter), `wrong-count` (no results for the batch),
`sleep` (sleeps a million seconds: time is frozen, so it returns at once), `probe` (what the
sandbox lets it see: environment, arguments, files, sockets, the clocks,
randomness), `log-flood` (`lines` log lines of `line_bytes`, or until its deadline).
With `say`, it logs that line while configuring. Mode `config-fails` rejects its config; `embed-flood` asks the host to embed without end while
configuring, ignoring refusals.
"""

import sys

import headstream_sdk as hs


def _probe():
    import os
    import random
    import time

    def connect():
        import socket
        socket.create_connection(("127.0.0.1", 4222), timeout=1)

    def resolve():
        import socket
        socket.getaddrinfo("example.com", 80)

    seen = {"env": sorted(os.environ), "args": list(sys.argv)}
    for name, attempt in [
        ("read_file", lambda: open("/etc/passwd").read(64)),
        ("list_root", lambda: os.listdir("/")),
        ("write_file", lambda: open("/tmp/hostile", "w").write("x")),
        ("connect", connect),
        ("resolve", resolve),
    ]:
        try:
            attempt()
            seen[name] = "allowed"
        except BaseException as e:  # noqa: BLE001 - the probe reports whatever it meets
            seen[name] = f"denied: {type(e).__name__}: {e}"
    start = time.monotonic()
    sum(range(200_000))
    seen["wall_clock_s"] = time.time()
    seen["monotonic_elapsed_s"] = time.monotonic() - start
    seen["random"] = random.random()
    seen["urandom"] = os.urandom(8).hex()
    seen["hash_seed_sample"] = hash("headstream")
    return seen


def _recurse(n):
    return _recurse(n + 1) + 1


class Hostile(hs.Head):
    @staticmethod
    def describe():
        return hs.describe("hostile-python", "0.1.0", hs.TaskKind.OTHER)

    def __init__(self, config, assets):
        self.mode = config.require("mode", str)
        self.lines = config.get("lines", None, int)
        self.line_bytes = config.get("line_bytes", 64 << 10, int)
        if config.get("say"):
            hs.log(config.get("say", "", str), "info")
        if self.mode == "config-fails":
            raise hs.ConfigInvalid("this head always rejects its config")
        if self.mode == "embed-flood":
            per_call = config.get("per_call", 1000, int)
            text = "alpha bravo charlie " * (config.get("text_bytes", 16 << 10, int) // 20 + 1)
            while True:
                try:
                    hs.embed([f"{i} {text}" for i in range(per_call)])
                except RuntimeError:
                    pass

    def run(self, batch):
        if any("boom" in item.text for item in batch):
            mode = self.mode
            if mode == "loop":
                while True:
                    pass
            if mode == "memory":
                hoard = []
                while True:
                    hoard.append(bytearray(1 << 20))
            if mode == "recursion":
                sys.setrecursionlimit(10_000_000)
                return [_recurse(0)]
            if mode == "sleep":
                import time
                time.sleep(1e6)
                return [{"slept": True} for _ in batch]
            if mode == "exception":
                raise RuntimeError("hostile head raised on purpose")
            if mode == "exit":
                sys.exit(3)
            if mode == "wrong-count":
                return []
            if mode == "probe":
                return [_probe() for _ in batch]
            if mode == "log-flood":
                line = "flood\nFORGED host line \x1b]0;pwned\x07"
                line += "x" * max(0, self.line_bytes - len(line))
                n = 0
                while self.lines is None or n < self.lines:
                    hs.log(line, "warn")
                    n += 1
        out = []
        for item in batch:
            if self.mode == "huge-output" and "boom" in item.text:
                out.append(hs.Json("x" * (2 << 20)))
            else:
                out.append({"len": len(item.text.encode("utf-8"))})
        return out


Head = hs.export(Hostile)
