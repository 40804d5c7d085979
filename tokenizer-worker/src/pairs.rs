//! Rerank requests: what is checked before tokenizing, and the turning of a
//! [`RerankRequest`] into one [`PendingSequence`] per document, each the reranker prompt of
//! the (query, document) pair ([`RerankTemplate`]).

use std::time::Duration;

use common::wire::{BatchItem, ErrorCode, ErrorReply, RerankRequest};

use crate::batcher::PendingSequence;
use crate::budget::RequestBudget;
use crate::deadline::{self, Deadline, Receipt};
use crate::rerank::{RerankTemplate, RerankTemplateError};

/// Checks a decoded rerank request that arrived at `received`: at least one document, a
/// count that fits the wire, a deadline not yet passed and within `max_age` (how long the work
/// queue keeps a batch). Returns the request with its deadline on this worker's clock.
pub fn check(
    request: RerankRequest,
    received: Receipt,
    max_age: Duration,
) -> Result<(RerankRequest, Deadline), ErrorReply> {
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
    let deadline = deadline::check(
        &request.id,
        request.timeout_ms,
        request.deadline_ms,
        received,
        max_age,
    )?;
    Ok((request, deadline))
}

/// Formats and tokenizes every (query, document) pair of a request due by `deadline` (on a
/// blocking thread). The first pair that fails fails the whole request, naming the
/// document's index; so does the first that takes the request's total past `max_tokens`.
pub fn tokenize(
    template: &RerankTemplate,
    request: RerankRequest,
    deadline: Deadline,
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
                deadline_ms: deadline.unix_ms,
                trace: None,
                bundle_to: None,
                // Set as the batch is sent, from `deadline.at`.
                budget_ms: 0,
                ..Default::default()
            };
            PendingSequence::new(item, encoding.ids, deadline.at).map_err(|e| {
                ErrorReply::new(Some(request.id.clone()), ErrorCode::Internal, e.to_string())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use common::wire;

    use super::*;

    fn request(documents: Vec<String>, deadline_ms: Option<u64>) -> RerankRequest {
        RerankRequest {
            id: "r".into(),
            query: "q".into(),
            documents,
            instruction: None,
            truncate: None,
            deadline_ms,
            timeout_ms: None,
            ack: false,
            ..Default::default()
        }
    }

    #[test]
    fn empty_documents_and_passed_deadlines_are_refused() {
        let max_age = Duration::from_secs(300);
        let now = Receipt::now();
        let error = check(request(Vec::new(), None), now, max_age).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::InvalidRequest);
        assert_eq!(error.id.as_deref(), Some("r"));
        let error = check(request(vec!["d".into()], Some(1)), now, max_age).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::DeadlineExceeded);
        let far = wire::now_ms() + 3_600_000;
        let error = check(request(vec!["d".into()], Some(far)), now, max_age).unwrap_err();
        assert!(error.error.message.contains("max_age_s"), "{error:?}");
        assert!(check(request(vec![String::new()], None), now, max_age).is_ok());
    }

    #[test]
    fn the_timeout_counts_from_arrival_and_rules_over_the_absolute_deadline() {
        let max_age = Duration::from_secs(300);
        let received = Receipt {
            at: Instant::now(),
            unix_ms: 1_000,
        };
        // An absolute deadline long passed on this clock: the timeout rules.
        let timed = RerankRequest {
            timeout_ms: Some(2_000),
            ..request(vec!["d".into()], Some(500))
        };
        let (_, deadline) = check(timed.clone(), received, max_age).expect("within budget");
        assert_eq!(deadline.at, Some(received.at + Duration::from_secs(2)));
        assert_eq!(deadline.unix_ms, 500, "the request's own time, for logs");
        let used_up = RerankRequest {
            timeout_ms: Some(0),
            ..timed
        };
        let error = check(used_up, received, max_age).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::DeadlineExceeded);
    }
}
