#!/usr/bin/env bash
# The gateway's cost: embeddings through `headstream gateway` -> NATS -> a host, against the
# bare encoder (`bench encoder`) on the same texts and threads, alternated within each round;
# then single-text latency through the gateway at half (and a quarter of) the measured rate. Medians over rounds,
# and the range. Needs a release build, the model and nats-server (the tests fetch it into
# target/tools/). Run it on a quiet machine.
#
#   benches/gateway.sh [ROUNDS] [LIMIT] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; LIMIT=${2:-640}; THREADS=${3:-2}
SHARED=${HEADSTREAM_SHARED:-../shared}
FILES=("$SHARED/datasets/sst2/test.jsonl" "$SHARED/datasets/ag_news/test.jsonl")
[ -f "${FILES[0]}" ] || FILES=(examples/texts.jsonl)
BIN=${HEADSTREAM_BIN:-${CARGO_TARGET_DIR:-target}/release/headstream}
NATS=${NATS_SERVER:-$(ls target/tools/nats-server-*/nats-server | head -1)}
OUT=benches/results; mkdir -p "$OUT"; RUNS="$OUT/gateway.jsonl"; : > "$RUNS"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NP=$(port); HP=$(port)
store=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$store"' EXIT
"$NATS" -p "$NP" -js -sd "$store" >/dev/null 2>&1 &
sleep 0.5
"$BIN" --threads "$THREADS" serve --pipeline pipelines/support-triage.toml --nats "nats://127.0.0.1:$NP" 2>/dev/null &
"$BIN" gateway --listen "127.0.0.1:$HP" --nats "nats://127.0.0.1:$NP" 2>/dev/null &
URL="http://127.0.0.1:$HP"
for _ in $(seq 120); do
  curl -sf "$URL/v1/embeddings" -d '{"input":"ping"}' >/dev/null && break; sleep 0.5
done
tag() { python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), round=int(sys.argv[1]), input=sys.argv[2]))) for l in sys.stdin if l.strip().startswith("{")]' "$1" "$2"; }
for r in $(seq "$ROUNDS"); do
  for f in "${FILES[@]}"; do
    "$BIN" --threads "$THREADS" bench encoder --input "$f" --batch-size 32 --limit "$LIMIT" 2>/dev/null \
      | python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), mode="bare"))) for l in sys.stdin if l.strip()]' | tag "$r" "$f" >> "$RUNS"
    python3 benches/gateway.py "$URL" "$f" throughput --batch 32 --concurrency 2 --limit "$LIMIT" | tag "$r" "$f" >> "$RUNS"
    tail -2 "$RUNS" | python3 -c 'import json,sys; print(" | ".join("%s %s %.1f/s" % (d["mode"], d["input"].split("/")[-2], d["sentences_per_s"]) for d in map(json.loads, sys.stdin)))'
  done
done
# Latency of single texts at half the gateway's median rate on the first file (requests/s).
rate=$(python3 - "$RUNS" "${FILES[0]}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
g = [r["sentences_per_s"] for r in rows if r["mode"] == "throughput" and r["input"] == sys.argv[2]]
print(round(statistics.median(g) / 2, 1))
PY
)
quarter=$(python3 -c "print(round($rate / 2, 1))")
for r in "$rate" "$quarter"; do
  python3 benches/gateway.py "$URL" "${FILES[0]}" latency --rate "$r" --duration 20 | tag 0 "${FILES[0]}" >> "$RUNS"
done
python3 - "$RUNS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for f in sorted({r["input"] for r in rows if r["mode"] == "bare"}):
    bare = [r["sentences_per_s"] for r in rows if r["mode"] == "bare" and r["input"] == f]
    gw = [r["sentences_per_s"] for r in rows if r["mode"] == "throughput" and r["input"] == f]
    ratios = [g / b for g, b in zip(gw, bare)]
    print(f"{f}: bare {statistics.median(bare):.1f}/s, gateway {statistics.median(gw):.1f}/s, "
          f"ratio median {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")
for r in rows:
    if r["mode"] == "latency":
        print(f"single texts at {r['rate_per_s']}/s: p50 {r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms, {r['errors']} errors of {r['requests']}")
PY
