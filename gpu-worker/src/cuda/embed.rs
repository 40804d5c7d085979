//! Launcher of `kernels/embed.cu` (CPU twin: `cpu/embed.rs`).

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::tensor::TensorData;
use super::{CudaBackend, CudaTable, CudaTensor, int, per_row, shape_error};
use crate::ops::OpResult;

/// Rows `token_ids` of the table, as the f32 residual stream `(ids, hidden)`.
pub(super) fn embed(
    gpu: &CudaBackend,
    table: &CudaTable,
    token_ids: &[u32],
) -> OpResult<CudaTensor> {
    check_ids(table, token_ids)?;
    gather(gpu, table, &gpu.upload("embed", token_ids)?)
}

/// Refuses token ids outside the table, which [`gather`] must never see.
pub(super) fn check_ids(table: &CudaTable, token_ids: &[u32]) -> OpResult<()> {
    match token_ids.iter().find(|&&id| id as usize >= table.rows) {
        Some(bad) => Err(shape_error(
            "embed",
            format!("token id {bad} outside the table of {} rows", table.rows),
        )),
        None => Ok(()),
    }
}

/// [`embed`] of token ids already on the device, every one below the table's rows (the
/// caller checked them on the host): what a recorded pass replays (`graphs`).
pub(super) fn gather(
    gpu: &CudaBackend,
    table: &CudaTable,
    ids: &CudaSlice<u32>,
) -> OpResult<CudaTensor> {
    const OP: &str = "embed";
    let (rows, cols) = (ids.len(), table.cols);
    let config = per_row(OP, rows, cols)?;
    let cols_arg = int(OP, "hidden", cols)?;
    let mut out = gpu.alloc::<f32>(OP, rows * cols)?;
    // SAFETY: embed(const bf16* table, const unsigned* ids, float* out, int cols): the table
    // holds (vocab, cols) bf16, every id is below vocab (checked by the callers), `out` holds
    // (rows, cols) f32 and gets one block per row.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.embed)
            .arg(&table.data)
            .arg(ids)
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
