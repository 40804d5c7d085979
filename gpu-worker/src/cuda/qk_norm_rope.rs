//! Launcher of `kernels/qk_norm_rope.cu` (CPU twin: `cpu/qk_norm_rope.rs`).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{
    CudaBackend, CudaLayout, CudaTensor, CudaVector, check_cols, check_rows, int, shape_error,
};
use crate::ops::{AttentionShape, OpResult, QkNorms};

/// Widest head the kernel's rotary tables hold.
const MAX_HEAD_DIM: usize = 256;

/// Threads per row: 4 warps, each normalizing and rotating every 4th head.
const THREADS: u32 = 128;

/// Which heads of a fused q|k|v row [`qk_norm_rope`] normalizes and rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Heads {
    /// The q heads and the k heads.
    QueryAndKey,
    /// The k heads alone: the attention kernel's `_rope` entry points do the q heads as they
    /// load them.
    KeyOnly,
}

/// In place on the bf16 fused q|k|v tensor: per-head RMSNorm of the q and k heads (or the k
/// heads alone), then RoPE at each row's position.
pub(super) fn qk_norm_rope(
    gpu: &CudaBackend,
    qkv: &mut CudaTensor,
    norms: &QkNorms<'_, CudaVector>,
    layout: &CudaLayout,
    shape: AttentionShape,
    heads: Heads,
) -> OpResult<()> {
    const OP: &str = "qk_norm_rope";
    check_head_dim(OP, shape.head_dim)?;
    let d = shape.head_dim;
    check_cols(OP, "qkv", qkv.cols, shape.qkv_width())?;
    check_cols(OP, "q_norm", norms.q_norm.len(), d)?;
    check_cols(OP, "k_norm", norms.k_norm.len(), d)?;
    check_rows(OP, "qkv", qkv.rows, layout.host.num_rows())?;
    let row_stride = int(OP, "qkv width", qkv.cols)?;
    let (num_q_heads, first_head) = match heads {
        Heads::QueryAndKey => (int(OP, "num_heads", shape.num_heads)?, 0),
        Heads::KeyOnly => (0, shape.q_width()),
    };
    let num_k_heads = int(OP, "num_kv_heads", shape.num_kv_heads)?;
    let head_dim = int(OP, "head_dim", d)?;
    let config = LaunchConfig {
        grid_dim: (int(OP, "rows", qkv.rows)? as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (rope, table_rows) = rope(gpu, layout, shape.head_dim, norms.rope_theta)?;
    let positions = layout.positions();
    let mut data = qkv.bf16_mut(OP, "qkv")?.slice_mut(first_head..);
    // SAFETY: qk_norm_rope(bf16* qkv, const unsigned* positions, const float* q_norm, const
    // float* k_norm, const float* rope, int table_rows, int row_stride, int num_q_heads, int
    // num_k_heads, int head_dim, float eps): qkv holds (rows, row_stride) from its first q
    // head (or, with num_q_heads 0, from its first k head: every row's k heads then lie
    // within the view), positions one per row (each below table_rows: the layout's rope_rows
    // cover its longest sequence), both norms head_dim values, rope 2 * table_rows *
    // head_dim / 2 values, head_dim even and <= 256 (checked); one block per row.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.qk_norm_rope)
            .arg(&mut data)
            .arg(&positions)
            .arg(&norms.q_norm.data)
            .arg(&norms.k_norm.data)
            .arg(rope)
            .arg(&table_rows)
            .arg(&row_stride)
            .arg(&num_q_heads)
            .arg(&num_k_heads)
            .arg(&head_dim)
            .arg(&norms.eps)
            .launch(config)
    }?;
    Ok(())
}

/// Refuses a head width the kernels cannot normalize (`norm_rope_head` in `common.cuh`).
pub(super) fn check_head_dim(op: &'static str, head_dim: usize) -> OpResult<()> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > MAX_HEAD_DIM {
        return Err(shape_error(
            op,
            format!("head_dim {head_dim} must be even and at most {MAX_HEAD_DIM}"),
        ));
    }
    Ok(())
}

/// The batch's rotary table and how many positions it covers: built by the first call of a
/// pass (the first layer's), then read by every later one.
pub(super) fn rope<'l>(
    gpu: &CudaBackend,
    layout: &'l CudaLayout,
    head_dim: usize,
    theta: f32,
) -> OpResult<(&'l CudaSlice<f32>, i32)> {
    const OP: &str = "rope_table";
    let table_rows = int(OP, "rotary positions", layout.rope_rows)?;
    let rope = match layout.rope.get() {
        Some(rope) => rope,
        None => {
            let built = rope_table(gpu, table_rows, int(OP, "head_dim", head_dim)?, theta)?;
            layout.rope.get_or_init(|| built)
        }
    };
    Ok((rope, table_rows))
}

/// The rotary table for positions below `table_rows`: cos then sin, `table_rows * head_dim
/// / 2` values each.
fn rope_table(
    gpu: &CudaBackend,
    table_rows: i32,
    head_dim: i32,
    theta: f32,
) -> OpResult<CudaSlice<f32>> {
    const OP: &str = "rope_table";
    let half = head_dim as usize / 2;
    let mut rope = gpu.alloc::<f32>(OP, 2 * table_rows as usize * half)?;
    let config = LaunchConfig {
        grid_dim: (table_rows as u32, 1, 1),
        block_dim: ((half.div_ceil(32) * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: rope_table(float* rope, int table_rows, int head_dim, float theta): rope holds
    // 2 * table_rows * head_dim / 2 values; one block per position.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.rope_table)
            .arg(&mut rope)
            .arg(&table_rows)
            .arg(&head_dim)
            .arg(&theta)
            .launch(config)
    }?;
    Ok(rope)
}
