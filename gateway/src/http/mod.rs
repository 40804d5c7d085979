//! The HTTP side: shared state, the router, request metrics, and one module per endpoint
//! family.

pub mod auth;
pub mod cohere;
pub mod cors;
pub mod debug;
pub mod docs;
pub mod embeddings;
pub mod error;
pub mod extract;
pub mod health;
pub mod models;
pub mod openapi;
pub mod request_id;
pub mod rerank;
pub mod routes;
pub mod seed;
pub mod tei;
pub mod tei_error;
pub mod tokenize;
pub mod types;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use common::trace::LOG_TARGET;
use common::wire::{WorkerKind, WorkerStatus};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::api_keys::ApiKeys;
use crate::config::GatewayConfig;
use crate::metrics::{Gauges, Metrics, WorkerTotals};
use crate::models::Models;
use crate::service::{Arrival, EmbedService};
use crate::upstream::discovery::Discovery;

use self::error::ApiError;

/// What every handler shares: configuration, the embedding service, the models, discovery,
/// metrics.
pub struct Shared {
    /// The configuration the gateway started with.
    pub config: GatewayConfig,
    /// Admission, cache and upstream requests.
    pub service: EmbedService,
    /// The served models: which one a request's `model` names.
    pub models: Models,
    /// Worker discovery for health, debug and metrics.
    pub discovery: Arc<Discovery>,
    /// This gateway's metrics.
    pub metrics: Metrics,
    /// Unix time in seconds when the gateway started (`created` of the model).
    pub started_s: u64,
    /// Every configured API key (`api_keys` and `api_keys_file`); empty when
    /// authentication is off.
    pub api_keys: ApiKeys,
}

/// Handler state: cheap to clone.
pub type AppState = Arc<Shared>;

/// All routes of the table in [`routes`]: OpenAI (`/v1/...`), seed
/// (`{root_path}/embedding/api`), rerank (`/v1/rerank` and TEI's `/rerank`), health, debug,
/// metrics, and the API's description (`/openapi.json`, `/docs`). With API keys configured,
/// all but [`routes::OPEN_PATHS`] require one (see [`auth`]); refusals are counted by `track`
/// like any answer.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new();
    for route in routes::routes(&state.config.route_prefix()) {
        app = app.route(&route.path, route.handler);
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        // Outside the key check: preflights carry no key and are answered here.
        .layer(tower::util::option_layer(cors::layer(
            &state.config.cors_allowed_origins,
        )))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Failures are logged once, by `ApiError`; health probes answering 503 are not errors.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        // Outermost, so every answer (refusals included) carries the request id.
        .layer(middleware::from_fn(request_id::assign))
        .with_state(state)
}

/// Counts every answered request by route template and status, with its latency, and logs
/// it on the per-request target (inside the request's span, see [`request_id`]). Marks the
/// request's [`Arrival`], from which its deadline runs.
async fn track(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(Arrival::now());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let (status, seconds) = (response.status().as_u16(), started.elapsed().as_secs_f64());
    state.metrics.http_request(&route, status, seconds);
    tracing::debug!(
        target: LOG_TARGET,
        %method,
        route,
        status,
        ms = seconds * 1e3,
        "answered"
    );
    response
}

/// `GET /metrics`: the Prometheus text format, with gauges refreshed first.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "Operations",
    summary = "Prometheus metrics (text format 0.0.4)",
    responses((status = 200, description = "The gateway's metrics (see docs/operations.md)", body = String, content_type = "text/plain"))
)]
async fn prometheus(State(state): State<AppState>) -> Response {
    let snapshot = state.discovery.workers().await;
    state.metrics.set_worker_gauges(&snapshot.workers);
    state.metrics.set_model_gauges(&snapshot.workers);
    state.metrics.set_gauges(Gauges {
        in_flight: state.service.admission.active(),
        in_flight_limit: state.service.admission.limit(),
        queued: state.service.admission.queued(),
        queue_limit: state.service.admission.queue_limit(),
        cache_entries: state.service.cache.len(),
        queue_depth: snapshot.queue_depth(),
        tokenizer_workers: snapshot.loaded(WorkerKind::Tokenizer),
        gpu_workers: snapshot.loaded(WorkerKind::Gpu),
        tokenizer_totals: totals(&snapshot.workers, WorkerKind::Tokenizer),
        gpu_totals: totals(&snapshot.workers, WorkerKind::Gpu),
        rerank_tokenizer_workers: snapshot.loaded(WorkerKind::RerankTokenizer),
        rerank_gpu_workers: snapshot.loaded(WorkerKind::RerankGpu),
        rerank_tokenizer_totals: totals(&snapshot.workers, WorkerKind::RerankTokenizer),
        rerank_gpu_totals: totals(&snapshot.workers, WorkerKind::RerankGpu),
        device_memory_used: snapshot
            .workers
            .iter()
            .filter_map(|w| w.device_memory_used)
            .sum(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Sums the work counters of the workers of one kind.
fn totals(workers: &[WorkerStatus], kind: WorkerKind) -> WorkerTotals {
    workers
        .iter()
        .filter(|w| w.kind == kind)
        .fold(WorkerTotals::default(), |t, w| WorkerTotals {
            batches: t.batches + w.batches,
            sequences: t.sequences + w.sequences,
            tokens: t.tokens + w.tokens,
        })
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
