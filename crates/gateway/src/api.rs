//! The routes' handlers and the types of their requests and answers (which generate
//! `/openapi.json`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use headstream_message::embeddings::{
    DISCOVER_SUBJECT, EmbeddingsAnswer, EmbeddingsErrorKind, EmbeddingsReply, EmbeddingsRequest,
    HostStatus, base64_to_f32, embeddings_subject, model_matches,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::{ApiError, ErrorBody, Shared};

/// The OpenAPI document of the gateway (`GET /openapi.json`).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "headstream gateway",
        description = "OpenAI-compatible embeddings and headstream pipelines over NATS"
    ),
    paths(
        embeddings,
        models,
        model,
        run_pipeline,
        feedback,
        pipelines,
        hosts,
        health
    ),
    components(schemas(
        EmbeddingsBody,
        EmbeddingsResponse,
        EmbeddingObject,
        Usage,
        PipelineBody,
        ErrorBody
    ))
)]
pub struct ApiDoc;

/// `POST /v1/embeddings` body: OpenAI's.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct EmbeddingsBody {
    /// A text or an array of texts (token-id arrays are refused).
    #[schema(value_type = Object)]
    input: Value,
    /// The encoder's name (`all-minilm-l6-v2`), its fingerprint, or a hub id ending in it.
    model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32).
    encoding_format: Option<String>,
    /// Must equal the model's dimensions if given (shortening is not supported).
    dimensions: Option<u64>,
    /// Accepted and ignored.
    #[allow(dead_code)]
    user: Option<String>,
}

/// `POST /v1/embeddings` answer: OpenAI's.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EmbeddingsResponse {
    /// Always `list`.
    object: &'static str,
    /// One per input text, in order.
    data: Vec<EmbeddingObject>,
    /// The encoder's name.
    model: String,
    /// Tokens read.
    usage: Usage,
}

/// One embedding.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EmbeddingObject {
    /// Always `embedding`.
    object: &'static str,
    /// Position in the input.
    index: usize,
    /// The vector: an array of floats, or base64 of little-endian f32.
    #[schema(value_type = Object)]
    embedding: Embedding,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

/// Token counts, special tokens included.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// `POST /v1/pipelines/{name}` body: one message, or `messages`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct PipelineBody {
    /// One message's text.
    text: Option<String>,
    /// Its id (echoed in the result; generated if absent).
    id: Option<Value>,
    /// Its metadata (echoed in the result).
    #[schema(value_type = Object)]
    meta: Option<Value>,
    /// A batch: `{"id"?, "text", "meta"?}` objects; the answer is `{"results": [...]}`.
    #[schema(value_type = Vec<Object>)]
    messages: Option<Vec<Value>>,
}

/// `POST /v1/feedback` body: the right answer for one head's result.
#[derive(Debug, Deserialize, serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackBody {
    /// The pipeline (or give `key`, which names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pipeline: Option<String>,
    /// The result's idempotency `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// The message id (instead of `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// The head whose answer is labelled.
    head: String,
    /// The right label.
    label: String,
    /// Who says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<String>,
}

/// A 413 naming `param` when a request carries more than `--max-batch` `what`.
fn within_batch(shared: &Shared, count: usize, what: &str, param: &str) -> Result<(), ApiError> {
    match count > shared.config.max_batch {
        true => Err(ApiError::too_large(format!(
            "{count} {what} in one request; at most {}",
            shared.config.max_batch
        ))
        .param(param)),
        false => Ok(()),
    }
}

/// Reads a JSON body, with the body limit's rejection as a 413 and bad JSON as a 400.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large(format!("the request body is over {limit} bytes"))
        }
        _ => ApiError::invalid(e.body_text()),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// Every `/v1/*` request takes a slot among the requests in flight before its body is read,
/// or is answered 429 at once.
pub(crate) async fn admit(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    match shared.in_flight.clone().try_acquire_owned() {
        Ok(_slot) => next.run(request).await,
        Err(_) => ApiError::busy(shared.config.max_in_flight).into_response(),
    }
}

/// `/v1/*` requires `Authorization: Bearer <key>` when API keys are configured.
pub(crate) async fn authenticate(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if shared.needs_key() {
        let key = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !key.is_some_and(|k| shared.accepts(k.trim())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

fn texts_of(input: Value) -> Result<Vec<String>, ApiError> {
    let token_ids = || {
        ApiError::invalid(
            "token-id input is not supported: send the texts (LangChain's OpenAIEmbeddings: \
             set check_embedding_ctx_length=False)",
        )
        .param("input")
    };
    match input {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Array(_) => Err(token_ids()),
                _ => Err(ApiError::invalid(format!("input[{i}] is not a string")).param("input")),
            })
            .collect(),
        _ => {
            Err(ApiError::invalid("`input` must be a string or an array of strings").param("input"))
        }
    }
}

/// Splits `texts` into requests of at most `max_texts` texts and about `max_bytes` of JSON.
fn chunks(texts: Vec<String>, max_texts: usize, max_bytes: usize) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for text in texts {
        let size = text.len() + 8;
        match out.last_mut() {
            Some(last) if last.len() < max_texts && bytes + size <= max_bytes => {
                bytes += size;
                last.push(text);
            }
            _ => {
                bytes = size;
                out.push(vec![text]);
            }
        }
    }
    out
}

/// One NATS request with the gateway's deadline; no host, or none in time, is a 503.
async fn ask(shared: &Shared, subject: String, body: Vec<u8>) -> Result<Bytes, ApiError> {
    ask_traced(shared, subject, body, None).await
}

/// [`ask`], the request carrying `trace` as its `traceparent`.
async fn ask_traced(
    shared: &Shared,
    subject: String,
    body: Vec<u8>,
    trace: Option<headstream_trace::TraceParent>,
) -> Result<Bytes, ApiError> {
    let mut request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(shared.config.timeout));
    if let Some(trace) = trace {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(headstream_trace::TRACEPARENT, trace.to_string().as_str());
        request = request.headers(headers);
    }
    match shared.client.send_request(subject.clone(), request).await {
        Ok(message) => Ok(message.payload),
        Err(e) => {
            use async_nats::RequestErrorKind as K;
            Err(match e.kind() {
                K::NoResponders => {
                    ApiError::unavailable(format!("no headstream host is serving {subject}"))
                }
                K::TimedOut => ApiError::unavailable(format!(
                    "no host answered on {subject} within {:.1} s",
                    shared.config.timeout.as_secs_f64()
                )),
                K::MaxPayloadExceeded => ApiError::too_large(format!(
                    "the request to {subject} is over the NATS server's payload limit"
                )),
                K::InvalidSubject => ApiError::invalid(format!("{subject:?} is not a subject")),
                _ => ApiError::unavailable(format!("cannot reach the hosts: {e}")),
            })
        }
    }
}

/// Which encoder a request is for: the one `model` names, or the only one served.
async fn encoder_for(shared: &Shared, model: Option<&str>) -> Result<HostStatus, ApiError> {
    let pick = |hosts: &[HostStatus]| -> Option<HostStatus> {
        let mut matching: Vec<&HostStatus> = hosts
            .iter()
            .filter(|h| {
                model.is_none_or(|m| {
                    model_matches(m, h.encoder.split('@').next().unwrap_or(""), &h.encoder)
                })
            })
            .collect();
        matching.sort_by(|a, b| a.encoder.cmp(&b.encoder));
        matching.first().map(|h| (*h).clone())
    };
    let mut hosts = discover(shared, false).await?;
    if pick(&hosts).is_none() {
        hosts = discover(shared, true).await?;
    }
    let mut encoders: Vec<&str> = hosts.iter().map(|h| h.encoder.as_str()).collect();
    encoders.sort_unstable();
    encoders.dedup();
    if encoders.is_empty() {
        return Err(ApiError::unavailable(
            "no headstream host answered on this NATS",
        ));
    }
    if model.is_none() && encoders.len() > 1 {
        return Err(ApiError::invalid(format!(
            "several models are served ({}): name one with `model`",
            encoders.join(", ")
        ))
        .param("model"));
    }
    pick(&hosts).ok_or_else(|| {
        ApiError::not_found(
            "model_not_found",
            format!(
                "no host runs the model {:?}; served: {}",
                model.unwrap_or_default(),
                encoders.join(", ")
            ),
        )
        .param("model")
    })
}

async fn embed_chunk(
    shared: &Shared,
    encoder: &HostStatus,
    input: Vec<String>,
) -> Result<EmbeddingsReply, ApiError> {
    let count = input.len();
    let model = Some(encoder.encoder.clone());
    let body = serde_json::to_vec(&EmbeddingsRequest { input, model })
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let answer = ask(shared, embeddings_subject(&encoder.encoder), body).await?;
    let reply = match serde_json::from_slice::<EmbeddingsAnswer>(&answer) {
        Ok(EmbeddingsAnswer::Ok(reply)) => reply,
        Ok(EmbeddingsAnswer::Err { error }) => {
            let e = match error.kind {
                EmbeddingsErrorKind::InvalidRequest => ApiError::invalid(error.message),
                EmbeddingsErrorKind::ModelNotFound => {
                    ApiError::not_found("model_not_found", error.message)
                }
                EmbeddingsErrorKind::TooLarge => ApiError::too_large(error.message),
                EmbeddingsErrorKind::Busy => {
                    let mut e = ApiError::unavailable(error.message);
                    e.body.code = Some("host_busy");
                    e
                }
                EmbeddingsErrorKind::Encoder => ApiError::internal(error.message),
            };
            return Err(match error.param {
                Some(param) => e.param(param),
                None => e,
            });
        }
        Err(e) => {
            return Err(ApiError::internal(format!(
                "a host answered something else: {e}"
            )));
        }
    };
    // A reply from another encoder, or of another shape, must not become someone's vectors.
    let width = (4 * reply.dimensions).div_ceil(3) * 4;
    if reply.fingerprint != encoder.encoder
        || reply.data.len() != count
        || reply.data.iter().any(|v| v.len() != width)
    {
        return Err(ApiError::internal(format!(
            "host {} answered {} vectors of {} dimensions from {}; expected {count} from {}",
            reply.host,
            reply.data.len(),
            reply.dimensions,
            reply.fingerprint,
            encoder.encoder
        )));
    }
    Ok(reply)
}

/// OpenAI's embeddings endpoint.
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingsBody,
    responses((status = 200, body = EmbeddingsResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn embeddings(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let body: EmbeddingsBody = json_body(body, shared.config.max_body_bytes)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "encoding_format {other:?} is not supported: use \"float\" or \"base64\""
            ))
            .param("encoding_format"));
        }
    };
    let texts = texts_of(body.input)?;
    within_batch(&shared, texts.len(), "texts", "input")?;
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(ApiError::invalid(format!("input[{i}] is empty")).param("input"));
    }
    let encoder = encoder_for(&shared, body.model.as_deref()).await?;
    shared.metrics.texts.inc_by(texts.len() as u64);
    // Each request to a host, and its answer, must fit the server's payload limit: half of it
    // for the texts (room for JSON escaping), and as many vectors as fit in the answer.
    let max_payload = shared.client.server_info().max_payload;
    let per_vector = (4 * encoder.dimensions.max(1)).div_ceil(3) * 4 + 8;
    let fit = (max_payload.saturating_sub(4096) / per_vector).max(1);
    let parts = chunks(
        texts,
        shared.config.chunk_texts.min(fit),
        (max_payload / 2).max(1),
    );
    let replies = futures::future::try_join_all(
        parts
            .into_iter()
            .map(|part| embed_chunk(&shared, &encoder, part)),
    )
    .await?;
    let Some(first) = replies.first() else {
        return Err(ApiError::invalid("no texts to embed").param("input"));
    };
    if let Some(asked) = body.dimensions.filter(|d| *d != first.dimensions as u64) {
        return Err(ApiError::invalid(format!(
            "dimensions {asked}: {} gives {}-dimensional embeddings and cannot shorten them",
            first.model, first.dimensions
        ))
        .param("dimensions"));
    }
    let model = first.model.clone();
    let tokens: u64 = replies.iter().map(|r| r.prompt_tokens).sum();
    let mut data = Vec::new();
    for vector in replies.into_iter().flat_map(|r| r.data) {
        let embedding = if base64 {
            Embedding::Base64(vector)
        } else {
            Embedding::Float(
                base64_to_f32(&vector)
                    .ok_or_else(|| ApiError::internal("a host sent a malformed vector"))?,
            )
        };
        data.push(EmbeddingObject {
            object: "embedding",
            index: data.len(),
            embedding,
        });
    }
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

/// What the hosts serve, gathered from every host on `headstream.discover` and kept for a
/// moment, so a burst of pipeline requests asks once.
#[derive(Debug, Default)]
pub(crate) struct DiscoveryCache(Mutex<Option<(Instant, Vec<HostStatus>)>>);

const DISCOVERY_TTL: Duration = Duration::from_secs(2);

/// Every reply to a request on `subject` within `wait` (stopping early after a quiet spell).
pub(crate) async fn gather<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    wait: Duration,
) -> Result<Vec<T>, ApiError> {
    let unreachable = |e: &dyn std::fmt::Display| ApiError::unavailable(format!("NATS: {e}"));
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unreachable(&e))?;
    client
        .publish_with_reply(subject.to_owned(), inbox, Bytes::new())
        .await
        .map_err(|e| unreachable(&e))?;
    let deadline = tokio::time::Instant::now() + wait;
    let quiet = Duration::from_millis(250);
    let mut found = Vec::new();
    loop {
        let limit = match found.is_empty() {
            true => deadline,
            false => deadline.min(tokio::time::Instant::now() + quiet),
        };
        match tokio::time::timeout_at(limit, replies.next()).await {
            Ok(Some(message)) => {
                if let Ok(value) = serde_json::from_slice(&message.payload) {
                    found.push(value);
                }
            }
            _ => break,
        }
    }
    Ok(found)
}

async fn discover(shared: &Shared, fresh: bool) -> Result<Vec<HostStatus>, ApiError> {
    if !fresh
        && let Ok(cache) = shared.discovery.0.lock()
        && let Some((at, hosts)) = cache.as_ref()
        && at.elapsed() < DISCOVERY_TTL
    {
        return Ok(hosts.clone());
    }
    let hosts: Vec<HostStatus> = gather(
        &shared.client,
        DISCOVER_SUBJECT,
        Duration::from_millis(1000),
    )
    .await?;
    if let Ok(mut cache) = shared.discovery.0.lock() {
        // An empty answer is not kept: the next request asks again.
        *cache = (!hosts.is_empty()).then(|| (Instant::now(), hosts.clone()));
    }
    Ok(hosts)
}

/// One model, by the id `/v1/models` lists (or anything `model` accepts).
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "the model")),
    responses((status = 200, description = "`{id, object: model, owned_by, fingerprint, dimensions}`"), (status = 404, body = ErrorBody)))]
pub(crate) async fn model(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let host = encoder_for(&shared, Some(&id)).await?;
    let name = host.encoder.split('@').next().unwrap_or_default();
    Ok(Json(
        json!({ "id": name, "object": "model", "created": 0, "owned_by": "headstream",
                    "fingerprint": host.encoder, "dimensions": host.dimensions }),
    ))
}

/// The models (encoders) the hosts run, in OpenAI's list shape.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, description = "`{object: list, data: [{id, object: model, owned_by, fingerprint}]}`")))]
pub(crate) async fn models(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let mut encoders: BTreeMap<String, String> = BTreeMap::new();
    for host in discover(&shared, true).await? {
        let name = host
            .encoder
            .split('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        encoders.insert(host.encoder.clone(), name);
    }
    let names: Vec<&String> = encoders.values().collect();
    // Two encoders of one name (other weights, say) are told apart by fingerprint.
    let unique = |name: &String| names.iter().filter(|n| **n == name).count() == 1;
    let data: Vec<Value> = encoders
        .iter()
        .map(|(fingerprint, name)| {
            let id = if unique(name) { name } else { fingerprint };
            json!({ "id": id, "object": "model", "created": 0, "owned_by": "headstream",
                    "fingerprint": fingerprint })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// The pipelines served now, each with the hosts serving it.
#[utoipa::path(get, path = "/v1/pipelines", responses((status = 200, description = "`{data: [{name, input, output, delivery, heads, hosts}]}`")))]
pub(crate) async fn pipelines(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let mut by_name: BTreeMap<String, Value> = BTreeMap::new();
    for host in discover(&shared, true).await? {
        for p in host.pipelines {
            let entry = by_name.entry(p.name.clone()).or_insert_with(|| {
                json!({ "name": p.name, "input": p.input, "output": p.output,
                        "delivery": p.delivery, "heads": p.heads, "hosts": [] })
            });
            if let Some(hosts) = entry["hosts"].as_array_mut() {
                hosts.push(json!(host.host));
            }
        }
    }
    Ok(Json(
        json!({ "data": by_name.into_values().collect::<Vec<_>>() }),
    ))
}

/// The hosts, as each describes itself on `$SRV.INFO.headstream`.
#[utoipa::path(get, path = "/v1/hosts", responses((status = 200, description = "`{data: [micro-service info]}`")))]
pub(crate) async fn hosts(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let hosts: Vec<Value> = gather(
        &shared.client,
        "$SRV.INFO.headstream",
        Duration::from_millis(500),
    )
    .await?;
    Ok(Json(json!({ "data": hosts })))
}

fn message_of(value: Value, i: Option<usize>) -> Result<Value, ApiError> {
    let at = i.map_or_else(String::new, |i| format!("messages[{i}]: "));
    match &value {
        Value::Object(o) if o.get("text").is_some_and(Value::is_string) => Ok(value),
        _ => Err(ApiError::invalid(format!(
            "{at}a message is {{\"id\"?, \"text\", \"meta\"?}}"
        ))),
    }
}

/// Runs one message, or a batch (`messages`), through a pipeline; answers its result records.
/// Sends a feedback label to the hosts serving the pipeline (`headstream.feedback.<pipeline>`);
/// their refusal comes back as an OpenAI-style error whose `code` is the refusal's kind.
#[utoipa::path(post, path = "/v1/feedback", request_body = FeedbackBody,
    responses((status = 200, description = "`{accepted: true, labelled: {...}}`: the label joined with the prediction it judges"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn feedback(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body: FeedbackBody = json_body(body, shared.config.max_body_bytes)?;
    let pipeline = match (&body.pipeline, &body.key) {
        (Some(p), _) => p.clone(),
        (None, Some(key)) => key.split('/').next().unwrap_or_default().to_owned(),
        (None, None) => {
            return Err(
                ApiError::invalid("name the pipeline: `pipeline`, or the result's `key`")
                    .param("pipeline"),
            );
        }
    };
    let subject_safe = !pipeline.is_empty()
        && pipeline.len() <= 64
        && pipeline
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !pipeline.starts_with('.')
        && !pipeline.ends_with('.')
        && !pipeline.contains("..");
    if !subject_safe {
        return Err(
            ApiError::invalid(format!("{pipeline:?} is not a pipeline name")).param("pipeline"),
        );
    }
    let request = serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    let subject = format!("{}.{pipeline}", headstream_quality::FEEDBACK_PREFIX);
    let answer = ask(&shared, subject, request).await.map_err(|mut e| {
        if e.status == StatusCode::SERVICE_UNAVAILABLE {
            e.body.message = format!(
                "{} (feedback for pipeline {pipeline:?} is taken by the hosts serving it with `[quality] record = true`)",
                e.body.message
            );
        }
        e
    })?;
    let answer: Value = serde_json::from_slice(&answer)
        .map_err(|e| ApiError::internal(format!("a host answered something else: {e}")))?;
    if answer["accepted"] == true {
        return Ok(Json(answer));
    }
    let message = answer["error"]["message"]
        .as_str()
        .unwrap_or("the feedback was refused")
        .to_owned();
    Err(match answer["error"]["kind"].as_str().unwrap_or_default() {
        "not_found" => ApiError::not_found("result_not_found", message),
        "unknown_head" => ApiError::not_found("head_not_found", message).param("head"),
        "unknown_label" => ApiError::invalid_as("unknown_label", message).param("label"),
        "not_a_classification" => {
            ApiError::invalid_as("not_a_classification", message).param("head")
        }
        "key_mismatch" => ApiError::invalid_as("key_mismatch", message).param("key"),
        "wrong_pipeline" => ApiError::invalid_as("wrong_pipeline", message).param("pipeline"),
        "unavailable" => ApiError::unavailable(message),
        _ => ApiError::invalid_as("invalid_feedback", message),
    })
}

#[utoipa::path(post, path = "/v1/pipelines/{name}", request_body = PipelineBody,
    params(("name" = String, Path, description = "the pipeline")),
    responses((status = 200, description = "the result record, or `{results: [...]}` for `messages`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn run_pipeline(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    // The caller's trace, if it sent one (W3C `traceparent`); each message is a span in it.
    let caller = headers
        .get(headstream_trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(headstream_trace::TraceParent::parse);
    let body: PipelineBody = json_body(body, shared.config.max_body_bytes)?;
    let find = |hosts: &[HostStatus]| {
        hosts
            .iter()
            .flat_map(|h| &h.pipelines)
            .find(|p| p.name == name)
            .cloned()
    };
    let mut hosts = discover(&shared, false).await?;
    if find(&hosts).is_none() {
        // Not in what was seen a moment ago: ask every host again before saying no.
        hosts = discover(&shared, true).await?;
    }
    let pipeline = find(&hosts);
    let Some(pipeline) = pipeline else {
        let mut served: Vec<&str> = hosts
            .iter()
            .flat_map(|h| h.pipelines.iter().map(|p| p.name.as_str()))
            .collect();
        served.sort_unstable();
        served.dedup();
        return Err(ApiError::not_found(
            "pipeline_not_found",
            format!("no host serves a pipeline {name:?} (served: {served:?})"),
        ));
    };
    if pipeline.delivery == "jetstream" {
        return Err(ApiError::invalid(format!(
            "pipeline {name:?} consumes through JetStream: its results go to {}, not back to the caller",
            pipeline.output
        )));
    }
    let ask_one = |message: Value| {
        let shared = &shared;
        let subject = pipeline.input.clone();
        let name = &name;
        async move {
            let body =
                serde_json::to_vec(&message).map_err(|e| ApiError::internal(e.to_string()))?;
            let ids = caller.map_or_else(
                headstream_trace::SpanIds::root,
                headstream_trace::SpanIds::under,
            );
            let start = std::time::SystemTime::now();
            let answer = ask_traced(shared, subject.clone(), body, Some(ids.traceparent())).await;
            if let Some(tracer) = &shared.config.tracer {
                tracer.record(headstream_trace::SpanRecord {
                    ids,
                    name: format!("POST /v1/pipelines/{name}").into(),
                    kind: headstream_trace::Kind::Server,
                    start,
                    end: std::time::SystemTime::now(),
                    attributes: vec![
                        ("http.route", "/v1/pipelines/{name}".to_owned()),
                        ("messaging.destination.name", subject),
                    ],
                    stages: Vec::new(),
                });
            }
            serde_json::from_slice::<Value>(&answer?)
                .map_err(|e| ApiError::internal(format!("a host answered something else: {e}")))
        }
    };
    match body.messages {
        Some(messages) => {
            within_batch(&shared, messages.len(), "messages", "messages")?;
            let messages = messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| message_of(m, Some(i)))
                .collect::<Result<Vec<_>, _>>()?;
            let results = futures::future::try_join_all(messages.into_iter().map(ask_one)).await?;
            Ok(Json(json!({ "results": results })))
        }
        None => {
            let mut message = json!({ "text": body.text });
            if let Some(id) = body.id {
                message["id"] = id;
            }
            if let Some(meta) = body.meta {
                message["meta"] = meta;
            }
            let record = ask_one(message_of(message, None)?).await?;
            // An unusable message comes back as an error record: a 400 that says why; a
            // failure of the host's (`processing_failed`) is a 500.
            if let Some(error) = record
                .get("error")
                .filter(|_| record.get("results").is_none())
            {
                let kind = error["kind"].as_str().unwrap_or("error");
                let message = format!("{kind}: {}", error["message"].as_str().unwrap_or_default());
                let mut e = match INPUT_ERRORS.contains(&kind) {
                    true => ApiError::invalid(message),
                    false => ApiError::internal(message),
                };
                e.body.code = INPUT_ERRORS
                    .iter()
                    .chain(&["processing_failed", "max_deliveries"])
                    .find(|k| **k == kind)
                    .copied();
                return Err(e);
            }
            Ok(Json(record))
        }
    }
}

/// Error-record kinds that mean the message itself was unusable (`headstream_message`).
const INPUT_ERRORS: &[&str] = &[
    "not_utf8",
    "not_json",
    "not_object",
    "no_text",
    "empty_text",
    "bad_text",
    "bad_id",
    "bad_meta",
    "too_large",
    "text_too_long",
];

/// Whether the gateway is up and connected to NATS.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "`{status: ok, nats: connected}`"), (status = 503, description = "NATS is not connected")))]
pub(crate) async fn health(State(shared): State<Arc<Shared>>) -> Response {
    match shared.client.connection_state() {
        async_nats::connection::State::Connected => {
            Json(json!({ "status": "ok", "nats": "connected" })).into_response()
        }
        state => {
            let mut e = ApiError::unavailable(format!("NATS is {state}"));
            e.body.code = Some("nats_unavailable");
            e.into_response()
        }
    }
}

/// `GET /openapi.json`.
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// A route asked with another method: a 405 in OpenAI's shape.
pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    let mut e = ApiError::invalid(format!("{method} is not allowed on {}", uri.path()));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.body.code = Some("method_not_allowed");
    e
}

/// Any other route: a 404 in OpenAI's shape.
pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("not_found", format!("no route {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_by_count_and_bytes() {
        let texts = |n: usize, len: usize| vec!["x".repeat(len); n];
        assert_eq!(chunks(texts(5, 1), 2, 1000).len(), 3);
        assert_eq!(chunks(texts(4, 100), 100, 250).len(), 2);
        let one = chunks(texts(1, 10_000), 10, 100);
        assert_eq!(
            one.len(),
            1,
            "a text over the byte budget still goes, alone"
        );
    }

    #[test]
    fn inputs_are_texts() {
        assert_eq!(texts_of(json!("a")).ok(), Some(vec!["a".to_owned()]));
        assert_eq!(texts_of(json!(["a", "b"])).map(|t| t.len()).ok(), Some(2));
        for bad in [json!([1, 2]), json!([[1]]), json!({}), json!([{}])] {
            assert!(texts_of(bad).is_err());
        }
    }
}
