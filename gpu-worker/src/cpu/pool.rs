//! Pooling head: final RMSNorm of the last tokens, Matryoshka truncation and, where asked, L2
//! normalization (CPU twin of `kernels/pool.cu`).

use super::rms_norm::norm_row;

/// For each row of `last` (`norm.len()` wide): RMSNorm, keep the first `dims[r]` values and,
/// when `normalize[r]`, divide them by their L2 norm (at least 1e-12, as
/// `torch.nn.functional.normalize`); otherwise they are returned as they are.
pub fn pool(
    last: &[f32],
    norm: &[f32],
    eps: f32,
    dims: &[usize],
    normalize: &[bool],
) -> Vec<Vec<f32>> {
    let cols = norm.len();
    let mut normed = vec![0.0; cols];
    last.chunks_exact(cols)
        .zip(dims.iter().zip(normalize))
        .map(|(row, (&d, &normalize))| {
            norm_row(row, norm, eps, &mut normed);
            let kept = &normed[..d];
            if !normalize {
                return kept.to_vec();
            }
            let length = super::dot(kept, kept).sqrt().max(1e-12);
            kept.iter().map(|v| v / length).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rows of 4; a unit norm weight and `eps` 0, so the RMSNorm of a row is the row
    /// divided by its root mean square.
    fn rows() -> (Vec<f32>, Vec<f32>) {
        (vec![1.0, 2.0, 3.0, 4.0, -2.0, 0.0, 2.0, 0.0], vec![1.0; 4])
    }

    #[test]
    fn an_unnormalized_row_is_the_final_norm_output_cut_to_its_dims() {
        let (last, norm) = rows();
        let out = pool(&last, &norm, 0.0, &[4, 2], &[false, false]);
        let rms0 = (30.0f32 / 4.0).sqrt();
        let want0: Vec<f32> = [1.0, 2.0, 3.0, 4.0].iter().map(|v| v / rms0).collect();
        // Row 1: mean square (4 + 4) / 4 = 2; cut to 2 values, not rescaled.
        let want1 = [-2.0 / 2.0f32.sqrt(), 0.0];
        for (got, want) in out.iter().zip([&want0[..], &want1[..]]) {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn a_batch_may_mix_normalized_and_unnormalized_rows() {
        let (last, norm) = rows();
        let mixed = pool(&last, &norm, 0.0, &[2, 3], &[true, false]);
        let raw = pool(&last, &norm, 0.0, &[2, 3], &[false, false]);
        let unit = pool(&last, &norm, 0.0, &[2, 3], &[true, true]);
        assert_eq!(mixed[0], unit[0]);
        assert_eq!(mixed[1], raw[1]);
        // The normalized row is the raw cut divided by its length (Matryoshka: cut first).
        let length = raw[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        for (n, r) in mixed[0].iter().zip(&raw[0]) {
            assert!((n - r / length).abs() < 1e-6, "{n} vs {}", r / length);
        }
        let unit_length = mixed[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((unit_length - 1.0).abs() < 1e-6);
        assert!(raw[1].iter().map(|v| v * v).sum::<f32>().sqrt() > 1.1);
    }
}
