//! Launcher of `kernels/pool.cu` (CPU twin: `cpu/pool.rs`).

use super::{CudaBackend, CudaTensor, CudaVector, check_cols, int, per_row, shape_error};
use crate::ops::OpResult;
use cudarc::driver::PushKernelArg;

/// Final RMSNorm of the f32 last rows, truncation of row `r` to `dims[r]` values, L2
/// normalization when `normalize[r]`; the vectors come back to the host.
pub(super) fn pool(
    gpu: &CudaBackend,
    last: &CudaTensor,
    norm: &CudaVector,
    eps: f32,
    dims: &[usize],
    normalize: &[bool],
) -> OpResult<Vec<Vec<f32>>> {
    const OP: &str = "pool";
    let input = last.f32(OP, "last")?;
    check_cols(OP, "last", last.cols, norm.len())?;
    if dims.len() != last.rows
        || normalize.len() != last.rows
        || dims.iter().any(|&d| d == 0 || d > last.cols)
    {
        return Err(shape_error(
            OP,
            format!(
                "output sizes {dims:?} and {} normalize flags for {} rows of {}",
                normalize.len(),
                last.rows,
                last.cols
            ),
        ));
    }
    let config = per_row(OP, last.rows, last.cols)?;
    let cols = int(OP, "cols", last.cols)?;
    // Each row's size, then its normalize flag: one host-to-device copy.
    let options: Vec<u32> = dims
        .iter()
        .map(|&d| d as u32)
        .chain(normalize.iter().map(|&n| u32::from(n)))
        .collect();
    let options = gpu.upload(OP, &options)?;
    let (kept, flags) = (options.slice(..last.rows), options.slice(last.rows..));
    let mut out = gpu.alloc::<f32>(OP, last.rows * last.cols)?;
    // SAFETY: pool(const float* last, const float* w, const unsigned* dims, const unsigned*
    // normalize, float* out, int cols, float eps): last and out hold (rows, cols), w holds
    // cols, dims one value in 1..=cols per row and normalize one flag per row (checked); one
    // block per row.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.pool)
            .arg(input)
            .arg(&norm.data)
            .arg(&kept)
            .arg(&flags)
            .arg(&mut out)
            .arg(&cols)
            .arg(&eps)
            .launch(config)
    }?;
    // Only the first dims[r] values of row r were written.
    let host = gpu.stream.clone_dtoh(&out)?;
    Ok(host
        .chunks_exact(last.cols)
        .zip(dims)
        .map(|(row, &d)| row[..d].to_vec())
        .collect())
}
