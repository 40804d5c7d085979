//! FP8 E4M3 numbers (the OCP "E4M3FN" format Hopper's tensor cores read) and the row-wise
//! quantization of the coming `--dtype fp8` path: weights per output channel, activations
//! per token, each row scaled so that its largest magnitude maps to E4M3's largest finite
//! value, 448. This is the reference the CUDA kernel `kernels/quantize_fp8.cu` is tested
//! against bit for bit, and what [`crate::cpu::fp8_twin`] computes with.
//!
//! E4M3: a sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, one NaN
//! pattern per sign (`S.1111.111`). Normal values `(1 + m/8) * 2^(e-7)` up to 448,
//! subnormals `m * 2^-9`. Conversion from f32 rounds to nearest, ties to even, and
//! saturates: magnitudes beyond 448 become 448 (cuBLASLt's and `__NV_SATFINITE`'s rule).

/// The largest finite E4M3 magnitude.
pub const E4M3_MAX: f32 = 448.0;

/// The E4M3 code nearest to `x` (ties to the even code), saturated to +-448; NaN gives NaN
/// (`0x7f`, with `x`'s sign).
pub fn e4m3_from_f32(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return sign | 0x7f;
    }
    let magnitude = x.abs();
    // Below the smallest normal, 2^-6: the code is the number of 2^-9 steps (8 steps is the
    // smallest normal's code, 0x08, so the carry needs no special case).
    if magnitude < f32::from_bits(0x3c80_0000) {
        // Exact: a power-of-two scaling of a value far from f32's limits.
        return sign | (magnitude * 512.0).round_ties_even() as u8;
    }
    // Normal: keep 3 of f32's 23 mantissa bits, rounding to nearest even on the bits cut
    // off (a carry moves into the exponent, as it should), then move the exponent's bias
    // from 127 to 7.
    let bits = magnitude.to_bits();
    let rounded = (bits + 0x7_ffff + ((bits >> 20) & 1)) >> 20;
    let code = rounded - ((127 - 7) << 3);
    sign | code.min(0x7e) as u8
}

/// The value of E4M3 code `code`.
pub fn e4m3_to_f32(code: u8) -> f32 {
    let exponent = i32::from((code >> 3) & 0xf);
    let mantissa = f32::from(code & 0x7);
    let magnitude = if exponent == 0xf && code & 0x7 == 0x7 {
        f32::NAN
    } else if exponent == 0 {
        mantissa * 2f32.powi(-9)
    } else {
        (8.0 + mantissa) * 2f32.powi(exponent - 10)
    };
    if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Whether a `(rows, cols)` weight matrix is held in FP8 by the FP8 path: both sides
/// multiples of 16, as cuBLASLt's FP8 products need for their leading dimensions (the
/// reranker's two-row yes/no head stays bf16). The CPU twin applies the same rule.
pub fn fits(rows: usize, cols: usize) -> bool {
    rows.is_multiple_of(16) && cols.is_multiple_of(16)
}

/// A row-major matrix in E4M3 with one f32 scale per row: value `(r, c)` is
/// `e4m3_to_f32(codes[r * cols + c]) * scales[r]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Rows {
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` codes.
    pub codes: Vec<u8>,
    /// One scale per row.
    pub scales: Vec<f32>,
}

impl Fp8Rows {
    /// Quantizes the rows of `values` (`cols` wide): each row is multiplied by
    /// `448 / amax` (its largest magnitude) and rounded to E4M3; its scale is `amax / 448`.
    /// An all-zero row gets scale 1. The CUDA kernel computes the same two quotients in f32.
    pub fn quantize(values: &[f32], cols: usize) -> Self {
        assert!(cols > 0 && values.len().is_multiple_of(cols), "whole rows");
        let rows = values.len() / cols;
        let mut codes = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(rows);
        for row in values.chunks_exact(cols) {
            let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let (scale, inverse) = row_scale(amax);
            codes.extend(row.iter().map(|&v| e4m3_from_f32(v * inverse)));
            scales.push(scale);
        }
        Self {
            cols,
            codes,
            scales,
        }
    }

    /// The values the codes and scales stand for, row-major f32.
    pub fn dequantize(&self) -> Vec<f32> {
        self.codes
            .chunks_exact(self.cols)
            .zip(&self.scales)
            .flat_map(|(row, &scale)| row.iter().map(move |&c| e4m3_to_f32(c) * scale))
            .collect()
    }
}

/// A row's scale and the factor its values are multiplied by before rounding, for a row
/// whose largest magnitude is `amax`: `(amax / 448, 448 / amax)`, or `(1, 1)` for a zero
/// row (and a row with no finite maximum, which the forward pass never produces).
fn row_scale(amax: f32) -> (f32, f32) {
    if amax > 0.0 && amax.is_finite() {
        (amax / E4M3_MAX, E4M3_MAX / amax)
    } else {
        (1.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest finite E4M3 code to `x` by search over every code, ties to the code with
    /// an even mantissa, saturating: the oracle for [`e4m3_from_f32`].
    fn nearest_code(x: f32) -> u8 {
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let magnitude = x.abs();
        let mut best = 0u8;
        for code in 0..=0x7eu8 {
            let (d, best_d) = (
                (e4m3_to_f32(code) - magnitude).abs(),
                (e4m3_to_f32(best) - magnitude).abs(),
            );
            if d < best_d || (d == best_d && code & 1 == 0) {
                best = code;
            }
        }
        sign | best
    }

    #[test]
    fn every_finite_code_decodes_and_encodes_back() {
        for code in (0..=0xffu8).filter(|c| c & 0x7f != 0x7f) {
            let value = e4m3_to_f32(code);
            assert!(value.is_finite(), "{code:#04x}");
            assert_eq!(e4m3_from_f32(value), code, "{code:#04x} = {value}");
        }
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6), "smallest normal");
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9), "smallest subnormal");
    }

    #[test]
    fn conversion_rounds_to_the_nearest_code_ties_to_even_and_saturates() {
        // Every value halfway between two neighbouring codes and a step either side of it,
        // then pseudo-random values over the whole range and beyond it.
        let mut values = Vec::new();
        for code in 0..0x7eu8 {
            let (lo, hi) = (e4m3_to_f32(code), e4m3_to_f32(code + 1));
            let mid = (lo + hi) / 2.0;
            values.extend([
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
            ]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let exponent = (state % 24) as i32 - 12;
            let mantissa = (state >> 40) as f32 / (1u64 << 24) as f32;
            values.push((1.0 + mantissa) * 2f32.powi(exponent));
        }
        values.extend([
            0.0,
            448.0,
            464.0,
            465.0,
            1e6,
            f32::MAX,
            f32::INFINITY,
            1e-30,
        ]);
        for x in values {
            assert_eq!(e4m3_from_f32(x), nearest_code(x), "{x:e}");
            assert_eq!(e4m3_from_f32(-x), nearest_code(-x), "{:e}", -x);
        }
        assert_eq!(e4m3_from_f32(f32::NAN) & 0x7f, 0x7f);
    }

    #[test]
    fn rows_are_scaled_to_their_largest_magnitude() {
        let values = [0.5, -2.0, 1.0, 0.0, 0.0, 0.0, 3.0, 1e-3, -3.0];
        let q = Fp8Rows::quantize(&values, 3);
        assert_eq!(q.scales, [2.0 / 448.0, 1.0, 3.0 / 448.0]);
        // Each row's largest magnitude is exactly 448 (code 0x7e) before scaling.
        assert_eq!(q.codes[1], 0x80 | 0x7e);
        assert_eq!(&q.codes[3..6], &[0, 0, 0]);
        assert_eq!((q.codes[6], q.codes[8]), (0x7e, 0xfe));
        let back = q.dequantize();
        for (got, want) in back.iter().zip(values) {
            // Three mantissa bits: within 1/16 of the value, or of the subnormal step.
            let step = (want.abs() / 16.0).max(3.0 / 448.0 * 2f32.powi(-9));
            assert!((got - want).abs() <= step, "{got} vs {want}");
        }
    }
}
