#!/usr/bin/env bash
# Before/after for `headstream bench pipeline`: two builds alternate on the same texts, one
# local nats-server, each round A then B then B then A (so drift and warm-up fall on both);
# prints every run and, per build and input, the medians (and ranges) of the pipeline's share
# of the bare encoder's throughput, latency p50/p99, cold start and host RSS.
#
#   scripts/ab-bench-pipeline.sh BIN_A BIN_B [ROUNDS] [MESSAGES] [FILE...]
#
# Default files: SST-2 (short texts) and AG News (longer) from ../shared/datasets. Needs
# `cargo plugins`, the model and nats-server (the tests fetch it into target/tools/). Run it
# on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; ROUNDS=${3:-3}; MESSAGES=${4:-1000}
shift $(( $# < 4 ? $# : 4 ))
SHARED=${HEADSTREAM_SHARED:-../shared}
FILES=("$@"); [ ${#FILES[@]} -gt 0 ] || FILES=("$SHARED/datasets/sst2/test.jsonl" "$SHARED/datasets/ag_news/test.jsonl")
NATS=${NATS_SERVER:-$(ls target/tools/nats-server-*/nats-server 2>/dev/null | head -1)}
[ -x "$NATS" ] || { echo "no nats-server: set NATS_SERVER or run the NATS tests once" >&2; exit 2; }
RUNS=$(mktemp); store=$(mktemp -d); port=$(( 20000 + RANDOM % 20000 ))
"$NATS" -js -sd "$store" -a 127.0.0.1 -p "$port" >/dev/null 2>&1 & nats_pid=$!
trap 'kill $nats_pid 2>/dev/null; rm -rf "$store" "$RUNS"' EXIT
sleep 1
one() { # build-label binary file round
  "$2" bench pipeline --input "$3" --nats "nats://127.0.0.1:$port" --messages "$MESSAGES" 2>/dev/null \
    | python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), build=sys.argv[1], file=sys.argv[2], round=int(sys.argv[3])))) for l in sys.stdin if l.strip().startswith("{")]' "$1" "$3" "$4" \
    | tee -a "$RUNS"
}
for r in $(seq "$ROUNDS"); do
  for f in "${FILES[@]}"; do
    if [ $(( r % 2 )) = 1 ]; then one A "$A" "$f" "$r"; one B "$B" "$f" "$r"
    else one B "$B" "$f" "$r"; one A "$A" "$f" "$r"; fi
  done
done
python3 - "$RUNS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def pick(d, path):
    for k in path.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d
for f in sorted({r["file"] for r in runs}):
    for build in ("A", "B"):
        rs = [r for r in runs if r["file"] == f and r["build"] == build]
        if not rs: continue
        def col(path):
            xs = [x for x in (pick(r, path) for r in rs) if isinstance(x, (int, float))]
            return (statistics.median(xs), min(xs), max(xs)) if xs else None
        print(f"{build} {f.split('/')[-2]}: " + ", ".join(
            f"{name} median {v[0]:.3g} (range {v[1]:.3g}-{v[2]:.3g})"
            for name, v in (("share of encoder", col("pipeline_share_of_encoder")),
                            ("pipeline/s", col("pipeline_sentences_per_s")),
                            ("p50 ms", col("latency_ms.p50")),
                            ("p99 ms", col("latency_ms.p99")),
                            ("cold start s", col("cold_start_s")),
                            ("rss MiB", col("host_rss_mib"))) if v))
PY
