//! The CPU twin of the coming FP8 GPU pass (`--dtype fp8`, issue 20): the exact f32 backend
//! with every matrix product's operands rounded as the FP8 path rounds them. Weights are
//! quantized to E4M3 per output channel at load and activations per token before each
//! product ([`crate::fp8`]); products accumulate in f32 from the dequantized values, as
//! cuBLASLt's FP8 products accumulate in f32. Everything else (norms, rope, attention,
//! SwiGLU, pooling) is the f32 backend's.
//!
//! It states the FP8 path's accuracy against transformers' f32 vectors without a GPU
//! (`tests/golden_fp8_twin.rs`) and is the reference the GPU pass will be held to. It is not
//! a serving mode: on a CPU it is slower than f32 and less exact.

use super::{CpuBackend, CpuLayout, CpuMatrix, CpuTensor, EmbeddingTable, MatrixValues};
use crate::fp8::{Fp8Rows, fits};
use crate::ops::{
    AttentionShape, BatchLayout, OpError, OpResult, Ops, QkNorms, Queries, TensorView,
};

/// The f32 CPU backend with FP8-rounded matrix products.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fp8Twin;

/// The backend every op but the products' rounding comes from.
const F32: CpuBackend = CpuBackend::F32;

impl Ops for Fp8Twin {
    type Tensor = CpuTensor;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Table = EmbeddingTable;
    type Layout = CpuLayout;

    fn name(&self) -> String {
        "cpu-fp8-twin".into()
    }

    /// Stacks the parts in f32, then (where the FP8 path holds it in FP8, [`fits`]) rounds
    /// each output channel (row) to E4M3 with its own scale and keeps the dequantized values.
    fn matrix(&self, parts: &[TensorView<'_>]) -> OpResult<CpuMatrix> {
        let stacked = F32.matrix(parts)?;
        if !fits(stacked.rows, stacked.cols) {
            return Ok(stacked);
        }
        let MatrixValues::F32(values) = &stacked.values else {
            return Err(OpError::Weight(
                "the f32 backend stacked a non-f32 matrix".into(),
            ));
        };
        let values = Fp8Rows::quantize(values, stacked.cols).dequantize();
        Ok(CpuMatrix {
            rows: stacked.rows,
            cols: stacked.cols,
            values: MatrixValues::F32(values),
        })
    }

    fn vector(&self, view: TensorView<'_>) -> OpResult<Vec<f32>> {
        F32.vector(view)
    }

    fn table(&self, view: TensorView<'_>) -> OpResult<EmbeddingTable> {
        F32.table(view)
    }

    fn layout(&self, layout: &BatchLayout) -> OpResult<CpuLayout> {
        F32.layout(layout)
    }

    fn embed(&self, table: &EmbeddingTable, token_ids: &[u32]) -> OpResult<CpuTensor> {
        F32.embed(table, token_ids)
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &Vec<f32>, eps: f32) -> OpResult<CpuTensor> {
        F32.rms_norm(x, weight, eps)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CpuTensor,
        delta: &CpuTensor,
        weight: &Vec<f32>,
        eps: f32,
    ) -> OpResult<CpuTensor> {
        F32.add_rms_norm(residual, delta, weight, eps)
    }

    fn add(&self, residual: &mut CpuTensor, delta: &CpuTensor) -> OpResult<()> {
        F32.add(residual, delta)
    }

    /// Rounds each row of `x` (a token) to E4M3 with its own scale, then multiplies in f32.
    fn linear(&self, x: &CpuTensor, w: &CpuMatrix) -> OpResult<CpuTensor> {
        if x.cols == 0 {
            return F32.linear(x, w);
        }
        let rounded = Fp8Rows::quantize(&x.data, x.cols).dequantize();
        F32.linear(&CpuTensor::new(x.rows, x.cols, rounded)?, w)
    }

    fn qk_norm_rope(
        &self,
        qkv: &mut CpuTensor,
        norms: &QkNorms<'_, Vec<f32>>,
        layout: &CpuLayout,
        shape: AttentionShape,
    ) -> OpResult<()> {
        F32.qk_norm_rope(qkv, norms, layout, shape)
    }

    fn attention(
        &self,
        q: &CpuTensor,
        kv: &CpuTensor,
        layout: &CpuLayout,
        queries: Queries,
        shape: AttentionShape,
    ) -> OpResult<CpuTensor> {
        F32.attention(q, kv, layout, queries, shape)
    }

    fn silu_mul(&self, gate_up: &CpuTensor) -> OpResult<CpuTensor> {
        F32.silu_mul(gate_up)
    }

    fn last_rows(&self, x: &CpuTensor, layout: &CpuLayout) -> OpResult<CpuTensor> {
        F32.last_rows(x, layout)
    }

    fn pool(
        &self,
        last: &CpuTensor,
        norm: &Vec<f32>,
        eps: f32,
        dims: &[usize],
        normalize: &[bool],
    ) -> OpResult<Vec<Vec<f32>>> {
        F32.pool(last, norm, eps, dims, normalize)
    }

    fn to_host(&self, x: &CpuTensor) -> OpResult<Vec<f32>> {
        F32.to_host(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Dtype;

    /// `values` as the bytes of an f32 checkpoint tensor.
    fn bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn view(bytes: &[u8], rows: usize, cols: usize) -> TensorView<'_> {
        TensorView {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![rows, cols],
            data: bytes,
        }
    }

    #[test]
    fn products_read_both_operands_rounded_to_e4m3_per_row() {
        // 16 output channels of growing magnitude (the FP8 path holds 16 x 16), two tokens.
        let (n, k) = (16, 16);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * (1 + i / k) as f32 * 0.013)
            .collect();
        let w_bytes = bytes(&w);
        let matrix = Fp8Twin.matrix(&[view(&w_bytes, n, k)]).unwrap();
        let x_values: Vec<f32> = (0..2 * k).map(|i| (i as f32 * 0.7).sin()).collect();
        let x = CpuTensor::new(2, k, x_values).unwrap();
        let got = Fp8Twin.linear(&x, &matrix).unwrap();

        let wq = Fp8Rows::quantize(&w, k).dequantize();
        let xq = Fp8Rows::quantize(&x.data, k).dequantize();
        for r in 0..2 {
            for c in 0..n {
                let want: f32 = (0..k).map(|i| xq[r * k + i] * wq[c * k + i]).sum();
                let got = got.data[r * n + c];
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
        }
        // The rounding is visible: the weights are not all E4M3 multiples of their scales.
        assert_ne!(wq, w);
    }

    #[test]
    fn a_matrix_the_fp8_path_keeps_in_bf16_stays_unrounded() {
        // (2, 3): not multiples of 16, as the reranker's yes/no head.
        let w = [1.0f32, 0.3, -0.7, 100.0, -250.0, 17.0];
        let w_bytes = bytes(&w);
        let matrix = Fp8Twin.matrix(&[view(&w_bytes, 2, 3)]).unwrap();
        assert!(matches!(&matrix.values, MatrixValues::F32(values) if values[..] == w[..]));
    }
}
