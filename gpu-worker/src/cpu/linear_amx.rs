//! `x @ w^T` with bf16 weights on AMX tiles: the [`super::linear_bf16`] products (and its
//! fused SwiGLU) where [`Kernel::Amx`] is chosen. Same operands, same arithmetic (exact bf16
//! products, f32 sums), so the same values up to the order of the f32 sums.
//!
//! # Blocking
//! Threads split the weight panels (32 columns, two B tiles). A thread walks its panel's
//! reduction in chunks of [`CHUNK_STEPS`] tile steps: the chunk (16 KiB of weights) stays
//! in L1 while every block of 32 activation rows (two A tiles, packed by
//! [`amx::pack_blocked`]) streams past it, the block's four C tiles reloaded from and stored
//! to the thread's accumulator between chunks. A last block of at most 16 rows uses one A
//! tile. A large batch goes through in parts of [`PART_ROWS`] rows, each part's packed
//! activations staying in L2 while all panels pass.

use std::ops::Range;

use rayon::prelude::*;

use super::aligned::Aligned;
use super::amx::{self, Blocked, Start, TILE_ROWS, Tiles};
use super::linear_bf16::{OutPtr, silu_mul_into};
use super::pack_bf16::{Kernel, PANEL, PackedBf16};

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
                prefetch_share(target.panel, chunk.end, (block, blocks));
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

thread_local! {
    /// Accumulators a thread used before, kept for its next projection: at most
    /// `PART_ROWS * PANEL` values each, they are reused rather than zeroed afresh (zeroing
    /// them was 2% of a bf16 pass).
    static KEPT: std::cell::RefCell<Vec<Aligned<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Accumulator buffers on loan from the thread's [`KEPT`] ones, given back on drop. Their
/// values are whatever the last user left: every block writes its rows before reading them.
struct Accumulators(Vec<Aligned<f32>>);

impl Accumulators {
    /// `count` buffers of at least `len` values.
    fn take(count: usize, len: usize) -> Self {
        let mut kept = KEPT.with_borrow_mut(std::mem::take);
        kept.retain(|buffer| buffer.len() >= len);
        kept.truncate(count);
        while kept.len() < count {
            kept.push(Aligned::zeroed(len.max(PART_ROWS * PANEL)));
        }
        Self(kept)
    }
}

impl Drop for Accumulators {
    fn drop(&mut self) {
        let buffers = std::mem::take(&mut self.0);
        KEPT.with_borrow_mut(|kept| {
            if kept.len() < 2 {
                kept.extend(buffers);
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
    let a = Blocked {
        words: &words,
        steps,
    };
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
                // SAFETY: rows * n is `out`'s length (checked above) and a whole panel's columns
                // lie inside it; no other task writes panel `p`'s columns, and `out` is borrowed
                // mutably for the whole loop.
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
    let a = Blocked {
        words: &words,
        steps,
    };
    let up_panels = half / PANEL;
    let out_ptr = OutPtr(out.as_mut_ptr());
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
                    // SAFETY: row r < rows and columns `p * PANEL .. (p + 1) * PANEL` <= n / 2
                    // lie inside `out` (rows * n / 2, checked above); no other task touches
                    // panel `p`'s columns, and `out` is borrowed mutably for the whole loop.
                    let dst = unsafe { out_ptr.row(r, half, p * PANEL, PANEL) };
                    silu_mul_into(Kernel::Amx, g, u, dst);
                }
            },
        );
    }
}
