//! Routing the replies on the gateway's inbox to the pending requests: each reply subject
//! `{inbox}.{n}` names request `n`; a bundle on `{inbox}.bundle` is split by the request id
//! (`{gateway_id}-{n}`) of each reply in it. A reply whose id is not its request's is ignored,
//! so a request only ever completes with its own replies.

use async_nats::{Message, StatusCode};
use common::wire::{self, EmbedReply, ReplyBundle, RerankReply};
use futures::StreamExt;

use super::assembly::{Assembly, ScoreAssembly};
use super::{BUNDLE_TOKEN, Collector, PendingMap, Step, UpstreamError, lock};

/// Routes every message on the inbox to its pending request until the subscription ends.
pub(super) async fn read_replies(
    mut subscriber: async_nats::Subscriber,
    inbox: String,
    pending: PendingMap,
) {
    let prefix = format!("{inbox}.");
    while let Some(message) = subscriber.next().await {
        let Some(tail) = message.subject.strip_prefix(prefix.as_str()) else {
            continue;
        };
        if tail == BUNDLE_TOKEN {
            route_bundle(&pending, &message);
        } else if let Ok(n) = tail.parse::<u64>() {
            route(&pending, n, &message);
        } else {
            tracing::debug!(subject = %message.subject, "ignoring message on an unexpected inbox subject");
        }
    }
    tracing::debug!("reply subscription ended");
    lock(&pending).clear();
}

/// Applies one reply to request `n`.
fn route(pending: &PendingMap, n: u64, message: &Message) {
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        finish(pending, n, UpstreamError::NoResponders);
        return;
    }
    update(pending, n, |id, collector| match collector {
        Collector::Embed { assembly, .. } => match decode_reply(message) {
            Ok(reply) => apply_embed(id, assembly, reply),
            Err(step) => step,
        },
        Collector::Rerank { assembly, .. } => match decode_reply(message) {
            Ok(reply) => apply_rerank(id, assembly, reply),
            Err(step) => step,
        },
    });
}

/// Applies each reply of a [`ReplyBundle`] to the embedding request its id names (request
/// ids are `{gateway_id}-{n}`). A bundle that does not decode is logged and dropped: its
/// requests fail at their deadline.
fn route_bundle(pending: &PendingMap, message: &Message) {
    let bundle = match wire::decode::<ReplyBundle>(&message.payload) {
        Ok(bundle) => bundle,
        Err(e) => {
            tracing::warn!(subject = %message.subject, "undecodable reply bundle dropped: {e}");
            return;
        }
    };
    for reply in bundle.replies {
        let n = embed_reply_id(&reply)
            .and_then(|id| id.rsplit_once('-'))
            .and_then(|(_, n)| n.parse::<u64>().ok());
        let Some(n) = n else {
            tracing::debug!("bundled reply without one of this gateway's request ids ignored");
            continue;
        };
        update(pending, n, |id, collector| match collector {
            Collector::Embed { assembly, .. } => apply_embed(id, assembly, reply),
            Collector::Rerank { .. } => Step::Ignore,
        });
    }
}

/// Applies what `step` makes of request `n`'s collector (given the request's id),
/// completing the request when its answer is whole or failed.
fn update(pending: &PendingMap, n: u64, step: impl FnOnce(&str, &mut Collector) -> Step) {
    let mut map = lock(pending);
    let Some(entry) = map.get_mut(&n) else {
        tracing::debug!(n, "reply for an unknown or finished request ignored");
        return;
    };
    let error = match step(&entry.id, &mut entry.collector) {
        Step::Ignore | Step::More => return,
        Step::Acked => {
            entry.acked = true;
            return;
        }
        Step::Done => None,
        Step::Fail(error) => Some(error),
    };
    let entry = map
        .remove(&n)
        .expect("the entry was found above under the same lock; this is a bug");
    drop(map);
    entry.collector.complete(error);
}

/// Decodes a reply of type `R`, turning a decoding failure into a failed step.
fn decode_reply<R: serde::de::DeserializeOwned>(message: &Message) -> Result<R, Step> {
    wire::decode::<R>(&message.payload).map_err(|e| {
        let status = message.status.map(|s| s.to_string());
        tracing::warn!(subject = %message.subject, ?status, "undecodable reply: {e}");
        Step::Fail(UpstreamError::BadReply(e.to_string()))
    })
}

/// Whether a reply carrying `reply_id` belongs to the request `id`.
fn is_for(id: &str, reply_id: Option<&str>) -> bool {
    if reply_id.is_some_and(|reply_id| reply_id != id) {
        tracing::debug!(?reply_id, expected = %id, "reply for another request id ignored");
        return false;
    }
    true
}

/// The request id an embedding reply carries (an error about an undecodable request has
/// none).
fn embed_reply_id(reply: &EmbedReply) -> Option<&str> {
    match reply {
        EmbedReply::Chunk(chunk) => Some(&chunk.id),
        EmbedReply::Error(error) => error.id.as_deref(),
        EmbedReply::Queued(queued) => Some(&queued.id),
    }
}

/// Applies an embedding reply to its assembly.
fn apply_embed(id: &str, assembly: &mut Assembly, reply: EmbedReply) -> Step {
    if !is_for(id, embed_reply_id(&reply)) {
        return Step::Ignore;
    }
    match reply {
        EmbedReply::Queued(_) => Step::Acked,
        EmbedReply::Error(error) => Step::Fail(UpstreamError::Worker(error)),
        EmbedReply::Chunk(chunk) => match assembly.add(&chunk) {
            Ok(false) => Step::More,
            Ok(true) => Step::Done,
            Err(problem) => Step::Fail(UpstreamError::BadReply(problem)),
        },
    }
}

/// Applies a rerank reply to its assembly.
fn apply_rerank(id: &str, assembly: &mut ScoreAssembly, reply: RerankReply) -> Step {
    let reply_id = match &reply {
        RerankReply::Chunk(chunk) => Some(chunk.id.as_str()),
        RerankReply::Error(error) => error.id.as_deref(),
        RerankReply::Queued(queued) => Some(queued.id.as_str()),
    };
    if !is_for(id, reply_id) {
        return Step::Ignore;
    }
    match reply {
        RerankReply::Queued(_) => Step::Acked,
        RerankReply::Error(error) => Step::Fail(UpstreamError::Worker(error)),
        RerankReply::Chunk(chunk) => match assembly.add(&chunk) {
            Ok(false) => Step::More,
            Ok(true) => Step::Done,
            Err(problem) => Step::Fail(UpstreamError::BadReply(problem)),
        },
    }
}

/// Fails request `n` (if still waiting) with `error`.
fn finish(pending: &PendingMap, n: u64, error: UpstreamError) {
    let entry = lock(pending).remove(&n);
    match entry {
        Some(entry) => entry.collector.complete(Some(error)),
        None => tracing::debug!(n, "reply for an unknown or finished request ignored"),
    }
}
