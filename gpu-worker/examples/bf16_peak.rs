//! The CPU's bf16 matrix ceilings: `vdpbf16ps` (AVX-512 BF16) on twelve independent
//! accumulators per thread, and, where the CPU has AMX, `tdpbf16ps` on four independent
//! tiles; one thread per core by default. The CPU backend's bf16 products run on one of
//! these (AMX where granted), so its rate bounds them (`bench/cpu_forward.sh` prints both).
//!
//! `cargo run --release -p gpu-worker --example bf16_peak [-- THREADS]` prints one JSON line:
//! `{"threads": N, "gflops": X, "amx_gflops": Y, "path": P}`, counting 64 floating-point
//! operations per `vdpbf16ps` (16 lanes, each two products and two sums) and 16,384 per
//! `tdpbf16ps` (16 x 16 outputs, 32 products and sums each); `amx_gflops` is null without
//! AMX, and `path` names the matrix path the backend picks (`Kernel::name`).

use std::time::Instant;

use gpu_worker::cpu::amx::Tiles;
use gpu_worker::cpu::linear_bf16::Kernel;

/// Instructions per thread: about half a second on a 3 GHz core.
const INSTRUCTIONS: u64 = 600_000_000;
/// Independent accumulators: enough to cover the instruction's latency.
const ACCUMULATORS: usize = 12;

fn main() {
    let threads = match std::env::args().nth(1) {
        Some(arg) => arg.parse().expect("THREADS is a positive integer"),
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    if !supported() {
        eprintln!("bf16_peak: this CPU has no AVX-512 BF16 instructions");
        std::process::exit(1);
    }
    let start = Instant::now();
    let sums: Vec<f32> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| spin(INSTRUCTIONS / ACCUMULATORS as u64)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("no panic"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let flops = (threads as u64 * INSTRUCTIONS * 64) as f64;
    std::hint::black_box(sums);
    let amx = amx_gflops(threads).map_or("null".to_string(), |g| format!("{g:.1}"));
    println!(
        "{{\"threads\": {threads}, \"gflops\": {:.1}, \"amx_gflops\": {amx}, \"path\": \"{}\"}}",
        flops / seconds / 1e9,
        Kernel::detect().name()
    );
}

/// `tdpbf16ps` instructions per thread: about half a second at 16 cycles each.
const TILE_INSTRUCTIONS: u64 = 100_000_000;

/// The AMX ceiling on `threads` threads, in GFLOP/s; `None` without AMX.
fn amx_gflops(threads: usize) -> Option<f64> {
    if !gpu_worker::cpu::amx::available() {
        return None;
    }
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| spin_tiles(TILE_INSTRUCTIONS / 4));
        }
    });
    let flops = (threads as u64 * TILE_INSTRUCTIONS * 16_384) as f64;
    Some(flops / start.elapsed().as_secs_f64() / 1e9)
}

/// `rounds` rounds of one `tdpbf16ps` into each of four tiles (zero operands: the rate
/// does not depend on the values).
#[cfg(target_arch = "x86_64")]
fn spin_tiles(rounds: u64) {
    let _tiles = Tiles::configure().expect("AMX available");
    // SAFETY: the tiles are configured on this thread; the instructions touch no memory.
    unsafe {
        std::arch::asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            options(nomem, nostack)
        );
        for _ in 0..rounds {
            std::arch::asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nomem, nostack)
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn spin_tiles(_rounds: u64) {
    unreachable!("AMX is never available here")
}

#[cfg(target_arch = "x86_64")]
fn supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn supported() -> bool {
    false
}

/// `rounds` rounds of one `vdpbf16ps` per accumulator; returns their sum so nothing is elided.
#[cfg(target_arch = "x86_64")]
fn spin(rounds: u64) -> f32 {
    // SAFETY: `main` checked that the CPU has both features.
    unsafe { spin_avx512(rounds) }
}

#[cfg(not(target_arch = "x86_64"))]
fn spin(_rounds: u64) -> f32 {
    unreachable!("supported() is false here")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn spin_avx512(rounds: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); ACCUMULATORS];
    // bf16 1.0 and 1.0078125, as opaque values the compiler cannot fold.
    let a: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi16(0x3f80)) };
    let b: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi16(0x3f81)) };
    let (a, b) = std::hint::black_box((a, b));
    for _ in 0..rounds {
        for value in &mut acc {
            *value = _mm512_dpbf16_ps(*value, a, b);
        }
    }
    acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}
