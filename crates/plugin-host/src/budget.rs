//! Budgets for what a head can make the host do on its behalf: encoder work through `embed`
//! and log lines through `log`. A head's own CPU and memory are bounded by its deadline and
//! memory cap; these bound the host's side.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a head may ask of the encoder through `embed` while it configures. Every limit is
/// checked before the encoder runs; a head over any of them fails `configure` with a `config`
/// error that names the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedLimits {
    /// Texts in one `embed` call (`embed_texts_per_call`).
    pub texts_per_call: usize,
    /// Tokens the encoder runs for one call, after truncation to the model's maximum length
    /// (`embed_tokens_per_call`).
    pub tokens_per_call: usize,
    /// Texts over all `embed` calls of one `configure` (`embed_texts`).
    pub texts: usize,
    /// Tokens the encoder runs over all `embed` calls of one `configure` (`embed_tokens`).
    /// Texts the head embedded before (a reconfigure after a trap) come from the head's cache
    /// and cost no tokens.
    pub tokens: usize,
    /// Bytes of one text (`embed_text_bytes`): what the tokenizer reads before truncating.
    pub text_bytes: usize,
}

impl Default for EmbedLimits {
    /// Sized so the whole budget encodes in about a second on two cores (embedding runs in
    /// small passes: ~1,400–1,800 tokens/s, 3–6 ms per short text), and fits the shipped
    /// prototype head's needs (9 label examples, ~100 tokens, in `support-triage`) many times.
    fn default() -> Self {
        Self {
            texts_per_call: 64,
            tokens_per_call: 1024,
            texts: 128,
            tokens: 2048,
            text_bytes: 8 << 10,
        }
    }
}

/// Severity of a head's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected the head handled.
    Warn,
    /// Something the head could not handle.
    Error,
}

impl LogLevel {
    /// Lower-case name, as log records carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Where a head's log lines go besides the host's own log (the bus, say). It hears only the
/// lines within the head's [`LogLimits`], already cut and escaped, so it never carries more than
/// the budget; it is called on the head's thread and must not block.
pub trait LogSink: Send + Sync + std::fmt::Debug {
    /// One admitted line from head `head` (`name@version` as the head describes itself).
    fn line(&self, head: &str, level: LogLevel, message: &str);
}

/// How much a head may write to the host's log. Lines over the budget are dropped, counted
/// and summarised once per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Longest line kept, in bytes; the rest is cut (`log_line_bytes`).
    pub line_bytes: usize,
    /// Lines a head may write at once, e.g. within one batch (`log_burst`).
    pub burst: u32,
    /// Lines per second a head may write in the long run (`log_lines_per_s`).
    pub lines_per_second: u32,
}

impl Default for LogLimits {
    /// At most 20 lines of 1 KiB (≈ 20 KiB) at once and 10 lines a second after that.
    fn default() -> Self {
        Self {
            line_bytes: 1 << 10,
            burst: 20,
            lines_per_second: 10,
        }
    }
}

/// Why the host stopped a head's call from inside a host function: the trap's payload, turned
/// into the head's failure by the caller.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Refusal {
    /// An `embed` limit would be exceeded.
    #[error(
        "embed budget exceeded: {what}; the limit is {limit} (raise `{key}` under [heads.limits] if the head needs more)"
    )]
    Budget {
        /// What the head asked for.
        what: String,
        /// The limit's value.
        limit: usize,
        /// The `[heads.limits]` key that raises it.
        key: &'static str,
    },
    /// The setup deadline passed while the host worked for the head.
    #[error(
        "setup ran past its {deadline:?} deadline, {host:?} of it in `embed` on the head's behalf"
    )]
    Deadline {
        /// The setup deadline.
        deadline: Duration,
        /// Time the host spent embedding for the head in this setup.
        host: Duration,
    },
}

/// What one `configure` has used of its embedding budget and its setup time.
#[derive(Debug, Default)]
pub(crate) struct EmbedMeter {
    /// When setup started (`None`: not configuring, `embed` is refused).
    pub(crate) started: Option<Instant>,
    pub(crate) texts: usize,
    pub(crate) tokens: usize,
    pub(crate) host_time: Duration,
}

impl EmbedMeter {
    /// Starts metering a new `configure`.
    pub(crate) fn start(&mut self) {
        *self = Self {
            started: Some(Instant::now()),
            ..Self::default()
        };
    }

    /// Checks a call of `texts` against the per-call and per-configure text limits and the
    /// byte limit, and counts it.
    pub(crate) fn admit_texts(
        &mut self,
        texts: &[String],
        limits: &EmbedLimits,
    ) -> Result<(), Refusal> {
        if texts.len() > limits.texts_per_call {
            return Err(Refusal::Budget {
                what: format!("{} texts in one call", texts.len()),
                limit: limits.texts_per_call,
                key: "embed_texts_per_call",
            });
        }
        if self.texts + texts.len() > limits.texts {
            return Err(Refusal::Budget {
                what: format!("{} texts in one configure", self.texts + texts.len()),
                limit: limits.texts,
                key: "embed_texts",
            });
        }
        if let Some((i, t)) = texts
            .iter()
            .enumerate()
            .find(|(_, t)| t.len() > limits.text_bytes)
        {
            return Err(Refusal::Budget {
                what: format!("text {i} of the call is {} bytes", t.len()),
                limit: limits.text_bytes,
                key: "embed_text_bytes",
            });
        }
        self.texts += texts.len();
        Ok(())
    }

    /// Checks `tokens` more encoder tokens for one call against the per-call and
    /// per-configure limits, and counts them.
    pub(crate) fn admit_tokens(
        &mut self,
        tokens: usize,
        limits: &EmbedLimits,
    ) -> Result<(), Refusal> {
        if tokens > limits.tokens_per_call {
            return Err(Refusal::Budget {
                what: format!("{tokens} tokens to encode in one call"),
                limit: limits.tokens_per_call,
                key: "embed_tokens_per_call",
            });
        }
        if self.tokens + tokens > limits.tokens {
            return Err(Refusal::Budget {
                what: format!("{} tokens to encode in one configure", self.tokens + tokens),
                limit: limits.tokens,
                key: "embed_tokens",
            });
        }
        self.tokens += tokens;
        Ok(())
    }

    /// Fails once the setup deadline has passed (the head's own time and the host's together).
    pub(crate) fn check_deadline(&self, deadline: Duration) -> Result<(), Refusal> {
        match self.started {
            Some(started) if started.elapsed() > deadline => Err(Refusal::Deadline {
                deadline,
                host: self.host_time,
            }),
            _ => Ok(()),
        }
    }
}

/// Embeddings a head asked for before, kept across its instances so a reconfigure (after a
/// trap) does not cost the encoder again. Holds at most one configure's budget of texts.
#[derive(Debug, Default)]
pub(crate) struct EmbedCache {
    vectors: Mutex<HashMap<String, Vec<f32>>>,
}

impl EmbedCache {
    pub(crate) fn get(&self, text: &str) -> Option<Vec<f32>> {
        self.lock().get(text).cloned()
    }

    pub(crate) fn insert(&self, text: String, vector: Vec<f32>, capacity: usize) {
        let mut map = self.lock();
        if map.len() < capacity {
            map.insert(text, vector);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<f32>>> {
        self.vectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A head's log budget: a token bucket shared by all its instances, and the count of lines
/// it dropped.
#[derive(Debug)]
pub(crate) struct LogMeter {
    limits: LogLimits,
    bucket: Mutex<(f64, Instant)>,
    unmetered: AtomicU64,
    unreported: AtomicU64,
}

impl LogMeter {
    pub(crate) fn new(limits: LogLimits) -> Self {
        Self {
            limits,
            bucket: Mutex::new((f64::from(limits.burst), Instant::now())),
            unmetered: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    pub(crate) fn limits(&self) -> &LogLimits {
        &self.limits
    }

    /// Whether one more line fits the budget; a line that does not is counted as dropped.
    pub(crate) fn admit(&self) -> bool {
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let refill =
            now.duration_since(bucket.1).as_secs_f64() * f64::from(self.limits.lines_per_second);
        bucket.0 = (bucket.0 + refill).min(f64::from(self.limits.burst));
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            self.unmetered.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Lines dropped since the last call of this (for a summary line).
    pub(crate) fn take_unreported(&self) -> u64 {
        self.unreported.swap(0, Ordering::Relaxed)
    }

    /// Lines dropped since the last call of this (for a metrics counter).
    pub(crate) fn take_unmetered(&self) -> u64 {
        self.unmetered.swap(0, Ordering::Relaxed)
    }
}

/// A head's log line as the host writes it: at most `max` bytes of `message` (cut at a
/// character boundary, with how much was cut), control characters escaped so a head cannot
/// forge extra lines or terminal sequences in the host's log.
pub(crate) fn sanitize(message: &str, max: usize) -> String {
    let mut out = String::with_capacity(message.len().min(max) + 24);
    let mut kept = 0;
    for c in message.chars() {
        let width = if c.is_control() {
            c.escape_default().len()
        } else {
            c.len_utf8()
        };
        if out.len() + width > max {
            break;
        }
        kept += c.len_utf8();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if kept < message.len() {
        let _ = write!(out, "… [{} more bytes cut]", message.len() - kept);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let line = "é".repeat(1000);
        let out = sanitize(&line, 11);
        assert!(out.starts_with("ééééé…"), "{out}");
        assert!(out.ends_with("[1990 more bytes cut]"), "{out}");
        assert_eq!(sanitize("short", 1024), "short");
    }

    #[test]
    fn control_characters_cannot_forge_lines() {
        let out = sanitize("ok\nFAKE host line\u{1b}[31m", 1024);
        assert!(!out.contains('\n') && !out.contains('\u{1b}'), "{out}");
        assert!(out.contains("\\n") && out.contains("\\u{1b}"), "{out}");
    }

    #[test]
    fn the_bucket_admits_a_burst_then_drops() {
        let meter = LogMeter::new(LogLimits {
            line_bytes: 16,
            burst: 5,
            lines_per_second: 1,
        });
        let admitted = (0..100).filter(|_| meter.admit()).count();
        // The burst, plus at most one refilled during the loop.
        assert!((5..=6).contains(&admitted), "{admitted}");
        assert_eq!(meter.take_unmetered(), 100 - admitted as u64);
        assert_eq!(meter.take_unreported(), 100 - admitted as u64);
        assert_eq!(meter.take_unreported(), 0);
    }

    #[test]
    fn embed_limits_name_the_key_that_raises_them() {
        let limits = EmbedLimits::default();
        let mut meter = EmbedMeter::default();
        meter.start();
        let refusal = |r: Result<(), Refusal>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let many = vec!["x".to_owned(); limits.texts_per_call + 1];
        let err = refusal(meter.admit_texts(&many, &limits));
        assert!(err.contains("`embed_texts_per_call`"), "{err:?}");
        let long = vec!["x".repeat(limits.text_bytes + 1)];
        let err = refusal(meter.admit_texts(&long, &limits));
        assert!(err.contains("`embed_text_bytes`"), "{err:?}");
        assert!(meter.admit_tokens(limits.tokens_per_call, &limits).is_ok());
        assert!(meter.admit_tokens(limits.tokens_per_call, &limits).is_ok());
        let err = refusal(meter.admit_tokens(1, &limits));
        assert!(err.contains("`embed_tokens`"), "{err:?}");
    }
}
