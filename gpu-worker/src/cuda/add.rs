//! Launcher of `kernels/add.cu` (CPU twin: `cpu/add.rs`). Like RMSNorm, the add has a
//! one-warp-per-row kernel with 16-byte accesses and a one-block-per-row scalar one, with the
//! same arguments, picked per launch by [`row_path::choose`] (see `rms_norm.rs`).

use super::row_path::{self, RowPath};
use super::{CudaBackend, CudaTensor, check_cols, check_rows, int};
use crate::ops::OpResult;
use cudarc::driver::PushKernelArg;

/// `residual += delta`: the f32 residual stream plus a bf16 product output.
pub(super) fn add(
    gpu: &CudaBackend,
    residual: &mut CudaTensor,
    delta: &CudaTensor,
) -> OpResult<()> {
    const OP: &str = "add";
    let (rows, cols) = (residual.rows, residual.cols);
    check_rows(OP, "delta", delta.rows, rows)?;
    check_cols(OP, "delta", delta.cols, cols)?;
    let delta = delta.bf16(OP, "delta")?;
    let residual = residual.f32_mut(OP, "residual")?;
    let rows_arg = int(OP, "rows", rows)?;
    let cols_arg = int(OP, "cols", cols)?;
    let path = row_path::choose(
        cols,
        &[
            row_path::address(gpu, residual),
            row_path::address(gpu, delta),
        ],
    );
    let kernel = match path {
        RowPath::WarpPerRowVec8 => &gpu.kernels.add_vec8,
        RowPath::BlockPerRow => &gpu.kernels.add,
    };
    let config = row_path::launch_config(OP, path, rows, cols)?;
    // SAFETY: add[_vec8](float* residual, const bf16* delta, int rows, int cols): both hold
    // (rows, cols) (checked); the geometry is the one of `path`, whose conditions `choose`
    // checked (the vector kernel's: cols % 8 == 0 and 16-byte aligned buffers).
    unsafe {
        gpu.stream
            .launch_builder(kernel)
            .arg(residual)
            .arg(delta)
            .arg(&rows_arg)
            .arg(&cols_arg)
            .launch(config)
    }?;
    Ok(())
}
