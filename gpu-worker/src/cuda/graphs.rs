//! CUDA graphs for small batches: a pass of up to `max_tokens` tokens is padded to a fixed
//! shape (its [`Bucket`]), recorded once per bucket by stream capture, and replayed with one
//! launch for every later batch of that bucket, instead of some 300 kernel launches and
//! cuBLAS calls, each with its host-side work.
//!
//! # Padding
//! A batch of `rows` tokens in `seqs` sequences gets padding sequences whose rows are never
//! read back: the sequence count rises to the next power of two above `seqs` (so there is
//! always at least one padding sequence), the token count to the next step (16, 20, 24, 28,
//! 32, 40, 48, 56, 64, 80, ..: four to each doubling) that holds the batch and one token for
//! each padding sequence. The padding sequences hold one token each but the last, which
//! takes the rest. Attention never crosses sequences and every other op is row by row, so
//! the real sequences' rows are those of the unpadded batch, up to cuBLAS choosing another
//! algorithm for another row count (the batch-invariance bound of `tests/cuda_parity.rs`).
//!
//! # What a recording holds
//! The graph reads device buffers at fixed addresses: the token ids, the layout's arrays (its
//! tile list padded to the most tiles a batch of the bucket can have, its rotary table
//! covering every position the bucket allows) and the output rows. A replay refills the first
//! two and copies the real sequences' rows out of the third. The activations in between are
//! allocations captured as graph nodes; CUDA maps graphs launched on one stream onto the same
//! physical memory, so all recordings together hold about one bucket's activations (the
//! memory plan sets `max_tokens` tokens aside for them).
//!
//! # Failure
//! A bucket is first run op by op on its fixed buffers (which builds the rotary table and
//! warms cuBLAS outside the capture); an op that fails there fails the batch as it would
//! without graphs. If recording or launching a graph fails, graphs are turned off for the
//! backend with a warning and passes run op by op from then on: slower, never wrong.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use cudarc::driver::CudaSlice;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};

use super::attention::ROWS_PER_TILE;
use super::tensor::TensorData;
use super::{CudaBackend, CudaLayout, CudaTable, CudaTensor, embed, row_path, shape_error};
use crate::ops::{BatchLayout, Decoder, OpError, OpResult};

/// The smallest bucket, in tokens.
const MIN_TOKENS: usize = 16;

/// Recordings kept; beyond it the least recently used one is dropped. Traffic of short
/// queries at a steady concurrency meets a few dozen shapes.
const MAX_RECORDINGS: usize = 128;

/// The fixed shape a small batch is padded to, and the key of its recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// Tokens, padding included.
    pub tokens: usize,
    /// Sequences, padding included: a power of two above the batch's own.
    pub seqs: usize,
}

impl Bucket {
    /// The bucket of a batch of `rows` tokens in `seqs` sequences, if it has one of at most
    /// `max_tokens` tokens.
    pub fn of(rows: usize, seqs: usize, max_tokens: usize) -> Option<Self> {
        let padded_seqs = (seqs + 1).next_power_of_two();
        let tokens = token_step(MIN_TOKENS.max(rows + padded_seqs - seqs));
        (tokens <= max_tokens).then_some(Self {
            tokens,
            seqs: padded_seqs,
        })
    }

    /// The most full-attention tiles a layout of this bucket can have: each sequence's first
    /// tile, plus one per `ROWS_PER_TILE` rows beyond every sequence's first row.
    pub fn max_tiles(&self) -> usize {
        self.seqs + (self.tokens - self.seqs) / ROWS_PER_TILE as usize
    }

    /// `layout` with padding sequences up to this bucket's counts (real sequences first).
    pub fn pad_layout(&self, layout: &BatchLayout) -> OpResult<BatchLayout> {
        let (extra_seqs, extra_tokens) = self.padding(layout)?;
        let mut lengths: Vec<usize> = layout
            .cu_seqlens
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .collect();
        lengths.extend(std::iter::repeat_n(1, extra_seqs - 1));
        lengths.push(extra_tokens - (extra_seqs - 1));
        BatchLayout::from_lengths(&lengths)
    }

    /// `token_ids` with the padding sequences' tokens (id 0) after them.
    pub fn pad_ids(&self, token_ids: &[u32]) -> Vec<u32> {
        let mut ids = token_ids.to_vec();
        ids.resize(self.tokens.max(token_ids.len()), 0);
        ids
    }

    /// Padding sequences and tokens `layout` needs; refused when it does not fit.
    fn padding(&self, layout: &BatchLayout) -> OpResult<(usize, usize)> {
        let extra_seqs = self.seqs.checked_sub(layout.num_seqs());
        let extra_tokens = self.tokens.checked_sub(layout.num_rows());
        match (extra_seqs, extra_tokens) {
            (Some(seqs), Some(tokens)) if seqs >= 1 && tokens >= seqs => Ok((seqs, tokens)),
            _ => Err(shape_error(
                "graph",
                format!(
                    "{} rows in {} sequences do not fit a bucket of {} rows in {}",
                    layout.num_rows(),
                    layout.num_seqs(),
                    self.tokens,
                    self.seqs
                ),
            )),
        }
    }
}

/// The smallest multiple of an eighth of `n`'s power of two at or above `n`: four steps to
/// each doubling (5/8, 6/8, 7/8 and 8/8 of it), so padding adds at most a quarter.
fn token_step(n: usize) -> usize {
    let eighth = (n.next_power_of_two() / 8).max(1);
    n.div_ceil(eighth) * eighth
}

/// The recordings of one backend.
pub(super) struct Graphs {
    /// Largest bucket, in tokens.
    max_tokens: usize,
    state: Mutex<State>,
}

struct State {
    /// False once a recording or a replay failed: passes run op by op.
    enabled: bool,
    /// By bucket and model: the embedding table's device address tells the models a backend
    /// holds apart, so one never replays another's pass.
    recordings: HashMap<(Bucket, u64), Recording>,
    /// Counts replays, to find the least recently used recording.
    clock: u64,
}

/// One bucket's graph and the buffers its nodes read. The graph is declared first so it is
/// destroyed before them.
struct Recording {
    graph: Graph,
    ids: CudaSlice<u32>,
    layout: CudaLayout,
    /// `(bucket.seqs, hidden)` f32: the last rows' hidden states of every replay.
    out: CudaSlice<f32>,
    last_used: u64,
}

/// A recorded graph.
struct Graph(cudarc::driver::CudaGraph);

// SAFETY: CUDA graph objects must not be used from two threads at once; a `Graph` is only
// reached through `Graphs::state`'s mutex, which serializes every use.
unsafe impl Send for Graph {}

/// Why a replay did not happen.
enum Failure {
    /// An op of the pass failed, as it would have op by op: the batch fails with it.
    Op(OpError),
    /// Recording or launching the graph failed: graphs are turned off.
    Graph(String),
}

impl From<OpError> for Failure {
    fn from(e: OpError) -> Self {
        Self::Op(e)
    }
}

impl Graphs {
    /// Recordings for batches of up to `max_tokens` tokens, padding included.
    pub(super) fn new(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            state: Mutex::new(State {
                enabled: true,
                recordings: HashMap::new(),
                clock: 0,
            }),
        }
    }

    /// Largest bucket, in tokens: the activations the memory plan sets aside.
    pub(super) fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// What the device's description says of graphs (`/debug`, the worker's status; taken
    /// once at start: a later failure shows in the log).
    pub(super) fn describe(&self) -> String {
        format!("CUDA graphs up to {} tokens", self.max_tokens)
    }

    /// Recordings held, or `None` once graphs were turned off.
    pub(super) fn recorded(&self) -> Option<usize> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.enabled.then_some(state.recordings.len())
    }

    /// Runs a pass through its bucket's recording (recording it first if needed). `None`
    /// when the batch has no bucket or graphs are off: the caller runs it op by op.
    pub(super) fn run(
        &self,
        gpu: &CudaBackend,
        table: &CudaTable,
        token_ids: &[u32],
        layout: &BatchLayout,
        decoder: &Decoder<'_, CudaBackend>,
    ) -> Option<OpResult<CudaTensor>> {
        let bucket = Bucket::of(layout.num_rows(), layout.num_seqs(), self.max_tokens)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.enabled {
            return None;
        }
        match state.replay(gpu, bucket, table, token_ids, layout, decoder) {
            Ok(out) => Some(Ok(out)),
            Err(Failure::Op(e)) => Some(Err(e)),
            Err(Failure::Graph(why)) => {
                tracing::warn!(
                    %why,
                    tokens = bucket.tokens,
                    sequences = bucket.seqs,
                    "CUDA graphs turned off: passes run op by op from now on"
                );
                state.enabled = false;
                state.recordings.clear();
                // Drops during a failed capture record their errors on the context; they
                // belong to the capture, not to the next op.
                let _ = gpu.ctx.check_err();
                None
            }
        }
    }
}

impl State {
    fn replay(
        &mut self,
        gpu: &CudaBackend,
        bucket: Bucket,
        table: &CudaTable,
        token_ids: &[u32],
        layout: &BatchLayout,
        decoder: &Decoder<'_, CudaBackend>,
    ) -> Result<CudaTensor, Failure> {
        embed::check_ids(table, token_ids)?;
        let padded = bucket.pad_layout(layout)?;
        let ids = bucket.pad_ids(token_ids);
        self.clock += 1;
        let key = (bucket, row_path::address(gpu, &table.data));
        let recording = match self.recordings.remove(&key) {
            Some(mut recording) => {
                gpu.stream
                    .memcpy_htod(&ids, &mut recording.ids)
                    .map_err(OpError::from)?;
                recording.layout.refill(gpu, &padded)?;
                recording
            }
            None => {
                if self.recordings.len() >= MAX_RECORDINGS {
                    self.drop_least_recent();
                }
                record(gpu, bucket, table, &ids, &padded, decoder)?
            }
        };
        let recording = self.recordings.entry(key).or_insert(recording);
        recording.last_used = self.clock;
        recording
            .graph
            .0
            .launch()
            .map_err(|e| Failure::Graph(format!("launching the graph: {e}")))?;
        let cols = table.cols;
        let rows = layout.num_seqs();
        let mut last = gpu.alloc::<f32>("graph", rows * cols)?;
        gpu.stream
            .memcpy_dtod(&recording.out.slice(..rows * cols), &mut last)
            .map_err(OpError::from)?;
        Ok(CudaTensor {
            rows,
            cols,
            data: TensorData::F32(last),
        })
    }

    fn drop_least_recent(&mut self) {
        let oldest = self
            .recordings
            .iter()
            .min_by_key(|(_, recording)| recording.last_used)
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            self.recordings.remove(&key);
        }
    }
}

/// Uploads a padded batch to fixed buffers, runs it op by op once, then records its pass.
fn record(
    gpu: &CudaBackend,
    bucket: Bucket,
    table: &CudaTable,
    ids: &[u32],
    padded: &BatchLayout,
    decoder: &Decoder<'_, CudaBackend>,
) -> Result<Recording, Failure> {
    let ids = gpu.upload("graph", ids)?;
    let layout = CudaLayout::with_capacity(gpu, padded, bucket.max_tiles(), bucket.tokens)?;
    let mut out = gpu.alloc::<f32>("graph", bucket.seqs * table.cols)?;
    // Op by op first: builds the rotary table outside the capture and gives cuBLAS its
    // first call per shape; an op that fails here fails the batch as usual.
    let warm = decoder(embed::gather(gpu, table, &ids)?, &layout)?;
    if (warm.rows, warm.cols) != (bucket.seqs, table.cols) {
        return Err(shape_error(
            "graph",
            format!(
                "the decoder returned ({}, {}), expected ({}, {})",
                warm.rows, warm.cols, bucket.seqs, table.cols
            ),
        )
        .into());
    }
    drop(warm);

    let capture = |e: cudarc::driver::DriverError| Failure::Graph(format!("capture: {e}"));
    gpu.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(capture)?;
    // Every tensor of the pass is allocated and dropped inside the capture: graph memory.
    let recorded = (|| -> OpResult<()> {
        let last = decoder(embed::gather(gpu, table, &ids)?, &layout)?;
        gpu.stream
            .memcpy_dtod(last.f32("graph", "last rows")?, &mut out)?;
        Ok(())
    })();
    // The capture must end whatever happened inside it, or the stream stays capturing. A
    // drop during a failed capture records its error on the context, and cudarc checks that
    // before every call, `end_capture` included: take it out first.
    let dropped = gpu.ctx.check_err();
    let graph = gpu
        .stream
        .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
    recorded.map_err(|e| Failure::Graph(format!("an op during capture: {e}")))?;
    dropped.map_err(|e| Failure::Graph(format!("freeing during capture: {e}")))?;
    let graph = graph
        .map_err(capture)?
        .ok_or_else(|| Failure::Graph("the capture recorded nothing".into()))?;
    Ok(Recording {
        graph: Graph(graph),
        ids,
        layout,
        out,
        last_used: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_steps_are_four_to_each_doubling() {
        let steps: Vec<usize> = [16, 17, 24, 25, 33, 48, 49, 100, 1056, 4096, 4097]
            .map(token_step)
            .into();
        assert_eq!(steps, [16, 20, 24, 28, 40, 48, 56, 112, 1280, 4096, 5120]);
        for n in 16..5000 {
            let step = token_step(n);
            assert!(step >= n && 4 * step < 5 * n, "{n} -> {step}");
        }
    }

    #[test]
    fn a_bucket_leaves_room_for_a_padding_sequence_and_its_tokens() {
        let b = |rows, seqs| Bucket::of(rows, seqs, 4096).map(|b| (b.tokens, b.seqs));
        assert_eq!(b(5, 1), Some((16, 2)));
        assert_eq!(b(16, 1), Some((20, 2)));
        assert_eq!(b(15, 2), Some((20, 4)));
        assert_eq!(b(15, 3), Some((16, 4)));
        assert_eq!(b(16, 3), Some((20, 4)));
        assert_eq!(b(1024, 32), Some((1280, 64)));
        assert_eq!(b(4000, 8), Some((4096, 16)));
        assert_eq!(b(4090, 8), None);
        assert_eq!(Bucket::of(16, 1, 16), None);
    }

    #[test]
    fn padding_appends_sequences_that_fill_the_bucket_exactly() {
        for (lengths, seqs) in [
            (&[3usize][..], 1),
            (&[5, 1, 9], 3),
            (&[64, 64], 2),
            (&[1; 7], 7),
        ] {
            let layout = BatchLayout::from_lengths(lengths).unwrap();
            let rows = layout.num_rows();
            let bucket = Bucket::of(rows, seqs, 4096).unwrap();
            let padded = bucket.pad_layout(&layout).unwrap();
            assert_eq!(padded.num_rows(), bucket.tokens);
            assert_eq!(padded.num_seqs(), bucket.seqs);
            // The real sequences come first, unchanged.
            assert_eq!(padded.cu_seqlens[..=seqs], layout.cu_seqlens[..]);
            assert_eq!(padded.positions[..rows], layout.positions[..]);
            assert_eq!(padded.last_rows[..seqs], layout.last_rows[..]);
            let ids = bucket.pad_ids(&vec![7; rows]);
            assert_eq!(ids.len(), bucket.tokens);
            assert!(ids[rows..].iter().all(|&id| id == 0));
            // The tile list of any batch of the bucket fits its capacity.
            let tiles = super::super::attention::tiles(&padded.cu_seqlens).len() / 2;
            assert!(tiles <= bucket.max_tiles(), "{lengths:?}");
        }
    }

    #[test]
    fn the_tile_capacity_is_reached_by_the_worst_layout() {
        // 4 sequences in 24 + 2 * 64 tokens: three of one token and one holding the rest
        // gives 3 + ceil(149 / 64) = 6 tiles, the bound.
        let bucket = Bucket {
            tokens: 152,
            seqs: 4,
        };
        let worst = BatchLayout::from_lengths(&[1, 1, 1, 149]).unwrap();
        let tiles = super::super::attention::tiles(&worst.cu_seqlens).len() / 2;
        assert_eq!(tiles, bucket.max_tiles());
        let batch = BatchLayout::from_lengths(&[200]).unwrap();
        assert!(bucket.pad_layout(&batch).is_err());
    }
}
