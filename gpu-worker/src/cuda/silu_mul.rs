//! Launcher of `kernels/silu_mul.cu` (CPU twin: `cpu/silu_mul.rs`).

use half::bf16;

use super::tensor::TensorData;
use super::{CudaBackend, CudaTensor, int, per_row, shape_error};
use crate::ops::OpResult;
use cudarc::driver::PushKernelArg;

/// SwiGLU of a fused gate|up tensor `(rows, 2n)` into `(rows, n)`, bf16.
pub(super) fn silu_mul(gpu: &CudaBackend, gate_up: &CudaTensor) -> OpResult<CudaTensor> {
    const OP: &str = "silu_mul";
    if !gate_up.cols.is_multiple_of(2) {
        return Err(shape_error(
            OP,
            format!("gate|up has an odd width {}", gate_up.cols),
        ));
    }
    let input = gate_up.bf16(OP, "gate|up")?;
    let (rows, n) = (gate_up.rows, gate_up.cols / 2);
    let config = per_row(OP, rows, n)?;
    let n_arg = int(OP, "n", n)?;
    let mut out = gpu.alloc::<bf16>(OP, rows * n)?;
    // SAFETY: silu_mul(const bf16* gate_up, bf16* out, int n): gate_up holds (rows, 2n),
    // out (rows, n); one block per row.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.silu_mul)
            .arg(input)
            .arg(&mut out)
            .arg(&n_arg)
            .launch(config)
    }?;
    Ok(CudaTensor {
        rows,
        cols: n,
        data: TensorData::Bf16(out),
    })
}
