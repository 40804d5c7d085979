//! The AMX tile kernel alone, operands in L1: one 2x2 block of products (32 rows x 32 columns)
//! over 8 tile steps, repeated, from buffers that start on a 64-byte line and from the same
//! buffers 16 bytes further on (where the allocator's alignment may leave them). Shows why
//! `cpu::aligned` exists and what the kernel reaches when memory is not the limit.
//!
//! `cargo run --release -p gpu-worker --example amx_block` prints one JSON line:
//! `{"aligned_gflops": X, "misaligned_gflops": Y}` for one thread (the unit's peak is 1,024
//! FLOP per cycle per core: `bf16_peak`).

use std::time::Instant;

use gpu_worker::cpu::aligned::Aligned;
use gpu_worker::cpu::amx::{A_TILE_WORDS, Blocked, STEP_PAIRS, Start, Tiles, available};
use gpu_worker::cpu::pack_bf16::PANEL;

/// Tile steps per block: 16 KiB of A and 16 KiB of B, both in L1.
const STEPS: usize = 8;
/// Blocks per measurement.
const BLOCKS: usize = 200_000;

fn main() {
    if !available() {
        eprintln!("amx_block: this CPU has no AMX (or the kernel refused the tile state)");
        std::process::exit(1);
    }
    let aligned = rate(0);
    let misaligned = rate(4);
    println!("{{\"aligned_gflops\": {aligned:.0}, \"misaligned_gflops\": {misaligned:.0}}}");
}

/// GFLOP/s of [`BLOCKS`] blocks with every operand `offset` words past a cache line.
fn rate(offset: usize) -> f64 {
    let tiles = Tiles::configure().expect("AMX available");
    let a = Aligned::<u32>::zeroed(2 * STEPS * A_TILE_WORDS + offset);
    let panel = Aligned::<u32>::zeroed(STEPS * STEP_PAIRS * PANEL + offset);
    let mut out = Aligned::<f32>::zeroed(32 * PANEL + offset);
    let rows = Blocked {
        words: &a[offset..],
        steps: STEPS,
    };
    let start = Instant::now();
    for block in 0..BLOCKS {
        let from = if block == 0 {
            Start::Zero
        } else {
            Start::Accumulate
        };
        let dst = &mut out[offset..];
        tiles.products(rows, 0, 2, &panel[offset..], 0..STEPS, from, dst, PANEL);
    }
    let flops = (BLOCKS * STEPS * 4 * 16 * 16 * 32 * 2) as f64;
    flops / start.elapsed().as_secs_f64() / 1e9
}
