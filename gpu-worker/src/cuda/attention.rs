//! Launcher of `kernels/attention.cu` (CPU twin: `cpu/attention.rs`).

use half::bf16;

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::qk_norm_rope::{self, check_head_dim};
use super::tensor::TensorData;
use super::{
    CudaBackend, CudaLayout, CudaTensor, CudaVector, check_cols, check_rows, int, shape_error,
};
use crate::ops::{AttentionShape, OpResult, QkNorms, Queries};

/// Query rows per block: `ROWS` in `kernels/attention.cu` (4 warps of 16 rows).
pub(super) const ROWS_PER_TILE: u32 = 64;

/// Threads per block: 4 warps.
const THREADS: u32 = 128;

/// The attention tiles of a batch whose query rows are grouped by `cu_q`: a
/// `(sequence, first row)` pair for every `ROWS_PER_TILE` query rows of every sequence.
pub(super) fn tiles(cu_q: &[u32]) -> Vec<u32> {
    cu_q.windows(2)
        .enumerate()
        .flat_map(|(seq, w)| {
            (0..w[1] - w[0])
                .step_by(ROWS_PER_TILE as usize)
                .flat_map(move |first| [seq as u32, first])
        })
        .collect()
}

/// Causal GQA of the q heads of `q` over the k/v heads of `kv` (both bf16 fused q|k|v),
/// into `(q rows, num_heads * head_dim)` bf16. With `raw_q`, the q heads have not been
/// normalized and rotated: the kernel does it with `raw_q.q_norm` as it loads them (the k
/// heads must have been, by `qk_norm_rope` with `Heads::KeyOnly`).
pub(super) fn attention(
    gpu: &CudaBackend,
    q: &CudaTensor,
    kv: &CudaTensor,
    layout: &CudaLayout,
    queries: Queries,
    shape: AttentionShape,
    raw_q: Option<&QkNorms<'_, CudaVector>>,
) -> OpResult<CudaTensor> {
    const OP: &str = "attention";
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 || num_heads > u16::MAX as usize {
        return Err(shape_error(
            OP,
            format!("{num_heads} query heads cannot share {num_kv_heads} kv heads"),
        ));
    }
    let k = &gpu.kernels;
    let by_width = match raw_q {
        None => [
            (16, &k.attention_d16),
            (32, &k.attention_d32),
            (64, &k.attention_d64),
            (128, &k.attention_d128),
            (256, &k.attention_d256),
        ],
        Some(_) => [
            (16, &k.attention_rope_d16),
            (32, &k.attention_rope_d32),
            (64, &k.attention_rope_d64),
            (128, &k.attention_rope_d128),
            (256, &k.attention_rope_d256),
        ],
    };
    let Some((_, kernel)) = by_width
        .into_iter()
        .find(|&(width, _)| head_dim <= width)
        .filter(|_| head_dim > 0 && head_dim % 2 == 0)
    else {
        return Err(shape_error(
            OP,
            format!("head_dim {head_dim} must be even and at most 256"),
        ));
    };
    check_cols(OP, "q", q.cols, shape.qkv_width())?;
    check_cols(OP, "kv", kv.cols, shape.qkv_width())?;
    let (cu_q, tiles, q_rows) = match queries {
        Queries::All => (
            layout.cu_seqlens(),
            layout.tiles_all(),
            layout.host.num_rows(),
        ),
        Queries::LastOnly => (
            layout.cu_last_rows(),
            layout.tiles_last(),
            layout.host.num_seqs(),
        ),
    };
    let cu_k = layout.cu_seqlens();
    check_rows(OP, "q", q.rows, q_rows)?;
    check_rows(OP, "kv", kv.rows, layout.host.num_rows())?;
    let q_data = q.bf16(OP, "q")?;
    let kv_data = kv.bf16(OP, "kv")?;

    let stride = int(OP, "qkv width", shape.qkv_width())?;
    let k_offset = int(OP, "k offset", num_heads * head_dim)?;
    let v_offset = int(OP, "v offset", (num_heads + num_kv_heads) * head_dim)?;
    let out_stride = int(OP, "output width", shape.q_width())?;
    let head_dim_arg = int(OP, "head_dim", head_dim)?;
    let group = int(OP, "group", num_heads / num_kv_heads)?;
    let scale = shape.scale();
    // What the `_rope` entry points read to normalize and rotate q; the others ignore it (a
    // null q_norm and rope, no positions).
    let positions = layout.positions();
    let (q_norm, rope, table_rows, eps) = match raw_q {
        Some(norms) => {
            check_head_dim(OP, head_dim)?;
            check_cols(OP, "q_norm", norms.q_norm.len(), head_dim)?;
            let (rope, table_rows) = qk_norm_rope::rope(gpu, layout, head_dim, norms.rope_theta)?;
            // The guards these return record nothing: the backend turned event tracking off.
            let (q_norm, _) = norms.q_norm.data.device_ptr(&gpu.stream);
            let (rope, _) = rope.device_ptr(&gpu.stream);
            (q_norm, rope, table_rows, norms.eps)
        }
        None => (0, 0, 0, 0.0),
    };
    let config = LaunchConfig {
        grid_dim: (
            int(OP, "tiles", tiles.len() / 2)? as u32,
            num_heads as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut out = gpu.alloc::<bf16>(OP, q_rows * shape.q_width())?;
    // SAFETY: attention_dN and attention_rope_dN(const bf16* q, const bf16* kv, bf16* out,
    // const unsigned* cu_q, const unsigned* cu_k, const unsigned* tiles, int q_stride, int
    // kv_stride, int k_offset, int v_offset, int out_stride, int head_dim, int group, float
    // scale, const unsigned* positions, const float* q_norm, const float* rope, int
    // table_rows, float eps). For the `_rope` kernels, positions holds one per key row, each
    // below table_rows (the layout's rope_rows cover its longest sequence), q_norm head_dim
    // values and rope 2 * table_rows * head_dim / 2, head_dim <= 256 (checked); the others
    // read none of the five (null pointers). q and kv hold
    // (rows, qkv width) rows as grouped by cu_q and the layout's cu_seqlens (checked), every
    // sequence has at least as many keys as queries (both prefix sums come from one layout),
    // the tiles cover exactly the query rows, head_dim is even and at most the kernel's
    // width, every offset and stride is even (so the kernel's 4-byte loads are aligned), and
    // out holds (q rows, num_heads * head_dim). Grid: one block per (tile, query head).
    unsafe {
        gpu.stream
            .launch_builder(kernel)
            .arg(q_data)
            .arg(kv_data)
            .arg(&mut out)
            .arg(&cu_q)
            .arg(&cu_k)
            .arg(&tiles)
            .arg(&stride)
            .arg(&stride)
            .arg(&k_offset)
            .arg(&v_offset)
            .arg(&out_stride)
            .arg(&head_dim_arg)
            .arg(&group)
            .arg(&scale)
            .arg(&positions)
            .arg(&q_norm)
            .arg(&rope)
            .arg(&table_rows)
            .arg(&eps)
            .launch(config)
    }?;
    Ok(CudaTensor {
        rows: q_rows,
        cols: shape.q_width(),
        data: TensorData::Bf16(out),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_every_query_row_once() {
        // Sequences of 1, 64, 65 and 130 rows.
        let cu = [0, 1, 65, 130, 260];
        assert_eq!(
            tiles(&cu),
            vec![0, 0, 1, 0, 2, 0, 2, 64, 3, 0, 3, 64, 3, 128]
        );
        assert_eq!(tiles(&[0, 1, 2, 3]), vec![0, 0, 1, 0, 2, 0]);
    }
}
