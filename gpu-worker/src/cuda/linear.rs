//! `x @ w^T` through cuBLAS: bf16 operands, f32 accumulation, bf16 output (CPU twin:
//! `cpu/linear.rs`). The fused q|k|v and gate|up matrices make one product each.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;

use super::tensor::{MatrixData, TensorData};
use super::{CudaBackend, CudaMatrix, CudaTensor, check_cols, int, linear_fp8};
use crate::ops::{OpError, OpResult};

/// `(rows, in) @ (out, in)^T = (rows, out)`: on bf16 weights through cuBLAS, on FP8 ones
/// through cuBLASLt ([`linear_fp8`]).
pub(super) fn linear(gpu: &CudaBackend, x: &CudaTensor, w: &CudaMatrix) -> OpResult<CudaTensor> {
    const OP: &str = "linear";
    let input = x.bf16(OP, "x")?;
    check_cols(OP, "x", x.cols, w.cols)?;
    let weights = match &w.data {
        MatrixData::Bf16(weights) => weights,
        MatrixData::Fp8 { codes, scales } => {
            return linear_fp8::linear_fp8(gpu, x, codes, scales, w.rows);
        }
    };
    let mut out = gpu.alloc::<bf16>(OP, x.rows * w.rows)?;
    product(gpu, input, x.rows, weights, (w.rows, w.cols), &mut out)?;
    Ok(CudaTensor {
        rows: x.rows,
        cols: w.rows,
        data: TensorData::Bf16(out),
    })
}

/// `out = x @ w^T` for `x` holding `(rows, in)` and `out` `(rows, out)` bf16, and bf16
/// weights `w` of `shape` `(out, in)`: the product of [`linear`], on any device buffers of
/// those sizes (rows of larger tensors too). Refuses buffers of other sizes.
pub(super) fn product(
    gpu: &CudaBackend,
    x: &impl DevicePtr<bf16>,
    rows: usize,
    w: &CudaSlice<bf16>,
    shape: (usize, usize),
    out: &mut impl DevicePtrMut<bf16>,
) -> OpResult<()> {
    const OP: &str = "linear";
    let (out_features, in_features) = shape;
    if x.len() != rows * in_features
        || out.len() != rows * out_features
        || w.len() != out_features * in_features
    {
        return Err(super::shape_error(
            OP,
            format!(
                "buffers of {}, {} and {} values cannot hold x ({rows}, {in_features}), w \
                 ({out_features}, {in_features}) and out ({rows}, {out_features})",
                x.len(),
                w.len(),
                out.len()
            ),
        ));
    }
    // cuBLAS is column-major: a row-major (r, c) matrix is a column-major (c, r) one. So
    // out^T (out, rows) = w (out, in; read transposed from its column-major (in, out) view)
    // times x^T (in, rows).
    let config = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: int(OP, "out features", out_features)?,
        n: int(OP, "rows", rows)?,
        k: int(OP, "in features", in_features)?,
        alpha: bf16::ONE,
        lda: int(OP, "in features", in_features)?,
        ldb: int(OP, "in features", in_features)?,
        beta: bf16::ZERO,
        ldc: int(OP, "out features", out_features)?,
    };
    // cuBLAS calls do not make the context current themselves.
    gpu.ctx.bind_to_thread()?;
    // SAFETY: with the dimensions above, cuBLAS reads w as (in x out, ld in) = out * in
    // elements, x as (in x rows, ld in) = rows * in elements, and writes out as
    // (out x rows, ld out) = rows * out elements: exactly the three buffers' lengths
    // (checked above).
    unsafe { gpu.blas.gemm(config, w, x, out) }
        .map_err(|e| OpError::Device(format!("cuBLAS bf16 product: {e}")))
}
