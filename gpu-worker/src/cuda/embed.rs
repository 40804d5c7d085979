//! Launcher of `kernels/embed.cu` (CPU twin: `cpu/embed.rs`).

use super::tensor::TensorData;
use super::{CudaBackend, CudaTable, CudaTensor, int, per_row, shape_error};
use crate::ops::OpResult;
use cudarc::driver::PushKernelArg;

/// Rows `token_ids` of the table, as the f32 residual stream `(ids, hidden)`.
pub(super) fn embed(
    gpu: &CudaBackend,
    table: &CudaTable,
    token_ids: &[u32],
) -> OpResult<CudaTensor> {
    const OP: &str = "embed";
    if let Some(bad) = token_ids.iter().find(|&&id| id as usize >= table.rows) {
        return Err(shape_error(
            OP,
            format!("token id {bad} outside the table of {} rows", table.rows),
        ));
    }
    let (rows, cols) = (token_ids.len(), table.cols);
    let config = per_row(OP, rows, cols)?;
    let cols_arg = int(OP, "hidden", cols)?;
    let ids = gpu.upload(OP, token_ids)?;
    let mut out = gpu.alloc::<f32>(OP, rows * cols)?;
    // SAFETY: embed(const bf16* table, const unsigned* ids, float* out, int cols): the table
    // holds (vocab, cols) bf16, every id was checked to be below vocab, `out` holds
    // (rows, cols) f32 and gets one block per row.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.embed)
            .arg(&table.data)
            .arg(&ids)
            .arg(&mut out)
            .arg(&cols_arg)
            .launch(config)
    }?;
    Ok(CudaTensor {
        rows,
        cols,
        data: TensorData::F32(out),
    })
}
