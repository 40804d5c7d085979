//! The CUDA backend as the CUDA tests open it: on device 0, or `None` (after printing why the
//! test is skipped) where there is none, or where FP8 products cannot run.

#![allow(dead_code)]

use gpu_worker::cuda::{CudaBackend, CudaOptions};

/// The bf16 backend on device 0, or `None` (after saying so) without a device.
pub fn gpu() -> Option<CudaBackend> {
    if !gpu_worker::cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return None;
    }
    Some(
        CudaBackend::new(0, CudaOptions::default())
            .unwrap_or_else(|e| panic!("a CUDA device is present but the backend fails: {e}")),
    )
}

/// The backend on device 0 with FP8 products, or `None` (after saying why) without a device
/// or on one older than compute capability 9.0.
pub fn fp8_gpu() -> Option<CudaBackend> {
    let (major, _) = gpu()?.device().compute_capability;
    if major < 9 {
        eprintln!("skipped: FP8 products need compute capability 9.0");
        return None;
    }
    gpu_with(CudaOptions {
        fp8: true,
        ..CudaOptions::default()
    })
}

/// The bf16 backend on device 0 running the MLP over `chunk` tokens at a time, or `None`
/// (after saying so) without a device.
pub fn chunked_mlp_gpu(chunk: usize) -> Option<CudaBackend> {
    gpu_with(CudaOptions {
        mlp_chunk_tokens: chunk,
        ..CudaOptions::default()
    })
}

/// The bf16 backend on device 0 running batches of up to `max_tokens` tokens as CUDA graphs,
/// or `None` (after saying so) without a device.
pub fn graphs_gpu(max_tokens: usize) -> Option<CudaBackend> {
    gpu_with(CudaOptions {
        graph_max_tokens: max_tokens,
        ..CudaOptions::default()
    })
}

/// The bf16 backend on device 0 whose attention kernel normalizes and rotates the q heads
/// itself, or `None` (after saying so) without a device.
pub fn fused_q_norm_rope_gpu() -> Option<CudaBackend> {
    gpu_with(CudaOptions {
        fuse_q_norm_rope: true,
        ..CudaOptions::default()
    })
}

/// The backend on device 0 with `options`, or `None` (after saying so) without a device.
fn gpu_with(options: CudaOptions) -> Option<CudaBackend> {
    gpu()?;
    Some(
        CudaBackend::new(0, options)
            .unwrap_or_else(|e| panic!("the device refuses the backend {options:?}: {e}")),
    )
}
