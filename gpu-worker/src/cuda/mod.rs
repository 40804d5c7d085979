//! The CUDA backend: bf16 weights resident on one device, matrix products through cuBLAS, and
//! one NVRTC-compiled kernel per op (`kernels/<op>.cu`, each with a CPU twin in `cpu/`).
//!
//! # Layout
//! - [`kernels`]: the kernel registry, every `kernels/*.cu` file and its entry points listed
//!   once, and the loaded kernels.
//! - [`compile`]: NVRTC compilation of the registry's files, usable without a GPU.
//! - [`memory`]: the memory plan (`gpu_memory_fraction` -> batch token budget).
//! - `device`: start-up errors, library checks, cuBLAS set-up, the memory pool.
//! - `tensor`, `layout`: device tensors, uploaded batch layouts.
//! - One launcher per kernel, checking shapes before it launches: `embed`, `rms_norm`,
//!   `add`, `linear` (cuBLAS), `qk_norm_rope`, `attention`, `silu_mul`, `last_rows`, `pool`,
//!   `quantize_fp8` (per-token E4M3 rounding; the FP8 products are `linear_fp8`), and `fault`
//!   (the test-only fault hook's trapping kernel).
//! - [`graphs`]: CUDA graphs, small batches padded to a few fixed shapes, each recorded once
//!   and replayed with one launch.
//! - `backend_ops`: [`Ops`](crate::ops::Ops) for the backend: weights converted at load,
//!   each op handed to its launcher, passes replayed from a graph or run op by op.
//! - `clock`: CUDA events as the op profiler's clock (`crate::profile`).
//! - `mlp`: the MLP in token chunks (gate|up and SwiGLU kept in L2), when asked.
//! - `row_path`: the choice between the one-warp-per-row vector kernels and the
//!   one-block-per-row scalar kernels of `rms_norm`, `add` and `silu_mul`.
//!
//! # Numerics
//! The residual stream is f32: embeddings widen exactly from bf16, and every layer's output
//! is added in f32, so the stream carries no bf16 rounding from layer to layer. Everything a
//! matrix product reads or writes is bf16 (inputs rounded once by the norm that produces
//! them); products accumulate in f32 (`CUBLAS_COMPUTE_32F`, split-K reductions in f32 too).
//! Norms, RoPE, softmax and SwiGLU compute in f32 and round once on output. Pooling is f32.
//!
//! # Batch invariance
//! Every kernel computes a row (or an attention tile of one sequence) with a fixed order of
//! operations, whatever else is in the batch. cuBLAS may pick another algorithm for another
//! row count, which can move a product's result by an ulp; `tests/cuda_parity.rs` bounds the
//! effect.
//!
//! # Run-time needs
//! `libcuda.so.1` (the driver), `libnvrtc.so.13` and `libcublas.so.13` on the library path;
//! no CUDA headers (see [`compile`]). Compute capability 8.0 or newer.

pub mod compile;
pub mod graphs;
pub mod kernels;
pub mod memory;

mod add;
mod attention;
mod backend_ops;
mod clock;
mod device;
mod embed;
mod fault;
mod last_rows;
mod layout;
mod linear;
mod linear_fp8;
mod mlp;
mod pool;
mod qk_norm_rope;
mod quantize_fp8;
mod rms_norm;
mod row_path;
mod silu_mul;
mod tensor;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, LaunchConfig};
use half::bf16;

use crate::ops::{OpError, OpResult};
use compile::Target;
pub use device::{CudaDeviceInfo, CudaError, is_available};
use kernels::Kernels;
pub use layout::CudaLayout;
use memory::{MemoryPlan, OVERHEAD_BYTES};
pub use quantize_fp8::CudaFp8Rows;
use tensor::TensorData;
pub use tensor::{ActDtype, CudaMatrix, CudaTable, CudaTensor, CudaVector};

/// cuBLAS workspace, owned by the backend so that its memory is counted (32 MiB is what
/// NVIDIA recommends for Hopper).
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Settings of the CUDA backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CudaOptions {
    /// Share of the device's total memory this worker may hold, in `(0, 1]`: CUDA context,
    /// weights and activations together (see [`memory`]).
    pub gpu_memory_fraction: f64,
    /// FP8 products (`dtype = fp8`): every matrix whose sides are multiples of 16 is held in
    /// E4M3 with a scale per output feature and multiplied through cuBLASLt with activations
    /// rounded to E4M3 per token. Needs compute capability 9.0 (Hopper) or newer.
    pub fp8: bool,
    /// Largest batch, in tokens (padding included), run as a CUDA graph (`graphs`); 0 runs
    /// every pass op by op. The memory plan sets this many tokens of activations aside.
    pub graph_max_tokens: usize,
    /// Runs the MLP over this many tokens at a time (`mlp`); 0 runs it over the whole batch.
    pub mlp_chunk_tokens: usize,
    /// Normalizes and rotates the q heads in the attention kernel as it loads them
    /// (`Ops::self_attention`), so `qk_norm_rope` reads and writes the k heads alone.
    pub fuse_q_norm_rope: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            gpu_memory_fraction: 0.9,
            fp8: false,
            graph_max_tokens: 0,
            mlp_chunk_tokens: 0,
            fuse_q_norm_rope: false,
        }
    }
}

/// The CUDA backend on one device. Owned by the device thread: ops run in order on one
/// stream, and only the host copies of `to_host` and `pool` wait for the device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    /// The one stream every kernel, copy and product runs on: the backend's own, since the
    /// legacy default stream cannot be captured into a graph.
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// cuBLAS workspace set on `blas`; held so it lives as long as the handle.
    _workspace: CudaSlice<u8>,
    /// cuBLASLt for the FP8 products, when [`CudaOptions::fp8`] asked for them.
    fp8: Option<linear_fp8::Fp8Products>,
    kernels: Kernels,
    /// Recorded passes for small batches, when [`CudaOptions::graph_max_tokens`] asks.
    graphs: Option<graphs::Graphs>,
    /// [`CudaOptions::mlp_chunk_tokens`].
    mlp_chunk_tokens: usize,
    /// [`CudaOptions::fuse_q_norm_rope`].
    fuse_q_norm_rope: bool,
    device: CudaDeviceInfo,
    target: Target,
    gpu_memory_fraction: f64,
    /// `gpu_memory_fraction x total memory`.
    share_bytes: u64,
    /// Bytes of weights uploaded so far.
    weight_bytes: AtomicU64,
    /// The memory plan's token budget; 0 until [`CudaBackend::plan_memory`] runs.
    max_batch_tokens: AtomicUsize,
}

impl CudaBackend {
    /// Opens device `device_ordinal`, compiles every kernel for its exact architecture and
    /// sets up cuBLAS. Fails with a clear error (never panics) when a library or the device is
    /// missing.
    pub fn new(device_ordinal: usize, options: CudaOptions) -> Result<Self, CudaError> {
        if let Some(missing) = device::missing_library() {
            return Err(missing);
        }
        let no_device = |detail: String| CudaError::NoDevice {
            ordinal: device_ordinal,
            detail,
        };
        let count = CudaContext::device_count().map_err(|e| no_device(e.to_string()))?;
        if device_ordinal >= count.max(0) as usize {
            return Err(no_device(format!("the driver sees {count} device(s)")));
        }
        let ctx = CudaContext::new(device_ordinal)?;
        // SAFETY: every allocation, kernel, copy and product of the backend is queued on one
        // stream (`stream` below), so stream order alone orders each buffer's uses and its
        // free; no buffer is used on another stream. Without this, cudarc creates and later
        // destroys two events for every allocation: two per op output (issue 20).
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability()?;
        let (major, minor) = (major as u32, minor as u32);
        let device = CudaDeviceInfo {
            ordinal: device_ordinal,
            name: ctx.name()?,
            total_memory: ctx.total_mem()? as u64,
            compute_capability: (major, minor),
        };
        if major < 8 {
            return Err(CudaError::Unsupported {
                name: device.name,
                major,
                minor,
            });
        }
        let share_bytes = memory::share_bytes(options.gpu_memory_fraction, device.total_memory)
            .map_err(CudaError::Memory)?;
        let target = Target::for_device(major, minor, &compile::supported_archs()?)?;
        let kernels = Kernels::load(&ctx, compile::compile_all_kernels(target, &[])?)?;
        if ctx.has_async_alloc() {
            device::keep_freed_memory_pooled(&ctx, share_bytes)?;
        }

        if options.fp8 && major < 9 {
            return Err(CudaError::Fp8Unsupported {
                name: device.name,
                major,
                minor,
            });
        }
        let stream = ctx.new_stream()?;
        let (blas, workspace) = device::cublas(&stream, CUBLAS_WORKSPACE_BYTES)?;
        let fp8 = options
            .fp8
            .then(|| linear_fp8::Fp8Products::new(&stream, CUBLAS_WORKSPACE_BYTES))
            .transpose()?;

        Ok(Self {
            ctx,
            stream,
            blas,
            _workspace: workspace,
            fp8,
            kernels,
            graphs: (options.graph_max_tokens > 0)
                .then(|| graphs::Graphs::new(options.graph_max_tokens)),
            mlp_chunk_tokens: options.mlp_chunk_tokens,
            fuse_q_norm_rope: options.fuse_q_norm_rope,
            device,
            target,
            gpu_memory_fraction: options.gpu_memory_fraction,
            share_bytes,
            weight_bytes: AtomicU64::new(0),
            max_batch_tokens: AtomicUsize::new(0),
        })
    }

    /// The device.
    pub fn device(&self) -> &CudaDeviceInfo {
        &self.device
    }

    /// What the kernels were compiled for (`sm_90`).
    pub fn target(&self) -> Target {
        self.target
    }

    /// Device memory this process holds, bytes: everything allocated through the device's
    /// memory pool (weights, activations, freed blocks kept for reuse), not the CUDA context
    /// itself. On a device without memory pools, the device's used memory as a whole.
    pub fn memory_used(&self) -> OpResult<u64> {
        if !self.ctx.has_async_alloc() {
            let (free, total) = self.ctx.mem_get_info()?;
            return Ok((total - free) as u64);
        }
        Ok(device::pool_reserved_bytes(&self.ctx)?)
    }

    /// The sticky error the device is in, if any: one after which the context cannot be
    /// used again (an illegal address, a failed launch, an uncorrectable ECC error; see
    /// `device::is_sticky`). Waits for the stream, which reports such an error on every
    /// call once it happened; an error that is not sticky (a refused allocation, a bad
    /// argument) leaves the device usable and is not reported here.
    pub fn sticky_error(&self) -> Option<cudarc::driver::DriverError> {
        let checked = self
            .ctx
            .check_err()
            .and_then(|()| self.stream.synchronize());
        checked.err().filter(|e| device::is_sticky(e.0))
    }

    /// Sizes the batch token budget once the model is loaded (see [`memory`]), for
    /// activations of `bytes_per_token` per token of a batch (the model's:
    /// [`memory::activation_bytes_per_token`]): `requested` (the batcher's budget) must fit
    /// the share, or without it the budget is all the share leaves. From then on a larger
    /// batch is refused with `OpError::OutOfMemory`. With CUDA graphs on, the activations of
    /// the largest recorded pass are set aside first.
    pub fn plan_memory(
        &self,
        bytes_per_token: u64,
        requested: Option<usize>,
    ) -> Result<MemoryPlan, CudaError> {
        let (free, _) = self.ctx.mem_get_info()?;
        let plan = MemoryPlan::new(
            self.gpu_memory_fraction,
            self.device.total_memory,
            self.weight_bytes.load(Ordering::Relaxed),
            bytes_per_token,
            free as u64,
            requested,
            self.graphs.as_ref().map_or(0, graphs::Graphs::max_tokens),
        )
        .map_err(CudaError::Memory)?;
        self.max_batch_tokens
            .store(plan.max_batch_tokens, Ordering::Relaxed);
        Ok(plan)
    }

    /// CUDA graphs recorded so far; `None` without graphs or once they were turned off.
    pub fn recorded_graphs(&self) -> Option<usize> {
        self.graphs.as_ref()?.recorded()
    }

    /// The planned batch token budget, once [`Self::plan_memory`] has run.
    pub fn max_batch_tokens(&self) -> Option<usize> {
        match self.max_batch_tokens.load(Ordering::Relaxed) {
            0 => None,
            tokens => Some(tokens),
        }
    }

    /// Uploads a host matrix as an activation of `dtype` (rounded to nearest for bf16).
    pub fn upload_tensor(
        &self,
        rows: usize,
        cols: usize,
        values: &[f32],
        dtype: ActDtype,
    ) -> OpResult<CudaTensor> {
        if values.len() != rows * cols {
            return Err(shape_error(
                "upload",
                format!("{} values cannot form ({rows}, {cols})", values.len()),
            ));
        }
        let data = match dtype {
            ActDtype::F32 => TensorData::F32(self.upload("upload", values)?),
            ActDtype::Bf16 => {
                let rounded: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
                TensorData::Bf16(self.upload("upload", &rounded)?)
            }
        };
        Ok(CudaTensor { rows, cols, data })
    }

    /// Copies host values to a new device buffer.
    fn upload<T: DeviceRepr>(&self, op: &'static str, values: &[T]) -> OpResult<CudaSlice<T>> {
        if values.is_empty() {
            return Err(shape_error(op, "empty tensors are not supported".into()));
        }
        Ok(self.stream.clone_htod(values)?)
    }

    /// A new device buffer of `len` elements, to be filled by a kernel or a product.
    fn alloc<T: DeviceRepr>(&self, op: &'static str, len: usize) -> OpResult<CudaSlice<T>> {
        if len == 0 {
            return Err(shape_error(op, "empty tensors are not supported".into()));
        }
        // SAFETY: the memory is uninitialized; every caller hands it to a kernel or product
        // that writes each element before anything reads it.
        Ok(unsafe { self.stream.alloc(len) }?)
    }

    /// Uploads a weight, counting it against the memory share.
    fn upload_weight<T: DeviceRepr>(&self, name: &str, values: &[T]) -> OpResult<CudaSlice<T>> {
        let bytes = std::mem::size_of_val(values) as u64;
        let limit = self.share_bytes.saturating_sub(OVERHEAD_BYTES);
        let total = self.weight_bytes.load(Ordering::Relaxed) + bytes;
        if total > limit {
            const GIB: f64 = (1u64 << 30) as f64;
            return Err(OpError::OutOfMemory(format!(
                "weight `{name}` brings the weights to {:.2} GiB, over the {:.2} GiB left of the \
                 {:.2} GiB share (gpu_memory_fraction {}) after {:.2} GiB of overhead",
                total as f64 / GIB,
                limit as f64 / GIB,
                self.share_bytes as f64 / GIB,
                self.gpu_memory_fraction,
                OVERHEAD_BYTES as f64 / GIB,
            )));
        }
        let data = self.upload("weight", values)?;
        self.weight_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(data)
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

fn check_rows(op: &'static str, what: &str, found: usize, expected: usize) -> OpResult<()> {
    if found != expected {
        return Err(shape_error(
            op,
            format!("{what} has {found} rows, expected {expected}"),
        ));
    }
    Ok(())
}

/// A size as the `int` a kernel takes.
fn int(op: &'static str, what: &str, value: usize) -> OpResult<i32> {
    i32::try_from(value).map_err(|_| shape_error(op, format!("{what} = {value} exceeds i32")))
}

/// One block per row for the row-wise kernels: a warp multiple of threads, up to 256, so
/// narrow rows do not leave most of a block idle.
fn per_row(op: &'static str, rows: usize, cols: usize) -> OpResult<LaunchConfig> {
    let grid = u32::try_from(int(op, "rows", rows)?).expect("i32 fits u32; this is a bug");
    let threads = (cols.div_ceil(32) * 32).clamp(32, 256) as u32;
    Ok(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}
