#!/usr/bin/env bash
# Reproduces the example heads shipped in heads/ from the public datasets in ../shared/datasets
# (see its PROVENANCE.md). Each command trains on the train split, evaluates the written package
# on the test split, and records data digests, hyper-parameters and metrics in the manifest.
#
#   scripts/train_example_heads.sh            # all four
#   HEADSTREAM_SHARED=/path/to/shared scripts/train_example_heads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${HEADSTREAM_SHARED:-../shared}
d=$shared/datasets
cargo plugins
cargo build --release --quiet
hs=target/release/headstream

$hs train --kind classify --data "$d/sst2/train.jsonl" --eval "$d/sst2/test.jsonl" --out heads/sentiment
$hs train --kind classify --data "$d/ag_news/train.jsonl" --eval "$d/ag_news/test.jsonl" --out heads/news-topic
$hs train --kind classify --data "$d/trec/train.jsonl" --eval "$d/trec/test.jsonl" --out heads/question-type
$hs train --kind tokens --data "$d/conll2003/train.jsonl" --eval "$d/conll2003/test.jsonl" --out heads/entities
