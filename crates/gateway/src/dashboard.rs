//! The live dashboard (`headstream dashboard`): one page showing the hosts, their pipelines
//! with head versions and sources, messages per second, errors by kind, latency percentiles,
//! canary share, shadow agreement and recent deploy events, updated by server-sent events.
//!
//! Its sources are on the bus: `headstream.discover` (what each host serves), the hosts'
//! heartbeats (`headstream.stats.<host>`, cumulative counters every second) and deploy events
//! (`headstream.events.>`). It holds no state of its own beyond the last heartbeat of each
//! host and the last events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, Redirect};
use axum::routing::get;
use futures::StreamExt as _;
use headstream_message::embeddings::{DISCOVER_SUBJECT, HostStatus};
use headstream_message::stats::{HostStats, STATS_SUBJECT};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The page: plain HTML and script, no framework, no build step.
const PAGE: &str = include_str!("dashboard/index.html");

/// Deploy events kept for the page.
const EVENTS_KEPT: usize = 50;

/// A host is shown as gone when neither discovery nor a heartbeat has seen it for this long.
const GONE_AFTER_MS: u64 = 10_000;

#[derive(Debug, Clone)]
struct Shared {
    updates: broadcast::Sender<String>,
    latest: Arc<Mutex<String>>,
}

/// The dashboard's routes (`/` redirects to `/dashboard`, `/dashboard/events` streams
/// snapshots), with the task that follows the bus on `client`.
pub fn router(client: async_nats::Client) -> Router {
    let (updates, _) = broadcast::channel(64);
    let shared = Shared {
        updates,
        latest: Arc::new(Mutex::new(String::from("{}"))),
    };
    tokio::spawn(follow(client, shared.clone()));
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .route("/dashboard", get(|| async { Html(PAGE) }))
        .route("/dashboard/events", get(events))
        .with_state(shared)
}

/// Serves the dashboard on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    client: async_nats::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(client))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Server-sent events: the latest snapshot at once, then every update.
async fn events(
    State(shared): State<Shared>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let first = shared.latest.lock().map(|l| l.clone()).unwrap_or_default();
    let rx = shared.updates.subscribe();
    let updates = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(text) => return Some((text, rx)),
                // A slow page skips snapshots rather than holding the sender back.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures::stream::once(async move { first })
        .chain(updates)
        .map(|text| Ok(Event::default().data(text)));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// What the dashboard knows of one host.
#[derive(Debug, Default)]
struct HostView {
    status: Option<HostStatus>,
    seen_ms: u64,
    stats: Option<HostStats>,
    previous: Option<HostStats>,
}

/// Follows discovery, heartbeats and events, and sends a snapshot every second and on every
/// deploy event.
async fn follow(client: async_nats::Client, shared: Shared) {
    let (stats, events) = match (
        client.subscribe(format!("{STATS_SUBJECT}.>")).await,
        client
            .subscribe(format!("{}.>", headstream_registry::EVENTS_SUBJECT))
            .await,
    ) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("dashboard: cannot subscribe: {e}");
            return;
        }
    };
    let mut stats = stats;
    let mut events = events;
    let mut hosts: BTreeMap<String, HostView> = BTreeMap::new();
    let mut recent: VecDeque<Value> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut discovery = tokio::time::interval(Duration::from_secs(2));
    let mut rediscover = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if std::mem::take(&mut rediscover) {
                    discover(&client, &mut hosts).await;
                }
            }
            _ = discovery.tick() => {
                discover(&client, &mut hosts).await;
                continue;
            }
            Some(message) = stats.next() => {
                if let Ok(beat) = serde_json::from_slice::<HostStats>(&message.payload) {
                    let view = hosts.entry(beat.host.clone()).or_default();
                    view.seen_ms = now_ms();
                    view.previous = view.stats.replace(beat);
                }
                continue;
            }
            Some(message) = events.next() => {
                if let Ok(event) = serde_json::from_slice::<Value>(&message.payload) {
                    recent.push_front(event);
                    recent.truncate(EVENTS_KEPT);
                }
                // What the hosts serve has changed: show the event at once, ask again on the
                // next tick (once, however many events came).
                rediscover = true;
            }
        }
        let text = snapshot(&hosts, &recent).to_string();
        if let Ok(mut latest) = shared.latest.lock() {
            latest.clone_from(&text);
        }
        let _ = shared.updates.send(text);
    }
}

async fn discover(client: &async_nats::Client, hosts: &mut BTreeMap<String, HostView>) {
    let Ok(found) =
        crate::api::gather::<HostStatus>(client, DISCOVER_SUBJECT, Duration::from_millis(500))
            .await
    else {
        return;
    };
    let now = now_ms();
    for status in found {
        let view = hosts.entry(status.host.clone()).or_default();
        view.seen_ms = now;
        view.status = Some(status);
    }
    hosts.retain(|_, v| now.saturating_sub(v.seen_ms) < 10 * GONE_AFTER_MS);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The page's model: hosts, pipelines merged across hosts (rates and latency over the last
/// heartbeat interval, totals since the hosts started), recent events.
fn snapshot(hosts: &BTreeMap<String, HostView>, events: &VecDeque<Value>) -> Value {
    let now = now_ms();
    let mut host_rows = Vec::new();
    let mut pipelines: BTreeMap<String, PipelineView> = BTreeMap::new();
    for (id, view) in hosts {
        let gone = now.saturating_sub(view.seen_ms) > GONE_AFTER_MS;
        let served: Vec<&str> = view
            .status
            .iter()
            .flat_map(|s| s.pipelines.iter().map(|p| p.name.as_str()))
            .collect();
        host_rows.push(json!({
            "host": id,
            "version": view.status.as_ref().map(|s| s.version.clone()),
            "encoder": view.status.as_ref().map(|s| s.encoder.clone()),
            "pipelines": served,
            "seen_ms_ago": now.saturating_sub(view.seen_ms),
            "gone": gone,
        }));
        if gone {
            continue;
        }
        for p in view.status.iter().flat_map(|s| &s.pipelines) {
            let entry = pipelines.entry(p.name.clone()).or_default();
            entry.info = json!({
                "input": p.input, "output": p.output, "delivery": p.delivery, "source": p.source,
                "heads": p.heads,
            });
            entry.hosts.push(id.clone());
        }
        let (Some(now_stats), previous) = (&view.stats, &view.previous) else {
            continue;
        };
        let seconds = previous
            .as_ref()
            .map(|p| now_stats.at_ms.saturating_sub(p.at_ms) as f64 / 1000.0)
            .filter(|s| *s > 0.0);
        if let Some(counters) = now_stats.pipelines.as_object() {
            for (name, c) in counters {
                let before = previous.as_ref().map(|p| &p.pipelines[name]);
                pipelines
                    .entry(name.clone())
                    .or_default()
                    .add(c, before, seconds);
            }
        }
    }
    // A pipeline no live host serves any more is gone, whatever counters still name it.
    let pipeline_rows: Vec<Value> = pipelines
        .into_iter()
        .filter(|(_, view)| !view.hosts.is_empty())
        .map(|(name, view)| view.into_json(name))
        .collect();
    json!({
        "at_ms": now,
        "hosts": host_rows,
        "pipelines": pipeline_rows,
        "events": events,
    })
}

/// One pipeline, summed over the hosts serving it.
#[derive(Debug, Default)]
struct PipelineView {
    info: Value,
    hosts: Vec<String>,
    results_per_s: f64,
    errors_per_s: f64,
    results: f64,
    errors: BTreeMap<String, f64>,
    head_failures: BTreeMap<String, f64>,
    canary: BTreeMap<String, f64>,
    shadow: BTreeMap<String, (f64, f64)>,
    /// Latency over the last interval: cumulative count by bucket upper bound (µs).
    latency: BTreeMap<u64, f64>,
    latency_count: f64,
}

impl PipelineView {
    fn add(&mut self, now: &Value, before: Option<&Value>, seconds: Option<f64>) {
        let num = |v: &Value, path: &[&str]| -> f64 {
            path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0)
        };
        let results = num(now, &["messages", "result"]);
        let errors = num(now, &["messages", "error"]);
        self.results += results;
        if let (Some(before), Some(s)) = (before, seconds) {
            self.results_per_s += (results - num(before, &["messages", "result"])).max(0.0) / s;
            self.errors_per_s += (errors - num(before, &["messages", "error"])).max(0.0) / s;
        }
        let sum_into = |group: &str, into: &mut BTreeMap<String, f64>| {
            for (k, v) in now[group].as_object().into_iter().flatten() {
                *into.entry(k.clone()).or_default() += v.as_f64().unwrap_or(0.0);
            }
        };
        sum_into("errors", &mut self.errors);
        sum_into("head_failures", &mut self.head_failures);
        sum_into("canary", &mut self.canary);
        for (head, v) in now["shadow"].as_object().into_iter().flatten() {
            let e = self.shadow.entry(head.clone()).or_default();
            e.0 += num(v, &["agree"]);
            e.1 += num(v, &["disagree"]);
        }
        // Latency over the last interval: this heartbeat's buckets minus the previous one's.
        let buckets = |v: Option<&Value>| -> HashMap<u64, f64> {
            v.and_then(|v| v["latency"]["buckets"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|b| {
                    let bound = b[0].as_f64()?;
                    Some(((bound * 1e6) as u64, b[1].as_f64()?))
                })
                .collect()
        };
        let (now_b, before_b) = (buckets(Some(now)), buckets(before));
        // Only over an interval: the first heartbeat's histogram covers the host's whole life.
        let total = before.map_or(0.0, |b| {
            num(now, &["latency", "count"]) - num(b, &["latency", "count"])
        });
        if total > 0.0 {
            self.latency_count += total;
            for (bound, count) in now_b {
                *self.latency.entry(bound).or_default() +=
                    count - before_b.get(&bound).copied().unwrap_or(0.0);
            }
        }
    }

    fn percentile(&self, q: f64) -> Option<f64> {
        if self.latency_count <= 0.0 {
            return None;
        }
        let target = q * self.latency_count;
        self.latency
            .iter()
            .find(|(_, cumulative)| **cumulative >= target)
            .map(|(bound, _)| *bound as f64 / 1000.0)
    }

    fn into_json(self, name: String) -> Value {
        let share = |n: f64| (self.results > 0.0).then(|| n / self.results);
        json!({
            "name": name,
            "info": self.info,
            "hosts": self.hosts,
            "results_per_s": (self.results_per_s * 10.0).round() / 10.0,
            "errors_per_s": (self.errors_per_s * 10.0).round() / 10.0,
            "results": self.results,
            "errors": self.errors,
            "head_failures": self.head_failures,
            "latency_ms": {
                "p50": self.percentile(0.5),
                "p95": self.percentile(0.95),
                "p99": self.percentile(0.99),
            },
            "canary_share": self.canary.iter().map(|(h, n)| (h.clone(), share(*n))).collect::<BTreeMap<_, _>>(),
            "shadow_agreement": self.shadow.iter().map(|(h, (a, d))| {
                (h.clone(), (a + d > 0.0).then(|| a / (a + d)))
            }).collect::<BTreeMap<_, _>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::PipelineView;

    fn beat(
        results: f64,
        errors: f64,
        latency: &[(f64, f64)],
        canary: f64,
        agree: f64,
    ) -> serde_json::Value {
        let count = latency.last().map_or(0.0, |l| l.1);
        json!({
            "messages": { "result": results, "error": errors },
            "errors": { "not_json": errors },
            "canary": { "sentiment": canary },
            "shadow": { "sentiment": { "agree": agree, "disagree": results - agree } },
            "latency": { "count": count, "buckets": latency.iter().map(|(b, c)| json!([b, c])).collect::<Vec<_>>() },
        })
    }

    #[test]
    fn rates_percentiles_and_shares_come_from_the_last_interval_summed_over_hosts() {
        let mut view = PipelineView::default();
        // Host a: 100 results in 2 s, latencies 10 ms (90) and 50 ms (10) in that interval.
        let before = beat(
            100.0,
            0.0,
            &[(0.01, 10.0), (0.05, 10.0), (0.1, 10.0)],
            10.0,
            90.0,
        );
        let now = beat(
            200.0,
            4.0,
            &[(0.01, 100.0), (0.05, 110.0), (0.1, 110.0)],
            30.0,
            180.0,
        );
        view.add(&now, Some(&before), Some(2.0));
        // Host b: 50 results in 1 s, all within 100 ms.
        let before = beat(0.0, 0.0, &[(0.01, 0.0), (0.05, 0.0), (0.1, 0.0)], 0.0, 0.0);
        let now = beat(
            50.0,
            0.0,
            &[(0.01, 0.0), (0.05, 0.0), (0.1, 50.0)],
            0.0,
            50.0,
        );
        view.add(&now, Some(&before), Some(1.0));
        let out = view.into_json("p".into());
        assert_eq!(out["results_per_s"], 100.0, "{out}");
        assert_eq!(out["errors_per_s"], 2.0, "{out}");
        assert_eq!(out["errors"]["not_json"], 4.0);
        // 150 latencies: 90 at ≤10 ms, 10 at ≤50 ms, 50 at ≤100 ms.
        assert_eq!(out["latency_ms"]["p50"], 10.0, "{out}");
        assert_eq!(out["latency_ms"]["p95"], 100.0, "{out}");
        // Canary served 30 of 250 results; the shadow agreed on 230 of 250.
        assert_eq!(out["canary_share"]["sentiment"], 30.0 / 250.0);
        assert_eq!(out["shadow_agreement"]["sentiment"], 230.0 / 250.0);
    }
}
