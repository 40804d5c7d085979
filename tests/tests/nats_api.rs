//! The public NATS API end to end: real nats-server, tokenizer worker, CPU GPU worker, and
//! the qwen3-tiny fixture's golden vectors.

mod support;

use std::time::Duration;

use common::wire::{self, EmbedReply, EmbedRequest, ErrorCode, InputType};
use e2e_tests::{NatsServer, tiny_model_dir};
use futures::StreamExt;
use serde_json::Value;
use support::{
    embed_over_nats, floats, golden, max_abs_diff, start_gpu, start_tokenizer, wait_for_workers,
};

fn request(
    id: &str,
    input: Vec<String>,
    input_type: InputType,
    instruction: Option<String>,
) -> EmbedRequest {
    EmbedRequest {
        id: id.into(),
        input,
        input_type,
        instruction,
        dimensions: None,
        truncate: None,
        deadline_ms: None,
        ack: false,
    }
}

/// One golden case as a request of its own.
fn case_request(case: &Value, id: &str) -> EmbedRequest {
    let is_query = case["is_query"].as_bool().unwrap();
    request(
        id,
        vec![case["text"].as_str().unwrap().to_string()],
        if is_query {
            InputType::Query
        } else {
            InputType::Document
        },
        case["instruction"].as_str().map(String::from),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_api_matches_golden_and_survives_concurrency_and_bad_input() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer(&server, &model);
    let gpu = start_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&client).await;
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();

    // 1. Every golden case, one request each: vectors within 2e-5, token counts exact.
    for case in cases {
        let (vectors, tokens) =
            embed_over_nats(&client, &case_request(case, case["id"].as_str().unwrap()))
                .await
                .unwrap_or_else(|e| panic!("case {}: {e:?}", case["id"]));
        let diff = max_abs_diff(&vectors[0], &floats(&case["embedding"]));
        assert!(diff < 2e-5, "case {}: diff {diff}", case["id"]);
        assert_eq!(tokens[0] as u64, case["num_tokens"].as_u64().unwrap());
    }

    // 2. Matryoshka dimensions through the API.
    for example in golden["mrl"].as_array().unwrap() {
        let case = cases.iter().find(|c| c["id"] == example["id"]).unwrap();
        let mut req = case_request(case, "mrl");
        req.dimensions = Some(example["dim"].as_u64().unwrap() as u32);
        let (vectors, _) = embed_over_nats(&client, &req).await.unwrap();
        assert!(max_abs_diff(&vectors[0], &floats(&example["embedding"])) < 2e-5);
    }

    // 3. 400 concurrent requests of mixed cases and sizes: batching changes no vector.
    let mut tasks = Vec::new();
    for n in 0..400usize {
        let picked: Vec<&Value> = (0..1 + n % 4)
            .map(|k| &cases[(n * 7 + k * 3) % cases.len()])
            .collect();
        let documents: Vec<&Value> = picked
            .iter()
            .copied()
            .filter(|c| !c["is_query"].as_bool().unwrap())
            .collect();
        if documents.is_empty() {
            continue;
        }
        let req = request(
            &format!("c{n}"),
            documents
                .iter()
                .map(|c| c["text"].as_str().unwrap().to_string())
                .collect(),
            InputType::Document,
            None,
        );
        let wants: Vec<Vec<f32>> = documents.iter().map(|c| floats(&c["embedding"])).collect();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (vectors, _) = embed_over_nats(&client, &req)
                .await
                .expect("concurrent request succeeds");
            for (got, want) in vectors.iter().zip(&wants) {
                let diff = max_abs_diff(got, want);
                assert!(diff < 2e-5, "request {}: diff {diff}", req.id);
            }
        }));
    }
    assert!(tasks.len() > 300);
    for task in tasks {
        task.await.unwrap();
    }

    // 4. Bad input: a clear error each, and the service still correct afterwards.
    let bad = |mut r: EmbedRequest, f: fn(&mut EmbedRequest)| {
        f(&mut r);
        r
    };
    let base = request("bad", vec!["hello".into()], InputType::Document, None);
    for (req, code) in [
        (
            bad(base.clone(), |r| r.input.clear()),
            ErrorCode::InvalidRequest,
        ),
        (
            bad(base.clone(), |r| r.dimensions = Some(0)),
            ErrorCode::InvalidRequest,
        ),
        (
            bad(base.clone(), |r| r.dimensions = Some(33)),
            ErrorCode::InvalidRequest,
        ),
        (
            bad(base.clone(), |r| r.deadline_ms = Some(1)),
            ErrorCode::DeadlineExceeded,
        ),
        // Further away than the work queue keeps a batch ([queue] max_age_s, 300 s).
        (
            bad(base.clone(), |r| {
                r.deadline_ms = Some(wire::now_ms() + 3_600_000)
            }),
            ErrorCode::InvalidRequest,
        ),
        (
            bad(base.clone(), |r| r.input = vec!["word ".repeat(9000)]),
            ErrorCode::TooManyTokens,
        ),
    ] {
        let error = embed_over_nats(&client, &req).await.expect_err("must fail");
        assert_eq!(error.error.code, code, "{req:?}: {}", error.error.message);
        assert_eq!(error.id.as_deref(), Some("bad"));
    }
    let mut long = bad(base.clone(), |r| r.input = vec!["word ".repeat(9000)]);
    long.truncate = Some(true);
    let (_, tokens) = embed_over_nats(&client, &long)
        .await
        .expect("truncated input embeds");
    assert_eq!(tokens[0], 8192);

    // Undecodable bytes: an error map without an id.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("embed.requests", inbox, b"\xc1not msgpack".to_vec().into())
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .unwrap()
        .unwrap();
    match wire::decode::<EmbedReply>(&reply.payload).unwrap() {
        EmbedReply::Error(e) => assert_eq!(e.error.code, ErrorCode::InvalidRequest),
        other => panic!("expected an error, got {other:?}"),
    }

    let case = &cases[0];
    let (vectors, _) = embed_over_nats(&client, &case_request(case, "after"))
        .await
        .unwrap();
    assert!(max_abs_diff(&vectors[0], &floats(&case["embedding"])) < 2e-5);

    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}

/// Every message on `inbox` until `patience` passes without one.
async fn drain_replies(
    replies: &mut async_nats::Subscriber,
    patience: Duration,
) -> Vec<EmbedReply> {
    let mut got = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(patience, replies.next()).await {
        got.push(wire::decode::<EmbedReply>(&message.payload).expect("a reply decodes"));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_follows_queued_inputs_and_never_an_error() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer(&server, &model);
    let gpu = start_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&client).await;

    let texts: Vec<String> = ["one", "two", "three"].map(String::from).to_vec();
    for (ack, input, expect_queued) in [
        (true, texts.clone(), 1),
        (false, texts.clone(), 0),
        (true, Vec::new(), 0),
    ] {
        let mut req = request("acked", input.clone(), InputType::Document, None);
        req.ack = ack;
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply("embed.requests", inbox, wire::encode(&req).unwrap().into())
            .await
            .unwrap();
        let got = drain_replies(&mut replies, Duration::from_secs(2)).await;
        let queued: Vec<_> = got
            .iter()
            .filter_map(|r| match r {
                EmbedReply::Queued(q) => Some(q),
                _ => None,
            })
            .collect();
        assert_eq!(
            queued.len(),
            expect_queued,
            "ack {ack}, {} inputs: {got:?}",
            input.len()
        );
        for q in queued {
            assert_eq!(q.id, "acked");
            assert_eq!(q.queued as usize, input.len());
        }
        let items: u32 = got
            .iter()
            .map(|r| match r {
                EmbedReply::Chunk(c) => c.count,
                _ => 0,
            })
            .sum();
        let errors = got
            .iter()
            .filter(|r| matches!(r, EmbedReply::Error(_)))
            .count();
        if input.is_empty() {
            assert_eq!((items, errors), (0, 1), "{got:?}");
        } else {
            assert_eq!((items as usize, errors), (input.len(), 0), "{got:?}");
        }
    }

    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}
