//! Per-head RMSNorm of q and k fused with the rotary embedding, in place on a fused q|k|v
//! tensor (CPU twin of `kernels/qk_norm_rope.cu`).

use rayon::prelude::*;

use super::PARALLEL_MIN_ELEMENTS;
use super::rms_norm::norm_in_place;
use super::wide;
use crate::ops::AttentionShape;

/// Rotary tables for positions `0..len`: `cos[p * half + i]`, `sin[..]` with angle
/// `p * inv_freq[i]`, `inv_freq[i] = 1 / theta^(2i / head_dim)`, all in f32 as transformers
/// computes them.
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Tables for positions `0..len` of heads `head_dim` wide.
    pub fn new(len: usize, head_dim: usize, theta: f32) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in 0..len {
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates one head in place at `position` (rotate-half layout: element `i` pairs with
    /// element `i + head_dim / 2`).
    #[inline(always)]
    pub fn rotate(&self, head: &mut [f32], position: usize) {
        let (lo, hi) = head.split_at_mut(self.half);
        let cos = &self.cos[position * self.half..][..self.half];
        let sin = &self.sin[position * self.half..][..self.half];
        for (((lo, hi), &cos), &sin) in lo.iter_mut().zip(hi).zip(cos).zip(sin) {
            let (a, b) = (*lo, *hi);
            *lo = a * cos - b * sin;
            *hi = b * cos + a * sin;
        }
    }
}

/// On each row of `qkv` (`shape.qkv_width()` wide), normalizes every q head with `q_norm`
/// and every k head with `k_norm`, then rotates both by the row's position.
pub fn qk_norm_rope(
    qkv: &mut [f32],
    q_norm: &[f32],
    k_norm: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    eps: f32,
    table: &RopeTable,
) {
    let step = |(row, &position): (&mut [f32], &u32)| {
        let row = Row {
            row,
            position: position as usize,
        };
        #[cfg(target_arch = "x86_64")]
        if wide() {
            // SAFETY: the CPU has avx512f (`wide`).
            return unsafe { norm_rope_row_avx512(row, q_norm, k_norm, shape, eps, table) };
        }
        norm_rope_row(row, q_norm, k_norm, shape, eps, table)
    };
    if qkv.len() < PARALLEL_MIN_ELEMENTS {
        qkv.chunks_exact_mut(shape.qkv_width())
            .zip(positions)
            .for_each(step);
    } else {
        qkv.par_chunks_exact_mut(shape.qkv_width())
            .zip(positions.par_iter())
            .for_each(step);
    }
}

/// One row of the fused tensor and its position in its sequence.
struct Row<'a> {
    row: &'a mut [f32],
    position: usize,
}

/// [`qk_norm_rope`] on one row.
#[inline(always)]
fn norm_rope_row(
    Row { row, position }: Row<'_>,
    q_norm: &[f32],
    k_norm: &[f32],
    shape: AttentionShape,
    eps: f32,
    table: &RopeTable,
) {
    let d = shape.head_dim;
    let normed_heads = shape.num_heads + shape.num_kv_heads;
    for (h, head) in row[..normed_heads * d].chunks_exact_mut(d).enumerate() {
        let weight = if h < shape.num_heads { q_norm } else { k_norm };
        norm_in_place(head, weight, eps);
        table.rotate(head, position);
    }
}

/// [`norm_rope_row`] compiled for 512-bit vectors (the same operations in the same order as
/// the portable build, so the same values).
///
/// # Safety
/// The CPU must support avx512f.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn norm_rope_row_avx512(
    row: Row<'_>,
    q_norm: &[f32],
    k_norm: &[f32],
    shape: AttentionShape,
    eps: f32,
    table: &RopeTable,
) {
    norm_rope_row(row, q_norm, k_norm, shape, eps, table)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn the_wide_row_matches_the_portable_one() {
        if !wide() {
            println!("skipped: no avx512f");
            return;
        }
        let mut rng = StdRng::seed_from_u64(13);
        for (heads, kv_heads, d) in [(2, 1, 16), (16, 8, 128), (4, 2, 6)] {
            let shape = AttentionShape {
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim: d,
            };
            let table = RopeTable::new(40, d, 1_000_000.0);
            let mut values =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-3.0..3.0)).collect() };
            let (q_norm, k_norm, row) = (values(d), values(d), values(shape.qkv_width()));
            let (mut portable, mut wide) = (row.clone(), row);
            fn at(row: &mut [f32]) -> Row<'_> {
                Row { row, position: 37 }
            }
            norm_rope_row(at(&mut portable), &q_norm, &k_norm, shape, 1e-6, &table);
            // SAFETY: the CPU has avx512f (checked above).
            unsafe { norm_rope_row_avx512(at(&mut wide), &q_norm, &k_norm, shape, 1e-6, &table) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&wide), bits(&portable), "{heads} heads of {d}");
        }
    }
}
