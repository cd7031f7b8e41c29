#!/usr/bin/env bash
# Builds the example Python and JavaScript heads and packages them for pipelines/polyglot.toml:
#
#   target/packages/support-rules   plugins/rules-classifier (Python), trained on the support
#                                   fixture by `headstream train --component`
#   target/packages/pii-flags       plugins/pii-flags (JavaScript), packaged by
#                                   `headstream package`
#
# Needs python3 (venv, pip) and Node.js with npm; the toolchains are fetched, pinned, on first
# use (plugins/build.sh). HEADSTREAM selects the binary (default: cargo run --release).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [[ -n ${HEADSTREAM:-} ]]; then hs=("$HEADSTREAM"); else hs=(cargo run --quiet --release --); fi

plugins/build.sh plugins/rules-classifier >/dev/null
plugins/build.sh plugins/pii-flags >/dev/null
"${hs[@]}" train --kind classify \
    --data tests/fixtures/train/support_train.jsonl \
    --eval tests/fixtures/train/support_test.jsonl \
    --component target/heads/rules-classifier.wasm \
    --name support-rules --out target/packages/support-rules >/dev/null
"${hs[@]}" package target/heads/pii-flags.wasm --out target/packages/pii-flags >/dev/null
echo "packaged target/packages/support-rules (Python) and target/packages/pii-flags (JavaScript)"
