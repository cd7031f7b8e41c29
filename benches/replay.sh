#!/usr/bin/env bash
# Replay at the cost of the heads: N messages (default 10,000 real texts: SST-2, AG News and
# TREC test splits) go through a storing pipeline (three shipped heads) on a live host while a
# JetStream stream retains them; then the host stops and `headstream replay` runs the pipeline
# over the stream twice, alternated: from the embedding store (heads only) and re-encoding
# everything (--no-store). Prints both wall times and their ratio, the bytes stored per
# message (from the server's monitoring endpoint), and how the two runs' results compare.
# Needs a release build, the model, nats-server (the tests fetch it into target/tools/) and
# ../shared. Run it on a quiet machine.
#
#   benches/replay.sh [N] [ROUNDS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}; ROUNDS=${2:-2}; THREADS=${3:-2}
SHARED=${HEADSTREAM_SHARED:-../shared}
BIN=${HEADSTREAM_BIN:-${CARGO_TARGET_DIR:-target}/release/headstream}
NATS=${NATS_SERVER:-$(ls target/tools/nats-server-*/nats-server | head -1)}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NP=$(port); MP=$(port)
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
"$NATS" -p "$NP" -m "$MP" -js -sd "$work/js" >/dev/null 2>&1 &
sleep 0.5
URL="nats://127.0.0.1:$NP"
root=$(pwd)
cat > "$work/replay.toml" <<TOML
version = 1
name = "replay-bench"
[input]
subject = "rp.in"
[output]
subject = "rp.out"
errors = "rp.errors"
[batching]
max_batch_size = 32
[embeddings]
store = true
[[heads]]
name = "sentiment"
package = "$root/heads/sentiment"
[[heads]]
name = "topic"
package = "$root/heads/news-topic"
[[heads]]
name = "question"
package = "$root/heads/question-type"
TOML
printf 'version = 1\npipelines = ["%s"]\n[nats]\nurl = "%s"\n' "$work/replay.toml" "$URL" > "$work/host.toml"
python3 - "$N" "$SHARED" > "$work/input.jsonl" <<'PY'
import json, sys
n, shared = int(sys.argv[1]), sys.argv[2]
texts = []
for f in ("sst2/test.jsonl", "ag_news/test.jsonl", "trec/test.jsonl"):
    texts += [json.loads(l)["text"] for l in open(f"{shared}/datasets/{f}") if l.strip()]
for i in range(n):
    t = texts[i % len(texts)]
    print(json.dumps({"id": f"r-{i}", "text": t if i < len(texts) else f"{t} ({i // len(texts)})"}))
PY
# The stream that retains the input, created before anything is published.
"$BIN" --threads "$THREADS" serve --config "$work/host.toml" 2>"$work/host.log" &
HOST=$!
for _ in $(seq 120); do
  "$BIN" request --nats "$URL" --subject headstream.status --text x --timeout-ms 500 >/dev/null 2>&1 && break; sleep 0.5
done
curl -s "http://127.0.0.1:$MP/jsz" >/dev/null
python3 - "$URL" "$BIN" <<'PY'
import subprocess, sys
# A stream over rp.in: made with the nats-server's own JetStream API through `headstream request`.
cfg = '{"name":"RP","subjects":["rp.in"],"storage":"file","retention":"limits"}'
subprocess.run([sys.argv[2], "request", "--nats", sys.argv[1], "--subject", "$JS.API.STREAM.CREATE.RP", "--input", "/dev/stdin"],
               input=cfg.encode() + b"\n", check=True, capture_output=True)
PY
t0=$(date +%s.%N)
"$BIN" publish --nats "$URL" --subject rp.in --input "$work/input.jsonl" 2>/dev/null
# Wait until the host has stored every vector (the KV stream KV_HEADSTREAM_EMBEDDINGS).
for _ in $(seq 600); do
  stored=$(curl -s "http://127.0.0.1:$MP/jsz?streams=true" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(s["state"]["messages"] for a in d.get("account_details",[]) for s in a.get("stream_detail",[]) if s["name"]=="KV_HEADSTREAM_EMBEDDINGS"))')
  [ "$stored" -ge "$N" ] && break; sleep 1
done
live_s=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
kill "$HOST"; wait "$HOST" 2>/dev/null || true
curl -s "http://127.0.0.1:$MP/jsz?streams=true" | python3 -c '
import json,sys
d=json.load(sys.stdin)
for a in d.get("account_details",[]):
    for s in a.get("stream_detail",[]):
        st=s["state"]; print("stream %s: %d messages, %d bytes, %.0f bytes per message" % (s["name"], st["messages"], st["bytes"], st["bytes"]/max(1,st["messages"])))'
echo "live: $N messages served and stored in ${live_s}s"
for r in $(seq "$ROUNDS"); do
  for mode in store encode; do
    extra=(); [ "$mode" = encode ] && extra=(--no-store)
    "$BIN" --threads "$THREADS" replay --pipeline "$work/replay.toml" --stream RP --nats "$URL" \
      --output "$work/$mode.jsonl" "${extra[@]}" 2>&1 >/dev/null | tail -1 \
      | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(json.dumps(dict(d, mode='$mode', round=$r)))" >> "$work/runs.jsonl"
    tail -1 "$work/runs.jsonl" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("%s: %d messages in %.1f s (hits %d, misses %d; encode %.1f s, heads %.1f s, store reads %.1f s)" % (d["mode"], d["messages"], d["wall_s"], d["store_hits"], d["store_misses"], d["encode_s"], d["heads_s"], d["store_s"]))'
  done
done
python3 - "$work" <<'PY'
import json, statistics, sys
w = sys.argv[1]
runs = [json.loads(l) for l in open(f"{w}/runs.jsonl")]
s = [r["wall_s"] for r in runs if r["mode"] == "store"]; e = [r["wall_s"] for r in runs if r["mode"] == "encode"]
print("replay from the store %.1f s vs re-encoding %.1f s: %.1fx faster (medians)" % (statistics.median(s), statistics.median(e), statistics.median(e) / statistics.median(s)))
a = {r["id"]: r for r in map(json.loads, open(f"{w}/store.jsonl"))}
b = {r["id"]: r for r in map(json.loads, open(f"{w}/encode.jsonl"))}
for head in ("sentiment", "topic", "question"):
    same = sum(a[i]["results"][head]["label"] == b[i]["results"][head]["label"] for i in b)
    diff = max(abs(a[i]["results"][head]["score"] - b[i]["results"][head]["score"]) for i in b)
    print("%s: %d of %d labels the same from stored (f16) and fresh vectors; max score difference %.2g" % (head, same, len(b), diff))
PY
