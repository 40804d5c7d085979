//! RMSNorm over rows, plain and fused with the residual add (CPU twin of `kernels/rms_norm.cu`).

use rayon::prelude::*;

use super::PARALLEL_MIN_ELEMENTS;

/// `out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight` for every row of width `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let cols = weight.len();
    let norm_row = |(x_row, out_row): (&[f32], &mut [f32])| norm_row(x_row, weight, eps, out_row);
    if x.len() < PARALLEL_MIN_ELEMENTS {
        x.chunks_exact(cols)
            .zip(out.chunks_exact_mut(cols))
            .for_each(norm_row);
    } else {
        x.par_chunks_exact(cols)
            .zip(out.par_chunks_exact_mut(cols))
            .for_each(norm_row);
    }
}

/// `residual += delta`, then `out = rms_norm(residual)`, row by row.
pub fn add_rms_norm(
    residual: &mut [f32],
    delta: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let cols = weight.len();
    let step = |((res_row, delta_row), out_row): ((&mut [f32], &[f32]), &mut [f32])| {
        for (r, d) in res_row.iter_mut().zip(delta_row) {
            *r += d;
        }
        norm_row(res_row, weight, eps, out_row);
    };
    if residual.len() < PARALLEL_MIN_ELEMENTS {
        residual
            .chunks_exact_mut(cols)
            .zip(delta.chunks_exact(cols))
            .zip(out.chunks_exact_mut(cols))
            .for_each(step);
    } else {
        residual
            .par_chunks_exact_mut(cols)
            .zip(delta.par_chunks_exact(cols))
            .zip(out.par_chunks_exact_mut(cols))
            .for_each(step);
    }
}

/// RMSNorm of one row (also used per head by the q/k norm).
pub fn norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let inv_rms = 1.0 / (sum_of_squares(x) / x.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv_rms);
    }
}

/// Sum of squares in eight lanes (vectorizes; f32 sums are otherwise kept in order).
pub fn sum_of_squares(x: &[f32]) -> f32 {
    super::dot(x, x)
}
