"""`rules-classifier`: a linear classifier on the sentence embedding, or on the encoder's
mean-pooled layers (weights trained by `headstream train --component
target/heads/rules-classifier.wasm`), with rule-based overrides, in Python.

The model decides unless a rule matches: a rule names a label and the words or phrases that
force it (matched case-insensitively on word boundaries), so a team can pin known cases
("chargeback" is always billing) without retraining. Below `threshold` the head abstains.

Config (the package's `labels`, plus a pipeline's `[heads.config]`):

    labels = ["billing", "shipping", "technical"]   # rows of the weight matrix, from `train`
    threshold = 0.5                                  # optional: abstain below this probability
    abstain_label = "unsure"                         # optional, default "abstain"
    [[heads.config.rules]]
    label = "billing"
    any = ["chargeback", "refund"]

Asset: `weights` (safetensors: `weight` [labels, width] and `bias` [labels], f32). When its
metadata names `pooled_layers` (train chose them), the head asks for those layers' pooled states
and its features are their concatenation; otherwise the features are the sentence embedding.
"""

import re

import headstream_sdk as hs


class RulesClassifier(hs.Head):
    @staticmethod
    def describe():
        return hs.describe("rules-classifier", "1.0.0", hs.TaskKind.CLASSIFY)

    def __init__(self, config: hs.Config, assets: hs.Assets):
        weights = assets.require("weights")
        self.layer = hs.Dense.from_safetensors(weights)
        self.wanted = hs.trained_inputs(weights)
        self.labels = [str(l) for l in config.require("labels", list)]
        if len(self.labels) != self.layer.outputs:
            raise hs.ConfigInvalid(
                f"{len(self.labels)} labels for a layer with {self.layer.outputs} outputs")
        self.threshold = config.get("threshold", None, float)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise hs.ConfigInvalid("`threshold` must be within [0, 1]")
        self.abstain_label = config.get("abstain_label", "abstain", str)
        self.rules = []
        for i, rule in enumerate(config.get("rules", [], list)):
            if not isinstance(rule, dict) or not isinstance(rule.get("label"), str):
                raise hs.ConfigInvalid(f"rules[{i}]: expected a table with a `label`")
            words = rule.get("any", [])
            if not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise hs.ConfigInvalid(f"rules[{i}]: `any` must be a non-empty list of words")
            pattern = r"\b(?:" + "|".join(re.escape(w.strip()) for w in words) + r")\b"
            self.rules.append((rule["label"], re.compile(pattern, re.IGNORECASE)))
        hs.log(f"{len(self.labels)} labels, {len(self.rules)} rules", "debug")

    def inputs(self):
        return self.wanted

    def run_with(self, batch, layers):
        if not self.wanted.pooled_layers:
            return self.run(batch)
        out = []
        for item, states in zip(batch, layers):
            try:
                out.append(self.answer(item, hs.concat(states.pooled)))
            except hs.InvalidInput as e:
                out.append(e)
        return out

    def run_one(self, item: hs.Item):
        return self.answer(item, item.embedding)

    def answer(self, item: hs.Item, features):
        logits = self.layer.forward(features)
        if logits is None:
            raise hs.InvalidInput(
                f"features have {len(features)} values, the head expects {self.layer.inputs}")
        result = hs.classify(self.labels, logits)
        for label, pattern in self.rules:
            if pattern.search(item.text):
                # The rule decides; the model's probabilities stay in `scores`.
                return hs.Classification(label, 1.0, result.scores)
        if self.threshold is not None and result.score < self.threshold:
            result.label = self.abstain_label
        return result


Head = hs.export(RulesClassifier)
