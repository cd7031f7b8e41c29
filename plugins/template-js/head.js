// `template`: a headstream task head in JavaScript (`headstream new-head NAME --lang js` starts
// from plugins/template-js).
//
// It labels a text `question` when it ends with a question mark and `statement` otherwise, and
// rejects an empty embedding: replace `runOne` with your head's logic, the constructor with its
// settings and assets. Build it with `plugins/build.sh DIR`.

import * as hs from "../sdk-js/headstream.js";

class Template extends hs.Head {
  static describe() {
    return hs.describe("template", "0.1.0", "classify", { labels: ["question", "statement"] });
  }

  constructor(config, assets) {
    super();
    // Label for texts that end with `?` (config `question_label`, default `question`).
    this.questionLabel = config.get("question_label", "question");
  }

  runOne(item) {
    if (item.embedding.length === 0) throw new hs.InvalidInput("empty embedding");
    const question = item.text.trimEnd().endsWith("?");
    const label = question ? this.questionLabel : "statement";
    return hs.classification(label, 1.0, [
      [this.questionLabel, question ? 1.0 : 0.0],
      ["statement", question ? 0.0 : 1.0],
    ]);
  }
}

export const head = hs.exportHead(Template);
