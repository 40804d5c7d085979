//! Embedding gather from the stored table (CPU twin of `kernels/embed.cu`).

use rayon::prelude::*;

use super::PARALLEL_MIN_ELEMENTS;
use crate::ops::{Dtype, convert_to_f32};

/// The embedding table kept in its stored dtype (bf16/f16 rows convert exactly to f32 on
/// lookup, so the table costs half the memory of an f32 copy).
#[derive(Debug)]
pub struct EmbeddingTable {
    /// Stored element type.
    pub dtype: Dtype,
    /// Rows (vocabulary size).
    pub rows: usize,
    /// Row width (hidden size).
    pub cols: usize,
    /// Raw little-endian bytes, `rows * cols * dtype.size()`.
    pub bytes: Vec<u8>,
}

impl EmbeddingTable {
    /// Writes row `id` as f32 into `out` (`cols` wide).
    pub fn row(&self, id: usize, out: &mut [f32]) {
        let row_bytes = self.cols * self.dtype.size();
        convert_to_f32(
            self.dtype,
            &self.bytes[id * row_bytes..(id + 1) * row_bytes],
            out,
        );
    }
}

/// `out[i] = table[token_ids[i]]`; ids must be below `table.rows` (checked by the caller).
pub fn embed(table: &EmbeddingTable, token_ids: &[u32], out: &mut [f32]) {
    let step = |(row, &id): (&mut [f32], &u32)| table.row(id as usize, row);
    if out.len() < PARALLEL_MIN_ELEMENTS {
        out.chunks_exact_mut(table.cols)
            .zip(token_ids)
            .for_each(step);
    } else {
        out.par_chunks_exact_mut(table.cols)
            .zip(token_ids.par_iter())
            .for_each(step);
    }
}
