//! The OpenAI-compatible API: `POST /v1/embeddings` (`GET /v1/models` is in
//! [`super::models`]). The body's `model` picks the model ([`crate::models`]); absent, the
//! configured default.
//!
//! Extensions beyond OpenAI's fields: `input_type` (`query` | `document`, `passage` meaning
//! document), `instruction` (the task description of queries), `truncate` and
//! `truncation_direction` (`left` | `right`).

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use common::subjects::Task;
use common::trace::RequestTrace;
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
    /// The full name of the model that embedded the inputs.
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
    let model = state
        .models
        .resolve(Task::Embed, request.model.as_deref())
        .await?;
    let job = EmbedJob {
        model: model.clone(),
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
        model: model.name.clone(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}
