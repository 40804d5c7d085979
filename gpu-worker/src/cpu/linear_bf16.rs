//! `x @ w^T` with bf16 weights: activations rounded to bf16, products through the CPU's
//! bf16 dot-product instruction (`vdpbf16ps`, AVX-512 BF16), f32 accumulation. The
//! bf16 twin of [`super::linear`]; used by the CPU backend's bf16 mode.
//!
//! # Layout
//! The operands come packed by [`super::pack_bf16`] (weights in panels of [`PANEL`] output
//! columns, activations in pairs). One panel step is two 512-bit loads; each activation pair
//! is one 32-bit broadcast. A tile of [`TILE_ROWS`] rows by one panel keeps its 24
//! accumulators in registers for the whole reduction. Panels are split across threads; a
//! panel (at most a few hundred KiB) stays in the core's L2 while every row block streams
//! past it.
//!
//! Without AVX-512 BF16 the same packed data goes through a portable loop with the same
//! arithmetic (exact bf16 products, f32 sums), only slower.

use rayon::prelude::*;

use super::pack_bf16::{HALF, PackedBf16, pack_rows, panel_word, panel_words, unpair};
/// The packing the tiles read, for the ops that call [`tile_into`] (bf16 attention).
pub use super::pack_bf16::{Kernel, PANEL, pack_activations};
use super::silu_mul::silu;

/// Rows per register tile: 12 rows x 2 registers = 24 accumulators of the 32 registers.
pub const TILE_ROWS: usize = 12;

/// An output matrix written by parallel tasks that each own a disjoint set of elements: the
/// columns of a panel (here and in [`super::linear_amx`]), the (row, head) blocks of
/// [`super::attention`].
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: every task writes only its own elements (disjoint from every other task's), and
// the buffer outlives the parallel loop that borrows it.
unsafe impl Send for OutPtr {}
// SAFETY: as above: shared only to hand each task its own disjoint elements.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The address of element `offset` (a method, so closures capture the whole wrapper).
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }

    /// Row `r`, columns `c0 .. c0 + cols` of a matrix `n` wide.
    ///
    /// # Safety
    /// Those elements lie inside the matrix, and no one else touches them meanwhile.
    pub(super) unsafe fn row(
        self,
        r: usize,
        n: usize,
        c0: usize,
        cols: usize,
    ) -> &'static mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.at(r * n + c0), cols) }
    }
}

/// `out (rows, n) = bf16(x) (rows, k) @ w^T` with f32 accumulation.
pub fn linear_bf16(x: &[f32], w: &PackedBf16, rows: usize, out: &mut [f32], kernel: Kernel) {
    assert!(
        x.len() == rows * w.k && out.len() == rows * w.n,
        "linear_bf16 operands checked by the caller; this is a bug"
    );
    assert!(
        kernel.supported(),
        "{kernel:?} chosen without CPU support; this is a bug"
    );
    if kernel == Kernel::Amx {
        return super::linear_amx::linear_amx(x, w, rows, out);
    }
    if rows == 0 || w.n == 0 {
        return;
    }
    let a = pack_rows(x, rows, w.k, w.k_pairs, kernel);
    let n = w.n;
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..n.div_ceil(PANEL)).into_par_iter().for_each(|p| {
        let cols = (n - p * PANEL).min(PANEL);
        let panel = w.panel(p);
        let mut partial = [0.0f32; TILE_ROWS * PANEL];
        for (r0, a_rows) in TileRows::tiles(&a, w.k_pairs, rows) {
            let tile_rows = a_rows.count;
            let corner = out_ptr.at(r0 * n + p * PANEL);
            if cols == PANEL {
                // SAFETY: rows `r0 .. r0 + tile_rows` < rows and columns `p * PANEL ..
                // (p + 1) * PANEL` <= n lie inside `out` (rows * n, length checked above);
                // no other task writes panel `p`'s columns, and `out` is borrowed mutably
                // for the whole parallel loop.
                unsafe { run_tile(kernel, a_rows, panel, w.k_pairs, corner, n) };
            } else {
                // The last, narrower panel: through a local tile, then its `cols` columns.
                let local = partial.as_mut_ptr();
                // SAFETY: `partial` holds TILE_ROWS rows of PANEL values at stride PANEL.
                unsafe { run_tile(kernel, a_rows, panel, w.k_pairs, local, PANEL) };
                for (r, values) in partial.chunks_exact(PANEL).take(tile_rows).enumerate() {
                    // SAFETY: as above, for the `cols` columns of this panel inside `out`.
                    unsafe {
                        let dst = corner.wrapping_add(r * n);
                        std::ptr::copy_nonoverlapping(values.as_ptr(), dst, cols);
                    }
                }
            }
        }
    });
}

/// SwiGLU fused with its projection: `out (rows, n / 2) = silu(g) * u` where `g | u =
/// bf16(x) @ w^T` (gate columns first, then up, as [`super::silu_mul`] reads them). The
/// gate and up tiles of a row block are computed together and combined while in cache, so
/// the `(rows, n)` product is never written out. Same values as [`linear_bf16`] followed by
/// [`super::silu_mul::silu_mul`]. `n / 2` must be a multiple of [`PANEL`] ([`fuses_silu`]).
pub fn linear_silu_mul_bf16(
    x: &[f32],
    w: &PackedBf16,
    rows: usize,
    out: &mut [f32],
    kernel: Kernel,
) {
    let half = w.n / 2;
    assert!(
        fuses_silu(w) && x.len() == rows * w.k && out.len() == rows * half,
        "linear_silu_mul_bf16 operands checked by the caller; this is a bug"
    );
    assert!(
        kernel.supported(),
        "{kernel:?} chosen without CPU support; this is a bug"
    );
    if kernel == Kernel::Amx {
        return super::linear_amx::linear_silu_mul_amx(x, w, rows, out);
    }
    if rows == 0 || half == 0 {
        return;
    }
    let a = pack_rows(x, rows, w.k, w.k_pairs, kernel);
    let up_panels = half / PANEL;
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..up_panels).into_par_iter().for_each(|p| {
        let (gate, up) = (w.panel(p), w.panel(p + up_panels));
        let mut g = [0.0f32; TILE_ROWS * PANEL];
        let mut u = [0.0f32; TILE_ROWS * PANEL];
        for (r0, a_rows) in TileRows::tiles(&a, w.k_pairs, rows) {
            let tile_rows = a_rows.count;
            tile_into(kernel, a_rows, gate, w.k_pairs, &mut g, PANEL);
            tile_into(kernel, a_rows, up, w.k_pairs, &mut u, PANEL);
            let tiles = g.chunks_exact(PANEL).zip(u.chunks_exact(PANEL));
            for (r, (g_row, u_row)) in tiles.take(tile_rows).enumerate() {
                // SAFETY: row `r0 + r` < rows and columns `p * PANEL .. (p + 1) * PANEL` <=
                // n / 2 lie inside `out` (rows * n / 2, checked above); no other task
                // touches panel `p`'s columns, and `out` is borrowed mutably for the whole
                // parallel loop.
                let dst = unsafe { out_ptr.row(r0 + r, half, p * PANEL, PANEL) };
                silu_mul_into(kernel, g_row, u_row, dst);
            }
        }
    });
}

/// `out = silu(gate) * up`, element by element, on AVX-512 where `kernel` uses it.
pub(super) fn silu_mul_into(kernel: Kernel, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        kernel.supported(),
        "{kernel:?} chosen without CPU support; this is a bug"
    );
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: CPU support for this kernel is asserted above.
        Kernel::Avx512Bf16 | Kernel::Amx => unsafe { avx512::silu_mul_row(gate, up, out) },
        _ => silu_mul_row(gate, up, out),
    }
}

/// `out = silu(gate) * up`, element by element.
#[inline(always)]
fn silu_mul_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// Whether [`linear_silu_mul_bf16`] takes this gate|up matrix: an even number of outputs
/// whose halves are whole panels.
pub fn fuses_silu(w: &PackedBf16) -> bool {
    w.n.is_multiple_of(2 * PANEL)
}

/// The activation rows of one tile: `count` (1 ..= [`TILE_ROWS`]) rows of packed pairs,
/// row `r` starting at word `r * stride`.
#[derive(Clone, Copy)]
pub struct TileRows<'a> {
    /// The words.
    pub words: &'a [u32],
    /// Words from one row to the next.
    pub stride: usize,
    /// Rows in the tile.
    pub count: usize,
}

impl<'a> TileRows<'a> {
    /// `rows` packed rows, `stride` words apart, cut into tiles of at most [`TILE_ROWS`]:
    /// each with the index of its first row.
    pub fn tiles(
        words: &'a [u32],
        stride: usize,
        rows: usize,
    ) -> impl Iterator<Item = (usize, Self)> {
        (0..rows).step_by(TILE_ROWS).map(move |r0| {
            let count = (rows - r0).min(TILE_ROWS);
            let tile = Self {
                words: &words[r0 * stride..],
                stride,
                count,
            };
            (r0, tile)
        })
    }
}

/// One tile of products into `out`: row `r` of `a` times the first `k_pairs` pairs of
/// `panel` gives [`PANEL`] values at `out[r * out_stride..]`. The checked entry for callers
/// outside this module (attention); panics if an operand is too short.
pub fn tile_into(
    kernel: Kernel,
    a: TileRows<'_>,
    panel: &[u32],
    k_pairs: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(
        (1..=TILE_ROWS).contains(&a.count)
            && a.words.len() >= (a.count - 1) * a.stride + k_pairs
            && panel.len() >= panel_words(k_pairs)
            && out.len() >= (a.count - 1) * out_stride + PANEL
            && out_stride >= PANEL
            && kernel.supported(),
        "tile operands out of bounds; this is a bug"
    );
    // SAFETY: the rows written lie inside `out` (asserted), which is borrowed mutably.
    unsafe { run_tile(kernel, a, panel, k_pairs, out.as_mut_ptr(), out_stride) }
}

/// Writes one tile of products, `a.count` rows of [`PANEL`] values, row `r` at
/// `dst + r * stride`.
///
/// # Safety
/// The CPU supports `kernel`; `a` and `panel` hold the words `tile_into` asserts; those
/// rows of `PANEL` values at `dst` must be writable and written by no one else meanwhile.
unsafe fn run_tile(
    kernel: Kernel,
    a: TileRows<'_>,
    panel: &[u32],
    k_pairs: usize,
    dst: *mut f32,
    stride: usize,
) {
    debug_assert!(a.words.len() >= (a.count - 1) * a.stride + k_pairs);
    debug_assert!(panel.len() >= panel_words(k_pairs));
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract (AMX implies avx512_bf16: `amx::available`).
        Kernel::Avx512Bf16 | Kernel::Amx => unsafe { avx512::tile(a, panel, k_pairs, dst, stride) },
        // SAFETY: the caller's contract.
        _ => unsafe { portable_tile(a, panel, k_pairs, dst, stride) },
    }
}

/// The portable tile: exact bf16 products, f32 sums, one pair at a time.
///
/// # Safety
/// As [`run_tile`].
unsafe fn portable_tile(
    a: TileRows<'_>,
    panel: &[u32],
    k_pairs: usize,
    dst: *mut f32,
    stride: usize,
) {
    let mut acc = [0.0f32; PANEL];
    for r in 0..a.count {
        acc.fill(0.0);
        for (q, &a_word) in a.words[r * a.stride..][..k_pairs].iter().enumerate() {
            let (a0, a1) = unpair(a_word);
            for (col, sum) in acc.iter_mut().enumerate() {
                let (w0, w1) = unpair(panel[panel_word(q, col)]);
                *sum += a0 * w0 + a1 * w1;
            }
        }
        // SAFETY: row `r` < a.count of PANEL values at `dst` is the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), dst.add(r * stride), PANEL) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{HALF, TileRows, panel_word};

    /// Reinterprets 16 words as 32 bf16 values (the same 512 bits).
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn as_bf16_pairs(v: __m512i) -> __m512bh {
        // SAFETY: both are plain 512-bit vectors; every bit pattern is a valid value of each.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// Register tile of `R` rows: `2 R` accumulators, two panel loads and one broadcast
    /// per pair of input features.
    ///
    /// # Safety
    /// The CPU must support avx512f and avx512bf16; `a` holds `(R - 1) * a_stride +
    /// k_pairs` words and `panel` `panel_words(k_pairs)`; `R` rows of `PANEL` values at `dst`,
    /// `stride` apart, are writable and written by no one else meanwhile.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_of<const R: usize>(
        a: &[u32],
        a_stride: usize,
        panel: &[u32],
        k_pairs: usize,
        dst: *mut f32,
        stride: usize,
    ) {
        debug_assert!(a.len() >= (R - 1) * a_stride + k_pairs);
        debug_assert!(panel.len() >= super::panel_words(k_pairs));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (a_ptr, w_ptr) = (a.as_ptr(), panel.as_ptr());
        for q in 0..k_pairs {
            // SAFETY: `q < k_pairs`, so the 16 words at `panel_word(q, 0)` and at
            // `panel_word(q, 16)` are inside `panel`, and word `r * a_stride + q` (r < R) is inside `a` (caller's contract).
            unsafe {
                let w0 = _mm512_loadu_si512(w_ptr.add(panel_word(q, 0)).cast());
                let w1 = _mm512_loadu_si512(w_ptr.add(panel_word(q, HALF)).cast());
                let (w0, w1) = (as_bf16_pairs(w0), as_bf16_pairs(w1));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32(*a_ptr.add(r * a_stride + q) as i32);
                    let x = as_bf16_pairs(x);
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, w0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, w1);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row `r < R` of `PANEL` = 32 floats at `dst + r * stride` is the
            // caller's contract.
            unsafe {
                let row = dst.add(r * stride);
                _mm512_storeu_ps(row, acc[0]);
                _mm512_storeu_ps(row.add(16), acc[1]);
            }
        }
    }

    /// [`super::silu_mul_row`], compiled for 512-bit vectors.
    ///
    /// # Safety
    /// The CPU must support avx512f.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
        super::silu_mul_row(gate, up, out)
    }

    /// Dispatches a tile of `a.count` (1..=TILE_ROWS) rows to its register shape.
    ///
    /// # Safety
    /// As [`tile_of`], for `R = a.count`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(
        a: TileRows<'_>,
        panel: &[u32],
        k_pairs: usize,
        dst: *mut f32,
        stride: usize,
    ) {
        let (words, a_stride) = (a.words, a.stride);
        // SAFETY: forwarded contract; each arm's `R` equals `a.count`.
        unsafe {
            match a.count {
                12 => tile_of::<12>(words, a_stride, panel, k_pairs, dst, stride),
                11 => tile_of::<11>(words, a_stride, panel, k_pairs, dst, stride),
                10 => tile_of::<10>(words, a_stride, panel, k_pairs, dst, stride),
                9 => tile_of::<9>(words, a_stride, panel, k_pairs, dst, stride),
                8 => tile_of::<8>(words, a_stride, panel, k_pairs, dst, stride),
                7 => tile_of::<7>(words, a_stride, panel, k_pairs, dst, stride),
                6 => tile_of::<6>(words, a_stride, panel, k_pairs, dst, stride),
                5 => tile_of::<5>(words, a_stride, panel, k_pairs, dst, stride),
                4 => tile_of::<4>(words, a_stride, panel, k_pairs, dst, stride),
                3 => tile_of::<3>(words, a_stride, panel, k_pairs, dst, stride),
                2 => tile_of::<2>(words, a_stride, panel, k_pairs, dst, stride),
                1 => tile_of::<1>(words, a_stride, panel, k_pairs, dst, stride),
                _ => unreachable!("tile of {} rows; this is a bug", a.count),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The product in f64 over the bf16-rounded operands: what both kernels approximate
    /// with f32 sums.
    fn reference(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
        let round = |v: f32| f64::from(bf16::from_f32(v).to_f32());
        let mut out = vec![0.0; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let sum: f64 = (0..k)
                    .map(|i| round(x[r * k + i]) * round(w[c * k + i]))
                    .sum();
                out[r * n + c] = sum as f32;
            }
        }
        out
    }

    fn check(rows: usize, k: usize, n: usize, kernel: Kernel, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let packed = PackedBf16::pack(n, k, |r, out| out.copy_from_slice(&w[r * k..][..k]));
        let mut got = vec![f32::NAN; rows * n];
        linear_bf16(&x, &packed, rows, &mut got, kernel);
        let want = reference(&x, &w, rows, k, n);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // f32 sums of k products of magnitude <= 1: error grows like sqrt(k) ulps.
            let tol = 1e-5 * (k as f32).sqrt() * (1.0 + w.abs());
            assert!(
                (g - w).abs() <= tol,
                "{kernel:?} {rows}x{k}x{n}: element {i}: got {g}, want {w}"
            );
        }
    }

    /// Shapes that are not multiples of the tile, the panel or the pair width.
    const SHAPES: [(usize, usize, usize); 6] = [
        (1, 2, 1),
        (5, 7, 33),
        (12, 64, 32),
        (13, 130, 70),
        (37, 255, 96),
        (25, 1024, 40),
    ];

    #[test]
    fn portable_kernel_matches_reference() {
        for (i, &(rows, k, n)) in SHAPES.iter().enumerate() {
            check(rows, k, n, Kernel::Portable, i as u64);
        }
    }

    #[test]
    fn avx512_kernel_matches_reference() {
        if !Kernel::Avx512Bf16.supported() {
            println!("skipped: this CPU has no avx512_bf16");
            return;
        }
        for (i, &(rows, k, n)) in SHAPES.iter().enumerate() {
            check(rows, k, n, Kernel::Avx512Bf16, 100 + i as u64);
        }
    }

    #[test]
    fn amx_kernel_matches_reference() {
        if !Kernel::Amx.supported() {
            println!("skipped: this CPU has no AMX (or the kernel refused the tile state)");
            return;
        }
        // Also a full two-tile block, remainders in every dimension, more rows than one
        // block, and more than one part of rows (`linear_amx::PART_ROWS`).
        let more = [(32, 64, 64), (33, 96, 65), (70, 300, 100), (300, 64, 40)];
        for (i, &(rows, k, n)) in SHAPES.iter().chain(&more).enumerate() {
            check(rows, k, n, Kernel::Amx, 300 + i as u64);
        }
    }

    #[test]
    fn fused_silu_equals_product_then_silu() {
        let kernels = Kernel::all_supported();
        for (seed, &(rows, k, n)) in [(1, 3, 64), (13, 130, 128), (30, 255, 192), (300, 64, 128)]
            .iter()
            .enumerate()
        {
            let mut rng = StdRng::seed_from_u64(200 + seed as u64);
            let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-2.0..2.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let packed = PackedBf16::pack(n, k, |r, out| out.copy_from_slice(&w[r * k..][..k]));
            assert!(fuses_silu(&packed));
            for &kernel in &kernels {
                let mut gate_up = vec![f32::NAN; rows * n];
                linear_bf16(&x, &packed, rows, &mut gate_up, kernel);
                let mut want = vec![f32::NAN; rows * n / 2];
                crate::cpu::silu_mul::silu_mul(&gate_up, n / 2, &mut want);
                let mut got = vec![f32::NAN; rows * n / 2];
                linear_silu_mul_bf16(&x, &packed, rows, &mut got, kernel);
                assert_eq!(got, want, "{kernel:?} {rows}x{k}x{n}");
            }
        }
        let odd = PackedBf16::pack(96, 4, |_, out| out.fill(1.0));
        assert!(
            !fuses_silu(&odd),
            "halves of 48 columns are not whole panels"
        );
    }
}
