//! `headstream bench heads`: what task heads cost next to the encoder.

use std::time::Instant;

use anyhow::Context as _;
use headstream_plugin_host::{Asset, HeadConfig, HostConfig, Item, PluginHost, TokenStates};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use super::jsonl::{parse_records, read_input};
use super::{median, round};
use crate::cli::BenchHeadsArgs;

/// Measures compile, cached load, and per-message cost of 1 and N heads against the encoder.
pub fn run(args: &BenchHeadsArgs) -> anyhow::Result<()> {
    let source = args.input.display().to_string();
    let records = parse_records(&read_input(Some(&args.input))?, &source)?;
    anyhow::ensure!(!records.is_empty(), "{source} has no texts");
    let batch = args.batch_size as usize;
    let texts: Vec<&str> = (0..batch)
        .map(|i| records[i % records.len()].text.as_str())
        .collect();
    let encoder = super::load_encoder(&args.model, args.model.precision(), batch)?;
    let hidden = encoder.hidden_size();

    let tokens = !args.token_layers.is_empty();
    let states = headstream_encoder::States {
        tokens,
        pooled: headstream_encoder::LayerSet::of(args.layers.iter().copied())?,
        token_layers: headstream_encoder::LayerSet::of(args.token_layers.iter().copied())?,
    };
    encoder.check(states)?;
    // Encoder time per message on this batch (median of passes), with and without the states
    // the heads ask for, alternated.
    let (mut encode_times, mut plain_times) = (Vec::new(), Vec::new());
    let mut encoded = Vec::new();
    for pass in 0..args.passes.max(1) + 1 {
        let t = Instant::now();
        encoded = encoder.encode_with(&texts, states)?;
        let with = t.elapsed().as_secs_f64();
        let t = Instant::now();
        encoder.encode(&texts, false)?;
        if pass > 0 {
            encode_times.push(with);
            plain_times.push(t.elapsed().as_secs_f64());
        }
    }
    let encode_s = median(&mut encode_times);
    let plain_s = median(&mut plain_times);

    // A realistic head: a 3-label linear classifier over the embedding or the asked layers, or
    // an entity tagger over the asked layers' token states.
    let (weights, config_json) = if tokens {
        let features = headstream_train::tokens::FeatureSet {
            window: 1,
            shape: true,
            layers: args.token_layers.len(),
        };
        (
            linear_weights(3, features.width(hidden), &[])?,
            json!({
                "tags": ["O", "B-X", "I-X"],
                "layers": args.token_layers,
                "window": 1,
                "shape": true,
                "decode": "viterbi",
            }),
        )
    } else {
        (
            linear_weights(3, hidden * args.layers.len().max(1), &args.layers)?,
            json!({ "labels": ["a", "b", "c"] }),
        )
    };
    let config_json = match &args.config {
        Some(text) => {
            let value =
                serde_json::from_str::<serde_json::Value>(text).context("--config is not JSON")?;
            anyhow::ensure!(
                value.is_object(),
                "--config must be a JSON object, not {value}"
            );
            value
        }
        None => config_json,
    };
    let config = || HeadConfig {
        config: config_json.clone(),
        assets: vec![Asset {
            name: "weights".into(),
            data: weights.clone(),
        }],
        ..HeadConfig::default()
    };
    let cache = tempfile::tempdir().context("cannot create a cache directory")?;
    let host_config = || HostConfig {
        cache_dir: Some(cache.path().to_owned()),
        max_instances: (args.heads as u32 + 4).max(16),
        encoder: Some(encoder.fingerprint().clone()),
        ..HostConfig::default()
    };
    let builtin = if tokens {
        headstream_components::TOKEN_CLASSIFIER
    } else {
        headstream_components::LINEAR_CLASSIFIER
    };
    let (origin, bytes) = match &args.plugin {
        Some(path) => (
            path.clone(),
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => (builtin.origin().into(), builtin.bytes.to_vec()),
    };
    let load = |host: &PluginHost| host.load_bytes(&origin, &bytes, config());
    let t = Instant::now();
    let host = PluginHost::new(host_config())?;
    load(&host)?;
    let compile_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let host = PluginHost::new(host_config())?;
    load(&host)?;
    let cached_load_s = t.elapsed().as_secs_f64();
    let heads = (0..args.heads)
        .map(|_| load(&host))
        .collect::<Result<Vec<_>, _>>()?;

    let items: Vec<Item<'_>> = encoded
        .iter()
        .zip(&texts)
        .enumerate()
        .map(|(i, (e, text))| Item {
            id: ID[i % ID.len()],
            text,
            embedding: &e.embedding,
            token_states: e.token_states.as_deref().map(|states| TokenStates {
                ids: &e.input_ids,
                offsets: &e.offsets,
                states,
                hidden_size: hidden,
            }),
            upstream: Vec::new(),
            layers: &e.layers,
        })
        .collect();
    let time_heads = |n: usize| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for pass in 0..args.passes.max(1) + 1 {
            let t = Instant::now();
            for head in &heads[..n] {
                let out = head.run(&items);
                anyhow::ensure!(
                    out.iter().all(Result::is_ok),
                    "head failed: {:?}",
                    out.iter().find(|r| r.is_err())
                );
            }
            if pass > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        Ok(median(&mut times))
    };
    let one_s = time_heads(1)?;
    // A fresh instance (what a trap costs): reset, then run; minus a plain run.
    let mut restart_times = Vec::new();
    for _ in 0..args.passes.max(1) {
        heads[0].reset();
        let t = Instant::now();
        heads[0].run(&items[..1]);
        let with_restart = t.elapsed().as_secs_f64();
        let t = Instant::now();
        heads[0].run(&items[..1]);
        restart_times.push(with_restart - t.elapsed().as_secs_f64());
    }
    let restart_s = median(&mut restart_times);
    let all_s = time_heads(heads.len())?;
    let per_msg = |s: f64| s / batch as f64 * 1e6;
    let result = json!({
        "bench": "heads",
        "plugin": origin.file_name().map(|n| n.to_string_lossy().into_owned()),
        "runtime": heads[0].runtime().to_string(),
        "component_bytes": bytes.len(),
        "batch_size": batch,
        "heads": heads.len(),
        "pooled_layers": args.layers,
        "token_layers": args.token_layers,
        "config": config_json,
        "encoder_plain_us_per_message": round(per_msg(plain_s), 1),
        "keeping_layers_share_of_encoder": round(encode_s / plain_s - 1.0, 4),
        "compile_ms": round(compile_s * 1e3, 2),
        "cached_load_ms": round(cached_load_s * 1e3, 2),
        "reinstantiate_and_configure_us": round(restart_s * 1e6, 1),
        "encoder_us_per_message": round(per_msg(encode_s), 1),
        "one_head_us_per_message": round(per_msg(one_s), 2),
        "all_heads_us_per_message": round(per_msg(all_s), 2),
        "all_heads_share_of_encoder": round(all_s / encode_s, 4),
        "memory_peak_mib": round(heads[0].memory_peak() as f64 / f64::from(1 << 20), 1),
    });
    println!("{result}");
    Ok(())
}

const ID: [&str; 4] = ["a", "b", "c", "d"];

/// Weights of a `labels × width` linear layer; over `pooled_layers` when not empty.
fn linear_weights(labels: usize, width: usize, pooled_layers: &[u32]) -> anyhow::Result<Vec<u8>> {
    let weight: Vec<u8> = (0..labels * width)
        .flat_map(|i| (((i * 7919) % 97) as f32 / 97.0 - 0.5).to_le_bytes())
        .collect();
    let bias = vec![0u8; labels * 4];
    let tensors = [
        (
            "weight",
            TensorView::new(Dtype::F32, vec![labels, width], &weight)?,
        ),
        ("bias", TensorView::new(Dtype::F32, vec![labels], &bias)?),
    ];
    let metadata = (!pooled_layers.is_empty()).then(|| {
        let list: Vec<String> = pooled_layers.iter().map(u32::to_string).collect();
        std::collections::HashMap::from([("pooled_layers".to_owned(), list.join(","))])
    });
    Ok(safetensors::serialize(tensors, metadata)?)
}
