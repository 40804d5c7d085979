//! A batch layout uploaded once per forward pass: what the kernels index by, every array in
//! one host-to-device copy.

use std::ops::Range;
use std::sync::OnceLock;

use cudarc::driver::{CudaSlice, CudaView};

use super::{CudaBackend, attention, shape_error};
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
    /// Entries (pairs) of the full-attention tile list: the batch's own tiles, or for a
    /// recorded pass the most any batch of its shape has, the rest [`PAD_TILE`]s.
    tile_capacity: usize,
    /// Positions the rotary table covers: the longest sequence, or for a recorded pass its
    /// token count (any sequence of its shape fits).
    pub(super) rope_rows: usize,
    /// The rotary table (cos, then sin, for positions below `rope_rows`), built by the first
    /// layer's `qk_norm_rope` and read by every later one.
    pub(super) rope: OnceLock<CudaSlice<f32>>,
}

/// A full-attention tile with no rows: its first row (`i32::MAX`) lies past every
/// sequence, so the kernel leaves at once. Pads a recorded pass's tile list to a fixed
/// length.
const PAD_TILE: [u32; 2] = [0, i32::MAX as u32];

impl CudaLayout {
    /// Uploads `layout`.
    pub(super) fn new(gpu: &CudaBackend, layout: &BatchLayout) -> OpResult<Self> {
        let tile_capacity = attention::tiles(&layout.cu_seqlens).len() / 2;
        Self::with_capacity(gpu, layout, tile_capacity, layout.max_len())
    }

    /// Uploads `layout` with its tile list padded to `tile_capacity` tiles and a rotary table
    /// for `rope_rows` positions: the fixed shapes a recorded pass reads, so that
    /// [`Self::refill`] can replace the batch in place.
    pub(super) fn with_capacity(
        gpu: &CudaBackend,
        layout: &BatchLayout,
        tile_capacity: usize,
        rope_rows: usize,
    ) -> OpResult<Self> {
        let (packed, ranges) = pack(layout, tile_capacity)?;
        Ok(Self {
            arrays: gpu.upload("layout", &packed)?,
            ranges,
            tile_capacity,
            rope_rows,
            rope: OnceLock::new(),
            host: layout.clone(),
        })
    }

    /// Replaces the batch with `layout`, of the same sequence and token counts, in the same
    /// device arrays (queued on the stream, so it lands between passes).
    pub(super) fn refill(&mut self, gpu: &CudaBackend, layout: &BatchLayout) -> OpResult<()> {
        let (packed, ranges) = pack(layout, self.tile_capacity)?;
        if ranges != self.ranges || layout.max_len() > self.rope_rows {
            return Err(shape_error(
                "layout",
                format!(
                    "a batch of {} rows in {} sequences does not fit a recorded layout of {} \
                     rows in {}",
                    layout.num_rows(),
                    layout.num_seqs(),
                    self.host.num_rows(),
                    self.host.num_seqs()
                ),
            ));
        }
        gpu.stream.memcpy_htod(&packed, &mut self.arrays)?;
        self.host = layout.clone();
        Ok(())
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

/// Every [`Array`] of `layout` back to back, the tile list padded to `tile_capacity` tiles,
/// and where each array lies.
fn pack(
    layout: &BatchLayout,
    tile_capacity: usize,
) -> OpResult<(Vec<u32>, [Range<usize>; ARRAYS])> {
    let cu_last_rows = layout.cu_last_rows();
    let mut tiles_all = attention::tiles(&layout.cu_seqlens);
    if tiles_all.len() > 2 * tile_capacity {
        return Err(shape_error(
            "layout",
            format!(
                "{} attention tiles exceed the layout's {tile_capacity}",
                tiles_all.len() / 2
            ),
        ));
    }
    while tiles_all.len() < 2 * tile_capacity {
        tiles_all.extend_from_slice(&PAD_TILE);
    }
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
    Ok((packed, ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_padded_tile_list_keeps_its_tiles_then_pads_past_every_row() {
        let layout = BatchLayout::from_lengths(&[3, 70]).unwrap();
        let (packed, ranges) = pack(&layout, 5).unwrap();
        let tiles = &packed[ranges[Array::TilesAll as usize].clone()];
        assert_eq!(tiles.len(), 10);
        assert_eq!(tiles[..6], [0, 0, 1, 0, 1, 64]);
        assert!(tiles[6..].chunks(2).all(|tile| tile == PAD_TILE));
        // The kernel reads the first row as an `int`: it must stay positive to lie past
        // every sequence.
        assert_eq!(PAD_TILE[1] as i32, i32::MAX);
        // Same counts, other lengths: the same ranges, so a refill fits.
        let other = BatchLayout::from_lengths(&[40, 33]).unwrap();
        assert_eq!(pack(&other, 5).unwrap().1, ranges);
        assert!(pack(&layout, 2).is_err());
    }
}
