//! The API's description: `GET /openapi.json` (the OpenAPI 3.1 document of [`super::openapi`])
//! and `GET /docs`, a self-contained page that renders it (no script, style or font from
//! elsewhere: it works without network access). Both also under `root_path`, and open without
//! an API key (see [`super::routes::OPEN_PATHS`]).

use axum::Json;
use axum::extract::State;
use axum::response::Html;

use super::AppState;
use super::openapi::document;

/// The reference page: HTML, CSS and JavaScript in one file, fetching `openapi.json` beside
/// it (so it works at `/docs` and at `{root_path}/docs`).
const REFERENCE_PAGE: &str = include_str!("docs.html");

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "Reference",
    summary = "This OpenAPI 3.1 document (no API key needed)",
    responses((status = 200, description = "The document", body = Object))
)]
pub async fn openapi_json(State(state): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    Json(document(&state.config.route_prefix()))
}

/// `GET /docs`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "Reference",
    summary = "A browsable reference of this document, served offline (no API key needed)",
    responses((status = 200, description = "An HTML page", body = String, content_type = "text/html"))
)]
pub async fn reference() -> Html<&'static str> {
    Html(REFERENCE_PAGE)
}
