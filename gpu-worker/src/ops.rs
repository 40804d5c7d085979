//! The contract between the Qwen3 model and a compute backend.
//!
//! The model (`model::qwen3`) is written once over [`Ops`]; the CPU backend (`cpu`) and the
//! CUDA backend (`cuda`) implement it. Every op works on a packed variable-length batch:
//! sequences concatenated with no padding, described by a [`BatchLayout`]. Weights reach a
//! backend as [`TensorView`]s of the checkpoint's bytes.

use half::{bf16, f16};

/// Result of a backend op.
pub type OpResult<T> = Result<T, OpError>;

/// Failure inside a backend op.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Operand shapes disagree; the message names them.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The op that refused its operands.
        op: &'static str,
        /// What did not match.
        detail: String,
    },
    /// A weight cannot be used by this backend (dtype, size).
    #[error("unsupported weight: {0}")]
    Weight(String),
    /// The batch does not fit in the memory reserved for activations.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The device reported an error.
    #[error("device error: {0}")]
    Device(String),
}

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// A borrowed view of one stored tensor (little-endian, row-major): what a backend converts
/// into its weight formats.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    /// Name without the `model.` prefix.
    pub name: String,
    /// Stored element type.
    pub dtype: Dtype,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Raw bytes, `dtype.size() * product(shape)` of them.
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Converts to f32 (exact for bf16 and f16).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        convert_to_f32(self.dtype, self.data, &mut out);
        out
    }

    /// Row `row` of a 2-D tensor, converted to f32 into `out` (`out.len()` = columns).
    pub fn row_f32(&self, row: usize, out: &mut [f32]) {
        let row_bytes = out.len() * self.dtype.size();
        convert_to_f32(
            self.dtype,
            &self.data[row * row_bytes..(row + 1) * row_bytes],
            out,
        );
    }

    /// Row `row` of a 2-D tensor as a `(1, columns)` view of the same bytes (named
    /// `name[row]`); `None` when the tensor is not 2-D or has no such row.
    pub fn row(&self, row: usize) -> Option<TensorView<'a>> {
        let [rows, cols] = self.shape[..] else {
            return None;
        };
        if row >= rows {
            return None;
        }
        let row_bytes = cols * self.dtype.size();
        Some(TensorView {
            name: format!("{}[{row}]", self.name),
            dtype: self.dtype,
            shape: vec![1, cols],
            data: self.data.get(row * row_bytes..(row + 1) * row_bytes)?,
        })
    }
}

/// Converts little-endian `bytes` of `dtype` into `out` (one value per element of `out`).
pub fn convert_to_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

/// Where each sequence of a packed batch starts and ends, and which rows are queried.
///
/// Attention is causal and aligned bottom-right, as in flash-attention's variable-length
/// API: query row `i` of a sequence with `q_len` query rows and `k_len` key rows sees keys
/// `0..=k_len - q_len + i`. With all rows queried this is plain causal attention; with
/// only the last row queried (the final layer, where only the pooled token matters) that
/// row sees the whole sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLayout {
    /// Prefix sums of sequence lengths: sequence `s` holds rows `cu_seqlens[s]..cu_seqlens[s + 1]`.
    pub cu_seqlens: Vec<u32>,
    /// Position of every row inside its sequence (0-based), for the rotary embedding.
    pub positions: Vec<u32>,
    /// Row index of the last token of each sequence (the pooled token).
    pub last_rows: Vec<u32>,
}

impl BatchLayout {
    /// The layout of sequences of the given lengths. Fails on an empty batch or an empty
    /// sequence.
    pub fn from_lengths(lengths: &[usize]) -> OpResult<Self> {
        if lengths.is_empty() || lengths.contains(&0) {
            return Err(OpError::Shape {
                op: "layout",
                detail: format!(
                    "every batch needs at least one non-empty sequence, got lengths {lengths:?}"
                ),
            });
        }
        let total: usize = lengths.iter().sum();
        if total > u32::MAX as usize {
            return Err(OpError::Shape {
                op: "layout",
                detail: format!("{total} tokens do not fit 32-bit row indices"),
            });
        }
        let mut cu_seqlens = Vec::with_capacity(lengths.len() + 1);
        let mut positions = Vec::with_capacity(total);
        let mut last_rows = Vec::with_capacity(lengths.len());
        let mut start = 0u32;
        cu_seqlens.push(0);
        for &len in lengths {
            positions.extend(0..len as u32);
            start += len as u32;
            cu_seqlens.push(start);
            last_rows.push(start - 1);
        }
        Ok(Self {
            cu_seqlens,
            positions,
            last_rows,
        })
    }

    /// Number of sequences.
    pub fn num_seqs(&self) -> usize {
        self.cu_seqlens.len() - 1
    }

    /// Number of rows (tokens).
    pub fn num_rows(&self) -> usize {
        self.positions.len()
    }

    /// Length of the longest sequence.
    pub fn max_len(&self) -> usize {
        self.cu_seqlens
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }

    /// Prefix sums for a query made of the last row of every sequence (`[0, 1, .., n]`).
    pub fn cu_last_rows(&self) -> Vec<u32> {
        (0..=self.num_seqs() as u32).collect()
    }
}

/// Head geometry of the attention, from the model configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads; query head `h` reads kv head `h / (num_heads / num_kv_heads)`.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl AttentionShape {
    /// Width of a fused q|k|v row: `(num_heads + 2 * num_kv_heads) * head_dim`.
    pub fn qkv_width(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    /// Width of the attention output row: `num_heads * head_dim`.
    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Softmax scale, `1 / sqrt(head_dim)`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// The weights and constants of the per-head q/k RMSNorms and the rotary embedding, from one
/// decoder layer and the model configuration.
#[derive(Debug)]
pub struct QkNorms<'a, V> {
    /// RMSNorm weight of every q head, `(head_dim,)`.
    pub q_norm: &'a V,
    /// RMSNorm weight of every k head, `(head_dim,)`.
    pub k_norm: &'a V,
    /// The norms' epsilon (`rms_norm_eps`).
    pub eps: f32,
    /// Rotary base (`rope_theta`).
    pub rope_theta: f32,
}

/// The decoder layers of a pass ([`Ops::pass`]): from the embedded tokens `(rows, hidden)`
/// and the uploaded layout to the last rows' hidden states `(sequences, hidden)`.
pub type Decoder<'a, B> =
    dyn Fn(<B as Ops>::Tensor, &<B as Ops>::Layout) -> OpResult<<B as Ops>::Tensor> + 'a;

/// The ops the Qwen3 forward pass needs. Activations are row-major `(rows, cols)` matrices.
pub trait Ops {
    /// An activation matrix held by the backend.
    type Tensor;
    /// A weight matrix `(out, in)` held by the backend (used as `x @ w^T`).
    type Matrix;
    /// A vector of norm weights held by the backend.
    type Vector;
    /// The token embedding table `(vocab, hidden)`.
    type Table;
    /// A batch layout uploaded to the backend once per forward pass.
    type Layout;

    /// Short name for logs and `/debug` (`cpu-f32`, `cuda-bf16`, `cuda-fp8`).
    fn name(&self) -> String;

    /// What the backend runs on, for status reports. Backends with device memory override it.
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            description: self.name(),
            memory_used: None,
            memory_total: None,
        }
    }

    /// Stacks `parts` (each `(out_i, in)`, same `in`) along the output dimension into one
    /// matrix, converting to the backend's weight format (fuses q|k|v and gate|up).
    fn matrix(&self, parts: &[TensorView<'_>]) -> OpResult<Self::Matrix>;
    /// Converts a 1-D weight.
    fn vector(&self, view: TensorView<'_>) -> OpResult<Self::Vector>;
    /// Converts the embedding table.
    fn table(&self, view: TensorView<'_>) -> OpResult<Self::Table>;
    /// Uploads a batch layout.
    fn layout(&self, layout: &BatchLayout) -> OpResult<Self::Layout>;

    /// Embedding gather: row `i` of the result is `table[token_ids[i]]`.
    fn embed(&self, table: &Self::Table, token_ids: &[u32]) -> OpResult<Self::Tensor>;
    /// `x / sqrt(mean(x^2) + eps) * weight`, row by row.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Vector, eps: f32)
    -> OpResult<Self::Tensor>;
    /// Fused residual step: `residual += delta`, then returns `rms_norm(residual)`.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Vector,
        eps: f32,
    ) -> OpResult<Self::Tensor>;
    /// `residual += delta`.
    fn add(&self, residual: &mut Self::Tensor, delta: &Self::Tensor) -> OpResult<()>;
    /// `x @ w^T`: `(rows, in)` times `(out, in)` gives `(rows, out)`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Matrix) -> OpResult<Self::Tensor>;
    /// On a fused q|k|v tensor, in place: RMSNorm of every q head with `norms.q_norm` and
    /// every k head with `norms.k_norm` (over `head_dim`), then the rotary embedding
    /// (rotate-half layout, `inv_freq[i] = theta^(-2i/head_dim)`, angle
    /// `position * inv_freq` in f32) at each row's position. v is left untouched.
    fn qk_norm_rope(
        &self,
        qkv: &mut Self::Tensor,
        norms: &QkNorms<'_, Self::Vector>,
        layout: &Self::Layout,
        shape: AttentionShape,
    ) -> OpResult<()>;
    /// Causal grouped-query attention inside each sequence (see [`BatchLayout`] for the
    /// bottom-right alignment). `q` and `kv` are fused q|k|v tensors: q heads are read from
    /// `q` (rows grouped by `cu_seqlens_q`), k and v heads from `kv` (rows grouped by the
    /// layout's `cu_seqlens`). Returns `(q rows, num_heads * head_dim)`, heads concatenated.
    fn attention(
        &self,
        q: &Self::Tensor,
        kv: &Self::Tensor,
        layout: &Self::Layout,
        queries: Queries,
        shape: AttentionShape,
    ) -> OpResult<Self::Tensor>;
    /// A layer's self-attention from its fused q|k|v projection: [`Self::qk_norm_rope`], then
    /// [`Self::attention`] of every row (`Queries::All`) or of each sequence's last row
    /// (`Queries::LastOnly`) over all rows ([`attend`]). Backends that fuse the steps
    /// override it; by default they run one after the other.
    fn self_attention(
        &self,
        mut qkv: Self::Tensor,
        norms: &QkNorms<'_, Self::Vector>,
        layout: &Self::Layout,
        queries: Queries,
        shape: AttentionShape,
    ) -> OpResult<Self::Tensor> {
        self.qk_norm_rope(&mut qkv, norms, layout, shape)?;
        attend(self, &qkv, layout, queries, shape)
    }
    /// SwiGLU on a fused gate|up tensor `(rows, 2 * n)`: `silu(gate) * up`, `(rows, n)`.
    fn silu_mul(&self, gate_up: &Self::Tensor) -> OpResult<Self::Tensor>;
    /// The MLP's first half, `silu_mul(linear(x, gate_up))`. Backends that fuse the two
    /// override it; by default they run one after the other.
    fn linear_silu_mul(&self, x: &Self::Tensor, gate_up: &Self::Matrix) -> OpResult<Self::Tensor> {
        self.silu_mul(&self.linear(x, gate_up)?)
    }
    /// The whole MLP, `linear(linear_silu_mul(x, gate_up), down)`. Backends that fuse it
    /// override it; by default its two halves run one after the other.
    fn mlp(
        &self,
        x: &Self::Tensor,
        gate_up: &Self::Matrix,
        down: &Self::Matrix,
    ) -> OpResult<Self::Tensor> {
        self.linear(&self.linear_silu_mul(x, gate_up)?, down)
    }
    /// One forward pass: uploads `layout`, gathers `token_ids` from `table`, and runs
    /// `decoder` over the embedded tokens; returns what `decoder` returns (the last rows'
    /// hidden states). Backends that record a pass once and replay it for later batches of
    /// the same shape (CUDA graphs) override it; by default it runs `decoder` directly.
    fn pass(
        &self,
        table: &Self::Table,
        token_ids: &[u32],
        layout: &BatchLayout,
        decoder: &Decoder<'_, Self>,
    ) -> OpResult<Self::Tensor> {
        let device_layout = self.layout(layout)?;
        decoder(self.embed(table, token_ids)?, &device_layout)
    }
    /// The last row of every sequence, `(num_seqs, cols)`.
    fn last_rows(&self, x: &Self::Tensor, layout: &Self::Layout) -> OpResult<Self::Tensor>;
    /// Pooling head on the last rows `(num_seqs, hidden)`: final RMSNorm, then for each row
    /// its first `dims[i]` values, L2-normalized when `normalize[i]` (else as they are).
    /// Returns the vectors on the host.
    fn pool(
        &self,
        last: &Self::Tensor,
        norm: &Self::Vector,
        eps: f32,
        dims: &[usize],
        normalize: &[bool],
    ) -> OpResult<Vec<Vec<f32>>>;
    /// Copies a tensor to the host as f32, row-major (the reranker's logits; traces and tests).
    fn to_host(&self, x: &Self::Tensor) -> OpResult<Vec<f32>>;
}

/// A backend's device, as reported to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Name and capabilities (e.g. `NVIDIA H100 80GB HBM3, sm_90` or `cpu, 2 threads`).
    pub description: String,
    /// Device memory this process uses, bytes.
    pub memory_used: Option<u64>,
    /// Device memory in total, bytes.
    pub memory_total: Option<u64>,
}

/// [`Ops::attention`] of a fused q|k|v tensor whose q and k heads are normalized and rotated,
/// over itself: every row, or (`Queries::LastOnly`) each sequence's last row.
pub fn attend<B: Ops + ?Sized>(
    backend: &B,
    qkv: &B::Tensor,
    layout: &B::Layout,
    queries: Queries,
    shape: AttentionShape,
) -> OpResult<B::Tensor> {
    match queries {
        Queries::All => backend.attention(qkv, qkv, layout, queries, shape),
        Queries::LastOnly => {
            let q = backend.last_rows(qkv, layout)?;
            backend.attention(&q, qkv, layout, queries, shape)
        }
    }
}

/// Which rows of each sequence the attention computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queries {
    /// Every row (all layers but the last).
    All,
    /// Only the last row of each sequence; `q` holds one row per sequence.
    LastOnly,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_from_lengths() {
        let layout = BatchLayout::from_lengths(&[2, 3, 1]).unwrap();
        assert_eq!(layout.cu_seqlens, vec![0, 2, 5, 6]);
        assert_eq!(layout.positions, vec![0, 1, 0, 1, 2, 0]);
        assert_eq!(layout.last_rows, vec![1, 4, 5]);
        assert_eq!(layout.max_len(), 3);
        assert_eq!(layout.cu_last_rows(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_row_view_holds_that_rows_bytes() {
        let bytes: Vec<u8> = (0u8..12).collect();
        let view = TensorView {
            name: "w".into(),
            dtype: Dtype::Bf16,
            shape: vec![3, 2],
            data: &bytes,
        };
        let row = view.row(1).unwrap();
        assert_eq!(row.name, "w[1]");
        assert_eq!(row.shape, vec![1, 2]);
        assert_eq!(row.data, &bytes[4..8]);
        assert!(view.row(3).is_none());
        let flat = TensorView {
            shape: vec![6],
            ..view
        };
        assert!(flat.row(0).is_none());
    }

    #[test]
    fn empty_layouts_are_refused() {
        assert!(BatchLayout::from_lengths(&[]).is_err());
        assert!(BatchLayout::from_lengths(&[3, 0]).is_err());
    }
}
