#!/usr/bin/env bash
# What a hostile head costs the host, with the budgets at their defaults and with them raised
# out of the way (the behaviour before the budgets existed): wall time, peak RSS and bytes the
# host wrote to stderr, for an `embed` flood at configure time and a `log` flood in every batch.
#
#   scripts/hostile-host.sh [headstream binary] [seconds before a run is killed]
#
# Needs `cargo plugins` and the model (`headstream model fetch`). Prints one JSON line a case.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/headstream}"
limit="${2:-60}"
hostile="$PWD/target/wasm32-wasip2/release/hostile.wasm"
flags="$PWD/target/wasm32-wasip2/release/keyword_flags.wasm"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HEADSTREAM_MODEL="${HEADSTREAM_MODEL:-$PWD/models/all-minilm-l6-v2}"

unlimited_embed='embed_texts_per_call = 1000000
embed_tokens_per_call = 100000000
embed_texts = 1000000
embed_tokens = 100000000
embed_text_bytes = 100000000
setup_deadline_ms = 100000000'
unlimited_log='log_burst = 100000000
log_lines_per_s = 100000000
log_line_bytes = 100000000'

# case NAME CONFIG LIMITS MESSAGES
case_() {
  local name="$1" config="$2" limits="$3" messages="$4"
  cat > "$work/p.toml" <<EOF
version = 1
name = "hostile"
[input]
subject = "in"
[output]
subject = "out"
errors = "err"
[batching]
max_batch_size = 1
[[heads]]
name = "flood"
component = "$hostile"
[heads.config]
$config
[heads.limits]
$limits
[[heads]]
name = "flags"
component = "$flags"
[heads.config.flags]
urgent = ["asap"]
EOF
  for i in $(seq 1 "$messages"); do echo "{\"id\":\"$i\",\"text\":\"boom $i asap\"}"; done > "$work/in.jsonl"
  local start end rc=0
  start=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" timeout "$limit" "$bin" run --pipeline "$work/p.toml" \
    --input "$work/in.jsonl" > "$work/out" 2> "$work/err" || rc=$?
  end=$(date +%s.%N)
  local rss
  rss=$(tail -n 1 "$work/rss" | grep -E '^[0-9]+$' || echo 0)
  printf '{"case":"%s","exit":%s,"killed":%s,"wall_s":%.2f,"peak_rss_mib":%.0f,"stderr_bytes":%s,"results":%s}\n' \
    "$name" "$rc" "$([ "$rc" = 124 ] && echo true || echo false)" "$(echo "$end - $start" | bc)" \
    "$(echo "$rss / 1024" | bc -l)" "$(wc -c < "$work/err")" "$(wc -l < "$work/out")"
}

case_ "embed flood (4000 x 16 KiB, calls of 1000), budgets" 'mode = "embed-flood"' '' 1
case_ "embed flood (4000 x 16 KiB, calls of 1000), unlimited" 'mode = "embed-flood"' "$unlimited_embed" 1
case_ "embed flood (4000 x 400 B, calls of 8), budgets" $'mode = "embed-flood"\ntext_bytes = 400\nper_call = 8' '' 1
case_ "embed flood (4000 x 400 B, calls of 8), unlimited" $'mode = "embed-flood"\ntext_bytes = 400\nper_call = 8' "$unlimited_embed" 1
case_ "log flood (64 KiB lines until the deadline, 8 batches), budgets" 'mode = "log-flood"' '' 8
case_ "log flood (64 KiB lines until the deadline, 8 batches), unlimited" 'mode = "log-flood"' "$unlimited_log" 8
