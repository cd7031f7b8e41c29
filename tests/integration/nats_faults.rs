//! Misbehaviour under load, against a real nats-server: a head that hangs on every batch is cut
//! off by its deadline while the other head answers every message, then switched off so that
//! throughput recovers; a JetStream burst far above what a host can process leaves its memory
//! bounded (pull batches and `max_ack_pending` keep the backlog on the server). Needs
//! `cargo plugins`.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use headstream_test_util::{NatsServer, plugin_path};
use serde_json::{Value, json};

use crate::nats_serve::Host;
use crate::{memory_mib, runtime};

fn write_pipeline(dir: &std::path::Path, delivery: &str, heads: &str) -> std::path::PathBuf {
    let path = dir.join("faults.toml");
    let text = format!(
        "version = 1\nname = \"faults\"\n[input]\nsubject = \"faults.in\"\n[output]\n\
         subject = \"faults.out\"\nerrors = \"faults.errors\"\n[delivery]\n{delivery}\n\
         [batching]\nmax_batch_size = 16\nmax_wait_ms = 5\n{heads}"
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn flags_head() -> String {
    format!(
        "[[heads]]\nname = \"flags\"\ncomponent = {:?}\n[heads.config.flags]\nrefund = [\"refund\"]\n",
        plugin_path("keyword-flags").display().to_string()
    )
}

fn start(url: &str, pipeline: &std::path::Path) -> Host {
    Host::serve(&[
        std::ffi::OsStr::new("--nats"),
        url.as_ref(),
        "--pipeline".as_ref(),
        pipeline.as_os_str(),
    ])
}

#[test]
fn a_hanging_head_is_cut_off_and_the_rest_keep_answering() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let hang = format!(
        "[[heads]]\nname = \"hang\"\ncomponent = {:?}\n[heads.config]\nmode = \"loop\"\n\
         [heads.limits]\ndeadline_ms = 200\n",
        plugin_path("hostile").display().to_string()
    );
    let pipeline = write_pipeline(
        dir.path(),
        "mode = \"core\"",
        &format!("{}{hang}", flags_head()),
    );
    let url = server.url();
    let _host = start(&url, &pipeline);
    runtime().block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Every message makes the hostile head spin until its deadline.
        let ask = |i: usize| {
            let client = client.clone();
            async move {
                let body = json!({ "id": format!("h{i}"), "text": format!("boom, refund {i}") });
                let reply = client
                    .request("faults.in", body.to_string().into())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                serde_json::from_slice::<Value>(&reply.payload).unwrap_or_else(|e| panic!("{e}"))
            }
        };
        for _ in 0..240 {
            if client
                .request("faults.in", r#"{"text":"ready?"}"#.into())
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut timeouts = 0;
        let mut phases = Vec::new();
        for phase in 0..3 {
            let started = Instant::now();
            for i in 0..8 {
                let reply = ask(phase * 8 + i).await;
                assert_eq!(reply["results"]["flags"]["flags"][0], "refund", "{reply}");
                let error = reply["errors"]["hang"].as_str().unwrap_or_default().to_owned();
                assert!(reply["results"].get("hang").is_none(), "{reply}");
                if error.contains("timeout") {
                    timeouts += 1;
                } else {
                    assert!(error.contains("switched off"), "{reply}");
                }
            }
            phases.push(started.elapsed().as_secs_f64() * 1000.0 / 8.0);
        }
        // The deadline fired on the first batches; then the head was switched off (5 failed
        // batches in a row) and stopped costing anything.
        assert!((1..=6).contains(&timeouts), "{timeouts} timeouts");
        println!(
            "ms per request: {:.0} while the head hangs (deadline 200 ms), {:.0} and {:.0} after it is switched off; {timeouts} timeouts",
            phases[0], phases[1], phases[2]
        );
    });
}

#[test]
fn a_burst_far_above_capacity_keeps_memory_bounded() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = write_pipeline(
        dir.path(),
        "mode = \"jetstream\"\nstream = \"FAULTS\"\nconsumer = \"faults\"",
        &flags_head(),
    );
    let url = server.url();
    let total = 5_000;
    let host = start(&url, &pipeline);
    let pid = host.pid();
    runtime().block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut results = client
            .subscribe("faults.out")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let js = async_nats::jetstream::new(client.clone());
        // Wait for the host to create its stream and consumer.
        let mut ready = false;
        for _ in 0..240 {
            if let Ok(stream) = js.get_stream("FAULTS").await
                && stream.consumer_info("faults").await.is_ok()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(ready, "the host did not create its consumer");
        let (baseline, _) = memory_mib(pid);
        // The burst: every message stored before the host can work through a fraction.
        let started = Instant::now();
        let mut acks = Vec::with_capacity(500);
        for i in 0..total {
            let body = json!({
                "id": format!("b{i}"),
                "text": format!("refund {i} please"),
            });
            acks.push(
                js.publish("faults.in", body.to_string().into())
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            // Confirm in chunks (the client bounds acks in flight).
            if acks.len() == 500 {
                for ack in acks.drain(..) {
                    ack.await.unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
        for ack in acks {
            ack.await.unwrap_or_else(|e| panic!("{e}"));
        }
        let published = started.elapsed();
        let mut seen = std::collections::HashSet::new();
        let mut peak_rss: f64 = 0.0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while seen.len() < total {
            match tokio::time::timeout(Duration::from_millis(200), results.next()).await {
                Ok(Some(m)) => {
                    let record: Value =
                        serde_json::from_slice(&m.payload).unwrap_or_else(|e| panic!("{e}"));
                    seen.insert(record["id"].as_str().unwrap_or_default().to_owned());
                }
                Ok(None) => panic!("result subscription ended"),
                Err(_) => {}
            }
            if seen.len() % 100 == 0 {
                peak_rss = peak_rss.max(memory_mib(pid).0);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {total} results",
                seen.len()
            );
        }
        let drained = started.elapsed();
        let (rss, hwm) = memory_mib(pid);
        println!(
            "burst of {total}: published in {:.1} s, drained in {:.1} s ({:.0} msg/s); host RSS {baseline:.0} MiB before, {peak_rss:.0} MiB sampled peak, {hwm:.0} MiB high-water mark, {rss:.0} MiB after",
            published.as_secs_f64(),
            drained.as_secs_f64(),
            total as f64 / drained.as_secs_f64()
        );
        // The backlog stays on the server: the host's memory does not grow with it.
        assert!(
            peak_rss - baseline < 256.0,
            "host memory grew by {:.0} MiB under the burst",
            peak_rss - baseline
        );
    });
}
