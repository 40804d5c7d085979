//! SwiGLU activation on a fused gate|up tensor (CPU twin of `kernels/silu_mul.cu`).

use rayon::prelude::*;

use super::PARALLEL_MIN_ELEMENTS;
use super::exp::exp;

/// For each row of `gate_up` (`2 * n` wide: gate then up), `out = silu(gate) * up` (`n` wide).
pub fn silu_mul(gate_up: &[f32], n: usize, out: &mut [f32]) {
    let step = |(row, out_row): (&[f32], &mut [f32])| {
        let (gate, up) = row.split_at(n);
        for ((o, &g), &u) in out_row.iter_mut().zip(gate).zip(up) {
            *o = silu(g) * u;
        }
    };
    if out.len() < PARALLEL_MIN_ELEMENTS {
        gate_up
            .chunks_exact(2 * n)
            .zip(out.chunks_exact_mut(n))
            .for_each(step);
    } else {
        gate_up
            .par_chunks_exact(2 * n)
            .zip(out.par_chunks_exact_mut(n))
            .for_each(step);
    }
}

/// `silu(g) = g * sigmoid(g)`.
#[inline(always)]
pub fn silu(g: f32) -> f32 {
    g / (1.0 + exp(-g))
}
