//! The choice between the two forms of the row-wise kernels `rms_norm`, `add_rms_norm`, `add`
//! (see `rms_norm.rs`) and `silu_mul`: one warp per row with 16-byte accesses (`*_vec8`), or
//! one block per row with scalar accesses.

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};

use super::{CudaBackend, int, per_row};
use crate::ops::OpResult;

/// Values a lane of a `*_vec8` kernel moves per access: 16 bytes of bf16, or two float4 of f32.
const VALUES_PER_ACCESS: usize = 8;

/// Alignment, in bytes, of the `*_vec8` kernels' accesses.
const ACCESS_ALIGN: u64 = 16;

/// Rows (one warp each) per block of the `*_vec8` kernels: 256 threads, as the widest scalar
/// blocks.
const ROWS_PER_BLOCK: u32 = 8;

/// How a row-wise kernel is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowPath {
    /// `*_vec8`: one warp per row, [`ROWS_PER_BLOCK`] rows per block, 16-byte accesses.
    WarpPerRowVec8,
    /// The scalar kernel: one block per row (`super::per_row`), any width.
    BlockPerRow,
}

/// The path for rows of `cols` values in buffers starting at `addresses` (device addresses).
///
/// The vector path needs `cols % 8 == 0` and every buffer 16-byte aligned: a row is then a
/// multiple of 16 bytes in bf16 and of 32 in f32, so every row starts as aligned as its buffer,
/// and every access of a lane is aligned. Buffers come whole from the allocator (256-byte
/// aligned), so in practice the width alone decides; the address check keeps a buffer from
/// anywhere else from faulting.
pub(super) fn choose(cols: usize, addresses: &[u64]) -> RowPath {
    let aligned = addresses
        .iter()
        .all(|address| address.is_multiple_of(ACCESS_ALIGN));
    if cols.is_multiple_of(VALUES_PER_ACCESS) && aligned {
        RowPath::WarpPerRowVec8
    } else {
        RowPath::BlockPerRow
    }
}

/// The device address of a buffer, for [`choose`] (and to tell buffers apart).
pub(super) fn address<T>(gpu: &CudaBackend, data: &CudaSlice<T>) -> u64 {
    // The returned guard records a read event when streams are synchronized by cudarc; nothing
    // is read here, and the launch that follows records its own.
    let (address, _guard) = data.device_ptr(&gpu.stream);
    address
}

/// Launch geometry of `path` for `rows` rows of `cols` values.
pub(super) fn launch_config(
    op: &'static str,
    path: RowPath,
    rows: usize,
    cols: usize,
) -> OpResult<LaunchConfig> {
    match path {
        RowPath::WarpPerRowVec8 => warp_per_row(op, rows),
        RowPath::BlockPerRow => per_row(op, rows, cols),
    }
}

/// Launch geometry of the `*_vec8` kernels: blocks of (32, [`ROWS_PER_BLOCK`]) threads, one
/// warp per row, enough blocks for `rows`.
fn warp_per_row(op: &'static str, rows: usize) -> OpResult<LaunchConfig> {
    let rows = u32::try_from(int(op, "rows", rows)?).expect("i32 fits u32; this is a bug");
    Ok(LaunchConfig {
        grid_dim: (rows.div_ceil(ROWS_PER_BLOCK), 1, 1),
        block_dim: (32, ROWS_PER_BLOCK, 1),
        shared_mem_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_aligned_pieces_take_the_vector_path() {
        for cols in [8, 32, 1024, 4096] {
            assert_eq!(choose(cols, &[0x1000, 0x2100]), RowPath::WarpPerRowVec8);
        }
        for cols in [1, 36, 100, 1002] {
            assert_eq!(choose(cols, &[0x1000, 0x2100]), RowPath::BlockPerRow);
        }
        assert_eq!(choose(1024, &[0x1000, 0x2108]), RowPath::BlockPerRow);
    }

    #[test]
    fn every_row_gets_a_warp_or_a_block() {
        for (rows, blocks) in [(1, 1), (8, 1), (9, 2), (37, 5), (16384, 2048)] {
            let config = warp_per_row("test", rows).unwrap();
            assert_eq!(config.grid_dim, (blocks, 1, 1), "{rows} rows");
            assert_eq!(config.block_dim, (32, ROWS_PER_BLOCK, 1));
            assert!(blocks * ROWS_PER_BLOCK >= rows as u32);
        }
        assert!(warp_per_row("test", 1 << 31).is_err());
        let scalar = launch_config("test", RowPath::BlockPerRow, 37, 36).unwrap();
        assert_eq!(scalar.grid_dim, (37, 1, 1));
        assert_eq!(scalar.block_dim, (64, 1, 1));
    }
}
