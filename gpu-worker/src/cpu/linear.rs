//! `x @ w^T` through the `gemm` crate, on every core for large products.

use gemm::Parallelism;

/// Products below this many multiply-adds run on one thread (thread hand-off costs more;
/// see `PARALLEL_MIN_ELEMENTS` in the backend's module for how it was measured).
const PARALLEL_MIN_FLOPS: usize = 1 << 22;

/// `out (rows, n) = x (rows, k) @ w^T`, with `w` stored row-major as `(n, k)`.
pub fn linear(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize, out: &mut [f32]) {
    assert!(
        x.len() == rows * k && w.len() == n * k && out.len() == rows * n,
        "linear operands checked by the caller; this is a bug"
    );
    let parallelism = if rows * k * n < PARALLEL_MIN_FLOPS {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    };
    // SAFETY: the pointers come from slices whose lengths were just checked against the
    // strides: `out` is (rows, n) row-major (column stride 1, row stride n), `x` is
    // (rows, k) row-major, and `w^T` is read as a (k, n) matrix with column stride k and
    // row stride 1. `out` does not alias the inputs (it is a distinct `&mut`).
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
