#!/usr/bin/env bash
# headstream (f32 and int8) next to its peers — ONNX Runtime fp32 and int8 (dynamic
# quantization, ../shared/tools/quantize_onnx.py) and sentence-transformers on PyTorch
# (../shared/tools/peer_bench.py) — on the same texts, batch sizes and threads, in one run:
# engines alternate within each round, figures are medians over the rounds. Then the
# roofline (sgemm rate on headstream's kernels, and OpenBLAS's through numpy), the cost of ten
# heads, and a pipeline end to end through a local nats-server.
#
# Writes benches/results/: runs.jsonl (every run), table.md (the ratio table) and
# throughput.svg (sentences/s against batch size). Needs a release build (`cargo build
# --release`), `cargo plugins`, the model (`headstream model fetch`), the peer environment
# (../shared/tools/SETUP.md) and nats-server (the tests fetch it into target/tools/).
# Run it on a quiet machine: a build beside it skews everything.
#
#   benches/compare.sh [ROUNDS] [LIMIT] [THREADS] [BATCH...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}; LIMIT=${2:-500}; THREADS=${3:-2}
shift $(( $# < 3 ? $# : 3 ))
BATCHES=("$@"); [ ${#BATCHES[@]} -gt 0 ] || BATCHES=(1 8 32 128)
SHARED=${HEADSTREAM_SHARED:-../shared}
FILES=("$SHARED/datasets/sst2/test.jsonl" "$SHARED/datasets/ag_news/test.jsonl")
PY=${PEER_PYTHON:-$HOME/.cache/headstream-peers/env/bin/python}
PEER=${PEER_BENCH:-$SHARED/tools/peer_bench.py}
ONNX_INT8=${ONNX_INT8:-$HOME/.cache/headstream-peers/model/onnx/model-int8.onnx}
BIN=${HEADSTREAM_BIN:-${CARGO_TARGET_DIR:-target}/release/headstream}
NATS=${NATS_SERVER:-$(ls target/tools/nats-server-*/nats-server 2>/dev/null | head -1)}
OUT=benches/results; mkdir -p "$OUT"; RUNS="$OUT/runs.jsonl"; : > "$RUNS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Tags each JSON line with the file's path and the round.
tag() { python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), file=sys.argv[1], round=int(sys.argv[2])))) for l in sys.stdin if l.strip().startswith("{")]' "$1" "$2"; }
for r in $(seq "$ROUNDS"); do
  for f in "${FILES[@]}"; do
    for b in "${BATCHES[@]}"; do
      # Batches of one are slow for every engine: fewer texts.
      n=$LIMIT; [ "$b" = 1 ] && n=$(( LIMIT < 200 ? LIMIT : 200 ))
      for precision in f32 int8; do
        "$BIN" --threads "$THREADS" bench encoder --precision "$precision" --input "$f" --batch-size "$b" --limit "$n" 2>/dev/null | tag "$f" "$r" >> "$RUNS"
      done
      for engine in ort st; do
        "$PY" "$PEER" "$f" --engine "$engine" --batch-size "$b" --threads "$THREADS" --limit "$n" --check 0 2>/dev/null | tag "$f" "$r" >> "$RUNS"
      done
      if [ -f "$ONNX_INT8" ]; then
        "$PY" "$PEER" "$f" --engine ort --onnx "$ONNX_INT8" --batch-size "$b" --threads "$THREADS" --limit "$n" --check 0 2>/dev/null \
          | python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), engine="ort-int8"))) for l in sys.stdin if l.strip().startswith("{")]' \
          | tag "$f" "$r" >> "$RUNS"
      fi
      tail -5 "$RUNS" | python3 -c 'import json,sys; print(" | ".join("%s %s b%s %.1f/s" % (d["engine"], d["input"], d["batch_size"], d["sentences_per_s"]) for d in map(json.loads, sys.stdin)))'
    done
  done
done
# Roofline: the encoder's GFLOP/s at batch 32 against sgemm on its own kernels (and OpenBLAS).
"$BIN" --threads "$THREADS" bench encoder --input "${FILES[0]}" --batch-size 32 --limit "$LIMIT" --roofline 2>/dev/null \
  | python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), bench="roofline"))) for l in sys.stdin if l.strip()]' >> "$RUNS"
OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS "$PY" - "$THREADS" >> "$RUNS" <<'PY'
import json, sys, time
import numpy as np
a = np.random.rand(2048, 2048).astype(np.float32); b = np.random.rand(2048, 2048).astype(np.float32)
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(10))
print(json.dumps({"bench": "openblas_sgemm", "threads": int(sys.argv[1]), "gflops": round(2 * 2048**3 / best / 1e9, 1)}))
PY
"$BIN" --threads "$THREADS" bench heads --input "${FILES[0]}" 2>/dev/null >> "$RUNS"
if [ -x "$NATS" ]; then
  store=$(mktemp -d); port=$(( 20000 + RANDOM % 20000 ))
  "$NATS" -js -sd "$store" -a 127.0.0.1 -p "$port" >/dev/null 2>&1 & nats_pid=$!
  trap 'kill $nats_pid 2>/dev/null; rm -rf "$store"' EXIT
  sleep 1
  for f in "${FILES[@]}"; do
    "$BIN" --threads "$THREADS" bench pipeline --input "$f" --nats "nats://127.0.0.1:$port" 2>/dev/null | tag "$f" 1 >> "$RUNS"
  done
else
  echo "no nats-server (set NATS_SERVER, or run the NATS tests once): skipping bench pipeline" >&2
fi
python3 benches/report.py "$RUNS" "$OUT"
