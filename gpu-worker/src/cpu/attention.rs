//! Causal grouped-query attention over a packed variable-length batch (CPU twin of
//! `kernels/attention.cu`). Each task is one block of query rows of one head of one sequence:
//! scores `Q K^T` and output `P V` go through the f32 GEMM (or, in bf16, the bf16 tiles of
//! [`super::attention_bf16`]), softmax in f32 in between. Memory is one `rows x keys` score
//! block per task, never a `T x T` matrix for the whole batch.

use gemm::Parallelism;
use rayon::prelude::*;

use super::attention_amx::attend_amx;
use super::attention_bf16::{PackedKv, attend_bf16, pack_kv};
use super::exp::exp;
use super::linear_bf16::{Kernel, OutPtr};
use crate::ops::AttentionShape;

/// Query rows per task: large enough for the GEMM to run at speed, small enough that a
/// score block of a 32k-token sequence stays at 16 MiB.
const QUERY_BLOCK: usize = 128;

/// Batches with fewer score multiply-adds than this are attended on the calling thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 20;

/// One unit of work: query rows `rows` (absolute row indices in `q`) of head `head`, in a
/// sequence whose keys start at row `k_start` of `kv`; row `r` sees `visible0 + (r - rows.start)`
/// keys.
struct Task {
    /// The sequence.
    seq: usize,
    head: usize,
    rows: std::ops::Range<usize>,
    k_start: usize,
    visible0: usize,
}

/// What attention's two products compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// f32 operands (the exact reference).
    F32,
    /// Operands rounded to bf16, f32 sums, on this kernel.
    Bf16(Kernel),
}

/// Attention of the q heads of `q` (rows grouped by `cu_q`) over the k/v heads of `kv`
/// (rows grouped by `cu_k`), both fused q|k|v tensors `shape.qkv_width()` wide. Causal,
/// bottom-right aligned: query row `i` of a sequence with `q_len` rows sees keys
/// `0..=k_len - q_len + i`. Returns `(q rows, num_heads * head_dim)`.
pub fn attention(
    q: &[f32],
    kv: &[f32],
    cu_q: &[u32],
    cu_k: &[u32],
    shape: AttentionShape,
    products: Products,
) -> Vec<f32> {
    let out_width = shape.q_width();
    let d = shape.head_dim;
    let q_rows = q.len() / shape.qkv_width();
    let mut tasks = Vec::new();
    for s in 0..cu_q.len() - 1 {
        let (q_start, q_end) = (cu_q[s] as usize, cu_q[s + 1] as usize);
        let (k_start, k_len) = (cu_k[s] as usize, (cu_k[s + 1] - cu_k[s]) as usize);
        for head in 0..shape.num_heads {
            for block in (q_start..q_end).step_by(QUERY_BLOCK) {
                let rows = block..(block + QUERY_BLOCK).min(q_end);
                // Keys visible to the block's first row.
                let visible0 = k_len - (q_end - q_start) + (block - q_start) + 1;
                tasks.push(Task {
                    seq: s,
                    head,
                    rows,
                    k_start,
                    visible0,
                });
            }
        }
    }
    let flops: usize = tasks
        .iter()
        .map(|task| task.rows.len() * (task.visible0 + task.rows.len()) * d)
        .sum();
    let parallel = flops >= PARALLEL_MIN_FLOPS;
    // In bf16, each sequence's K and V per key/value head are packed once for all its tasks.
    let packed: Vec<PackedKv> = match products {
        Products::Bf16(kernel) => {
            let heads = shape.num_kv_heads;
            let pack = |i: usize| {
                let (s, kv_head) = (i / heads, i % heads);
                let (k_start, k_end) = (cu_k[s] as usize, cu_k[s + 1] as usize);
                pack_kv(kv, shape, (k_start, k_end - k_start), kv_head, kernel)
            };
            let units = (cu_k.len() - 1) * heads;
            if parallel {
                (0..units).into_par_iter().map(pack).collect()
            } else {
                (0..units).map(pack).collect()
            }
        }
        Products::F32 => Vec::new(),
    };
    let group = shape.num_heads / shape.num_kv_heads;
    // Every (row, head) block is written below, each by its own task: the copy runs on
    // every thread rather than after the parallel loop on one.
    let mut out = super::spare::for_overwrite(q_rows * out_width);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |task: Task| {
        let operands = Operands::of(&task, shape, q.len(), kv.len());
        let block = match products {
            Products::F32 => attend(q, kv, &operands),
            Products::Bf16(kernel) => {
                let kv_packed = &packed[task.seq * shape.num_kv_heads + task.head / group];
                match kernel {
                    Kernel::Amx => attend_amx(q, &operands, kv_packed),
                    _ => attend_bf16(q, &operands, kv_packed, kernel),
                }
            }
        };
        for (r, values) in task.rows.clone().zip(block.chunks_exact(d)) {
            // SAFETY: row r < q_rows and head `task.head < num_heads` lie inside `out`
            // (q_rows * out_width); no other task has this (row, head), and `out` outlives
            // the loop.
            unsafe { out_ptr.row(r, out_width, task.head * d, d) }.copy_from_slice(values);
        }
    };
    if parallel {
        tasks.into_par_iter().for_each(run);
    } else {
        tasks.into_iter().for_each(run);
    }
    out
}

/// `x` reduced by `op` (associative, with identity `init`) in sixteen independent lanes, so
/// the compiler vectorizes it.
#[inline(always)]
fn lanes(x: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(init, |a, &b| op(a, b));
    for chunk in chunks {
        for (a, &b) in acc.iter_mut().zip(chunk) {
            *a = op(*a, b);
        }
    }
    acc.into_iter().fold(tail, op)
}

/// Where one task's operands sit in `q` and `kv`, and what it attends to.
pub struct Operands {
    /// Width of a q|k|v row.
    pub width: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Softmax scale.
    pub scale: f32,
    /// Query rows.
    pub rows: usize,
    /// Keys visible to the first row; row `r` sees `visible0 + r`.
    pub visible0: usize,
    /// Keys visible to the last row (`visible0 + rows - 1`).
    pub keys: usize,
    /// Offset in `q` of the first query row's head.
    pub q_at: usize,
    /// Offset in `kv` of the first key's k head.
    pub k_at: usize,
    /// Offset in `kv` of the first key's v head.
    pub v_at: usize,
}

impl Operands {
    /// The operands of `task`, checked to lie inside `q` (`q_len` values) and `kv`.
    fn of(task: &Task, shape: AttentionShape, q_len: usize, kv_len: usize) -> Self {
        let width = shape.qkv_width();
        let d = shape.head_dim;
        let kv_head = task.head / (shape.num_heads / shape.num_kv_heads);
        let k_col = shape.num_heads * d + kv_head * d;
        let v_col = (shape.num_heads + shape.num_kv_heads) * d + kv_head * d;
        let rows = task.rows.len();
        let keys = task.visible0 + rows - 1;
        let operands = Self {
            width,
            head_dim: d,
            scale: shape.scale(),
            rows,
            visible0: task.visible0,
            keys,
            q_at: task.rows.start * width + task.head * d,
            k_at: task.k_start * width + k_col,
            v_at: task.k_start * width + v_col,
        };
        assert!(
            operands.q_at + (rows - 1) * width + d <= q_len
                && operands.v_at.max(operands.k_at) + (keys - 1) * width + d <= kv_len,
            "attention operands checked by the caller; this is a bug"
        );
        operands
    }
}

/// Softmax of one row of raw scores, `scale`d, in place, in f32: on 512-bit vectors where
/// the CPU has them (the same operations in the same order, so the same values; the
/// portable build's 128-bit vectors left `e^x` a tenth of a bf16 pass at 512 tokens).
pub fn softmax(seen: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::wide() {
        // SAFETY: the CPU has avx512f (`wide`).
        return unsafe { softmax_avx512(seen, scale) };
    }
    softmax_row(seen, scale)
}

/// [`softmax_row`] compiled for 512-bit vectors.
///
/// # Safety
/// The CPU must support avx512f.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(seen: &mut [f32], scale: f32) {
    softmax_row(seen, scale)
}

/// [`softmax`]'s arithmetic, inlined into each build of it.
#[inline(always)]
fn softmax_row(seen: &mut [f32], scale: f32) {
    let max = lanes(seen, f32::NEG_INFINITY, f32::max);
    seen.iter_mut().for_each(|p| *p = exp((*p - max) * scale));
    let inv = 1.0 / lanes(seen, 0.0, |a, b| a + b);
    seen.iter_mut().for_each(|p| *p *= inv);
}

/// One task's output in f32, `(rows, head_dim)`.
fn attend(q: &[f32], kv: &[f32], operands: &Operands) -> Vec<f32> {
    let &Operands {
        width,
        head_dim: d,
        rows,
        keys,
        q_at,
        k_at,
        v_at,
        ..
    } = operands;

    // 1. Scores: (rows, d) @ (keys, d)^T -> (rows, keys).
    let mut scores = vec![0.0f32; rows * keys];
    // SAFETY: `Operands::of` checked that every element read lies inside `q` and `kv`: q rows are
    // `width` apart with `d` contiguous values, k rows likewise (read transposed: column
    // stride `width`, row stride 1). `scores` is a fresh (rows, keys) row-major buffer.
    unsafe {
        gemm::gemm(
            rows,
            keys,
            d,
            scores.as_mut_ptr(),
            1,
            keys as isize,
            false,
            q.as_ptr().add(q_at),
            1,
            width as isize,
            kv.as_ptr().add(k_at),
            width as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }

    // 2. Causal softmax per row, in f32; masked keys get probability 0.
    for (r, row) in scores.chunks_exact_mut(keys).enumerate() {
        let (seen, masked) = row.split_at_mut(operands.visible0 + r);
        softmax(seen, operands.scale);
        masked.fill(0.0);
    }

    // 3. Output: (rows, keys) @ (keys, d) -> (rows, d).
    let mut out = vec![0.0f32; rows * d];
    // SAFETY: as above for v rows (`width` apart, `d` contiguous); `scores` is (rows, keys)
    // row-major and `out` a fresh (rows, d) row-major buffer.
    unsafe {
        gemm::gemm(
            rows,
            d,
            keys,
            out.as_mut_ptr(),
            1,
            d as isize,
            false,
            scores.as_ptr(),
            1,
            keys as isize,
            kv.as_ptr().add(v_at),
            1,
            width as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn the_wide_softmax_matches_the_portable_one() {
        if !crate::cpu::wide() {
            println!("skipped: no avx512f");
            return;
        }
        let mut rng = StdRng::seed_from_u64(7);
        for len in [1, 5, 16, 17, 100, 513] {
            let row: Vec<f32> = (0..len).map(|_| rng.random_range(-30.0..30.0)).collect();
            let mut portable = row.clone();
            softmax_row(&mut portable, 0.088);
            let mut wide = row;
            // SAFETY: the CPU has avx512f (checked above).
            unsafe { softmax_avx512(&mut wide, 0.088) };
            assert_eq!(
                wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{len} scores"
            );
        }
    }
}
