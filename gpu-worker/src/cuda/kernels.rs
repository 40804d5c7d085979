//! The kernel registry: every kernel file and its entry points, listed once. From it come
//! [`KERNELS`] (what NVRTC compiles, see [`super::compile`]) and `Kernels` (one loaded
//! function per entry point, a field of the same name, for the launchers).
//!
//! Adding a kernel file or an entry point is one line in the `kernel_registry!` call below.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::CudaError;
use super::compile::{CompiledKernel, KernelSource};

/// Declares the registry: `file { entry, .. }` per kernel file `kernels/<file>.cu`, each entry
/// an `extern "C"` kernel of that file with its doc comment.
macro_rules! kernel_registry {
    ($($file:ident { $($(#[doc = $doc:literal])+ $entry:ident),+ $(,)? })+) => {
        /// Every kernel file of the backend, with the entry points the backend loads from it.
        pub const KERNELS: &[KernelSource] = &[$(KernelSource {
            name: stringify!($file),
            source: include_str!(concat!("../../kernels/", stringify!($file), ".cu")),
            entry_points: &[$(stringify!($entry)),+],
        }),+];

        /// Every kernel entry point the backend launches, loaded into the context.
        pub(super) struct Kernels {
            $($($(#[doc = $doc])+ pub $entry: CudaFunction,)+)+
        }

        impl Kernels {
            /// Looks up every entry point with `function`.
            fn look_up(
                function: impl Fn(&str) -> Result<CudaFunction, CudaError>,
            ) -> Result<Self, CudaError> {
                Ok(Self { $($($entry: function(stringify!($entry))?,)+)+ })
            }
        }
    };
}

kernel_registry! {
    embed {
        /// Embedding gather into the f32 residual stream.
        embed,
    }
    rms_norm {
        /// RMSNorm of the f32 residual into bf16.
        rms_norm,
        /// Residual add fused with RMSNorm.
        add_rms_norm,
        /// `rms_norm`, one warp per row with 16-byte accesses (widths a multiple of 8).
        rms_norm_vec8,
        /// `add_rms_norm`, one warp per row with 16-byte accesses (widths a multiple of 8).
        add_rms_norm_vec8,
    }
    add {
        /// Residual add, f32 += bf16.
        add,
        /// `add`, one warp per row with 16-byte accesses (widths a multiple of 8).
        add_vec8,
    }
    qk_norm_rope {
        /// The batch's rotary cos/sin table, once per forward pass.
        rope_table,
        /// Per-head q/k RMSNorm and rotary embedding, in place.
        qk_norm_rope,
    }
    attention {
        /// Causal GQA for heads up to 16 wide.
        attention_d16,
        /// ... up to 32 wide.
        attention_d32,
        /// ... up to 64 wide.
        attention_d64,
        /// ... up to 128 wide.
        attention_d128,
        /// ... up to 256 wide.
        attention_d256,
        /// Causal GQA normalizing and rotating raw query heads as it loads them, heads up to
        /// 16 wide.
        attention_rope_d16,
        /// ... up to 32 wide.
        attention_rope_d32,
        /// ... up to 64 wide.
        attention_rope_d64,
        /// ... up to 128 wide.
        attention_rope_d128,
        /// ... up to 256 wide.
        attention_rope_d256,
    }
    silu_mul {
        /// SwiGLU of a fused gate|up tensor, one block per row.
        silu_mul,
        /// SwiGLU, one warp per row with 16-byte accesses (widths a multiple of 8).
        silu_mul_vec8,
    }
    last_rows {
        /// Last row of every sequence, f32.
        last_rows_f32,
        /// Last row of every sequence, bf16.
        last_rows_bf16,
    }
    pool {
        /// Pooling head: final norm, truncation, L2 normalization where asked.
        pool,
    }
    quantize_fp8 {
        /// Row-wise (per-token) E4M3 quantization of bf16 activations.
        quantize_fp8_rows,
    }
    fault {
        /// Traps: the test-only fault hook's device fault.
        trap,
    }
}

impl Kernels {
    /// Loads the compiled images into `ctx` and looks up every entry point.
    pub fn load(ctx: &Arc<CudaContext>, compiled: Vec<CompiledKernel>) -> Result<Self, CudaError> {
        let modules: Vec<(KernelSource, Arc<CudaModule>)> = compiled
            .into_iter()
            .map(|kernel| {
                let CompiledKernel {
                    source,
                    target,
                    image,
                    ..
                } = kernel;
                let module = ctx.load_module(Ptx::from_binary(image)).map_err(|e| {
                    CudaError::Driver(format!(
                        "loading kernels/{}.cu ({target}): {e}",
                        source.name
                    ))
                })?;
                Ok((source, module))
            })
            .collect::<Result<_, CudaError>>()?;
        Self::look_up(|entry| {
            let (source, module) = modules
                .iter()
                .find(|(source, _)| source.entry_points.contains(&entry))
                .ok_or_else(|| CudaError::Driver(format!("no kernel file defines `{entry}`")))?;
            module.load_function(entry).map_err(|e| {
                CudaError::Driver(format!("kernels/{}.cu has no `{entry}`: {e}", source.name))
            })
        })
    }
}
