//! Launchers of `kernels/rms_norm.cu` (CPU twin: `cpu/rms_norm.rs`).
//!
//! # Which kernel runs
//! Each op has two kernels with the same arguments; the launcher picks one per launch
//! ([`row_path::choose`]):
//! - `rms_norm_vec8`, `add_rms_norm_vec8`, when the width is a multiple of 8 and every buffer
//!   is 16-byte aligned (always, for buffers from the allocator): one warp per row, 8 rows per
//!   block; each lane moves 8 values per access (two float4 of the f32 residual and weight,
//!   16 bytes of bf16), and the sum of squares is reduced with warp shuffles only.
//! - `rms_norm`, `add_rms_norm` otherwise: one block per row ([`super::per_row`]), scalar
//!   accesses, the sum reduced across the block.
//!
//! Both compute in f32 and round once to bf16 on output. The order of additions depends on the
//! width only, never on the row count, so a row's result does not depend on its batch; the
//! two kernels sum in different orders, which moves a result by f32 rounding only.

use half::bf16;

use super::row_path::{self, RowPath};
use super::tensor::TensorData;
use super::{CudaBackend, CudaTensor, CudaVector, check_cols, check_rows, int};
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
    let (rows, cols) = (x.rows, x.cols);
    let input = x.f32(OP, "x")?;
    check_cols(OP, "x", cols, weight.len())?;
    let rows_arg = int(OP, "rows", rows)?;
    let cols_arg = int(OP, "cols", cols)?;
    let mut out = gpu.alloc::<bf16>(OP, rows * cols)?;
    let path = row_path::choose(
        cols,
        &[
            row_path::address(gpu, input),
            row_path::address(gpu, &weight.data),
            row_path::address(gpu, &out),
        ],
    );
    let kernel = match path {
        RowPath::WarpPerRowVec8 => &gpu.kernels.rms_norm_vec8,
        RowPath::BlockPerRow => &gpu.kernels.rms_norm,
    };
    let config = row_path::launch_config(OP, path, rows, cols)?;
    // SAFETY: rms_norm[_vec8](const float* x, const float* w, bf16* out, int rows, int cols,
    // float eps): `x` and `out` hold (rows, cols), `w` holds cols (checked); the geometry is
    // the one of `path`, whose conditions `choose` checked (the vector kernel's: cols % 8 == 0
    // and 16-byte aligned buffers).
    unsafe {
        gpu.stream
            .launch_builder(kernel)
            .arg(input)
            .arg(&weight.data)
            .arg(&mut out)
            .arg(&rows_arg)
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
    let rows_arg = int(OP, "rows", rows)?;
    let cols_arg = int(OP, "cols", cols)?;
    let mut out = gpu.alloc::<bf16>(OP, rows * cols)?;
    let path = row_path::choose(
        cols,
        &[
            row_path::address(gpu, residual),
            row_path::address(gpu, delta),
            row_path::address(gpu, &weight.data),
            row_path::address(gpu, &out),
        ],
    );
    let kernel = match path {
        RowPath::WarpPerRowVec8 => &gpu.kernels.add_rms_norm_vec8,
        RowPath::BlockPerRow => &gpu.kernels.add_rms_norm,
    };
    let config = row_path::launch_config(OP, path, rows, cols)?;
    // SAFETY: add_rms_norm[_vec8](float* residual, const bf16* delta, const float* w,
    // bf16* out, int rows, int cols, float eps): residual, delta and out hold (rows, cols), w
    // holds cols (checked); the geometry is the one of `path`, whose conditions `choose`
    // checked (the vector kernel's: cols % 8 == 0 and 16-byte aligned buffers); the residual
    // is the only buffer written in place.
    unsafe {
        gpu.stream
            .launch_builder(kernel)
            .arg(residual)
            .arg(delta)
            .arg(&weight.data)
            .arg(&mut out)
            .arg(&rows_arg)
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
