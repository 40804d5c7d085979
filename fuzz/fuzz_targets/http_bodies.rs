//! Feeds arbitrary bytes to every HTTP request body decoder of the gateway
//! (`gateway::http::types::decode` for each route's body type), with the default limits and
//! with tiny ones (so the count and length refusals are reached). Each must answer `Ok` or an
//! `ApiError`; any panic, overflow or stack overflow is a bug. A decoded request must hold no
//! more than the limits allow.
#![no_main]

use gateway::http::types::{
    EmbeddingsRequest, Limits, RerankRequest, SeedRequest, TeiRerankRequest, decode,
};
use libfuzzer_sys::fuzz_target;

fn within(texts: &[String], limits: Limits) -> bool {
    texts.len() <= limits.max_inputs && texts.iter().all(|t| t.chars().count() <= limits.max_chars)
}

fuzz_target!(|bytes: &[u8]| {
    let tiny = Limits {
        max_inputs: 2,
        max_chars: 4,
    };
    for limits in [Limits::default(), tiny] {
        if let Ok(request) = decode::<EmbeddingsRequest>(bytes, limits) {
            assert!(within(&request.input, limits));
        }
        if let Ok(request) = decode::<SeedRequest>(bytes, limits) {
            assert!(within(&request.input, limits));
        }
        if let Ok(request) = decode::<RerankRequest>(bytes, limits) {
            assert!(within(&request.documents, limits));
        }
        if let Ok(request) = decode::<TeiRerankRequest>(bytes, limits) {
            assert!(within(&request.texts, limits));
        }
    }
});
