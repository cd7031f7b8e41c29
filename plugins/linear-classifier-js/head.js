// `linear-classifier-js`: the linear classifier (softmax over a linear layer on the sentence
// embedding, or on the encoder's mean-pooled layers its weights name) in JavaScript, as
// `plugins/linear-classifier` is in Rust: the same config (`labels`, optional `threshold` and
// `abstain_label`) and asset (`weights`, safetensors, with `pooled_layers` metadata when train
// chose layers), so
// `headstream train --component target/heads/linear-classifier-js.wasm` packages it and
// `headstream bench heads --plugin` compares the languages on one task.

import * as hs from "../sdk-js/headstream.js";

class LinearClassifier extends hs.Head {
  static describe() {
    return hs.describe("linear-classifier-js", "1.1.0", "classify");
  }

  constructor(config, assets) {
    super();
    const weights = assets.require("weights");
    this.layer = hs.Dense.fromSafetensors(weights);
    this.wanted = hs.trainedInputs(weights);
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

  inputs() {
    return this.wanted;
  }

  runWith(batch, layers) {
    if (this.wanted.pooledLayers.length === 0) return this.run(batch);
    return batch.map((_item, i) => {
      try {
        return this.answer(hs.concat(layers[i].pooled));
      } catch (e) {
        return e;
      }
    });
  }

  runOne(item) {
    return this.answer(item.embedding);
  }

  answer(features) {
    const logits = this.layer.forward(features);
    if (logits === null) {
      throw new hs.InvalidInput(`features have ${features.length} values, the head expects ${this.layer.inputs}`);
    }
    const result = hs.classify(this.labels, logits);
    if (this.threshold !== undefined && result.val.score < this.threshold) result.val.label = this.abstainLabel;
    return result;
  }
}

export const head = hs.exportHead(LinearClassifier);
