#!/usr/bin/env bash
# Runs every fuzz target for a fixed budget (default 60 s each) and prints libFuzzer's
# execution counts. Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo +nightly install cargo-fuzz
# New inputs go to fuzz/corpus/<target> (ignored by git); fuzz/seeds/<target> is the committed
# seed corpus; crashes land in fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
for target in message pipeline manifest; do
    mkdir -p "corpus/$target"
    echo "== $target ($seconds s)"
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=8192 2>&1 | grep -E "^Done|ERROR|panicked|SUMMARY" || true
done
