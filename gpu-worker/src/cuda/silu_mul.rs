//! Launcher of `kernels/silu_mul.cu` (CPU twin: `cpu/silu_mul.rs`).

use half::bf16;

use super::row_path::{self, RowPath};
use super::tensor::TensorData;
use super::{CudaBackend, CudaTensor, int, shape_error};
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
    let rows_arg = int(OP, "rows", rows)?;
    let n_arg = int(OP, "n", n)?;
    let mut out = gpu.alloc::<bf16>(OP, rows * n)?;
    // Rows of gate|up are 2n wide: with n % 8 == 0 both halves start 16-byte aligned.
    let path = row_path::choose(
        n,
        &[row_path::address(gpu, input), row_path::address(gpu, &out)],
    );
    let kernel = match path {
        RowPath::WarpPerRowVec8 => &gpu.kernels.silu_mul_vec8,
        RowPath::BlockPerRow => &gpu.kernels.silu_mul,
    };
    let config = row_path::launch_config(OP, path, rows, n)?;
    // SAFETY: silu_mul[_vec8](const bf16* gate_up, bf16* out, int rows, int n): gate_up holds
    // (rows, 2n), out (rows, n); the geometry is the one of `path`, whose conditions `choose`
    // checked (the vector kernel's: n % 8 == 0 and 16-byte aligned buffers).
    unsafe {
        gpu.stream
            .launch_builder(kernel)
            .arg(input)
            .arg(&mut out)
            .arg(&rows_arg)
            .arg(&n_arg)
            .launch(config)
    }?;
    Ok(CudaTensor {
        rows,
        cols: n,
        data: TensorData::Bf16(out),
    })
}
