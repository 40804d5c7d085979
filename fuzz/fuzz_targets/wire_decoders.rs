//! Feeds arbitrary bytes to every wire decoder a worker runs on NATS payloads, then to the
//! consistency checks behind them (`TokenBatch::validate`, `EmbedChunk::vectors`,
//! `RerankChunk::validate`). Any panic, overflow (with `-a`/`--debug-assertions`), stack
//! overflow or sanitizer report is a bug.
#![no_main]

use common::wire::{
    EmbedChunk, EmbedReply, EmbedRequest, ErrorReply, RerankReply, RerankRequest, TokenBatch,
    WorkerStatus, decode,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = decode::<EmbedRequest>(bytes);
    let _ = decode::<ErrorReply>(bytes);
    let _ = decode::<WorkerStatus>(bytes);
    if let Ok(batch) = decode::<TokenBatch>(bytes) {
        let _ = batch.num_tokens();
        let _ = batch.validate();
    }
    if let Ok(chunk) = decode::<EmbedChunk>(bytes) {
        let _ = chunk.vectors();
    }
    if let Ok(EmbedReply::Chunk(chunk)) = decode::<EmbedReply>(bytes) {
        let _ = chunk.vectors();
    }
    let _ = decode::<RerankRequest>(bytes);
    if let Ok(RerankReply::Chunk(chunk)) = decode::<RerankReply>(bytes) {
        let _ = chunk.validate();
    }
});
