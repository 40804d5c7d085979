//! One embedding request from validation to vectors: limits, admission, cache, upstream.
//! Every embedding route turns its body into an [`EmbedJob`] for the model the request named
//! (picked by [`crate::models`]) and calls [`EmbedService::embed`]. Both rerank APIs (Cohere/Jina and TEI) turn theirs into a
//! [`RerankJob`] and call [`EmbedService::rerank`]: the same limits, admission and deadline,
//! no cache. A request's deadline runs from its [`Arrival`], so the time it waits in the
//! admission queue counts against it. The deadline is kept on the monotonic clock; the
//! workers get what is left of it (`timeout_ms`, set by the upstream at each publication),
//! and the absolute time only for logs and for workers that predate `timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use common::trace::RequestTrace;
use common::wire::tokenize::{TokenizerAnswer, TokenizerCall};
use common::wire::{self, EmbedRequest, InputType, Priority, RerankRequest, TruncationDirection};
use tokio::time::Instant;

use crate::admission::{Admission, Admitted, Refused};
use crate::cache::{CacheKey, VectorCache};
use crate::config::GatewayConfig;
use crate::http::error::ApiError;
use crate::http::types::Limits;
use crate::metrics::Metrics;
use crate::models::ServedModel;
use crate::upstream::assembly::{Embedded, Scored};
use crate::upstream::{Upstream, UpstreamError};

/// When a request arrived at the gateway; its deadline runs from here.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// On the monotonic clock, for the gateway's own waits.
    pub at: Instant,
    /// Unix time in milliseconds, for the absolute `deadline_ms` sent along (logs, older
    /// workers).
    pub unix_ms: u64,
}

impl Arrival {
    /// Now.
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            unix_ms: wire::now_ms(),
        }
    }
}

/// What to embed, as every embedding API describes it.
#[derive(Debug, Clone)]
pub struct EmbedJob {
    /// The model that embeds it (its route, its vector width).
    pub model: Arc<ServedModel>,
    /// The texts, in answer order (empty and whitespace-only texts are valid).
    pub texts: Vec<String>,
    /// Query (instruction applied) or document.
    pub input_type: InputType,
    /// Task description for queries; the worker's default when `None`.
    pub instruction: Option<String>,
    /// Requested output size.
    pub dimensions: Option<u32>,
    /// Truncate over-long inputs; the worker's default when `None`.
    pub truncate: Option<bool>,
    /// Which end truncation keeps; the start when `None`.
    pub truncation_direction: Option<TruncationDirection>,
    /// L2-normalize the vectors; normalized when `None`.
    pub normalize: Option<bool>,
    /// The traffic class; the tokenizer worker's size rule when `None`.
    pub priority: Option<Priority>,
    /// The request id and trace context passed to the workers.
    pub trace: RequestTrace,
    /// When the request arrived (its deadline runs from here).
    pub arrival: Arrival,
}

/// What to rerank, as every rerank API describes it.
#[derive(Debug, Clone)]
pub struct RerankJob {
    /// The reranker that scores it.
    pub model: Arc<ServedModel>,
    /// The query every document is judged against (may be empty).
    pub query: String,
    /// The documents, in answer order (empty texts are valid).
    pub documents: Vec<String>,
    /// Name of the documents field in the API (`documents`, `texts`), for error messages.
    pub documents_field: &'static str,
    /// Task description in the prompt; the worker's default when `None`.
    pub instruction: Option<String>,
    /// Shorten over-long documents; the worker's default when `None`.
    pub truncate: Option<bool>,
    /// The request id and trace context passed to the workers.
    pub trace: RequestTrace,
    /// When the request arrived (its deadline runs from here).
    pub arrival: Arrival,
}

/// Turns jobs into vectors; one per gateway, shared by handlers.
pub struct EmbedService {
    /// Request limits from the configuration.
    limits: Limits,
    /// End-to-end deadline of a request.
    timeout: Duration,
    /// In-flight limit and the queue of requests waiting for a place.
    pub admission: Admission,
    /// Finished vectors.
    pub cache: VectorCache,
    /// The workers' request subjects.
    pub upstream: Upstream,
    /// Where counts go.
    metrics: Metrics,
}

impl EmbedService {
    /// A service with `config`'s limits over `upstream`.
    pub fn new(config: &GatewayConfig, upstream: Upstream, metrics: Metrics) -> Self {
        Self {
            limits: Limits::from_config(config),
            timeout: config.request_timeout(),
            admission: Admission::new(config.max_concurrent_queries, config.queue_limit()),
            cache: VectorCache::new(config.cache_size),
            upstream,
            metrics,
        }
    }

    /// Validates `job`, admits it, answers what the cache holds and asks its model's
    /// workers for the rest; the vectors come back in input order.
    pub async fn embed(&self, job: EmbedJob) -> Result<Vec<Arc<Embedded>>, ApiError> {
        self.check(&job)?;
        let (deadline, deadline_ms) = self.deadline(job.arrival);
        let _admitted = self.admit(deadline, &job.model.name).await?;

        let total = job.texts.len();
        let mut answers: Vec<Option<Arc<Embedded>>> = vec![None; total];
        // Inputs the cache could not answer: their position and cache key.
        let mut misses: Vec<(usize, Option<CacheKey>)> = Vec::new();
        let mut miss_texts: Vec<String> = Vec::new();
        let route = job.model.route.as_deref();
        for (index, text) in job.texts.into_iter().enumerate() {
            let key = self.cache.is_enabled().then(|| CacheKey {
                route: job.model.route.clone(),
                text: text.clone(),
                input_type: job.input_type,
                instruction: job.instruction.clone(),
                dimensions: job.dimensions,
                truncate: job.truncate,
                truncation_direction: job.truncation_direction,
                normalize: job.normalize,
            });
            if let Some(hit) = key.as_ref().and_then(|key| self.cache.get(key)) {
                answers[index] = Some(hit);
                continue;
            }
            misses.push((index, key));
            miss_texts.push(text);
        }
        if self.cache.is_enabled() {
            let misses = misses.len() as u64;
            self.metrics.cache_lookups(total as u64 - misses, misses);
        }

        if !miss_texts.is_empty() {
            let request = EmbedRequest {
                id: String::new(),
                input: miss_texts,
                input_type: job.input_type,
                instruction: job.instruction,
                dimensions: job.dimensions,
                truncate: job.truncate,
                deadline_ms: Some(deadline_ms),
                // Set by the upstream at each publication: what is left of `deadline` then.
                timeout_ms: None,
                // Set by the upstream from its configuration.
                ack: false,
                bundle_to: None,
                truncation_direction: job.truncation_direction,
                normalize: job.normalize,
                priority: job.priority,
            };
            let fresh = self
                .upstream
                .embed(request, route, deadline, &job.trace)
                .await
                .map_err(|e| self.upstream_error(e))?;
            let tokens: u64 = fresh.iter().map(|item| u64::from(item.tokens)).sum();
            self.metrics.embedded(fresh.len() as u64, tokens);
            for ((index, key), item) in misses.into_iter().zip(fresh) {
                let item = Arc::new(item);
                if let Some(key) = key {
                    self.cache.insert(key, item.clone());
                }
                answers[index] = Some(item);
            }
        }
        Ok(answers
            .into_iter()
            .map(|answer| {
                answer.expect("every input is a cache hit or in the complete answer; this is a bug")
            })
            .collect())
    }

    /// Validates `job`, admits it and asks its reranker's workers for one score per
    /// document, in document order.
    pub async fn rerank(&self, job: RerankJob) -> Result<Vec<Scored>, ApiError> {
        self.check_rerank(&job)?;
        let (deadline, deadline_ms) = self.deadline(job.arrival);
        let _admitted = self.admit(deadline, &job.model.name).await?;
        let request = RerankRequest {
            id: String::new(),
            query: job.query,
            documents: job.documents,
            instruction: job.instruction,
            truncate: job.truncate,
            deadline_ms: Some(deadline_ms),
            // Set by the upstream at each publication: what is left of `deadline` then.
            timeout_ms: None,
            ack: false,
            ..Default::default()
        };
        let scored = self
            .upstream
            .rerank(request, job.model.route.as_deref(), deadline, &job.trace)
            .await
            .map_err(|e| match e {
                UpstreamError::NoResponders => {
                    self.metrics.upstream_error("no_responders");
                    ApiError::NoRerankWorkers
                }
                other => self.upstream_error(other),
            })?;
        let tokens: u64 = scored.iter().map(|s| u64::from(s.tokens)).sum();
        self.metrics.reranked(scored.len() as u64, tokens);
        Ok(scored)
    }

    /// Admits a tokenize or decode call (it arrived at `arrival`) and asks a tokenizer worker
    /// of `model` for its answer; the texts were checked against the limits by the caller.
    pub async fn tokenizer_call(
        &self,
        call: &TokenizerCall,
        model: &ServedModel,
        arrival: Arrival,
    ) -> Result<TokenizerAnswer, ApiError> {
        let (deadline, _) = self.deadline(arrival);
        let _admitted = self.admit(deadline, &model.name).await?;
        self.upstream
            .tokenizer_call(call, model.route.as_deref(), deadline)
            .await
            .map_err(|e| self.upstream_error(e))
    }

    /// The deadline of a request that arrived at `arrival`: on the monotonic clock, and as
    /// Unix milliseconds for logs and older workers.
    fn deadline(&self, arrival: Arrival) -> (Instant, u64) {
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        (
            arrival.at + self.timeout,
            arrival.unix_ms.saturating_add(timeout_ms),
        )
    }

    /// A place under the in-flight limit for a request of `model`, after waiting in the
    /// queue if need be (the wait is recorded); refused (and counted) when the queue is full
    /// or `deadline` passes while waiting.
    async fn admit(&self, deadline: Instant, model: &str) -> Result<Admitted, ApiError> {
        let admitted = self.admission.admit(deadline).await.map_err(|refused| {
            tracing::debug!("not admitted: {refused}");
            match refused {
                Refused::QueueFull {
                    limit,
                    queue_limit,
                    retry_after_s,
                } => {
                    self.metrics.rejected("overloaded");
                    ApiError::Overloaded {
                        limit,
                        queue_limit,
                        retry_after_s,
                    }
                }
                Refused::DeadlinePassed { .. } => {
                    self.metrics.rejected("queue_timeout");
                    ApiError::Timeout(self.timeout.as_secs_f64())
                }
            }
        })?;
        self.metrics.admission_wait(model, admitted.waited());
        Ok(admitted)
    }

    /// Limits of a rerank request: document count, query and document length.
    fn check_rerank(&self, job: &RerankJob) -> Result<(), ApiError> {
        let field = job.documents_field;
        if job.documents.is_empty() {
            return Err(ApiError::field(
                field,
                format!("{field} must hold at least one document"),
            ));
        }
        // Bodies are decoded within the count limit already (`http::types`); checked again
        // here, with the same refusals, for every way a job is made, with the length limit.
        self.limits
            .check_count(field, "documents", job.documents.len())?;
        self.limits.check_text(|| "query".into(), &job.query)?;
        for (index, text) in job.documents.iter().enumerate() {
            self.limits
                .check_text(|| format!("{field}[{index}]"), text)?;
        }
        Ok(())
    }

    /// Limits that do not need a worker: input count, text length, `dimensions` (at most the
    /// width its model's GPU workers report).
    fn check(&self, job: &EmbedJob) -> Result<(), ApiError> {
        if job.texts.is_empty() {
            return Err(ApiError::field("input", "input must not be empty"));
        }
        // Bodies are decoded within the count limit already (`http::types`); checked again
        // here, with the same refusals, for every way a job is made, with the length limit.
        self.limits.check_count("input", "texts", job.texts.len())?;
        // A text that truncation will cut is never refused for its length: the worker reads
        // at most `max_length` tokens of it (bodies bound its size).
        if job.truncate != Some(true) {
            for (index, text) in job.texts.iter().enumerate() {
                self.limits
                    .check_untruncated_text(|| format!("input[{index}]"), text)?;
            }
        }
        if let (Some(dimensions), Some(hidden)) = (job.dimensions, job.model.hidden_size)
            && dimensions > hidden
        {
            return Err(ApiError::field(
                "dimensions",
                format!(
                    "dimensions is {dimensions}; the largest is {hidden} for model `{}`",
                    job.model.name
                ),
            ));
        }
        Ok(())
    }

    /// Maps an upstream failure to the client's error, counting it.
    fn upstream_error(&self, error: UpstreamError) -> ApiError {
        let (code, api) = match error {
            UpstreamError::NoResponders => ("no_responders", ApiError::NoWorkers),
            UpstreamError::NotConnected(state) => {
                ("not_connected", ApiError::BusUnavailable(state))
            }
            UpstreamError::Publish(problem) => ("publish", ApiError::BusUnavailable(problem)),
            UpstreamError::Closed => (
                "closed",
                ApiError::BusUnavailable("reply subscription closed".into()),
            ),
            UpstreamError::PayloadTooLarge { size, limit } => (
                "payload_too_large",
                ApiError::BusPayloadTooLarge { size, limit },
            ),
            UpstreamError::Timeout => ("timeout", ApiError::Timeout(self.timeout.as_secs_f64())),
            UpstreamError::BadReply(problem) => ("bad_reply", ApiError::BadReply(problem)),
            UpstreamError::Worker(reply) => {
                let code = match reply.error.code {
                    wire::ErrorCode::InvalidRequest => "invalid_request",
                    wire::ErrorCode::TooManyTokens => "too_many_tokens",
                    wire::ErrorCode::DeadlineExceeded => "deadline_exceeded",
                    wire::ErrorCode::Overloaded => "overloaded",
                    wire::ErrorCode::Internal => "internal",
                };
                (code, ApiError::Upstream(reply))
            }
        };
        self.metrics.upstream_error(code);
        api
    }
}
