//! Device-resident activations and weights, and their conversion from checkpoint dtypes.
//!
//! Activations come in two element types: the residual stream is f32 (it accumulates every
//! layer's output, so it is kept exact to f32 rounding), everything a matrix product reads or
//! writes is bf16. Weights are bf16 (or, with `--dtype fp8`, the matrices FP8 products can
//! read are E4M3 with a scale per output feature), norm vectors f32.

use cudarc::driver::CudaSlice;
use half::bf16;

use crate::ops::{Dtype, OpError, OpResult, TensorView};

/// Element type of an activation on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActDtype {
    /// bfloat16: inputs and outputs of matrix products, q|k|v, attention, MLP.
    Bf16,
    /// f32: the residual stream and the pooled rows.
    F32,
}

/// The device buffer of a [`CudaTensor`].
#[derive(Debug)]
pub(super) enum TensorData {
    Bf16(CudaSlice<bf16>),
    F32(CudaSlice<f32>),
}

/// A row-major `(rows, cols)` activation matrix on the device.
#[derive(Debug)]
pub struct CudaTensor {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) data: TensorData,
}

impl CudaTensor {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element type.
    pub fn dtype(&self) -> ActDtype {
        match self.data {
            TensorData::Bf16(_) => ActDtype::Bf16,
            TensorData::F32(_) => ActDtype::F32,
        }
    }

    pub(super) fn bf16(&self, op: &'static str, what: &str) -> OpResult<&CudaSlice<bf16>> {
        match &self.data {
            TensorData::Bf16(data) => Ok(data),
            TensorData::F32(_) => Err(dtype_error(op, what, ActDtype::Bf16)),
        }
    }

    pub(super) fn bf16_mut(
        &mut self,
        op: &'static str,
        what: &str,
    ) -> OpResult<&mut CudaSlice<bf16>> {
        match &mut self.data {
            TensorData::Bf16(data) => Ok(data),
            TensorData::F32(_) => Err(dtype_error(op, what, ActDtype::Bf16)),
        }
    }

    pub(super) fn f32(&self, op: &'static str, what: &str) -> OpResult<&CudaSlice<f32>> {
        match &self.data {
            TensorData::F32(data) => Ok(data),
            TensorData::Bf16(_) => Err(dtype_error(op, what, ActDtype::F32)),
        }
    }

    pub(super) fn f32_mut(
        &mut self,
        op: &'static str,
        what: &str,
    ) -> OpResult<&mut CudaSlice<f32>> {
        match &mut self.data {
            TensorData::F32(data) => Ok(data),
            TensorData::Bf16(_) => Err(dtype_error(op, what, ActDtype::F32)),
        }
    }
}

fn dtype_error(op: &'static str, what: &str, expected: ActDtype) -> OpError {
    OpError::Shape {
        op,
        detail: format!("{what} must be {expected:?} on the CUDA backend"),
    }
}

/// A weight matrix `(out, in)` on the device (used as `x @ w^T`).
#[derive(Debug)]
pub struct CudaMatrix {
    /// Output features.
    pub(super) rows: usize,
    /// Input features.
    pub(super) cols: usize,
    pub(super) data: MatrixData,
}

impl CudaMatrix {
    /// Whether the products read it in FP8 (E4M3 with a scale per output feature).
    pub fn is_fp8(&self) -> bool {
        matches!(self.data, MatrixData::Fp8 { .. })
    }
}

/// The stored values of a [`CudaMatrix`].
#[derive(Debug)]
pub(super) enum MatrixData {
    /// bf16, row-major.
    Bf16(CudaSlice<bf16>),
    /// E4M3 codes, row-major, and one f32 scale per row (output feature): the `--dtype fp8`
    /// weights, quantized at load ([`crate::fp8::Fp8Rows`]).
    Fp8 {
        codes: CudaSlice<u8>,
        scales: CudaSlice<f32>,
    },
}

/// A norm weight vector in f32 on the device.
#[derive(Debug)]
pub struct CudaVector {
    pub(super) data: CudaSlice<f32>,
}

impl CudaVector {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The token embedding table `(vocab, hidden)` in bf16 on the device.
#[derive(Debug)]
pub struct CudaTable {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) data: CudaSlice<bf16>,
}

/// A stored tensor as bf16: bf16 is copied bit for bit, f16 and f32 are rounded to nearest.
pub(super) fn to_bf16(view: &TensorView<'_>) -> Vec<bf16> {
    match view.dtype {
        Dtype::Bf16 => view
            .data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]))
            .collect(),
        Dtype::F16 | Dtype::F32 => view.to_f32().into_iter().map(bf16::from_f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(dtype: Dtype, data: &[u8]) -> TensorView<'_> {
        TensorView {
            name: "w".into(),
            dtype,
            shape: vec![data.len() / dtype.size()],
            data,
        }
    }

    #[test]
    fn checkpoint_dtypes_convert_to_bf16() {
        let values = [1.0f32, -2.5, 3.140625, 1e-3];
        let bf16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        let f16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let want: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        assert_eq!(to_bf16(&view(Dtype::Bf16, &bf16_bytes)), want);
        assert_eq!(to_bf16(&view(Dtype::F32, &f32_bytes)), want);
        // 1e-3 is not exact in f16, so its bf16 may differ by the f16 rounding; the rest are.
        assert_eq!(to_bf16(&view(Dtype::F16, &f16_bytes))[..3], want[..3]);
    }
}
