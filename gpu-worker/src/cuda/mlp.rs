//! The MLP in token chunks ([`super::CudaOptions::mlp_chunk_tokens`]): gate|up, SwiGLU and
//! down run chunk by chunk, so that a chunk's gate|up output and SwiGLU values (on the 0.6B
//! shape, 18 KiB a token: 36 MiB for 2,048 tokens) can stay in the card's L2 cache between the
//! products instead of going through HBM, at the price of smaller products that read the
//! weights once per chunk. Issue 20's "SwiGLU kept out of HBM", to be measured against the
//! whole-batch MLP (`deploy/gpu/check.sh`); each row's values are those of the whole-batch MLP
//! up to cuBLAS choosing another algorithm for another row count.

use half::bf16;

use super::tensor::{MatrixData, TensorData};
use super::{CudaBackend, CudaMatrix, CudaTensor, check_cols, linear, silu_mul};
use crate::ops::{OpResult, Ops};

/// `linear(silu_mul(linear(x, gate_up)), down)` over `chunk` rows of `x` at a time. FP8
/// weights run whole (their products take whole tensors).
pub(super) fn mlp_chunked(
    gpu: &CudaBackend,
    x: &CudaTensor,
    gate_up: &CudaMatrix,
    down: &CudaMatrix,
    chunk: usize,
) -> OpResult<CudaTensor> {
    const OP: &str = "mlp";
    let (MatrixData::Bf16(gate_up_w), MatrixData::Bf16(down_w)) = (&gate_up.data, &down.data)
    else {
        return gpu.linear(&gpu.linear_silu_mul(x, gate_up)?, down);
    };
    let input = x.bf16(OP, "x")?;
    check_cols(OP, "x", x.cols, gate_up.cols)?;
    check_cols(OP, "down", down.cols, gate_up.rows / 2)?;
    let mut out = gpu.alloc::<bf16>(OP, x.rows * down.rows)?;
    for start in (0..x.rows).step_by(chunk.max(1)) {
        let rows = chunk.min(x.rows - start);
        let x_rows = input.slice(start * x.cols..(start + rows) * x.cols);
        // A fresh buffer per chunk: the stream-ordered allocator hands back the one the
        // previous chunk freed, whose lines are still in L2.
        let mut both = gpu.alloc::<bf16>(OP, rows * gate_up.rows)?;
        linear::product(
            gpu,
            &x_rows,
            rows,
            gate_up_w,
            (gate_up.rows, gate_up.cols),
            &mut both,
        )?;
        let both = CudaTensor {
            rows,
            cols: gate_up.rows,
            data: TensorData::Bf16(both),
        };
        let act = silu_mul::silu_mul(gpu, &both)?;
        let mut out_rows = out.slice_mut(start * down.rows..(start + rows) * down.rows);
        linear::product(
            gpu,
            act.bf16(OP, "SwiGLU")?,
            rows,
            down_w,
            (down.rows, down.cols),
            &mut out_rows,
        )?;
    }
    Ok(CudaTensor {
        rows: x.rows,
        cols: down.rows,
        data: TensorData::Bf16(out),
    })
}
