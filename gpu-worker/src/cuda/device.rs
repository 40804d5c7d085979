//! Start-up plumbing: which CUDA libraries load, the errors of a failed start, the device's
//! description, cuBLAS set-up and the stream-ordered memory pool.

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode, cublasSetWorkspace_v2};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtrMut, DriverError, sys};

use super::compile::CompileError;
use crate::ops::OpError;

/// Why the CUDA backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A CUDA library cannot be loaded.
    #[error("{library} not found: {hint}")]
    LibraryMissing {
        /// The library.
        library: &'static str,
        /// Where it usually comes from.
        hint: &'static str,
    },
    /// No device with this ordinal.
    #[error("no CUDA device {ordinal}: {detail}")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// What the driver said.
        detail: String,
    },
    /// The device is too old for the kernels.
    #[error("{name} has compute capability {major}.{minor}; the kernels need 8.0 or newer")]
    Unsupported {
        /// Device name.
        name: String,
        /// Major compute capability.
        major: u32,
        /// Minor compute capability.
        minor: u32,
    },
    /// FP8 products were asked for on a device without them.
    #[error(
        "{name} has compute capability {major}.{minor}; FP8 products (dtype fp8) need 9.0 \
         (Hopper) or newer: use dtype bf16"
    )]
    Fp8Unsupported {
        /// Device name.
        name: String,
        /// Major compute capability.
        major: u32,
        /// Minor compute capability.
        minor: u32,
    },
    /// The kernels did not compile.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// A driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// cuBLAS could not be set up.
    #[error("cuBLAS: {0}")]
    Cublas(String),
    /// The memory share cannot hold the model.
    #[error("memory plan: {0}")]
    Memory(String),
}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}

impl From<DriverError> for OpError {
    fn from(e: DriverError) -> Self {
        if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
            OpError::OutOfMemory(format!("the device allocator failed: {e}"))
        } else {
            OpError::Device(e.to_string())
        }
    }
}

/// Whether a driver error is sticky: the CUDA context is corrupt and every later call in
/// this process fails the same way, so only a new process can use the device again. These
/// are the faults of a kernel (illegal or misaligned address, illegal instruction, stack
/// error, failed launch, assert, timeout), of the hardware (uncorrectable ECC or NVLink
/// error) and a destroyed or de-initialized context; `UNKNOWN` is counted in because the
/// driver reports Xid faults as such. Anything else (out of memory, an invalid value, a
/// launch out of resources) fails one call and leaves the context usable.
pub fn is_sticky(code: sys::cudaError_enum) -> bool {
    use sys::cudaError_enum as E;
    matches!(
        code,
        E::CUDA_ERROR_ILLEGAL_ADDRESS
            | E::CUDA_ERROR_LAUNCH_FAILED
            | E::CUDA_ERROR_LAUNCH_TIMEOUT
            | E::CUDA_ERROR_HARDWARE_STACK_ERROR
            | E::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | E::CUDA_ERROR_MISALIGNED_ADDRESS
            | E::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | E::CUDA_ERROR_INVALID_PC
            | E::CUDA_ERROR_ASSERT
            | E::CUDA_ERROR_ECC_UNCORRECTABLE
            | E::CUDA_ERROR_NVLINK_UNCORRECTABLE
            | E::CUDA_ERROR_CONTEXT_IS_DESTROYED
            | E::CUDA_ERROR_DEINITIALIZED
            | E::CUDA_ERROR_UNKNOWN
    )
}

/// What the device is, for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Total device memory, bytes.
    pub total_memory: u64,
    /// Compute capability `(major, minor)`.
    pub compute_capability: (u32, u32),
}

/// Whether the CUDA backend can start here: driver, NVRTC and cuBLAS libraries load, and the
/// driver sees at least one device.
pub fn is_available() -> bool {
    missing_library().is_none() && CudaContext::device_count().is_ok_and(|n| n > 0)
}

/// The first CUDA library that cannot be loaded. cudarc panics when it calls into a missing
/// library, so this is checked before anything else.
pub(super) fn missing_library() -> Option<CudaError> {
    // SAFETY: each check only tries to dlopen the library; nothing is called through it.
    let (driver, nvrtc, cublas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    let missing = |library, hint| Some(CudaError::LibraryMissing { library, hint });
    if !driver {
        missing(
            "libcuda.so (the NVIDIA driver)",
            "no NVIDIA driver is installed on this machine",
        )
    } else if !nvrtc {
        missing(
            "libnvrtc.so.13",
            "pip install nvidia-cuda-nvrtc==13.0.* and put its nvidia/cu13/lib on LD_LIBRARY_PATH",
        )
    } else if !cublas {
        missing(
            "libcublas.so.13",
            "pip install nvidia-cublas==13.0.* and put its nvidia/cu13/lib on LD_LIBRARY_PATH",
        )
    } else {
        None
    }
}

/// Makes the device's memory pool keep up to `bytes` of freed memory for reuse instead of
/// returning it to the driver at every synchronization (which would make each forward pass
/// map its activations afresh).
pub(super) fn keep_freed_memory_pooled(ctx: &CudaContext, bytes: u64) -> Result<(), CudaError> {
    ctx.bind_to_thread()?;
    let mut pool = std::ptr::null_mut();
    let mut threshold = bytes;
    // SAFETY: `pool` is valid for one write; RELEASE_THRESHOLD reads a cuuint64_t through the
    // pointer, valid for the call.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()?;
    }
    Ok(())
}

/// A cuBLAS handle on `stream` with a workspace of `workspace_bytes` that the caller owns
/// (so its memory is counted), and split-K partial sums reduced in f32 rather than bf16.
pub(super) fn cublas(
    stream: &Arc<CudaStream>,
    workspace_bytes: usize,
) -> Result<(CudaBlas, CudaSlice<u8>), CudaError> {
    let cublas_error = |e: cudarc::cublas::result::CublasError| CudaError::Cublas(e.to_string());
    let blas = CudaBlas::new(stream.clone()).map_err(cublas_error)?;
    let mut workspace = stream.alloc_zeros::<u8>(workspace_bytes)?;
    {
        let (pointer, _guard) = workspace.device_ptr_mut(stream);
        // SAFETY: the handle is live; the workspace is `workspace_bytes` of device memory on
        // the handle's stream, returned with the handle so that the caller keeps both.
        unsafe {
            cublasSetWorkspace_v2(
                *blas.handle(),
                pointer as *mut std::ffi::c_void,
                workspace_bytes,
            )
        }
        .result()
        .map_err(cublas_error)?;
    }
    // SAFETY: the handle is live; this only sets a flag on it.
    unsafe {
        cublasSetMathMode(
            *blas.handle(),
            cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
        )
    }
    .result()
    .map_err(cublas_error)?;
    Ok((blas, workspace))
}

/// Bytes the device's default memory pool holds: every allocation of this process's
/// backends (weights, activations, freed blocks kept for reuse).
pub(super) fn pool_reserved_bytes(ctx: &CudaContext) -> Result<u64, DriverError> {
    ctx.bind_to_thread()?;
    let mut pool = std::ptr::null_mut();
    let mut reserved = 0u64;
    // SAFETY: `pool` and `reserved` are valid for one write each; RESERVED_MEM_CURRENT
    // writes a cuuint64_t.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
        sys::cuMemPoolGetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
            (&mut reserved as *mut u64).cast(),
        )
        .result()?;
    }
    Ok(reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_hardware_faults_are_sticky_and_a_refused_call_is_not() {
        use sys::cudaError_enum as E;
        for sticky in [
            E::CUDA_ERROR_ILLEGAL_ADDRESS,
            E::CUDA_ERROR_LAUNCH_FAILED,
            E::CUDA_ERROR_ECC_UNCORRECTABLE,
            E::CUDA_ERROR_MISALIGNED_ADDRESS,
        ] {
            assert!(is_sticky(sticky), "{sticky:?}");
        }
        for transient in [
            E::CUDA_ERROR_OUT_OF_MEMORY,
            E::CUDA_ERROR_INVALID_VALUE,
            E::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            E::CUDA_SUCCESS,
        ] {
            assert!(!is_sticky(transient), "{transient:?}");
        }
    }
}
