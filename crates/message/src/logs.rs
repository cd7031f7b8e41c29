//! Head log records: what a head wrote through `log`, as hosts publish it on
//! `headstream.logs.<pipeline>.<head>` and `headstream logs` prints it.

use serde::{Deserialize, Serialize};

/// The subject prefix of head log records.
pub const LOGS_SUBJECT: &str = "headstream.logs";

/// The JetStream stream that keeps recent head log records (created by hosts, bounded).
pub const LOGS_STREAM: &str = "HEADSTREAM_LOGS";

/// One line a head wrote, within its log budget (already cut to its line length and escaped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadLogRecord {
    /// When the host received it, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The host that ran the head.
    pub host: String,
    /// The pipeline.
    pub pipeline: String,
    /// The head's name in the pipeline.
    pub head: String,
    /// `name@version` of the head that wrote it (a canary or shadow names its own).
    pub version: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The line.
    pub message: String,
}

/// The subject a head's lines go to: `headstream.logs.<pipeline>.<head>`, with `.`, `*`, `>`
/// and whitespace in either name replaced by `_` so each is one subject token.
pub fn logs_subject(pipeline: &str, head: &str) -> String {
    format!("{LOGS_SUBJECT}.{}.{}", token(pipeline), token(head))
}

/// `name` as one subject token.
pub fn token(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_become_single_tokens() {
        assert_eq!(
            super::logs_subject("support.v2", "topic"),
            "headstream.logs.support_v2.topic"
        );
        assert_eq!(super::token("a b>*"), "a_b__");
    }
}
