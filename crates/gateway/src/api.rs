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
    DISCOVER_SUBJECT, EMBEDDINGS_SUBJECT, EmbeddingsAnswer, EmbeddingsErrorKind, EmbeddingsReply,
    EmbeddingsRequest, HostStatus, base64_to_f32,
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
    paths(embeddings, models, run_pipeline, pipelines, hosts, health),
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

/// Takes a slot among the requests in flight, or answers 429.
fn slot(shared: &Shared) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    shared
        .in_flight
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy(shared.config.max_in_flight))
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
    let token_ids =
        || ApiError::invalid("token-id input is not supported: send the texts").param("input");
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
    let request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(shared.config.timeout));
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

async fn embed_chunk(
    shared: &Shared,
    input: Vec<String>,
    model: Option<String>,
) -> Result<EmbeddingsReply, ApiError> {
    let body = serde_json::to_vec(&EmbeddingsRequest { input, model })
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let answer = ask(shared, EMBEDDINGS_SUBJECT.to_owned(), body).await?;
    match serde_json::from_slice::<EmbeddingsAnswer>(&answer) {
        Ok(EmbeddingsAnswer::Ok(reply)) => Ok(reply),
        Ok(EmbeddingsAnswer::Err { error }) => {
            let e = match error.kind {
                EmbeddingsErrorKind::InvalidRequest => ApiError::invalid(error.message),
                EmbeddingsErrorKind::ModelNotFound => {
                    ApiError::not_found("model_not_found", error.message)
                }
                EmbeddingsErrorKind::Encoder => ApiError::internal(error.message),
            };
            Err(match error.param {
                Some(param) => e.param(param),
                None => e,
            })
        }
        Err(e) => Err(ApiError::internal(format!(
            "a host answered something else: {e}"
        ))),
    }
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
    let _slot = slot(&shared)?;
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
    if texts.len() > shared.config.max_batch {
        return Err(ApiError::too_large(format!(
            "{} texts in one request; at most {}",
            texts.len(),
            shared.config.max_batch
        ))
        .param("input"));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::invalid(format!("input[{i}] is empty")).param("input"));
    }
    shared.metrics.texts.inc_by(texts.len() as u64);
    // Half the server's payload limit per request leaves room for JSON escaping.
    let max_bytes = shared.client.server_info().max_payload / 2;
    let parts = chunks(texts, shared.config.chunk_texts, max_bytes.max(1));
    let replies = futures::future::try_join_all(
        parts
            .into_iter()
            .map(|part| embed_chunk(&shared, part, body.model.clone())),
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
async fn gather<T: serde::de::DeserializeOwned>(
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
    let quiet = Duration::from_millis(100);
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
    let hosts: Vec<HostStatus> =
        gather(&shared.client, DISCOVER_SUBJECT, Duration::from_millis(500)).await?;
    if let Ok(mut cache) = shared.discovery.0.lock() {
        *cache = Some((Instant::now(), hosts.clone()));
    }
    Ok(hosts)
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
    let data: Vec<Value> = encoders
        .into_iter()
        .map(|(fingerprint, name)| {
            json!({ "id": name, "object": "model", "created": 0, "owned_by": "headstream",
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
#[utoipa::path(post, path = "/v1/pipelines/{name}", request_body = PipelineBody,
    params(("name" = String, Path, description = "the pipeline")),
    responses((status = 200, description = "the result record, or `{results: [...]}` for `messages`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn run_pipeline(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let _slot = slot(&shared)?;
    let body: PipelineBody = json_body(body, shared.config.max_body_bytes)?;
    let hosts = discover(&shared, false).await?;
    let pipeline = hosts
        .iter()
        .flat_map(|h| &h.pipelines)
        .find(|p| p.name == name)
        .cloned();
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
        async move {
            let body =
                serde_json::to_vec(&message).map_err(|e| ApiError::internal(e.to_string()))?;
            let answer = ask(shared, subject, body).await?;
            serde_json::from_slice::<Value>(&answer)
                .map_err(|e| ApiError::internal(format!("a host answered something else: {e}")))
        }
    };
    match body.messages {
        Some(messages) => {
            if messages.len() > shared.config.max_batch {
                return Err(ApiError::too_large(format!(
                    "{} messages in one request; at most {}",
                    messages.len(),
                    shared.config.max_batch
                ))
                .param("messages"));
            }
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
            // An unusable message comes back as an error record: a 400 that says why.
            if let Some(error) = record
                .get("error")
                .filter(|_| record.get("results").is_none())
            {
                return Err(ApiError::invalid(format!(
                    "{}: {}",
                    error["kind"].as_str().unwrap_or("error"),
                    error["message"].as_str().unwrap_or_default()
                )));
            }
            Ok(Json(record))
        }
    }
}

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
