//! The OpenAI-compatible API: `POST /v1/embeddings` and `GET /v1/models`.
//!
//! Extensions beyond OpenAI's fields: `input_type` (`query` | `document`, `passage` meaning
//! document), `instruction` (the task description of queries), `truncate` and
//! `truncation_direction` (`left` | `right`).

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use common::trace::RequestTrace;
use common::wire::WorkerKind;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{Array, ObjectBuilder, OneOfBuilder, Schema, Type};

use super::AppState;
use super::error::ApiError;
use super::extract::JsonBody;
use super::types::EmbeddingsRequest;
use super::types::embeddings::EncodingFormat;
use crate::quantize::base64_f32;
use crate::service::{Arrival, EmbedJob};
use crate::upstream::assembly::Embedded;

/// The answer of `POST /v1/embeddings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    /// Always `list`.
    object: &'static str,
    /// One embedding per input, in input order.
    data: Vec<EmbeddingItem>,
    /// The served model's full name.
    model: String,
    /// Tokens of the inputs.
    usage: Usage,
}

/// One input's embedding.
#[derive(Debug, Serialize, ToSchema)]
struct EmbeddingItem {
    /// Always `embedding`.
    object: &'static str,
    /// The input's position.
    index: usize,
    /// The vector: a list of numbers, or (with `encoding_format: base64`) its little-endian
    /// f32 bytes in base64.
    #[schema(schema_with = vector_or_base64)]
    embedding: EmbeddingValue,
}

fn vector_or_base64() -> Schema {
    OneOfBuilder::new()
        .item(Array::new(ObjectBuilder::new().schema_type(Type::Number)))
        .item(ObjectBuilder::new().schema_type(Type::String))
        .build()
        .into()
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    /// Shared with the cache: serialized from there without a copy.
    Float(#[serde(serialize_with = "serialize_vector")] Arc<Embedded>),
    Base64(String),
}

fn serialize_vector<S: serde::Serializer>(
    item: &Arc<Embedded>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    item.vector.serialize(serializer)
}

/// Token counts of a request.
#[derive(Debug, Serialize, ToSchema)]
struct Usage {
    /// Tokens of the inputs (cache hits count their tokens too).
    prompt_tokens: u64,
    /// The same as `prompt_tokens`.
    total_tokens: u64,
}

/// `POST /v1/embeddings`.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "OpenAI",
    summary = "Embed texts (OpenAI-compatible)",
    request_body = EmbeddingsRequest,
    responses((status = 200, description = "One vector per input, in input order", body = EmbeddingList))
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(request): JsonBody<EmbeddingsRequest>,
) -> Result<Json<EmbeddingList>, ApiError> {
    let served = &state.config.model;
    if let Some(model) = request.model
        && !names_model(&model, served)
    {
        return Err(ApiError::ModelNotFound {
            requested: model,
            served: served.clone(),
        });
    }
    let job = EmbedJob {
        texts: request.input,
        input_type: request
            .input_type
            .unwrap_or(state.config.default_input_type),
        instruction: request.instruction,
        dimensions: request.dimensions,
        truncate: request.truncate.or(state.config.truncate),
        truncation_direction: request.truncation_direction,
        normalize: None,
        priority: request.priority,
        trace,
        arrival,
    };
    let format = request.encoding_format.unwrap_or_default();
    let items = state.service.embed(job).await?;
    let tokens: u64 = items.iter().map(|item| u64::from(item.tokens)).sum();
    let data = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: match format {
                EncodingFormat::Float => EmbeddingValue::Float(item),
                EncodingFormat::Base64 => EmbeddingValue::Base64(base64_f32(&item.vector)),
            },
        })
        .collect();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: served.clone(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

/// The answer of `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    object: &'static str,
    /// The served models.
    data: Vec<ModelCard>,
}

/// A served model.
#[derive(Debug, Serialize, ToSchema)]
struct ModelCard {
    /// The model's full name (`Qwen/Qwen3-Embedding-0.6B`).
    id: String,
    /// Always `model`.
    object: &'static str,
    /// Unix time in seconds when the gateway started.
    created: u64,
    /// The organisation in the model's name (`Qwen`), or `owner`.
    owned_by: String,
    /// `embedding` or `rerank`.
    kind: &'static str,
    /// Width of the vectors (embedding models; null before a GPU worker answers).
    dimensions: Option<u32>,
    /// Most tokens of one input (the tokenizer workers' `max_length`; null before one
    /// answers). For the reranker: of one query and document prompt.
    max_input_length: Option<u32>,
}

/// `GET /v1/models`: the embedding model, and the rerank model while rerank workers serve.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "OpenAI",
    summary = "List the served models",
    responses((status = 200, description = "The served embedding model, and the reranker while rerank workers serve", body = ModelList))
)]
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let snapshot = state.discovery.workers().await;
    let max_input_length = |kind: WorkerKind| {
        snapshot
            .workers
            .iter()
            .filter(|w| w.kind == kind && w.serving())
            .filter_map(|w| w.max_input_tokens)
            .min()
    };
    let card = |id: &str, kind, dimensions, max_input_length| ModelCard {
        id: id.to_string(),
        object: "model",
        created: state.started_s,
        owned_by: id
            .split_once('/')
            .map_or("owner", |(owner, _)| owner)
            .to_string(),
        kind,
        dimensions,
        max_input_length,
    };
    let mut data = vec![card(
        &state.config.model,
        "embedding",
        snapshot.hidden_size(),
        max_input_length(WorkerKind::Tokenizer),
    )];
    if snapshot.loaded(WorkerKind::RerankTokenizer) > 0 {
        data.push(card(
            &state.config.rerank_model,
            "rerank",
            None,
            max_input_length(WorkerKind::RerankTokenizer),
        ));
    }
    Json(ModelList {
        object: "list",
        data,
    })
}

/// Whether a client's `model` names the served one: the full name, or the name without
/// its organisation (`Qwen3-Embedding-0.6B`).
pub(crate) fn names_model(requested: &str, served: &str) -> bool {
    requested == served
        || served
            .rsplit_once('/')
            .is_some_and(|(_, name)| name == requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_match_with_or_without_organisation() {
        let served = "Qwen/Qwen3-Embedding-0.6B";
        assert!(names_model(served, served));
        assert!(names_model("Qwen3-Embedding-0.6B", served));
        assert!(!names_model("text-embedding-3-small", served));
    }
}
