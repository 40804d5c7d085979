//! The rate of one bf16 projection of the CPU backend, on each kernel this CPU runs: `x @
//! w^T` for `(rows, k) x (n, k)`, timed over repeated calls after a warm-up, in GFLOP/s
//! (two operations per multiply-add). Compare with `bf16_peak`'s ceilings.
//!
//! `cargo run --release -p gpu-worker --example bf16_linear [-- ROWS K N [KERNEL]]`
//! (default: 512 1024 3072, the 0.6B model's gate|up projection of 512 tokens halved; every
//! kernel, or only the one named: amx_bf16, avx512_bf16, portable) prints one JSON line per
//! kernel: `{"kernel": K, "rows": R, "k": K, "n": N, "gflops": X}`.

use std::time::Instant;

use gpu_worker::cpu::linear_bf16::{Kernel, linear_bf16};
use gpu_worker::cpu::pack_bf16::PackedBf16;

/// Seconds each kernel is timed for (at least one call).
const SECONDS: f64 = 1.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size = |i: usize, default: usize| {
        args.get(i).map_or(default, |a| {
            a.parse().expect("ROWS K N are positive integers")
        })
    };
    let only = args.get(3).map(String::as_str);
    run(size(0, 512), size(1, 1024), size(2, 3072), only)
}

fn run(rows: usize, k: usize, n: usize, only: Option<&str>) {
    // Deterministic values in [-1, 1): the rate does not depend on them.
    let value = |i: usize| ((i.wrapping_mul(2_654_435_761) % 2000) as f32) / 1000.0 - 1.0;
    let x: Vec<f32> = (0..rows * k).map(value).collect();
    let w = PackedBf16::pack(n, k, |r, out| {
        for (i, v) in out.iter_mut().enumerate() {
            *v = value(r * k + i + 7);
        }
    });
    let mut out = vec![0.0f32; rows * n];
    let chosen = |kernel: &Kernel| only.is_none_or(|name| name == kernel.name());
    for kernel in Kernel::all_supported().into_iter().filter(chosen) {
        linear_bf16(&x, &w, rows, &mut out, kernel);
        let start = Instant::now();
        let mut calls = 0u32;
        while calls == 0 || start.elapsed().as_secs_f64() < SECONDS {
            linear_bf16(&x, &w, rows, &mut out, kernel);
            calls += 1;
        }
        let seconds = start.elapsed().as_secs_f64() / f64::from(calls);
        let gflops = 2.0 * (rows * k * n) as f64 / seconds / 1e9;
        println!(
            "{{\"kernel\": \"{}\", \"rows\": {rows}, \"k\": {k}, \"n\": {n}, \"gflops\": {gflops:.1}}}",
            kernel.name()
        );
    }
}
