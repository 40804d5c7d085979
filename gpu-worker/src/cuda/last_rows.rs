//! Launcher of `kernels/last_rows.cu` (CPU twin: `cpu/last_rows.rs`).

use half::bf16;

use super::tensor::TensorData;
use super::{CudaBackend, CudaLayout, CudaTensor, check_rows, int, per_row};
use crate::ops::OpResult;
use cudarc::driver::PushKernelArg;

/// The last row of every sequence, `(num_seqs, cols)`, in the input's element type.
pub(super) fn last_rows(
    gpu: &CudaBackend,
    x: &CudaTensor,
    layout: &CudaLayout,
) -> OpResult<CudaTensor> {
    const OP: &str = "last_rows";
    check_rows(OP, "x", x.rows, layout.host.num_rows())?;
    let (rows, cols) = (layout.host.num_seqs(), x.cols);
    let config = per_row(OP, rows, cols)?;
    let cols_arg = int(OP, "cols", cols)?;
    let last = layout.last_rows();
    let data = match &x.data {
        TensorData::F32(input) => {
            let mut out = gpu.alloc::<f32>(OP, rows * cols)?;
            // SAFETY: last_rows_f32(const float* src, const unsigned* rows, float* out, int
            // cols): src holds (layout rows, cols), every last row is inside the layout,
            // out holds (num_seqs, cols); one block per sequence.
            unsafe {
                gpu.stream
                    .launch_builder(&gpu.kernels.last_rows_f32)
                    .arg(input)
                    .arg(&last)
                    .arg(&mut out)
                    .arg(&cols_arg)
                    .launch(config)
            }?;
            TensorData::F32(out)
        }
        TensorData::Bf16(input) => {
            let mut out = gpu.alloc::<bf16>(OP, rows * cols)?;
            // SAFETY: as above, with bf16 elements (last_rows_bf16).
            unsafe {
                gpu.stream
                    .launch_builder(&gpu.kernels.last_rows_bf16)
                    .arg(input)
                    .arg(&last)
                    .arg(&mut out)
                    .arg(&cols_arg)
                    .launch(config)
            }?;
            TensorData::Bf16(out)
        }
    };
    Ok(CudaTensor { rows, cols, data })
}
