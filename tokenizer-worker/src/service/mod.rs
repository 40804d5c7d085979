//! The tokenizer worker's NATS service: takes `EmbedRequest`s from the request subject and
//! from `{requests}.from.*` (queue group, so workers share the load; each request's replies
//! held to where its subject allows, [`crate::routing`]), tokenizes them (small requests on
//! the service loop, larger ones on a bounded pool of blocking threads), packs the sequences
//! of concurrent requests into `TokenBatch`es and sends those on: small ones offered straight
//! to a GPU worker first ([`crate::publish`]), the rest (and those no worker took) to the JetStream
//! work queue. Bad input is answered with an `ErrorReply` at once. A request that set `ack`
//! gets a `QueuedReply` once all its sequences were served directly or confirmed by the work
//! queue.
//!
//! Started with `task = rerank`, the same loop serves `RerankRequest`s from the rerank subject
//! (its own queue group): each (query, document) pair becomes one reranker prompt
//! ([`crate::pairs`]), and the batches go to the rerank stream, pulled only by rerank GPU
//! workers. Rerank requests are acknowledged the same way.
//!
//! Batches are cut by their encoded size too, so none outgrows the server's `max_payload`
//! ([`crate::publish::batch_bytes_limit`]); a worker whose `max_length` could make a single
//! sequence's batch too large for the server refuses to start.
//!
//! One task (the loop in [`run`]) owns the batcher and the acknowledgement book; tokenization
//! results and publish confirmations reach it over a channel and a join set, so no lock is
//! held around either.
//!
//! # Layout
//!
//! * this file: [`run`], its set-up, the loop and the drain at shutdown;
//! * `intake`: decoding, the model's limits, the checks of an embedding request;
//! * `frontend`: the task's tokenizer and the checked request of either task;
//! * `state`: what the loop owns; taking, queueing, refusing and expiring requests;
//! * `dispatch`: sending batches on and settling what their publishes did;
//! * `status`: the answer on the status subject.
//! * `stages`: what the per-stage telemetry gets of each request (its items' timings, its
//!   `tokenize` span).
//! * `calls`: tokenize and decode calls on the tokenize subject (embedding workers only),
//!   served beside the loop on the same pool of blocking threads.

mod calls;
mod dispatch;
mod frontend;
mod intake;
mod stages;
mod state;
mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::nats::NatsConfig;
use common::queue::{QueueConfig, SETUP_PATIENCE, batch_stream_for, lane_stream_for, until_ready};
use common::subjects::{RERANK_TOKENIZER_QUEUE_GROUP, TOKENIZER_QUEUE_GROUP, Task};
use common::wire::Priority;
use common::wire::size::{BATCH_OVERHEAD, MAX_ITEM_BYTES, TOKEN_BYTES};
use futures::StreamExt;
use futures::stream::SelectAll;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use self::frontend::Frontend;
use self::intake::read_model_limits;
use self::state::{DirectPath, State, Tokenized};
use self::status::initial_status;
use crate::acks::Acks;
use crate::batcher::BatcherConfig;
use crate::config::TokenizerWorkerConfig;
use crate::lane::{LaneRule, Lanes};
use crate::publish::{BatchIds, HEADER_ROOM, WorkQueue, batch_bytes_limit};
use crate::routing::{DroppedRequests, ReplyRules};
use common::worker::{flush_at_shutdown, register_service};

/// How often pending sequences are checked for passed deadlines.
const EXPIRY_SWEEP: Duration = Duration::from_millis(50);

/// Runs a tokenizer worker until `shutdown` resolves, then drains: stops taking requests,
/// finishes tokenizing what it took, sends every pending batch, and returns.
pub async fn run(
    config: TokenizerWorkerConfig,
    nats: NatsConfig,
    queue: QueueConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = read_model_limits(&config.model_dir)?;
    let mut config = config;
    config.max_length = limits.max_length(config.max_length)?;
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
    let subjects = nats.worker_subjects(&config.model_name);
    let rules = ReplyRules::new(subjects.clone(), task, &config.reply_prefixes)?;
    let frontend = Frontend::load(&config, limits)?;
    let direct =
        (config.direct_max_tokens > 0 && config.max_direct_in_flight > 0).then(|| DirectPath {
            max_tokens: config.direct_max_tokens,
            timeout: Duration::from_millis(config.direct_timeout_ms.max(1)),
            max_in_flight: config.max_direct_in_flight,
        });

    let client = nats.connect("tokenizer-worker").await?;
    let js = jetstream::new(client.clone());
    // Once it answered, the server has said its `max_payload` (0 while still unknown).
    until_ready("the work queue", SETUP_PATIENCE, || async {
        batch_stream_for(&js, &subjects, task, &queue).await?;
        lane_stream_for(&js, &subjects, task, Priority::Bulk, &queue).await
    })
    .await?;
    let max_payload = client.server_info().max_payload;
    let largest_batch = BATCH_OVERHEAD + MAX_ITEM_BYTES + config.max_length * TOKEN_BYTES;
    anyhow::ensure!(
        max_payload == 0 || largest_batch <= batch_bytes_limit(max_payload),
        "the server's max_payload of {max_payload} bytes cannot carry one sequence of \
         max_length {} tokens: such a batch takes up to {largest_batch} bytes, and \
         {HEADER_ROOM} are kept for headers; raise max_payload or lower max_length",
        config.max_length
    );
    let mut batcher = Lanes::new(
        LaneRule::of(&config),
        BatcherConfig {
            max_batch_tokens: config.max_batch_tokens,
            max_batch_seqs: config.max_batch_seqs,
            max_batch_bytes: match max_payload {
                0 => usize::MAX,
                known => batch_bytes_limit(known),
            },
            max_wait: Duration::from_millis(config.max_wait_ms),
        },
    )?;
    let (queue_group, service_name) = match task {
        Task::Embed => (TOKENIZER_QUEUE_GROUP, "qwen3-embed-tokenizer"),
        Task::Rerank => (RERANK_TOKENIZER_QUEUE_GROUP, "qwen3-embed-rerank-tokenizer"),
    };
    let request_subjects = rules.request_subjects();
    let mut requests = SelectAll::new();
    for subject in &request_subjects {
        requests.push(
            client
                .queue_subscribe(subject.clone(), queue_group.into())
                .await?,
        );
    }
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
    let calls = match frontend.text_tokenizer() {
        Some(tokenizer) => Some(
            calls::Calls::start(
                &client,
                &subjects,
                &config.reply_prefixes,
                tokenizer,
                pool.clone(),
                calls::CallLimits {
                    max_tokens: config.max_request_tokens,
                    max_payload,
                },
            )
            .await?,
        ),
        None => None,
    };
    let (done_tx, mut done_rx) = mpsc::channel::<Tokenized>(1024);
    let status = initial_status(task, &config, threads, limits.hidden_size, subjects.route());
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
        rules,
        dropped: DroppedRequests::default(),
        truncate_default: config.truncate,
        max_pending_tokens: config.max_pending_tokens,
        max_request_tokens: config.max_request_tokens,
        max_publishes_in_flight: config.max_publishes_in_flight,
        direct,
        offers: 0,
        status,
        tokenizing: 0,
        publishes: JoinSet::new(),
        batch_ids: BatchIds::new(&client),
        acks: Acks::default(),
    };
    tracing::info!(
        task = task.as_str(),
        model = %config.model_name,
        requests = %request_subjects.join(" "),
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
    if let Some(calls) = calls {
        calls.stop().await;
    }
    // Drain (not unsubscribe): requests the server already routed here are still read and
    // served; new ones go to the other workers of the queue group.
    for subscription in requests.iter_mut() {
        if let Err(e) = subscription.drain().await {
            tracing::warn!(error = %e, "draining a request subscription failed");
        }
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
    flush_at_shutdown(&client).await;
    tracing::info!("tokenizer worker stopped");
    Ok(())
}
