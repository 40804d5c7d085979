//! Launchers of `kernels/rms_norm.cu` (CPU twin: `cpu/rms_norm.rs`).

use half::bf16;

use super::tensor::TensorData;
use super::{CudaBackend, CudaTensor, CudaVector, check_cols, check_rows, int, per_row};
use crate::ops::OpResult;
use cudarc::driver::PushKernelArg;

/// RMSNorm of the f32 residual `x` into a bf16 tensor.
pub(super) fn rms_norm(
    gpu: &CudaBackend,
    x: &CudaTensor,
    weight: &CudaVector,
    eps: f32,
) -> OpResult<CudaTensor> {
    const OP: &str = "rms_norm";
    let input = x.f32(OP, "x")?;
    check_cols(OP, "x", x.cols, weight.len())?;
    let config = per_row(OP, x.rows, x.cols)?;
    let cols = int(OP, "cols", x.cols)?;
    let mut out = gpu.alloc::<bf16>(OP, x.rows * x.cols)?;
    // SAFETY: rms_norm(const float* x, const float* w, bf16* out, int cols, float eps): `x`
    // and `out` hold (rows, cols), `w` holds cols (checked); one block per row.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.rms_norm)
            .arg(input)
            .arg(&weight.data)
            .arg(&mut out)
            .arg(&cols)
            .arg(&eps)
            .launch(config)
    }?;
    Ok(CudaTensor {
        rows: x.rows,
        cols: x.cols,
        data: TensorData::Bf16(out),
    })
}

/// `residual += delta` (f32 += bf16), then RMSNorm of the residual into a bf16 tensor.
pub(super) fn add_rms_norm(
    gpu: &CudaBackend,
    residual: &mut CudaTensor,
    delta: &CudaTensor,
    weight: &CudaVector,
    eps: f32,
) -> OpResult<CudaTensor> {
    const OP: &str = "add_rms_norm";
    let (rows, cols) = (residual.rows, residual.cols);
    check_rows(OP, "delta", delta.rows, rows)?;
    check_cols(OP, "delta", delta.cols, cols)?;
    check_cols(OP, "residual", cols, weight.len())?;
    let delta = delta.bf16(OP, "delta")?;
    let residual = residual.f32_mut(OP, "residual")?;
    let config = per_row(OP, rows, cols)?;
    let cols_arg = int(OP, "cols", cols)?;
    let mut out = gpu.alloc::<bf16>(OP, rows * cols)?;
    // SAFETY: add_rms_norm(float* residual, const bf16* delta, const float* w, bf16* out,
    // int cols, float eps): residual, delta and out hold (rows, cols), w holds cols
    // (checked); one block per row; the residual is the only buffer written in place.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.add_rms_norm)
            .arg(residual)
            .arg(delta)
            .arg(&weight.data)
            .arg(&mut out)
            .arg(&cols_arg)
            .arg(&eps)
            .launch(config)
    }?;
    Ok(CudaTensor {
        rows,
        cols,
        data: TensorData::Bf16(out),
    })
}
