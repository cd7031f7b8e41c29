"""Pure-Python helpers heads need without numpy: softmax, top-k, a dense layer read from a
safetensors asset, and BIO decoding to byte-offset entity spans."""

import json
import math
import operator
import struct
from array import array
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple


def softmax(logits: Sequence[float]) -> List[float]:
    """Softmax of `logits`, computed stably (max subtracted). Empty in, empty out."""
    if not logits:
        return []
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def top_k(values: Sequence[float], k: int) -> List[int]:
    """Indices of the `k` largest values, largest first (ties keep index order)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]


def classify(labels: Sequence[str], logits: Sequence[float]):
    """A `Classification` over `labels` from their `logits`: softmax probabilities, the most
    likely label and its probability."""
    from . import Classification

    probs = softmax(logits)
    scores = list(zip(labels, probs))
    if not scores:
        return Classification("", 0.0, [])
    best = top_k(probs, 1)[0]
    return Classification(labels[best], probs[best], scores)


class Dense:
    """A dense layer `y = W x + b`, `W` of shape `[outputs, inputs]`, f32."""

    def __init__(self, weight: Sequence[Sequence[float]], bias: Sequence[float]):
        # Python floats, not array('f'): the products then need no unboxing per element.
        rows = [[float(v) for v in r] for r in weight]
        if not rows or len(rows) != len(bias):
            raise ValueError(f"{len(rows)} weight rows for {len(bias)} biases")
        width = len(rows[0])
        if any(len(r) != width for r in rows):
            raise ValueError("weight rows differ in length")
        self.rows = rows
        self.bias = list(bias)

    @classmethod
    def from_safetensors(cls, data: bytes, weight: str = "weight", bias: str = "bias") -> "Dense":
        """Reads `weight` (`[outputs, inputs]`) and `bias` (`[outputs]`) f32 tensors from a
        safetensors file. Raises `BadAsset` naming what is wrong."""
        from . import BadAsset

        tensors = read_safetensors(data)
        for name in (weight, bias):
            if name not in tensors:
                raise BadAsset(f"no tensor `{name}` (has: {', '.join(sorted(tensors))})")
        (w_shape, w), (b_shape, b) = tensors[weight], tensors[bias]
        if len(w_shape) != 2 or b_shape != [w_shape[0]]:
            raise BadAsset(f"`{weight}` is {w_shape} and `{bias}` is {b_shape}: expected "
                           "[outputs, inputs] and [outputs]")
        n = w_shape[1]
        return cls([w[i * n:(i + 1) * n] for i in range(w_shape[0])], b)

    @property
    def inputs(self) -> int:
        """Width of the input."""
        return len(self.rows[0])

    @property
    def outputs(self) -> int:
        """Width of the output."""
        return len(self.rows)

    def forward(self, x: Sequence[float]) -> Optional[List[float]]:
        """`W x + b`, or `None` when `x` has the wrong width."""
        if len(x) != self.inputs:
            return None
        return [_dot(row, x) + b for row, b in zip(self.rows, self.bias)]


# math.sumprod (Python 3.12+) is one C loop over two sequences of floats.
_dot = getattr(math, "sumprod", None) or (lambda a, b: sum(map(operator.mul, a, b)))


def _safetensors_header(data: bytes) -> Tuple[dict, memoryview]:
    from . import BadAsset

    if len(data) < 8:
        raise BadAsset("not safetensors: shorter than its header length")
    (size,) = struct.unpack_from("<Q", data, 0)
    if size > len(data) - 8:
        raise BadAsset("not safetensors: header runs past the end")
    try:
        header = json.loads(bytes(data[8:8 + size]))
    except ValueError as e:
        raise BadAsset(f"not safetensors: header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise BadAsset("not safetensors: header is not a JSON object")
    return header, memoryview(data)[8 + size:]


def safetensors_metadata(data: bytes) -> Dict[str, str]:
    """The `__metadata__` strings of a safetensors file (empty when it has none): where
    `headstream train` records what the weights read (`pooled_layers`). Raises `BadAsset` for a
    file that is not safetensors."""
    from . import BadAsset

    meta = _safetensors_header(data)[0].get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadAsset("safetensors `__metadata__` must map names to strings")
    return dict(meta)


def concat(vectors: Sequence[Sequence[float]]) -> List[float]:
    """The vectors one after another: the features of a head over several pooled layers
    (`LayerStates.pooled`), in the order its `inputs()` named them."""
    out: List[float] = []
    for v in vectors:
        out.extend(v)
    return out


def read_safetensors(data: bytes) -> Dict[str, Tuple[List[int], array]]:
    """Every f32 tensor of a safetensors file: name -> (shape, flat values). Raises `BadAsset`
    for a file that is not safetensors or holds another dtype."""
    from . import BadAsset

    header, body = _safetensors_header(data)
    out: Dict[str, Tuple[List[int], array]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") != "F32":
            raise BadAsset(f"tensor `{name}` is {info.get('dtype')}, expected F32")
        start, end = info["data_offsets"]
        shape = [int(d) for d in info["shape"]]
        count = math.prod(shape)
        if end - start != 4 * count or end > len(body):
            raise BadAsset(f"tensor `{name}`: offsets {start}..{end} do not hold {shape} f32")
        values = array("f")
        values.frombytes(body[start:end])
        out[name] = (shape, values)
    return out


@dataclass
class TaggedToken:
    """One token's predicted tag (`O`, `B-TYPE`, `I-TYPE`), byte span and probability."""
    tag: str
    start: int
    end: int
    score: float


def decode_bio(text: str, tokens: Sequence[TaggedToken]):
    """BIO/IOB2 tags to entity spans over `text` (byte offsets). An `I-X` that does not continue
    an `X` entity starts a new one; an entity's score is the mean of its tokens'."""
    from . import Entity

    raw = text.encode("utf-8")
    entities = []
    current: Optional[list] = None

    def close():
        nonlocal current
        if current is not None:
            label, start, end, total, n = current
            span = raw[start:end]
            try:
                entities.append(Entity(span.decode("utf-8"), label, start, end, total / n))
            except UnicodeDecodeError:
                pass
            current = None

    for t in tokens:
        prefix, _, kind = t.tag.partition("-")
        if prefix == "B" or (prefix == "I" and (current is None or current[0] != kind)):
            close()
            current = [kind, t.start, t.end, t.score, 1]
        elif prefix == "I":
            current[2] = t.end
            current[3] += t.score
            current[4] += 1
        else:
            close()
    close()
    return entities


def viterbi_bio(tags: Sequence[str], probs: Sequence[Sequence[float]]) -> List[int]:
    """The most probable *valid* BIO/IOB2 tag sequence: `probs[t][k]` is token `t`'s
    probability of tag `tags[k]`; returns one tag index per token, maximising the sum of log
    probabilities over paths where every `I-X` follows a `B-X` or an `I-X` (never `O`, another
    type, or the start). Tags that are not `O`, `B-X` or `I-X` count as `O`. Spans decoded from
    the path (`decode_bio`) need no repair. Time O(tokens x tags^2)."""
    n = len(tags)
    if n == 0 or not probs:
        return []
    inside = [t[2:] if t.startswith("I-") else None for t in tags]
    kind = [t[2:] if t.startswith(("B-", "I-")) else None for t in tags]

    def allowed(frm: Optional[int], to: int) -> bool:
        return inside[to] is None or (frm is not None and kind[frm] == inside[to])

    def score(row, k: int) -> float:
        p = row[k] if k < len(row) else 0.0
        return math.log(max(p, 1e-30))

    neg = float("-inf")
    best = [score(probs[0], k) if allowed(None, k) else neg for k in range(n)]
    back = [[0] * n]
    for row in probs[1:]:
        nxt, frm = [neg] * n, [0] * n
        for k in range(n):
            emit = score(row, k)
            for j, b in enumerate(best):
                if b > neg and allowed(j, k) and b + emit > nxt[k]:
                    nxt[k], frm[k] = b + emit, j
        best = nxt
        back.append(frm)
    k = max(range(n), key=lambda i: best[i])
    path = [0] * len(probs)
    for t in range(len(probs) - 1, -1, -1):
        path[t] = k
        k = back[t][k]
    return path


def byte_offsets(text: str) -> List[int]:
    """The UTF-8 byte offset of every character of `text`, plus one past the end: turns a
    `re` match's character span into the byte span entities use."""
    out, at = [], 0
    for ch in text:
        out.append(at)
        at += len(ch.encode("utf-8"))
    out.append(at)
    return out
