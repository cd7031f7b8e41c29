// `linear-classifier-js`: the linear classifier (softmax over a linear layer on the sentence
// embedding) in JavaScript, as `plugins/linear-classifier` is in Rust: the same config
// (`labels`, optional `threshold` and `abstain_label`) and asset (`weights`, safetensors), so
// `headstream train --component target/heads/linear-classifier-js.wasm` packages it and
// `headstream bench heads --plugin` compares the languages on one task.

import * as hs from "../sdk-js/headstream.js";

class LinearClassifier extends hs.Head {
  static describe() {
    return hs.describe("linear-classifier-js", "1.0.0", "classify");
  }

  constructor(config, assets) {
    super();
    this.layer = hs.Dense.fromSafetensors(assets.require("weights"));
    this.labels = config.require("labels");
    if (!Array.isArray(this.labels) || this.labels.length !== this.layer.outputs) {
      throw new hs.ConfigInvalid(`${this.labels.length} labels for a layer with ${this.layer.outputs} outputs`);
    }
    this.threshold = config.get("threshold");
    if (this.threshold !== undefined && !(this.threshold >= 0 && this.threshold <= 1)) {
      throw new hs.ConfigInvalid("`threshold` must be within [0, 1]");
    }
    this.abstainLabel = config.get("abstain_label", "abstain");
  }

  runOne(item) {
    const logits = this.layer.forward(item.embedding);
    if (logits === null) {
      throw new hs.InvalidInput(`embedding has ${item.embedding.length} values, the head expects ${this.layer.inputs}`);
    }
    const result = hs.classify(this.labels, logits);
    if (this.threshold !== undefined && result.val.score < this.threshold) result.val.label = this.abstainLabel;
    return result;
  }
}

export const head = hs.exportHead(LinearClassifier);
