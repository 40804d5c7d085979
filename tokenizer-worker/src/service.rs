//! The tokenizer worker's NATS service: takes `EmbedRequest`s from the request subject (queue
//! group, so workers share the load), tokenizes them (small requests on the service loop,
//! larger ones on a bounded pool of blocking threads), packs the sequences of concurrent
//! requests into `TokenBatch`es and sends those on: small ones offered straight to a GPU
//! worker first ([`crate::publish`]), the rest (and those no worker took) to the JetStream
//! work queue. Bad input is answered with an `ErrorReply` at once. A request that set `ack`
//! gets a `QueuedReply` once all its sequences were served directly or confirmed by the work
//! queue.
//!
//! Started with `task = rerank`, the same loop serves `RerankRequest`s from the rerank subject
//! (its own queue group): each (query, document) pair becomes one reranker prompt
//! ([`crate::pairs`]), and the batches go to the rerank stream, pulled only by rerank GPU
//! workers.
//!
//! One task (the loop in [`run`]) owns the batcher and the acknowledgement book; tokenization
//! results and publish confirmations reach it over a channel and a join set, so no lock is
//! held around either.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;
use common::nats::NatsConfig;
use common::outbox::Outbox;
use common::queue::{QueueConfig, batch_stream_for};
use common::subjects::{
    RERANK_TOKENIZER_QUEUE_GROUP, TOKENIZER_QUEUE_GROUP, Task, is_publish_subject,
};
use common::trace::{LOG_TARGET, RequestTrace};
use common::wire::{
    self, BatchItem, EmbedRequest, ErrorCode, ErrorReply, InputType, RerankRequest, WorkerKind,
    WorkerStatus,
};
use common::worker::{register_service, send_error, send_outbox};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::acks::{Acks, DueAck, RequestKey};
use crate::batcher::{Batcher, BatcherConfig, PendingSequence};
use crate::budget::RequestBudget;
use crate::config::TokenizerWorkerConfig;
use crate::deadline;
use crate::pairs;
use crate::publish::{Published, WorkQueue, offer_batch, publish_batch};
use crate::rerank::{RerankOptions, RerankTemplate};
use crate::tokenize::{TextTokenizer, TokenizeError, TokenizerOptions};

/// How long shutdown waits to flush batches and replies to the server.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// How often pending sequences are checked for passed deadlines.
const EXPIRY_SWEEP: Duration = Duration::from_millis(50);

/// Requests with at most this many bytes of text are tokenized on the service loop itself
/// (tens of microseconds): handing them to the pool costs two thread hand-offs, more than
/// the work. Larger requests go to the pool, so one never stalls the loop.
const INLINE_MAX_BYTES: usize = 2048;

/// Limits of the served model that requests are checked against.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct ModelLimits {
    hidden_size: u32,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
}

fn default_max_positions() -> usize {
    32768
}

fn read_model_limits(dir: &Path) -> anyhow::Result<ModelLimits> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} lacks hidden_size", path.display()))
}

/// What turns this worker's requests into sequences: the task's tokenizer and limits.
#[derive(Clone)]
enum Frontend {
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

/// A decoded request that passed the checks, ready for the tokenizer pool.
enum Checked {
    /// An embedding request.
    Embed(EmbedRequest),
    /// A rerank request.
    Rerank(RerankRequest),
}

impl Checked {
    fn id(&self) -> &str {
        match self {
            Self::Embed(request) => &request.id,
            Self::Rerank(request) => &request.id,
        }
    }

    fn truncate(&self) -> Option<bool> {
        match self {
            Self::Embed(request) => request.truncate,
            Self::Rerank(request) => request.truncate,
        }
    }

    /// Whether the requester asked for a `QueuedReply` (rerank requests never do).
    fn ack(&self) -> bool {
        match self {
            Self::Embed(request) => request.ack,
            Self::Rerank(_) => false,
        }
    }

    /// Inputs (texts or documents) of the request.
    fn len(&self) -> u32 {
        match self {
            Self::Embed(request) => request.input.len() as u32,
            Self::Rerank(request) => request.documents.len() as u32,
        }
    }

    /// Bytes of text to tokenize (the query counts once per document for rerank).
    fn text_bytes(&self) -> usize {
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

/// Tokenizes a checked request with the worker's frontend into its sequences.
fn tokenize_request(
    frontend: &Frontend,
    request: Checked,
    reply_to: &str,
    truncate: bool,
    max_tokens: usize,
) -> Result<Vec<PendingSequence>, ErrorReply> {
    match (frontend, request) {
        (Frontend::Embed { tokenizer, .. }, Checked::Embed(request)) => {
            tokenize(tokenizer, request, reply_to, truncate, max_tokens)
        }
        (Frontend::Rerank { template }, Checked::Rerank(request)) => {
            pairs::tokenize(template, request, reply_to, truncate, max_tokens)
        }
        (_, request) => Err(ErrorReply::new(
            Some(request.id().to_string()),
            ErrorCode::Internal,
            "request decoded for another task; this is a bug",
        )),
    }
}

/// A request whose texts were all tokenized, or the error to answer it with.
struct Tokenized {
    reply_to: String,
    id: String,
    /// Whether the requester asked for a `QueuedReply`.
    ack: bool,
    /// Inputs of the request.
    total: u32,
    /// The request's id and trace context from its headers, passed on to the batch items.
    trace: Option<RequestTrace>,
    result: Result<Vec<PendingSequence>, ErrorReply>,
}

/// Runs a tokenizer worker until `shutdown` resolves, then drains: stops taking requests,
/// finishes tokenizing what it took, sends every pending batch, and returns.
pub async fn run(
    config: TokenizerWorkerConfig,
    nats: NatsConfig,
    queue: QueueConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = read_model_limits(&config.model_dir)?;
    anyhow::ensure!(
        config.max_length <= limits.max_position_embeddings,
        "max_length {} exceeds the model's {} positions",
        config.max_length,
        limits.max_position_embeddings
    );
    anyhow::ensure!(
        config.max_batch_tokens >= config.max_length,
        "max_batch_tokens {} must be at least max_length {}",
        config.max_batch_tokens,
        config.max_length
    );
    anyhow::ensure!(
        config.max_request_tokens >= config.max_length,
        "max_request_tokens {} must be at least max_length {}",
        config.max_request_tokens,
        config.max_length
    );
    let task = config.task;
    let tokenizer_file = config.model_dir.join("tokenizer.json");
    let frontend = match task {
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
            Frontend::Embed {
                tokenizer: Arc::new(tokenizer),
                limits,
            }
        }
        Task::Rerank => Frontend::Rerank {
            template: Arc::new(RerankTemplate::from_file(
                &tokenizer_file,
                RerankOptions {
                    default_instruction: config.default_instruction.clone(),
                    max_length: config.max_length,
                },
            )?),
        },
    };
    let max_publishes_in_flight = config.max_publishes_in_flight;
    let direct =
        (config.direct_max_tokens > 0 && config.max_direct_in_flight > 0).then(|| DirectPath {
            max_tokens: config.direct_max_tokens,
            timeout: Duration::from_millis(config.direct_timeout_ms.max(1)),
            max_in_flight: config.max_direct_in_flight,
        });
    let mut batcher = Batcher::new(BatcherConfig {
        max_batch_tokens: config.max_batch_tokens,
        max_batch_seqs: config.max_batch_seqs,
        max_wait: Duration::from_millis(config.max_wait_ms),
    })?;

    let client = nats.connect("tokenizer-worker").await?;
    let subjects = nats.subjects();
    let js = jetstream::new(client.clone());
    batch_stream_for(&js, &subjects, task, &queue).await?;
    let (queue_group, service_name) = match task {
        Task::Embed => (TOKENIZER_QUEUE_GROUP, "qwen3-embed-tokenizer"),
        Task::Rerank => (RERANK_TOKENIZER_QUEUE_GROUP, "qwen3-embed-rerank-tokenizer"),
    };
    let mut requests = client
        .queue_subscribe(subjects.requests_for(task), queue_group.into())
        .await?;
    let mut status_requests = client.subscribe(subjects.status()).await?;
    let _service = register_service(
        &client,
        service_name,
        format!(
            "Qwen3 {} tokenizer for {}",
            task.as_str(),
            config.model_name
        ),
    )
    .await;

    let threads = if config.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        config.threads
    };
    let pool = Arc::new(Semaphore::new(threads));
    let (done_tx, mut done_rx) = mpsc::channel::<Tokenized>(1024);
    let mut state = State {
        client: client.clone(),
        work_queue: WorkQueue {
            js,
            client: client.clone(),
            subjects,
            task,
            queue,
        },
        frontend,
        truncate_default: config.truncate,
        max_pending_tokens: config.max_pending_tokens,
        max_request_tokens: config.max_request_tokens,
        max_publishes_in_flight,
        direct,
        offers: 0,
        status: WorkerStatus {
            worker_id: format!(
                "tokenizer-{}",
                wire::now_ms() ^ u64::from(std::process::id())
            ),
            kind: WorkerKind::tokenizer(task),
            model: config.model_name.clone(),
            loaded: true,
            backend: None,
            device: Some(format!("cpu ({threads} tokenizer threads)")),
            device_memory_used: None,
            device_memory_total: None,
            hidden_size: Some(limits.hidden_size),
            batches: 0,
            sequences: 0,
            tokens: 0,
            in_flight: 0,
            started_ms: wire::now_ms(),
        },
        tokenizing: 0,
        publishes: JoinSet::new(),
        acks: Acks::default(),
    };
    tracing::info!(
        task = task.as_str(),
        model = %config.model_name,
        requests = %state.work_queue.subjects.requests_for(task),
        batches = %state.work_queue.subjects.batches_for(task),
        threads,
        "tokenizer worker ready"
    );

    tokio::pin!(shutdown);
    loop {
        let sweep = Instant::now() + EXPIRY_SWEEP;
        // Holding partial batches, they wait for a confirmation, not for the clock.
        let wake = match batcher.next_flush_at() {
            Some(at) if !state.holds_partial_batches() => at.min(sweep),
            _ => sweep,
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = done_rx.recv() => {
                state.tokenizing -= 1;
                state.accept(done, &mut batcher);
                state.publish_ready(&mut batcher, false);
            }
            Some(published) = state.publishes.join_next(), if !state.publishes.is_empty() => {
                state.settle(published);
                state.publish_ready(&mut batcher, false);
            }
            Some(message) = requests.next() => {
                state.take_request(message, &pool, &done_tx, &mut batcher);
                state.publish_ready(&mut batcher, false);
            }
            Some(message) = status_requests.next() => state.answer_status(message, &batcher).await,
            () = tokio::time::sleep_until(wake.into()) => {
                state.expire(&mut batcher);
                state.publish_ready(&mut batcher, false);
            }
        }
    }

    tracing::info!("tokenizer worker draining");
    // Drain (not unsubscribe): requests the server already routed here are still read and
    // served; new ones go to the other workers of the queue group.
    if let Err(e) = requests.drain().await {
        tracing::warn!(error = %e, "draining the request subscription failed");
    }
    while let Some(message) = requests.next().await {
        state.take_request(message, &pool, &done_tx, &mut batcher);
    }
    while state.tokenizing > 0 {
        let Some(done) = done_rx.recv().await else {
            break;
        };
        state.tokenizing -= 1;
        state.accept(done, &mut batcher);
    }
    state.publish_ready(&mut batcher, true);
    // Every batch confirmed (or its requests answered) and every acknowledgement sent.
    while let Some(published) = state.publishes.join_next().await {
        state.settle(published);
    }
    // Bounded: with the server gone, a flush would wait for a reconnection forever.
    if tokio::time::timeout(SHUTDOWN_FLUSH, client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS unreachable at shutdown; unsent replies are lost");
    }
    tracing::info!("tokenizer worker stopped");
    Ok(())
}

/// Settings of the direct path (`direct_*` in the configuration).
struct DirectPath {
    /// Largest batch offered, in tokens.
    max_tokens: usize,
    /// How long an offer waits for a GPU worker to serve it.
    timeout: Duration,
    /// Offers awaiting their answer at once.
    max_in_flight: usize,
}

/// What the service loop owns besides the batcher.
struct State {
    client: async_nats::Client,
    /// Where batches are published (the task's stream).
    work_queue: WorkQueue,
    /// The task's tokenizer and limits.
    frontend: Frontend,
    truncate_default: bool,
    max_pending_tokens: usize,
    /// Most tokens of one request's inputs together.
    max_request_tokens: usize,
    /// Publishes in flight beyond which partial batches wait (0 = no limit).
    max_publishes_in_flight: usize,
    /// Offering small batches straight to GPU workers; `None` when turned off.
    direct: Option<DirectPath>,
    /// Batches offered directly and not yet settled (they are in `publishes` too).
    offers: usize,
    /// Counters reported on the status subject.
    status: WorkerStatus,
    /// Requests handed to the tokenizer pool and not yet back.
    tokenizing: usize,
    /// Batches being published to the work queue (awaited at shutdown).
    publishes: JoinSet<Published>,
    /// Requests waiting for their acknowledgement.
    acks: Acks,
}

impl State {
    /// Decodes and checks a request, then tokenizes it: a small one here and now (its
    /// sequences go straight to `batcher`), a larger one on the tokenizer pool.
    fn take_request(
        &mut self,
        message: async_nats::Message,
        pool: &Arc<Semaphore>,
        done_tx: &mpsc::Sender<Tokenized>,
        batcher: &mut Batcher,
    ) {
        let Some(reply_to) = message.reply.map(|r| r.to_string()) else {
            tracing::warn!(subject = %message.subject, "request without a reply subject dropped");
            return;
        };
        let trace = RequestTrace::from_headers(message.headers.as_ref());
        let request = match self.check(&message.payload) {
            Ok(request) => request,
            Err(error) => {
                self.refuse(&reply_to, &error, trace.as_ref());
                return;
            }
        };
        if batcher.pending_tokens() > self.max_pending_tokens {
            let error = ErrorReply::new(
                Some(request.id().to_string()),
                ErrorCode::Overloaded,
                "tokenizer worker has too much work queued; retry later",
            );
            self.refuse(&reply_to, &error, trace.as_ref());
            return;
        }
        let truncate = request.truncate().unwrap_or(self.truncate_default);
        let max_tokens = self.max_request_tokens;
        let inline = request.text_bytes() <= INLINE_MAX_BYTES;
        let mut done = Tokenized {
            reply_to,
            id: request.id().to_string(),
            ack: request.ack(),
            total: request.len(),
            trace,
            result: Ok(Vec::new()),
        };
        if inline {
            done.result = tokenize_request(
                &self.frontend,
                request,
                &done.reply_to,
                truncate,
                max_tokens,
            );
            self.accept(done, batcher);
            return;
        }
        self.tokenizing += 1;
        let frontend = self.frontend.clone();
        let (pool, done_tx) = (Arc::clone(pool), done_tx.clone());
        tokio::spawn(async move {
            let _permit = pool.acquire_owned().await;
            let reply = done.reply_to.clone();
            done.result = tokio::task::spawn_blocking(move || {
                tokenize_request(&frontend, request, &reply, truncate, max_tokens)
            })
            .await
            .unwrap_or_else(|e| {
                Err(ErrorReply::new(
                    Some(done.id.clone()),
                    ErrorCode::Internal,
                    format!("tokenizer thread failed: {e}"),
                ))
            });
            let _ = done_tx.send(done).await;
        });
    }

    /// Decodes a request of this worker's task and checks what can be checked without
    /// tokenizing.
    fn check(&self, payload: &Bytes) -> Result<Checked, ErrorReply> {
        let max_age = self.work_queue.queue.max_age();
        match &self.frontend {
            Frontend::Embed { limits, .. } => {
                check_embed(decode(payload)?, limits, max_age).map(Checked::Embed)
            }
            Frontend::Rerank { .. } => pairs::check(decode(payload)?, max_age).map(Checked::Rerank),
        }
    }

    /// Queues a tokenized request's sequences, or answers its error.
    fn accept(&mut self, done: Tokenized, batcher: &mut Batcher) {
        let trace = done.trace.as_ref();
        match done.result {
            Ok(mut sequences) => {
                let now = Instant::now();
                let count = sequences.len();
                tracing::debug!(
                    target: LOG_TARGET,
                    id = %done.id,
                    request_id = trace.map_or("", |t| t.request_id()),
                    trace_id = trace.map_or("", |t| t.trace_id()),
                    sequences = count,
                    tokens = sequences.iter().map(|seq| seq.token_ids.len()).sum::<usize>(),
                    "tokenized"
                );
                if let Some(trace) = trace {
                    let downstream = trace.child();
                    for seq in &mut sequences {
                        seq.item.trace = Some(downstream.clone());
                    }
                }
                for seq in sequences {
                    if let Err(e) = batcher.push(seq, now) {
                        let error = ErrorReply::new(
                            Some(done.id.clone()),
                            ErrorCode::Internal,
                            e.to_string(),
                        );
                        self.refuse(&done.reply_to, &error, trace);
                        return;
                    }
                }
                if done.ack {
                    let key = RequestKey {
                        reply_to: done.reply_to,
                        id: done.id,
                    };
                    self.acks.expect(key, count, done.total);
                }
            }
            Err(error) => self.refuse(&done.reply_to, &error, trace),
        }
    }

    /// Takes note of a finished publish: acknowledges the requests it completed, or forgets
    /// those it failed (they were answered with an error).
    fn settle(&mut self, published: Result<Published, tokio::task::JoinError>) {
        let published = match published {
            Ok(published) => published,
            Err(e) => {
                tracing::error!(error = %e, "batch publish task failed; this is a bug");
                return;
            }
        };
        if published.offered {
            self.offers -= 1;
        }
        if published.queued {
            let mut outbox = Outbox::default();
            for due in self.acks.queued(&published.items) {
                let DueAck {
                    reply_to,
                    bundle_to,
                    reply,
                } = due;
                tracing::debug!(id = %reply.id, inputs = reply.queued, "request acknowledged");
                outbox.push(&reply_to, bundle_to.as_deref(), &reply);
            }
            send_outbox(&self.client, outbox, "acknowledgement");
        } else {
            for item in &published.items {
                self.acks.forget(&RequestKey::of(item));
            }
        }
    }

    /// Answers requests whose deadline passed while their sequences waited.
    fn expire(&mut self, batcher: &mut Batcher) {
        let mut answered = std::collections::HashSet::new();
        for item in batcher.remove_expired(wire::now_ms()) {
            self.acks.forget(&RequestKey::of(&item));
            if answered.insert(item.request_id.clone()) {
                let error = ErrorReply::new(
                    Some(item.request_id),
                    ErrorCode::DeadlineExceeded,
                    "the request's deadline passed while it waited for a batch",
                );
                self.refuse(&item.reply_to, &error, item.trace.as_ref());
            }
        }
    }

    /// Whether as many batches are being published to the work queue as allowed at once.
    fn publishing_at_limit(&self) -> bool {
        self.max_publishes_in_flight != 0
            && self.publishes.len().saturating_sub(self.offers) >= self.max_publishes_in_flight
    }

    /// Whether another batch may be offered directly.
    fn can_offer(&self) -> bool {
        self.direct
            .as_ref()
            .is_some_and(|direct| self.offers < direct.max_in_flight)
    }

    /// Whether partial batches wait (group commit): the work queue is at its publish limit
    /// and no direct offer may go out.
    fn holds_partial_batches(&self) -> bool {
        self.publishing_at_limit() && !self.can_offer()
    }

    /// Sends the ready batches (or, with `all`, every pending one) on: small ones offered
    /// directly while offers are allowed, the rest to the work queue. While partial batches
    /// are held, only full ones go.
    fn publish_ready(&mut self, batcher: &mut Batcher, all: bool) {
        let batches = if all {
            batcher.drain()
        } else if self.holds_partial_batches() {
            batcher.pop_full()
        } else {
            batcher.pop_ready(Instant::now())
        };
        for batch in batches {
            self.status.batches += 1;
            self.status.sequences += batch.items.len() as u64;
            self.status.tokens += batch.num_tokens() as u64;
            let queue = self.work_queue.clone();
            match &self.direct {
                Some(direct) if self.can_offer() && batch.num_tokens() <= direct.max_tokens => {
                    self.offers += 1;
                    self.publishes
                        .spawn(offer_batch(queue, batch, direct.timeout));
                }
                _ => {
                    self.publishes.spawn(publish_batch(queue, batch));
                }
            }
        }
    }

    async fn answer_status(&mut self, message: async_nats::Message, batcher: &Batcher) {
        let Some(reply) = message.reply else { return };
        self.status.in_flight = (batcher.pending_seqs() + self.tokenizing) as u64;
        match wire::encode(&self.status) {
            Ok(bytes) => {
                if let Err(e) = self.client.publish(reply, bytes.into()).await {
                    tracing::warn!(error = %e, "status answer not sent");
                }
            }
            Err(e) => tracing::error!(error = %e, "status does not encode; this is a bug"),
        }
    }

    /// Answers a request with `error`, logging it on the per-request target.
    fn refuse(&self, reply_to: &str, error: &ErrorReply, trace: Option<&RequestTrace>) {
        tracing::debug!(
            target: LOG_TARGET,
            id = error.id.as_deref().unwrap_or(""),
            request_id = trace.map_or("", |t| t.request_id()),
            trace_id = trace.map_or("", |t| t.trace_id()),
            code = ?error.error.code,
            "refused"
        );
        send_error(&self.client, reply_to, error);
    }
}

/// Decodes a request, answering a malformed one with its id when that much can be read.
fn decode<T: serde::de::DeserializeOwned>(payload: &Bytes) -> Result<T, ErrorReply> {
    wire::decode(payload).map_err(|e| {
        let id = wire::decode::<IdOnly>(payload).ok().map(|only| only.id);
        ErrorReply::new(
            id,
            ErrorCode::InvalidRequest,
            format!("malformed request: {e}"),
        )
    })
}

/// Checks what can be checked of an embedding request without tokenizing; its deadline
/// against `max_age`, how long the work queue keeps a batch.
fn check_embed(
    request: EmbedRequest,
    limits: &ModelLimits,
    max_age: Duration,
) -> Result<EmbedRequest, ErrorReply> {
    let fail = |message: String| {
        Err(ErrorReply::new(
            Some(request.id.clone()),
            ErrorCode::InvalidRequest,
            message,
        ))
    };
    if request.input.is_empty() {
        return fail("`input` must hold at least one text".into());
    }
    if request.input.len() > u32::MAX as usize {
        return fail("`input` holds too many texts".into());
    }
    if let Some(dims) = request.dimensions
        && !(1..=limits.hidden_size).contains(&dims)
    {
        return fail(format!(
            "`dimensions` must be between 1 and {} for this model, got {dims}",
            limits.hidden_size
        ));
    }
    if let Some(subject) = &request.bundle_to
        && !is_publish_subject(subject)
    {
        return fail(format!(
            "`bundle_to` must be a subject to publish on (dot-separated tokens, no wildcards \
             or spaces), got {subject:?}"
        ));
    }
    deadline::check(&request.id, request.deadline_ms, wire::now_ms(), max_age)?;
    Ok(request)
}

/// Just the id of a request that failed to decode as a whole.
#[derive(serde::Deserialize)]
struct IdOnly {
    id: String,
}

/// Tokenizes every text of a request (on a blocking thread). The first text that fails
/// fails the whole request, naming its index; so does the first text that takes the
/// request's total past `max_tokens` (the rest are not tokenized).
fn tokenize(
    tokenizer: &TextTokenizer,
    request: EmbedRequest,
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
    request
        .input
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let ids = tokenizer
                .encode(text, request.input_type, instruction, truncate)
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
                deadline_ms: request.deadline_ms.unwrap_or(0),
                trace: None,
                bundle_to: request.bundle_to.clone(),
            };
            PendingSequence::new(item, ids).map_err(|e| {
                ErrorReply::new(Some(request.id.clone()), ErrorCode::Internal, e.to_string())
            })
        })
        .collect()
}
#[cfg(test)]
mod tests {
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
            ack: false,
            bundle_to: None,
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
                    .encode(t, InputType::Document, None, false)
                    .unwrap()
                    .len()
            })
            .collect();
        let total: usize = lengths.iter().sum();

        let at_limit = tokenize(&tokenizer, request(&texts), "inbox", false, total)
            .expect("a request of exactly the limit passes");
        assert_eq!(at_limit.len(), texts.len());

        let error = tokenize(&tokenizer, request(&texts), "inbox", false, total - 1)
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
        let error = tokenize(&tokenizer, request(&texts), "inbox", false, lengths[0] - 1)
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
