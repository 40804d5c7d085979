//! Cohere's v2 API, so the Cohere SDK (`cohere.ClientV2(base_url=...)`) works unchanged:
//! `POST /v2/embed` (every `embedding_types`, computed by [`crate::quantize`]) and
//! `POST /v2/rerank`. Their `model` picks the model ([`crate::models`]); absent, the
//! configured default. Refusals answer Cohere's `{"message"}` with the gateway's status.

use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::subjects::Task;
use common::trace::RequestTrace;
use common::wire::InputType;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::extract::JsonBody;
use super::rerank::ranked;
use super::tei_error::reshape;
use super::types::RequestBody;
use super::types::cohere::{CohereEmbedRequest, CohereRerankRequest, EmbeddingType};
use crate::quantize;
use crate::service::{Arrival, EmbedJob, RerankJob};

/// The OpenAPI tag of the Cohere routes (their refusals are documented with
/// [`CohereErrorBody`]).
pub const COHERE_TAG: &str = "Cohere";

/// A failure answered in Cohere's shape.
#[derive(Debug)]
pub struct CohereError(pub ApiError);

impl From<ApiError> for CohereError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

/// Cohere's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohereErrorBody {
    /// What went wrong, for people.
    pub message: String,
}

impl IntoResponse for CohereError {
    fn into_response(self) -> Response {
        let body = CohereErrorBody {
            message: self.0.to_string(),
        };
        reshape(self.0, &body)
    }
}

/// A JSON request body decoded as `T` whose refusals answer in Cohere's shape.
#[derive(Debug)]
pub struct CohereJson<T>(pub T);

impl<T: RequestBody> FromRequest<AppState> for CohereJson<T> {
    type Rejection = CohereError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, CohereError> {
        let JsonBody(body) = JsonBody::<T>::from_request(req, state).await?;
        Ok(Self(body))
    }
}

/// The answer of `POST /v2/embed`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohereEmbedResponse {
    /// The request id (`X-Request-Id`).
    id: String,
    /// The vectors in each requested encoding, one per text, in text order.
    embeddings: EmbeddingsByType,
    /// The texts as sent.
    texts: Vec<String>,
    /// API version and tokens counted.
    meta: Meta,
    /// Always `embeddings_by_type`.
    response_type: &'static str,
}

/// The vectors in each requested encoding (only those requested are present).
#[derive(Debug, Default, Serialize, ToSchema)]
struct EmbeddingsByType {
    /// Numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    float: Option<Vec<Vec<f32>>>,
    /// Signed bytes (`[-127, 127]`; see docs/api.md for the scale).
    #[serde(skip_serializing_if = "Option::is_none")]
    int8: Option<Vec<Vec<i8>>>,
    /// Unsigned bytes: int8 plus 128.
    #[serde(skip_serializing_if = "Option::is_none")]
    uint8: Option<Vec<Vec<u8>>>,
    /// Sign bits packed 8 to a byte, most significant first, as signed bytes (byte - 128).
    #[serde(skip_serializing_if = "Option::is_none")]
    binary: Option<Vec<Vec<i8>>>,
    /// Sign bits packed 8 to a byte, most significant first.
    #[serde(skip_serializing_if = "Option::is_none")]
    ubinary: Option<Vec<Vec<u8>>>,
    /// Little-endian f32 bytes in base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<Vec<String>>,
}

/// Cohere's `meta`.
#[derive(Debug, Serialize, ToSchema)]
struct Meta {
    /// `{"version": "2"}`.
    api_version: ApiVersion,
    /// Tokens counted.
    billed_units: BilledUnits,
}

/// The API version answered.
#[derive(Debug, Serialize, ToSchema)]
struct ApiVersion {
    /// Always `2`.
    version: &'static str,
}

/// Tokens counted.
#[derive(Debug, Serialize, ToSchema)]
struct BilledUnits {
    /// Tokens of the texts (or of the rerank prompts).
    input_tokens: u64,
}

fn meta(input_tokens: u64) -> Meta {
    Meta {
        api_version: ApiVersion { version: "2" },
        billed_units: BilledUnits { input_tokens },
    }
}

/// `POST /v2/embed`.
#[utoipa::path(
    post,
    path = "/v2/embed",
    operation_id = "cohere_embed",
    tag = "Cohere",
    summary = "Embed texts (Cohere v2 shape), as floats or compact vectors",
    request_body = CohereEmbedRequest,
    responses((status = 200, description = "The vectors in each requested encoding", body = CohereEmbedResponse))
)]
pub async fn embed(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    CohereJson(request): CohereJson<CohereEmbedRequest>,
) -> Result<Json<CohereEmbedResponse>, CohereError> {
    let model = state
        .models
        .resolve(Task::Embed, request.model.as_deref())
        .await?;
    // END (cut the end) unless the request says otherwise; NONE refuses over-long texts.
    let direction = request.truncate.unwrap_or(Some(Default::default()));
    let id = trace.request_id.clone().unwrap_or_default();
    let job = EmbedJob {
        model,
        texts: request.texts.clone(),
        input_type: request.input_type.unwrap_or(InputType::Document),
        instruction: None,
        dimensions: request.output_dimension,
        truncate: Some(direction.is_some()),
        truncation_direction: direction,
        normalize: None,
        priority: None,
        trace,
        arrival,
    };
    let items = state.service.embed(job).await?;
    let input_tokens = items.iter().map(|item| u64::from(item.tokens)).sum();
    let vectors = || items.iter().map(|item| item.vector.as_slice());
    let mut embeddings = EmbeddingsByType::default();
    for kind in request.embedding_types {
        match kind {
            EmbeddingType::Float => {
                embeddings.float = Some(vectors().map(<[f32]>::to_vec).collect())
            }
            EmbeddingType::Int8 => embeddings.int8 = Some(vectors().map(quantize::int8).collect()),
            EmbeddingType::Uint8 => {
                embeddings.uint8 = Some(vectors().map(quantize::uint8).collect())
            }
            EmbeddingType::Binary => {
                embeddings.binary = Some(vectors().map(quantize::binary).collect());
            }
            EmbeddingType::Ubinary => {
                embeddings.ubinary = Some(vectors().map(quantize::ubinary).collect());
            }
            EmbeddingType::Base64 => {
                embeddings.base64 = Some(vectors().map(quantize::base64_f32).collect());
            }
        }
    }
    Ok(Json(CohereEmbedResponse {
        id,
        embeddings,
        texts: request.texts,
        meta: meta(input_tokens),
        response_type: "embeddings_by_type",
    }))
}

/// The answer of `POST /v2/rerank`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohereRerankResponse {
    /// The request id (`X-Request-Id`).
    id: String,
    /// The documents by score, highest first (ties in document order), at most `top_n`.
    results: Vec<CohereRank>,
    /// API version and tokens counted.
    meta: Meta,
}

/// One document's score.
#[derive(Debug, Serialize, ToSchema)]
struct CohereRank {
    /// The document's position in the request.
    index: usize,
    /// The probability that the document answers the query (of `yes` against `no`).
    relevance_score: f32,
}

/// `POST /v2/rerank`.
#[utoipa::path(
    post,
    path = "/v2/rerank",
    operation_id = "cohere_rerank",
    tag = "Cohere",
    summary = "Rank documents against a query (Cohere v2 shape)",
    request_body = CohereRerankRequest,
    responses((status = 200, description = "The documents by score, highest first", body = CohereRerankResponse))
)]
pub async fn rerank(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    CohereJson(request): CohereJson<CohereRerankRequest>,
) -> Result<Json<CohereRerankResponse>, CohereError> {
    let model = state
        .models
        .resolve(Task::Rerank, request.model.as_deref())
        .await?;
    let id = trace.request_id.clone().unwrap_or_default();
    let job = RerankJob {
        model,
        query: request.query,
        documents: request.documents,
        documents_field: "documents",
        instruction: None,
        // Cohere shortens long documents rather than refusing them.
        truncate: Some(true),
        trace,
        arrival,
    };
    let scored = state.service.rerank(job).await?;
    let input_tokens = scored.iter().map(|s| u64::from(s.tokens)).sum();
    let results = ranked(&scored, request.top_n)
        .into_iter()
        .map(|index| CohereRank {
            index,
            relevance_score: scored[index].score,
        })
        .collect();
    Ok(Json(CohereRerankResponse {
        id,
        results,
        meta: meta(input_tokens),
    }))
}
