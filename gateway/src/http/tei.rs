//! text-embeddings-inference's embedding routes, so TEI users can switch: `POST /embed`
//! (and `POST /`, where `huggingface_hub`'s `InferenceClient(base_url=...)` posts) answering
//! `[[f32]]`, `POST /similarity` answering `[f32]`, and `GET /info`. TEI's bodies name no model: the configured default embeds.
//! Refusals answer TEI's `{error, error_type}` ([`super::tei_error`]).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::subjects::Task;
use common::trace::RequestTrace;
use common::wire::{InputType, WorkerKind};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::models::{ModelCard, cards};
use super::tei_error::{TeiError, TeiJson};
use super::types::similarity::{SimilarityInputs, TeiSimilarityRequest};
use super::types::tei::{TeiEmbedRequest, TeiRootRequest};
use crate::service::{Arrival, EmbedJob};

/// `POST /embed`.
#[utoipa::path(
    post,
    path = "/embed",
    operation_id = "tei_embed",
    tag = "TEI",
    summary = "Embed texts (text-embeddings-inference shape)",
    request_body = TeiEmbedRequest,
    responses((status = 200, description = "One vector per input, in input order", body = Vec<Vec<f32>>))
)]
pub async fn embed(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    TeiJson(request): TeiJson<TeiEmbedRequest>,
) -> Result<Json<Vec<Vec<f32>>>, TeiError> {
    Ok(Json(vectors(&state, request, trace, arrival).await?))
}

/// The vectors of an `/embed` request, by the default embedding model, in input order.
async fn vectors(
    state: &AppState,
    request: TeiEmbedRequest,
    trace: RequestTrace,
    arrival: Arrival,
) -> Result<Vec<Vec<f32>>, TeiError> {
    let model = state.models.resolve(Task::Embed, None).await?;
    let job = EmbedJob {
        model,
        texts: request.inputs,
        input_type: request.prompt_name.unwrap_or(InputType::Document),
        instruction: None,
        dimensions: request.dimensions,
        truncate: request.truncate.or(state.config.truncate),
        truncation_direction: request.truncation_direction,
        normalize: request.normalize,
        priority: None,
        trace,
        arrival,
    };
    let items = state.service.embed(job).await?;
    Ok(items.iter().map(|item| item.vector.clone()).collect())
}

/// `POST /`: where TEI serves its model's default route and `huggingface_hub`'s
/// `InferenceClient(base_url=...)` posts: `POST /embed` for texts, `POST /similarity` for an
/// `inputs` object of sentences to compare.
#[utoipa::path(
    post,
    path = "/",
    operation_id = "tei_embed_at_root",
    tag = "TEI",
    summary = "Embed texts (TEI's default route, as `/embed`; an `inputs` object of sentences is compared as by `/similarity`)",
    request_body = TeiEmbedRequest,
    responses((status = 200, description = "One vector per input, in input order (for sentences: one similarity each)", body = Vec<Vec<f32>>))
)]
pub async fn embed_at_root(
    state: State<AppState>,
    trace: Extension<RequestTrace>,
    arrival: Extension<Arrival>,
    TeiJson(request): TeiJson<TeiRootRequest>,
) -> Result<Response, TeiError> {
    Ok(match request {
        TeiRootRequest::Embed(request) => embed(state, trace, arrival, TeiJson(request))
            .await?
            .into_response(),
        TeiRootRequest::Similarity(request) => similarity(state, trace, arrival, TeiJson(request))
            .await?
            .into_response(),
    })
}

/// `POST /similarity`: the cosine similarity of each sentence with the source sentence, all
/// embedded in one request by the default model (normalized, full width).
#[utoipa::path(
    post,
    path = "/similarity",
    operation_id = "tei_similarity",
    tag = "TEI",
    summary = "Compare sentences with a source sentence (text-embeddings-inference shape)",
    request_body = TeiSimilarityRequest,
    responses((status = 200, description = "The cosine similarity of each sentence with the source, in order", body = Vec<f32>))
)]
pub async fn similarity(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    TeiJson(request): TeiJson<TeiSimilarityRequest>,
) -> Result<Json<Vec<f32>>, TeiError> {
    let parameters = request.parameters.unwrap_or_default();
    let SimilarityInputs {
        source_sentence,
        sentences,
    } = request.inputs;
    let texts = TeiEmbedRequest {
        inputs: std::iter::once(source_sentence).chain(sentences).collect(),
        normalize: Some(true),
        truncate: parameters.truncate,
        truncation_direction: parameters.truncation_direction,
        prompt_name: parameters.prompt_name,
        dimensions: None,
    };
    let vectors = vectors(&state, texts, trace, arrival).await?;
    let Some((source, others)) = vectors.split_first() else {
        return Ok(Json(Vec::new()));
    };
    let scores = others.iter().map(|other| cosine(source, other)).collect();
    Ok(Json(scores))
}

/// The cosine similarity of two vectors (0 where either is zero).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| -> f64 {
        x.iter()
            .zip(y)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum()
    };
    let norms = (dot(a, a) * dot(b, b)).sqrt();
    if norms == 0.0 {
        return 0.0;
    }
    (dot(a, b) / norms) as f32
}

/// The answer of `GET /info` (TEI's fields this gateway knows).
#[derive(Debug, Serialize, ToSchema)]
pub struct Info {
    /// The default embedding model's name (TEI's fields describe it).
    model_id: String,
    /// The model's revision: unknown to the gateway, always null.
    model_sha: Option<String>,
    /// The GPU workers' number type (`float32`, `bfloat16`, `float16`), null before one
    /// answers.
    model_dtype: Option<String>,
    /// `{"embedding": {"pooling": "last_token"}}`.
    model_type: ModelType,
    /// `max_concurrent_queries`: requests served at once (more wait in the queue).
    max_concurrent_requests: usize,
    /// Most tokens of one input (the tokenizer workers' `max_length`), null before one
    /// answers.
    max_input_length: Option<u32>,
    /// Most tokens of one batch sent to the GPU workers (the tokenizer workers'
    /// `max_batch_tokens`), null before one answers.
    max_batch_tokens: Option<u32>,
    /// `max_inputs_per_request`: most texts in one request.
    max_client_batch_size: usize,
    /// The default embedding model's tokenizer workers serving now.
    tokenization_workers: usize,
    /// The gateway's version.
    version: &'static str,
    /// Every served model, as `GET /v1/models` lists them (an extension of TEI's fields,
    /// which describe the default embedding model).
    models: Vec<ModelCard>,
}

/// What kind of model is served.
#[derive(Debug, Serialize, ToSchema)]
struct ModelType {
    /// An embedding model.
    embedding: Pooling,
}

/// How token states become one vector.
#[derive(Debug, Serialize, ToSchema)]
struct Pooling {
    /// Always `last_token` (Qwen3-Embedding).
    pooling: &'static str,
}

/// `GET /info`.
#[utoipa::path(
    get,
    path = "/info",
    operation_id = "tei_info",
    tag = "TEI",
    summary = "The served model and the limits (text-embeddings-inference shape)",
    responses((status = 200, description = "Model and limits", body = Info))
)]
pub async fn info(State(state): State<AppState>) -> Json<Info> {
    let snapshot = state.discovery.workers().await;
    let catalog = state.models.catalog_of(&snapshot);
    let default = catalog.default_of(Task::Embed);
    let serving = |kind| default.serving_of(kind);
    let model_dtype = serving(WorkerKind::Gpu)
        .find_map(|w| w.backend.as_deref())
        .map(dtype_of_backend);
    Json(Info {
        model_id: state.config.model.clone(),
        model_sha: None,
        model_dtype,
        model_type: ModelType {
            embedding: Pooling {
                pooling: "last_token",
            },
        },
        max_concurrent_requests: state.config.max_concurrent_queries,
        max_input_length: serving(WorkerKind::Tokenizer)
            .filter_map(|w| w.max_input_tokens)
            .min(),
        max_batch_tokens: serving(WorkerKind::Tokenizer)
            .filter_map(|w| w.max_batch_tokens)
            .min(),
        max_client_batch_size: state.config.max_inputs_per_request,
        tokenization_workers: serving(WorkerKind::Tokenizer).count(),
        version: env!("CARGO_PKG_VERSION"),
        models: cards(&state, &catalog),
    })
}

/// TEI's name of the number type of a backend (`cpu-f32` is `float32`).
fn dtype_of_backend(backend: &str) -> String {
    let kind = backend.rsplit('-').next().unwrap_or(backend);
    match kind {
        "f32" => "float32".into(),
        "bf16" => "bfloat16".into(),
        "f16" => "float16".into(),
        "fp8" => "float8_e4m3fn".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_name_their_dtype() {
        assert_eq!(dtype_of_backend("cpu-f32"), "float32");
        assert_eq!(dtype_of_backend("cuda-bf16"), "bfloat16");
        assert_eq!(dtype_of_backend("cuda-fp8"), "float8_e4m3fn");
        assert_eq!(dtype_of_backend("cuda-f16"), "float16");
    }
}
