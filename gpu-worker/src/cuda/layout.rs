//! A batch layout uploaded once per forward pass: what the kernels index by, every array in
//! one host-to-device copy.

use std::ops::Range;
use std::sync::OnceLock;

use cudarc::driver::{CudaSlice, CudaView};

use super::{CudaBackend, attention};
use crate::ops::{BatchLayout, OpResult};

/// The arrays of a layout, in the order they are packed.
#[derive(Debug, Clone, Copy)]
enum Array {
    /// Prefix sums of sequence lengths (key rows, and query rows of full attention).
    CuSeqlens,
    /// `[0, 1, .., num_seqs]`: query rows of last-row-only attention.
    CuLastRows,
    /// Position of every row, for the rotary embedding.
    Positions,
    /// Row of the last token of every sequence.
    LastRows,
    /// Attention tiles (sequence, first query row) of full attention.
    TilesAll,
    /// Attention tiles of last-row-only attention: one per sequence.
    TilesLast,
}

/// How many [`Array`]s there are.
const ARRAYS: usize = 6;

/// The layout of a batch on the host and, on the device, the arrays the kernels read.
pub struct CudaLayout {
    /// The host copy (row counts and shape checks).
    pub(super) host: BatchLayout,
    /// Every [`Array`], back to back: one copy per forward pass instead of six.
    arrays: CudaSlice<u32>,
    /// Where each [`Array`] lies in `arrays`, by its index.
    ranges: [Range<usize>; ARRAYS],
    /// The rotary table (cos, then sin, for positions up to the longest sequence), built by
    /// the first layer's `qk_norm_rope` and read by every later one.
    pub(super) rope: OnceLock<CudaSlice<f32>>,
}

impl CudaLayout {
    /// Uploads `layout`.
    pub(super) fn new(gpu: &CudaBackend, layout: &BatchLayout) -> OpResult<Self> {
        let cu_last_rows = layout.cu_last_rows();
        let tiles_all = attention::tiles(&layout.cu_seqlens);
        let tiles_last = attention::tiles(&cu_last_rows);
        let parts: [&[u32]; ARRAYS] = [
            &layout.cu_seqlens,
            &cu_last_rows,
            &layout.positions,
            &layout.last_rows,
            &tiles_all,
            &tiles_last,
        ];
        let mut packed = Vec::with_capacity(parts.iter().map(|part| part.len()).sum());
        let ranges = parts.map(|part| {
            let start = packed.len();
            packed.extend_from_slice(part);
            start..packed.len()
        });
        Ok(Self {
            arrays: gpu.upload("layout", &packed)?,
            ranges,
            rope: OnceLock::new(),
            host: layout.clone(),
        })
    }

    /// One of the arrays.
    fn array(&self, which: Array) -> CudaView<'_, u32> {
        self.arrays.slice(self.ranges[which as usize].clone())
    }

    /// Prefix sums of sequence lengths.
    pub(super) fn cu_seqlens(&self) -> CudaView<'_, u32> {
        self.array(Array::CuSeqlens)
    }

    /// Query-row prefix sums of last-row-only attention.
    pub(super) fn cu_last_rows(&self) -> CudaView<'_, u32> {
        self.array(Array::CuLastRows)
    }

    /// Every row's position.
    pub(super) fn positions(&self) -> CudaView<'_, u32> {
        self.array(Array::Positions)
    }

    /// Every sequence's last row.
    pub(super) fn last_rows(&self) -> CudaView<'_, u32> {
        self.array(Array::LastRows)
    }

    /// Attention tiles of full attention.
    pub(super) fn tiles_all(&self) -> CudaView<'_, u32> {
        self.array(Array::TilesAll)
    }

    /// Attention tiles of last-row-only attention.
    pub(super) fn tiles_last(&self) -> CudaView<'_, u32> {
        self.array(Array::TilesLast)
    }
}
