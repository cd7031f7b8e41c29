#!/usr/bin/env bash
# Encoder throughput side by side with the peers (ONNX Runtime, sentence-transformers on PyTorch),
# alternating engines, same texts, same thread count. Prints one JSON line per run and a
# summary of medians. Needs the peer environment from ../shared/tools/SETUP.md and a release
# build (`cargo build --release`). Run it on a quiet machine: a build beside it skews everything.
#
#   scripts/bench_encoder_vs_peers.sh [ROUNDS] [LIMIT] [BATCH] [THREADS] -- FILE...
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}; LIMIT=${2:-500}; BATCH=${3:-32}; THREADS=${4:-2}
shift $(( $# < 4 ? $# : 4 )); [ "${1:-}" = "--" ] && shift
FILES=("$@")
[ ${#FILES[@]} -gt 0 ] || FILES=(../shared/datasets/sst2/test.jsonl ../shared/datasets/ag_news/test.jsonl)
PY=${PEER_PYTHON:-$HOME/.cache/headstream-peers/env/bin/python}
PEER=${PEER_BENCH:-../shared/tools/peer_bench.py}
BIN=${HEADSTREAM_BIN:-target/release/headstream}
OUT=${BENCH_OUT:-$(mktemp -t headstream-bench.XXXXXX.jsonl)}
: > "$OUT"
# Each output line is tagged with the file's path ("file"): peer_bench.py reports only the name.
tag() { python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), file=sys.argv[1]))) for l in sys.stdin if l.strip()]' "$1"; }
for f in "${FILES[@]}"; do
  for r in $(seq "$ROUNDS"); do
    "$BIN" --threads "$THREADS" bench encoder --input "$f" --batch-size "$BATCH" --limit "$LIMIT" 2>/dev/null | tag "$f" | tee -a "$OUT"
    for engine in ort st; do
      "$PY" "$PEER" "$f" --engine "$engine" --batch-size "$BATCH" --threads "$THREADS" --limit "$LIMIT" --check 0 2>/dev/null | tag "$f" | tee -a "$OUT"
    done
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in runs:
    by.setdefault(r["file"], {}).setdefault(r["engine"], []).append(r["sentences_per_s"])
print("\nmedian sentences/s (runs)")
for inp, engines in by.items():
    med = {e: statistics.median(v) for e, v in engines.items()}
    hs = med.get("headstream")
    line = ", ".join(f"{e} {m:.1f} ({len(engines[e])})" for e, m in med.items())
    ratios = ", ".join(f"headstream/{e} {hs / m:.2f}x" for e, m in med.items() if e != "headstream" and hs)
    print(f"{inp}: {line}; {ratios}")
PY
