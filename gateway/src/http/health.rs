//! `GET /health` (and under `root_path`): ready only when at least one tokenizer worker and
//! one GPU worker of the default embedding model (the bare subjects, the model requests
//! without `model` go to) answer discovery with the model loaded. Workers of further models
//! (routes of their own) and rerank workers do not make the gateway ready.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::wire::WorkerKind;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// The health answer (200 when `status` is `ok`, else 503).
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// The served model.
    pub model: String,
    /// Whether a GPU worker has the model loaded.
    pub model_loaded: bool,
    /// Loaded tokenizer workers of the default model that answered.
    pub tokenizer_workers: usize,
    /// Loaded GPU workers of the default model that answered.
    pub gpu_workers: usize,
    /// Loaded rerank tokenizer workers that answered (rerank is optional: health does not
    /// depend on them).
    pub rerank_tokenizer_workers: usize,
    /// Loaded rerank GPU workers that answered.
    pub rerank_gpu_workers: usize,
    /// Unix time in seconds of the discovery behind this answer.
    pub timestamp: f64,
    /// Why the gateway cannot serve, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /health`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "Operations",
    summary = "Readiness: workers of both kinds answer discovery (no API key needed)",
    responses(
        (status = 200, description = "Ready to serve", body = Health),
        (status = 503, description = "Cannot serve; `reason` says why", body = Health)
    )
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let snapshot = state.discovery.workers().await;
    let tokenizer_workers = snapshot.loaded_default(WorkerKind::Tokenizer);
    let gpu_workers = snapshot.loaded_default(WorkerKind::Gpu);
    let reason = match (&snapshot.error, tokenizer_workers, gpu_workers) {
        (Some(error), _, _) => Some(error.clone()),
        (None, 0, 0) => {
            Some("no tokenizer worker and no GPU worker with the model loaded answered".into())
        }
        (None, 0, _) => Some("no tokenizer worker answered".into()),
        (None, _, 0) => Some("no GPU worker with the model loaded answered".into()),
        (None, _, _) => None,
    };
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if reason.is_none() {
            "ok"
        } else {
            "unavailable"
        },
        model: state.config.model.clone(),
        model_loaded: gpu_workers > 0,
        tokenizer_workers,
        gpu_workers,
        rerank_tokenizer_workers: snapshot.loaded(WorkerKind::RerankTokenizer),
        rerank_gpu_workers: snapshot.loaded(WorkerKind::RerankGpu),
        timestamp: snapshot.taken_ms as f64 / 1000.0,
        reason,
    };
    (status, Json(body)).into_response()
}
