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
//! - A worker that leaves hands back the batches that were on the device with a NAK (a
//!   delivery counts) and puts those that only waited back in the queue as fresh copies
//!   ([`requeue`]), so only being on the device when it failed counts against a batch.
//!
//! Bound: a poison input makes at most `max_deliver + 1` workers leave (its first delivery,
//! merged with others; its split batch's deliveries before the last one; one direct offer).
//! An innocent batch is given up only if it was on the device in `max_deliver - 1` worker
//! failures (it runs alone after the first, so only if it is a poison itself), or was held
//! by workers that died at once (SIGKILL, an abort: nothing could be handed back) that
//! often.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use common::wire::{self, ErrorCode, ErrorReply, TokenBatch};
use common::worker::send_error_in_order;
use futures::StreamExt;
use serde::Deserialize;

use super::Shared;
use super::health::Held;

/// Header marking a batch split out of a redelivered one: it runs alone.
pub(super) const SPLIT_HEADER: &str = "Qwen3-Embed-Split";

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
/// serving `requests` requests, `split` when it was split out of another.
pub(super) fn handling(delivered: i64, max_deliver: i64, requests: usize, split: bool) -> Handling {
    if max_deliver > 1 && delivered >= max_deliver {
        Handling::GiveUp
    } else if delivered > 1 && requests > 1 {
        Handling::Split
    } else if delivered > 1 || split {
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
    let split = message
        .headers
        .as_ref()
        .is_some_and(|headers| headers.get(SPLIT_HEADER).is_some());
    handling(
        delivered,
        shared.max_deliver,
        by_request(batch).len(),
        split,
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

/// Puts `payload` in the work queue as a fresh batch with message id `id` (the same id when
/// retried after a crash, so the queue keeps one copy), `split` marking it as split out of
/// another; `Err` (why) when the server did not confirm it.
async fn enqueue(
    shared: &Shared,
    payload: bytes::Bytes,
    id: &str,
    split: bool,
) -> Result<(), String> {
    let mut headers = HeaderMap::new();
    if split {
        headers.insert(SPLIT_HEADER, "1");
    }
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    match shared
        .queue
        .publish_with_headers(shared.batches_subject.clone(), headers, payload)
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
    let sequence = message.info().map_or(0, |info| info.stream_sequence);
    let split = message
        .headers
        .as_ref()
        .is_some_and(|headers| headers.get(SPLIT_HEADER).is_some());
    let id = format!("requeue-{sequence}");
    let kind = match enqueue(shared, message.payload.clone(), &id, split).await {
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
            Ok(payload) => enqueue(shared, payload.into(), &id, true).await,
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

/// Answers every request of `batch` (held as `ticket`), on its last delivery, with
/// `internal` naming the inputs the batch held, and terminates it.
pub(super) async fn give_up(shared: &Shared, ticket: u64, batch: &TokenBatch, delivered: i64) {
    answer_exhausted(shared, batch, delivered).await;
    if let Some(Held::Queued(message)) = shared.hand.release(ticket)
        && let Err(e) = message.ack_with(AckKind::Term).await
    {
        tracing::warn!(error = %e, "termination of a given-up batch not sent");
    }
}

/// Answers every request of a batch delivered `delivered` times with `internal`, naming
/// the inputs the batch held.
async fn answer_exhausted(shared: &Shared, batch: &TokenBatch, delivered: i64) {
    tracing::error!(
        delivered,
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
                 took it ({delivered} deliveries); they are not retried",
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
            Ok(batch) => answer_exhausted(&shared, &batch, advisory.deliveries).await,
            Err(e) => tracing::error!(error = %e, sequence, "undecodable batch out of deliveries"),
        }
        if let Err(e) = stream.delete_message(sequence).await {
            tracing::warn!(error = %e, sequence, "batch out of deliveries not deleted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_items::item;

    #[test]
    fn a_batch_splits_into_one_batch_per_request_keeping_their_tokens() {
        let batch = TokenBatch {
            token_ids: vec![1, 2, 3, 4, 5, 6],
            items: vec![
                item("a", "_INBOX.x", 0, 2, 1),
                item("a", "_INBOX.y", 0, 2, 2),
                item("a", "_INBOX.x", 1, 2, 3),
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
        assert_eq!(handling(1, 5, 3, false), Handling::Merge);
        assert_eq!(handling(1, 5, 1, true), Handling::Alone);
        assert_eq!(handling(2, 5, 3, false), Handling::Split);
        assert_eq!(handling(2, 5, 1, false), Handling::Alone);
        assert_eq!(handling(4, 5, 1, true), Handling::Alone);
        assert_eq!(handling(5, 5, 1, true), Handling::GiveUp);
        assert_eq!(handling(9, -1, 1, false), Handling::Alone, "unlimited");
    }
}
