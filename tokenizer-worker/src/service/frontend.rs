//! What turns this worker's requests into sequences: the task's tokenizer ([`Frontend`]),
//! the decoded and checked request of either task ([`Checked`]), and the tokenization of an
//! embedding request into one sequence per input.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::subjects::Task;
use common::wire::{BatchItem, EmbedRequest, ErrorCode, ErrorReply, InputType, RerankRequest};

use super::intake::{ModelLimits, check_embed, check_lengths, decode};
use crate::batcher::PendingSequence;
use crate::budget::RequestBudget;
use crate::config::TokenizerWorkerConfig;
use crate::deadline::{Deadline, Receipt};
use crate::pairs;
use crate::rerank::{RerankOptions, RerankTemplate};
use crate::routing::Route;
use crate::tokenize::{TextTokenizer, TokenizeError, TokenizerOptions};

/// The task's tokenizer and limits.
#[derive(Clone)]
pub(super) enum Frontend {
    /// Embedding requests, the Qwen3-Embedding template.
    Embed {
        /// The embedding tokenizer.
        tokenizer: Arc<TextTokenizer>,
        /// Bounds `dimensions`.
        limits: ModelLimits,
    },
    /// Rerank requests, the Qwen3-Reranker prompt.
    Rerank {
        /// The reranker prompt builder.
        template: Arc<RerankTemplate>,
    },
}

impl Frontend {
    /// Loads the tokenizer of `config.task` from the model directory.
    pub(super) fn load(
        config: &TokenizerWorkerConfig,
        limits: ModelLimits,
    ) -> anyhow::Result<Self> {
        let tokenizer_file = config.model_dir.join("tokenizer.json");
        Ok(match config.task {
            Task::Embed => {
                let tokenizer = TextTokenizer::from_file(
                    &tokenizer_file,
                    TokenizerOptions {
                        default_instruction: config.default_instruction.clone(),
                        max_length: config.max_length,
                    },
                )?;
                if !tokenizer.reuses_default_query_head() {
                    tracing::info!(
                        "this tokenizer changes a query's ids when the default instruction is \
                         tokenized apart; it is tokenized again with every query"
                    );
                }
                Self::Embed {
                    tokenizer: Arc::new(tokenizer),
                    limits,
                }
            }
            Task::Rerank => Self::Rerank {
                template: Arc::new(RerankTemplate::from_file(
                    &tokenizer_file,
                    RerankOptions {
                        default_instruction: config.default_instruction.clone(),
                        max_length: config.max_length,
                    },
                )?),
            },
        })
    }

    /// Decodes a request of this worker's task, which arrived at `received` on a subject
    /// whose reply rule is `route`, and checks what can be checked without tokenizing: the
    /// caps on its fields, its `bundle_to`, its deadline against `max_age` (how long the work
    /// queue keeps a batch). Returns it with its deadline on this worker's clock.
    pub(super) fn check(
        &self,
        payload: &Bytes,
        route: &Route,
        received: Receipt,
        max_age: Duration,
    ) -> Result<(Checked, Deadline), ErrorReply> {
        Ok(match self {
            Self::Embed { limits, .. } => {
                let request: EmbedRequest = decode(payload)?;
                check_lengths(&request.id, request.instruction.as_deref())?;
                let (request, deadline) = check_embed(request, route, limits, received, max_age)?;
                (Checked::Embed(request), deadline)
            }
            Self::Rerank { .. } => {
                let request: RerankRequest = decode(payload)?;
                check_lengths(&request.id, request.instruction.as_deref())?;
                let (request, deadline) = pairs::check(request, received, max_age)?;
                (Checked::Rerank(request), deadline)
            }
        })
    }

    /// The embedding tokenizer, which also serves tokenize calls; `None` for rerank.
    pub(super) fn text_tokenizer(&self) -> Option<Arc<TextTokenizer>> {
        match self {
            Self::Embed { tokenizer, .. } => Some(Arc::clone(tokenizer)),
            Self::Rerank { .. } => None,
        }
    }

    /// Tokenizes a checked request due by `deadline` into its sequences, whose replies go to
    /// `reply_to`.
    pub(super) fn tokenize(
        &self,
        request: Checked,
        deadline: Deadline,
        reply_to: &str,
        truncate: bool,
        max_tokens: usize,
    ) -> Result<Vec<PendingSequence>, ErrorReply> {
        match (self, request) {
            (Self::Embed { tokenizer, .. }, Checked::Embed(request)) => {
                tokenize_embed(tokenizer, request, deadline, reply_to, truncate, max_tokens)
            }
            (Self::Rerank { template }, Checked::Rerank(request)) => {
                pairs::tokenize(template, request, deadline, reply_to, truncate, max_tokens)
            }
            (_, request) => Err(ErrorReply::new(
                Some(request.id().to_string()),
                ErrorCode::Internal,
                "request decoded for another task; this is a bug",
            )),
        }
    }
}

/// A decoded request that passed the checks, ready for the tokenizer pool.
pub(super) enum Checked {
    /// An embedding request.
    Embed(EmbedRequest),
    /// A rerank request.
    Rerank(RerankRequest),
}

impl Checked {
    /// The requester's id.
    pub(super) fn id(&self) -> &str {
        match self {
            Self::Embed(request) => &request.id,
            Self::Rerank(request) => &request.id,
        }
    }

    /// The request's truncation choice; the worker's setting applies when `None`.
    pub(super) fn truncate(&self) -> Option<bool> {
        match self {
            Self::Embed(request) => request.truncate,
            Self::Rerank(request) => request.truncate,
        }
    }

    /// Whether the requester asked for a `QueuedReply`.
    pub(super) fn ack(&self) -> bool {
        match self {
            Self::Embed(request) => request.ack,
            Self::Rerank(request) => request.ack,
        }
    }

    /// Inputs (texts or documents) of the request: the `queued` of its acknowledgement.
    pub(super) fn len(&self) -> u32 {
        match self {
            Self::Embed(request) => request.input.len() as u32,
            Self::Rerank(request) => request.documents.len() as u32,
        }
    }

    /// Bytes of text to tokenize (the query counts once per document for rerank).
    pub(super) fn text_bytes(&self) -> usize {
        match self {
            Self::Embed(request) => request.input.iter().map(String::len).sum(),
            Self::Rerank(request) => request
                .documents
                .iter()
                .map(|document| document.len() + request.query.len())
                .sum(),
        }
    }
}

/// Tokenizes every text of an embedding request due by `deadline` (on a blocking thread),
/// cutting over-long texts at the request's `truncation_direction` when `truncate`.
/// The first text that fails fails the whole request, naming its index; so does the first
/// text that takes the request's total past `max_tokens` (the rest are not tokenized).
fn tokenize_embed(
    tokenizer: &TextTokenizer,
    request: EmbedRequest,
    deadline: Deadline,
    reply_to: &str,
    truncate: bool,
    max_tokens: usize,
) -> Result<Vec<PendingSequence>, ErrorReply> {
    let mut budget = RequestBudget::new(max_tokens, "input");
    let instruction = match request.input_type {
        InputType::Query => request.instruction.as_deref(),
        InputType::Document => None,
    };
    let total = request.input.len() as u32;
    let direction = truncate.then(|| request.truncation_direction.unwrap_or_default());
    request
        .input
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let ids = tokenizer
                .encode(text, request.input_type, instruction, direction)
                .map_err(|e| {
                    let code = match e {
                        TokenizeError::TooLong { .. } => ErrorCode::TooManyTokens,
                        _ => ErrorCode::InvalidRequest,
                    };
                    ErrorReply::new(
                        Some(request.id.clone()),
                        code,
                        format!("input {index}: {e}"),
                    )
                })?;
            budget.take(&request.id, index, ids.len())?;
            let item = BatchItem {
                request_id: request.id.clone(),
                reply_to: reply_to.to_string(),
                index: index as u32,
                total,
                len: ids.len() as u32,
                dims: request.dimensions.unwrap_or(0),
                unnormalized: request.normalize == Some(false),
                deadline_ms: deadline.unix_ms,
                trace: None,
                bundle_to: request.bundle_to.clone(),
                // Set as the batch is sent, from `deadline.at`.
                budget_ms: 0,
                // Set once the request is tokenized, and stamped again as the batch is sent.
                timings: None,
            };
            PendingSequence::new(item, ids, deadline.at).map_err(|e| {
                ErrorReply::new(Some(request.id.clone()), ErrorCode::Internal, e.to_string())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixture_tokenizer() -> TextTokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/qwen3-tiny/tokenizer.json");
        TextTokenizer::from_file(&path, TokenizerOptions::default()).expect("fixture tokenizer")
    }

    fn request(texts: &[&str]) -> EmbedRequest {
        EmbedRequest {
            id: "r".into(),
            input: texts.iter().map(|t| t.to_string()).collect(),
            input_type: InputType::Document,
            instruction: None,
            dimensions: None,
            truncate: None,
            deadline_ms: None,
            timeout_ms: None,
            ack: false,
            bundle_to: None,
            ..Default::default()
        }
    }

    #[test]
    fn request_token_total_is_limited() {
        let tokenizer = fixture_tokenizer();
        let texts = ["one two three", "four five six seven", "eight"];
        let lengths: Vec<usize> = texts
            .iter()
            .map(|t| {
                tokenizer
                    .encode(t, InputType::Document, None, None)
                    .unwrap()
                    .len()
            })
            .collect();
        let total: usize = lengths.iter().sum();

        let at_limit = tokenize_embed(
            &tokenizer,
            request(&texts),
            Deadline::default(),
            "inbox",
            false,
            total,
        )
        .expect("a request of exactly the limit passes");
        assert_eq!(at_limit.len(), texts.len());

        let error = tokenize_embed(
            &tokenizer,
            request(&texts),
            Deadline::default(),
            "inbox",
            false,
            total - 1,
        )
        .expect_err("one token over the limit fails");
        assert_eq!(error.error.code, ErrorCode::TooManyTokens);
        assert_eq!(error.id.as_deref(), Some("r"));
        let message = &error.error.message;
        assert!(
            message.contains(&format!("{} tokens per request", total - 1))
                && message.contains(&format!("inputs 0 to 2 hold {total}")),
            "{message}"
        );

        // The first input alone over the limit is named as such.
        let error = tokenize_embed(
            &tokenizer,
            request(&texts),
            Deadline::default(),
            "inbox",
            false,
            lengths[0] - 1,
        )
        .expect_err("first input over the limit fails");
        assert!(
            error
                .error
                .message
                .contains(&format!("(input 0 holds {})", lengths[0])),
            "{}",
            error.error.message
        );
    }
}
