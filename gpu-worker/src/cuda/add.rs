//! Launcher of `kernels/add.cu` (CPU twin: `cpu/add.rs`).

use super::{CudaBackend, CudaTensor, check_cols, check_rows, int, per_row};
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
    let config = per_row(OP, rows, cols)?;
    let cols_arg = int(OP, "cols", cols)?;
    // SAFETY: add(float* residual, const bf16* delta, int cols): both hold (rows, cols)
    // (checked); one block per row.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.add)
            .arg(residual)
            .arg(delta)
            .arg(&cols_arg)
            .launch(config)
    }?;
    Ok(())
}
