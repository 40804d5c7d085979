//! `x @ w^T` with bf16 weights on AMX tiles: the [`super::linear_bf16`] products (and its
//! fused SwiGLU) where [`Kernel::Amx`] is chosen. Same operands, same arithmetic (exact bf16
//! products, f32 sums), so the same values up to the order of the f32 sums. The whole MLP
//! ([`mlp_amx`]) runs as one op: the SwiGLU values go from the accumulators straight into
//! the down projection's tiles, never written out in f32.
//!
//! # Blocking
//! Threads split the weight panels (32 columns, two B tiles). A thread walks its panel's
//! reduction in chunks of [`CHUNK_STEPS`] tile steps: the chunk (16 KiB of weights) stays
//! in L1 while every block of 32 activation rows (two A tiles, packed by
//! [`amx::pack_blocked`]) streams past it, the block's four C tiles reloaded from and stored
//! to the thread's accumulator between chunks. A last block of at most 16 rows uses one A
//! tile. A large batch goes through in parts of [`PART_ROWS`] rows, each part's packed
//! activations staying in L2 while all panels pass. The next chunk of weights is prefetched
//! into L2 a share per block ([`prefetch_share`]) when a part has more than one block.

use std::ops::Range;

use rayon::prelude::*;

use super::aligned::{Aligned, Kept};
use super::amx::{self, Blocked, Start, TILE_ROWS, Tiles};
use super::linear_bf16::{OutPtr, silu_mul_into};
use super::pack_bf16::{CHUNK_WORDS, Kernel, PANEL, PackedBf16, pack_activations_strided};

/// Rows of a full block: two A tiles.
const BLOCK_ROWS: usize = 2 * TILE_ROWS;

/// Activation rows multiplied with every panel before the next rows start: their packed
/// values (512 KiB at 1,024 input features) stay in L2 while the weights stream past, where
/// all rows of a large batch would be fetched again from memory for every panel.
const PART_ROWS: usize = 256;

/// Tile steps (32 input features each) per chunk of the reduction: a panel's chunk is
/// `CHUNK_STEPS` KiB x 2.
const CHUNK_STEPS: usize = 8;

/// Where a panel's finished blocks go when they are whole: the output matrix, `n` wide,
/// the panel's columns from `c0`.
#[derive(Clone, Copy)]
struct Direct {
    out: OutPtr,
    n: usize,
    c0: usize,
}

/// One panel's share of a task: its weights, the accumulator its sums build up in (row `r`
/// at `(r - part.start) * PANEL`, whole tiles), and, with `direct`, where a whole block's
/// last chunk is stored instead ([`is_direct`] says which rows; the others stay in `acc`).
struct Target<'a> {
    panel: &'a [u32],
    acc: &'a mut [f32],
    direct: Option<Direct>,
}

/// The products of the activation rows `part` (of `rows`; `part.start` a multiple of
/// [`BLOCK_ROWS`]) with each target's panel, accumulated over the reduction in chunks. Each
/// block's A tiles serve every target before the next block's are loaded, so they come from
/// L1 for all but the first panel.
///
/// # Safety
/// With `direct`: the panel's [`PANEL`] columns of every row lie inside the output and no
/// one else touches them meanwhile.
unsafe fn panel_products(
    tiles: &Tiles,
    a: Blocked<'_>,
    (rows, part): (usize, Range<usize>),
    targets: &mut [Target<'_>],
) {
    for first in (0..a.steps).step_by(CHUNK_STEPS) {
        let chunk = first..(first + CHUNK_STEPS).min(a.steps);
        let last = chunk.end == a.steps;
        let blocks = part.len().div_ceil(BLOCK_ROWS);
        for (block, r0) in part.clone().step_by(BLOCK_ROWS).enumerate() {
            let a_tiles = (rows - r0).min(BLOCK_ROWS).div_ceil(TILE_ROWS);
            let group = r0 / TILE_ROWS;
            let at = (r0 - part.start) * PANEL;
            for target in targets.iter_mut() {
                // A part of one block reads each chunk once, straight from memory: there the
                // prefetch only competes with the tile loads (1 x 16 tokens ran 2-4% slower).
                if blocks > 1 {
                    prefetch_share(target.panel, chunk.end, (block, blocks));
                }
                let steps = chunk.clone();
                match target.direct {
                    Some(Direct { out, n, c0 }) if last && is_direct(rows, r0) => {
                        let start = match first {
                            0 => Start::Zero,
                            _ => Start::From(&target.acc[at..], PANEL),
                        };
                        // SAFETY: the block's rows are whole rows of the output (`is_direct`),
                        // its columns the panel's: the caller's contract.
                        unsafe {
                            let dst = out.at(r0 * n + c0);
                            tiles.products_to(
                                a,
                                group,
                                a_tiles,
                                target.panel,
                                steps,
                                start,
                                dst,
                                n,
                            );
                        }
                    }
                    _ => {
                        let start = if first == 0 {
                            Start::Zero
                        } else {
                            Start::Accumulate
                        };
                        let dst = &mut target.acc[at..];
                        tiles.products(a, group, a_tiles, target.panel, steps, start, dst, PANEL);
                    }
                }
            }
        }
    }
}

/// Cache lines of one chunk of a panel.
const CHUNK_LINES: usize = CHUNK_STEPS * amx::STEP_PAIRS * PANEL * 4 / 64;

/// Asks for share `block` of `blocks` of the panel's chunk starting at tile step `step` to
/// be brought into L2 while the current chunk's products run: the weights stream from
/// memory or L3, and the hardware prefetchers fetch them too late for the tile unit. Past
/// the panel's end lie the next panel's first steps, the thread's likely next weights; a
/// prefetch never faults, wherever it points.
fn prefetch_share(panel: &[u32], step: usize, (block, blocks): (usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        let next = panel.as_ptr().wrapping_add(step * amx::STEP_PAIRS * PANEL);
        let lines = CHUNK_LINES * block / blocks..CHUNK_LINES * (block + 1) / blocks;
        for line in lines {
            // SAFETY: a prefetch is a hint: it reads nothing the program sees and never
            // faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(line * 16).cast()) };
        }
    }
}

/// Whether the block holding row `r` (of `rows`) is whole tiles of real rows, so it can be
/// stored straight into the output.
fn is_direct(rows: usize, r: usize) -> bool {
    let r0 = r / BLOCK_ROWS * BLOCK_ROWS;
    r0 + (rows - r0).min(BLOCK_ROWS).div_ceil(TILE_ROWS) * TILE_ROWS <= rows
}

/// A thread's tile state and accumulators: `count` buffers of at least `rows` (padded to
/// whole tiles) by [`PANEL`] values.
fn worker(rows: usize, count: usize) -> (Tiles, Accumulators) {
    let tiles = Tiles::configure().expect("Kernel::Amx chosen without AMX; this is a bug");
    let padded = rows.div_ceil(TILE_ROWS) * TILE_ROWS;
    (tiles, Accumulators::take(count, padded * PANEL))
}

/// Accumulator buffers a thread keeps: the fused MLP holds two at once.
const KEEP_ACCUMULATORS: usize = 2;

thread_local! {
    /// Accumulators a thread used before, kept for its next projection (zeroing fresh ones
    /// was 2% of a bf16 pass). Fresh ones hold a whole part, `PART_ROWS * PANEL` values, so
    /// they serve every later projection.
    static KEPT: std::cell::RefCell<Kept<f32>> = const { std::cell::RefCell::new(Kept::new()) };
}

/// Accumulator buffers on loan from the thread's [`KEPT`] ones, given back on drop. Their
/// values are whatever the last user left: every block writes its rows before reading them.
struct Accumulators(Vec<Aligned<f32>>);

impl Accumulators {
    /// `count` buffers of at least `len` values.
    fn take(count: usize, len: usize) -> Self {
        KEPT.with_borrow_mut(|kept| {
            Self(
                (0..count)
                    .map(|_| kept.take(len, PART_ROWS * PANEL))
                    .collect(),
            )
        })
    }
}

impl Drop for Accumulators {
    fn drop(&mut self) {
        let buffers = std::mem::take(&mut self.0);
        KEPT.with_borrow_mut(|kept| {
            for buffer in buffers {
                kept.give_back(buffer, KEEP_ACCUMULATORS, usize::MAX);
            }
        });
    }
}

/// `out (rows, n) = bf16(x) (rows, k) @ w^T` with f32 accumulation, on AMX tiles.
pub fn linear_amx(x: &[f32], w: &PackedBf16, rows: usize, out: &mut [f32]) {
    assert!(
        x.len() == rows * w.k && out.len() == rows * w.n && amx::available(),
        "linear_amx operands checked by the caller; this is a bug"
    );
    if rows == 0 || w.n == 0 {
        return;
    }
    let steps = w.k_stride / amx::STEP_PAIRS;
    let words = amx::pack_blocked(x, rows, w.k, steps);
    project(
        Blocked {
            words: &words,
            steps,
        },
        w,
        rows,
        out,
    );
}

/// `out (rows, n) = a @ w^T` for activations already in the blocked layout.
fn project(a: Blocked<'_>, w: &PackedBf16, rows: usize, out: &mut [f32]) {
    let n = w.n;
    let out_ptr = OutPtr(out.as_mut_ptr());
    for part in parts(rows) {
        let panels = (0..n.div_ceil(PANEL)).into_par_iter();
        panels.for_each_init(
            || worker(part.len(), 1),
            |(tiles, acc), p| {
                let cols = (n - p * PANEL).min(PANEL);
                let mut target = [Target {
                    panel: w.panel(p),
                    acc: &mut acc.0[0],
                    direct: (cols == PANEL).then_some(Direct {
                        out: out_ptr,
                        n,
                        c0: p * PANEL,
                    }),
                }];
                // SAFETY: rows * n is `out`'s length (the callers check it) and a whole
                // panel's columns lie inside it; no other task writes panel `p`'s columns, and
                // `out` is borrowed mutably for the whole loop.
                unsafe { panel_products(tiles, a, (rows, part.clone()), &mut target) };
                let [Target { acc, direct, .. }] = target;
                for (r, values) in part.clone().zip(acc.chunks_exact(PANEL)) {
                    if direct.is_some() && is_direct(rows, r) {
                        continue;
                    }
                    // SAFETY: as above, for row r < rows and columns `p * PANEL .. + cols` <= n.
                    unsafe { out_ptr.row(r, n, p * PANEL, cols) }.copy_from_slice(&values[..cols]);
                }
            },
        );
    }
}

/// The activation rows in parts of at most [`PART_ROWS`].
fn parts(rows: usize) -> impl Iterator<Item = Range<usize>> {
    (0..rows)
        .step_by(PART_ROWS)
        .map(move |r0| r0..(r0 + PART_ROWS).min(rows))
}

/// SwiGLU fused with its projection on AMX tiles: `out (rows, n / 2) = silu(g) * u` where
/// `g | u = bf16(x) @ w^T`, as [`super::linear_bf16::linear_silu_mul_bf16`] computes it.
pub fn linear_silu_mul_amx(x: &[f32], w: &PackedBf16, rows: usize, out: &mut [f32]) {
    let half = w.n / 2;
    assert!(
        super::linear_bf16::fuses_silu(w)
            && x.len() == rows * w.k
            && out.len() == rows * half
            && amx::available(),
        "linear_silu_mul_amx operands checked by the caller; this is a bug"
    );
    if rows == 0 || half == 0 {
        return;
    }
    let steps = w.k_stride / amx::STEP_PAIRS;
    let words = amx::pack_blocked(x, rows, w.k, steps);
    let sink = SwigluOut::Values {
        out: OutPtr(out.as_mut_ptr()),
        half,
    };
    // SAFETY: `out` holds rows * n / 2 values (asserted) and is borrowed mutably.
    unsafe {
        swiglu(
            Blocked {
                words: &words,
                steps,
            },
            w,
            rows,
            sink,
        )
    };
}

/// Whether [`mlp_amx`] runs this MLP: SwiGLU fuses with `gate_up` and `down` reduces over
/// its output, whose every panel is then one tile step of `down`'s operand.
pub fn fuses_mlp(gate_up: &PackedBf16, down: &PackedBf16) -> bool {
    super::linear_bf16::fuses_silu(gate_up)
        && down.k == gate_up.n / 2
        && down.k_stride / amx::STEP_PAIRS == down.k / PANEL
}

/// The whole MLP on AMX tiles: `out (rows, down.n) = (silu(g) * u) @ down^T` where `g | u =
/// bf16(x) @ gate_up^T`. The SwiGLU values go from the accumulators straight into `down`'s
/// blocked operand, rounded to bf16 as [`amx::pack_blocked`] rounds them, so the result is
/// [`linear_silu_mul_amx`] then [`linear_amx`], value for value, without the f32
/// intermediate written out and read back.
pub fn mlp_amx(x: &[f32], gate_up: &PackedBf16, down: &PackedBf16, rows: usize, out: &mut [f32]) {
    assert!(
        fuses_mlp(gate_up, down)
            && x.len() == rows * gate_up.k
            && out.len() == rows * down.n
            && amx::available(),
        "mlp_amx operands checked by the caller; this is a bug"
    );
    if rows == 0 || down.n == 0 {
        return;
    }
    let steps = gate_up.k_stride / amx::STEP_PAIRS;
    let down_steps = down.k_stride / amx::STEP_PAIRS;
    let mut act = amx::PackedRows::for_rows(rows, down_steps);
    {
        let words = amx::pack_blocked(x, rows, gate_up.k, steps);
        let sink = SwigluOut::Blocked {
            words: WordsPtr(act.words_mut().as_mut_ptr()),
            steps: down_steps,
        };
        // SAFETY: `act` holds whole groups of `rows` rows of `down_steps` steps, one per
        // panel of `gate_up`'s up half (`fuses_mlp`), and is borrowed mutably here.
        unsafe {
            swiglu(
                Blocked {
                    words: &words,
                    steps,
                },
                gate_up,
                rows,
                sink,
            )
        };
    }
    let act = Blocked {
        words: &act,
        steps: down_steps,
    };
    project(act, down, rows, out);
}

/// Blocked activation words written by panel tasks, each its own tile step of every row.
#[derive(Clone, Copy)]
struct WordsPtr(*mut u32);
// SAFETY: every task writes only its own panel's step (disjoint from every other task's),
// and the buffer outlives the parallel loop that borrows it.
unsafe impl Send for WordsPtr {}
unsafe impl Sync for WordsPtr {}

/// Where [`swiglu`] puts a panel's 32 values of a row.
#[derive(Clone, Copy)]
enum SwigluOut {
    /// f32 rows `half` wide.
    Values { out: OutPtr, half: usize },
    /// The next projection's blocked activations, `steps` tile steps a group of rows: panel
    /// `p` of row `r` is step `p` of that row, rounded to bf16 and paired.
    Blocked { words: WordsPtr, steps: usize },
}

/// `silu(g) * u` for `g | u = a @ w^T`, into `sink`.
///
/// # Safety
/// `sink` holds every row of `rows` for every panel of `w`'s up half, borrowed by no one
/// else meanwhile.
unsafe fn swiglu(a: Blocked<'_>, w: &PackedBf16, rows: usize, sink: SwigluOut) {
    let up_panels = w.n / 2 / PANEL;
    for part in parts(rows) {
        let panels = (0..up_panels).into_par_iter();
        panels.for_each_init(
            || worker(part.len(), 2),
            |(tiles, acc), p| {
                let [gate, up] = &mut acc.0[..] else {
                    unreachable!("two accumulators")
                };
                let mut targets = [
                    Target {
                        panel: w.panel(p),
                        acc: gate,
                        direct: None,
                    },
                    Target {
                        panel: w.panel(p + up_panels),
                        acc: up,
                        direct: None,
                    },
                ];
                // SAFETY: no direct output: everything stays in the accumulators.
                unsafe { panel_products(tiles, a, (rows, part.clone()), &mut targets) };
                let [gate, up] = targets.map(|target| target.acc);
                let pairs = gate.chunks_exact(PANEL).zip(up.chunks_exact(PANEL));
                for (r, (g, u)) in part.clone().zip(pairs) {
                    match sink {
                        SwigluOut::Values { out, half } => {
                            // SAFETY: row r < rows and columns `p * PANEL .. (p + 1) * PANEL`
                            // lie inside the sink (the contract); no other task touches panel
                            // `p`'s columns.
                            let dst = unsafe { out.row(r, half, p * PANEL, PANEL) };
                            silu_mul_into(Kernel::Amx, g, u, dst);
                        }
                        SwigluOut::Blocked { words, steps } => {
                            let mut values = [0.0f32; PANEL];
                            silu_mul_into(Kernel::Amx, g, u, &mut values);
                            let at = amx::blocked_word(r, p, steps);
                            // SAFETY: step p of row r lies inside the sink (the contract);
                            // no other task writes step p.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(words.0.add(at), amx::STEP_PAIRS)
                            };
                            pack_activations_strided(Kernel::Amx, &values, dst, CHUNK_WORDS);
                        }
                    }
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Weights `(n, k)` in [-1, 1), packed.
    fn weights(rng: &mut StdRng, n: usize, k: usize) -> PackedBf16 {
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        PackedBf16::pack(n, k, |r, out| out.copy_from_slice(&w[r * k..][..k]))
    }

    #[test]
    fn the_fused_mlp_equals_its_two_halves() {
        if !amx::available() {
            println!("skipped: no AMX");
            return;
        }
        // One row, rows short of a tile, a part and a half with a short last group, and an
        // output narrower than a panel.
        for (seed, &(rows, k, inter, n)) in [
            (1, 64, 64, 64),
            (13, 96, 128, 40),
            (300, 64, 96, 96),
            (32, 1024, 3072, 1024),
        ]
        .iter()
        .enumerate()
        {
            let mut rng = StdRng::seed_from_u64(500 + seed as u64);
            let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-2.0..2.0)).collect();
            let gate_up = weights(&mut rng, 2 * inter, k);
            let down = weights(&mut rng, n, inter);
            assert!(fuses_mlp(&gate_up, &down));
            let mut act = vec![f32::NAN; rows * inter];
            linear_silu_mul_amx(&x, &gate_up, rows, &mut act);
            let mut want = vec![f32::NAN; rows * n];
            linear_amx(&act, &down, rows, &mut want);
            // Buffers left full of NaN by an earlier pack: the fused path must write or
            // zero every word it reads.
            drop(amx::pack_blocked(
                &vec![f32::NAN; rows * inter],
                rows,
                inter,
                inter / 32,
            ));
            let mut got = vec![f32::NAN; rows * n];
            mlp_amx(&x, &gate_up, &down, rows, &mut got);
            assert_eq!(got, want, "{rows} x {k} -> {inter} -> {n}");
        }
    }

    #[test]
    fn an_mlp_whose_halves_do_not_meet_is_not_fused() {
        let mut rng = StdRng::seed_from_u64(9);
        let gate_up = weights(&mut rng, 128, 32);
        assert!(!fuses_mlp(&gate_up, &weights(&mut rng, 32, 96)));
        assert!(!fuses_mlp(
            &weights(&mut rng, 96, 32),
            &weights(&mut rng, 32, 48)
        ));
    }
}
