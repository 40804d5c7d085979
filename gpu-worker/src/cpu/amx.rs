//! Intel AMX (Advanced Matrix Extensions): bf16 products on the core's tile unit
//! (`tdpbf16ps`), the fastest matrix path of the bf16 CPU backend where the CPU has it.
//!
//! # The unit
//! Eight tile registers of 16 rows x 64 bytes. `tdpbf16ps C, A, B` adds to the 16 x 16 f32
//! tile C the product of A (16 rows x 32 bf16 values: 16 pairs) and B (16 rows of 16 pairs,
//! one pair per output column): the same paired layout as `vdpbf16ps`, so the panels of
//! [`super::pack_bf16::PackedBf16`] are B tiles as they are (each step of a panel's 32
//! columns is two B tiles, 1 KiB contiguous each). Each product is exact in f32 and the sums
//! are f32, as on the other kernels. Every operand starts on a 64-byte line
//! ([`super::aligned`]): a tile row across two lines runs at a third of the speed.
//!
//! # Using it
//! Linux hands out the tile state only on request ([`available`] asks once for the whole
//! process: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); a thread then loads a
//! tile configuration before its first tile instruction and releases it after the last
//! ([`Tiles`]). Stable Rust has no AMX intrinsics: the few instructions used are inline
//! assembly, each on named tile registers the compiler never touches.

use rayon::prelude::*;

use super::aligned::{Aligned, Kept};
use super::pack_bf16::{HALF, Kernel, PANEL, pack_activations_strided};

/// Pairs of input features one tile step reduces over (a tile row is 16 words).
pub const STEP_PAIRS: usize = 16;

/// Rows of one tile.
pub const TILE_ROWS: usize = 16;

/// Words of one activation tile in the blocked layout: 16 rows x 16 words.
pub const A_TILE_WORDS: usize = TILE_ROWS * STEP_PAIRS;

/// Whether this CPU has AMX tiles with bf16 products and the kernel lets this process use
/// them (asked once; the answer is cached).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let usable = detect();
        if usable {
            tracing::debug!("AMX tiles granted to this process");
        }
        usable
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    /// `arch_prctl` request for permission to use an extended state component.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    /// The XSAVE component of the tile registers' data.
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = __cpuid_count(7, 0);
    let cpu_has = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
    if !cpu_has || !super::pack_bf16::has_avx512_bf16() {
        return false;
    }
    // SAFETY: `arch_prctl` with this request only reads its integer argument and changes the
    // process's permitted XSAVE features; it touches no memory of ours.
    let granted = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    } == 0;
    if !granted {
        tracing::warn!("this CPU has AMX but the kernel refused the tile state: using avx512_bf16");
    }
    granted
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// The tile configuration every kernel here uses: palette 1, all eight tiles 16 rows of 64
/// bytes (the layout `ldtilecfg` reads: 64 bytes, aligned).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// The tile state of the calling thread, configured for the kernels here until dropped.
/// Holds `!Send` so the configuration and the instructions stay on one thread. Holders nest:
/// while one waits inside a parallel loop, rayon may run a stolen task on the same thread
/// that configures and drops its own; only the last holder out releases the state (a
/// release under a live holder made its next tile instruction fault: SIGILL).
pub struct Tiles {
    _one_thread: std::marker::PhantomData<*const ()>,
}

thread_local! {
    /// Live [`Tiles`] on this thread.
    static HOLDERS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Tiles {
    /// Loads the tile configuration on this thread. `None` when [`available`] is false.
    pub fn configure() -> Option<Self> {
        if !available() {
            return None;
        }
        let holders = HOLDERS.get();
        #[cfg(target_arch = "x86_64")]
        if holders == 0 {
            // SAFETY: AMX is available and granted to this process (checked above); `CONFIG`
            // is a valid palette-1 configuration, 64 bytes, 64-byte aligned.
            unsafe {
                std::arch::asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack, readonly));
            }
        }
        HOLDERS.set(holders + 1);
        Some(Self {
            _one_thread: std::marker::PhantomData,
        })
    }

    /// One block of products, checked: rows `16 * group .. 16 * (group + a_tiles)` of the
    /// blocked activations `a` (`a_tiles` 1 or 2) times `panel`, summed over the tile steps
    /// `steps` onto `start`, as `16 * a_tiles` rows of [`PANEL`] f32 in `out`, rows
    /// `out_stride` apart. Panics if an operand is too short.
    #[allow(clippy::too_many_arguments)]
    pub fn products(
        &self,
        a: Blocked<'_>,
        group: usize,
        a_tiles: usize,
        panel: &[u32],
        steps: std::ops::Range<usize>,
        start: Start<'_>,
        out: &mut [f32],
        out_stride: usize,
    ) {
        assert!(
            out_stride >= PANEL
                && out.len() >= (TILE_ROWS * a_tiles.max(1) - 1) * out_stride + PANEL,
            "AMX block output out of bounds; this is a bug"
        );
        // SAFETY: `out` holds the rows written (asserted) and is borrowed mutably.
        unsafe {
            self.products_to(
                a,
                group,
                a_tiles,
                panel,
                steps,
                start,
                out.as_mut_ptr(),
                out_stride,
            )
        }
    }

    /// [`Self::products`] into raw memory: the operands are checked, the destination is the
    /// caller's word.
    ///
    /// # Safety
    /// `16 * a_tiles` rows of [`PANEL`] floats at `out`, `out_stride >= PANEL` apart, are
    /// writable (readable too with [`Start::Accumulate`]) and touched by no one else
    /// meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn products_to(
        &self,
        a: Blocked<'_>,
        group: usize,
        a_tiles: usize,
        panel: &[u32],
        steps: std::ops::Range<usize>,
        start: Start<'_>,
        out: *mut f32,
        out_stride: usize,
    ) {
        let group_words = a.steps * A_TILE_WORDS;
        let start_rows = |values: &[f32], stride: usize| {
            stride >= PANEL && values.len() >= (TILE_ROWS * a_tiles - 1) * stride + PANEL
        };
        assert!(
            (1..=2).contains(&a_tiles)
                && steps.start <= steps.end
                && steps.end <= a.steps
                && a.words.len() >= (group + a_tiles) * group_words
                && panel.len() >= steps.end * STEP_PAIRS * PANEL
                && out_stride >= PANEL
                && match start {
                    Start::From(values, stride) => start_rows(values, stride),
                    Start::Zero | Start::Accumulate => true,
                },
            "AMX block operands out of bounds; this is a bug"
        );
        let (c_in, c_in_stride) = match start {
            Start::Zero => (std::ptr::null(), 0),
            Start::Accumulate => (out.cast_const(), out_stride),
            Start::From(values, stride) => (values.as_ptr(), stride),
        };
        let operands = BlockPointers {
            a: a.words[group * group_words..].as_ptr(),
            a_group_words: group_words,
            panel: panel.as_ptr(),
            c_in,
            c_in_stride,
            c: out,
            c_stride: out_stride,
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the bounds `block` needs are asserted above (a group's step `s` is at
        // `s * A_TILE_WORDS`, the next group `group_words` further; the starting values),
        // and the destination is the caller's contract.
        unsafe {
            if a_tiles == 2 {
                self.block::<2>(operands, steps);
            } else {
                self.block::<1>(operands, steps);
            }
        }
    }

    /// One block of products: `A_TILES` (1 or 2) tiles of 16 activation rows times one
    /// [`PANEL`] of 32 columns over tile steps `steps`, onto the starting values at
    /// `op.c_in` (zero if null), into `16 * A_TILES` rows of 32 f32 at `op.c`.
    ///
    /// # Safety
    /// For every step `s` in `steps`: `A_TILES` tiles of 1 KiB at `op.a` plus `t *
    /// a_group_words + s * A_TILE_WORDS` and `STEP_PAIRS * PANEL` words at `op.panel` plus
    /// `s * STEP_PAIRS * PANEL` are readable; `16 * A_TILES` rows of 32 floats at `op.c_in`
    /// (unless null) are readable and at `op.c` writable, strides `>= 32`, touched by no one
    /// else meanwhile.
    #[cfg(target_arch = "x86_64")]
    unsafe fn block<const A_TILES: usize>(&self, op: BlockPointers, steps: std::ops::Range<usize>) {
        use std::arch::asm;
        const { assert!(A_TILES == 1 || A_TILES == 2) };
        // Both operands' tiles are 1 KiB contiguous: 64-byte rows.
        let (b_stride, a_stride, c_stride) = (64usize, 64usize, op.c_stride * 4);
        let c_lower = op.c.wrapping_add(TILE_ROWS * op.c_stride);
        let c_in_stride = op.c_in_stride * 4;
        let c_in_lower = op.c_in.wrapping_add(TILE_ROWS * op.c_in_stride);
        // SAFETY (every block below): the tiles are configured on this thread (`self`); the
        // addresses read and written lie inside the buffers the caller vouches for: A tile
        // (t, s) is 1 KiB at `a + t * a_group_words + s * A_TILE_WORDS`, B tiles of step `s`
        // are 1 KiB each at `panel + s * STEP_PAIRS * PANEL` (+ 256 words); C tiles are 16
        // rows of 64 bytes at `c` (+ 16 floats, + 16 rows).
        unsafe {
            if !op.c_in.is_null() {
                asm!(
                    "tileloadd tmm0, [{c} + {cs}*1]",
                    "tileloadd tmm1, [{c1} + {cs}*1]",
                    c = in(reg) op.c_in,
                    c1 = in(reg) op.c_in.add(16),
                    cs = in(reg) c_in_stride,
                    options(readonly, nostack),
                );
                if A_TILES == 2 {
                    asm!(
                        "tileloadd tmm2, [{c} + {cs}*1]",
                        "tileloadd tmm3, [{c1} + {cs}*1]",
                        c = in(reg) c_in_lower,
                        c1 = in(reg) c_in_lower.add(16),
                        cs = in(reg) c_in_stride,
                        options(readonly, nostack),
                    );
                }
            } else {
                asm!("tilezero tmm0", "tilezero tmm1", options(nomem, nostack));
                if A_TILES == 2 {
                    asm!("tilezero tmm2", "tilezero tmm3", options(nomem, nostack));
                }
            }
            // Each load is placed right before the first product that reads it, so a
            // tile's reload overlaps the products still reading the others (tiles are not
            // renamed: a load waits for every earlier product reading its register).
            for s in steps {
                let b = op.panel.add(s * STEP_PAIRS * PANEL);
                let a0 = op.a.add(s * A_TILE_WORDS);
                if A_TILES == 2 {
                    asm!(
                        "tileloadd tmm4, [{a0} + {as_}*1]",
                        "tileloadd tmm6, [{b} + {bs}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {bs}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {as_}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0,
                        a1 = in(reg) a0.add(op.a_group_words),
                        b = in(reg) b,
                        b1 = in(reg) b.add(STEP_PAIRS * HALF),
                        as_ = in(reg) a_stride,
                        bs = in(reg) b_stride,
                        options(readonly, nostack),
                    );
                } else {
                    asm!(
                        "tileloadd tmm4, [{a0} + {as_}*1]",
                        "tileloadd tmm6, [{b} + {bs}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {bs}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        a0 = in(reg) a0,
                        b = in(reg) b,
                        b1 = in(reg) b.add(STEP_PAIRS * HALF),
                        as_ = in(reg) a_stride,
                        bs = in(reg) b_stride,
                        options(readonly, nostack),
                    );
                }
            }
            asm!(
                "tilestored [{c} + {cs}*1], tmm0",
                "tilestored [{c1} + {cs}*1], tmm1",
                c = in(reg) op.c,
                c1 = in(reg) op.c.add(16),
                cs = in(reg) c_stride,
                options(nostack),
            );
            if A_TILES == 2 {
                asm!(
                    "tilestored [{c} + {cs}*1], tmm2",
                    "tilestored [{c1} + {cs}*1], tmm3",
                    c = in(reg) c_lower,
                    c1 = in(reg) c_lower.add(16),
                    cs = in(reg) c_stride,
                    options(nostack),
                );
            }
        }
    }
}

/// Activations in the blocked layout of [`pack_blocked`]: `steps` tile steps a group of 16
/// rows.
#[derive(Clone, Copy)]
pub struct Blocked<'a> {
    /// The words.
    pub words: &'a [u32],
    /// Tile steps per group.
    pub steps: usize,
}

/// What a block's sums start from.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// Zero.
    Zero,
    /// The values the output already holds.
    Accumulate,
    /// Rows of [`PANEL`] values in a buffer, the given stride apart.
    From(&'a [f32], usize),
}

/// The addresses one [`Tiles::block`] reads and writes.
struct BlockPointers {
    /// Step 0 of the first A tile.
    a: *const u32,
    /// Words from one group of A tiles to the next.
    a_group_words: usize,
    /// Step 0 of the panel.
    panel: *const u32,
    /// The first row of starting values, or null to start from zero.
    c_in: *const f32,
    /// Floats from one starting row to the next.
    c_in_stride: usize,
    /// The first C row.
    c: *mut f32,
    /// Floats from one C row to the next.
    c_stride: usize,
}

impl Drop for Tiles {
    fn drop(&mut self) {
        let holders = HOLDERS.get() - 1;
        HOLDERS.set(holders);
        #[cfg(target_arch = "x86_64")]
        if holders == 0 {
            // SAFETY: releasing the tile state this thread configured, held by no one else
            // now; no tile data is needed after this point.
            unsafe {
                std::arch::asm!("tilerelease", options(nomem, nostack));
            }
        }
    }
}

/// Activations `(rows, k)` rounded to bf16 and paired (as [`pack_activations_strided`]
/// does), in the blocked layout [`Tiles::block`] reads: for each group of 16 rows, for each of
/// `steps` steps, 16 rows of [`STEP_PAIRS`] words, contiguous, so a tile load reads one
/// 1 KiB run. Pairs past `k` and rows past `rows` (up to a whole group) are zero.
pub fn pack_blocked(x: &[f32], rows: usize, k: usize, steps: usize) -> PackedRows {
    assert!(
        x.len() == rows * k,
        "pack_blocked operands checked by the caller; this is a bug"
    );
    pack_blocked_rows(rows, steps, |r| &x[r * k..][..k])
}

/// [`pack_blocked`] over rows read by `row(r)`, each at most `steps * 2 * STEP_PAIRS` values
/// (rows may differ in length; each is zero past its end).
pub fn pack_blocked_rows<'a>(
    rows: usize,
    steps: usize,
    row: impl Fn(usize) -> &'a [f32] + Sync,
) -> PackedRows {
    let group_words = steps * A_TILE_WORDS;
    let mut out = PackedRows::take(rows.div_ceil(TILE_ROWS) * group_words);
    let row_words = steps * STEP_PAIRS;
    let pack_group = |(g, group): (usize, &mut [u32])| {
        for rr in 0..TILE_ROWS {
            let r = g * TILE_ROWS + rr;
            let values: &[f32] = if r < rows { row(r) } else { &[] };
            let written = values.len().div_ceil(2);
            assert!(
                written <= row_words,
                "a row longer than its steps; this is a bug"
            );
            // Each step's 32 values go straight to their tile row...
            let words = &mut group[rr * STEP_PAIRS..];
            pack_activations_strided(Kernel::Avx512Bf16, values, words, A_TILE_WORDS);
            // ...and the rest of the row is zeroed (the buffer may hold an earlier pack).
            for j in written..row_words {
                words[(j / STEP_PAIRS) * A_TILE_WORDS + j % STEP_PAIRS] = 0;
            }
        }
    };
    let words = out.words_mut();
    if rows * steps < 64 {
        let groups = words.chunks_exact_mut(group_words.max(1));
        groups.enumerate().for_each(pack_group);
    } else {
        let groups = words.par_chunks_exact_mut(group_words.max(1));
        groups.enumerate().for_each(pack_group);
    }
    out
}

/// The word where tile step `step` of row `r` starts in the blocked layout of
/// [`pack_blocked`] with `steps` steps a group: [`STEP_PAIRS`] words, a tile row.
pub fn blocked_word(r: usize, step: usize, steps: usize) -> usize {
    (r / TILE_ROWS * steps + step) * A_TILE_WORDS + r % TILE_ROWS * STEP_PAIRS
}

/// Packed activations larger than this are not kept for reuse (a 32k-token batch would hold
/// hundreds of MiB).
const KEEP_MAX_WORDS: usize = 4 << 20;

/// Packed-activation buffers a thread keeps: the MLP holds two at once (its input's and
/// the SwiGLU values').
const KEEP_BUFFERS: usize = 2;

thread_local! {
    /// The last packed-activation buffers a thread gave back, for its next packs (page
    /// faults and zeroing of fresh ones were 2% of a bf16 pass).
    static KEPT_ROWS: std::cell::RefCell<Kept<u32>> = const { std::cell::RefCell::new(Kept::new()) };
}

/// Packed activation rows ([`pack_blocked`]) in a buffer on loan from the thread's kept one,
/// given back on drop.
pub struct PackedRows {
    buffer: Aligned<u32>,
    len: usize,
}

impl PackedRows {
    /// A buffer of at least `len` words, its values unspecified.
    fn take(len: usize) -> Self {
        let buffer = KEPT_ROWS.with_borrow_mut(|kept| kept.take(len, len));
        Self { buffer, len }
    }

    /// A buffer for `rows` rows of `steps` tile steps in the blocked layout, for a producer
    /// to write: the padding rows of the last group are zero, the real rows' words
    /// unspecified.
    pub fn for_rows(rows: usize, steps: usize) -> Self {
        let group_words = steps * A_TILE_WORDS;
        let mut out = Self::take(rows.div_ceil(TILE_ROWS) * group_words);
        if !rows.is_multiple_of(TILE_ROWS) {
            let words = out.words_mut();
            let last = words.len() - group_words;
            for step in words[last..].chunks_exact_mut(A_TILE_WORDS) {
                step[rows % TILE_ROWS * STEP_PAIRS..].fill(0);
            }
        }
        out
    }

    /// The words, for writing.
    pub fn words_mut(&mut self) -> &mut [u32] {
        &mut self.buffer[..self.len]
    }
}

impl std::ops::Deref for PackedRows {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        &self.buffer[..self.len]
    }
}

impl Drop for PackedRows {
    fn drop(&mut self) {
        let buffer = std::mem::replace(&mut self.buffer, Aligned::zeroed(0));
        KEPT_ROWS.with_borrow_mut(|kept| kept.give_back(buffer, KEEP_BUFFERS, KEEP_MAX_WORDS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pack_bf16::pack_activations;

    /// The blocked layout built word by word from [`pack_activations`]: zero past each row
    /// and in the padding rows.
    fn reference(rows: &[Vec<f32>], steps: usize) -> Vec<u32> {
        let mut out = vec![0u32; rows.len().div_ceil(TILE_ROWS) * steps * A_TILE_WORDS];
        for (r, values) in rows.iter().enumerate() {
            let mut words = vec![0u32; steps * STEP_PAIRS];
            pack_activations(Kernel::Portable, values, &mut words);
            for (j, &word) in words.iter().enumerate() {
                let (g, rr) = (r / TILE_ROWS, r % TILE_ROWS);
                let at = (g * steps + j / STEP_PAIRS) * A_TILE_WORDS + rr * STEP_PAIRS;
                out[at + j % STEP_PAIRS] = word;
            }
        }
        out
    }

    /// A holder dropped while another lives on the same thread (a stolen rayon task inside
    /// a waiting one) leaves the tiles configured: without nesting, the outer holder's next
    /// product faults (SIGILL, the whole test binary).
    #[test]
    fn a_nested_holder_leaves_the_tiles_configured() {
        if !available() {
            println!("skipped: this CPU has no AMX (or the kernel refused the tile state)");
            return;
        }
        let outer = Tiles::configure().expect("AMX available");
        drop(Tiles::configure().expect("AMX available"));
        let a = Aligned::<u32>::zeroed(A_TILE_WORDS);
        let panel = Aligned::<u32>::zeroed(STEP_PAIRS * PANEL);
        let mut out = Aligned::<f32>::zeroed(TILE_ROWS * PANEL);
        let rows = Blocked {
            words: &a,
            steps: 1,
        };
        outer.products(rows, 0, 1, &panel, 0..1, Start::Zero, &mut out, PANEL);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_reused_buffer_packs_as_a_fresh_one() {
        if !Kernel::Avx512Bf16.supported() {
            println!("skipped: this CPU has no avx512_bf16");
            return;
        }
        // First a large pack of NaNs, kept by this thread for the next one.
        let nans = vec![f32::NAN; 64 * 256];
        drop(pack_blocked(&nans, 64, 256, 8));
        // Then rows of different, odd lengths, fewer than a group's worth in the last group.
        let rows: Vec<Vec<f32>> = (0..19)
            .map(|r| (0..(3 * r + 1)).map(|i| (i as f32 - 20.0) / 8.0).collect())
            .collect();
        let got = pack_blocked_rows(rows.len(), 2, |r| &rows[r]);
        assert_eq!(&got[..], &reference(&rows, 2)[..]);
    }
}
