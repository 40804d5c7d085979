//! Causal grouped-query attention over a packed variable-length batch (CPU twin of
//! `kernels/attention.cu`). Softmax in f32, one query row at a time: memory is one score
//! row per thread, never a `T x T` matrix.

use rayon::prelude::*;

use super::dot;
use crate::ops::AttentionShape;

/// Attention of the q heads of `q` (rows grouped by `cu_q`) over the k/v heads of `kv`
/// (rows grouped by `cu_k`), both fused q|k|v tensors `shape.qkv_width()` wide. Causal,
/// bottom-right aligned: query row `i` of a sequence with `q_len` rows sees keys
/// `0..=k_len - q_len + i`. Returns `(q rows, num_heads * head_dim)`.
pub fn attention(
    q: &[f32],
    kv: &[f32],
    cu_q: &[u32],
    cu_k: &[u32],
    shape: AttentionShape,
) -> Vec<f32> {
    let width = shape.qkv_width();
    let d = shape.head_dim;
    let out_width = shape.q_width();
    let group = shape.num_heads / shape.num_kv_heads;
    let k_offset = shape.num_heads * d;
    let v_offset = k_offset + shape.num_kv_heads * d;
    let scale = shape.scale();
    let q_rows = q.len() / width;
    let mut out = vec![0.0; q_rows * out_width];

    // Which sequence each query row belongs to.
    let seq_of_row: Vec<usize> = (0..cu_q.len() - 1)
        .flat_map(|s| std::iter::repeat_n(s, (cu_q[s + 1] - cu_q[s]) as usize))
        .collect();

    out.par_chunks_exact_mut(out_width)
        .enumerate()
        .for_each(|(row, out_row)| {
            let s = seq_of_row[row];
            let (q_start, q_len) = (cu_q[s] as usize, (cu_q[s + 1] - cu_q[s]) as usize);
            let (k_start, k_len) = (cu_k[s] as usize, (cu_k[s + 1] - cu_k[s]) as usize);
            let visible = k_len - q_len + (row - q_start) + 1;
            let q_row = &q[row * width..][..width];
            let mut scores = vec![0.0f32; visible];
            for h in 0..shape.num_heads {
                let kv_head = h / group;
                let q_head = &q_row[h * d..][..d];
                let mut max = f32::NEG_INFINITY;
                for (j, score) in scores.iter_mut().enumerate() {
                    let k_row = &kv[(k_start + j) * width + k_offset + kv_head * d..][..d];
                    *score = dot(q_head, k_row) * scale;
                    max = max.max(*score);
                }
                let mut sum = 0.0;
                for score in scores.iter_mut() {
                    *score = (*score - max).exp();
                    sum += *score;
                }
                let acc = &mut out_row[h * d..][..d];
                for (j, &p) in scores.iter().enumerate() {
                    let v_row = &kv[(k_start + j) * width + v_offset + kv_head * d..][..d];
                    for (a, &v) in acc.iter_mut().zip(v_row) {
                        *a += p * v;
                    }
                }
                let inv = 1.0 / sum;
                acc.iter_mut().for_each(|a| *a *= inv);
            }
        });
    out
}
