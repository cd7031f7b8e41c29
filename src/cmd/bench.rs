//! `headstream bench encoder`: throughput figures comparable with ../shared/tools/peer_bench.py.

use std::time::Instant;

use headstream_encoder::{BatchLimits, LayerSet, States, plan_batches};
use serde_json::json;

use super::jsonl::{parse_records, read_input};
use super::{median, percentile, round};
use crate::cli::BenchEncoderArgs;

/// Runs the encoder benchmark and prints one JSON line (field names follow peer_bench.py).
pub fn encoder(args: &BenchEncoderArgs, threads: Option<usize>) -> anyhow::Result<()> {
    let source = args.input.display().to_string();
    let records = parse_records(&read_input(Some(&args.input))?, &source)?;
    anyhow::ensure!(!records.is_empty(), "{source} has no texts");
    let n_unique = records.len();
    let n = if args.limit == 0 {
        n_unique
    } else {
        args.limit
    };
    let texts: Vec<&str> = (0..n)
        .map(|i| records[i % n_unique].text.as_str())
        .collect();

    let load_start = Instant::now();
    let batch_size = args.batch_size as usize;
    let encoder = super::load_encoder(&args.model, args.model.precision(), batch_size)?;
    let load_s = load_start.elapsed().as_secs_f64();
    let states = States {
        tokens: false,
        pooled: LayerSet::of(args.layers.iter().copied())?,
        token_layers: LayerSet::of(args.token_layers.iter().copied())?,
    };
    encoder.check(states)?;

    let lengths: Vec<usize> = encoder
        .tokenize(&texts)?
        .iter()
        .map(|t| t.ids.len())
        .collect();
    let real_tokens: usize = lengths.iter().sum();
    let padded_tokens: usize = plan_batches(&lengths, encoder.limits())
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0))
        .sum();

    let load_before = loadavg();
    for i in 0..args.warmup {
        let t = Instant::now();
        encoder.encode_with(&texts, states)?;
        eprintln!("warm-up {}: {:.2}s", i + 1, t.elapsed().as_secs_f64());
    }
    let mut times = Vec::new();
    // With batches of one, each text is timed too: the per-request latency.
    let mut latencies = Vec::new();
    for i in 0..args.passes {
        let t = Instant::now();
        if batch_size == 1 {
            for text in &texts {
                let one = Instant::now();
                encoder.encode_with(&[text], states)?;
                latencies.push(one.elapsed().as_secs_f64() * 1e3);
            }
        } else {
            encoder.encode_with(&texts, states)?;
        }
        times.push(t.elapsed().as_secs_f64());
        eprintln!("pass {}: {:.2}s", i + 1, times[times.len() - 1]);
    }
    let load_after = loadavg();
    let median = median(&mut times);
    let limits: BatchLimits = encoder.limits();
    let flops = encoder.flops(&lengths);
    let gflops = flops / median / 1e9;
    // The roof of the arithmetic the encoder runs: f32 products, or int8 ones.
    let peak = args.roofline.then(|| match args.model.precision() {
        headstream_encoder::Precision::F32 => headstream_encoder::sgemm_gflops(2048, 2048, 2048),
        headstream_encoder::Precision::Int8 => headstream_encoder::igemm_gops(2048, 2048, 2048),
    });
    latencies.sort_by(f64::total_cmp);
    let mut result = json!({
        "engine": match args.model.precision() {
            headstream_encoder::Precision::F32 => "headstream",
            headstream_encoder::Precision::Int8 => "headstream-int8",
        },
        "precision": args.model.precision().as_str(),
        "input": args.input.file_name().map(|n| n.to_string_lossy().into_owned()),
        "batch_size": batch_size,
        "max_batch_tokens": limits.max_batch_tokens,
        "pooled_layers": states.pooled.iter().collect::<Vec<_>>(),
        "token_layers": states.token_layers.iter().collect::<Vec<_>>(),
        "threads": threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        "n_texts": texts.len(),
        "n_unique_texts_in_file": n_unique,
        "real_tokens_per_pass": real_tokens,
        "padded_tokens_per_pass": padded_tokens,
        "mean_tokens": round(real_tokens as f64 / texts.len() as f64, 2),
        "padding_ratio": round(1.0 - real_tokens as f64 / padded_tokens.max(1) as f64, 4),
        "passes": args.passes,
        "warmup_passes": args.warmup,
        "pass_seconds": times.iter().map(|t| round(*t, 4)).collect::<Vec<_>>(),
        "median_seconds": round(median, 4),
        "sentences_per_s": round(texts.len() as f64 / median, 2),
        "tokens_per_s": round(real_tokens as f64 / median, 1),
        "padded_tokens_per_s": round(padded_tokens as f64 / median, 1),
        "model_load_seconds": round(load_s, 2),
        "backend": format!("{:?}", encoder.backend()).to_lowercase(),
        "gflop_per_pass": round(flops / 1e9, 2),
        "gflops": round(gflops, 1),
        "fingerprint": encoder.fingerprint().to_string(),
        "host": {
            "nproc": std::thread::available_parallelism().map_or(1, usize::from),
            "loadavg_1m_before": load_before,
            "loadavg_1m_after": load_after,
        },
    });
    if let Some(peak) = peak {
        result["sgemm_peak_gflops"] = json!(round(peak, 1));
        result["peak_kind"] = json!(match args.model.precision() {
            headstream_encoder::Precision::F32 => "f32 products (sgemm)",
            headstream_encoder::Precision::Int8 => "int8 products (GOP/s)",
        });
        result["roofline_share"] = json!(round(gflops / peak, 3));
    }
    if !latencies.is_empty() {
        result["latency_ms"] = json!({
            "p50": percentile(&latencies, 0.5).map(|v| round(v, 3)),
            "p99": percentile(&latencies, 0.99).map(|v| round(v, 3)),
            "mean": round(latencies.iter().sum::<f64>() / latencies.len() as f64, 3),
        });
    }
    println!("{result}");
    Ok(())
}

/// The 1-minute load average, from /proc/loadavg where it exists.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
