//! The rerank APIs: `POST /v1/rerank` in the shape Cohere and Jina clients send, and
//! `POST /rerank` in text-embeddings-inference's shape, so users of either can switch.
//!
//! Both score every document against the query with the Qwen3-Reranker (the probability of
//! `yes` against `no`) and answer sorted by score, highest first (ties by document order).
//!
//! * `/v1/rerank`: `model`, `query`, `documents` (strings, or objects with `text`), `top_n`,
//!   `return_documents` (default false), plus `instruction` and `truncate`; answers
//!   `{"model", "results": [{"index", "relevance_score", "document"?: {"text"}}],
//!   "usage": {"total_tokens"}}`.
//! * `/rerank`: `query`, `texts`, `raw_scores` (the logit difference `logit_yes - logit_no`
//!   instead of the probability), `return_text`, `truncate`, plus `instruction`; answers a
//!   JSON array of `{"index", "score", "text"?}`.

use axum::extract::State;
use axum::{Extension, Json};
use common::trace::RequestTrace;
use serde::Serialize;

use super::AppState;
use super::embeddings::names_model;
use super::error::ApiError;
use super::extract::JsonBody;
use crate::service::{Arrival, RerankJob};
use crate::upstream::assembly::Scored;

/// The answer of `POST /v1/rerank`.
#[derive(Debug, Serialize)]
pub struct RerankResponse {
    model: String,
    results: Vec<RerankResult>,
    usage: RerankUsage,
}

#[derive(Debug, Serialize)]
struct RerankResult {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<DocumentText>,
}

#[derive(Debug, Serialize)]
struct DocumentText {
    text: String,
}

#[derive(Debug, Serialize)]
struct RerankUsage {
    total_tokens: u64,
}

/// One entry of the answer of `POST /rerank` (TEI).
#[derive(Debug, Serialize)]
pub struct TeiRank {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// `POST /v1/rerank`.
pub async fn rerank(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(mut fields): JsonBody,
) -> Result<Json<RerankResponse>, ApiError> {
    let served = &state.config.rerank_model;
    if let Some(model) = fields.string("model")?
        && !names_model(&model, served)
    {
        return Err(ApiError::ModelNotFound {
            requested: model,
            served: served.clone(),
        });
    }
    let job = RerankJob {
        query: fields.required_string("query")?,
        documents: fields.texts("documents")?,
        documents_field: "documents",
        instruction: fields.string("instruction")?,
        truncate: fields.boolean("truncate")?.or(state.config.truncate),
        trace,
        arrival,
    };
    let top_n = fields.positive_integer("top_n")?;
    let return_documents = fields.boolean("return_documents")?.unwrap_or(false);
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
        model: served.clone(),
        results,
        usage: RerankUsage { total_tokens },
    }))
}

/// `POST /rerank` (text-embeddings-inference's shape).
pub async fn tei_rerank(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(mut fields): JsonBody,
) -> Result<Json<Vec<TeiRank>>, ApiError> {
    let job = RerankJob {
        query: fields.required_string("query")?,
        documents: fields.texts("texts")?,
        documents_field: "texts",
        instruction: fields.string("instruction")?,
        truncate: fields.boolean("truncate")?.or(state.config.truncate),
        trace,
        arrival,
    };
    let raw_scores = fields.boolean("raw_scores")?.unwrap_or(false);
    let return_text = fields.boolean("return_text")?.unwrap_or(false);
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
fn ranked(scored: &[Scored], top_n: Option<usize>) -> Vec<usize> {
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
