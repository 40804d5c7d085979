//! RMSNorm over rows, plain and fused with the residual add (CPU twin of `kernels/rms_norm.cu`).
//! Each row runs on 512-bit vectors where the CPU has them: the same operations in the same
//! order as the portable build's 128-bit ones, so the same values.

use rayon::prelude::*;

use super::{PARALLEL_MIN_ELEMENTS, wide};

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
        add_norm_row(res_row, delta_row, weight, eps, out_row)
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

/// RMSNorm of one row (also used by the pooling head).
pub fn norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has avx512f (`wide`).
        return unsafe { avx512::norm_row(x, weight, eps, out) };
    }
    norm_row_body(x, weight, eps, out)
}

/// `residual += delta`, then `out = rms_norm(residual)`, for one row.
fn add_norm_row(residual: &mut [f32], delta: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has avx512f (`wide`).
        return unsafe { avx512::add_norm_row(residual, delta, weight, eps, out) };
    }
    add_norm_row_body(residual, delta, weight, eps, out)
}

#[inline(always)]
fn norm_row_body(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let inv_rms = inverse_rms(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv_rms);
    }
}

#[inline(always)]
fn add_norm_row_body(
    residual: &mut [f32],
    delta: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    for (r, d) in residual.iter_mut().zip(delta) {
        *r += d;
    }
    norm_row_body(residual, weight, eps, out)
}

/// RMSNorm of one row in place: the values [`norm_row`] writes.
#[inline(always)]
pub(super) fn norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let inv_rms = inverse_rms(x, eps);
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = w * (*v * inv_rms);
    }
}

/// `1 / sqrt(mean(x^2) + eps)`.
#[inline(always)]
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_of_squares(x) / x.len() as f32 + eps).sqrt()
}

/// Sum of squares in eight lanes (vectorizes; f32 sums are otherwise kept in order).
#[inline(always)]
pub fn sum_of_squares(x: &[f32]) -> f32 {
    super::dot(x, x)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    /// [`super::norm_row_body`] compiled for 512-bit vectors.
    ///
    /// # Safety
    /// The CPU must support avx512f.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        super::norm_row_body(x, weight, eps, out)
    }

    /// [`super::add_norm_row_body`] compiled for 512-bit vectors.
    ///
    /// # Safety
    /// The CPU must support avx512f.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add_norm_row(
        residual: &mut [f32],
        delta: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) {
        super::add_norm_row_body(residual, delta, weight, eps, out)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn the_wide_rows_match_the_portable_ones() {
        if !wide() {
            println!("skipped: no avx512f");
            return;
        }
        let mut rng = StdRng::seed_from_u64(11);
        for cols in [1, 7, 16, 33, 128, 1024] {
            let mut values =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-4.0..4.0)).collect() };
            let (x, delta, weight) = (values(cols), values(cols), values(cols));
            let (mut portable, mut wide) = (vec![0.0; cols], vec![0.0; cols]);
            norm_row_body(&x, &weight, 1e-6, &mut portable);
            // SAFETY: the CPU has avx512f (checked above).
            unsafe { avx512::norm_row(&x, &weight, 1e-6, &mut wide) };
            assert_eq!(bits(&wide), bits(&portable), "norm of {cols}");
            let mut in_place = x.clone();
            norm_in_place(&mut in_place, &weight, 1e-6);
            assert_eq!(bits(&in_place), bits(&portable), "in place, {cols}");

            let (mut res_portable, mut res_wide) = (x.clone(), x);
            add_norm_row_body(&mut res_portable, &delta, &weight, 1e-6, &mut portable);
            // SAFETY: as above.
            unsafe { avx512::add_norm_row(&mut res_wide, &delta, &weight, 1e-6, &mut wide) };
            assert_eq!(bits(&res_wide), bits(&res_portable), "residual of {cols}");
            assert_eq!(bits(&wide), bits(&portable), "add and norm of {cols}");
        }
    }
}
