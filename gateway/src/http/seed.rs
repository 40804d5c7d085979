//! The seed's API, kept for existing clients: `POST {root_path}/embedding/api` with
//! `{"input": [texts] | "text", "is_query": bool, "instruction"?: str, "dimensions"?: int}`,
//! answered with a JSON list of vectors in input order. The body names no model: the
//! configured default embeds.

use axum::extract::State;
use axum::{Extension, Json};
use common::subjects::Task;
use common::trace::RequestTrace;
use common::wire::InputType;
use serde::Serialize;
use utoipa::openapi::schema::{Array, ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use super::AppState;
use super::error::ApiError;
use super::extract::JsonBody;
use super::types::SeedRequest;
use crate::service::{Arrival, EmbedJob};
use crate::upstream::assembly::Embedded;

/// The answer: one vector per input, serialized straight from the shared results.
#[derive(Debug)]
pub struct Vectors(Vec<std::sync::Arc<Embedded>>);

impl PartialSchema for Vectors {
    fn schema() -> utoipa::openapi::RefOr<Schema> {
        let vector = Array::new(ObjectBuilder::new().schema_type(Type::Number));
        Schema::from(Array::new(vector)).into()
    }
}

impl ToSchema for Vectors {}

impl Serialize for Vectors {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|item| &item.vector))
    }
}

/// `POST {root_path}/embedding/api`. `is_query: true` embeds the texts as queries with the
/// given instruction, or the worker's default one when none is given.
#[utoipa::path(
    post,
    path = "/embedding/api",
    tag = "Seed",
    summary = "Embed texts (the seed's API, under root_path)",
    request_body = SeedRequest,
    responses((status = 200, description = "One vector per input, in input order", body = Vectors))
)]
pub async fn embed(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(request): JsonBody<SeedRequest>,
) -> Result<Json<Vectors>, ApiError> {
    let model = state.models.resolve(Task::Embed, None).await?;
    let job = EmbedJob {
        model,
        texts: request.input,
        input_type: if request.is_query.unwrap_or(false) {
            InputType::Query
        } else {
            InputType::Document
        },
        instruction: request.instruction,
        dimensions: request.dimensions,
        truncate: state.config.truncate,
        truncation_direction: None,
        normalize: None,
        priority: request.priority,
        trace,
        arrival,
    };
    Ok(Json(Vectors(state.service.embed(job).await?)))
}
