"""`template`: a headstream task head in Python (`headstream new-head NAME --lang python` starts
from plugins/template-python).

It labels a text `question` when it ends with a question mark and `statement` otherwise, and
rejects an empty embedding: replace `run_one` with your head's logic, `__init__` with its
settings and assets. Build it with `plugins/build.sh DIR`.
"""

import headstream_sdk as hs


class Template(hs.Head):
    @staticmethod
    def describe():
        return hs.describe("template", "0.1.0", hs.TaskKind.CLASSIFY,
                           labels=["question", "statement"])

    def __init__(self, config: hs.Config, assets: hs.Assets):
        # Label for texts that end with `?` (config `question_label`, default `question`).
        self.question_label = config.get("question_label", "question", str)

    def run_one(self, item: hs.Item):
        if not item.embedding:
            raise hs.InvalidInput("empty embedding")
        question = item.text.rstrip().endswith("?")
        label = self.question_label if question else "statement"
        scores = [(self.question_label, 1.0 if question else 0.0),
                  ("statement", 0.0 if question else 1.0)]
        return hs.Classification(label, 1.0, scores)


Head = hs.export(Template)
