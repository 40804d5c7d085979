//! Launcher of `kernels/pool.cu` (CPU twin: `cpu/pool.rs`).

use super::{CudaBackend, CudaTensor, CudaVector, check_cols, int, per_row, shape_error};
use crate::ops::OpResult;
use cudarc::driver::PushKernelArg;

/// Final RMSNorm of the f32 last rows, truncation of row `r` to `dims[r]` values, L2
/// normalization when `normalize[r]`; the vectors come back to the host, packed back to back
/// on the device so that only the values asked for are copied.
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
    let total: usize = dims.iter().sum();
    if u32::try_from(total).is_err() {
        return Err(shape_error(OP, format!("{total} output values exceed u32")));
    }
    // Each row's size, its normalize flag, and where its values start in the packed output
    // (below `total`, so within u32): one host-to-device copy.
    let starts = dims.iter().scan(0, |start, &d| {
        let this = *start;
        *start += d;
        Some(this as u32)
    });
    let options: Vec<u32> = dims
        .iter()
        .map(|&d| d as u32)
        .chain(normalize.iter().map(|&n| u32::from(n)))
        .chain(starts)
        .collect();
    let options = gpu.upload(OP, &options)?;
    let rows = last.rows;
    let (kept, flags, offsets) = (
        options.slice(..rows),
        options.slice(rows..2 * rows),
        options.slice(2 * rows..),
    );
    let mut out = gpu.alloc::<f32>(OP, total)?;
    // SAFETY: pool(const float* last, const float* w, const unsigned* dims, const unsigned*
    // normalize, const unsigned* offsets, float* out, int cols, float eps): last holds (rows,
    // cols), w cols, dims one value in 1..=cols per row, normalize one flag per row, offsets
    // each row's start in out, the prefix sums of dims, and out their total (checked, below
    // u32); one block per row, which writes out[offsets[r]..offsets[r] + dims[r]].
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.pool)
            .arg(input)
            .arg(&norm.data)
            .arg(&kept)
            .arg(&flags)
            .arg(&offsets)
            .arg(&mut out)
            .arg(&cols)
            .arg(&eps)
            .launch(config)
    }?;
    let host = gpu.stream.clone_dtoh(&out)?;
    let mut rest = host.as_slice();
    Ok(dims
        .iter()
        .map(|&d| {
            let (row, after) = rest.split_at(d);
            rest = after;
            row.to_vec()
        })
        .collect())
}
