//! The transfer-learning bar on ../shared/datasets (ignored by default: a user's clone has no
//! `../shared`; `.ci/run` runs them with `--ignored`):
//! - the shipped heads (`heads/`), evaluated through the real plugin host on each test split,
//!   reach the scikit-learn probe's accuracy (SST-2 81.1%, AG News 88.1%, TREC 91.4%), and the
//!   entity head keeps its measured F1 on CoNLL-2003 test (0.687; the 0.80 target is not reached
//!   by a linear head on this encoder);
//! - 8-shot heads (mean over seeds 0–4, `--shots`' recipe: the top four layers, C = 0.01) reach
//!   SST-2 68%, AG News 77.3%, TREC 66%.
//!
//! Embeddings go through the default on-disk cache, so reruns only pay for the few-shot fits.

use std::path::PathBuf;

use headstream_package::Package;
use headstream_plugin_host::{HostConfig, PluginHost};
use headstream_test_util::{shared_dir, workspace_root};
use headstream_train::cache::FeatureCache;
use headstream_train::{ClassifyOptions, FeatureSource, data};

use crate::encoder_parity::encoder;

fn cache(encoder: &headstream_encoder::Encoder) -> FeatureCache {
    let dir = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/headstream/embeddings");
    FeatureCache::open(
        &dir,
        encoder.fingerprint().digest(),
        encoder.hidden_size(),
        encoder.num_layers() as usize + 1,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[ignore = "needs ../shared/datasets; run by .ci/run"]
fn shipped_heads_reach_the_probe_accuracy_on_the_test_splits() {
    let encoder = encoder();
    let mut cache = cache(encoder);
    let host = PluginHost::new(HostConfig {
        encoder: Some(encoder.fingerprint().clone()),
        ..HostConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let datasets = shared_dir().join("datasets");
    let cases = [
        // Issue 27's bars for heads trained by `headstream train` with its defaults.
        ("sentiment", "sst2/test.jsonl", "accuracy", 0.825),
        ("news-topic", "ag_news/test.jsonl", "accuracy", 0.885),
        ("question-type", "trec/test.jsonl", "accuracy", 0.935),
        ("entities", "conll2003/test.jsonl", "f1", 0.81),
    ];
    let mut failures = Vec::new();
    for (head, data, metric, bar) in cases {
        let package = Package::load(&workspace_root().join("heads").join(head))
            .unwrap_or_else(|e| panic!("{head}: {e}"));
        let loaded = headstream_train::load_for_eval(&host, &package)
            .unwrap_or_else(|e| panic!("{head}: {e}"));
        let metrics = headstream_train::evaluate(
            encoder,
            &package,
            &loaded,
            &datasets.join(data),
            Some(&mut cache),
        )
        .unwrap_or_else(|e| panic!("{head}: {e}"));
        let got = match metric {
            "f1" => metrics["overall"]["f1"].as_f64(),
            _ => metrics["accuracy"].as_f64(),
        }
        .unwrap_or(0.0);
        // The figure recorded in the package must be what it measures now (within a few
        // borderline examples: batch composition moves encoder outputs by ~1e-6).
        let recorded = package
            .manifest
            .metrics
            .as_ref()
            .and_then(|m| match metric {
                "f1" => m["metrics"]["overall"]["f1"].as_f64(),
                _ => m["metrics"]["accuracy"].as_f64(),
            })
            .unwrap_or(f64::NAN);
        eprintln!("{head} on {data}: {metric} {got:.4} (bar {bar}, manifest {recorded:.4})");
        if got < bar {
            failures.push(format!("{head}: {metric} {got:.4} < {bar}"));
        }
        if (recorded - got).abs().is_nan() || (recorded - got).abs() > 0.005 {
            failures.push(format!("{head}: manifest says {recorded}, measured {got}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[ignore = "needs ../shared/datasets; run by .ci/run"]
fn eight_shot_heads_reach_the_probe_accuracy() {
    let encoder = encoder();
    let mut cache = cache(encoder);
    let datasets = shared_dir().join("datasets");
    let mut failures = Vec::new();
    // Bars: the probe's on its own samples (SST-2 63.7%, AG News 77.3%, TREC 49.9%), raised
    // where the top-four-layer recipe measured higher (SST-2 68.8%, TREC 66.8%).
    for (name, bar) in [("sst2", 0.68), ("ag_news", 0.773), ("trec", 0.66)] {
        let train = data::read_examples(&datasets.join(name).join("train.jsonl"))
            .unwrap_or_else(|e| panic!("{e}"));
        let test = data::read_examples(&datasets.join(name).join("test.jsonl"))
            .unwrap_or_else(|e| panic!("{e}"));
        let texts: Vec<&str> = test.iter().map(|e| e.text.as_str()).collect();
        // Layers 3-6's pooled states side by side (the standardisation is in the weights).
        let (_, all) = headstream_train::sentence_features(encoder, &texts, Some(&mut cache), true)
            .unwrap_or_else(|e| panic!("{e}"));
        let all = all.unwrap_or_else(|| panic!("no layer states"));
        let hidden = encoder.hidden_size();
        let rows: Vec<Vec<f32>> = (0..texts.len())
            .map(|i| all.row(i)[3 * hidden..7 * hidden].to_vec())
            .collect();
        let mut accuracies = Vec::new();
        for seed in 0..5 {
            let shots = data::sample_shots(&train, 8, seed);
            let trained = headstream_train::train_classifier(
                encoder,
                &shots,
                &ClassifyOptions {
                    seed,
                    // What `headstream train --shots` does by default.
                    label_names: Some(2.0),
                    c: Some(0.01),
                    features: vec![FeatureSource::Pooled(vec![3, 4, 5, 6])],
                    ..ClassifyOptions::default()
                },
                Some(&mut cache),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let correct = test
                .iter()
                .enumerate()
                .filter(|(i, e)| trained.labels[trained.model.predict(&rows[*i])] == e.label)
                .count();
            accuracies.push(correct as f64 / test.len() as f64);
        }
        let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
        eprintln!(
            "{name} 8-shot: mean accuracy {mean:.4} over seeds 0-4 {accuracies:.4?} (bar {bar})"
        );
        if mean < bar {
            failures.push(format!("{name}: {mean:.4} < {bar}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
