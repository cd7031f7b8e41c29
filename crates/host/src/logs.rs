//! Heads' own log lines on the bus: every line a head writes within its log budget is
//! published on `headstream.logs.<pipeline>.<head>`, and a bounded JetStream stream
//! (`HEADSTREAM_LOGS`) keeps the recent ones for `headstream logs`.

use std::sync::Arc;
use std::time::Duration;

use headstream_message::logs::{HeadLogRecord, LOGS_STREAM, LOGS_SUBJECT, logs_subject};
use headstream_plugin_host::{LogLevel, LogSink};
use tokio::sync::mpsc;

/// Lines waiting to be published; past it they are dropped (and counted), never waited for:
/// a head's thread must not block on the bus.
const QUEUE: usize = 4096;

/// How long the stream keeps lines, and how many bytes at most.
const MAX_AGE: Duration = Duration::from_secs(3600);
const MAX_BYTES: i64 = 64 << 20;

/// The host's head-log publisher: hands out a [`LogSink`] per head, publishes off the heads'
/// threads.
#[derive(Debug, Clone)]
pub struct HeadLogs {
    tx: mpsc::Sender<(String, HeadLogRecord)>,
    host: String,
    lost: prometheus::IntCounter,
}

impl HeadLogs {
    /// Starts the publisher on the current runtime, and creates the stream that keeps recent
    /// lines (bounded by age and bytes) unless it exists; without JetStream the lines are only
    /// published, for `headstream logs --follow`.
    pub async fn spawn(
        client: async_nats::Client,
        host: String,
        metrics: &headstream_runner::Metrics,
    ) -> Self {
        let js = async_nats::jetstream::new(client.clone());
        let config = async_nats::jetstream::stream::Config {
            name: LOGS_STREAM.to_owned(),
            subjects: vec![format!("{LOGS_SUBJECT}.>")],
            max_age: MAX_AGE,
            max_bytes: MAX_BYTES,
            discard: async_nats::jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        };
        if let Err(e) = js.get_or_create_stream(config).await {
            tracing::info!(
                "head logs are published but not kept (no {LOGS_STREAM} stream: {e}); `headstream logs --follow` still shows them"
            );
        }
        let (tx, mut rx) = mpsc::channel::<(String, HeadLogRecord)>(QUEUE);
        tokio::spawn(async move {
            while let Some((subject, record)) = rx.recv().await {
                let Ok(body) = serde_json::to_vec(&record) else {
                    continue;
                };
                if let Err(e) = client.publish(subject, body.into()).await {
                    tracing::debug!("cannot publish a head log line: {e}");
                }
            }
        });
        Self {
            tx,
            host,
            lost: metrics.head_log_lost.clone(),
        }
    }

    /// The sink for head `head` (its name in `pipeline`), served by `version` (`name@version`;
    /// `None`: the version the head describes itself by).
    pub fn sink(&self, pipeline: &str, head: &str, version: Option<&str>) -> Arc<dyn LogSink> {
        Arc::new(Sink {
            logs: self.clone(),
            subject: logs_subject(pipeline, head),
            pipeline: pipeline.to_owned(),
            head: head.to_owned(),
            version: version.map(str::to_owned),
        })
    }
}

#[derive(Debug)]
struct Sink {
    logs: HeadLogs,
    subject: String,
    pipeline: String,
    head: String,
    version: Option<String>,
}

impl LogSink for Sink {
    fn line(&self, described: &str, level: LogLevel, message: &str) {
        let record = HeadLogRecord {
            at_ms: crate::live::now_ms() as u64,
            host: self.logs.host.clone(),
            pipeline: self.pipeline.clone(),
            head: self.head.clone(),
            version: self.version.clone().unwrap_or_else(|| described.to_owned()),
            level: level.as_str().to_owned(),
            message: message.to_owned(),
        };
        if self
            .logs
            .tx
            .try_send((self.subject.clone(), record))
            .is_err()
        {
            self.logs.lost.inc();
        }
    }
}

/// Publishes the host's counters on `headstream.stats.<host>` every `every` until the
/// returned task is aborted (a dashboard's source).
pub fn spawn_heartbeat(
    client: async_nats::Client,
    host: String,
    metrics: std::sync::Arc<headstream_runner::Metrics>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    use headstream_message::stats::{HostStats, STATS_SUBJECT};
    let subject = format!("{STATS_SUBJECT}.{}", headstream_message::logs::token(&host));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let stats = HostStats {
                host: host.clone(),
                at_ms: crate::live::now_ms() as u64,
                pipelines: metrics.snapshot(),
            };
            let Ok(body) = serde_json::to_vec(&stats) else {
                continue;
            };
            if client.publish(subject.clone(), body.into()).await.is_err() {
                tracing::debug!("cannot publish the heartbeat");
            }
        }
    })
}
