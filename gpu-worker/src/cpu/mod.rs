//! The CPU backend: every op on the host, using every core. In f32 ([`CpuBackend::F32`]) it
//! is the exact reference (matches transformers in float32) and the twin each CUDA kernel is
//! tested against; in bf16 ([`CpuBackend::bf16`]) the weights stay bf16 and the matrix
//! products (projections and attention's two) run with f32 sums on the fastest bf16 path
//! the CPU has, chosen once at start ([`pack_bf16::Kernel::detect`]): AMX tiles, then the
//! `avx512_bf16` dot product, then a portable loop; everything else stays in f32.
//!
//! # Layout
//! One file per op, each a plain function on slices: [`embed`], [`rms_norm`], [`add`],
//! [`qk_norm_rope`], [`attention`] (its bf16 products in [`attention_bf16`], on AMX in
//! [`attention_amx`]), [`silu_mul`], [`linear`] (f32) and [`linear_bf16`] (with SwiGLU fused
//! in; on AMX in [`linear_amx`], which also runs the whole MLP as one op), [`last_rows`],
//! [`pool`]; [`exp`] is the vectorizable `e^x` they share, [`pack_bf16`] the packed operands
//! of the bf16 products and the kernel choice, [`amx`] the tile unit, [`aligned`] their
//! buffers. [`spare`] keeps large activation buffers between ops. This module binds the ops
//! to [`Ops`], checking shapes.

pub mod add;
pub mod aligned;
pub mod amx;
pub mod attention;
pub mod attention_amx;
pub mod attention_bf16;
pub mod embed;
pub mod exp;
pub mod fp8_twin;
pub mod last_rows;
pub mod linear;
pub mod linear_amx;
pub mod linear_bf16;
pub mod pack_bf16;
pub mod pool;
pub mod qk_norm_rope;
pub mod rms_norm;
pub mod silu_mul;
pub mod spare;

use crate::ops::{
    AttentionShape, BatchLayout, DeviceInfo, OpError, OpResult, Ops, QkNorms, Queries, TensorView,
};
use embed::EmbeddingTable;
use pack_bf16::{Kernel, PackedBf16};
use qk_norm_rope::RopeTable;

/// Element-wise work on fewer elements than this runs on the calling thread: handing it to
/// the thread pool (a wake-up and a wait) costs more than the work. With every stage on the
/// same cores, a pool thread may wait its turn behind other processes; at `1 << 14` the
/// pool's waking, spinning and yielding were over half the worker's CPU samples serving
/// short queries at concurrency 32.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// A row-major f32 matrix on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values.
    pub data: Vec<f32>,
}

impl CpuTensor {
    /// Wraps `data` as a `(rows, cols)` matrix.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> OpResult<Self> {
        if data.len() != rows * cols {
            return Err(shape_error(
                "tensor",
                format!("{} values cannot form ({rows}, {cols})", data.len()),
            ));
        }
        Ok(Self { rows, cols, data })
    }

    /// A `(rows, cols)` output whose every value the caller writes (its initial values are
    /// unspecified: see [`spare::for_overwrite`]).
    fn for_overwrite(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: spare::for_overwrite(rows * cols),
        }
    }
}

impl Drop for CpuTensor {
    fn drop(&mut self) {
        spare::give_back(std::mem::take(&mut self.data));
    }
}

/// A weight matrix `(out, in)`, converted once at load to the backend's precision.
#[derive(Debug)]
pub struct CpuMatrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The values.
    pub values: MatrixValues,
}

/// The stored values of a [`CpuMatrix`].
#[derive(Debug)]
pub enum MatrixValues {
    /// Row-major f32.
    F32(Vec<f32>),
    /// bf16, packed for [`linear_bf16::linear_bf16`].
    Bf16(PackedBf16),
}

/// The host layout of a batch plus its rotary tables.
pub struct CpuLayout {
    layout: BatchLayout,
    /// Rotary tables up to the longest sequence, built on first use.
    rope: std::sync::OnceLock<RopeTable>,
}

/// Precision of the CPU backend's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuPrecision {
    /// f32 weights and products: the exact reference.
    F32,
    /// bf16 weights and bf16-rounded activations, f32 accumulation.
    Bf16,
}

/// The CPU backend.
#[derive(Debug, Clone, Copy)]
pub struct CpuBackend {
    /// What the matrix products compute in.
    precision: CpuPrecision,
    /// The bf16 product kernel this CPU runs (detected once at construction).
    bf16_kernel: Kernel,
}

impl CpuBackend {
    /// The exact f32 backend.
    pub const F32: Self = Self {
        precision: CpuPrecision::F32,
        bf16_kernel: Kernel::Portable,
    };

    /// The bf16 backend, with the fastest bf16 kernel this CPU runs.
    pub fn bf16() -> Self {
        Self::with_kernel(Kernel::detect())
    }

    /// The bf16 backend on a chosen kernel (tests use it to run the portable kernel on
    /// CPUs that have the fast one).
    pub fn with_kernel(bf16_kernel: Kernel) -> Self {
        Self {
            precision: CpuPrecision::Bf16,
            bf16_kernel,
        }
    }

    /// What the matrix products compute in.
    pub fn precision(&self) -> CpuPrecision {
        self.precision
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::F32
    }
}

fn shape_error(op: &'static str, detail: String) -> OpError {
    OpError::Shape { op, detail }
}

fn check_cols(op: &'static str, what: &str, found: usize, expected: usize) -> OpResult<()> {
    if found != expected {
        return Err(shape_error(
            op,
            format!("{what} has {found} columns, expected {expected}"),
        ));
    }
    Ok(())
}

/// Whether element-wise rows (softmax, norms, rope) run on 512-bit vectors: the CPU has
/// avx512f (checked once by std). Their wide builds compute the same values as the portable
/// ones.
pub(crate) fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dot product in eight independent lanes, so the compiler vectorizes it (inlined, so it
/// takes its caller's vector width).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += ca[i] * cb[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

impl Ops for CpuBackend {
    type Tensor = CpuTensor;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Table = EmbeddingTable;
    type Layout = CpuLayout;

    fn name(&self) -> String {
        match self.precision {
            CpuPrecision::F32 => "cpu-f32".into(),
            CpuPrecision::Bf16 => "cpu-bf16".into(),
        }
    }

    fn device_info(&self) -> DeviceInfo {
        let products = match (self.precision, self.bf16_kernel) {
            (CpuPrecision::F32, _) => "f32 products",
            (CpuPrecision::Bf16, Kernel::Amx) => "bf16 products on AMX tiles (amx_bf16)",
            (CpuPrecision::Bf16, Kernel::Avx512Bf16) => "bf16 products on avx512_bf16",
            (CpuPrecision::Bf16, Kernel::Portable) => "bf16 products, portable (no avx512_bf16)",
        };
        DeviceInfo {
            description: format!("cpu, {} threads, {products}", rayon::current_num_threads()),
            memory_used: None,
            memory_total: None,
        }
    }

    fn matrix(&self, parts: &[TensorView<'_>]) -> OpResult<CpuMatrix> {
        let cols = parts
            .first()
            .map_or(0, |p| p.shape.get(1).copied().unwrap_or(0));
        for part in parts {
            if part.shape.len() != 2 || part.shape[1] != cols {
                return Err(OpError::Weight(format!(
                    "`{}` has shape {:?}, expected (_, {cols})",
                    part.name, part.shape
                )));
            }
        }
        let rows = parts.iter().map(|p| p.shape[0]).sum();
        let values = match self.precision {
            CpuPrecision::F32 => {
                MatrixValues::F32(parts.iter().flat_map(|part| part.to_f32()).collect())
            }
            CpuPrecision::Bf16 => {
                // Row `r` of the stacked matrix: find its part, convert that row.
                let starts: Vec<usize> = parts
                    .iter()
                    .scan(0, |start, p| {
                        let s = *start;
                        *start += p.shape[0];
                        Some(s)
                    })
                    .collect();
                MatrixValues::Bf16(PackedBf16::pack(rows, cols, |r, out| {
                    let i = starts.partition_point(|&s| s <= r) - 1;
                    parts[i].row_f32(r - starts[i], out);
                }))
            }
        };
        Ok(CpuMatrix { rows, cols, values })
    }

    fn vector(&self, view: TensorView<'_>) -> OpResult<Vec<f32>> {
        Ok(view.to_f32())
    }

    fn table(&self, view: TensorView<'_>) -> OpResult<EmbeddingTable> {
        let [rows, cols] = view.shape[..] else {
            return Err(OpError::Weight(format!(
                "`{}` has shape {:?}, expected (vocab, hidden)",
                view.name, view.shape
            )));
        };
        Ok(EmbeddingTable {
            dtype: view.dtype,
            rows,
            cols,
            bytes: view.data.to_vec(),
        })
    }

    fn layout(&self, layout: &BatchLayout) -> OpResult<CpuLayout> {
        Ok(CpuLayout {
            layout: layout.clone(),
            rope: std::sync::OnceLock::new(),
        })
    }

    fn embed(&self, table: &EmbeddingTable, token_ids: &[u32]) -> OpResult<CpuTensor> {
        if let Some(bad) = token_ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(shape_error(
                "embed",
                format!("token id {bad} outside the table of {} rows", table.rows),
            ));
        }
        let mut out = CpuTensor::for_overwrite(token_ids.len(), table.cols);
        embed::embed(table, token_ids, &mut out.data);
        Ok(out)
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &Vec<f32>, eps: f32) -> OpResult<CpuTensor> {
        check_cols("rms_norm", "x", x.cols, weight.len())?;
        let mut out = CpuTensor::for_overwrite(x.rows, x.cols);
        rms_norm::rms_norm(&x.data, weight, eps, &mut out.data);
        Ok(out)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CpuTensor,
        delta: &CpuTensor,
        weight: &Vec<f32>,
        eps: f32,
    ) -> OpResult<CpuTensor> {
        self.check_same("add_rms_norm", residual, delta)?;
        check_cols("add_rms_norm", "residual", residual.cols, weight.len())?;
        let mut out = CpuTensor::for_overwrite(residual.rows, residual.cols);
        rms_norm::add_rms_norm(&mut residual.data, &delta.data, weight, eps, &mut out.data);
        Ok(out)
    }

    fn add(&self, residual: &mut CpuTensor, delta: &CpuTensor) -> OpResult<()> {
        self.check_same("add", residual, delta)?;
        add::add(&mut residual.data, &delta.data);
        Ok(())
    }

    fn linear(&self, x: &CpuTensor, w: &CpuMatrix) -> OpResult<CpuTensor> {
        check_cols("linear", "x", x.cols, w.cols)?;
        let mut out = CpuTensor::for_overwrite(x.rows, w.rows);
        match &w.values {
            MatrixValues::F32(data) => {
                linear::linear(&x.data, data, x.rows, w.cols, w.rows, &mut out.data)
            }
            MatrixValues::Bf16(packed) => {
                linear_bf16::linear_bf16(&x.data, packed, x.rows, &mut out.data, self.bf16_kernel)
            }
        }
        Ok(out)
    }

    fn qk_norm_rope(
        &self,
        qkv: &mut CpuTensor,
        norms: &QkNorms<'_, Vec<f32>>,
        layout: &CpuLayout,
        shape: AttentionShape,
    ) -> OpResult<()> {
        check_cols("qk_norm_rope", "qkv", qkv.cols, shape.qkv_width())?;
        check_cols("qk_norm_rope", "q_norm", norms.q_norm.len(), shape.head_dim)?;
        check_cols("qk_norm_rope", "k_norm", norms.k_norm.len(), shape.head_dim)?;
        if qkv.rows != layout.layout.num_rows() {
            return Err(shape_error(
                "qk_norm_rope",
                format!(
                    "{} rows for a layout of {}",
                    qkv.rows,
                    layout.layout.num_rows()
                ),
            ));
        }
        let table = layout.rope.get_or_init(|| {
            RopeTable::new(layout.layout.max_len(), shape.head_dim, norms.rope_theta)
        });
        qk_norm_rope::qk_norm_rope(
            &mut qkv.data,
            norms.q_norm,
            norms.k_norm,
            &layout.layout.positions,
            shape,
            norms.eps,
            table,
        );
        Ok(())
    }

    fn attention(
        &self,
        q: &CpuTensor,
        kv: &CpuTensor,
        layout: &CpuLayout,
        queries: Queries,
        shape: AttentionShape,
    ) -> OpResult<CpuTensor> {
        check_cols("attention", "q", q.cols, shape.qkv_width())?;
        check_cols("attention", "kv", kv.cols, shape.qkv_width())?;
        let cu_k = &layout.layout.cu_seqlens;
        let last_only;
        let cu_q = match queries {
            Queries::All => cu_k,
            Queries::LastOnly => {
                last_only = layout.layout.cu_last_rows();
                &last_only
            }
        };
        let (q_rows, k_rows) = (*cu_q.last().unwrap_or(&0), *cu_k.last().unwrap_or(&0));
        if q.rows != q_rows as usize || kv.rows != k_rows as usize {
            return Err(shape_error(
                "attention",
                format!(
                    "q has {} rows and kv {} for a layout of {q_rows} and {k_rows}",
                    q.rows, kv.rows
                ),
            ));
        }
        let products = match self.precision {
            CpuPrecision::F32 => attention::Products::F32,
            CpuPrecision::Bf16 => attention::Products::Bf16(self.bf16_kernel),
        };
        let data = attention::attention(&q.data, &kv.data, cu_q, cu_k, shape, products);
        CpuTensor::new(q.rows, shape.q_width(), data)
    }

    fn silu_mul(&self, gate_up: &CpuTensor) -> OpResult<CpuTensor> {
        if !gate_up.cols.is_multiple_of(2) {
            return Err(shape_error(
                "silu_mul",
                format!("gate|up has an odd width {}", gate_up.cols),
            ));
        }
        let n = gate_up.cols / 2;
        let mut out = CpuTensor::for_overwrite(gate_up.rows, n);
        silu_mul::silu_mul(&gate_up.data, n, &mut out.data);
        Ok(out)
    }

    fn linear_silu_mul(&self, x: &CpuTensor, gate_up: &CpuMatrix) -> OpResult<CpuTensor> {
        match &gate_up.values {
            MatrixValues::Bf16(packed) if linear_bf16::fuses_silu(packed) => {
                check_cols("linear_silu_mul", "x", x.cols, gate_up.cols)?;
                let mut out = CpuTensor::for_overwrite(x.rows, gate_up.rows / 2);
                linear_bf16::linear_silu_mul_bf16(
                    &x.data,
                    packed,
                    x.rows,
                    &mut out.data,
                    self.bf16_kernel,
                );
                Ok(out)
            }
            _ => self.silu_mul(&self.linear(x, gate_up)?),
        }
    }

    fn mlp(&self, x: &CpuTensor, gate_up: &CpuMatrix, down: &CpuMatrix) -> OpResult<CpuTensor> {
        if let (MatrixValues::Bf16(gate_up_packed), MatrixValues::Bf16(down_packed)) =
            (&gate_up.values, &down.values)
            && self.bf16_kernel == Kernel::Amx
            && linear_amx::fuses_mlp(gate_up_packed, down_packed)
        {
            check_cols("mlp", "x", x.cols, gate_up.cols)?;
            let mut out = CpuTensor::for_overwrite(x.rows, down.rows);
            linear_amx::mlp_amx(&x.data, gate_up_packed, down_packed, x.rows, &mut out.data);
            return Ok(out);
        }
        self.linear(&self.linear_silu_mul(x, gate_up)?, down)
    }

    fn last_rows(&self, x: &CpuTensor, layout: &CpuLayout) -> OpResult<CpuTensor> {
        if x.rows != layout.layout.num_rows() {
            return Err(shape_error(
                "last_rows",
                format!(
                    "{} rows for a layout of {}",
                    x.rows,
                    layout.layout.num_rows()
                ),
            ));
        }
        let mut out = CpuTensor::for_overwrite(layout.layout.num_seqs(), x.cols);
        last_rows::last_rows(&x.data, x.cols, &layout.layout.last_rows, &mut out.data);
        Ok(out)
    }

    fn pool(
        &self,
        last: &CpuTensor,
        norm: &Vec<f32>,
        eps: f32,
        dims: &[usize],
        normalize: &[bool],
    ) -> OpResult<Vec<Vec<f32>>> {
        check_cols("pool", "last", last.cols, norm.len())?;
        if dims.len() != last.rows
            || normalize.len() != last.rows
            || dims.iter().any(|&d| d == 0 || d > last.cols)
        {
            return Err(shape_error(
                "pool",
                format!(
                    "output sizes {dims:?} and {} normalize flags for {} rows of {}",
                    normalize.len(),
                    last.rows,
                    last.cols
                ),
            ));
        }
        Ok(pool::pool(&last.data, norm, eps, dims, normalize))
    }

    fn to_host(&self, x: &CpuTensor) -> OpResult<Vec<f32>> {
        Ok(x.data.clone())
    }
}

impl CpuBackend {
    fn check_same(&self, op: &'static str, a: &CpuTensor, b: &CpuTensor) -> OpResult<()> {
        if (a.rows, a.cols) != (b.rows, b.cols) {
            return Err(shape_error(
                op,
                format!(
                    "({}, {}) and ({}, {}) differ",
                    a.rows, a.cols, b.rows, b.cols
                ),
            ));
        }
        Ok(())
    }
}
