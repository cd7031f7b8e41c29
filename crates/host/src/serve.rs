//! Serving a pipeline on NATS: core subjects (a queue group per pipeline, at-most-once, with
//! request/reply) or JetStream (a durable pull consumer, at-least-once: a message is acked only
//! after its result or error record is published). Micro-batches; results to the output
//! subject, unusable messages to the error subject with their payload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use headstream_pipeline::Pipeline;
use tokio::time::Instant;

use headstream_runner::{ErrorRecord, InputError, Message, Runner, parse_message_within};
use headstream_trace::{SpanIds, SpanRecord, Stage, TraceParent};

use crate::HostError;

/// How [`serve`] consumes a pipeline's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Input subject.
    pub subject: String,
    /// Queue group shared by every host serving the pipeline (core delivery).
    pub queue_group: String,
    /// Result subject.
    pub output: String,
    /// Error subject.
    pub errors: String,
    /// Most messages per batch.
    pub max_batch_size: usize,
    /// Longest wait to fill a batch.
    pub max_wait: Duration,
    /// JetStream delivery (at-least-once) instead of a core queue group (at-most-once).
    pub jetstream: Option<JetStreamOptions>,
    /// This host's id, added to every result as `host` (so consumers see who served it).
    pub host: Option<String>,
    /// Where spans of each message's stages go (OTLP), if anywhere.
    pub tracer: Option<headstream_trace::Tracer>,
}

/// JetStream delivery: a stream over the input subject and a durable pull consumer shared by
/// every host serving the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamOptions {
    /// Stream name (created over the input subject if missing).
    pub stream: String,
    /// Durable consumer name.
    pub consumer: String,
    /// Deliveries a message gets; one delivered more often goes to the error subject.
    pub max_deliver: u32,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Stream replicas in a NATS cluster (used when the stream is created).
    pub replicas: u32,
    /// Publish results and error records through JetStream and ack an input only once the
    /// streams capturing them have stored them.
    pub confirm: bool,
}

impl ServeOptions {
    /// The options a pipeline config asks for.
    pub fn from_pipeline(pipeline: &Pipeline) -> Self {
        let name = pipeline.name.get_ref();
        let delivery = &pipeline.delivery;
        let jetstream = (delivery.mode.get_ref() == "jetstream").then(|| JetStreamOptions {
            stream: delivery
                .stream
                .clone()
                .unwrap_or_else(|| name.to_uppercase().replace(['-', '.'], "_")),
            consumer: delivery.consumer.clone().unwrap_or_else(|| name.clone()),
            max_deliver: delivery.max_deliver,
            ack_wait: Duration::from_millis(delivery.ack_wait_ms),
            replicas: delivery.replicas,
            confirm: *pipeline.output.confirm.get_ref(),
        });
        Self {
            subject: pipeline.input.subject.get_ref().clone(),
            queue_group: delivery.queue_group.clone().unwrap_or_else(|| name.clone()),
            output: pipeline.output.subject.get_ref().clone(),
            errors: pipeline.output.errors.get_ref().clone(),
            max_batch_size: *pipeline.batching.max_batch_size.get_ref() as usize,
            max_wait: Duration::from_millis(pipeline.batching.max_wait_ms),
            jetstream,
            host: None,
            tracer: None,
        }
    }
}

/// One received message, whichever the delivery.
struct Incoming {
    payload: Bytes,
    /// `Nats-Msg-Id`, if the publisher set one.
    header_id: Option<String>,
    /// Id for messages with neither a body id nor a header id: stable across redeliveries
    /// for JetStream (stream and sequence), fresh for core messages.
    fallback_id: Option<String>,
    /// Where a core request wants its answer.
    reply: Option<async_nats::Subject>,
    /// Delivery count (1 for core messages).
    delivered: u64,
    /// The JetStream message to acknowledge once its result is out.
    ack: Option<async_nats::jetstream::Message>,
    /// The trace it travels in (its `traceparent` header).
    trace: Option<TraceParent>,
    /// When this host received it.
    received: SystemTime,
    /// When the stream stored it (JetStream delivery): the start of its wait in the queue.
    queued: Option<SystemTime>,
}

fn header_id(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_owned())
}

fn header_trace(headers: Option<&async_nats::HeaderMap>) -> Option<TraceParent> {
    headers
        .and_then(|h| h.get(headstream_trace::TRACEPARENT))
        .and_then(|v| TraceParent::parse(v.as_str()))
}

/// The runner a served pipeline uses: each batch takes the newest one sent on its channel, so
/// a new version takes over between batches while a batch in flight finishes on the old one.
pub type RunnerSlot = tokio::sync::watch::Receiver<Arc<Runner>>;

/// Serves one pipeline until `shutdown` completes, then finishes the batch in hand and returns.
/// Each batch runs on the runner `slot` holds when it starts. `ready` is told once the
/// subscription (or the stream and consumer) exists, so messages published from then on are
/// served.
pub async fn serve(
    client: async_nats::Client,
    slot: RunnerSlot,
    options: ServeOptions,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HostError> {
    let ready = move || {
        if let Some(ready) = ready {
            let _ = ready.send(());
        }
    };
    let runner = slot.borrow().clone();
    match options.jetstream.clone() {
        None => {
            let subscription = client
                .queue_subscribe(options.subject.clone(), options.queue_group.clone())
                .await
                .map_err(|e| nats_error("subscribe to", &options.subject, e))?;
            tracing::info!(pipeline = runner.name(), subject = %options.subject, group = %options.queue_group, "serving (core)");
            client
                .flush()
                .await
                .map_err(|e| nats_error("subscribe to", &options.subject, e))?;
            ready();
            let incoming = subscription.map(|m| Incoming {
                header_id: header_id(m.headers.as_ref()),
                trace: header_trace(m.headers.as_ref()),
                received: SystemTime::now(),
                queued: None,
                payload: m.payload,
                fallback_id: None,
                reply: m.reply,
                delivered: 1,
                ack: None,
            });
            run_loop(&client, None, &slot, &options, incoming, shutdown).await?;
        }
        Some(js) => {
            let messages = jetstream_messages(&client, &options, &js).await?;
            let confirm = if js.confirm {
                Some(confirming_context(&client, &options).await?)
            } else {
                None
            };
            tracing::info!(pipeline = runner.name(), subject = %options.subject, stream = %js.stream, consumer = %js.consumer, "serving (jetstream)");
            ready();
            let stream_name = js.stream.clone();
            let incoming = messages.filter_map(move |m| {
                let stream_name = stream_name.clone();
                async move {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!("JetStream pull: {e}");
                            return None;
                        }
                    };
                    let (delivered, seq, queued) = m
                        .info()
                        .map(|i| {
                            (
                                i.delivered.max(1) as u64,
                                i.stream_sequence,
                                Some(SystemTime::from(i.published)),
                            )
                        })
                        .unwrap_or((1, 0, None));
                    Some(Incoming {
                        header_id: header_id(m.headers.as_ref()),
                        trace: header_trace(m.headers.as_ref()),
                        received: SystemTime::now(),
                        queued,
                        payload: m.payload.clone(),
                        fallback_id: Some(format!("{stream_name}-{seq}")),
                        reply: None,
                        delivered,
                        ack: Some(m),
                    })
                }
            });
            run_loop(
                &client,
                confirm.as_ref(),
                &slot,
                &options,
                incoming,
                shutdown,
            )
            .await?;
        }
    }
    client
        .flush()
        .await
        .map_err(|e| nats_error("flush", "", e))?;
    Ok(())
}

/// Creates (or finds) the stream and the durable pull consumer, and starts pulling.
async fn jetstream_messages(
    client: &async_nats::Client,
    options: &ServeOptions,
    js: &JetStreamOptions,
) -> Result<async_nats::jetstream::consumer::pull::Stream, HostError> {
    use async_nats::jetstream::{self, consumer, stream};
    let context = jetstream::new(client.clone());
    let stream = context
        .get_or_create_stream(stream::Config {
            name: js.stream.clone(),
            subjects: vec![options.subject.clone()],
            num_replicas: js.replicas.max(1) as usize,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error("create stream for", &options.subject, e))?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(js.consumer.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: js.ack_wait,
            // One delivery more than allowed, so the host sees the message once more and moves
            // it to the error subject instead of the server silently dropping it.
            max_deliver: i64::from(js.max_deliver) + 1,
            // Bounded in-flight work per consumer: backpressure instead of unbounded buffering.
            max_ack_pending: (options.max_batch_size * 4) as i64,
            filter_subject: options.subject.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error("create consumer on", &options.subject, e))?;
    let (expires, heartbeat) = pull_timing(js.ack_wait);
    consumer
        .stream()
        .max_messages_per_batch(options.max_batch_size)
        .expires(expires)
        .heartbeat(heartbeat)
        .messages()
        .await
        .map_err(|e| nats_error("pull from", &options.subject, e))
}

/// How long each pull request lives, and its idle heartbeat, for a consumer with `ack_wait`.
///
/// Short-lived requests with heartbeats: after a reconnect or a cluster node's loss, a lost
/// request is noticed and replaced within seconds rather than at the 30 s default expiry. And
/// a request lives at most half of `ack_wait`: one left behind by a lost connection (which the
/// consumer's leader goes on filling until it expires) is gone before a message it swallowed
/// is redelivered, so a failover costs a message at most one delivery instead of one per
/// `ack_wait` until the request expires (which ran a short `ack_wait` out of deliveries).
fn pull_timing(ack_wait: Duration) -> (Duration, Duration) {
    let expires = (ack_wait / 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
    (expires, (expires / 4).min(Duration::from_secs(1)))
}

/// The JetStream context confirmed results go through, once a stream is found capturing
/// the output and the error subject (without one, every publish would fail and every message
/// would be retried until it ran out of deliveries).
async fn confirming_context(
    client: &async_nats::Client,
    options: &ServeOptions,
) -> Result<async_nats::jetstream::Context, HostError> {
    let context = async_nats::jetstream::new(client.clone());
    for subject in [&options.output, &options.errors] {
        context
            .stream_by_subject(subject.as_str())
            .await
            .map_err(|e| {
                nats_error(
                    "find a stream (output.confirm) capturing",
                    subject,
                    format!("{e}; create one over the output and error subjects"),
                )
            })?;
    }
    Ok(context)
}

/// Micro-batches `incoming` until it ends or `shutdown` completes.
async fn run_loop(
    client: &async_nats::Client,
    confirm: Option<&async_nats::jetstream::Context>,
    slot: &RunnerSlot,
    options: &ServeOptions,
    incoming: impl futures::Stream<Item = Incoming>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HostError> {
    tokio::pin!(incoming);
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            message = incoming.next() => message,
            () = &mut shutdown => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let deadline = Instant::now() + options.max_wait;
        while batch.len() < options.max_batch_size {
            match tokio::time::timeout_at(deadline, incoming.next()).await {
                Ok(Some(message)) => batch.push(message),
                _ => break,
            }
        }
        let closed = SystemTime::now();
        let runner = slot.borrow().clone();
        tracing::debug!(pipeline = runner.name(), messages = batch.len(), "batch");
        let mut outbox = Outbox {
            client,
            confirm,
            records: Vec::new(),
        };
        handle_batch(&mut outbox, &runner, options, batch, closed).await?;
    }
    Ok(())
}

/// Where one batch's records go: core publishes, or (with `output.confirm`) JetStream
/// publishes whose acks are awaited before the inputs are acked.
struct Outbox<'a> {
    client: &'a async_nats::Client,
    confirm: Option<&'a async_nats::jetstream::Context>,
    /// Confirmed records: subject, body, and the stream's answer once published.
    records: Vec<Confirmed>,
}

/// A record published through JetStream, kept until the stream has stored it.
struct Confirmed {
    subject: String,
    body: Bytes,
    /// `Nats-Msg-Id` (a result's idempotency key): a retried publish the stream already
    /// stored is dropped by its duplicate window instead of stored twice.
    id: Option<String>,
    ack: Option<async_nats::jetstream::context::PublishAckFuture>,
}

impl Confirmed {
    async fn publish(&mut self, js: &async_nats::jetstream::Context) {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &self.id {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        self.ack = js
            .publish_with_headers(self.subject.clone(), headers, self.body.clone())
            .await
            .ok();
    }
}

impl Outbox<'_> {
    /// Publishes a result or an error record (`id`: its idempotency key, if any): confirmed
    /// when the pipeline asks for it.
    async fn record(
        &mut self,
        subject: &str,
        body: Bytes,
        id: Option<&str>,
    ) -> Result<(), HostError> {
        match self.confirm {
            Some(js) => {
                let mut record = Confirmed {
                    subject: subject.to_owned(),
                    body,
                    id: id.map(str::to_owned),
                    ack: None,
                };
                record.publish(js).await;
                self.records.push(record);
                Ok(())
            }
            None => publish(self.client, subject, body).await,
        }
    }

    /// Publishes anything else (replies, routes, shadows) as a core message.
    async fn core(&self, subject: &str, body: Bytes) -> Result<(), HostError> {
        publish(self.client, subject, body).await
    }

    /// Waits until everything published has reached the server and every confirmed record
    /// is stored. A record the stream did not store (no leader during a cluster's failover,
    /// the server away) is published again, with backoff, for up to [`CONFIRM_FOR`], while
    /// `inputs` are kept in progress so the server neither redelivers them nor counts a
    /// delivery; after that, the reason.
    async fn settle(
        &mut self,
        inputs: &[async_nats::jetstream::Message],
        ack_wait: Duration,
    ) -> Result<(), String> {
        self.client.flush().await.map_err(|e| e.to_string())?;
        let Some(js) = self.confirm else {
            return Ok(());
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut failure = None;
            let mut unstored = Vec::new();
            for mut record in self.records.drain(..) {
                let stored = match record.ack.take() {
                    Some(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                    None => Err("not published".to_owned()),
                };
                if let Err(e) = stored {
                    failure.get_or_insert_with(|| format!("{}: {e}", record.subject));
                    unstored.push(record);
                }
            }
            self.records = unstored;
            let Some(failure) = failure else {
                return Ok(());
            };
            if started.elapsed() >= CONFIRM_FOR {
                return Err(format!("not stored after {CONFIRM_FOR:?}: {failure}"));
            }
            tracing::warn!(
                records = self.records.len(),
                "results not stored yet ({failure}); retrying in {backoff:?}"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(ack_wait / 2).min(Duration::from_secs(2));
            for input in inputs {
                let _ = input
                    .ack_with(async_nats::jetstream::AckKind::Progress)
                    .await;
            }
            for record in &mut self.records {
                record.publish(js).await;
            }
        }
    }
}

/// How a parsed message is answered: where a request wants its reply, and its delivery count.
struct Delivery {
    reply: Option<async_nats::Subject>,
    payload: Bytes,
    delivered: u64,
    /// This host's span for the message, when it travels in a trace or the host exports them.
    span: Option<SpanIds>,
    received: SystemTime,
    queued: Option<SystemTime>,
}

/// One batch: unusable messages to the error subject, the rest through the runner and out,
/// then the acks (JetStream) once everything is published.
async fn handle_batch(
    outbox: &mut Outbox<'_>,
    runner: &Arc<Runner>,
    options: &ServeOptions,
    batch: Vec<Incoming>,
    closed: SystemTime,
) -> Result<(), HostError> {
    let started = std::time::Instant::now();
    if let Some(m) = runner.metrics() {
        m.batch_size
            .with_label_values(&[runner.name()])
            .observe(batch.len() as f64);
    }
    let mut acks = Vec::new();
    let (mut messages, mut deliveries) = (Vec::new(), Vec::new());
    for mut incoming in batch {
        acks.extend(incoming.ack.take());
        let admitted = admit(runner, options, &mut incoming);
        let span = match incoming.trace {
            Some(parent) => Some(SpanIds::under(parent)),
            None => options.tracer.as_ref().map(|_| SpanIds::root()),
        };
        let delivery = Delivery {
            reply: incoming.reply,
            payload: incoming.payload,
            delivered: incoming.delivered,
            span,
            received: incoming.received,
            queued: incoming.queued,
        };
        match admitted {
            Ok(message) => {
                messages.push(message);
                deliveries.push(delivery);
            }
            Err(error) => reject(outbox, runner, options, &error, delivery).await?,
        }
    }
    if !messages.is_empty() {
        let worker = runner.clone();
        let outcome = tokio::task::spawn_blocking(move || worker.process_batch(&messages))
            .await
            .map_err(HostError::Worker)
            .and_then(|r| r.map_err(HostError::from));
        match outcome {
            Ok(processed) => {
                publish_results(outbox, runner, options, processed, deliveries, closed).await?
            }
            // The batch as a whole failed (the encoder, a worker panic): every message gets an
            // error record with its payload, and the loop goes on.
            Err(failure) => {
                tracing::error!(pipeline = runner.name(), "batch failed: {failure}");
                let error = InputError {
                    kind: "processing_failed",
                    message: failure.to_string(),
                };
                for delivery in deliveries {
                    reject(outbox, runner, options, &error, delivery).await?;
                }
            }
        }
    }
    if let Some(m) = runner.metrics() {
        m.observe(runner.name(), "batch", started.elapsed());
    }
    acknowledge(outbox, runner.name(), options, acks).await;
    Ok(())
}

/// The message in `incoming`, or why it cannot be processed: delivered too often, or unusable.
fn admit(
    runner: &Runner,
    options: &ServeOptions,
    incoming: &mut Incoming,
) -> Result<Message, InputError> {
    let max_deliver = options.jetstream.as_ref().map(|j| u64::from(j.max_deliver));
    if max_deliver.is_some_and(|max| incoming.delivered > max) {
        let error = InputError {
            kind: "max_deliveries",
            message: format!(
                "delivered {} times without a result; giving up",
                incoming.delivered - 1
            ),
        };
        tracing::warn!(pipeline = runner.name(), "{}", error.message);
        return Err(error);
    }
    let (header, fallback) = (incoming.header_id.take(), incoming.fallback_id.take());
    parse_message_within(&incoming.payload, runner.input_limits(), || {
        header.or(fallback).unwrap_or_else(generate_id)
    })
    .inspect_err(|e| tracing::debug!(kind = e.kind, "rejected message: {}", e.message))
}

/// An unusable message: its error record (with the payload) counted, published to the error
/// subject, and sent back to a requester.
async fn reject(
    outbox: &mut Outbox<'_>,
    runner: &Runner,
    options: &ServeOptions,
    error: &InputError,
    delivery: Delivery,
) -> Result<(), HostError> {
    if let Some(m) = runner.metrics() {
        m.errors
            .with_label_values(&[runner.name(), error.kind])
            .inc();
        m.messages
            .with_label_values(&[runner.name(), "error"])
            .inc();
    }
    let record = ErrorRecord::new(runner.name(), error, &delivery.payload);
    let body = Bytes::from(record.to_string());
    outbox.record(&options.errors, body.clone(), None).await?;
    if let Some(reply) = delivery.reply {
        outbox.core(&reply, body).await?;
    }
    Ok(())
}

/// Shadow records, then each result (marked with its redeliveries and host) to the output
/// subject, its routes' subjects and its requester.
async fn publish_results(
    outbox: &mut Outbox<'_>,
    runner: &Runner,
    options: &ServeOptions,
    processed: headstream_runner::Processed,
    deliveries: Vec<Delivery>,
    closed: SystemTime,
) -> Result<(), HostError> {
    let publishing = std::time::Instant::now();
    let batch_size = processed.records.len();
    let metrics = runner.metrics();
    for (subject, shadow) in processed.shadows {
        outbox
            .core(&subject, Bytes::from(shadow.to_string()))
            .await?;
    }
    if let Some(m) = metrics {
        m.messages
            .with_label_values(&[runner.name(), "result"])
            .inc_by(processed.records.len() as u64);
    }
    // Records come in message order.
    for (mut record, delivery) in processed.records.into_iter().zip(deliveries) {
        record.redelivered = (delivery.delivered > 1).then(|| delivery.delivered - 1);
        record.host.clone_from(&options.host);
        record.trace_id = delivery.span.map(|s| s.traceparent().trace_id_hex());
        let published = SystemTime::now();
        let body = Bytes::from(record.to_string());
        outbox
            .record(&options.output, body.clone(), Some(&record.key))
            .await?;
        for route in &record.routes {
            outbox.core(&route.subject, body.clone()).await?;
            if let Some(m) = metrics {
                m.routes
                    .with_label_values(&[runner.name(), &route.name])
                    .inc();
            }
        }
        if let Some(reply) = &delivery.reply {
            outbox.core(reply, body).await?;
        }
        if let Some(m) = metrics
            && let Ok(took) = delivery.received.elapsed()
        {
            m.message_seconds
                .with_label_values(&[runner.name()])
                .observe(took.as_secs_f64());
        }
        if let (Some(tracer), Some(ids)) = (&options.tracer, delivery.span) {
            tracer.record(message_span(
                runner,
                options,
                &record,
                &delivery,
                ids,
                (closed, batch_size),
                &processed.timings,
                published,
            ));
        }
    }
    if let Some(m) = metrics {
        m.observe(runner.name(), "publish", publishing.elapsed());
    }
    Ok(())
}

/// The span of one message's time in this host, with a child per stage: the wait for its
/// batch, the encoder's pass and each head's run over the batch (shared with the batch's
/// other messages), and the publishing of its result.
#[allow(clippy::too_many_arguments)]
fn message_span(
    runner: &Runner,
    options: &ServeOptions,
    record: &headstream_message::ResultRecord,
    delivery: &Delivery,
    ids: SpanIds,
    (closed, batch_size): (SystemTime, usize),
    timings: &headstream_runner::Timings,
    published: SystemTime,
) -> SpanRecord {
    let done = SystemTime::now();
    // JetStream: the wait in the stream since it stored the message (server and host clocks).
    let queued = delivery.queued.filter(|q| *q < delivery.received);
    let mut stages = Vec::with_capacity(timings.heads.len() + 4);
    if let Some(queued) = queued {
        stages.push(Stage::new("queue", queued, delivery.received));
    }
    stages.push(
        Stage::new("batch", delivery.received, closed).with("headstream.batch_size", batch_size),
    );
    if let Some((start, end)) = timings.encode {
        stages.push(Stage::new("encode", start, end).with("headstream.batch_size", batch_size));
    }
    for (stage, id, start, end) in &timings.heads {
        let version = record.heads.get(stage).unwrap_or(id);
        let mut s = Stage::new(format!("head {stage}"), *start, *end)
            .with("headstream.head", stage)
            .with("headstream.head.version", version);
        if let Some(error) = record.errors.get(stage) {
            s = s.with("error.message", error);
        }
        stages.push(s);
    }
    stages.push(
        Stage::new("publish", published, done)
            .with("messaging.destination.name", &options.output)
            .with("headstream.routes", record.routes.len()),
    );
    let mut attributes = vec![
        ("messaging.system", "nats".to_owned()),
        ("messaging.destination.name", options.subject.clone()),
        ("messaging.message.id", record.id.clone()),
        ("headstream.pipeline", runner.name().to_owned()),
    ];
    if let Some(host) = &options.host {
        attributes.push(("headstream.host", host.clone()));
    }
    SpanRecord {
        ids,
        name: format!("process {}", runner.name()).into(),
        kind: headstream_trace::Kind::Consumer,
        start: queued.unwrap_or(delivery.received),
        end: done,
        attributes,
        stages,
    }
}

/// Acknowledges a batch's JetStream messages once every result and error record has reached
/// the server (and, with `output.confirm`, is stored); if that cannot be confirmed, the
/// messages go back for redelivery rather than being lost.
async fn acknowledge(
    outbox: &mut Outbox<'_>,
    pipeline: &str,
    options: &ServeOptions,
    acks: Vec<async_nats::jetstream::Message>,
) {
    if acks.is_empty() {
        return;
    }
    let ack_wait = options
        .jetstream
        .as_ref()
        .map_or(Duration::from_secs(30), |j| j.ack_wait);
    if let Err(e) = outbox.settle(&acks, ack_wait).await {
        tracing::warn!(
            pipeline,
            "results not confirmed, sending {} messages back for redelivery: {e}",
            acks.len()
        );
        for message in acks {
            let _ = message
                .ack_with(async_nats::jetstream::AckKind::Nak(Some(RETRY_DELAY)))
                .await;
        }
        return;
    }
    tracing::debug!(pipeline, acks = acks.len(), "batch published; acking");
    for message in acks {
        if let Err(e) = message.ack().await {
            tracing::warn!(
                pipeline,
                "ack failed (the message will be redelivered): {e}"
            );
        }
    }
}

/// How long a message whose results could not be confirmed waits before its redelivery.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How long a batch's records are published again while their stream cannot store them,
/// before its messages go back to the server for redelivery.
const CONFIRM_FOR: Duration = Duration::from_secs(30);

async fn publish(client: &async_nats::Client, subject: &str, body: Bytes) -> Result<(), HostError> {
    client
        .publish(subject.to_owned(), body)
        .await
        .map_err(|e| nats_error("publish to", subject, e))
}

fn nats_error(action: &'static str, subject: &str, e: impl std::fmt::Display) -> HostError {
    HostError::Nats {
        action,
        subject: subject.to_owned(),
        reason: e.to_string(),
    }
}

/// A process-unique message id for messages that bring none.
fn generate_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "hs-{:x}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_requests_expire_within_half_the_ack_wait() {
        // The default ack_wait keeps the 5 s requests and 1 s heartbeats.
        assert_eq!(
            pull_timing(Duration::from_secs(30)),
            (Duration::from_secs(5), Duration::from_secs(1))
        );
        // A short one shortens both: a stale request is gone before a redelivery.
        assert_eq!(
            pull_timing(Duration::from_secs(2)),
            (Duration::from_secs(1), Duration::from_millis(250))
        );
        // Zero (or tiny) still gives a request the server accepts.
        let (expires, heartbeat) = pull_timing(Duration::ZERO);
        assert_eq!(expires, Duration::from_millis(200));
        assert!(heartbeat < expires / 2);
    }
}
