//! The compiled kernels loaded into a context, one handle per entry point.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};

use cudarc::nvrtc::Ptx;

use super::CudaError;
use super::compile::{CompiledKernel, KernelSource};

/// Every kernel entry point the backend launches.
pub(super) struct Kernels {
    pub embed: CudaFunction,
    pub rms_norm: CudaFunction,
    pub add_rms_norm: CudaFunction,
    pub add: CudaFunction,
    pub qk_norm_rope: CudaFunction,
    /// `(padded head width, kernel)`, narrowest first.
    pub attention: Vec<(usize, CudaFunction)>,
    pub silu_mul: CudaFunction,
    pub last_rows_f32: CudaFunction,
    pub last_rows_bf16: CudaFunction,
    pub pool: CudaFunction,
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
        let function = |entry: &str| -> Result<CudaFunction, CudaError> {
            let (source, module) = modules
                .iter()
                .find(|(source, _)| source.entry_points.contains(&entry))
                .ok_or_else(|| CudaError::Driver(format!("no kernel file defines `{entry}`")))?;
            module.load_function(entry).map_err(|e| {
                CudaError::Driver(format!("kernels/{}.cu has no `{entry}`: {e}", source.name))
            })
        };
        Ok(Self {
            embed: function("embed")?,
            rms_norm: function("rms_norm")?,
            add_rms_norm: function("add_rms_norm")?,
            add: function("add")?,
            qk_norm_rope: function("qk_norm_rope")?,
            attention: [16, 32, 64, 128, 256]
                .into_iter()
                .map(|width| Ok((width, function(&format!("attention_d{width}"))?)))
                .collect::<Result<_, CudaError>>()?,
            silu_mul: function("silu_mul")?,
            last_rows_f32: function("last_rows_f32")?,
            last_rows_bf16: function("last_rows_bf16")?,
            pool: function("pool")?,
        })
    }
}
