//! What the service loop owns besides the batcher ([`State`]), and the intake side of its
//! work: taking a request (tokenized here or on the pool), queueing its sequences or
//! answering its error, and answering requests whose deadline passed while they waited.
//!
//! Every reply path is keyed by the request's reply subject **and** id ([`RequestKey`]): two
//! requesters may pick the same id, and neither may get the other's replies. A request whose
//! reply subject breaks the reply rule of the subject it came on ([`crate::routing`]) is
//! dropped unanswered, counted and logged (a line per
//! [`DROPPED_LOG_EVERY`](crate::routing::DROPPED_LOG_EVERY) at most).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::trace::{LOG_TARGET, RequestTrace};
use common::wire::{ErrorCode, ErrorReply, InputType, Priority, WorkerStatus};
use common::worker::send_error;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::frontend::{Checked, Frontend};
use super::intake::id_of;
use super::stages::{self, Tokenize};
use crate::acks::{Acks, RequestKey};
use crate::batcher::PendingSequence;
use crate::deadline::Receipt;
use crate::lane::Lanes;
use crate::publish::{BatchIds, Published, WorkQueue};
use crate::routing::{DroppedRequests, ReplyRules, shortened};

/// Most characters of a hostile request's fields written in a log line.
const LOGGED_CHARS: usize = 128;

/// Requests with at most this many bytes of text are tokenized on the service loop itself
/// (tens of microseconds): handing them to the pool costs two thread hand-offs, more than
/// the work. Larger requests go to the pool, so one never stalls the loop.
const INLINE_MAX_BYTES: usize = 2048;

/// Settings of the direct path (`direct_*` in the configuration).
pub(super) struct DirectPath {
    /// Largest batch offered, in tokens.
    pub(super) max_tokens: usize,
    /// How long an offer waits for a GPU worker to serve it.
    pub(super) timeout: Duration,
    /// Offers awaiting their answer at once.
    pub(super) max_in_flight: usize,
}

/// A request whose texts were all tokenized, or the error to answer it with.
pub(super) struct Tokenized {
    /// Where the request's replies go.
    reply_to: String,
    /// The requester's id.
    id: String,
    /// Whether the requester asked for a `QueuedReply`.
    ack: bool,
    /// Inputs of the request.
    total: u32,
    /// The request's id and trace context from its headers, passed on to the batch items.
    trace: Option<RequestTrace>,
    /// The lane the request asked for (`None`: the lane rule decides).
    priority: Option<Priority>,
    /// Whether it is a query (queries are interactive unless they ask otherwise).
    query: bool,
    /// When it arrived here (its tokenize time and time here count from this).
    received: Instant,
    /// The request's sequences, or the error that answers it.
    result: Result<Vec<PendingSequence>, ErrorReply>,
}

/// What the service loop owns besides the batcher.
pub(super) struct State {
    /// The worker's connection: replies and status answers.
    pub(super) client: async_nats::Client,
    /// Where batches are published (the task's stream).
    pub(super) work_queue: WorkQueue,
    /// The task's tokenizer and limits.
    pub(super) frontend: Frontend,
    /// Where each request's replies may go.
    pub(super) rules: ReplyRules,
    /// Requests dropped for their reply subject.
    pub(super) dropped: DroppedRequests,
    /// Whether inputs over the limit are cut when the request does not say.
    pub(super) truncate_default: bool,
    /// Pending tokens beyond which new requests are refused with `overloaded`.
    pub(super) max_pending_tokens: usize,
    /// Most tokens of one request's inputs together.
    pub(super) max_request_tokens: usize,
    /// Publishes in flight beyond which partial batches wait (0 = no limit).
    pub(super) max_publishes_in_flight: usize,
    /// Offering small batches straight to GPU workers; `None` when turned off.
    pub(super) direct: Option<DirectPath>,
    /// Batches offered directly and not yet settled (they are in `publishes` too).
    pub(super) offers: usize,
    /// Counters reported on the status subject.
    pub(super) status: WorkerStatus,
    /// Requests handed to the tokenizer pool and not yet back.
    pub(super) tokenizing: usize,
    /// Batches being published to the work queue (awaited at shutdown).
    pub(super) publishes: JoinSet<Published>,
    /// The message id of each batch published, so the work queue stores a retried publish
    /// once.
    pub(super) batch_ids: BatchIds,
    /// Requests waiting for their acknowledgement.
    pub(super) acks: Acks,
}

impl State {
    /// Decodes and checks a request, then tokenizes it: a small one here and now (its
    /// sequences go straight to `batcher`), a larger one on the tokenizer pool.
    pub(super) fn take_request(
        &mut self,
        message: async_nats::Message,
        pool: &Arc<Semaphore>,
        done_tx: &mpsc::Sender<Tokenized>,
        batcher: &mut Lanes,
    ) {
        // The request's budget counts from here, on this worker's monotonic clock.
        let received = Receipt::now();
        let Some(reply_to) = message.reply.as_ref().map(|r| r.to_string()) else {
            tracing::warn!(subject = %message.subject, "request without a reply subject dropped");
            return;
        };
        let Some(route) = self.rules.route_of(message.subject.as_str()) else {
            let reason = "its subject names no valid requester";
            self.drop_unanswerable(&message, "?", &reply_to, reason);
            return;
        };
        if let Err(reason) = route.check("reply subject", &reply_to) {
            self.drop_unanswerable(&message, route.requester(), &reply_to, &reason);
            return;
        }
        let trace = RequestTrace::from_headers(message.headers.as_ref());
        let max_age = self.work_queue.queue.max_age();
        let checked = self
            .frontend
            .check(&message.payload, &route, received, max_age);
        let (request, deadline) = match checked {
            Ok(checked) => checked,
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
        let (priority, query) = asked_lane(&request);
        let mut done = Tokenized {
            reply_to,
            id: request.id().to_string(),
            ack: request.ack(),
            total: request.len(),
            trace,
            priority,
            query,
            received: received.at,
            result: Ok(Vec::new()),
        };
        if inline {
            done.result =
                self.frontend
                    .tokenize(request, deadline, &done.reply_to, truncate, max_tokens);
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
                frontend.tokenize(request, deadline, &reply, truncate, max_tokens)
            })
            .await
            .unwrap_or_else(|e| {
                Err(ErrorReply::new(
                    Some(done.id.clone()),
                    ErrorCode::Internal,
                    format!("tokenizer thread failed: {e}"),
                ))
            });
            // The loop stops reading only once nothing is being tokenized: it is there.
            let _ = done_tx.send(done).await;
        });
    }

    /// Queues a tokenized request's sequences, or answers its error.
    pub(super) fn accept(&mut self, done: Tokenized, batcher: &mut Lanes) {
        let trace = done.trace.as_ref();
        match done.result {
            Ok(mut sequences) => {
                let now = Instant::now();
                let count = sequences.len();
                let tokens = sequences
                    .iter()
                    .map(|seq| seq.token_ids.len())
                    .sum::<usize>();
                let lane = batcher.rule().lane_of(done.priority, done.query, tokens);
                tracing::debug!(
                    target: LOG_TARGET,
                    id = %done.id,
                    request_id = trace.map_or("", |t| t.request_id()),
                    trace_id = trace.map_or("", |t| t.trace_id()),
                    sequences = count,
                    tokens,
                    lane = ?lane,
                    "tokenized"
                );
                let downstream = trace.map(RequestTrace::child);
                if let Some(downstream) = &downstream {
                    for seq in &mut sequences {
                        seq.item.trace = Some(downstream.clone());
                    }
                }
                let stage = Tokenize {
                    received: done.received,
                    ready: now,
                    trace,
                    downstream: downstream.as_ref(),
                    model: &self.status.model,
                    lane,
                    tokens,
                };
                stages::tokenized(&mut sequences, &stage);
                for seq in sequences {
                    if let Err(e) = batcher.push(lane, seq, now) {
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

    /// Answers requests whose deadline passed while their sequences waited: each request
    /// (reply subject and id) once, however many of its sequences expired.
    pub(super) fn expire(&mut self, batcher: &mut Lanes) {
        let mut answered = HashSet::new();
        for item in batcher.remove_expired(Instant::now()) {
            let key = RequestKey::of(&item);
            self.acks.forget(&key);
            if answered.insert(key) {
                let error = ErrorReply::new(
                    Some(item.request_id),
                    ErrorCode::DeadlineExceeded,
                    "the request's deadline passed while it waited for a batch",
                );
                self.refuse(&item.reply_to, &error, item.trace.as_ref());
            }
        }
    }

    /// Drops a request (from `requester`) whose reply subject `reply_to` breaks the reply
    /// rule (`reason`): answering would itself send a message to a subject the requester may
    /// not use. Counted; logged at most once per
    /// [`DROPPED_LOG_EVERY`](crate::routing::DROPPED_LOG_EVERY).
    fn drop_unanswerable(
        &mut self,
        message: &async_nats::Message,
        requester: &str,
        reply_to: &str,
        reason: &str,
    ) {
        let Some(unlogged) = self.dropped.count(Instant::now()) else {
            return;
        };
        let id = id_of(&message.payload).unwrap_or_default();
        tracing::warn!(
            requester,
            subject = shortened(message.subject.as_str(), LOGGED_CHARS),
            reply = shortened(reply_to, LOGGED_CHARS),
            id = shortened(&id, LOGGED_CHARS),
            reason = shortened(reason, 2 * LOGGED_CHARS),
            dropped = self.dropped.total(),
            unlogged,
            "request dropped unanswered: its reply subject breaks the reply rule (a client \
             aiming answers at another's inbox)"
        );
    }

    /// Answers a request with `error`, logging it on the per-request target.
    pub(super) fn refuse(&self, reply_to: &str, error: &ErrorReply, trace: Option<&RequestTrace>) {
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

/// The lane `request` asked for, and whether it is a query: what the lane rule reads
/// besides its size. A rerank request is never a query here (its size decides).
fn asked_lane(request: &Checked) -> (Option<Priority>, bool) {
    match request {
        Checked::Embed(request) => (request.priority, request.input_type == InputType::Query),
        Checked::Rerank(request) => (request.priority, false),
    }
}
