//! Poison isolation: a batch that a worker failed on (it is delivered again) must not take
//! other requests down with it.
//!
//! - A redelivered batch is never merged with others; one that serves several requests is
//!   split: each request's sequences go back to the work queue as a batch of their own,
//!   marked with the [`SPLIT_HEADER`] (so they, too, always run alone), and the original is
//!   acked. The innocent requests are then served by whoever pulls them; only the poison
//!   request's batch keeps failing.
//! - A batch on its last delivery (`max_deliver`) is not computed again: every request in
//!   it is answered `internal`, naming the inputs it held, and the batch is terminated,
//!   instead of JetStream dropping it unanswered. A batch whose last delivery was lost too
//!   (the worker holding it died) is answered the same way on JetStream's max-deliveries
//!   advisory ([`answer_max_deliveries`]), then deleted.
//!
//! - A worker whose device fails (a panic, a sticky device error, a hung pass) puts the
//!   batches of the failed pass back in the queue as fresh copies marked with one failed
//!   device more ([`FAILURES_HEADER`]), and those that only waited as they came
//!   ([`requeue`]). A batch marked once runs alone (or is split per request, the parts
//!   keeping the mark); one marked twice is given up without running: one failure cannot
//!   tell a poison input from a failing device, a second on another worker can.
//!
//! Bound: a poison input makes at most two workers leave when their devices fail in a way
//! they survive long enough to report (its first pass, merged with others, then its own
//! batch alone); an innocent request is given up only if it was in the failed passes of two
//! workers, the second time with no batch-mate to blame. Workers that die at once
//! (SIGKILL, an abort: nothing could be handed back) leave only JetStream's delivery count:
//! then a poison input makes at most `max_deliver + 1` workers leave, and an innocent batch
//! held by workers dying that often is given up too.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use common::queue::{FAILURES_HEADER, MESSAGE_TTL, batch_headers, batch_ttl};
use common::wire::{self, ErrorCode, ErrorReply, TokenBatch};
use common::worker::send_error_in_order;
use futures::StreamExt;
use serde::Deserialize;

use super::Shared;
use super::health::Held;

/// Header marking a batch split out of a redelivered one: it runs alone.
pub(super) const SPLIT_HEADER: &str = "Qwen3-Embed-Split";

/// Failed devices after which a batch is given up: one failure cannot tell a poison input
/// from a failing device (the next worker may serve it); a second, in a pass the batch had
/// to itself, can.
const GIVE_UP_FAILURES: u32 = 2;

/// What the workers wrote on a batch they put back in the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Marks {
    /// Split out of a redelivered batch: it runs alone.
    pub(super) split: bool,
    /// Devices that failed with the batch in their pass ([`FAILURES_HEADER`]).
    pub(super) failures: u32,
}

impl Marks {
    /// The marks in `headers` (none when absent or unreadable).
    pub(super) fn of(headers: Option<&HeaderMap>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        Self {
            split: headers.get(SPLIT_HEADER).is_some(),
            failures: headers
                .get(FAILURES_HEADER)
                .and_then(|value| value.as_str().parse().ok())
                .unwrap_or(0),
        }
    }

    /// The marks as headers, beside message id `id`.
    fn headers(self, id: &str) -> HeaderMap {
        let mut headers = batch_headers(id, self.failures);
        if self.split {
            headers.insert(SPLIT_HEADER, "1");
        }
        headers
    }
}

/// How a pulled batch is to be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handling {
    /// Merged with other fresh batches.
    Merge,
    /// Alone (redelivered with one request, or split out of a redelivered batch).
    Alone,
    /// Split into one batch per request.
    Split,
    /// Not run: its requests are answered `internal`.
    GiveUp,
}

/// How to run a batch delivered `delivered` times (`max_deliver` < 2: never given up)
/// serving `requests` requests, with the `marks` workers put on it.
pub(super) fn handling(
    delivered: i64,
    max_deliver: i64,
    requests: usize,
    marks: Marks,
) -> Handling {
    let suspect = delivered > 1 || marks.failures > 0;
    if marks.failures >= GIVE_UP_FAILURES || (max_deliver > 1 && delivered >= max_deliver) {
        Handling::GiveUp
    } else if suspect && requests > 1 {
        Handling::Split
    } else if suspect || marks.split {
        Handling::Alone
    } else {
        Handling::Merge
    }
}

/// How `message` holding `batch` is to be run.
pub(super) fn handling_of(
    shared: &Shared,
    message: &jetstream::Message,
    batch: &TokenBatch,
) -> Handling {
    let delivered = message.info().map_or(1, |info| info.delivered);
    handling(
        delivered,
        shared.max_deliver,
        by_request(batch).len(),
        Marks::of(message.headers.as_ref()),
    )
}

/// The batch's sequences per request (`(reply subject, id)`), each as a batch of its own,
/// in order of first appearance.
fn by_request(batch: &TokenBatch) -> Vec<TokenBatch> {
    let mut parts: Vec<TokenBatch> = Vec::new();
    let mut index: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut start = 0;
    for item in &batch.items {
        let end = start + item.len as usize;
        let key = (item.reply_to.as_str(), item.request_id.as_str());
        let part = *index.entry(key).or_insert_with(|| {
            parts.push(TokenBatch {
                token_ids: Vec::new(),
                items: Vec::new(),
            });
            parts.len() - 1
        });
        parts[part]
            .token_ids
            .extend_from_slice(&batch.token_ids[start..end]);
        parts[part].items.push(item.clone());
        start = end;
    }
    parts
}

/// Puts `payload` in the work queue on `subject` (the lane's batch subject the batch came
/// on) as a fresh batch with message id `id` (the same id when
/// retried after a crash, so the queue keeps one copy) and `marks`, with a TTL from its
/// items' budgets as the tokenizer workers give one ([`batch_ttl`]), so a copy whose
/// requests' time runs out is dropped by the server like the original; `Err` (why) when
/// the server did not confirm it.
pub(super) async fn enqueue(
    shared: &Shared,
    subject: &str,
    payload: bytes::Bytes,
    id: &str,
    marks: Marks,
) -> Result<(), String> {
    let mut headers = marks.headers(id);
    // Only on the failure paths: decoding the batch again costs nothing that matters there.
    if let Some(ttl) = wire::decode::<TokenBatch>(&payload)
        .ok()
        .and_then(|batch| batch_ttl(batch.items.iter().map(|item| item.budget_ms)))
    {
        headers.insert(MESSAGE_TTL, ttl.as_str());
    }
    match shared
        .queue
        .publish_with_headers(subject.to_string(), headers, payload)
        .await
    {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Puts a batch the worker held, but never sent to a failing device, back in the work queue
/// as a fresh copy (no delivery counted against it) and acks the original; NAKs it when the
/// copy cannot be queued.
pub(super) async fn requeue(shared: &Shared, message: &jetstream::Message) {
    requeue_marked(
        shared,
        message,
        Marks::of(message.headers.as_ref()),
        "requeue",
    )
    .await;
}

/// Puts a batch that was in the pass of a device that failed back in the work queue as a
/// fresh copy with one failure more ([`FAILURES_HEADER`]), and acks the original; NAKs it
/// when the copy cannot be queued (then only JetStream's delivery count remembers).
pub(super) async fn requeue_failed(shared: &Shared, message: &jetstream::Message) {
    let mut marks = Marks::of(message.headers.as_ref());
    marks.failures += 1;
    requeue_marked(shared, message, marks, "failed").await;
}

/// Queues a copy of `message` with `marks` (message id `{what}-{sequence}-{failures}`, the
/// same on a retry), then acks the original, or NAKs it when the copy was not queued.
async fn requeue_marked(shared: &Shared, message: &jetstream::Message, marks: Marks, what: &str) {
    let sequence = message.info().map_or(0, |info| info.stream_sequence);
    let id = format!("{what}-{sequence}-{}", marks.failures);
    let subject = message.subject.as_str();
    let kind = match enqueue(shared, subject, message.payload.clone(), &id, marks).await {
        Ok(()) => AckKind::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "a held batch could not be queued afresh; NAKing it");
            AckKind::Nak(None)
        }
    };
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "ack of a handed-back batch not sent");
    }
}

/// Puts each request of the redelivered `batch` (held as `ticket`) back in the work queue
/// as a batch of its own, then acks the original. When a part cannot be queued, the
/// original is handed back (parts already queued may then be computed twice; requesters
/// keep one vector per input).
pub(super) async fn split(
    shared: &Shared,
    ticket: u64,
    message: &jetstream::Message,
    batch: TokenBatch,
) {
    let parts = by_request(&batch);
    let sequence = message.info().map_or(0, |info| info.stream_sequence);
    // The parts remember the failures of the whole (their own, or a batch-mate's).
    let marks = Marks {
        split: true,
        ..Marks::of(message.headers.as_ref())
    };
    tracing::warn!(
        requests = parts.len(),
        sequence,
        "a redelivered batch is split into one batch per request"
    );
    let now = wire::now_ms();
    for (k, mut part) in parts.into_iter().enumerate() {
        let id = format!("split-{sequence}-{k}");
        // What is left of each item's budget travels on, so the part's next worker counts
        // from its own arrival without granting the time spent here again.
        for item in &mut part.items {
            if item.deadline_ms != 0 {
                item.budget_ms = item.deadline_ms.saturating_sub(now).max(1);
            }
        }
        let queued = match wire::encode(&part) {
            Ok(payload) => enqueue(shared, &message.subject, payload.into(), &id, marks).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = queued {
            tracing::warn!(error = %e, "a split batch was not queued; NAKing the batch");
            if let Some(Held::Queued(message)) = shared.hand.release(ticket)
                && let Err(e) = message.ack_with(AckKind::Nak(None)).await
            {
                tracing::warn!(error = %e, "NAK not sent; the batch returns after ack_wait");
            }
            return;
        }
    }
    if let Some(Held::Queued(message)) = shared.hand.release(ticket)
        && let Err(e) = message.ack_with(AckKind::Ack).await
    {
        tracing::warn!(error = %e, "ack of a split batch not sent; it may be split again");
    }
}

/// Answers every request of `batch` (held as `ticket`), which failed too often (`why`),
/// with `internal` naming the inputs the batch held, and terminates it.
pub(super) async fn give_up(shared: &Shared, ticket: u64, batch: &TokenBatch, why: &str) {
    answer_exhausted(shared, batch, why).await;
    if let Some(Held::Queued(message)) = shared.hand.release(ticket)
        && let Err(e) = message.ack_with(AckKind::Term).await
    {
        tracing::warn!(error = %e, "termination of a given-up batch not sent");
    }
}

/// Answers every request of a batch that failed too often (`why`) with `internal`, naming
/// the inputs the batch held.
async fn answer_exhausted(shared: &Shared, batch: &TokenBatch, why: &str) {
    tracing::error!(
        why,
        sequences = batch.items.len(),
        "a batch every worker that took it failed on is given up; its requests are \
         answered `internal`"
    );
    for part in by_request(batch) {
        let Some(first) = part.items.first() else {
            continue;
        };
        let mut indices: Vec<u32> = part.items.iter().map(|i| i.index).collect();
        indices.sort_unstable();
        let inputs: Vec<String> = indices.iter().map(u32::to_string).collect();
        let reply = ErrorReply::new(
            Some(first.request_id.clone()),
            ErrorCode::Internal,
            format!(
                "inputs {} of this request were in a batch that failed every GPU worker that \
                 took it ({why}); they are not retried",
                inputs.join(", ")
            ),
        );
        send_error_in_order(&shared.client, &first.reply_to, &reply).await;
    }
}

/// JetStream's advisory that a message ran out of deliveries (the fields used).
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    /// The message's sequence in the stream.
    stream_seq: u64,
    /// How often it was delivered.
    #[serde(default)]
    deliveries: i64,
}

/// Answers the requests of batches that ran out of deliveries without being given up (the
/// worker holding its last delivery died too): on each of JetStream's max-deliveries
/// advisories (`advisories`, subscribed in a queue group so one worker takes each), fetches
/// the batch from `stream` by its sequence, answers its requests `internal`, and deletes
/// it. Runs until the subscription ends.
pub(super) async fn answer_max_deliveries(
    shared: Arc<Shared>,
    mut advisories: async_nats::Subscriber,
    stream: jetstream::stream::Stream,
) {
    while let Some(message) = advisories.next().await {
        let advisory = match serde_json::from_slice::<MaxDeliveries>(&message.payload) {
            Ok(advisory) => advisory,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable max-deliveries advisory ignored");
                continue;
            }
        };
        let sequence = advisory.stream_seq;
        let stored = match stream.get_raw_message(sequence).await {
            Ok(stored) => stored,
            Err(e) => {
                // Given up (terminated) or expired already.
                tracing::debug!(error = %e, sequence, "batch out of deliveries already gone");
                continue;
            }
        };
        match wire::decode::<TokenBatch>(&stored.payload) {
            Ok(batch) => {
                let why = format!("{} deliveries", advisory.deliveries);
                answer_exhausted(&shared, &batch, &why).await;
            }
            Err(e) => tracing::error!(error = %e, sequence, "undecodable batch out of deliveries"),
        }
        if let Err(e) = stream.delete_message(sequence).await {
            tracing::warn!(error = %e, sequence, "batch out of deliveries not deleted");
        }
    }
}

#[cfg(test)]
mod tests {
    use common::wire::BatchItem;

    use super::*;

    #[test]
    fn a_batch_splits_into_one_batch_per_request_keeping_their_tokens() {
        let batch = TokenBatch {
            token_ids: vec![1, 2, 3, 4, 5, 6],
            items: vec![
                BatchItem::new("a", "_INBOX.x", 0, 2, 1),
                BatchItem::new("a", "_INBOX.y", 0, 2, 2),
                BatchItem::new("a", "_INBOX.x", 1, 2, 3),
            ],
        };
        let parts = by_request(&batch);
        assert_eq!(parts.len(), 2, "same id, two clients: two requests");
        assert_eq!(parts[0].token_ids, [1, 4, 5, 6]);
        assert_eq!(parts[1].token_ids, [2, 3]);
        assert!(parts.iter().all(|p| p.validate().is_ok()));
    }

    #[test]
    fn only_a_redelivered_batch_is_kept_apart_and_the_last_delivery_is_given_up() {
        let fresh = Marks::default();
        let split = Marks {
            split: true,
            failures: 0,
        };
        assert_eq!(handling(1, 5, 3, fresh), Handling::Merge);
        assert_eq!(handling(1, 5, 1, split), Handling::Alone);
        assert_eq!(handling(2, 5, 3, fresh), Handling::Split);
        assert_eq!(handling(2, 5, 1, fresh), Handling::Alone);
        assert_eq!(handling(4, 5, 1, split), Handling::Alone);
        assert_eq!(handling(5, 5, 1, split), Handling::GiveUp);
        assert_eq!(handling(9, -1, 1, fresh), Handling::Alone, "unlimited");
    }

    #[test]
    fn a_batch_on_one_failed_device_runs_apart_and_on_two_is_given_up() {
        let once = |split| Marks { split, failures: 1 };
        // Put back fresh (delivered once) by the worker whose device failed.
        assert_eq!(handling(1, 5, 3, once(false)), Handling::Split);
        assert_eq!(handling(1, 5, 1, once(false)), Handling::Alone);
        assert_eq!(handling(1, 5, 1, once(true)), Handling::Alone);
        let twice = Marks {
            split: true,
            failures: 2,
        };
        assert_eq!(handling(1, 5, 1, twice), Handling::GiveUp);
        assert_eq!(
            handling(1, -1, 1, twice),
            Handling::GiveUp,
            "whatever max_deliver"
        );
    }

    #[test]
    fn marks_survive_their_headers() {
        let marks = Marks {
            split: true,
            failures: 1,
        };
        let headers = marks.headers("id-1");
        assert_eq!(Marks::of(Some(&headers)), marks);
        assert_eq!(Marks::of(None), Marks::default());
        let mut odd = HeaderMap::new();
        odd.insert(FAILURES_HEADER, "many");
        assert_eq!(Marks::of(Some(&odd)), Marks::default());
    }
}
