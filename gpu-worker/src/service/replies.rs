//! The replies of a computed batch, for embeddings and rerank scores alike: per request
//! (its reply subject and id together, as two clients may pick the same id), the items
//! sorted by index and cut into chunks of contiguous indices that fit a message, collected
//! in an [`Outbox`] (alone on the reply subject, or bundled on the request's `bundle_to`).

use std::collections::BTreeMap;

use common::outbox::{BUNDLE_OVERHEAD, Outbox};
use common::wire::{self, BatchItem, EmbedChunk, RerankChunk};
use serde::Serialize;

use super::stages::Stamp;
use crate::model::rerank::RerankScore;

/// Room left in a message for everything but the per-item values.
const CHUNK_OVERHEAD: usize = 1024;

/// Upper bound of the encoded size of one document's rerank values (three f32 and a u32,
/// each with its MessagePack marker).
const BYTES_PER_SCORE: usize = 20;

/// Upper bound of the encoded size of one vector's values besides its floats (its token
/// count).
const BYTES_PER_VECTOR: usize = 8;

/// The items of one chunk of one request.
struct ChunkRun<'a> {
    /// The request's id.
    id: &'a str,
    /// Items in the whole request.
    total: u32,
    /// Index in the request of the chunk's first item.
    offset: u32,
    /// Positions in the batch of the chunk's items, in index order.
    positions: &'a [usize],
}

/// The chunks of every request in `items`: `chunk` builds one from a run of items and
/// `item_bytes(position)` bounds one item's encoded size. With `bundle`, requests that
/// named a `bundle_to` subject get their chunks there.
fn collect<R: Serialize>(
    items: &[BatchItem],
    max_payload: usize,
    bundle: bool,
    item_bytes: impl Fn(usize) -> usize,
    chunk: impl Fn(ChunkRun<'_>) -> R,
) -> Outbox {
    // `(index in the request, position in the batch)` per request.
    let mut by_request: BTreeMap<(&str, &str), Vec<(u32, usize)>> = BTreeMap::new();
    for (position, item) in items.iter().enumerate() {
        by_request
            .entry((&item.reply_to, &item.request_id))
            .or_default()
            .push((item.index, position));
    }
    let room = max_payload.saturating_sub(CHUNK_OVERHEAD + BUNDLE_OVERHEAD);
    let mut outbox = Outbox::default();
    for ((reply_to, id), mut members) in by_request {
        members.sort_unstable();
        let first = &items[members[0].1];
        let bundle_to = first.bundle_to.as_deref().filter(|_| bundle);
        let per_chunk = (room / item_bytes(members[0].1).max(1)).max(1);
        let mut start = 0;
        while start < members.len() {
            let mut end = start + 1;
            while end < members.len()
                && end - start < per_chunk
                && members[end].0 == members[end - 1].0 + 1
            {
                end += 1;
            }
            let positions: Vec<usize> = members[start..end].iter().map(|&(_, p)| p).collect();
            let run = ChunkRun {
                id,
                total: first.total,
                offset: members[start].0,
                positions: &positions,
            };
            outbox.push(reply_to, bundle_to, &chunk(run));
            start = end;
        }
    }
    outbox
}

/// The chunks of an embedding batch; `items[k]` got `vectors[k]`. Each chunk carries its
/// request's timings (`stamp`).
pub(super) fn embeddings(
    items: &[BatchItem],
    vectors: &[Vec<f32>],
    max_payload: usize,
    stamp: &Stamp<'_>,
) -> Outbox {
    collect(
        items,
        max_payload,
        true,
        |position| vectors[position].len() * 4 + BYTES_PER_VECTOR,
        |run| EmbedChunk {
            id: run.id.to_string(),
            offset: run.offset,
            count: run.positions.len() as u32,
            total: run.total,
            dims: run.positions.first().map_or(0, |&p| vectors[p].len()) as u32,
            embeddings: wire::f32_le_bytes(run.positions.iter().map(|&p| vectors[p].as_slice())),
            tokens: run.positions.iter().map(|&p| items[p].len).collect(),
            timings: Some(stamp.timings(run.positions.iter().map(|&p| &items[p]))),
        },
    )
}

/// The chunks of a rerank batch; `items[k]` was scored `scores[k]`, each chunk with its
/// request's timings (`stamp`). Rerank replies are never bundled (bundles carry embedding
/// replies only).
pub(super) fn scores(
    items: &[BatchItem],
    scores: &[RerankScore],
    max_payload: usize,
    stamp: &Stamp<'_>,
) -> Outbox {
    collect(
        items,
        max_payload,
        false,
        |_| BYTES_PER_SCORE,
        |run| {
            let picked = || run.positions.iter().map(|&p| &scores[p]);
            RerankChunk {
                id: run.id.to_string(),
                offset: run.offset,
                count: run.positions.len() as u32,
                total: run.total,
                scores: picked().map(|s| s.score).collect(),
                logit_yes: picked().map(|s| s.logit_yes).collect(),
                logit_no: picked().map(|s| s.logit_no).collect(),
                tokens: run.positions.iter().map(|&p| items[p].len).collect(),
                timings: Some(stamp.timings(run.positions.iter().map(|&p| &items[p]))),
            }
        },
    )
}

/// Publishes the messages of `outbox` in order, waiting until the client has taken each,
/// so whatever the caller publishes next (an ack, a `done`) reaches the server after them.
pub(super) async fn publish(client: &async_nats::Client, outbox: Outbox, max_payload: usize) {
    for (subject, payload) in outbox.into_messages(max_payload) {
        if let Err(e) = client.publish(subject.clone(), payload.into()).await {
            tracing::warn!(error = %e, %subject, "reply not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::{EmbedReply, ReplyBundle};

    use crate::service::stages::{Via, stamp};

    #[test]
    fn two_clients_with_the_same_id_get_their_own_vectors() {
        // Two clients both call their request "1"; a third request shares a client's
        // bundle subject.
        let mut bundled = BatchItem::new("2", "_INBOX.a.2", 0, 1, 5);
        bundled.bundle_to = Some("_INBOX.a.bundle".into());
        let items = [
            BatchItem::new("1", "_INBOX.a.1", 0, 2, 3),
            BatchItem::new("1", "_INBOX.b.1", 0, 1, 4),
            BatchItem::new("1", "_INBOX.a.1", 1, 2, 6),
            bundled,
        ];
        let vectors: Vec<Vec<f32>> = (0..4).map(|k| vec![k as f32; 2]).collect();
        let stamp = stamp(Via::Direct);
        let messages = embeddings(&items, &vectors, 1 << 20, &stamp).into_messages(1 << 20);
        let mut got = BTreeMap::new();
        for (subject, payload) in messages {
            let replies = match wire::decode::<EmbedReply>(&payload) {
                Ok(reply @ EmbedReply::Chunk(_)) => vec![reply],
                _ => wire::decode::<ReplyBundle>(&payload).unwrap().replies,
            };
            for reply in replies {
                let EmbedReply::Chunk(chunk) = reply else {
                    panic!("not a chunk: {reply:?}")
                };
                let timings = chunk.timings.as_ref().expect("every chunk carries timings");
                assert_eq!(
                    (timings.model.as_str(), timings.batch_tokens),
                    ("qwen3-tiny", 30)
                );
                assert_eq!(timings.path, common::wire::BatchPath::Direct);
                let firsts: Vec<f32> = chunk.vectors().unwrap().iter().map(|v| v[0]).collect();
                got.insert((subject.clone(), chunk.id, chunk.offset), firsts);
            }
        }
        let expected = BTreeMap::from([
            (("_INBOX.a.1".into(), "1".into(), 0), vec![0.0, 2.0]),
            (("_INBOX.b.1".into(), "1".into(), 0), vec![1.0]),
            (("_INBOX.a.bundle".into(), "2".into(), 0), vec![3.0]),
        ]);
        assert_eq!(got, expected);
    }

    #[test]
    fn score_chunks_follow_document_order_and_the_message_size() {
        // Sorted by length in the batch, so documents arrive out of order.
        let items = [
            BatchItem::new("a", "inbox.a", 2, 4, 5),
            BatchItem::new("b", "inbox.b", 0, 1, 6),
            BatchItem::new("a", "inbox.a", 0, 4, 7),
            BatchItem::new("a", "inbox.a", 1, 4, 8),
        ];
        let scored: Vec<_> = (0..4)
            .map(|k| RerankScore::from_logits(k as f32, 0.0))
            .collect();
        // Room for two documents per chunk.
        let max_payload = CHUNK_OVERHEAD + BUNDLE_OVERHEAD + 2 * BYTES_PER_SCORE;
        let stamp = stamp(Via::Queue);
        let messages = scores(&items, &scored, max_payload, &stamp).into_messages(max_payload);
        let chunks: Vec<(String, RerankChunk)> = messages
            .into_iter()
            .map(|(subject, payload)| (subject, wire::decode(&payload).unwrap()))
            .collect();
        let shape: Vec<_> = chunks
            .iter()
            .map(|(to, c)| {
                (
                    to.as_str(),
                    c.id.as_str(),
                    c.offset,
                    c.count,
                    c.tokens.clone(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("inbox.a", "a", 0, 2, vec![7, 8]),
                ("inbox.a", "a", 2, 1, vec![5]),
                ("inbox.b", "b", 0, 1, vec![6]),
            ]
        );
        assert_eq!(chunks[0].1.logit_yes, [2.0, 3.0]);
        assert_eq!(chunks[1].1.scores, [scored[0].score]);
        assert!(chunks.iter().all(|(_, c)| c.validate().is_ok()));
        assert!(chunks.iter().all(|(_, c)| c.timings.is_some()));
    }
}
