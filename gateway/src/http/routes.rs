//! The one table of routes: what the router registers and what the OpenAPI document lists,
//! so the two cannot drift. Each entry pairs a handler with its `#[utoipa::path]` operation.

use axum::routing::{MethodRouter, get, post};
use utoipa::Path;
use utoipa::openapi::path::{HttpMethod, Operation};

use super::{
    AppState, cohere, debug, docs, embeddings, health, models, prometheus, rerank, seed, tei,
};

/// Routes that need no API key when keys are configured, at the root and under `root_path`:
/// health probes (load balancers carry no credentials) and the API's description (it holds
/// no data: the same for every deployment but for `root_path`).
pub const OPEN_PATHS: &[&str] = &["/health", "/openapi.json", "/docs"];

/// Where a route is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// At its path only.
    Root,
    /// Under `root_path` only (the seed's API).
    Prefixed,
    /// At its path and, when `root_path` is set, under it too.
    Both,
}

/// One served route.
pub struct Route {
    /// The path, `root_path` included.
    pub path: String,
    /// The method.
    pub method: HttpMethod,
    /// The documented operation (request, answers, description).
    pub operation: Operation,
    /// Whether it is also served at another path (an alias under `root_path`).
    pub alias: bool,
    /// The handler.
    pub handler: MethodRouter<AppState>,
}

/// One entry of the table: an operation documented with `#[utoipa::path]`, its handler and
/// where it is served.
struct Endpoint {
    path: String,
    methods: Vec<HttpMethod>,
    operation: Operation,
    handler: fn() -> MethodRouter<AppState>,
    placement: Placement,
}

fn endpoint<P: Path>(handler: fn() -> MethodRouter<AppState>, placement: Placement) -> Endpoint {
    Endpoint {
        path: P::path(),
        methods: P::methods(),
        operation: P::operation(),
        handler,
        placement,
    }
}

/// Every endpoint: add a route here (with `#[utoipa::path]` on its handler) and it is both
/// served and documented.
fn endpoints() -> Vec<Endpoint> {
    use Placement::{Both, Prefixed, Root};
    vec![
        endpoint::<embeddings::__path_create>(|| post(embeddings::create), Root),
        endpoint::<models::__path_models>(|| get(models::models), Root),
        endpoint::<rerank::__path_rerank>(|| post(rerank::rerank), Root),
        endpoint::<rerank::__path_tei_rerank>(|| post(rerank::tei_rerank), Root),
        endpoint::<tei::__path_embed>(|| post(tei::embed), Root),
        endpoint::<tei::__path_embed_at_root>(|| post(tei::embed_at_root), Root),
        endpoint::<tei::__path_similarity>(|| post(tei::similarity), Root),
        endpoint::<tei::__path_info>(|| get(tei::info), Root),
        endpoint::<cohere::__path_embed>(|| post(cohere::embed), Root),
        endpoint::<cohere::__path_rerank>(|| post(cohere::rerank), Root),
        endpoint::<seed::__path_embed>(|| post(seed::embed), Prefixed),
        endpoint::<super::tokenize::__path_tei_tokenize>(
            || post(super::tokenize::tei_tokenize),
            Root,
        ),
        endpoint::<super::tokenize::__path_tei_decode>(|| post(super::tokenize::tei_decode), Root),
        endpoint::<super::tokenize::__path_vllm_tokenize>(
            || post(super::tokenize::vllm_tokenize),
            Root,
        ),
        endpoint::<super::tokenize::__path_vllm_detokenize>(
            || post(super::tokenize::vllm_detokenize),
            Root,
        ),
        endpoint::<health::__path_health>(|| get(health::health), Both),
        endpoint::<debug::__path_debug>(|| get(debug::debug), Both),
        endpoint::<super::__path_prometheus>(|| get(prometheus), Root),
        endpoint::<docs::__path_openapi_json>(|| get(docs::openapi_json), Both),
        endpoint::<docs::__path_reference>(|| get(docs::reference), Both),
    ]
}

/// Every route served with `root_path` `prefix` (empty or `/api/v1`).
pub fn routes(prefix: &str) -> Vec<Route> {
    let mut routes = Vec::new();
    for endpoint in endpoints() {
        let paths = match endpoint.placement {
            Placement::Root => vec![(endpoint.path.clone(), false)],
            Placement::Prefixed => vec![(format!("{prefix}{}", endpoint.path), false)],
            Placement::Both if prefix.is_empty() => vec![(endpoint.path.clone(), false)],
            Placement::Both => vec![
                (endpoint.path.clone(), false),
                (format!("{prefix}{}", endpoint.path), true),
            ],
        };
        for (path, alias) in paths {
            for method in &endpoint.methods {
                routes.push(Route {
                    path: path.clone(),
                    method: method.clone(),
                    operation: endpoint.operation.clone(),
                    alias,
                    handler: (endpoint.handler)(),
                });
            }
        }
    }
    routes
}

/// Whether `path` needs no API key (see [`OPEN_PATHS`]).
pub fn is_open(path: &str, prefix: &str) -> bool {
    OPEN_PATHS.contains(&path)
        || (!prefix.is_empty()
            && path
                .strip_prefix(prefix)
                .is_some_and(|rest| OPEN_PATHS.contains(&rest)))
}
