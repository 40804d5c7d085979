//! The GPU worker's NATS service: pulls token batches from the JetStream work queue only
//! when it has capacity, runs them on the device thread, publishes each request's vectors as
//! `EmbedChunk`s to its reply subject, and acks the batch after publishing. Started with
//! `task = rerank`, it loads a reranker, pulls from the rerank stream only, and publishes
//! `RerankChunk`s ([`crate::scores`]).
//!
//! Beside the work queue, small batches arrive on the direct subject (core NATS request,
//! queue group): the worker takes one only when it expects to finish it within
//! `direct_max_wait_ms` ([`crate::load`]), answers `done` once every request in it is
//! answered, and otherwise answers `busy` at once, so the tokenizer worker queues it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use common::nats::NatsConfig;
use common::outbox::{BUNDLE_OVERHEAD, Outbox};
use common::queue::{QueueConfig, batch_stream_for, gpu_consumer_for};
use common::subjects::{Subjects, Task};
use common::trace::{LOG_TARGET, RequestTrace};
use common::wire::{
    self, BatchItem, DirectOutcome, DirectReply, EmbedChunk, ErrorCode, ErrorReply, TokenBatch,
    WorkerKind, WorkerStatus,
};
use common::worker::{register_service, send_error_in_order};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::GpuWorkerConfig;
use crate::engine::DeviceHandle;
use crate::load::Load;
use crate::model::ModelError;
use crate::model::rerank::RerankScore;
use crate::ops::OpError;

/// How long one pull waits for a batch before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How long shutdown waits to flush replies to the server.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Room left in a message for everything but the vectors.
const CHUNK_OVERHEAD: usize = 1024;

/// Counters reported on the status subject.
#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    sequences: AtomicU64,
    tokens: AtomicU64,
    in_flight: AtomicU64,
}

/// What every batch task needs.
struct Shared {
    client: async_nats::Client,
    device: DeviceHandle,
    counters: Counters,
    ack_wait: Duration,
    max_payload: usize,
    /// Token budget of one merged forward pass.
    max_batch_tokens: usize,
    /// Embeddings or rerank scores.
    task: Task,
    /// Tokens in hand and the measured time per token, for taking direct batches.
    load: std::sync::Mutex<Load>,
}

impl Shared {
    /// The load bookkeeping, locked.
    fn load(&self) -> std::sync::MutexGuard<'_, Load> {
        // The bookkeeping stays consistent even if a holder panicked.
        self.load
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the model computed for a batch.
enum Output {
    /// One vector per sequence.
    Vectors(Vec<Vec<f32>>),
    /// One rerank score per sequence.
    Scores(Vec<RerankScore>),
}

/// Runs a GPU worker until `shutdown` resolves, then stops pulling, finishes (and acks) the
/// batches in hand, and returns.
pub async fn run(
    config: GpuWorkerConfig,
    nats: NatsConfig,
    queue: QueueConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let task = config.task;
    let device =
        DeviceHandle::start_for(config.model_dir.clone(), config.engine_options(), task).await?;
    let info = device.info().clone();
    tracing::info!(
        task = task.as_str(),
        model = %config.model_name,
        backend = %info.backend,
        device = %info.device.description,
        "model loaded"
    );
    let client = nats.connect("gpu-worker").await?;
    let subjects = nats.subjects();
    let js = jetstream::new(client.clone());
    let stream = batch_stream_for(&js, &subjects, task, &queue).await?;
    let mut consumer = gpu_consumer_for(&stream, task, &queue).await?;
    tracing::info!(batches = %subjects.batches_for(task), "pulling batches");
    let shared = Arc::new(Shared {
        client: client.clone(),
        device,
        counters: Counters::default(),
        ack_wait: Duration::from_secs_f64(queue.ack_wait_s.max(1.0)),
        max_payload: client.server_info().max_payload,
        max_batch_tokens: config.max_batch_tokens,
        task,
        load: std::sync::Mutex::new(Load::default()),
    });
    let status = WorkerStatus {
        worker_id: format!("gpu-{}", wire::now_ms() ^ u64::from(std::process::id())),
        kind: WorkerKind::gpu(task),
        model: config.model_name.clone(),
        loaded: true,
        backend: Some(info.backend.clone()),
        device: Some(info.device.description.clone()),
        device_memory_used: info.device.memory_used,
        device_memory_total: info.device.memory_total,
        hidden_size: Some(info.hidden_size as u32),
        batches: 0,
        sequences: 0,
        tokens: 0,
        in_flight: 0,
        started_ms: wire::now_ms(),
    };
    // Subscribed before the worker answers status requests: a worker that is seen is one
    // that takes direct offers.
    let direct_max_wait = Duration::from_millis(config.direct_max_wait_ms);
    let offers = if direct_max_wait.is_zero() {
        None
    } else {
        let subject = subjects.direct_batches_for(task);
        tracing::info!(direct = %subject, "taking direct batches");
        Some(
            client
                .queue_subscribe(subject, Subjects::direct_queue_group(task).into())
                .await?,
        )
    };
    let status_task = tokio::spawn(answer_status(
        client.subscribe(subjects.status()).await?,
        Arc::clone(&shared),
        status,
    ));
    let (service_name, what) = match task {
        Task::Embed => ("qwen3-embed-gpu", "embedding model"),
        Task::Rerank => ("qwen3-embed-rerank-gpu", "reranker"),
    };
    let _service = register_service(
        &client,
        service_name,
        format!("Qwen3 {what} {} on {}", config.model_name, info.backend),
    )
    .await;

    let capacity = Arc::new(Semaphore::new(config.max_batches_in_hand.max(1)));
    let merge_limit = config.merge_batches.max(1);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let direct = offers.map(|offers| {
        tokio::spawn(take_direct(
            Arc::clone(&shared),
            offers,
            DirectLimits {
                max_wait: direct_max_wait,
                merge: merge_limit,
            },
            stop_rx.clone(),
        ))
    });
    while !*stop_rx.borrow() {
        let permit = tokio::select! {
            _ = stop_rx.changed() => break,
            permit = Arc::clone(&capacity).acquire_owned() => permit?,
        };
        // A pull is never abandoned half-way (the server would hand its batches to nobody
        // until `ack_wait` passed); it ends within PULL_EXPIRES, and what it brings is served.
        match pull(&consumer, merge_limit).await {
            Ok(messages) if messages.is_empty() => {}
            Ok(messages) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    process(&shared, messages).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "pulling batches failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A restarted server may have lost a memory stream and its consumer (or a
                // cluster moved them): find or re-create both before the next pull.
                match batch_stream_for(&js, &subjects, task, &queue).await {
                    Ok(stream) => match gpu_consumer_for(&stream, task, &queue).await {
                        Ok(found) => consumer = found,
                        Err(e) => tracing::warn!(error = %e, "work queue consumer not reachable"),
                    },
                    Err(e) => tracing::warn!(error = %e, "work queue stream not reachable"),
                }
            }
        }
    }

    tracing::info!("gpu worker draining");
    let all = u32::try_from(config.max_batches_in_hand.max(1)).unwrap_or(u32::MAX);
    let _all_done = capacity.acquire_many(all).await;
    if let Some(direct) = direct
        && let Err(e) = direct.await
    {
        tracing::error!(error = %e, "direct batch task failed; this is a bug");
    }
    status_task.abort();
    // Bounded: with the server gone, a flush would wait for a reconnection forever.
    if tokio::time::timeout(SHUTDOWN_FLUSH, client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS unreachable at shutdown; unsent replies are lost");
    }
    tracing::info!("gpu worker stopped");
    Ok(())
}

/// Asks the queue for up to `limit` batches: it waits up to [`PULL_EXPIRES`] for the first
/// and takes whatever else is already queued, so a busy queue yields big merged batches
/// and an idle one no delay.
async fn pull(consumer: &PullConsumer, limit: usize) -> anyhow::Result<Vec<jetstream::Message>> {
    let pull = async {
        let mut batch = consumer
            .fetch()
            .max_messages(limit)
            .expires(PULL_EXPIRES)
            .messages()
            .await?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| anyhow::anyhow!(e))?);
        }
        Ok(messages)
    };
    // Bounded, so a lost server cannot hold the loop (and shutdown) forever.
    tokio::time::timeout(PULL_EXPIRES * 3, pull)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer to a pull within {:?}",
                PULL_EXPIRES * 3
            ))
        })
}

/// Runs the pulled batches, merged into as few forward passes as the token budget allows
/// ([`serve_group`]): drops expired items, computes, publishes chunks, then acks each batch.
/// A batch that does not decode is dropped (terminated); one that decodes but is
/// inconsistent has its requests answered with `invalid_request`.
async fn process(shared: &Shared, messages: Vec<jetstream::Message>) {
    // Every pulled batch is kept alive until the end, not only the group being computed: the
    // groups after it would otherwise pass ack_wait while they wait and be delivered again.
    let progress = keep_alive(&messages, shared.ack_wait);
    let mut decoded = Vec::with_capacity(messages.len());
    for message in messages {
        match servable(shared, &message.payload).await {
            Some(batch) => decoded.push((message, batch)),
            None => ack(&message, AckKind::Term).await,
        }
    }
    shared
        .load()
        .take(decoded.iter().map(|(_, b)| b.num_tokens()).sum());
    for group in merge_by_budget(decoded, shared.max_batch_tokens) {
        let (messages, batches): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        serve_group(shared, batches).await;
        for message in &messages {
            ack(message, AckKind::Ack).await;
        }
    }
    progress.abort();
}

/// The batch in `payload`, or `None` when it cannot be served: one that does not decode is
/// dropped (logged); one that decodes but is inconsistent has its requests answered with
/// `invalid_request`. Neither would fare better if sent again.
async fn servable(shared: &Shared, payload: &[u8]) -> Option<TokenBatch> {
    let batch = match wire::decode::<TokenBatch>(payload) {
        Ok(batch) => batch,
        Err(e) => {
            tracing::error!(error = %e, "undecodable batch dropped");
            return None;
        }
    };
    if let Err(e) = batch.validate() {
        tracing::error!(error = %e, sequences = batch.items.len(), "inconsistent batch refused");
        let error = ModelError::Input(format!("malformed batch: {e}"));
        fail_batch(shared, &batch.items, &error).await;
        return None;
    }
    Some(batch)
}

/// Runs batches merged into one forward pass; when the merged pass refuses its input (a
/// token outside the vocabulary, say), runs them one by one, so only the poisoned batch's
/// requests get the error. Counts their tokens off the load once done.
async fn serve_group(shared: &Shared, batches: Vec<TokenBatch>) {
    let tokens = batches.iter().map(TokenBatch::num_tokens).sum();
    if batches.len() == 1 {
        serve(shared, concat(batches), true).await;
    } else if !serve(shared, concat(batches.clone()), false).await {
        tracing::warn!(
            batches = batches.len(),
            "a merged pass refused its input; running its batches one by one"
        );
        for batch in batches {
            serve(shared, batch, true).await;
        }
    }
    shared.load().finish(tokens);
}

/// Limits of the direct path.
struct DirectLimits {
    /// Longest expected wait (work in hand plus the batch) of a batch taken directly.
    max_wait: Duration,
    /// Most direct batches merged into one forward pass.
    merge: usize,
}

/// A batch taken from the direct subject and where to say it is done.
struct DirectBatch {
    reply: async_nats::Subject,
    batch: TokenBatch,
}

/// Takes batches offered on the direct subject until `stop` turns true: each one is
/// checked, then taken (handed to [`run_direct`]) when the load allows it, else answered
/// `busy`. At shutdown the subscription is drained: offers already routed here are still
/// answered, and every taken batch is served before this returns.
async fn take_direct(
    shared: Arc<Shared>,
    mut offers: async_nats::Subscriber,
    limits: DirectLimits,
    mut stop: watch::Receiver<bool>,
) {
    let (taken_tx, taken_rx) = mpsc::unbounded_channel();
    let runner = tokio::spawn(run_direct(Arc::clone(&shared), taken_rx, limits.merge));
    let mut draining = false;
    loop {
        let message = tokio::select! {
            _ = stop.changed(), if !draining => {
                draining = true;
                if let Err(e) = offers.drain().await {
                    tracing::warn!(error = %e, "draining the direct subscription failed");
                }
                continue;
            }
            message = offers.next() => message,
        };
        let Some(message) = message else { break };
        let Some(reply) = message.reply else {
            tracing::warn!("direct batch without a reply subject dropped");
            continue;
        };
        let Some(batch) = servable(&shared, &message.payload).await else {
            // Answered as far as it can be; queueing it would not help.
            answer_direct(&shared, reply, DirectOutcome::Done).await;
            continue;
        };
        let tokens = batch.num_tokens();
        let taken = {
            let mut load = shared.load();
            let admits = load.admits(tokens, limits.max_wait);
            if admits {
                load.take(tokens);
            }
            admits
        };
        if !taken {
            tracing::debug!(tokens, "direct batch declined: busy");
            answer_direct(&shared, reply, DirectOutcome::Busy).await;
            continue;
        }
        if let Err(mpsc::error::SendError(lost)) = taken_tx.send(DirectBatch { reply, batch }) {
            // The runner is gone (a bug): let the tokenizer worker queue the batch.
            tracing::error!("direct batch runner stopped; this is a bug");
            shared.load().finish(tokens);
            answer_direct(&shared, lost.reply, DirectOutcome::Busy).await;
        }
    }
    drop(taken_tx);
    if let Err(e) = runner.await {
        tracing::error!(error = %e, "direct batch runner failed; this is a bug");
    }
}

/// Serves taken direct batches: whatever is waiting when the device frees up is merged into
/// as few passes as the token budget allows (up to `merge` batches), and each batch is
/// answered `done` after its requests' replies are published.
async fn run_direct(
    shared: Arc<Shared>,
    mut taken: mpsc::UnboundedReceiver<DirectBatch>,
    merge: usize,
) {
    while let Some(first) = taken.recv().await {
        let mut waiting = vec![first];
        while waiting.len() < merge {
            match taken.try_recv() {
                Ok(next) => waiting.push(next),
                Err(_) => break,
            }
        }
        let tagged = waiting.into_iter().map(|d| (d.reply, d.batch)).collect();
        for group in merge_by_budget(tagged, shared.max_batch_tokens) {
            let (replies, batches): (Vec<_>, Vec<_>) = group.into_iter().unzip();
            serve_group(&shared, batches).await;
            for reply in replies {
                answer_direct(&shared, reply, DirectOutcome::Done).await;
            }
        }
    }
}

/// Answers a direct offer. The answer goes out on the connection that published the
/// batch's replies, after them, so `done` reaches the server only after every reply did.
async fn answer_direct(shared: &Shared, reply: async_nats::Subject, outcome: DirectOutcome) {
    let answer = match wire::encode(&DirectReply { outcome }) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "direct answer does not encode; this is a bug");
            return;
        }
    };
    if let Err(e) = shared.client.publish(reply, answer.into()).await {
        tracing::warn!(error = %e, "direct answer not sent; the tokenizer worker will queue the batch");
    }
}

/// Runs one (possibly merged) batch and publishes its chunks. A failure is answered to every
/// request in it, except an input error when `answer_input_errors` is false: then nothing is
/// sent and `false` comes back (the caller runs the parts alone).
async fn serve(shared: &Shared, batch: TokenBatch, answer_input_errors: bool) -> bool {
    shared.counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let live = drop_expired(shared, batch).await;
    let mut served = true;
    if live.num_tokens() > shared.max_batch_tokens {
        // Only a misconfigured tokenizer worker (or a foreign client) sends such a batch:
        // refuse it rather than let it take memory the worker was not sized for.
        let error = ModelError::Op(OpError::OutOfMemory(format!(
            "a batch of {} tokens exceeds this worker's max_batch_tokens ({}); the \
             tokenizer workers' max_batch_tokens must not be larger",
            live.num_tokens(),
            shared.max_batch_tokens
        )));
        fail_batch(shared, &live.items, &error).await;
    } else if !live.items.is_empty() {
        match run_batch(shared, &live).await {
            Ok(Output::Vectors(vectors)) => {
                publish_chunks(shared, &live.items, &vectors).await;
                log_requests(&live.items, "embedded");
            }
            Ok(Output::Scores(scores)) => {
                crate::scores::publish_scores(
                    &shared.client,
                    shared.max_payload,
                    &live.items,
                    &scores,
                )
                .await;
                log_requests(&live.items, "scored");
            }
            Err(ModelError::Input(_)) if !answer_input_errors => served = false,
            Err(e) => fail_batch(shared, &live.items, &e).await,
        }
    }
    shared.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    served
}

/// Groups batches, in order, so each group's tokens stay within `budget` (a batch larger
/// than the budget forms a group alone, and the device refuses it if it cannot fit).
fn merge_by_budget<T>(batches: Vec<(T, TokenBatch)>, budget: usize) -> Vec<Vec<(T, TokenBatch)>> {
    let mut groups: Vec<Vec<(T, TokenBatch)>> = Vec::new();
    let mut tokens = 0;
    for (tag, batch) in batches {
        let n = batch.num_tokens();
        match groups.last_mut() {
            Some(group) if tokens + n <= budget => {
                tokens += n;
                group.push((tag, batch));
            }
            _ => {
                tokens = n;
                groups.push(vec![(tag, batch)]);
            }
        }
    }
    groups
}

/// One batch holding the sequences of `batches`, in order.
fn concat(batches: Vec<TokenBatch>) -> TokenBatch {
    let mut iter = batches.into_iter();
    let mut merged = iter.next().unwrap_or(TokenBatch {
        token_ids: Vec::new(),
        items: Vec::new(),
    });
    for batch in iter {
        merged.token_ids.extend(batch.token_ids);
        merged.items.extend(batch.items);
    }
    merged
}

async fn run_batch(shared: &Shared, batch: &TokenBatch) -> Result<Output, ModelError> {
    let hidden = shared.device.info().hidden_size;
    let lengths = batch.items.iter().map(|item| item.len as usize).collect();
    let started = std::time::Instant::now();
    let output = match shared.task {
        Task::Embed => {
            let dims = batch
                .items
                .iter()
                .map(|item| {
                    if item.dims == 0 {
                        hidden
                    } else {
                        item.dims as usize
                    }
                })
                .collect();
            let vectors = shared
                .device
                .embed(batch.token_ids.clone(), lengths, dims)
                .await?;
            Output::Vectors(vectors)
        }
        Task::Rerank => Output::Scores(
            shared
                .device
                .score(batch.token_ids.clone(), lengths)
                .await?,
        ),
    };
    shared.load().observe(batch.num_tokens(), started.elapsed());
    let c = &shared.counters;
    c.batches.fetch_add(1, Ordering::Relaxed);
    c.sequences
        .fetch_add(batch.items.len() as u64, Ordering::Relaxed);
    c.tokens
        .fetch_add(batch.num_tokens() as u64, Ordering::Relaxed);
    Ok(output)
}

/// Removes items whose deadline passed (answering their requests once) and returns the rest.
async fn drop_expired(shared: &Shared, batch: TokenBatch) -> TokenBatch {
    let now = wire::now_ms();
    if !batch
        .items
        .iter()
        .any(|item| wire::deadline_passed(item.deadline_ms, now))
    {
        return batch;
    }
    let mut live = TokenBatch {
        token_ids: Vec::with_capacity(batch.token_ids.len()),
        items: Vec::with_capacity(batch.items.len()),
    };
    let mut answered = HashSet::new();
    let mut start = 0;
    for item in batch.items {
        let end = start + item.len as usize;
        if wire::deadline_passed(item.deadline_ms, now) {
            if answered.insert(item.request_id.clone()) {
                let error = ErrorReply::new(
                    Some(item.request_id.clone()),
                    ErrorCode::DeadlineExceeded,
                    "the request's deadline passed before a GPU worker reached it",
                );
                send_error_in_order(&shared.client, &item.reply_to, &error).await;
            }
        } else {
            live.token_ids
                .extend_from_slice(&batch.token_ids[start..end]);
            live.items.push(item);
        }
        start = end;
    }
    live
}

/// Tells the queue the batches are still being worked on, every third of `ack_wait`.
fn keep_alive(messages: &[jetstream::Message], ack_wait: Duration) -> tokio::task::JoinHandle<()> {
    let targets: Vec<_> = messages
        .iter()
        .filter_map(|m| m.reply.clone().map(|reply| (m.context.clone(), reply)))
        .collect();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ack_wait / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            for (client, reply) in &targets {
                if let Err(e) = client
                    .publish(reply.clone(), AckKind::Progress.into())
                    .await
                {
                    tracing::warn!(error = %e, "progress ack not sent");
                }
            }
        }
    })
}

/// The items of one request inside a batch.
struct RequestItems<'a> {
    reply_to: &'a str,
    bundle_to: Option<&'a str>,
    total: u32,
    /// `(index in the request, position in the batch)`.
    members: Vec<(u32, usize)>,
}

/// Publishes every request's vectors, one chunk per contiguous run of indices that fits in
/// a message; the chunks of requests that named a bundle subject go there packed together.
async fn publish_chunks(shared: &Shared, items: &[BatchItem], vectors: &[Vec<f32>]) {
    let mut by_request: BTreeMap<&str, RequestItems<'_>> = BTreeMap::new();
    for (position, item) in items.iter().enumerate() {
        by_request
            .entry(&item.request_id)
            .or_insert_with(|| RequestItems {
                reply_to: &item.reply_to,
                bundle_to: item.bundle_to.as_deref(),
                total: item.total,
                members: Vec::new(),
            })
            .members
            .push((item.index, position));
    }
    let room = shared
        .max_payload
        .saturating_sub(CHUNK_OVERHEAD + BUNDLE_OVERHEAD);
    let mut outbox = Outbox::default();
    for (id, mut request) in by_request {
        request.members.sort_unstable();
        let dims = vectors[request.members[0].1].len();
        let per_chunk = (room / (dims * 4 + 8)).max(1);
        let mut add = |run: &[(u32, usize)]| {
            if let Some(chunk) = chunk_of(id, request.total, run, items, vectors) {
                outbox.push(request.reply_to, request.bundle_to, &chunk);
            }
        };
        let mut run: Vec<(u32, usize)> = Vec::new();
        for &member in &request.members {
            let contiguous = run.last().is_none_or(|&(last, _)| last + 1 == member.0);
            if !contiguous || run.len() == per_chunk {
                add(&run);
                run.clear();
            }
            run.push(member);
        }
        add(&run);
    }
    for (subject, payload) in outbox.into_messages(shared.max_payload) {
        if let Err(e) = shared.client.publish(subject.clone(), payload.into()).await {
            tracing::warn!(error = %e, %subject, "chunk not sent");
        }
    }
}

/// The chunk of request `id` holding the items of `run` (`None` when empty).
fn chunk_of(
    id: &str,
    total: u32,
    run: &[(u32, usize)],
    items: &[BatchItem],
    vectors: &[Vec<f32>],
) -> Option<EmbedChunk> {
    let &(offset, first) = run.first()?;
    Some(EmbedChunk {
        id: id.to_string(),
        offset,
        count: run.len() as u32,
        total,
        dims: vectors[first].len() as u32,
        embeddings: wire::f32_le_bytes(run.iter().map(|&(_, p)| vectors[p].as_slice())),
        tokens: run.iter().map(|&(_, p)| items[p].len).collect(),
    })
}

/// Answers every request of a failed batch with the error.
async fn fail_batch(shared: &Shared, items: &[BatchItem], error: &ModelError) {
    let code = match error {
        ModelError::Input(_) => ErrorCode::InvalidRequest,
        ModelError::Op(OpError::OutOfMemory(_)) => ErrorCode::Overloaded,
        _ => ErrorCode::Internal,
    };
    tracing::error!(%error, sequences = items.len(), "batch failed");
    log_requests(items, "failed");
    let mut answered = HashSet::new();
    for item in items {
        if answered.insert(&item.request_id) {
            let reply = ErrorReply::new(Some(item.request_id.clone()), code, error.to_string());
            send_error_in_order(&shared.client, &item.reply_to, &reply).await;
        }
    }
}

/// Logs one line per request served by `items` on the per-request target, with the
/// request id and trace id its tokenizer worker passed on.
fn log_requests(items: &[BatchItem], outcome: &'static str) {
    if !tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG) {
        return;
    }
    let mut sequences: BTreeMap<&str, (usize, Option<&RequestTrace>)> = BTreeMap::new();
    for item in items {
        sequences
            .entry(&item.request_id)
            .or_insert((0, item.trace.as_ref()))
            .0 += 1;
    }
    for (id, (count, trace)) in sequences {
        tracing::debug!(
            target: LOG_TARGET,
            id,
            request_id = trace.map_or("", |t| t.request_id()),
            trace_id = trace.map_or("", |t| t.trace_id()),
            sequences = count,
            "{outcome}"
        );
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "ack not sent; the batch may be redelivered");
    }
}

/// Answers status requests with the current counters.
async fn answer_status(
    mut requests: async_nats::Subscriber,
    shared: Arc<Shared>,
    mut status: WorkerStatus,
) {
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply else { continue };
        let c = &shared.counters;
        status.batches = c.batches.load(Ordering::Relaxed);
        status.sequences = c.sequences.load(Ordering::Relaxed);
        status.tokens = c.tokens.load(Ordering::Relaxed);
        status.in_flight = c.in_flight.load(Ordering::Relaxed);
        if let Ok(bytes) = wire::encode(&status)
            && let Err(e) = shared.client.publish(reply, bytes.into()).await
        {
            tracing::warn!(error = %e, "status answer not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tokens: usize) -> TokenBatch {
        TokenBatch {
            token_ids: vec![1; tokens],
            items: Vec::new(),
        }
    }

    #[test]
    fn batches_merge_in_order_within_the_budget() {
        let batches = vec![
            (0, batch(3)),
            (1, batch(4)),
            (2, batch(5)),
            (3, batch(20)),
            (4, batch(1)),
        ];
        let groups: Vec<Vec<i32>> = merge_by_budget(batches, 10)
            .into_iter()
            .map(|g| g.into_iter().map(|(tag, _)| tag).collect())
            .collect();
        assert_eq!(groups, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn concatenation_keeps_sequences_in_order() {
        let item = |request_id: &str, len| BatchItem {
            request_id: request_id.into(),
            reply_to: "r".into(),
            index: 0,
            total: 1,
            len,
            dims: 0,
            deadline_ms: 0,
            trace: None,
            bundle_to: None,
        };
        let a = TokenBatch {
            token_ids: vec![1, 2],
            items: vec![item("a", 2)],
        };
        let b = TokenBatch {
            token_ids: vec![3],
            items: vec![item("b", 1)],
        };
        let merged = concat(vec![a, b]);
        assert_eq!(merged.token_ids, vec![1, 2, 3]);
        assert_eq!(merged.items.len(), 2);
        assert!(merged.validate().is_ok());
    }
}
