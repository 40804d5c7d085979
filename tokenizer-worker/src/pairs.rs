//! Rerank requests: what is checked before tokenizing, and the turning of a
//! [`RerankRequest`] into one [`PendingSequence`] per document, each the reranker prompt of
//! the (query, document) pair ([`RerankTemplate`]).

use std::time::Duration;

use common::wire::{self, BatchItem, ErrorCode, ErrorReply, RerankRequest};

use crate::batcher::PendingSequence;
use crate::budget::RequestBudget;
use crate::deadline;
use crate::rerank::{RerankTemplate, RerankTemplateError};

/// Checks a decoded rerank request: at least one document, a count that fits the wire, a
/// deadline not yet passed and within `max_age` (how long the work queue keeps a batch).
pub fn check(request: RerankRequest, max_age: Duration) -> Result<RerankRequest, ErrorReply> {
    let fail = |code, message: &str| Err(ErrorReply::new(Some(request.id.clone()), code, message));
    if request.documents.is_empty() {
        return fail(
            ErrorCode::InvalidRequest,
            "`documents` must hold at least one document",
        );
    }
    if request.documents.len() > u32::MAX as usize {
        return fail(
            ErrorCode::InvalidRequest,
            "`documents` holds too many texts",
        );
    }
    deadline::check(&request.id, request.deadline_ms, wire::now_ms(), max_age)?;
    Ok(request)
}

/// Formats and tokenizes every (query, document) pair of a request (on a blocking thread).
/// The first pair that fails fails the whole request, naming the document's index; so does
/// the first that takes the request's total past `max_tokens`.
pub fn tokenize(
    template: &RerankTemplate,
    request: RerankRequest,
    reply_to: &str,
    truncate: bool,
    max_tokens: usize,
) -> Result<Vec<PendingSequence>, ErrorReply> {
    let mut budget = RequestBudget::new(max_tokens, "document");
    let total = request.documents.len() as u32;
    let instruction = request.instruction.as_deref();
    request
        .documents
        .iter()
        .enumerate()
        .map(|(index, document)| {
            let encoding = template
                .encode(&request.query, document, instruction, truncate)
                .map_err(|e| {
                    let code = match e {
                        RerankTemplateError::TooLong { .. }
                        | RerankTemplateError::QueryTooLong { .. } => ErrorCode::TooManyTokens,
                        _ => ErrorCode::InvalidRequest,
                    };
                    ErrorReply::new(
                        Some(request.id.clone()),
                        code,
                        format!("document {index}: {e}"),
                    )
                })?;
            budget.take(&request.id, index, encoding.ids.len())?;
            let item = BatchItem {
                request_id: request.id.clone(),
                reply_to: reply_to.to_string(),
                index: index as u32,
                total,
                len: encoding.ids.len() as u32,
                dims: 0,
                deadline_ms: request.deadline_ms.unwrap_or(0),
                trace: None,
                bundle_to: None,
            };
            PendingSequence::new(item, encoding.ids).map_err(|e| {
                ErrorReply::new(Some(request.id.clone()), ErrorCode::Internal, e.to_string())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(documents: Vec<String>, deadline_ms: Option<u64>) -> RerankRequest {
        RerankRequest {
            id: "r".into(),
            query: "q".into(),
            documents,
            instruction: None,
            truncate: None,
            deadline_ms,
            ack: false,
        }
    }

    #[test]
    fn empty_documents_and_passed_deadlines_are_refused() {
        let max_age = Duration::from_secs(300);
        let error = check(request(Vec::new(), None), max_age).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::InvalidRequest);
        assert_eq!(error.id.as_deref(), Some("r"));
        let error = check(request(vec!["d".into()], Some(1)), max_age).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::DeadlineExceeded);
        let far = wire::now_ms() + 3_600_000;
        let error = check(request(vec!["d".into()], Some(far)), max_age).unwrap_err();
        assert!(error.error.message.contains("max_age_s"), "{error:?}");
        assert!(check(request(vec![String::new()], None), max_age).is_ok());
    }
}
