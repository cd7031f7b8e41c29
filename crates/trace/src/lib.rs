//! Traces across the bus.
//!
//! A message carries its trace in a W3C `traceparent` NATS header ([`TraceParent`]):
//! `headstream publish` and `request`, and the HTTP gateway, set one; a host reads it, and its
//! result record names the trace (`trace_id`). With an OTLP endpoint ([`Tracer::otlp`]) the
//! host also exports spans of what it did with the message — queue wait and batch assembly,
//! encode, each head, publish — as children of the publisher's span, with the times measured
//! (batch-wide stages share the batch's times). Without one nothing is built or sent: the cost
//! is reading one header.
#![deny(missing_docs)]

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Spans waiting to be exported; past it they are dropped (and the SDK counts them).
const SPAN_QUEUE: usize = 65_536;

/// The NATS header (and HTTP header) that carries a message's trace.
pub const TRACEPARENT: &str = "traceparent";

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The OTLP exporter could not be built (a malformed endpoint, say).
    #[error("cannot export traces to {endpoint}: {reason}")]
    Exporter {
        /// The endpoint given.
        endpoint: String,
        /// What the exporter said.
        reason: String,
    },
}

/// A W3C trace context (`00-<trace id>-<parent span id>-<flags>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace, 16 bytes.
    pub trace_id: [u8; 16],
    /// The span the message was sent in, 8 bytes.
    pub span_id: [u8; 8],
    /// Whether the sender sampled the trace.
    pub sampled: bool,
}

impl TraceParent {
    /// A new trace, with a fresh root span id, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1).to_be_bytes(),
            span_id: rand::random::<u64>().max(1).to_be_bytes(),
            sampled: true,
        }
    }

    /// Parses a `traceparent` value; `None` for anything malformed (version `ff`, all-zero
    /// ids, wrong lengths or non-hex), which the W3C spec says to ignore.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
            return None;
        }
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16)
            .ok()
            .filter(|_| trace.len() == 32)?;
        let span_id = u64::from_str_radix(span, 16)
            .ok()
            .filter(|_| span.len() == 16)?;
        let flags = u8::from_str_radix(flags, 16)
            .ok()
            .filter(|_| flags.len() == 2)?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id: trace_id.to_be_bytes(),
            span_id: span_id.to_be_bytes(),
            sampled: flags & 1 == 1,
        })
    }

    /// The trace id as 32 lower-case hex digits, as result records carry it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", u128::from_be_bytes(self.trace_id))
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            u128::from_be_bytes(self.trace_id),
            u64::from_be_bytes(self.span_id),
            u8::from(self.sampled)
        )
    }
}

/// The ids of a span: its trace, its own id, its parent's (none for a trace's root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// The span it is a child of: the sender's, from its `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// Whether the trace is sampled (exported).
    pub sampled: bool,
}

impl SpanIds {
    /// A new span under `parent` (a message's `traceparent`).
    pub fn under(parent: TraceParent) -> Self {
        Self {
            trace_id: parent.trace_id,
            span_id: rand::random::<u64>().max(1).to_be_bytes(),
            parent: Some(parent.span_id),
            sampled: parent.sampled,
        }
    }

    /// The root span of a new trace.
    pub fn root() -> Self {
        let fresh = TraceParent::new_root();
        Self {
            trace_id: fresh.trace_id,
            span_id: fresh.span_id,
            parent: None,
            sampled: true,
        }
    }

    /// The `traceparent` that makes what is sent from this span its child.
    pub fn traceparent(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            span_id: self.span_id,
            sampled: self.sampled,
        }
    }
}

/// A span to record, with its stages as children.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Its ids.
    pub ids: SpanIds,
    /// Its name.
    pub name: Cow<'static, str>,
    /// Producer (a publisher), consumer (a host), internal.
    pub kind: SpanKind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<(&'static str, String)>,
    /// Its children.
    pub stages: Vec<Stage>,
}

/// One stage of a message's life, measured: a span to export.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The span's name (`encode`, `head sentiment`, ...).
    pub name: Cow<'static, str>,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<(&'static str, String)>,
}

impl Stage {
    /// A stage from `start` to `end`.
    pub fn new(name: impl Into<Cow<'static, str>>, start: SystemTime, end: SystemTime) -> Self {
        Self {
            name: name.into(),
            start,
            end,
            attributes: Vec::new(),
        }
    }

    /// With an attribute.
    pub fn with(mut self, key: &'static str, value: impl ToString) -> Self {
        self.attributes.push((key, value.to_string()));
        self
    }
}

/// Exports spans with OTLP/HTTP (protobuf). Two tracers are equal when they export to the
/// same endpoint.
#[derive(Debug, Clone)]
pub struct Tracer {
    endpoint: String,
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

impl PartialEq for Tracer {
    fn eq(&self, other: &Self) -> bool {
        self.endpoint == other.endpoint
    }
}

impl Eq for Tracer {}

impl Tracer {
    /// A tracer exporting to `endpoint` (the collector's base URL, e.g.
    /// `http://127.0.0.1:4318`; spans go to `<endpoint>/v1/traces`), as service `service`.
    /// Spans are batched and sent from a background thread; a collector that is down costs
    /// dropped spans, never a blocked message.
    pub fn otlp(endpoint: &str, service: &str) -> Result<Self, TraceError> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| TraceError::Exporter {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        // Every message of a busy host makes several spans: a queue sized for seconds of them,
        // sent every second (the SDK's defaults, 2,048 spans every 5 s, drop most of them).
        let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                opentelemetry_sdk::trace::BatchConfigBuilder::default()
                    .with_max_queue_size(SPAN_QUEUE)
                    .with_max_export_batch_size(4096)
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_id_generator(PresetIds)
            .with_span_processor(batch)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("headstream");
        Ok(Self {
            endpoint: endpoint.to_owned(),
            provider,
            tracer,
        })
    }

    /// Records `span` and its stages (as its children), with the ids it was given.
    pub fn record(&self, span: SpanRecord) {
        let ids = span.ids;
        let flags = if ids.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let parent_cx = match ids.parent {
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(ids.trace_id),
                SpanId::from_bytes(parent),
                flags,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        // The root's ids were chosen before the message was published (its result record
        // names the trace): the id generator hands them to the SDK for this span.
        PRESET.with(|p| p.set(Some((ids.trace_id, ids.span_id))));
        let mut root = self
            .tracer
            .span_builder(span.name)
            .with_kind(span.kind)
            .with_start_time(span.start)
            .with_attributes(
                span.attributes
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v)),
            )
            .start_with_context(&self.tracer, &parent_cx);
        PRESET.with(|p| p.set(None));
        let cx = Context::new().with_remote_span_context(root.span_context().clone());
        for stage in span.stages {
            let mut child = self
                .tracer
                .span_builder(stage.name)
                .with_kind(SpanKind::Internal)
                .with_start_time(stage.start)
                .with_attributes(
                    stage
                        .attributes
                        .into_iter()
                        .map(|(k, v)| KeyValue::new(k, v)),
                )
                .start_with_context(&self.tracer, &cx);
            child.end_with_timestamp(stage.end);
        }
        root.end_with_timestamp(span.end);
    }

    /// Sends what is buffered and stops exporting (what a process does before it exits);
    /// blocking, so call it off the async threads. Later clones record nothing.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!("shutting the trace exporter down: {e}");
        }
    }

    /// Sends what is buffered now (before a process exits, say).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::debug!("flushing traces: {e}");
        }
    }
}

/// What side of an exchange a span is (producer, consumer, server, internal).
pub use opentelemetry::trace::SpanKind as Kind;

thread_local! {
    /// Ids for the next span this thread starts, when they were chosen beforehand.
    static PRESET: std::cell::Cell<Option<([u8; 16], [u8; 8])>> = const { std::cell::Cell::new(None) };
}

/// Random ids, except for a span whose ids were chosen beforehand ([`PRESET`]).
#[derive(Debug)]
struct PresetIds;

impl opentelemetry_sdk::trace::IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        PRESET.with(std::cell::Cell::get).map_or_else(
            || TraceId::from(rand::random::<u128>().max(1)),
            |(t, _)| TraceId::from_bytes(t),
        )
    }

    fn new_span_id(&self) -> SpanId {
        PRESET.with(std::cell::Cell::get).map_or_else(
            || SpanId::from(rand::random::<u64>().max(1)),
            |(_, s)| SpanId::from_bytes(s),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::TraceParent;

    #[test]
    fn traceparent_round_trips_and_rejects_what_the_spec_says_to_ignore() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap_or_else(|| panic!("valid"));
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parsed.sampled);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
