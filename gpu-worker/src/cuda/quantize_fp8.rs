//! Launcher of `kernels/quantize_fp8.cu`: activations rounded to FP8 (E4M3) per token, the
//! operand format of the coming FP8 matrix products (CPU twin: [`crate::fp8::Fp8Rows`], equal
//! bit for bit).

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{CudaBackend, CudaTensor, int, per_row};
use crate::fp8::Fp8Rows;
use crate::ops::OpResult;

/// A `(rows, cols)` matrix in E4M3 on the device, one f32 scale per row.
pub struct CudaFp8Rows {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` E4M3 codes, row-major.
    pub codes: CudaSlice<u8>,
    /// One scale per row: value `(r, c)` is `e4m3(codes[r][c]) * scales[r]`.
    pub scales: CudaSlice<f32>,
}

impl CudaFp8Rows {
    /// Copies the codes and scales to the host.
    pub fn to_host(&self, gpu: &CudaBackend) -> OpResult<Fp8Rows> {
        Ok(Fp8Rows {
            cols: self.cols,
            codes: gpu.stream.clone_dtoh(&self.codes)?,
            scales: gpu.stream.clone_dtoh(&self.scales)?,
        })
    }
}

impl CudaBackend {
    /// Rounds each row (token) of bf16 activation `x` to FP8 E4M3 with its own scale: the
    /// operand of the FP8 products (`dtype = fp8`), tested against its CPU twin
    /// [`Fp8Rows::quantize`].
    pub fn quantize_fp8_rows(&self, x: &CudaTensor) -> OpResult<CudaFp8Rows> {
        quantize_fp8_rows(self, x)
    }
}

/// Each row of bf16 `x` scaled to its largest magnitude and rounded to E4M3.
pub(super) fn quantize_fp8_rows(gpu: &CudaBackend, x: &CudaTensor) -> OpResult<CudaFp8Rows> {
    const OP: &str = "quantize_fp8_rows";
    let input = x.bf16(OP, "x")?;
    let config = per_row(OP, x.rows, x.cols)?;
    let (rows_arg, cols_arg) = (int(OP, "rows", x.rows)?, int(OP, "cols", x.cols)?);
    let mut codes = gpu.alloc::<u8>(OP, x.rows * x.cols)?;
    let mut scales = gpu.alloc::<f32>(OP, x.rows)?;
    // SAFETY: quantize_fp8_rows(const bf16* x, unsigned char* codes, float* scales, int rows,
    // int cols): x and codes hold rows * cols elements, scales rows; one block per row.
    unsafe {
        gpu.stream
            .launch_builder(&gpu.kernels.quantize_fp8_rows)
            .arg(input)
            .arg(&mut codes)
            .arg(&mut scales)
            .arg(&rows_arg)
            .arg(&cols_arg)
            .launch(config)
    }?;
    Ok(CudaFp8Rows {
        rows: x.rows,
        cols: x.cols,
        codes,
        scales,
    })
}
