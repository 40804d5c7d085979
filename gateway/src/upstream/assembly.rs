//! Putting one request's answer together from its chunks, which may arrive in any order:
//! vectors of an embedding request ([`Assembly`]), scores of a rerank request
//! ([`ScoreAssembly`]). Pure logic: no I/O, unit-tested here.
//!
//! An assembly made with a [`StageSink`] also folds the timings its chunks carry into one
//! observation per stage ([`stages`], the recording rules) and records it once, when the
//! answer is complete.

mod stages;

use std::time::Instant;

use common::wire::{EmbedChunk, RerankChunk};

pub use self::stages::StageTally;
use crate::metrics::StageSink;

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
    /// What the chunks said about the stages.
    tally: StageTally,
    /// Where the stages go once complete; `None` when not recorded (or recorded already).
    sink: Option<StageSink>,
}

impl Assembly {
    /// An empty assembly for a request of `total` inputs, published now; its stages are not
    /// recorded.
    pub fn new(total: usize) -> Self {
        Self {
            slots: vec![None; total],
            filled: 0,
            dims: None,
            tally: StageTally::new(Instant::now()),
            sink: None,
        }
    }

    /// An empty assembly for a request of `total` inputs, published now, whose stages go to
    /// `sink` once it is complete.
    pub fn recorded(total: usize, sink: StageSink) -> Self {
        Self {
            sink: Some(sink),
            ..Self::new(total)
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
        self.tally.observe(chunk.timings.as_ref(), Instant::now());
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
        if self.is_complete() {
            let tokens = self.slots.iter().flatten().map(|item| item.tokens);
            record(&mut self.sink, &self.tally, tokens);
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
    /// What the chunks said about the stages.
    tally: StageTally,
    /// Where the stages go once complete; `None` when not recorded (or recorded already).
    sink: Option<StageSink>,
}

impl ScoreAssembly {
    /// An empty assembly for a request of `total` documents, published now; its stages are
    /// not recorded.
    pub fn new(total: usize) -> Self {
        Self {
            slots: vec![None; total],
            filled: 0,
            tally: StageTally::new(Instant::now()),
            sink: None,
        }
    }

    /// An empty assembly for a request of `total` documents, published now, whose stages go
    /// to `sink` once it is complete.
    pub fn recorded(total: usize, sink: StageSink) -> Self {
        Self {
            sink: Some(sink),
            ..Self::new(total)
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
        self.tally.observe(chunk.timings.as_ref(), Instant::now());
        if self.filled == total {
            let tokens = self.slots.iter().flatten().map(|scored| scored.tokens);
            record(&mut self.sink, &self.tally, tokens);
        }
        Ok(self.filled == total)
    }

    /// The scores in document order; `None` while some are missing.
    pub fn finish(self) -> Option<Vec<Scored>> {
        self.slots.into_iter().collect()
    }
}

/// Records a complete request's stages into `sink` (once: the sink is taken), its inputs
/// having `tokens` tokens each.
fn record(sink: &mut Option<StageSink>, tally: &StageTally, tokens: impl Iterator<Item = u32>) {
    let Some(sink) = sink.take() else {
        return;
    };
    let done = Instant::now();
    let input_tokens = tokens.map(u64::from).sum();
    if let Some(stages) = tally.finish(input_tokens, done) {
        sink.record(&stages, tally.first_chunk().unwrap_or(done), done);
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
            timings: None,
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

    #[test]
    fn a_complete_answer_records_each_stage_once() {
        use common::trace::RequestTrace;
        use common::wire::{BatchPath, Priority, StageTimings};

        let metrics = crate::metrics::Metrics::new();
        let sink = StageSink::new(metrics.clone(), &RequestTrace::default());
        let mut assembly = Assembly::recorded(3, sink);
        let timed = |offset, rows: &[[f32; 2]], path| EmbedChunk {
            timings: Some(StageTimings {
                model: "qwen3-tiny".into(),
                lane: Priority::Bulk,
                path,
                tokenize_ms: 0.2,
                tokenizer_ms: 0.4,
                forward_ms: 2.0,
                batch_sequences: 2,
                batch_tokens: 9,
            }),
            ..chunk(offset, rows, 3)
        };
        assert_eq!(
            assembly.add(&timed(0, &[[1.0, 0.0], [2.0, 0.0]], BatchPath::Fallback)),
            Ok(false)
        );
        let text = metrics.render();
        assert!(
            !text.contains("embed_stage_forward_seconds_count"),
            "early:\n{text}"
        );
        assert_eq!(
            assembly.add(&timed(2, &[[4.0, 0.0]], BatchPath::Direct)),
            Ok(true)
        );
        let text = metrics.render();
        let labels = r#"{model="qwen3-tiny",lane="bulk""#;
        for name in [
            "embed_stage_tokenize_seconds_count",
            "embed_stage_assembly_seconds_count",
            "embed_batch_tokens_count",
        ] {
            let line = format!("{name}{labels}}} 1");
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        let queued = format!("embed_stage_forward_seconds_count{labels},path=\"queue\"}} 1");
        assert!(
            text.lines().any(|l| l == queued),
            "no `{queued}` in\n{text}"
        );
        // 1 + 2 + 4 tokens (the test chunks count a row's first value as its tokens).
        assert!(
            text.contains(r#"embed_request_input_tokens_sum{model="qwen3-tiny",lane="bulk"} 7"#),
            "{text}"
        );
        let fallback = r#"embed_direct_path_total{model="qwen3-tiny",outcome="fallback"} 1"#;
        assert!(text.lines().any(|l| l == fallback), "{text}");
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
            timings: None,
        }
    }

    #[test]
    fn a_complete_rerank_answer_records_its_stages_once() {
        use common::trace::RequestTrace;
        use common::wire::{BatchPath, Priority, StageTimings};

        let metrics = crate::metrics::Metrics::new();
        let sink = StageSink::new(metrics.clone(), &RequestTrace::default());
        let mut assembly = ScoreAssembly::recorded(2, sink);
        let timed = RerankChunk {
            timings: Some(StageTimings {
                model: "reranker".into(),
                lane: Priority::Interactive,
                path: BatchPath::Direct,
                tokenize_ms: 0.1,
                tokenizer_ms: 0.1,
                forward_ms: 1.0,
                batch_sequences: 2,
                batch_tokens: 14,
            }),
            ..score_chunk(0, &[0.1, 0.2], 2)
        };
        assert_eq!(assembly.add(&timed), Ok(true));
        let text = metrics.render();
        let labels = r#"{model="reranker",lane="interactive",path="direct"}"#;
        let line = format!("embed_stage_forward_seconds_count{labels} 1");
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        let hits = r#"embed_direct_path_total{model="reranker",outcome="hit"} 1"#;
        assert!(text.lines().any(|l| l == hits), "{text}");
        let tokens = r#"embed_request_input_tokens_sum{model="reranker",lane="interactive"} 14"#;
        assert!(text.contains(tokens), "{text}");
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
