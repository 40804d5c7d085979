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

/// In place on the bf16 fused q|k|v tensor: per-head RMSNorm of q and k, then RoPE at each
/// row's position.
pub(super) fn qk_norm_rope(
    gpu: &CudaBackend,
    qkv: &mut CudaTensor,
    norms: &QkNorms<'_, CudaVector>,
    layout: &CudaLayout,
    shape: AttentionShape,
) -> OpResult<()> {
    const OP: &str = "qk_norm_rope";
    let d = shape.head_dim;
    if d == 0 || !d.is_multiple_of(2) || d > MAX_HEAD_DIM {
        return Err(shape_error(
            OP,
            format!("head_dim {d} must be even and at most {MAX_HEAD_DIM}"),
        ));
    }
    check_cols(OP, "qkv", qkv.cols, shape.qkv_width())?;
    check_cols(OP, "q_norm", norms.q_norm.len(), d)?;
    check_cols(OP, "k_norm", norms.k_norm.len(), d)?;
    check_rows(OP, "qkv", qkv.rows, layout.host.num_rows())?;
    let row_stride = int(OP, "qkv width", qkv.cols)?;
    let num_q_heads = int(OP, "num_heads", shape.num_heads)?;
    let num_k_heads = int(OP, "num_kv_heads", shape.num_kv_heads)?;
    let head_dim = int(OP, "head_dim", d)?;
    let config = LaunchConfig {
        grid_dim: (int(OP, "rows", qkv.rows)? as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let table_rows = int(OP, "rotary positions", layout.rope_rows)?;
    let rope = match layout.rope.get() {
        Some(rope) => rope,
        None => {
            let built = rope_table(gpu, table_rows, head_dim, norms.rope_theta)?;
            layout.rope.get_or_init(|| built)
        }
    };
    let positions = layout.positions();
    let data = qkv.bf16_mut(OP, "qkv")?;
    // SAFETY: qk_norm_rope(bf16* qkv, const unsigned* positions, const float* q_norm, const
    // float* k_norm, const float* rope, int table_rows, int row_stride, int num_q_heads, int
    // num_k_heads, int head_dim, float eps): qkv holds (rows, row_stride) with q and k heads
    // at its start, positions one per row (each below table_rows: the layout's rope_rows
    // cover its longest sequence), both norms head_dim values, rope 2 * table_rows *
    // head_dim / 2 values, head_dim even and <= 256 (checked); one block per row.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.qk_norm_rope)
            .arg(data)
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
