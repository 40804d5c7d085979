//! A batch layout uploaded once per forward pass: what the kernels index by.

use std::sync::OnceLock;

use cudarc::driver::CudaSlice;

use super::{CudaBackend, attention};
use crate::ops::{BatchLayout, OpResult};

/// The layout of a batch on the host and, on the device, the arrays the kernels read.
pub struct CudaLayout {
    /// The host copy (row counts and shape checks).
    pub(super) host: BatchLayout,
    /// Prefix sums of sequence lengths (key rows, and query rows of full attention).
    pub(super) cu_seqlens: CudaSlice<u32>,
    /// `[0, 1, .., num_seqs]`: query rows of last-row-only attention.
    pub(super) cu_last_rows: CudaSlice<u32>,
    /// Position of every row, for the rotary embedding.
    pub(super) positions: CudaSlice<u32>,
    /// Row of the last token of every sequence.
    pub(super) last_rows: CudaSlice<u32>,
    /// Attention tiles (sequence, first query row) of full attention.
    pub(super) tiles_all: CudaSlice<u32>,
    /// Attention tiles of last-row-only attention: one per sequence.
    pub(super) tiles_last: CudaSlice<u32>,
    /// The rotary table (cos, then sin, for positions up to the longest sequence), built by
    /// the first layer's `qk_norm_rope` and read by every later one.
    pub(super) rope: OnceLock<CudaSlice<f32>>,
}

impl CudaLayout {
    /// Uploads `layout`.
    pub(super) fn new(gpu: &CudaBackend, layout: &BatchLayout) -> OpResult<Self> {
        const OP: &str = "layout";
        let cu_last_rows = layout.cu_last_rows();
        Ok(Self {
            cu_seqlens: gpu.upload(OP, &layout.cu_seqlens)?,
            positions: gpu.upload(OP, &layout.positions)?,
            last_rows: gpu.upload(OP, &layout.last_rows)?,
            tiles_all: gpu.upload(OP, &attention::tiles(&layout.cu_seqlens))?,
            tiles_last: gpu.upload(OP, &attention::tiles(&cu_last_rows))?,
            cu_last_rows: gpu.upload(OP, &cu_last_rows)?,
            rope: OnceLock::new(),
            host: layout.clone(),
        })
    }
}
