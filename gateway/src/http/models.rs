//! The served models as clients see them: `GET /v1/models` (OpenAI's list), and the same
//! cards for TEI's `/info` (`models`); the operator's view for `/debug` (`models`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use common::subjects::Task;
use common::wire::WorkerKind;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{AppState, Shared};
use crate::models::{Catalog, ServedModel};

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
pub struct ModelCard {
    /// The model's full name (`Qwen/Qwen3-Embedding-0.6B`), as requests' `model` names it.
    id: String,
    /// Always `model`.
    object: &'static str,
    /// Unix time in seconds when the gateway started.
    created: u64,
    /// The organisation in the model's name (`Qwen`), or `owner`.
    owned_by: String,
    /// `embedding` or `rerank`.
    kind: &'static str,
    /// The task whose routes it serves: `embed` (embedding routes) or `rerank`.
    task: &'static str,
    /// Width of the vectors (embedding models; null before one of its GPU workers answers).
    dimensions: Option<u32>,
    /// Most tokens of one input (its tokenizer workers' `max_length`; null before one
    /// answers). For a reranker: of one query and document prompt.
    max_input_length: Option<u32>,
    /// Its workers (tokenizer and GPU) serving now.
    workers: usize,
}

/// `GET /v1/models`: the default embedding model, the default reranker while rerank workers
/// serve, then every model discovered on a route of its own.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "OpenAI",
    summary = "List the served models",
    responses((status = 200, description = "The default embedding model, the default reranker while rerank workers serve, then every discovered model", body = ModelList))
)]
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let snapshot = state.discovery.workers().await;
    let catalog = state.models.catalog_of(&snapshot);
    Json(ModelList {
        object: "list",
        data: cards(&state, &catalog),
    })
}

/// The cards of `catalog`'s models as `/v1/models` lists them: the default reranker only
/// while one of its tokenizer workers serves.
pub fn cards(state: &Shared, catalog: &Catalog) -> Vec<ModelCard> {
    catalog
        .models()
        .iter()
        .filter(|model| {
            !(model.is_default() && model.task == Task::Rerank)
                || model.serving_of(WorkerKind::RerankTokenizer).count() > 0
        })
        .map(|model| card(state, model))
        .collect()
}

/// The card of `model`.
fn card(state: &Shared, model: &ServedModel) -> ModelCard {
    let (kind, tokenizer) = match model.task {
        Task::Embed => ("embedding", WorkerKind::Tokenizer),
        Task::Rerank => ("rerank", WorkerKind::RerankTokenizer),
    };
    ModelCard {
        id: model.name.clone(),
        object: "model",
        created: state.started_s,
        owned_by: model
            .name
            .split_once('/')
            .map_or("owner", |(owner, _)| owner)
            .to_string(),
        kind,
        task: model.task.as_str(),
        dimensions: model.hidden_size,
        max_input_length: model
            .serving_of(tokenizer)
            .filter_map(|w| w.max_input_tokens)
            .min(),
        workers: model.serving(),
    }
}

/// `/debug`'s `models`: every model (both defaults whether or not a worker answers) with its
/// task, route (null for a default) and the ids of the workers that answered for it, by kind.
pub fn debug_list(catalog: &Catalog) -> Value {
    let models: Vec<Value> = catalog
        .models()
        .iter()
        .map(|model| {
            let mut workers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for worker in &model.workers {
                workers
                    .entry(worker.kind.name())
                    .or_default()
                    .push(&worker.worker_id);
            }
            json!({
                "model": model.name,
                "task": model.task.as_str(),
                "route": model.route,
                "hidden_size": model.hidden_size,
                "serving_workers": model.serving(),
                "workers": workers,
            })
        })
        .collect();
    Value::Array(models)
}
