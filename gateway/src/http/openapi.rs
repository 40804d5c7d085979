//! The OpenAPI 3.1 document of the gateway, built from the route table ([`super::routes`]):
//! each route's `#[utoipa::path]` operation with the schemas of its request and answer types,
//! the error answers it can give (with [`ErrorBody`]), and the bearer API-key scheme.

use utoipa::OpenApi;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, ContentBuilder, Paths, Ref, ResponseBuilder};

use super::cohere::{COHERE_TAG, CohereErrorBody};
use super::error::ErrorBody;
use super::routes::{is_open, routes};
use super::tei_error::{TEI_TAG, TeiErrorBody};
use super::{cohere, debug, docs, embeddings, health, models, rerank, seed, tei};

/// Name of the API-key security scheme in the document.
pub const API_KEY_SCHEME: &str = "api_key";

/// The document's fixed parts; the paths below only gather the schemas they use (the paths
/// served come from the route table, with `root_path`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "qwen3-embed gateway",
        description = "Embeddings and reranking with Qwen3 models: OpenAI-compatible \
            `/v1/embeddings`, Cohere/Jina `/v1/rerank`, text-embeddings-inference `/embed`, \
            `/similarity` and `/rerank`, the \
            seed's `{root_path}/embedding/api`, and operations routes. Every error answers \
            `ErrorBody` with a stable `code`. With API keys configured, every route but \
            `/health`, `/openapi.json` and `/docs` needs `Authorization: Bearer <key>`."
    ),
    paths(
        embeddings::create,
        models::models,
        rerank::rerank,
        rerank::tei_rerank,
        tei::embed,
        tei::embed_at_root,
        tei::similarity,
        tei::info,
        cohere::embed,
        cohere::rerank,
        seed::embed,
        super::tokenize::tei_tokenize,
        super::tokenize::tei_decode,
        super::tokenize::vllm_tokenize,
        super::tokenize::vllm_detokenize,
        health::health,
        debug::debug,
        super::prometheus,
        docs::openapi_json,
        docs::reference,
    ),
    components(schemas(ErrorBody, TeiErrorBody, CohereErrorBody))
)]
struct ApiDoc;

/// The document of a gateway serving under `root_path` `prefix` (empty or `/api/v1`).
pub fn document(prefix: &str) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    let mut paths = Paths::new();
    for route in routes(prefix) {
        let mut operation = route.operation;
        add_refusals(&mut operation, is_open(&route.path, prefix));
        if route.alias {
            // Operation ids are unique in a document: the alias gets its own.
            operation.operation_id = operation
                .operation_id
                .map(|id| format!("{id}_under_root_path"));
        }
        paths.add_path_operation(&route.path, vec![route.method], operation);
    }
    document.paths = paths;
    let components = document.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        API_KEY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key from `api_keys_file` or `QWEN3_EMBED_API_KEYS`, as \
                     `Authorization: Bearer <key>`; needed only when keys are configured",
                ))
                .build(),
        ),
    );
    document
}

/// Adds the error answers `operation` can give: the API-key refusal unless the route is
/// `open`, and for routes with a JSON body every refusal of the body and of the service.
fn add_refusals(operation: &mut Operation, open: bool) {
    let mut refusals: Vec<(&str, &str)> = Vec::new();
    if !open {
        refusals.push(("401", "No API key (`Authorization: Bearer <key>`) or an unknown one, when keys are configured (`invalid_api_key`, with `WWW-Authenticate: Bearer`)"));
        // Only routes needing a key carry the requirement; the others are open to all.
        operation.security = Some(vec![SecurityRequirement::new(
            API_KEY_SCHEME,
            Vec::<String>::new(),
        )]);
    }
    if operation.request_body.is_some() {
        refusals.extend([
            ("400", "The body or a field is invalid: `invalid_json`, `invalid_utf8`, `invalid_body`, `invalid_value` (`param` names the field, e.g. `input[3]`, and the message the limit), `too_many_tokens` (an input over the model's token limit without `truncate`), `invalid_request`"),
            ("404", "`model` names another model than the one served (`model_not_found`)"),
            ("413", "The body is over `max_body_bytes`, or the request over the message bus's limit (`payload_too_large`)"),
            ("415", "The body is not declared `application/json` (`unsupported_media_type`)"),
            ("429", "`max_concurrent_queries` are in flight and `max_queued_requests` wait (`overloaded`, with `Retry-After`)"),
            ("500", "A worker failed (`internal_error`)"),
            ("502", "A worker sent an invalid reply (`bad_worker_reply`)"),
            ("503", "No worker serves the request, the message bus is down, or the workers are overloaded (`no_workers`, `bus_unavailable`, `overloaded`, with `Retry-After`)"),
            ("504", "The request's deadline (`request_timeout_s`) passed (`timeout`)"),
        ]);
    }
    let tagged = |tag| operation.tags.iter().flatten().any(|t| t == tag);
    let error_body = if tagged(TEI_TAG) {
        "TeiErrorBody"
    } else if tagged(COHERE_TAG) {
        "CohereErrorBody"
    } else {
        "ErrorBody"
    };
    for (status, description) in refusals {
        let mut response = ResponseBuilder::new().description(description).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(error_body)))
                .build(),
        );
        if matches!(status, "429" | "503") {
            response = response.header("Retry-After", retry_after());
        }
        operation
            .responses
            .responses
            .insert(status.to_string(), response.build().into());
    }
}

fn retry_after() -> Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
        .description(Some("Seconds to wait before retrying"))
        .build()
}
