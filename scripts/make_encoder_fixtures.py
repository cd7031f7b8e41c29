#!/usr/bin/env python3
"""Write tests/fixtures/encoder/expected.jsonl: sentence-transformers' output for our own sentences.

Run with the Python environment that ../shared/tools/SETUP.md sets up (torch,
sentence-transformers, tokenizers), on the model that `headstream model fetch` downloads:

    ~/.cache/headstream-peers/env/bin/python scripts/make_encoder_fixtures.py \
        --model models/all-minilm-l6-v2

Reference settings are those of ../shared/reference/all-minilm-l6-v2: fp32 on CPU, batch size 1
(no padding), 2 torch threads. Per sentence it writes input ids, UTF-8 byte offsets, whether the
text was truncated, the normalised embedding and the mean-pooled vector before normalisation
(8 significant digits), and for the first TOKEN_STATES sentences the last hidden state of
every token (6 significant digits).
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "encoder")
TOKEN_STATES = 4


def byte_offsets(text, offsets):
    return [[len(text[:s].encode("utf-8")), len(text[:e].encode("utf-8"))] for s, e in offsets]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(HERE, "..", "models", "all-minilm-l6-v2"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = SentenceTransformer(args.model, device="cpu")
    tok = model.tokenizer._tokenizer  # the Rust `tokenizers` object behind the HF wrapper
    tok.no_padding()
    tok.enable_truncation(max_length=model.max_seq_length)
    transformer = model[0].auto_model

    with open(os.path.join(FIXTURES, "sentences.jsonl"), encoding="utf-8") as f:
        sentences = [json.loads(line) for line in f if line.strip()]
    out = []
    for s in sentences:
        text = s["text"]
        enc = tok.encode(text)
        ids = torch.tensor([enc.ids])
        with torch.no_grad():
            hidden = transformer(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 token_type_ids=torch.zeros_like(ids)).last_hidden_state[0]
            unnormalized = hidden.mean(0)
        emb = model.encode([text], batch_size=1, convert_to_numpy=True)[0]
        # sentence-transformers' own preprocessing must agree with the tokenizer used above.
        feats = model.tokenize([text])
        assert feats["input_ids"][0].tolist() == enc.ids, s["id"]
        rec = {
            "id": s["id"],
            "input_ids": enc.ids,
            "byte_offsets": byte_offsets(text, enc.offsets),
            "truncated": len(enc.overflowing) > 0,
            "embedding": [float(f"{x:.8g}") for x in emb.tolist()],
            "unnormalized": [float(f"{x:.8g}") for x in unnormalized.tolist()],
        }
        if len(out) < TOKEN_STATES:
            rec["token_states"] = [[float(f"{x:.6g}") for x in row] for row in hidden.tolist()]
        out.append(rec)
    with open(os.path.join(FIXTURES, "expected.jsonl"), "w", encoding="utf-8") as f:
        for rec in out:
            f.write(json.dumps(rec) + "\n")
    print(f"wrote {len(out)} records to {FIXTURES}/expected.jsonl")


if __name__ == "__main__":
    main()
