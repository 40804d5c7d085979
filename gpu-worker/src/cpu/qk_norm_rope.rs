//! Per-head RMSNorm of q and k fused with the rotary embedding, in place on a fused q|k|v
//! tensor (CPU twin of `kernels/qk_norm_rope.cu`).

use rayon::prelude::*;

use super::PARALLEL_MIN_ELEMENTS;
use super::rms_norm::norm_row;
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
    pub fn rotate(&self, head: &mut [f32], position: usize) {
        let (lo, hi) = head.split_at_mut(self.half);
        let cos = &self.cos[position * self.half..][..self.half];
        let sin = &self.sin[position * self.half..][..self.half];
        for i in 0..self.half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = b * cos[i] + a * sin[i];
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
    let d = shape.head_dim;
    let normed_heads = shape.num_heads + shape.num_kv_heads;
    let step = |(row, &position): (&mut [f32], &u32)| {
        let mut scratch = vec![0.0; d];
        for (h, head) in row[..normed_heads * d].chunks_exact_mut(d).enumerate() {
            let weight = if h < shape.num_heads { q_norm } else { k_norm };
            norm_row(head, weight, eps, &mut scratch);
            head.copy_from_slice(&scratch);
            table.rotate(head, position as usize);
        }
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
