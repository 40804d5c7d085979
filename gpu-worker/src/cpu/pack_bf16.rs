//! bf16 operands packed for the CPU's bf16 dot-product instruction (`vdpbf16ps`, AVX-512
//! BF16): weight matrices in panels, activation rows in pairs, and which [`Kernel`] this CPU
//! runs. Shared by [`super::linear_bf16`] and [`super::attention_bf16`].
//!
//! # Layout
//! `vdpbf16ps` multiplies pairs of bf16 values that sit in one 32-bit lane and adds both
//! products to that lane's f32 accumulator. So weights are packed once at load into panels
//! of [`PANEL`] output columns: for each pair of input features `(2q, 2q + 1)`, one 32-bit
//! word per column holding `w[col][2q]` (low half) and `w[col][2q + 1]` (high half).
//! Within a panel the words go in steps of 16 pairs, each step two halves of 16 columns,
//! each half 16 pairs x 16 columns ([`panel_word`]): one AMX B tile, 1 KiB contiguous (a
//! strided tile load is slower), and for `vdpbf16ps` two 64-byte rows 1 KiB apart.
//! Activations are rounded to bf16 and paired the same way, one row at a time.

use half::bf16;
use rayon::prelude::*;

use super::aligned::Aligned;
use super::amx::STEP_PAIRS;

/// Output columns per packed panel (two 512-bit registers of f32).
pub const PANEL: usize = 32;

/// A weight matrix `(n, k)` packed for [`super::linear_bf16::linear_bf16`].
#[derive(Debug)]
pub struct PackedBf16 {
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// `ceil(k / 2)`: the reduction runs over pairs (an odd `k` is padded with a zero).
    pub(super) k_pairs: usize,
    /// Pairs stored per column: `k_pairs` rounded up to whole AMX tile steps
    /// ([`STEP_PAIRS`]), the padding zero.
    pub(super) k_stride: usize,
    /// `ceil(n / PANEL)` panels of `k_stride * PANEL` words (columns past `n` are zero).
    words: Aligned<u32>,
}

/// Where the word of pair `q`, column `col` (< [`PANEL`]) of a panel sits in it.
#[inline(always)]
pub fn panel_word(q: usize, col: usize) -> usize {
    let step = q / STEP_PAIRS;
    let half = col / HALF;
    step * STEP_PAIRS * PANEL + half * STEP_PAIRS * HALF + (q % STEP_PAIRS) * HALF + col % HALF
}

/// Words of a panel holding `pairs` pairs (whole steps: the padding is zero).
pub fn panel_words(pairs: usize) -> usize {
    pairs.next_multiple_of(STEP_PAIRS) * PANEL
}

/// Columns of one half of a panel step: one AMX B tile, one 512-bit register of f32.
pub const HALF: usize = 16;

/// Packs two bf16 values into the word layout `vdpbf16ps` reads: `lo` in bits 0..16.
fn pair(lo: bf16, hi: bf16) -> u32 {
    u32::from(lo.to_bits()) | (u32::from(hi.to_bits()) << 16)
}

/// Splits a packed word into its two bf16 values as f32 (exact).
pub(super) fn unpair(word: u32) -> (f32, f32) {
    (
        f32::from_bits(word << 16),
        f32::from_bits(word & 0xffff_0000),
    )
}

impl PackedBf16 {
    /// Packs `n` rows of `k` values, row `r` read by `row(r, out)` as f32 (values already
    /// in bf16 round trip exactly; others round to nearest even).
    pub fn pack(n: usize, k: usize, mut row: impl FnMut(usize, &mut [f32])) -> Self {
        let k_pairs = k.div_ceil(2);
        let k_stride = k_pairs.next_multiple_of(STEP_PAIRS);
        let panels = n.div_ceil(PANEL);
        let mut words = Aligned::zeroed(panels * k_stride * PANEL);
        let mut values = vec![0.0f32; 2 * k_pairs];
        for r in 0..n {
            row(r, &mut values[..k]);
            let (panel, col) = (r / PANEL, r % PANEL);
            let base = panel * k_stride * PANEL;
            for (q, two) in values.chunks_exact(2).enumerate() {
                let word = pair(bf16::from_f32(two[0]), bf16::from_f32(two[1]));
                words[base + panel_word(q, col)] = word;
            }
        }
        Self {
            n,
            k,
            k_pairs,
            k_stride,
            words,
        }
    }

    /// Panel `p`: `k_stride * PANEL` words, [`PANEL`] columns per pair of input features
    /// (pairs past `k_pairs` zero), laid out by [`panel_word`].
    pub(super) fn panel(&self, p: usize) -> &[u32] {
        &self.words[p * self.k_stride * PANEL..][..self.k_stride * PANEL]
    }
}

/// Whether this CPU has the bf16 dot-product instruction (checked once, cached by std).
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which implementation runs the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles (`tdpbf16ps`) for the projections, `vdpbf16ps` for the rest.
    Amx,
    /// `vdpbf16ps` register tiles.
    Avx512Bf16,
    /// The portable loop (same arithmetic).
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs (AMX, then avx512_bf16, then the portable loop).
    pub fn detect() -> Self {
        if super::amx::available() {
            Self::Amx
        } else if has_avx512_bf16() {
            Self::Avx512Bf16
        } else {
            Self::Portable
        }
    }

    /// Every kernel this CPU runs, the portable loop first: what tests compare.
    pub fn all_supported() -> Vec<Self> {
        let slowest_first = [Self::Portable, Self::Avx512Bf16, Self::Amx];
        slowest_first
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    /// Whether the CPU runs this kernel.
    pub fn supported(self) -> bool {
        match self {
            Self::Amx => super::amx::available(),
            Self::Avx512Bf16 => has_avx512_bf16(),
            Self::Portable => true,
        }
    }

    /// Whether the vector work around the products (packing, SwiGLU) runs on AVX-512.
    pub fn uses_avx512(self) -> bool {
        matches!(self, Self::Amx | Self::Avx512Bf16)
    }

    /// The name `/debug`, the worker's status and `bench` print for the matrix path.
    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx_bf16",
            Self::Avx512Bf16 => "avx512_bf16",
            Self::Portable => "portable",
        }
    }
}

/// Activations `(rows, k)` rounded to bf16 and paired like the weights.
pub(super) fn pack_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    k_pairs: usize,
    kernel: Kernel,
) -> Vec<u32> {
    let mut words = vec![0u32; rows * k_pairs];
    words
        .par_chunks_exact_mut(k_pairs.max(1))
        .zip(x.par_chunks_exact(k.max(1)))
        .for_each(|(out, row)| pack_activations(kernel, row, out));
    words
}

/// One row of activations rounded to bf16 and paired like the weights (into the first
/// `ceil(row.len() / 2)` words of `out`), on `kernel`'s instructions.
pub fn pack_activations(kernel: Kernel, row: &[f32], out: &mut [u32]) {
    pack_activations_strided(kernel, row, out, CHUNK_WORDS);
}

/// Words of one run of a strided row ([`pack_activations_strided`]): 32 values.
pub const CHUNK_WORDS: usize = 16;

/// [`pack_activations`] in runs of [`CHUNK_WORDS`] words, run `c` at `out[c * stride..]`
/// (the AMX tile layout: one run per tile row).
pub fn pack_activations_strided(kernel: Kernel, row: &[f32], out: &mut [u32], stride: usize) {
    let words = row.len().div_ceil(2);
    let last = words.saturating_sub(1) / CHUNK_WORDS;
    assert!(
        stride >= CHUNK_WORDS
            && (words == 0 || out.len() >= last * stride + (words - last * CHUNK_WORDS))
            && kernel.supported(),
        "pack_activations operands checked by the caller; this is a bug"
    );
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: CPU support and the length of `out` are asserted above.
        Kernel::Avx512Bf16 | Kernel::Amx => unsafe { avx512::pack_row(row, out, stride) },
        _ => pack_row_strided(row, out, stride),
    }
}

/// [`pack_row`] in runs of [`CHUNK_WORDS`] words, `stride` apart.
fn pack_row_strided(row: &[f32], out: &mut [u32], stride: usize) {
    for (c, values) in row.chunks(2 * CHUNK_WORDS).enumerate() {
        pack_row(values, &mut out[c * stride..]);
    }
}

/// One row rounded to bf16 (nearest even) in pairs; an odd last value pairs with zero.
fn pack_row(row: &[f32], out: &mut [u32]) {
    let (pairs, odd) = row.split_at(row.len() - row.len() % 2);
    for (word, two) in out.iter_mut().zip(pairs.chunks_exact(2)) {
        *word = pair(bf16::from_f32(two[0]), bf16::from_f32(two[1]));
    }
    if let [last] = odd {
        out[pairs.len() / 2] = pair(bf16::from_f32(*last), bf16::ZERO);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::pack_row_strided`] with `vcvtne2ps2bf16` on 32 values at a time. Same
    /// rounding (nearest even), except that the instruction takes subnormal inputs (below
    /// 1.2e-38) as zero.
    ///
    /// # Safety
    /// The CPU must support avx512f and avx512bf16; `out` holds the runs
    /// `pack_activations_strided` asserts.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pack_row(row: &[f32], out: &mut [u32], stride: usize) {
        let whole = row.len() / 32;
        for c in 0..whole {
            // SAFETY: values `32 c .. 32 c + 32` lie inside `row` (c < whole) and words
            // `stride c .. stride c + 16` inside `out` (the contract).
            unsafe {
                let lo = _mm512_loadu_ps(row.as_ptr().add(32 * c));
                let hi = _mm512_loadu_ps(row.as_ptr().add(32 * c + 16));
                // The second operand fills the low half: values stay in order.
                let bf16 = _mm512_cvtne2ps_pbh(hi, lo);
                let words = std::mem::transmute::<__m512bh, __m512i>(bf16);
                _mm512_storeu_si512(out.as_mut_ptr().add(stride * c).cast(), words);
            }
        }
        if row.len() > 32 * whole {
            super::pack_row(&row[32 * whole..], &mut out[stride * whole..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn both_kernels_pack_activations_alike() {
        if !Kernel::Avx512Bf16.supported() {
            println!("skipped: this CPU has no avx512_bf16");
            return;
        }
        let mut rng = StdRng::seed_from_u64(7);
        for k in [1, 2, 31, 32, 33, 64, 100, 1024] {
            let mut x: Vec<f32> = (0..3 * k).map(|_| rng.random_range(-1e4..1e4)).collect();
            // Ties (round to even), infinities and a value that rounds up to infinity.
            let specials = [1.0 + 2f32.powi(-8), f32::INFINITY, -f32::INFINITY, f32::MAX];
            for (v, s) in x.iter_mut().zip(specials) {
                *v = s;
            }
            let portable = pack_rows(&x, 3, k, k.div_ceil(2), Kernel::Portable);
            let fast = pack_rows(&x, 3, k, k.div_ceil(2), Kernel::Avx512Bf16);
            assert_eq!(portable, fast, "k = {k}");
        }
    }

    #[test]
    fn strided_runs_hold_the_contiguous_words() {
        let mut rng = StdRng::seed_from_u64(8);
        for k in [1usize, 31, 32, 33, 100, 128] {
            let row: Vec<f32> = (0..k).map(|_| rng.random_range(-4.0..4.0)).collect();
            let mut contiguous = vec![0u32; k.div_ceil(2)];
            pack_activations(Kernel::Portable, &row, &mut contiguous);
            for kernel in Kernel::all_supported() {
                let stride = 40;
                let mut strided = vec![u32::MAX; k.div_ceil(32) * stride];
                pack_activations_strided(kernel, &row, &mut strided, stride);
                for (j, &word) in contiguous.iter().enumerate() {
                    let at = (j / CHUNK_WORDS) * stride + j % CHUNK_WORDS;
                    assert_eq!(strided[at], word, "{kernel:?} k = {k}: word {j}");
                }
                // Words between the runs are left alone.
                assert_eq!(strided[CHUNK_WORDS], u32::MAX, "{kernel:?} k = {k}");
            }
        }
    }

    #[test]
    fn packing_rounds_to_nearest_even() {
        let packed = PackedBf16::pack(1, 3, |_, out| out.copy_from_slice(&[1.0, 1.0 + 1e-3, -2.5]));
        let (a, b) = unpair(packed.words[0]);
        let (c, pad) = unpair(packed.words[panel_word(1, 0)]);
        assert_eq!(
            packed.k_stride, STEP_PAIRS,
            "pairs padded to a whole tile step"
        );
        let rest = packed.words.iter().enumerate().skip(1);
        assert!(
            rest.filter(|&(i, _)| i != panel_word(1, 0))
                .all(|(_, &w)| w == 0)
        );
        assert_eq!((a, b, c, pad), (1.0, 1.0, -2.5, 0.0));
    }
}
