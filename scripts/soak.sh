#!/usr/bin/env bash
# Soak: a mixed workload (good, malformed and over-long messages, 100/s offered) through
# JetStream into a host following the cluster registry, with a new head version deployed every
# few minutes; prints a JSON report (messages, results, lost, error records by kind, head errors,
# swaps, results per version, throughput, host RSS samples every 2 s).
#
#   scripts/soak.sh            # 30 minutes, a hot swap every 3 minutes, 100 messages/s
#   scripts/soak.sh 5 60 200   # 5 minutes, a swap every 60 s, 200 messages/s
#
# The test suite runs the same scenario for 20 s (tests/integration/soak.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
swap="${2:-180}"
rate="${3:-100}"
cargo plugins >/dev/null
HEADSTREAM_SOAK_SECS=$((minutes * 60)) HEADSTREAM_SOAK_SWAP_SECS="$swap" HEADSTREAM_SOAK_RATE="$rate" \
    cargo test --workspace --test integration -- --nocapture --exact \
    soak::mixed_workload_with_hot_swaps_keeps_every_message_and_flat_memory 2>&1 |
    grep -E -A3 "soak report|test result|panicked"
