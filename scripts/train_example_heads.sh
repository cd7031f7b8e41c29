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

# Defaults throughout: sentence heads choose their features (the embedding or the top four
# layers) and C by 5-fold cross-validation; the entity head reads the last four layers, chooses
# C by entity F1 on a held-out tenth of train and decodes with BIO-constrained Viterbi.
v=1.1.0
$hs train --kind classify --data "$d/sst2/train.jsonl" --eval "$d/sst2/test.jsonl" --out heads/sentiment --package-version $v
$hs train --kind classify --data "$d/ag_news/train.jsonl" --eval "$d/ag_news/test.jsonl" --out heads/news-topic --package-version $v
$hs train --kind classify --data "$d/trec/train.jsonl" --eval "$d/trec/test.jsonl" --out heads/question-type --package-version $v
$hs train --kind tokens --data "$d/conll2003/train.jsonl" --eval "$d/conll2003/test.jsonl" --out heads/entities --package-version $v

# Approve each head on the int8 encoder (refused if its headline metric drops over 1 point).
for pair in sentiment:sst2 news-topic:ag_news question-type:trec entities:conll2003; do
  $hs eval --precision int8 --plugin "heads/${pair%%:*}" --data "$d/${pair#*:}/test.jsonl" --approve
done
