//! Publishing a rerank batch's scores: one [`RerankChunk`] per contiguous run of each
//! request's documents, to the request's reply subject.

use std::collections::BTreeMap;

use common::wire::{self, BatchItem, RerankChunk};

use crate::model::rerank::RerankScore;

/// Room left in a message for everything but the per-document values.
const CHUNK_OVERHEAD: usize = 1024;

/// Upper bound of the encoded size of one document's values (three f32 and a u32, each
/// with its MessagePack marker).
const BYTES_PER_DOCUMENT: usize = 20;

/// Publishes every request's scores; `items[k]` was scored `scores[k]`.
pub async fn publish_scores(
    client: &async_nats::Client,
    max_payload: usize,
    items: &[BatchItem],
    scores: &[RerankScore],
) {
    let per_chunk = (max_payload.saturating_sub(CHUNK_OVERHEAD) / BYTES_PER_DOCUMENT).max(1);
    for chunk in chunks(items, scores, per_chunk) {
        let reply_to = chunk.0;
        match wire::encode(&chunk.1) {
            Ok(bytes) => {
                if let Err(e) = client.publish(reply_to.to_string(), bytes.into()).await {
                    tracing::warn!(error = %e, id = %chunk.1.id, "rerank chunk not sent");
                }
            }
            Err(e) => tracing::error!(error = %e, "rerank chunk does not encode; this is a bug"),
        }
    }
}

/// The documents of one request inside a batch.
struct RequestDocuments<'a> {
    /// Where the request's replies go.
    reply_to: &'a str,
    /// Documents in the whole request.
    total: u32,
    /// `(index in the request, position in the batch)`.
    members: Vec<(u32, usize)>,
}

/// The chunks to send, with their reply subjects: per request, documents sorted by index,
/// split where indices are not contiguous or a chunk holds `per_chunk` documents.
fn chunks<'a>(
    items: &'a [BatchItem],
    scores: &[RerankScore],
    per_chunk: usize,
) -> Vec<(&'a str, RerankChunk)> {
    let mut by_request: BTreeMap<&str, RequestDocuments<'_>> = BTreeMap::new();
    for (position, item) in items.iter().enumerate() {
        by_request
            .entry(item.request_id.as_str())
            .or_insert_with(|| RequestDocuments {
                reply_to: &item.reply_to,
                total: item.total,
                members: Vec::new(),
            })
            .members
            .push((item.index, position));
    }
    let mut out = Vec::new();
    for (id, request) in by_request {
        let RequestDocuments {
            reply_to,
            total,
            mut members,
        } = request;
        members.sort_unstable();
        let mut run: Vec<(u32, usize)> = Vec::new();
        let mut flush = |run: &mut Vec<(u32, usize)>| {
            if let Some(&(offset, _)) = run.first() {
                let picked: Vec<&RerankScore> = run.iter().map(|&(_, p)| &scores[p]).collect();
                out.push((
                    reply_to,
                    RerankChunk {
                        id: id.to_string(),
                        offset,
                        count: run.len() as u32,
                        total,
                        scores: picked.iter().map(|s| s.score).collect(),
                        logit_yes: picked.iter().map(|s| s.logit_yes).collect(),
                        logit_no: picked.iter().map(|s| s.logit_no).collect(),
                        tokens: run.iter().map(|&(_, p)| items[p].len).collect(),
                    },
                ));
            }
            run.clear();
        };
        for member in members {
            let contiguous = run.last().is_none_or(|&(last, _)| last + 1 == member.0);
            if !contiguous || run.len() == per_chunk {
                flush(&mut run);
            }
            run.push(member);
        }
        flush(&mut run);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(request_id: &str, index: u32, total: u32, len: u32) -> BatchItem {
        BatchItem {
            request_id: request_id.into(),
            reply_to: format!("inbox.{request_id}"),
            index,
            total,
            len,
            dims: 0,
            deadline_ms: 0,
            trace: None,
            bundle_to: None,
        }
    }

    #[test]
    fn chunks_follow_document_order_per_request() {
        // Sorted by length in the batch, so documents arrive out of order.
        let items = [
            item("a", 2, 4, 5),
            item("b", 0, 1, 6),
            item("a", 0, 4, 7),
            item("a", 1, 4, 8),
        ];
        let scores: Vec<_> = (0..4)
            .map(|k| RerankScore::from_logits(k as f32, 0.0))
            .collect();
        let chunks = chunks(&items, &scores, 2);
        let shape: Vec<_> = chunks
            .iter()
            .map(|(to, c)| (*to, c.id.as_str(), c.offset, c.count, c.tokens.clone()))
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
        assert_eq!(chunks[1].1.scores, [scores[0].score]);
        assert!(chunks.iter().all(|(_, c)| c.validate().is_ok()));
    }
}
