//! The rerank APIs: `POST /v1/rerank` in the shape Cohere and Jina clients send, and
//! `POST /rerank` in text-embeddings-inference's shape, so users of either can switch.
//!
//! Both score every document against the query with the Qwen3-Reranker (the probability of
//! `yes` against `no`) and answer sorted by score, highest first (ties by document order).
//!
//! * `/v1/rerank`: `model` (picks the reranker, [`crate::models`]; absent, the configured
//!   default), `query`, `documents` (strings, or objects with `text`), `top_n`,
//!   `return_documents` (default false), plus `instruction` and `truncate`; answers
//!   `{"model", "results": [{"index", "relevance_score", "document"?: {"text"}}],
//!   "usage": {"total_tokens"}}`.
//! * `/rerank` (always the default reranker: TEI's body names no model): `query`, `texts`,
//!   `raw_scores` (the logit difference `logit_yes - logit_no` instead of the probability),
//!   `return_text`, `truncate`, plus `instruction`; answers a JSON array of
//!   `{"index", "score", "text"?}`; refusals answer TEI's `{"error", "error_type"}`
//!   ([`super::tei_error`]).

use axum::extract::State;
use axum::{Extension, Json};
use common::subjects::Task;
use common::trace::RequestTrace;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::extract::JsonBody;
use super::tei_error::{TeiError, TeiJson};
use super::types::{RerankRequest, TeiRerankRequest};
use crate::service::{Arrival, RerankJob};
use crate::upstream::assembly::Scored;

/// The answer of `POST /v1/rerank`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResponse {
    /// The full name of the reranker that scored the documents.
    model: String,
    /// The documents by score, highest first (ties in document order), at most `top_n`.
    results: Vec<RerankResult>,
    /// Tokens of the prompts scored.
    usage: RerankUsage,
}

/// One document's score.
#[derive(Debug, Serialize, ToSchema)]
struct RerankResult {
    /// The document's position in the request.
    index: usize,
    /// The probability that the document answers the query (of `yes` against `no`).
    relevance_score: f32,
    /// The document's text, with `return_documents: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<DocumentText>,
}

/// A document's text.
#[derive(Debug, Serialize, ToSchema)]
struct DocumentText {
    /// The text.
    text: String,
}

/// Token counts of a rerank request.
#[derive(Debug, Serialize, ToSchema)]
struct RerankUsage {
    /// Tokens of every (query, document) prompt.
    total_tokens: u64,
}

/// One entry of the answer of `POST /rerank` (TEI).
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiRank {
    /// The text's position in the request.
    index: usize,
    /// The probability of `yes`, or with `raw_scores: true` the logit difference
    /// `logit_yes - logit_no`.
    score: f32,
    /// The text, with `return_text: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// `POST /v1/rerank`.
#[utoipa::path(
    post,
    path = "/v1/rerank",
    tag = "Rerank",
    summary = "Rank documents against a query (Cohere and Jina shape)",
    request_body = RerankRequest,
    responses((status = 200, description = "The documents by score, highest first", body = RerankResponse))
)]
pub async fn rerank(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(request): JsonBody<RerankRequest>,
) -> Result<Json<RerankResponse>, ApiError> {
    let model = state
        .models
        .resolve(Task::Rerank, request.model.as_deref())
        .await?;
    let job = RerankJob {
        model: model.clone(),
        query: request.query,
        documents: request.documents,
        documents_field: "documents",
        instruction: request.instruction,
        truncate: request.truncate.or(state.config.truncate),
        trace,
        arrival,
    };
    let top_n = request.top_n;
    let return_documents = request.return_documents.unwrap_or(false);
    let documents = job.documents.clone();
    let scored = state.service.rerank(job).await?;
    let total_tokens = scored.iter().map(|s| u64::from(s.tokens)).sum();
    let results = ranked(&scored, top_n)
        .into_iter()
        .map(|index| RerankResult {
            index,
            relevance_score: scored[index].score,
            document: return_documents.then(|| DocumentText {
                text: documents[index].clone(),
            }),
        })
        .collect();
    Ok(Json(RerankResponse {
        model: model.name.clone(),
        results,
        usage: RerankUsage { total_tokens },
    }))
}

/// `POST /rerank` (text-embeddings-inference's shape).
#[utoipa::path(
    post,
    path = "/rerank",
    tag = "TEI",
    summary = "Rank texts against a query (text-embeddings-inference shape)",
    request_body = TeiRerankRequest,
    responses((status = 200, description = "The texts by score, highest first", body = Vec<TeiRank>))
)]
pub async fn tei_rerank(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    TeiJson(request): TeiJson<TeiRerankRequest>,
) -> Result<Json<Vec<TeiRank>>, TeiError> {
    let model = state.models.resolve(Task::Rerank, None).await?;
    let job = RerankJob {
        model,
        query: request.query,
        documents: request.texts,
        documents_field: "texts",
        instruction: request.instruction,
        truncate: request.truncate.or(state.config.truncate),
        trace,
        arrival,
    };
    let raw_scores = request.raw_scores.unwrap_or(false);
    let return_text = request.return_text.unwrap_or(false);
    let texts = job.documents.clone();
    let scored = state.service.rerank(job).await?;
    let ranks = ranked(&scored, None)
        .into_iter()
        .map(|index| {
            let s = &scored[index];
            TeiRank {
                index,
                score: if raw_scores {
                    s.logit_yes - s.logit_no
                } else {
                    s.score
                },
                text: return_text.then(|| texts[index].clone()),
            }
        })
        .collect();
    Ok(Json(ranks))
}

/// Document indices by score, highest first (ties in document order), at most `top_n`.
pub(crate) fn ranked(scored: &[Scored], top_n: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scored.len()).collect();
    // Stable: equal scores keep document order. The difference of logits orders exactly
    // like the probability and does not saturate at 1.0 for very relevant documents.
    order.sort_by(|&a, &b| {
        let key = |s: &Scored| s.logit_yes - s.logit_no;
        key(&scored[b]).total_cmp(&key(&scored[a]))
    });
    order.truncate(top_n.unwrap_or(usize::MAX));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(logit_yes: f32) -> Scored {
        Scored {
            score: 1.0 / (1.0 + (-logit_yes).exp()),
            logit_yes,
            logit_no: 0.0,
            tokens: 1,
        }
    }

    #[test]
    fn ranking_is_by_score_then_document_order() {
        let all = [scored(0.5), scored(2.0), scored(0.5), scored(-1.0)];
        assert_eq!(ranked(&all, None), [1, 0, 2, 3]);
        assert_eq!(ranked(&all, Some(2)), [1, 0]);
        assert_eq!(ranked(&all, Some(10)), [1, 0, 2, 3]);
    }
}
