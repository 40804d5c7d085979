//! Pooling head: final RMSNorm of the last tokens, Matryoshka truncation and L2
//! normalization (CPU twin of `kernels/pool.cu`).

use super::rms_norm::norm_row;

/// For each row of `last` (`norm.len()` wide): RMSNorm, keep the first `dims[r]` values,
/// divide by their L2 norm (at least 1e-12, as `torch.nn.functional.normalize`).
pub fn pool(last: &[f32], norm: &[f32], eps: f32, dims: &[usize]) -> Vec<Vec<f32>> {
    let cols = norm.len();
    let mut normed = vec![0.0; cols];
    last.chunks_exact(cols)
        .zip(dims)
        .map(|(row, &d)| {
            norm_row(row, norm, eps, &mut normed);
            let kept = &normed[..d];
            let length = super::dot(kept, kept).sqrt().max(1e-12);
            kept.iter().map(|v| v / length).collect()
        })
        .collect()
}
