//! Fast tests of loading, pooling, batching and fingerprinting on a tiny randomly initialised
//! BERT that each test writes to a temporary sentence-transformers directory. They need no
//! download; parity with the real model is tested in the workspace's integration tests.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use headstream_encoder::{
    Backend, BatchLimits, Encoder, EncoderError, EncoderOptions, LayerSet, Pooling, States,
};
use tokenizers::Tokenizer;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const HIDDEN: usize = 16;
const WORDS: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far",
    "away", "##s", "hello", "world", ".", ",", "!",
];

/// Deterministic pseudo-random values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

struct TinyModel {
    dir: tempfile::TempDir,
}

impl TinyModel {
    fn new(
        pooling: &str,
        max_seq_length: usize,
        seed: u64,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path();
        let layers = 2;
        let config = serde_json::json!({
            "vocab_size": WORDS.len(), "hidden_size": HIDDEN, "num_hidden_layers": layers,
            "num_attention_heads": 2, "intermediate_size": 32, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": 64, "type_vocab_size": 2, "initializer_range": 0.02,
            "layer_norm_eps": 1e-12, "pad_token_id": 0, "model_type": "bert",
        });
        std::fs::write(p.join("config.json"), config.to_string())?;
        std::fs::write(
            p.join("sentence_bert_config.json"),
            format!("{{\"max_seq_length\": {max_seq_length}}}"),
        )?;
        std::fs::write(
            p.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )?;
        std::fs::create_dir(p.join("1_Pooling"))?;
        std::fs::write(
            p.join("1_Pooling/config.json"),
            format!("{{\"word_embedding_dimension\": {HIDDEN}, \"pooling_mode_{pooling}\": true}}"),
        )?;

        let mut tensors = HashMap::new();
        let mut seed = seed;
        let mut add = |name: String, shape: &[usize], scale: f32| -> candle_core::Result<()> {
            seed += 1;
            let n = shape.iter().product();
            let data = if name.ends_with("LayerNorm.weight") {
                vec![1.0; n]
            } else {
                values(n, seed, scale)
            };
            tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
            Ok(())
        };
        add(
            "embeddings.word_embeddings.weight".into(),
            &[WORDS.len(), HIDDEN],
            1.0,
        )?;
        add(
            "embeddings.position_embeddings.weight".into(),
            &[64, HIDDEN],
            0.5,
        )?;
        add(
            "embeddings.token_type_embeddings.weight".into(),
            &[2, HIDDEN],
            0.1,
        )?;
        add("embeddings.LayerNorm.weight".into(), &[HIDDEN], 0.0)?;
        add("embeddings.LayerNorm.bias".into(), &[HIDDEN], 0.1)?;
        for l in 0..layers {
            let pre = format!("encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", HIDDEN, HIDDEN),
                ("attention.self.key", HIDDEN, HIDDEN),
                ("attention.self.value", HIDDEN, HIDDEN),
                ("attention.output.dense", HIDDEN, HIDDEN),
                ("intermediate.dense", 32, HIDDEN),
                ("output.dense", HIDDEN, 32),
            ] {
                add(format!("{pre}.{name}.weight"), &[out, inp], 0.4)?;
                add(format!("{pre}.{name}.bias"), &[out], 0.1)?;
            }
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                add(format!("{pre}.{ln}.weight"), &[HIDDEN], 0.0)?;
                add(format!("{pre}.{ln}.bias"), &[HIDDEN], 0.1)?;
            }
        }
        candle_core::safetensors::save(&tensors, p.join("model.safetensors"))?;

        std::fs::write(p.join("vocab.txt"), WORDS.join("\n"))?;
        let vocab = p.join("vocab.txt");
        let wordpiece = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| e.to_string())?;
        let mut tokenizer = Tokenizer::new(wordpiece);
        tokenizer
            .with_normalizer(Some(BertNormalizer::default()))
            .map_err(|e| e.to_string())?;
        tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
        tokenizer.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), 3),
            ("[CLS]".into(), 2),
        )));
        tokenizer
            .save(p.join("tokenizer.json"), false)
            .map_err(|e| e.to_string())?;
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn load(&self, max_batch_size: usize) -> Result<Encoder, EncoderError> {
        let limits = BatchLimits {
            max_batch_size,
            ..BatchLimits::default()
        };
        Encoder::load(
            self.path(),
            EncoderOptions {
                limits,
                ..Default::default()
            },
        )
    }
}

const TEXTS: &[&str] = &[
    "the cat sat on the mat.",
    "a dog",
    "hello world!",
    "the dogs ran far , far away , and the cats sat .",
    "",
    "cat",
];

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn embedding_is_the_same_alone_or_in_any_batch() -> TestResult {
    let model = TinyModel::new("mean_tokens", 64, 1)?;
    let alone = model.load(1)?.encode(TEXTS, false)?;
    for batch in [2, 3, 32] {
        let together = model.load(batch)?.encode(TEXTS, false)?;
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.input_ids, b.input_ids);
            let d = max_diff(&a.embedding, &b.embedding);
            assert!(d < 1e-5, "text {i} differs by {d} in batches of {batch}");
        }
    }
    Ok(())
}

/// `layer`'s pooled states of `e`, which must have been returned.
fn pooled(e: &headstream_encoder::EncodedText, layer: u32) -> Result<&[f32], String> {
    e.pooled(layer)
        .ok_or_else(|| format!("no pooled states of layer {layer}"))
}

#[test]
fn layer_states_are_kept_only_when_asked_and_the_last_matches_the_embedding() -> TestResult {
    let model = TinyModel::new("mean_tokens", 64, 3)?;
    let encoder = model.load(32)?;
    assert_eq!(encoder.num_layers(), 2);
    let plain = encoder.encode(TEXTS, true)?;
    assert!(
        plain.iter().all(|e| e.layers.is_empty()),
        "nothing asked, nothing kept"
    );
    let states = States {
        tokens: true,
        pooled: LayerSet::of([0, 1, 2])?,
        token_layers: LayerSet::of([1, 2])?,
    };
    let layered = encoder.encode_with(TEXTS, states)?;
    for (i, (p, l)) in plain.iter().zip(&layered).enumerate() {
        assert_eq!(
            p.embedding, l.embedding,
            "text {i}: asking for layers changes nothing else"
        );
        assert_eq!(p.token_states, l.token_states);
        assert_eq!(
            l.layers.iter().map(|x| x.layer).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(
            l.layer_tokens(0).is_none(),
            "layer 0's tokens were not asked for"
        );
        assert_eq!(
            l.layer_tokens(2),
            p.token_states.as_deref(),
            "last layer = token states"
        );
        let n = p.n_tokens();
        assert_eq!(l.layer_tokens(1).map(<[f32]>::len), Some(n * HIDDEN));
        // Mean of the last layer, normalised, is the sentence embedding.
        let pooled = pooled(l, 2)?;
        let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        let normalised: Vec<f32> = pooled.iter().map(|v| v / norm).collect();
        let d = max_diff(&normalised, &p.embedding);
        assert!(
            d < 1e-5,
            "text {i}: pooled last layer differs from embedding by {d}"
        );
        assert_ne!(l.pooled(0), l.pooled(1), "layers differ");
    }
    // One text alone gives the same layer states as in a batch.
    let alone = model.load(1)?.encode_with(TEXTS, states)?;
    for (a, b) in alone.iter().zip(&layered) {
        for layer in 0..=2 {
            let d = max_diff(pooled(a, layer)?, pooled(b, layer)?);
            assert!(d < 1e-5, "layer {layer} pooled differs by {d} alone");
        }
    }
    Ok(())
}

#[test]
fn one_pass_for_a_union_narrows_to_what_each_request_asked() -> TestResult {
    // What the co-batcher does for pipelines whose heads read different layers.
    let encoder = TinyModel::new("mean_tokens", 64, 3)?.load(32)?;
    let requests = [
        States::default(),
        States::tokens(true),
        States::pooled_layers([0, 2])?,
        States {
            tokens: false,
            pooled: LayerSet::of([1])?,
            token_layers: LayerSet::of([1, 2])?,
        },
    ];
    let all = requests.iter().fold(States::default(), |a, r| a.union(*r));
    let merged = encoder.encode_with(TEXTS, all)?;
    for request in requests {
        let alone = encoder.encode_with(TEXTS, request)?;
        let mut narrowed = merged.clone();
        narrowed.iter_mut().for_each(|e| request.narrow(e));
        assert_eq!(narrowed, alone, "{request:?}");
    }
    Ok(())
}

#[test]
fn layers_the_encoder_cannot_give_are_clear_errors() -> TestResult {
    let model = TinyModel::new("mean_tokens", 64, 4)?;
    let encoder = model.load(32)?;
    let beyond = LayerSet::of([64]).err().ok_or("layer 64 accepted")?;
    assert!(beyond.to_string().contains("layer 64"), "{beyond}");
    let too_deep = States {
        pooled: LayerSet::of([3])?,
        ..States::default()
    };
    let e = encoder
        .encode_with(TEXTS, too_deep)
        .err()
        .ok_or("layer 3 accepted")?;
    assert!(e.to_string().contains("layer 3"), "{e}");
    let candle = Encoder::load(
        model.path(),
        EncoderOptions {
            backend: Backend::Candle,
            ..Default::default()
        },
    )?;
    let last = States {
        pooled: LayerSet::of([2])?,
        ..States::default()
    };
    let packed = encoder.encode_with(TEXTS, last)?;
    for (a, b) in candle.encode_with(TEXTS, last)?.iter().zip(&packed) {
        let d = max_diff(pooled(a, 2)?, pooled(b, 2)?);
        assert!(d < 1e-4, "candle and packed last layer differ by {d}");
    }
    let earlier = States {
        pooled: LayerSet::of([1])?,
        ..States::default()
    };
    let e = candle
        .encode_with(TEXTS, earlier)
        .err()
        .ok_or("candle gave layer 1")?;
    assert!(e.to_string().contains("last layer"), "{e}");
    Ok(())
}

#[test]
fn mean_pooling_ignores_padding_and_normalises() -> TestResult {
    let model = TinyModel::new("mean_tokens", 64, 2)?;
    let out = model.load(32)?.encode(TEXTS, true)?;
    for e in &out {
        let states = e
            .token_states
            .as_ref()
            .ok_or("token states were requested")?;
        assert_eq!(
            states.len(),
            e.n_tokens() * HIDDEN,
            "states only for real tokens"
        );
        let mean: Vec<f32> = (0..HIDDEN)
            .map(|j| states.iter().skip(j).step_by(HIDDEN).sum::<f32>() / e.n_tokens() as f32)
            .collect();
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
        let expected: Vec<f32> = mean.iter().map(|x| x / norm).collect();
        assert!(
            max_diff(&e.embedding, &expected) < 1e-5,
            "mean over real tokens, then L2"
        );
        let unit = e.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((unit - 1.0).abs() < 1e-5);
    }
    Ok(())
}

#[test]
fn cls_pooling_is_read_from_the_model_files() -> TestResult {
    let model = TinyModel::new("cls_token", 64, 3)?;
    let encoder = model.load(32)?;
    assert_eq!(encoder.config().pooling, Pooling::Cls);
    for e in encoder.encode(TEXTS, true)? {
        let states = e
            .token_states
            .as_ref()
            .ok_or("token states were requested")?;
        let cls = &states[..HIDDEN];
        let norm = cls.iter().map(|x| x * x).sum::<f32>().sqrt();
        let expected: Vec<f32> = cls.iter().map(|x| x / norm).collect();
        assert!(max_diff(&e.embedding, &expected) < 1e-5);
    }
    Ok(())
}

#[test]
fn max_seq_length_is_read_from_the_model_files_and_truncates() -> TestResult {
    let model = TinyModel::new("mean_tokens", 6, 4)?;
    let encoder = model.load(32)?;
    assert_eq!(encoder.config().max_seq_length, 6);
    let out = encoder.encode(&["the cat sat on the mat", "a dog"], false)?;
    assert_eq!(out[0].n_tokens(), 6, "[CLS] + 4 words + [SEP]");
    assert_eq!(out[0].input_ids.first(), Some(&2));
    assert_eq!(out[0].input_ids.last(), Some(&3));
    assert!(out[0].truncated);
    assert!(!out[1].truncated);
    Ok(())
}

#[test]
fn unsupported_pooling_is_a_clear_error() -> TestResult {
    let model = TinyModel::new("weightedmean_tokens", 64, 5)?;
    let err = model.load(1).err().ok_or("loading must fail")?;
    let msg = err.to_string();
    assert!(
        msg.contains("1_Pooling/config.json") && msg.contains("weightedmean"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn missing_file_is_named() -> TestResult {
    let model = TinyModel::new("mean_tokens", 64, 6)?;
    std::fs::remove_file(model.path().join("tokenizer.json"))?;
    let err = model.load(1).err().ok_or("loading must fail")?;
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    Ok(())
}

#[test]
fn fingerprint_tracks_weights_and_settings() -> TestResult {
    let a = TinyModel::new("mean_tokens", 64, 7)?;
    let fp_a = a.load(1)?.fingerprint().clone();
    assert_eq!(
        a.load(8)?.fingerprint(),
        &fp_a,
        "batch limits do not change the encoder"
    );
    let same = TinyModel::new("mean_tokens", 64, 7)?;
    assert!(
        same.load(1)?.fingerprint().is_compatible(&fp_a),
        "same files, other folder: compatible"
    );
    let other_weights = TinyModel::new("mean_tokens", 64, 8)?;
    assert!(!other_weights.load(1)?.fingerprint().is_compatible(&fp_a));
    let other_length = TinyModel::new("mean_tokens", 32, 7)?;
    assert!(!other_length.load(1)?.fingerprint().is_compatible(&fp_a));
    let other_pooling = TinyModel::new("cls_token", 64, 7)?;
    assert!(!other_pooling.load(1)?.fingerprint().is_compatible(&fp_a));
    Ok(())
}
