//! The OpenAI-compatible API: `POST /v1/embeddings` and `GET /v1/models`.
//!
//! Extensions beyond OpenAI's fields: `input_type` (`query` | `document`, `passage` meaning
//! document), `instruction` (the task description of queries) and `truncate`.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine;
use common::trace::RequestTrace;
use common::wire::InputType;
use serde::Serialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{Fields, JsonBody};
use crate::service::{Arrival, EmbedJob};
use crate::upstream::assembly::Embedded;

/// How vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EncodingFormat {
    /// A JSON list of numbers.
    Float,
    /// Little-endian f32 bytes, base64-encoded.
    Base64,
}

/// The answer of `POST /v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct EmbeddingList {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: String,
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
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

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// `POST /v1/embeddings`.
pub async fn create(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(mut fields): JsonBody,
) -> Result<Json<EmbeddingList>, ApiError> {
    let served = &state.config.model;
    if let Some(model) = fields.string("model")?
        && !names_model(&model, served)
    {
        return Err(ApiError::ModelNotFound {
            requested: model,
            served: served.clone(),
        });
    }
    let job = EmbedJob {
        texts: fields.input()?,
        input_type: input_type(&mut fields)?.unwrap_or(state.config.default_input_type),
        instruction: fields.string("instruction")?,
        dimensions: fields.dimensions()?,
        truncate: fields.boolean("truncate")?.or(state.config.truncate),
        trace,
        arrival,
    };
    let format = encoding_format(&mut fields)?;
    // `user` is accepted and ignored, like every other unknown field.
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

/// `GET /v1/models`: the one served model.
pub async fn models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let owner = state
        .config
        .model
        .split_once('/')
        .map_or("owner", |(owner, _)| owner);
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": state.config.model,
            "object": "model",
            "created": state.started_s,
            "owned_by": owner,
        }],
    }))
}

/// Whether a client's `model` names the served one: the full name, or the name without
/// its organisation (`Qwen3-Embedding-0.6B`).
pub(crate) fn names_model(requested: &str, served: &str) -> bool {
    requested == served
        || served
            .rsplit_once('/')
            .is_some_and(|(_, name)| name == requested)
}

fn input_type(fields: &mut Fields) -> Result<Option<InputType>, ApiError> {
    match fields.string("input_type")?.as_deref() {
        None => Ok(None),
        Some("query") => Ok(Some(InputType::Query)),
        Some("document" | "passage") => Ok(Some(InputType::Document)),
        Some(other) => Err(ApiError::field(
            "input_type",
            format!("input_type must be `query` or `document`, got `{other}`"),
        )),
    }
}

fn encoding_format(fields: &mut Fields) -> Result<EncodingFormat, ApiError> {
    match fields.string("encoding_format")?.as_deref() {
        None | Some("float") => Ok(EncodingFormat::Float),
        Some("base64") => Ok(EncodingFormat::Base64),
        Some(other) => Err(ApiError::field(
            "encoding_format",
            format!("encoding_format must be `float` or `base64`, got `{other}`"),
        )),
    }
}

/// Little-endian f32 bytes of `vector`, base64-encoded (what OpenAI clients decode).
fn base64_f32(vector: &[f32]) -> String {
    let bytes = common::wire::f32_le_bytes([vector]);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        let encoded = base64_f32(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn model_names_match_with_or_without_organisation() {
        let served = "Qwen/Qwen3-Embedding-0.6B";
        assert!(names_model(served, served));
        assert!(names_model("Qwen3-Embedding-0.6B", served));
        assert!(!names_model("text-embedding-3-small", served));
    }
}
