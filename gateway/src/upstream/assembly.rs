//! Putting one request's answer together from its chunks, which may arrive in any order:
//! vectors of an embedding request ([`Assembly`]), scores of a rerank request
//! ([`ScoreAssembly`]). Pure logic: no I/O, unit-tested here.

use common::wire::{EmbedChunk, RerankChunk};

/// One finished embedding and the tokens the model read for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The vector.
    pub vector: Vec<f32>,
    /// Tokens read (template and end token included), for usage counts.
    pub tokens: u32,
}

/// The items of one request received so far.
#[derive(Debug)]
pub struct Assembly {
    /// One slot per input, filled as chunks arrive.
    slots: Vec<Option<Embedded>>,
    /// Slots filled; the request is done when it reaches `slots.len()`.
    filled: usize,
    /// Vector length, fixed by the first chunk so every item agrees.
    dims: Option<u32>,
}

impl Assembly {
    /// An empty assembly for a request of `total` inputs.
    pub fn new(total: usize) -> Self {
        Self {
            slots: vec![None; total],
            filled: 0,
            dims: None,
        }
    }

    /// Adds a chunk; returns whether every item is now held. A chunk that contradicts the
    /// request (other total, out-of-range items, inconsistent sizes) is an error. A chunk
    /// repeating items already held (a redelivered batch) replaces them without counting
    /// twice.
    pub fn add(&mut self, chunk: &EmbedChunk) -> Result<bool, String> {
        let total = self.slots.len();
        if chunk.total as usize != total {
            return Err(format!(
                "chunk says the request has {} items, it has {total}",
                chunk.total
            ));
        }
        let start = chunk.offset as usize;
        let end = start + chunk.count as usize;
        if end > total {
            return Err(format!(
                "chunk covers items {start}..{end} of a request of {total}"
            ));
        }
        if let Some(dims) = self.dims
            && dims != chunk.dims
        {
            return Err(format!(
                "chunk has {} dims, earlier chunks had {dims}",
                chunk.dims
            ));
        }
        let vectors = chunk.vectors().map_err(|e| e.to_string())?;
        self.dims = Some(chunk.dims);
        for ((slot, vector), &tokens) in self.slots[start..end]
            .iter_mut()
            .zip(vectors)
            .zip(&chunk.tokens)
        {
            if slot.is_none() {
                self.filled += 1;
            }
            *slot = Some(Embedded { vector, tokens });
        }
        Ok(self.is_complete())
    }

    /// Whether every item is held.
    pub fn is_complete(&self) -> bool {
        self.filled == self.slots.len()
    }

    /// The items in input order; `None` while some are missing.
    pub fn finish(self) -> Option<Vec<Embedded>> {
        self.slots.into_iter().collect()
    }
}

/// One scored document of a rerank request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Relevance, the probability of `yes` against `no`.
    pub score: f32,
    /// Logit of `yes` at the last position.
    pub logit_yes: f32,
    /// Logit of `no` at the last position.
    pub logit_no: f32,
    /// Tokens the model read for the pair (the whole prompt).
    pub tokens: u32,
}

/// The documents of one rerank request scored so far.
#[derive(Debug)]
pub struct ScoreAssembly {
    /// One slot per document, filled as chunks arrive.
    slots: Vec<Option<Scored>>,
    /// Slots filled; the request is done when it reaches `slots.len()`.
    filled: usize,
}

impl ScoreAssembly {
    /// An empty assembly for a request of `total` documents.
    pub fn new(total: usize) -> Self {
        Self {
            slots: vec![None; total],
            filled: 0,
        }
    }

    /// Adds a chunk; returns whether every document is now scored. A chunk that contradicts
    /// the request (other total, out-of-range documents, lists of the wrong length) is an
    /// error; one repeating documents already held replaces them without counting twice.
    pub fn add(&mut self, chunk: &RerankChunk) -> Result<bool, String> {
        let total = self.slots.len();
        if chunk.total as usize != total {
            return Err(format!(
                "chunk says the request has {} documents, it has {total}",
                chunk.total
            ));
        }
        chunk.validate().map_err(|e| e.to_string())?;
        let start = chunk.offset as usize;
        let end = start + chunk.count as usize;
        if end > total {
            return Err(format!(
                "chunk covers documents {start}..{end} of a request of {total}"
            ));
        }
        for (k, slot) in self.slots[start..end].iter_mut().enumerate() {
            if slot.is_none() {
                self.filled += 1;
            }
            *slot = Some(Scored {
                score: chunk.scores[k],
                logit_yes: chunk.logit_yes[k],
                logit_no: chunk.logit_no[k],
                tokens: chunk.tokens[k],
            });
        }
        Ok(self.filled == total)
    }

    /// The scores in document order; `None` while some are missing.
    pub fn finish(self) -> Option<Vec<Scored>> {
        self.slots.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::f32_le_bytes;

    fn chunk(offset: u32, rows: &[[f32; 2]], total: u32) -> EmbedChunk {
        EmbedChunk {
            id: "r".into(),
            offset,
            count: rows.len() as u32,
            total,
            dims: 2,
            embeddings: f32_le_bytes(rows.iter().map(|r| &r[..])),
            tokens: rows.iter().map(|r| r[0] as u32).collect(),
        }
    }

    #[test]
    fn out_of_order_chunks_assemble_in_input_order() {
        let mut assembly = Assembly::new(3);
        assert_eq!(assembly.add(&chunk(2, &[[3.0, 0.0]], 3)), Ok(false));
        assert_eq!(
            assembly.add(&chunk(0, &[[1.0, 0.0], [2.0, 0.0]], 3)),
            Ok(true)
        );
        let items = assembly.finish().unwrap();
        let firsts: Vec<f32> = items.iter().map(|i| i.vector[0]).collect();
        assert_eq!(firsts, [1.0, 2.0, 3.0]);
        assert_eq!(items[2].tokens, 3);
    }

    #[test]
    fn repeated_chunk_does_not_complete_early() {
        let mut assembly = Assembly::new(2);
        assert_eq!(assembly.add(&chunk(0, &[[1.0, 0.0]], 2)), Ok(false));
        assert_eq!(assembly.add(&chunk(0, &[[1.0, 0.0]], 2)), Ok(false));
        assert!(assembly.finish().is_none());
    }

    #[test]
    fn contradicting_chunks_are_errors() {
        let mut assembly = Assembly::new(2);
        assert!(assembly.add(&chunk(0, &[[1.0, 0.0]], 3)).is_err());
        assert!(
            assembly
                .add(&chunk(1, &[[1.0, 0.0], [1.0, 0.0]], 2))
                .is_err()
        );
        let mut bad = chunk(0, &[[1.0, 0.0]], 2);
        bad.embeddings.pop();
        assert!(assembly.add(&bad).is_err());
        assert_eq!(assembly.add(&chunk(0, &[[1.0, 0.0]], 2)), Ok(false));
        let mut other_dims = chunk(1, &[[1.0, 0.0]], 2);
        other_dims.dims = 1;
        other_dims.embeddings.truncate(4);
        assert!(assembly.add(&other_dims).is_err());
    }

    fn score_chunk(offset: u32, scores: &[f32], total: u32) -> RerankChunk {
        RerankChunk {
            id: "r".into(),
            offset,
            count: scores.len() as u32,
            total,
            scores: scores.to_vec(),
            logit_yes: scores.to_vec(),
            logit_no: vec![0.0; scores.len()],
            tokens: vec![7; scores.len()],
        }
    }

    #[test]
    fn score_chunks_assemble_in_document_order_and_contradictions_fail() {
        let mut assembly = ScoreAssembly::new(3);
        assert_eq!(assembly.add(&score_chunk(2, &[0.3], 3)), Ok(false));
        assert_eq!(assembly.add(&score_chunk(2, &[0.3], 3)), Ok(false));
        assert!(assembly.add(&score_chunk(2, &[0.3, 0.4], 3)).is_err());
        assert!(assembly.add(&score_chunk(0, &[0.3], 4)).is_err());
        let mut short = score_chunk(0, &[0.1, 0.2], 3);
        short.tokens.pop();
        assert!(assembly.add(&short).is_err());
        assert_eq!(assembly.add(&score_chunk(0, &[0.1, 0.2], 3)), Ok(true));
        let scores: Vec<f32> = assembly.finish().unwrap().iter().map(|s| s.score).collect();
        assert_eq!(scores, [0.1, 0.2, 0.3]);
    }
}
