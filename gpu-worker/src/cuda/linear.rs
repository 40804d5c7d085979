//! `x @ w^T` through cuBLAS: bf16 operands, f32 accumulation, bf16 output (CPU twin:
//! `cpu/linear.rs`). The fused q|k|v and gate|up matrices make one product each.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
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
    // cuBLAS is column-major: a row-major (r, c) matrix is a column-major (c, r) one. So
    // out^T (out, rows) = w (out, in; read transposed from its column-major (in, out) view)
    // times x^T (in, rows).
    let config = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: int(OP, "out features", w.rows)?,
        n: int(OP, "rows", x.rows)?,
        k: int(OP, "in features", w.cols)?,
        alpha: bf16::ONE,
        lda: int(OP, "in features", w.cols)?,
        ldb: int(OP, "in features", w.cols)?,
        beta: bf16::ZERO,
        ldc: int(OP, "out features", w.rows)?,
    };
    let mut out = gpu.alloc::<bf16>(OP, x.rows * w.rows)?;
    // cuBLAS calls do not make the context current themselves.
    gpu.ctx.bind_to_thread()?;
    // SAFETY: with the dimensions above, cuBLAS reads w as (in x out, ld in) = out * in
    // elements, x as (in x rows, ld in) = rows * in elements, and writes out as
    // (out x rows, ld out) = rows * out elements: exactly the three buffers' lengths.
    unsafe { gpu.blas.gemm(config, weights, input, &mut out) }
        .map_err(|e| OpError::Device(format!("cuBLAS bf16 product: {e}")))?;
    Ok(CudaTensor {
        rows: x.rows,
        cols: w.rows,
        data: TensorData::Bf16(out),
    })
}
