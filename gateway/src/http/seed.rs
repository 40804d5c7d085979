//! The seed's API, kept for existing clients: `POST {root_path}/embedding/api` with
//! `{"input": [texts] | "text", "is_query": bool, "instruction"?: str, "dimensions"?: int}`,
//! answered with a JSON list of vectors in input order.

use axum::extract::State;
use axum::{Extension, Json};
use common::trace::RequestTrace;
use common::wire::InputType;
use serde::Serialize;

use super::AppState;
use super::error::ApiError;
use super::extract::JsonBody;
use crate::service::{Arrival, EmbedJob};
use crate::upstream::assembly::Embedded;

/// The answer: one vector per input, serialized straight from the shared results.
#[derive(Debug)]
pub struct Vectors(Vec<std::sync::Arc<Embedded>>);

impl Serialize for Vectors {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|item| &item.vector))
    }
}

/// `POST {root_path}/embedding/api`. `is_query: true` embeds the texts as queries with the
/// given instruction, or the worker's default one when none is given.
pub async fn embed(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(mut fields): JsonBody,
) -> Result<Json<Vectors>, ApiError> {
    let texts = fields.input()?;
    let is_query = fields.boolean("is_query")?.unwrap_or(false);
    let job = EmbedJob {
        texts,
        input_type: if is_query {
            InputType::Query
        } else {
            InputType::Document
        },
        instruction: fields.string("instruction")?,
        dimensions: fields.dimensions()?,
        truncate: state.config.truncate,
        trace,
        arrival,
    };
    Ok(Json(Vectors(state.service.embed(job).await?)))
}
