//! Shipped heads over the real encoder's output: the prototype classifier embeds its label
//! examples through the host's `embed` import at configure time; the token classifier turns
//! real token states into entity spans with byte offsets into the original text.

use std::sync::Arc;

use headstream_encoder::{Encoder, EncoderOptions};
use headstream_plugin_host::{Asset, HeadConfig, HostConfig, Item, PluginHost};
use headstream_runner::item;
use headstream_test_util::{model_dir, plugin_path, safetensors_f32};
use serde_json::{Value, json};

fn encoder() -> Arc<Encoder> {
    Arc::new(
        Encoder::load(&model_dir(), EncoderOptions::default()).unwrap_or_else(|e| panic!("{e}")),
    )
}

#[test]
fn prototype_classifier_uses_examples_embedded_at_configure_time() {
    let encoder = encoder();
    let host = PluginHost::new(HostConfig {
        encoder: Some(encoder.fingerprint().clone()),
        embedder: Some(encoder.clone()),
        ..HostConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let config = HeadConfig {
        config: json!({ "labels": {
            "sport": ["The striker scored in the final minute", "The team won the championship"],
            "cooking": ["Simmer the sauce and add fresh basil", "Bake the bread for forty minutes"],
        }}),
        ..HeadConfig::default()
    };
    let head = host
        .load(&plugin_path("prototype-classifier"), config)
        .unwrap_or_else(|e| panic!("{e}"));
    let texts = [
        "The goalkeeper saved a penalty",
        "Whisk the eggs with a little sugar",
    ];
    let encoded = encoder
        .encode(&texts, false)
        .unwrap_or_else(|e| panic!("{e}"));
    let items: Vec<Item<'_>> = texts
        .iter()
        .zip(&encoded)
        .map(|(t, e)| item("x", t, e, encoder.hidden_size()))
        .collect();
    let labels: Vec<Value> = head
        .run(&items)
        .into_iter()
        .map(|r| r.map(|v| v["label"].clone()).unwrap_or_default())
        .collect();
    assert_eq!(labels, vec![json!("sport"), json!("cooking")]);
}

/// A token head whose bias alone picks the tag, so every word gets that tag.
fn token_head(host: &PluginHost, bias: [f32; 3], hidden: usize) -> headstream_plugin_host::Head {
    let weight = vec![0.0f32; 3 * hidden];
    let weights = safetensors_f32(&[("weight", &[3, hidden], &weight), ("bias", &[3], &bias)]);
    let config = HeadConfig {
        config: json!({ "tags": ["O", "B-X", "I-X"] }),
        assets: vec![Asset {
            name: "weights".into(),
            data: weights,
        }],
        ..HeadConfig::default()
    };
    host.load(&plugin_path("token-classifier"), config)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn token_classifier_spans_whole_words_by_byte_offset() {
    let encoder = encoder();
    let hidden = encoder.hidden_size();
    let host = PluginHost::new(HostConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let text = "Zoë Lovelace visited Zürich, twice.";
    let encoded = encoder
        .encode(&[text], true)
        .unwrap_or_else(|e| panic!("{e}"));

    // Every word B-X: one entity per word; word pieces ("lovelace" is several) stay together,
    // punctuation is its own word (and, having no letter or digit, never an entity), and spans
    // are byte offsets ("Zoë" is 4 bytes).
    let every_word = token_head(&host, [0.0, 5.0, 0.0], hidden);
    let out = every_word.run(&[item("1", text, &encoded[0], hidden)]);
    let entities = out[0]
        .as_ref()
        .map(|v| v["entities"].clone())
        .unwrap_or_else(|f| panic!("{f}"));
    let spans: Vec<(String, u64, u64)> = entities
        .as_array()
        .unwrap_or_else(|| panic!("{entities}"))
        .iter()
        .map(|e| {
            (
                e["text"].as_str().unwrap_or("").to_owned(),
                e["start"].as_u64().unwrap_or(0),
                e["end"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected = [
        ("Zoë", 0, 4),
        ("Lovelace", 5, 13),
        ("visited", 14, 21),
        ("Zürich", 22, 29),
        ("twice", 31, 36),
    ];
    let expected: Vec<(String, u64, u64)> = expected
        .iter()
        .map(|(t, s, e)| ((*t).to_owned(), *s, *e))
        .collect();
    assert_eq!(spans, expected);

    // Every word I-X: an invalid sequence, repaired into one entity over the whole text.
    let all_inside = token_head(&host, [0.0, 0.0, 5.0], hidden);
    let out = all_inside.run(&[item("1", text, &encoded[0], hidden)]);
    let entities = out[0]
        .as_ref()
        .map(|v| v["entities"].clone())
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        entities,
        json!([{ "text": text, "label": "X", "start": 0, "end": text.len(), "score": entities[0]["score"] }])
    );

    // Without token states the head answers with a typed error, not a crash.
    let plain = encoder
        .encode(&[text], false)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = every_word.run(&[item("1", text, &plain[0], hidden)]);
    assert!(
        out[0]
            .as_ref()
            .is_err_and(|f| f.message.contains("token states are missing")),
        "{out:?}"
    );
}

#[test]
fn token_classifier_reads_the_layers_it_is_configured_with_and_decodes_valid_paths() {
    let encoder = encoder();
    let hidden = encoder.hidden_size();
    let host = PluginHost::new(HostConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    // Rows of two layers' states (no window, no shape); the bias alone scores every word
    // I-X 5, O 4, B-X -10.
    let weight = vec![0.0f32; 3 * 2 * hidden];
    let bias = [4.0f32, -10.0, 5.0];
    let weights = safetensors_f32(&[("weight", &[3, 2 * hidden], &weight), ("bias", &[3], &bias)]);
    let config = |decode: &str| HeadConfig {
        config: json!({ "tags": ["O", "B-X", "I-X"], "layers": [3, 6], "decode": decode }),
        assets: vec![Asset {
            name: "weights".into(),
            data: weights.clone(),
        }],
        ..HeadConfig::default()
    };
    let load = |decode: &str| {
        host.load(&plugin_path("token-classifier"), config(decode))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let head = load("viterbi");
    assert_eq!(head.inputs().token_layers, [3, 6]);
    assert!(head.wants_token_states());
    let text = "Ada met Grace";
    let states = headstream_encoder::States {
        tokens: true,
        token_layers: headstream_encoder::LayerSet::of([3, 6]).unwrap_or_else(|e| panic!("{e}")),
        ..headstream_encoder::States::default()
    };
    let encoded = encoder
        .encode_with(&[text], states)
        .unwrap_or_else(|e| panic!("{e}"));
    let entities = |head: &headstream_plugin_host::Head| {
        head.run(&[item("1", text, &encoded[0], hidden)])[0]
            .as_ref()
            .map(|v| v["entities"].clone())
            .unwrap_or_else(|f| panic!("{f}"))
    };
    // Greedy: every word I-X, repaired into one entity over the text. Viterbi: I-X may not
    // start a sentence, and B-X I-X I-X (-10 + 5 + 5) loses to O O O (4 × 3): no entity.
    let greedy = entities(&load("greedy"));
    assert_eq!(greedy[0]["text"], text, "{greedy}");
    assert_eq!(greedy.as_array().map(Vec::len), Some(1));
    assert_eq!(entities(&head), json!([]));
    // Without its layers' states the head fails that text with a typed error.
    let last_only = encoder
        .encode(&[text], true)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = head.run(&[item("1", text, &last_only[0], hidden)]);
    assert!(out[0].is_err(), "{out:?}");
    // An unknown decoding fails the load, naming the key.
    let err = host
        .load(&plugin_path("token-classifier"), config("beam"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("`decode`"), "{err}");
}
