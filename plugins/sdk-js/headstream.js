// The headstream guest SDK for JavaScript: write a task head as a class, export it, build it.
//
//     import * as hs from "../sdk-js/headstream.js";
//
//     class Shouting extends hs.Head {
//       static describe() { return hs.describe("shouting", "0.1.0", "other"); }
//       constructor(config, assets) { super(); this.threshold = config.get("threshold", 0.5); }
//       runOne(item) {
//         const letters = [...item.text].filter((c) => /\p{L}/u.test(c)).length || 1;
//         const ratio = [...item.text].filter((c) => /\p{Lu}/u.test(c)).length / letters;
//         return hs.json({ shouting: ratio > this.threshold, ratio });
//       }
//     }
//
//     export const head = hs.exportHead(Shouting);
//
// The class is built once per instance by `configure` (`new Cls(config, assets)`), and its
// `runOne(item)` (or `run(batch)`, for batch-wide work) answers texts. Throw `InvalidInput` or
// `Failed` for a text you cannot handle: that text fails, the others do not. Any other exception
// fails that text with its name and message; one thrown by the constructor fails `configure`.
//
// The contract is wit/plugin.wit (headstream:plugin@0.2.0); componentize-js builds the component
// (plugins/build.sh DIR). Items carry `text` (a JS string: entity spans are UTF-8 *byte* offsets,
// see `byteSpan`), `embedding` (a Float32Array), `tokenStates` and `upstream`.
//
// A head may read the states of the encoder's other layers: it answers `inputs()` (say
// `trainedInputs(weights)`, the layers `headstream train` fitted it on) and gets them in
// `runWith(batch, layers)`: `layers[i].pooled[j]`, item i's mean-pooled state of the j-th layer
// it asked for, and `layers[i].tokens[j]`, that layer's row-major `tokens × hidden` states.

import { embed as hostEmbed, log as hostLog } from "headstream:plugin/host@0.1.0";

/** The contract version these bindings implement. */
export const WIT_VERSION = "0.2.0";

/** Asks for no layer: the sentence embedding (and token states, by `needsTokenStates`) only. */
export function noLayers() {
  return { pooledLayers: [], tokenLayers: [] };
}

/** The layers a head trained by `headstream train` reads: the `pooled_layers` its weights'
 * safetensors metadata names (e.g. "3,4,5,6"), or none (the sentence embedding). */
export function trainedInputs(weights) {
  const listed = safetensorsMetadata(weights).pooled_layers;
  if (listed === undefined) return noLayers();
  const layers = listed.split(",").map((l) => l.trim());
  if (!layers.every((l) => /^[0-9]+$/.test(l))) {
    throw new BadAsset(`weights: pooled_layers ${JSON.stringify(listed)} is not a list of layers`);
  }
  return { pooledLayers: layers.map(Number), tokenLayers: [] };
}

/** The vectors one after another: the features of a head over several pooled layers. */
export function concat(vectors) {
  const out = new Float32Array(vectors.reduce((n, v) => n + v.length, 0));
  let at = 0;
  for (const v of vectors) {
    out.set(v, at);
    at += v.length;
  }
  return out;
}

/** A head's self-description. `kind` is "classify", "tokens" or "other". */
export function describe(name, version, kind, options = {}) {
  return {
    name,
    version,
    kind,
    labels: options.labels ?? [],
    needsTokenStates: options.needsTokenStates ?? false,
    encoder: options.encoder ?? undefined,
    outputSchema: options.outputSchema ?? "",
  };
}

// --- results -----------------------------------------------------------------------------

/** One label per text: the winner, its probability and every label's ([label, score] pairs). */
export function classification(label, score, scores = []) {
  return {
    tag: "classification",
    val: { label: String(label), score, scores: scores.map(([l, s]) => ({ label: String(l), score: s })) },
  };
}

/** Entity spans: `{text, label, start, end, score}` with UTF-8 byte offsets into the text. */
export function entities(list) {
  return { tag: "entities", val: list };
}

/** Any other result: a JSON-serialisable value. */
export function json(value) {
  return { tag: "json", val: JSON.stringify(value) };
}

/** Fails one text: its input is not something the head can handle. */
export class InvalidInput extends Error {}
/** Fails one text: the head failed on it. */
export class Failed extends Error {}
/** Fails `configure`: the configuration is malformed or has bad values. */
export class ConfigInvalid extends Error {}
/** Fails `configure`: a required asset was not given. */
export class MissingAsset extends Error {}
/** Fails `configure`: an asset could not be read. */
export class BadAsset extends Error {}

// --- configuration -------------------------------------------------------------------------

/** The pipeline's per-head settings (a JSON object). */
export class Config {
  constructor(text) {
    let value;
    try {
      value = text.trim() ? JSON.parse(text) : null;
    } catch (e) {
      throw new ConfigInvalid(`config is not JSON: ${e.message}`);
    }
    if (value === null) value = {};
    if (typeof value !== "object" || Array.isArray(value)) {
      throw new ConfigInvalid("config must be a JSON object");
    }
    this.values = value;
  }
  /** The value of `key`, or `fallback` when absent. */
  get(key, fallback = undefined) {
    const v = this.values[key];
    return v === undefined || v === null ? fallback : v;
  }
  /** The value of `key`; its absence fails `configure` naming it. */
  require(key) {
    const v = this.values[key];
    if (v === undefined || v === null) throw new ConfigInvalid(`missing \`${key}\``);
    return v;
  }
}

/** The files the pipeline (or package) gives the head, by name (Uint8Array each). */
export class Assets {
  constructor(list) {
    this.map = new Map(list.map((a) => [a.name, a.data]));
  }
  get(name) {
    return this.map.get(name);
  }
  require(name) {
    const data = this.map.get(name);
    if (data === undefined) throw new MissingAsset(name);
    return data;
  }
  names() {
    return [...this.map.keys()].sort();
  }
}

// --- host functions ------------------------------------------------------------------------

/** Writes a line to the host's log (within the head's log budget). */
const LEVELS = ["trace", "debug", "info", "warn", "error"];

export function log(message, level = "info") {
  hostLog(LEVELS.includes(level) ? level : "info", String(message));
}

/** Embeds texts with the host's encoder; only while configuring (in the constructor). */
export function embed(texts) {
  try {
    return hostEmbed(texts);
  } catch (e) {
    throw new Error(`embed refused: ${e.payload ?? e}`);
  }
}

// --- helpers -------------------------------------------------------------------------------

/** Softmax of `logits`, computed stably. */
export function softmax(logits) {
  if (logits.length === 0) return [];
  const top = Math.max(...logits);
  const exps = Array.from(logits, (x) => Math.exp(x - top));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}

/** Indices of the `k` largest values, largest first (ties keep index order). */
export function topK(values, k) {
  return [...values.keys()].sort((a, b) => values[b] - values[a] || a - b).slice(0, k);
}

/** A classification over `labels` from their `logits`. */
export function classify(labels, logits) {
  const probs = softmax(logits);
  if (probs.length === 0) return classification("", 0, []);
  const best = topK(probs, 1)[0];
  return classification(labels[best], probs[best], labels.map((l, i) => [l, probs[i]]));
}

function safetensorsHeader(bytes) {
  if (bytes.length < 8) throw new BadAsset("not safetensors: shorter than its header length");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = Number(view.getBigUint64(0, true));
  if (size > bytes.length - 8) throw new BadAsset("not safetensors: header runs past the end");
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + size)));
  } catch (e) {
    throw new BadAsset(`not safetensors: header is not JSON: ${e.message}`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new BadAsset("not safetensors: header is not a JSON object");
  }
  return [header, bytes.subarray(8 + size)];
}

/** The `__metadata__` strings of a safetensors file ({} when it has none): where `headstream
 * train` records what the weights read (`pooled_layers`). */
export function safetensorsMetadata(bytes) {
  const meta = safetensorsHeader(bytes)[0].__metadata__ ?? {};
  if (typeof meta !== "object" || Array.isArray(meta) || !Object.values(meta).every((v) => typeof v === "string")) {
    throw new BadAsset("safetensors `__metadata__` must map names to strings");
  }
  return { ...meta };
}

/** Every f32 tensor of a safetensors file (Uint8Array): name -> {shape, data: Float32Array}. */
export function readSafetensors(bytes) {
  const [header, body] = safetensorsHeader(bytes);
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (info.dtype !== "F32") throw new BadAsset(`tensor \`${name}\` is ${info.dtype}, expected F32`);
    const [start, end] = info.data_offsets;
    const count = info.shape.reduce((a, b) => a * b, 1);
    if (end - start !== 4 * count || end > body.length) {
      throw new BadAsset(`tensor \`${name}\`: offsets ${start}..${end} do not hold [${info.shape}] f32`);
    }
    const copy = body.slice(start, end); // aligned copy
    out[name] = { shape: info.shape, data: new Float32Array(copy.buffer, copy.byteOffset, count) };
  }
  return out;
}

/** A dense layer `y = W x + b`, `W` of shape [outputs, inputs], f32. */
export class Dense {
  constructor(weight, bias, inputs) {
    this.weight = weight;
    this.bias = bias;
    this.inputs = inputs;
    this.outputs = bias.length;
  }
  /** Reads `weight` and `bias` tensors from a safetensors asset. */
  static fromSafetensors(bytes, weight = "weight", bias = "bias") {
    const t = readSafetensors(bytes);
    for (const name of [weight, bias]) {
      if (!(name in t)) throw new BadAsset(`no tensor \`${name}\` (has: ${Object.keys(t).sort().join(", ")})`);
    }
    const [w, b] = [t[weight], t[bias]];
    if (w.shape.length !== 2 || b.shape.length !== 1 || b.shape[0] !== w.shape[0]) {
      throw new BadAsset(`\`${weight}\` is [${w.shape}] and \`${bias}\` is [${b.shape}]`);
    }
    return new Dense(w.data, b.data, w.shape[1]);
  }
  /** `W x + b`, or null when `x` has the wrong width. */
  forward(x) {
    const { weight, bias, inputs, outputs } = this;
    if (x.length !== inputs) return null;
    const y = new Array(outputs);
    for (let o = 0; o < outputs; o++) {
      let acc = bias[o];
      for (let i = 0, r = o * inputs; i < inputs; i++, r++) acc += weight[r] * x[i];
      y[o] = acc;
    }
    return y;
  }
}

/** The UTF-8 byte span of the characters `start..end` (UTF-16 indices, as RegExp gives) of `text`. */
export function byteSpan(text, start, end) {
  const enc = new TextEncoder();
  const before = enc.encode(text.slice(0, start)).length;
  return [before, before + enc.encode(text.slice(start, end)).length];
}

/** BIO tags ({tag, start, end, score} per token, byte offsets) to entity spans over `text`. */
export function decodeBio(text, tokens) {
  const raw = new TextEncoder().encode(text);
  const dec = new TextDecoder("utf-8", { fatal: true });
  const out = [];
  let cur = null;
  const close = () => {
    if (cur) {
      try {
        out.push({ text: dec.decode(raw.subarray(cur.start, cur.end)), label: cur.label, start: cur.start, end: cur.end, score: cur.sum / cur.n });
      } catch (_) {
        // not a character boundary: dropped
      }
      cur = null;
    }
  };
  for (const t of tokens) {
    const dash = t.tag.indexOf("-");
    const prefix = dash < 0 ? t.tag : t.tag.slice(0, dash);
    const kind = dash < 0 ? "" : t.tag.slice(dash + 1);
    if (prefix === "B" || (prefix === "I" && (!cur || cur.label !== kind))) {
      close();
      cur = { label: kind, start: t.start, end: t.end, sum: t.score, n: 1 };
    } else if (prefix === "I") {
      cur.end = t.end;
      cur.sum += t.score;
      cur.n += 1;
    } else {
      close();
    }
  }
  close();
  return out;
}

/** The most probable *valid* BIO/IOB2 tag sequence: `probs[t][k]` is token `t`'s probability of
 * tag `tags[k]`; returns one tag index per token, maximising the sum of log probabilities over
 * paths where every `I-X` follows a `B-X` or an `I-X` (never `O`, another type, or the start).
 * Tags that are not `O`, `B-X` or `I-X` count as `O`. Time O(tokens × tags²). */
export function viterbiBio(tags, probs) {
  const n = tags.length;
  if (n === 0 || probs.length === 0) return [];
  const inside = tags.map((t) => (t.startsWith("I-") ? t.slice(2) : null));
  const kind = tags.map((t) => (t.startsWith("B-") || t.startsWith("I-") ? t.slice(2) : null));
  const allowed = (from, to) => inside[to] === null || (from !== null && kind[from] === inside[to]);
  const score = (row, k) => Math.log(Math.max(k < row.length ? row[k] : 0, 1e-30));
  let best = tags.map((_, k) => (allowed(null, k) ? score(probs[0], k) : -Infinity));
  const back = [new Array(n).fill(0)];
  for (const row of probs.slice(1)) {
    const next = new Array(n).fill(-Infinity);
    const from = new Array(n).fill(0);
    for (let k = 0; k < n; k++) {
      const emit = score(row, k);
      best.forEach((b, j) => {
        if (b > -Infinity && allowed(j, k) && b + emit > next[k]) {
          next[k] = b + emit;
          from[k] = j;
        }
      });
    }
    best = next;
    back.push(from);
  }
  let k = 0;
  for (let i = 1; i < n; i++) if (best[i] > best[k]) k = i;
  const path = new Array(probs.length).fill(0);
  for (let t = probs.length - 1; t >= 0; t--) {
    path[t] = k;
    k = back[t][k];
  }
  return path;
}

// --- the head ------------------------------------------------------------------------------

/** Base class of a task head: `static describe()`, `constructor(config, assets)`, `runOne(item)`
 * or `run(batch)`; a head over the encoder's other layers also `inputs()` and
 * `runWith(batch, layers)`. */
export class Head {
  static describe() {
    throw new Error("a head must define static describe()");
  }
  runOne(_item) {
    throw new Error("a head must define runOne(item) or run(batch)");
  }
  /** One result (or Error) per item, in order; the default calls `runOne` per item. */
  run(batch) {
    return batch.map((item) => {
      try {
        return this.runOne(item);
      } catch (e) {
        return e instanceof Error ? e : new Failed(String(e));
      }
    });
  }
  /** The encoder layers whose states the head reads ({pooledLayers, tokenLayers}), asked once
   * after the constructor (a trained head knows them: `trainedInputs`). Default: none. */
  inputs() {
    return noLayers();
  }
  /** Answers a batch with `layers[i]`, item i's states of the layers `inputs()` asked for.
   * Heads that ask for layers override this; the default ignores them and calls `run`. */
  runWith(batch, _layers) {
    return this.run(batch);
  }
}

const isLayerList = (v) => Array.isArray(v) && v.every((l) => Number.isInteger(l) && l >= 0 && l <= 0xffffffff);

function named(e) {
  if (e instanceof Error) return e.message ? `${e.name}: ${e.message}` : e.name;
  return String(e);
}

function result(value) {
  if (value === undefined) return { tag: "err", val: { tag: "failed", val: "runOne returned nothing" } };
  if (value instanceof InvalidInput) return { tag: "err", val: { tag: "invalid-input", val: value.message } };
  if (value instanceof Failed) return { tag: "err", val: { tag: "failed", val: value.message } };
  if (value instanceof Error) return { tag: "err", val: { tag: "failed", val: named(value) } };
  if (value && typeof value === "object" && ["classification", "entities", "json"].includes(value.tag)) {
    return { tag: "ok", val: value };
  }
  try {
    return { tag: "ok", val: json(value) };
  } catch (e) {
    return { tag: "err", val: { tag: "failed", val: named(e) } };
  }
}

function configError(e) {
  const tag = e instanceof MissingAsset ? "missing-asset" : e instanceof BadAsset ? "bad-asset" : "invalid";
  const message = e instanceof MissingAsset || e instanceof BadAsset || e instanceof ConfigInvalid ? e.message : named(e);
  const err = new Error(message);
  err.payload = { tag, val: message };
  return err;
}

/** The exported `head` interface for `Cls` (a `Head` subclass): `export const head = exportHead(Cls)`. */
export function exportHead(Cls) {
  let instance = null;
  return {
    describe() {
      return Cls.describe();
    },
    configure(config, assets) {
      instance = null;
      let head;
      let wanted;
      try {
        head = new Cls(new Config(config), new Assets(assets));
        wanted = head.inputs();
        if (!wanted || !isLayerList(wanted.pooledLayers) || !isLayerList(wanted.tokenLayers)) {
          throw new ConfigInvalid("inputs() must return {pooledLayers, tokenLayers}, lists of layer numbers");
        }
      } catch (e) {
        throw configError(e);
      }
      instance = head;
      return { pooledLayers: [...wanted.pooledLayers], tokenLayers: [...wanted.tokenLayers] };
    },
    run(batch, layers) {
      if (!instance) return batch.map(() => result(new Failed("the head is not configured")));
      let answers;
      try {
        answers = instance.runWith(batch, layers ?? []);
      } catch (e) {
        return batch.map(() => result(new Failed(named(e))));
      }
      if (!Array.isArray(answers)) {
        return batch.map(() => result(new Failed(`run returned ${typeof answers}, not an array`)));
      }
      return answers.map(result);
    },
  };
}
