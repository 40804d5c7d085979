//! `x @ w^T` in FP8 through cuBLASLt (`dtype = fp8`, compute capability 9.0 and newer): the
//! weights are E4M3 with a scale per output feature (quantized at load), the activations are
//! rounded to E4M3 per token by `kernels/quantize_fp8.cu`, and cuBLASLt multiplies the codes
//! with f32 accumulation, applies both scale vectors ("outer vector" scaling) and writes
//! bf16. CPU twin: `cpu/fp8_twin.rs` (the same roundings, f32 products).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use super::tensor::TensorData;
use super::{CudaBackend, CudaError, CudaTensor, quantize_fp8};
use crate::ops::{OpError, OpResult};

/// cuBLASLt's handle and workspace for the FP8 products, and the algorithm chosen for each
/// product shape so far; made only when the backend runs FP8.
pub(super) struct Fp8Products {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    /// cuBLASLt's choice by `(out, rows, in)`: asking its heuristic costs host time on every
    /// product (four per layer), the answer depends only on the shape.
    algorithms: Mutex<HashMap<(usize, usize, usize), sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: a cuBLASLt handle may be used from any thread, one call at a time; the backend
// runs its ops from the device thread only (cudarc's own `CudaBlasLT` is Send and Sync too).
unsafe impl Send for Fp8Products {}
// SAFETY: as above.
unsafe impl Sync for Fp8Products {}

impl Fp8Products {
    /// Creates the handle and a workspace of `workspace_bytes` on `stream`; fails (never
    /// panics) when `libcublasLt.so.13` cannot be loaded.
    pub(super) fn new(stream: &Arc<CudaStream>, workspace_bytes: usize) -> Result<Self, CudaError> {
        // SAFETY: only tries to dlopen the library; nothing is called through it.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::LibraryMissing {
                library: "libcublasLt.so.13 (for dtype fp8)",
                hint: "pip install nvidia-cublas==13.0.* and put its nvidia/cu13/lib on \
                       LD_LIBRARY_PATH",
            });
        }
        let handle =
            lt::create_handle().map_err(|e| CudaError::Cublas(format!("cuBLASLt: {e}")))?;
        let workspace = match stream.alloc_zeros::<u8>(workspace_bytes) {
            Ok(workspace) => workspace,
            Err(e) => {
                // SAFETY: created just above and not used.
                let _ = unsafe { lt::destroy_handle(handle) };
                return Err(e.into());
            }
        };
        Ok(Self {
            handle,
            workspace,
            algorithms: Mutex::default(),
        })
    }
}

impl Drop for Fp8Products {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is destroyed once, here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// A cuBLASLt object destroyed when dropped.
struct Owned<T: Copy> {
    raw: T,
    destroy: unsafe fn(T) -> Result<(), CublasError>,
}

impl<T: Copy> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from the create call matching `destroy` and is destroyed once.
        let _ = unsafe { (self.destroy)(self.raw) };
    }
}

/// A column-major `rows x cols` layout of `dtype` with leading dimension `ld`.
fn layout(
    dtype: sys::cudaDataType,
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<Owned<sys::cublasLtMatrixLayout_t>, CublasError> {
    let raw = lt::create_matrix_layout(dtype, rows as u64, cols as u64, ld as i64)?;
    Ok(Owned {
        raw,
        destroy: lt::destroy_matrix_layout,
    })
}

/// Sets attribute `attr` of `desc` to `value`.
///
/// # Safety
/// `T` must be the attribute's type.
unsafe fn set<T>(
    desc: &Owned<sys::cublasLtMatmulDesc_t>,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), CublasError> {
    // SAFETY: `value` is a live `T`, read for its size only (the caller vouches for `T`).
    unsafe {
        lt::set_matmul_desc_attribute(desc.raw, attr, (value as *const T).cast(), size_of::<T>())
    }
}

/// cuBLASLt's first choice of algorithm for the product `desc` over the A, B and D `layouts`
/// (C shares D's: beta is 0), within `workspace_bytes` of workspace.
fn heuristic(
    products: &Fp8Products,
    desc: &Owned<sys::cublasLtMatmulDesc_t>,
    [a, b, d]: [&Owned<sys::cublasLtMatrixLayout_t>; 3],
    workspace_bytes: usize,
) -> Result<sys::cublasLtMatmulAlgo_t, CublasError> {
    let preference = Owned {
        raw: lt::create_matmul_pref()?,
        destroy: lt::destroy_matmul_pref,
    };
    let max_workspace = workspace_bytes as u64;
    use sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES;
    // SAFETY: the attribute is a u64 byte count, read for its size only.
    unsafe {
        lt::set_matmul_pref_attribute(
            preference.raw,
            CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            (&max_workspace as *const u64).cast(),
            size_of::<u64>(),
        )
    }?;
    // SAFETY: every object is live.
    let found = unsafe {
        lt::get_matmul_algo_heuristic(
            products.handle,
            desc.raw,
            a.raw,
            b.raw,
            d.raw,
            d.raw,
            preference.raw,
        )
    }?;
    Ok(found.algo)
}

/// `(rows, in) @ (out, in)^T = (rows, out)` in bf16, `x` rounded to FP8 per token first, the
/// weight given as its E4M3 `codes` `(out, in)` and per-feature `scales`.
pub(super) fn linear_fp8(
    gpu: &CudaBackend,
    x: &CudaTensor,
    codes: &CudaSlice<u8>,
    scales: &CudaSlice<f32>,
    out_features: usize,
) -> OpResult<CudaTensor> {
    const OP: &str = "linear (fp8)";
    let products = gpu.fp8.as_ref().ok_or_else(|| {
        OpError::Device("FP8 weights on a backend without FP8 products; this is a bug".into())
    })?;
    let activations = quantize_fp8::quantize_fp8_rows(gpu, x)?;
    let (m, n, k) = (out_features, x.rows, x.cols);
    let mut out = gpu.alloc::<bf16>(OP, n * m)?;
    let failed = |e: CublasError| {
        OpError::Device(format!(
            "cuBLASLt FP8 product ({m} x {k}) @ ({k} x {n}): {e}"
        ))
    };
    gpu.ctx.bind_to_thread()?;
    {
        let stream = &gpu.stream;
        let (a, _a) = codes.device_ptr(stream);
        let (a_scale, _a_scale) = scales.device_ptr(stream);
        let (b, _b) = activations.codes.device_ptr(stream);
        let (b_scale, _b_scale) = activations.scales.device_ptr(stream);
        let (workspace, _workspace) = products.workspace.device_ptr(stream);
        let workspace_bytes = products.workspace.len();
        let (d, _d) = out.device_ptr_mut(stream);

        // Column-major, as cuBLASLt sees the row-major buffers: the weight is (in, out) read
        // transposed (op(A) = out x in, the layout FP8 products require), the activations
        // (in, rows), the output (out, rows) = row-major (rows, out).
        use sys::cudaDataType_t::{CUDA_R_8F_E4M3, CUDA_R_16BF, CUDA_R_32F};
        let a_layout = layout(CUDA_R_8F_E4M3, k, m, k).map_err(failed)?;
        let b_layout = layout(CUDA_R_8F_E4M3, k, n, k).map_err(failed)?;
        let d_layout = layout(CUDA_R_16BF, m, n, m).map_err(failed)?;
        let desc = Owned {
            raw: lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, CUDA_R_32F)
                .map_err(failed)?,
            destroy: lt::destroy_matmul_desc,
        };
        use sys::cublasLtMatmulDescAttributes_t as Attr;
        let (transposed, as_is): (i32, i32) = (1, 0);
        let outer = sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        let describe = || -> Result<(), CublasError> {
            // SAFETY: each value has its attribute's type: cublasOperation_t (i32) for the
            // transposes, a device pointer for the scales, cublasLtMatmulMatrixScale_t for the
            // modes.
            unsafe {
                set(&desc, Attr::CUBLASLT_MATMUL_DESC_TRANSA, &transposed)?;
                set(&desc, Attr::CUBLASLT_MATMUL_DESC_TRANSB, &as_is)?;
                set(&desc, Attr::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale)?;
                set(&desc, Attr::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale)?;
                set(&desc, Attr::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &outer)?;
                set(&desc, Attr::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &outer)
            }
        };
        describe().map_err(failed)?;
        let shape = (m, n, k);
        let cached = products
            .algorithms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&shape)
            .copied();
        let algorithm = match cached {
            Some(algorithm) => algorithm,
            None => {
                let layouts = [&a_layout, &b_layout, &d_layout];
                let algorithm =
                    heuristic(products, &desc, layouts, workspace_bytes).map_err(failed)?;
                products
                    .algorithms
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(shape, algorithm);
                algorithm
            }
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: A holds m * k codes (k x m, ld k), B n * k codes (k x n, ld k), the scales m
        // and n floats, D n * m bf16 values (m x n, ld m): the buffers' lengths. The workspace is
        // `workspace_bytes` long; everything is on `stream`, which the call is queued on.
        unsafe {
            lt::matmul(
                products.handle,
                desc.raw,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                a as *const c_void,
                a_layout.raw,
                b as *const c_void,
                b_layout.raw,
                d as *const c_void,
                d_layout.raw,
                d as *mut c_void,
                d_layout.raw,
                &algorithm,
                workspace as *mut c_void,
                workspace_bytes,
                stream.cu_stream() as *mut _,
            )
        }
        .map_err(failed)?;
    }
    Ok(CudaTensor {
        rows: n,
        cols: m,
        data: TensorData::Bf16(out),
    })
}
