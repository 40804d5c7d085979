//! [`Ops`] for the CUDA backend: weights converted once at load (bf16, or E4M3 with scales
//! per output feature for FP8), each op handed to its launcher, and the passes that replay a
//! recorded graph (`graphs`) or run the decoder op by op.

use half::bf16;

use super::qk_norm_rope::Heads;
use super::tensor::{self, MatrixData, TensorData};
use super::{
    CudaBackend, CudaLayout, CudaMatrix, CudaTable, CudaTensor, CudaVector, add, attention, embed,
    last_rows, linear, mlp, pool, qk_norm_rope, rms_norm, silu_mul,
};
use crate::ops::{
    self, AttentionShape, BatchLayout, Decoder, DeviceInfo, OpError, OpResult, Ops, QkNorms,
    Queries, TensorView,
};

impl Ops for CudaBackend {
    type Tensor = CudaTensor;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type Table = CudaTable;
    type Layout = CudaLayout;

    fn name(&self) -> String {
        if self.fp8.is_some() {
            "cuda-fp8".into()
        } else {
            "cuda-bf16".into()
        }
    }

    fn device_info(&self) -> DeviceInfo {
        let (major, minor) = self.device.compute_capability;
        DeviceInfo {
            description: format!(
                "{} (cuda:{}, compute capability {major}.{minor}, kernels {}{})",
                self.device.name,
                self.device.ordinal,
                self.target,
                self.graphs
                    .as_ref()
                    .map_or(String::new(), |graphs| format!(", {}", graphs.describe()))
            ),
            memory_used: self.memory_used().ok(),
            memory_total: Some(self.device.total_memory),
        }
    }

    fn matrix(&self, parts: &[TensorView<'_>]) -> OpResult<CudaMatrix> {
        let Some(first) = parts.first() else {
            return Err(OpError::Weight("a matrix needs at least one part".into()));
        };
        let cols = first.shape.get(1).copied().unwrap_or(0);
        let mut rows = 0;
        for part in parts {
            if part.shape.len() != 2 || part.shape[1] != cols {
                return Err(OpError::Weight(format!(
                    "`{}` has shape {:?}, expected (_, {cols})",
                    part.name, part.shape
                )));
            }
            rows += part.shape[0];
        }
        let data = if self.fp8.is_some() && crate::fp8::fits(rows, cols) {
            let values: Vec<f32> = parts.iter().flat_map(|part| part.to_f32()).collect();
            let quantized = crate::fp8::Fp8Rows::quantize(&values, cols);
            MatrixData::Fp8 {
                codes: self.upload_weight(&first.name, &quantized.codes)?,
                scales: self.upload_weight(&first.name, &quantized.scales)?,
            }
        } else {
            let values: Vec<bf16> = parts.iter().flat_map(tensor::to_bf16).collect();
            MatrixData::Bf16(self.upload_weight(&first.name, &values)?)
        };
        Ok(CudaMatrix { rows, cols, data })
    }

    fn vector(&self, view: TensorView<'_>) -> OpResult<CudaVector> {
        let data = self.upload_weight(&view.name, &view.to_f32())?;
        Ok(CudaVector { data })
    }

    fn table(&self, view: TensorView<'_>) -> OpResult<CudaTable> {
        let [rows, cols] = view.shape[..] else {
            return Err(OpError::Weight(format!(
                "`{}` has shape {:?}, expected (vocab, hidden)",
                view.name, view.shape
            )));
        };
        let data = self.upload_weight(&view.name, &tensor::to_bf16(&view))?;
        Ok(CudaTable { rows, cols, data })
    }

    fn layout(&self, layout: &BatchLayout) -> OpResult<CudaLayout> {
        if let Some(budget) = self.max_batch_tokens()
            && layout.num_rows() > budget
        {
            return Err(OpError::OutOfMemory(format!(
                "a batch of {} tokens exceeds the memory plan's {budget} tokens \
                 (gpu_memory_fraction {})",
                layout.num_rows(),
                self.gpu_memory_fraction
            )));
        }
        CudaLayout::new(self, layout)
    }

    fn embed(&self, table: &CudaTable, token_ids: &[u32]) -> OpResult<CudaTensor> {
        embed::embed(self, table, token_ids)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaVector, eps: f32) -> OpResult<CudaTensor> {
        rms_norm::rms_norm(self, x, weight, eps)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaTensor,
        delta: &CudaTensor,
        weight: &CudaVector,
        eps: f32,
    ) -> OpResult<CudaTensor> {
        rms_norm::add_rms_norm(self, residual, delta, weight, eps)
    }

    fn add(&self, residual: &mut CudaTensor, delta: &CudaTensor) -> OpResult<()> {
        add::add(self, residual, delta)
    }

    fn linear(&self, x: &CudaTensor, w: &CudaMatrix) -> OpResult<CudaTensor> {
        linear::linear(self, x, w)
    }

    fn qk_norm_rope(
        &self,
        qkv: &mut CudaTensor,
        norms: &QkNorms<'_, CudaVector>,
        layout: &CudaLayout,
        shape: AttentionShape,
    ) -> OpResult<()> {
        qk_norm_rope::qk_norm_rope(self, qkv, norms, layout, shape, Heads::QueryAndKey)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        kv: &CudaTensor,
        layout: &CudaLayout,
        queries: Queries,
        shape: AttentionShape,
    ) -> OpResult<CudaTensor> {
        attention::attention(self, q, kv, layout, queries, shape, None)
    }

    fn self_attention(
        &self,
        mut qkv: CudaTensor,
        norms: &QkNorms<'_, CudaVector>,
        layout: &CudaLayout,
        queries: Queries,
        shape: AttentionShape,
    ) -> OpResult<CudaTensor> {
        if !self.fuse_q_norm_rope {
            self.qk_norm_rope(&mut qkv, norms, layout, shape)?;
            return ops::attend(self, &qkv, layout, queries, shape);
        }
        qk_norm_rope::qk_norm_rope(self, &mut qkv, norms, layout, shape, Heads::KeyOnly)?;
        let last = match queries {
            Queries::All => None,
            Queries::LastOnly => Some(self.last_rows(&qkv, layout)?),
        };
        let q = last.as_ref().unwrap_or(&qkv);
        attention::attention(self, q, &qkv, layout, queries, shape, Some(norms))
    }

    fn silu_mul(&self, gate_up: &CudaTensor) -> OpResult<CudaTensor> {
        silu_mul::silu_mul(self, gate_up)
    }

    fn pass(
        &self,
        table: &CudaTable,
        token_ids: &[u32],
        layout: &BatchLayout,
        decoder: &Decoder<'_, Self>,
    ) -> OpResult<CudaTensor> {
        if let Some(graphs) = &self.graphs
            && let Some(replayed) = graphs.run(self, table, token_ids, layout, decoder)
        {
            return replayed;
        }
        let device_layout = self.layout(layout)?;
        decoder(self.embed(table, token_ids)?, &device_layout)
    }

    fn mlp(&self, x: &CudaTensor, gate_up: &CudaMatrix, down: &CudaMatrix) -> OpResult<CudaTensor> {
        match self.mlp_chunk_tokens {
            chunk if chunk > 0 && x.rows > chunk => mlp::mlp_chunked(self, x, gate_up, down, chunk),
            _ => self.linear(&self.linear_silu_mul(x, gate_up)?, down),
        }
    }

    fn last_rows(&self, x: &CudaTensor, layout: &CudaLayout) -> OpResult<CudaTensor> {
        last_rows::last_rows(self, x, layout)
    }

    fn pool(
        &self,
        last: &CudaTensor,
        norm: &CudaVector,
        eps: f32,
        dims: &[usize],
        normalize: &[bool],
    ) -> OpResult<Vec<Vec<f32>>> {
        pool::pool(self, last, norm, eps, dims, normalize)
    }

    fn to_host(&self, x: &CudaTensor) -> OpResult<Vec<f32>> {
        Ok(match &x.data {
            TensorData::F32(data) => self.stream.clone_dtoh(data)?,
            TensorData::Bf16(data) => self
                .stream
                .clone_dtoh(data)?
                .into_iter()
                .map(f32::from)
                .collect(),
        })
    }
}
