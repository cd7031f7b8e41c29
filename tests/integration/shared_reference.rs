//! Exact parity with sentence-transformers on all 323 sentences of
//! ../shared/reference/all-minilm-l6-v2, at the tolerances its README states. These need the
//! project's shared data, which a user's clone lacks, so they are `#[ignore]`d; `.ci/run` runs
//! them with `cargo test --test integration -- --ignored`.

use headstream_test_util::{max_abs_diff, one_minus_cosine, read_jsonl, shared_dir};
use serde::Deserialize;

use crate::encoder_parity::{encoder, mean_of_states};

#[derive(Deserialize)]
struct Sentence {
    id: usize,
    text: String,
}

#[derive(Deserialize)]
struct Tokens {
    id: usize,
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    attention_mask: Vec<u32>,
    byte_offsets: Vec<(usize, usize)>,
    truncated: bool,
}

#[derive(Deserialize)]
struct Embedding {
    id: usize,
    embedding: Vec<f32>,
    unnormalized: Option<Vec<f32>>,
}

#[derive(Deserialize)]
struct States {
    id: usize,
    last_hidden_state: Vec<Vec<f32>>,
}

#[test]
#[ignore = "needs ../shared (run by .ci/run)"]
fn parity_with_sentence_transformers_on_all_reference_sentences() {
    let dir = shared_dir().join("reference/all-minilm-l6-v2");
    let sentences: Vec<Sentence> = read_jsonl(&dir.join("sentences.jsonl"));
    let tokens: Vec<Tokens> = read_jsonl(&dir.join("tokens.jsonl"));
    let embeddings: Vec<Embedding> = read_jsonl(&dir.join("embeddings.jsonl"));
    let states: Vec<States> = read_jsonl(&dir.join("token_states.jsonl"));
    assert_eq!(sentences.len(), 323);

    let enc = encoder();
    let texts: Vec<&str> = sentences.iter().map(|s| s.text.as_str()).collect();
    // All 323 in one call: length-sorted, padded batches, exactly as production runs them.
    let got = enc
        .encode(&texts, true)
        .unwrap_or_else(|e| panic!("encode: {e}"));

    let (mut worst, mut worst_cos, mut worst_states) = (0.0f64, 0.0f64, 0.0f64);
    for ((s, t), e) in sentences.iter().zip(&tokens).zip(&embeddings) {
        assert_eq!(
            (s.id, t.id, e.id),
            (s.id, s.id, s.id),
            "reference files are in id order"
        );
        let g = &got[s.id];
        assert_eq!(g.input_ids, t.input_ids, "input ids of sentence {}", s.id);
        assert!(
            t.token_type_ids.iter().all(|&x| x == 0),
            "the encoder feeds type id 0 everywhere"
        );
        assert_eq!(t.token_type_ids.len(), g.n_tokens());
        assert_eq!(
            t.attention_mask,
            vec![1; g.n_tokens()],
            "attention mask of sentence {}",
            s.id
        );
        assert_eq!(
            g.offsets, t.byte_offsets,
            "byte offsets of sentence {}",
            s.id
        );
        assert_eq!(g.truncated, t.truncated, "truncation of sentence {}", s.id);

        let d = max_abs_diff(&g.embedding, &e.embedding);
        let c = one_minus_cosine(&g.embedding, &e.embedding);
        assert!(d <= 1e-5, "sentence {}: embedding max abs diff {d:e}", s.id);
        assert!(c <= 1e-7, "sentence {}: 1 - cosine {c:e}", s.id);
        worst = worst.max(d);
        worst_cos = worst_cos.max(c);
        if let Some(u) = &e.unnormalized {
            let d = max_abs_diff(&mean_of_states(g, enc.hidden_size()), u);
            assert!(
                d <= 1e-5,
                "sentence {}: unnormalized max abs diff {d:e}",
                s.id
            );
        }
    }
    for st in &states {
        let flat: Vec<f32> = st.last_hidden_state.iter().flatten().copied().collect();
        let d = max_abs_diff(
            got[st.id].token_states.as_deref().unwrap_or_default(),
            &flat,
        );
        assert!(
            d <= 1e-4,
            "sentence {}: token states max abs diff {d:e}",
            st.id
        );
        worst_states = worst_states.max(d);
    }
    eprintln!(
        "parity over {} sentences: embedding max abs diff {worst:.3e}, max 1-cos {worst_cos:.3e}, \
         token states max abs diff {worst_states:.3e}",
        sentences.len()
    );
}

#[test]
#[ignore = "needs ../shared (run by .ci/run)"]
fn int8_cosine_against_sentence_transformers_on_all_reference_sentences() {
    let dir = shared_dir().join("reference/all-minilm-l6-v2");
    let sentences: Vec<Sentence> = read_jsonl(&dir.join("sentences.jsonl"));
    let embeddings: Vec<Embedding> = read_jsonl(&dir.join("embeddings.jsonl"));
    let texts: Vec<&str> = sentences.iter().map(|s| s.text.as_str()).collect();
    let got = crate::encoder_parity::int8_encoder()
        .encode(&texts, false)
        .unwrap_or_else(|e| panic!("encode: {e}"));
    let want: Vec<&[f32]> = embeddings.iter().map(|e| e.embedding.as_slice()).collect();
    let (mean, min) = crate::encoder_parity::cosines(&got, &want);
    eprintln!(
        "int8 vs sentence-transformers on 323 sentences: cosine mean {mean:.5}, min {min:.5}"
    );
    assert!(
        mean >= 0.99 && min >= 0.97,
        "int8 cosine mean {mean:.5}, min {min:.5}"
    );
}
