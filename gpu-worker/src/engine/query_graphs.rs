//! The CUDA graphs a worker records at start: a lone sequence of every bucket up to
//! [`QUERY_GRAPH_TOKENS`] tokens (see `cuda::graphs`).

use crate::cuda::CudaBackend;
use crate::cuda::graphs::Bucket;
use crate::model::qwen3::Qwen3;
use crate::ops::BatchLayout;

/// One sequence length for each single-sequence graph bucket of at most `limit` tokens.
fn query_graph_lengths(limit: usize) -> Vec<usize> {
    let mut lengths = Vec::new();
    // The longest sequence of a single-sequence bucket leaves one token for its padding
    // sequence, so the next bucket starts at the bucket's token count.
    let mut rows = 1;
    while let Some(bucket) = Bucket::of(rows, 1, limit) {
        lengths.push(rows);
        rows = bucket.tokens;
    }
    lengths
}

/// Longest single sequence whose CUDA graph is recorded at start.
const QUERY_GRAPH_TOKENS: usize = 512;

/// Records the CUDA graphs of single sequences of up to [`QUERY_GRAPH_TOKENS`] tokens (and
/// `max_tokens`), one per bucket, before the worker serves: lone short queries, the most
/// latency-bound traffic, never wait for a recording, and a driver that refuses graphs says
/// so at start. Returns the recordings the backend then holds (`None`: graphs are off).
pub fn record_query_graphs(
    backend: &CudaBackend,
    model: &Qwen3<CudaBackend>,
    max_tokens: usize,
) -> Option<usize> {
    let started = std::time::Instant::now();
    let limit = max_tokens.min(QUERY_GRAPH_TOKENS);
    for rows in query_graph_lengths(limit) {
        let layout = BatchLayout::from_lengths(&[rows]).expect("lengths are at least 1");
        if let Err(e) = model.last_hidden(backend, &vec![0; rows], &layout) {
            tracing::warn!(error = %e, rows, "recording the CUDA graphs of queries failed");
            break;
        }
    }
    let recorded = backend.recorded_graphs();
    tracing::info!(
        recorded = ?recorded,
        ms = started.elapsed().as_millis() as u64,
        "CUDA graphs of single sequences up to {limit} tokens recorded"
    );
    recorded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_graphs_cover_each_single_sequence_bucket_once() {
        let lengths = query_graph_lengths(512);
        let buckets: Vec<Bucket> = lengths
            .iter()
            .map(|&n| Bucket::of(n, 1, 512).unwrap())
            .collect();
        assert_eq!(lengths.len(), 21, "{lengths:?}");
        assert_eq!(lengths[0], 1);
        assert!(
            buckets
                .windows(2)
                .all(|pair| pair[0].tokens < pair[1].tokens)
        );
        assert_eq!(buckets.last().unwrap().tokens, 512);
        // Every length up to the limit falls in one of them.
        for n in 1..=511 {
            assert!(buckets.contains(&Bucket::of(n, 1, 512).unwrap()), "{n}");
        }
        assert_eq!(query_graph_lengths(16), [1]);
        assert!(query_graph_lengths(15).is_empty());
    }
}
