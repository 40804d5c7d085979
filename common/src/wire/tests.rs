//! Unit tests of the wire messages.

use super::*;
use crate::subjects::Task;

#[test]
fn request_round_trips_with_named_fields() {
    let request = EmbedRequest {
        id: "r1".into(),
        input: vec!["hello".into(), String::new()],
        input_type: InputType::Query,
        instruction: Some("task".into()),
        dimensions: Some(16),
        truncate: Some(true),
        deadline_ms: None,
        timeout_ms: None,
        ack: false,
        bundle_to: None,
        ..Default::default()
    };
    let bytes = encode(&request).unwrap();
    let as_json: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    assert!(as_json.get("ack").is_none(), "ack: false is not written");
    let with_ack = EmbedRequest {
        ack: true,
        ..request.clone()
    };
    let acked = encode(&with_ack).unwrap();
    assert_eq!(decode::<EmbedRequest>(&acked).unwrap(), with_ack);
    let as_json: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(as_json["input_type"], "query");
    assert_eq!(as_json["input"][0], "hello");
    assert_eq!(decode::<EmbedRequest>(&bytes).unwrap(), request);
}

#[test]
fn timeouts_are_optional_and_written_only_when_set() {
    // An older requester's message (no `timeout_ms`) decodes; it is not written when absent.
    let json = serde_json::json!({"id": "x", "input": ["a"], "deadline_ms": 5});
    let old: EmbedRequest = decode(&rmp_serde::to_vec_named(&json).unwrap()).unwrap();
    assert_eq!((old.timeout_ms, old.deadline_ms), (None, Some(5)));
    let as_json: serde_json::Value = rmp_serde::from_slice(&encode(&old).unwrap()).unwrap();
    assert!(as_json.get("timeout_ms").is_none(), "{as_json}");
    let new = EmbedRequest {
        timeout_ms: Some(1_500),
        ..old
    };
    let as_json: serde_json::Value = rmp_serde::from_slice(&encode(&new).unwrap()).unwrap();
    assert_eq!(as_json["timeout_ms"], 1_500);
    assert_eq!(decode::<EmbedRequest>(&encode(&new).unwrap()).unwrap(), new);

    let json = serde_json::json!({"id": "q", "query": "", "documents": ["a"], "timeout_ms": 0});
    let rerank: RerankRequest = decode(&rmp_serde::to_vec_named(&json).unwrap()).unwrap();
    assert_eq!((rerank.timeout_ms, rerank.deadline_ms), (Some(0), None));
}

#[test]
fn truncation_direction_and_priority_are_optional_lowercase_names() {
    let json = serde_json::json!({"id": "x", "input": ["a"]});
    let old: EmbedRequest = decode(&rmp_serde::to_vec_named(&json).unwrap()).unwrap();
    assert_eq!((old.truncation_direction, old.priority), (None, None));
    let as_json: serde_json::Value = rmp_serde::from_slice(&encode(&old).unwrap()).unwrap();
    assert!(as_json.get("truncation_direction").is_none(), "{as_json}");
    assert!(as_json.get("priority").is_none(), "{as_json}");

    let json = serde_json::json!({
        "id": "x", "input": ["a"], "truncation_direction": "left", "priority": "bulk"
    });
    let new: EmbedRequest = decode(&rmp_serde::to_vec_named(&json).unwrap()).unwrap();
    assert_eq!(new.truncation_direction, Some(TruncationDirection::Left));
    assert_eq!(new.priority, Some(Priority::Bulk));
    assert_eq!(decode::<EmbedRequest>(&encode(&new).unwrap()).unwrap(), new);

    let json =
        serde_json::json!({"id": "q", "query": "", "documents": ["a"], "priority": "interactive"});
    let rerank: RerankRequest = decode(&rmp_serde::to_vec_named(&json).unwrap()).unwrap();
    assert_eq!(rerank.priority, Some(Priority::Interactive));
    let bad = serde_json::json!({"id": "x", "input": ["a"], "priority": "urgent"});
    assert!(decode::<EmbedRequest>(&rmp_serde::to_vec_named(&bad).unwrap()).is_err());
}

#[test]
fn direct_replies_are_maps_naming_the_outcome() {
    for (outcome, name) in [(DirectOutcome::Done, "done"), (DirectOutcome::Busy, "busy")] {
        let bytes = encode(&DirectReply { outcome }).unwrap();
        let as_json: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(as_json, serde_json::json!({"outcome": name}));
        assert_eq!(decode::<DirectReply>(&bytes).unwrap().outcome, outcome);
    }
}

#[test]
fn minimal_request_takes_defaults_and_passage_means_document() {
    let json = serde_json::json!({"id": "x", "input": ["a"], "input_type": "passage"});
    let bytes = rmp_serde::to_vec_named(&json).unwrap();
    let request: EmbedRequest = decode(&bytes).unwrap();
    assert_eq!(request.input_type, InputType::Document);
    assert_eq!(request.dimensions, None);
}

#[test]
fn reply_decodes_as_chunk_or_error() {
    let chunk = EmbedChunk {
        id: "a".into(),
        offset: 0,
        count: 2,
        total: 2,
        dims: 2,
        embeddings: f32_le_bytes([&[1.0f32, 2.0][..], &[3.0, 4.0][..]]),
        tokens: vec![3, 4],
        timings: None,
    };
    let reply: EmbedReply = decode(&encode(&chunk).unwrap()).unwrap();
    let EmbedReply::Chunk(decoded) = reply else {
        panic!("expected a chunk")
    };
    assert_eq!(
        decoded.vectors().unwrap(),
        vec![vec![1.0, 2.0], vec![3.0, 4.0]]
    );

    let error = ErrorReply::new(Some("a".into()), ErrorCode::TooManyTokens, "too long");
    let reply: EmbedReply = decode(&encode(&error).unwrap()).unwrap();
    assert_eq!(reply, EmbedReply::Error(error));

    let queued = QueuedReply {
        id: "a".into(),
        queued: 2,
    };
    let reply: EmbedReply = decode(&encode(&queued).unwrap()).unwrap();
    assert_eq!(reply, EmbedReply::Queued(queued));
}

#[test]
fn rerank_messages_round_trip_and_chunks_are_checked() {
    let json = serde_json::json!({"id": "q", "query": "", "documents": ["a", ""]});
    let request: RerankRequest = decode(&rmp_serde::to_vec_named(&json).unwrap()).unwrap();
    assert_eq!(request.documents, ["a", ""]);
    assert_eq!(request.instruction, None);
    assert_eq!(
        decode::<RerankRequest>(&encode(&request).unwrap()).unwrap(),
        request
    );

    let chunk = RerankChunk {
        id: "q".into(),
        offset: 0,
        count: 2,
        total: 2,
        scores: vec![0.5, 0.25],
        logit_yes: vec![0.0, -1.0],
        logit_no: vec![0.0, 0.1],
        tokens: vec![9, 10],
        timings: None,
    };
    assert!(chunk.validate().is_ok());
    let reply: RerankReply = decode(&encode(&chunk).unwrap()).unwrap();
    assert_eq!(reply, RerankReply::Chunk(chunk.clone()));
    let error = ErrorReply::new(Some("q".into()), ErrorCode::InvalidRequest, "no");
    let reply: RerankReply = decode(&encode(&error).unwrap()).unwrap();
    assert_eq!(reply, RerankReply::Error(error));
    let queued = QueuedReply {
        id: "q".into(),
        queued: 2,
    };
    let reply: RerankReply = decode(&encode(&queued).unwrap()).unwrap();
    assert_eq!(reply, RerankReply::Queued(queued));
    // An older requester's message (no `ack`) asks for no acknowledgement, and a request
    // without one encodes without the field.
    assert!(!request.ack);
    let acked = RerankRequest {
        ack: true,
        ..request.clone()
    };
    assert!(
        decode::<RerankRequest>(&encode(&acked).unwrap())
            .unwrap()
            .ack
    );
    assert!(encode(&acked).unwrap().len() > encode(&request).unwrap().len());
    let short = RerankChunk {
        tokens: vec![9],
        ..chunk
    };
    assert!(short.validate().is_err());

    let kind: WorkerKind = decode(&encode(&WorkerKind::RerankGpu).unwrap()).unwrap();
    assert_eq!(kind, WorkerKind::gpu(Task::Rerank));
    assert_eq!(
        rmp_serde::from_slice::<String>(&encode(&WorkerKind::RerankTokenizer).unwrap()).unwrap(),
        "rerank_tokenizer"
    );
}

#[test]
fn an_unhealthy_worker_is_not_serving_and_older_answers_decode() {
    let json = serde_json::json!({
        "worker_id": "gpu-1", "kind": "gpu", "model": "m", "loaded": true,
        "batches": 0, "sequences": 0, "tokens": 0, "in_flight": 0, "started_ms": 0,
    });
    let status: WorkerStatus = decode(&rmp_serde::to_vec_named(&json).unwrap()).unwrap();
    assert!(status.serving() && status.unhealthy.is_none());
    assert_eq!(
        (status.max_input_tokens, status.max_batch_tokens),
        (None, None)
    );
    let leaving = WorkerStatus {
        unhealthy: Some("the forward pass panicked".into()),
        max_input_tokens: Some(512),
        max_batch_tokens: Some(4096),
        ..status
    };
    assert!(!leaving.serving());
    assert_eq!(
        decode::<WorkerStatus>(&encode(&leaving).unwrap()).unwrap(),
        leaving
    );
}

#[test]
fn chunk_with_wrong_byte_count_is_rejected() {
    let chunk = EmbedChunk {
        id: "a".into(),
        offset: 0,
        count: 2,
        total: 2,
        dims: 2,
        embeddings: vec![0; 12],
        tokens: vec![1, 1],
        timings: None,
    };
    assert!(chunk.vectors().is_err());
}

#[test]
fn batch_validation_checks_lengths() {
    let item = |len| BatchItem::new("r", "_INBOX.1", 0, 1, len);
    let good = TokenBatch {
        token_ids: vec![1, 2, 3],
        items: vec![item(1), item(2)],
    };
    assert!(good.validate().is_ok());
    let short = TokenBatch {
        token_ids: vec![1, 2],
        items: vec![item(1), item(2)],
    };
    assert!(short.validate().is_err());
    let empty_item = TokenBatch {
        token_ids: vec![1],
        items: vec![item(1), item(0)],
    };
    assert!(empty_item.validate().is_err());
}

#[test]
fn worker_kind_names_are_the_status_spelling() {
    for kind in [
        WorkerKind::Tokenizer,
        WorkerKind::Gpu,
        WorkerKind::RerankTokenizer,
        WorkerKind::RerankGpu,
    ] {
        assert_eq!(
            serde_json::to_value(kind).unwrap(),
            serde_json::json!(kind.name())
        );
    }
}
