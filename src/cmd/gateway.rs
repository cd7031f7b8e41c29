//! `headstream gateway`: the HTTP front door, wired to NATS and signals.

use std::time::Duration;

use headstream_gateway::GatewayConfig;

use crate::cli::GatewayArgs;

/// Environment variable with the accepted API keys, separated by commas.
const API_KEYS_ENV: &str = "HEADSTREAM_GATEWAY_API_KEYS";

/// Serves the gateway until Ctrl-C / SIGTERM, then finishes the requests in hand.
pub fn run(args: &GatewayArgs) -> anyhow::Result<()> {
    let api_keys: Vec<String> = std::env::var(API_KEYS_ENV)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let config = GatewayConfig {
        max_body_bytes: args.max_body_bytes,
        max_batch: args.max_batch as usize,
        timeout: Duration::from_millis(args.timeout_ms),
        max_in_flight: args.max_in_flight as usize,
        api_keys,
        cors_origins: args.cors_origin.clone(),
        chunk_texts: args.chunk as usize,
        // Built before the async runtime: the exporter's HTTP client blocks.
        tracer: args
            .otlp_endpoint
            .as_deref()
            .map(|e| headstream_trace::Tracer::otlp(e, "headstream gateway"))
            .transpose()?,
    };
    let tracer = config.tracer.clone();
    let served = super::serve::runtime()?.block_on(async {
        let (client, listener, addr, url) =
            super::serve::connect_and_listen(&args.connect, args.listen).await?;
        eprintln!(
            "headstream gateway on http://{addr} (NATS {url}, {})",
            match config.api_keys.len() {
                0 => "no API keys: open to anyone who can reach it".to_owned(),
                n => format!("{n} API key(s)"),
            }
        );
        let shutdown = async {
            super::serve::Signals::new().next().await;
            eprintln!("headstream gateway: stopping; finishing the requests in hand");
        };
        headstream_gateway::serve(listener, client, config, shutdown).await?;
        anyhow::Ok(())
    });
    // Outside the runtime: the exporter blocks while it sends what it holds.
    if let Some(tracer) = tracer {
        tracer.shutdown();
    }
    served
}
