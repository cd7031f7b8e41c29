//! Host heartbeats: every second a host publishes its counters on
//! `headstream.stats.<host>` for dashboards.

use serde::{Deserialize, Serialize};

/// The subject prefix of host heartbeats.
pub const STATS_SUBJECT: &str = "headstream.stats";

/// One heartbeat: the host's cumulative counters per pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// The host.
    pub host: String,
    /// When it was taken, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Per pipeline: `messages` (by outcome), `errors` (by kind), `head_failures`, `canary`
    /// and `shadow` (by head), `latency` (`count`, `buckets` of `[seconds, cumulative]`).
    pub pipelines: serde_json::Value,
}
