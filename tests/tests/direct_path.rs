//! The direct path: small batches offered by a tokenizer worker straight to a GPU worker over
//! core NATS, with the JetStream work queue as the fallback. Real nats-server, tokenizer
//! worker and CPU GPU worker, the qwen3-tiny fixture's golden vectors.

mod support;

use std::time::Duration;

use async_nats::jetstream;
use common::wire::{
    self, BatchItem, DirectOutcome, DirectReply, EmbedReply, EmbedRequest, ErrorCode, InputType,
    TokenBatch,
};
use e2e_tests::{NatsServer, tiny_model_dir};
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use support::{
    floats, golden, gpu_config, max_abs_diff, nats_config, start_gpu_configured,
    start_tokenizer_configured, tokenizer_config, wait_for_worker_counts, wait_for_workers,
};

/// One golden document case as a request that asks for an acknowledgement.
fn document_request(case: &Value, id: &str) -> EmbedRequest {
    EmbedRequest {
        id: id.into(),
        input: vec![case["text"].as_str().unwrap().to_string()],
        input_type: InputType::Document,
        instruction: None,
        dimensions: None,
        truncate: None,
        deadline_ms: None,
        timeout_ms: None,
        ack: true,
        bundle_to: None,
        ..Default::default()
    }
}

/// The golden cases that are documents.
fn document_cases(golden: &Value) -> Vec<Value> {
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|case| !case["is_query"].as_bool().unwrap())
        .cloned()
        .collect()
}

/// Sends `case` as an acknowledged request; checks its vector against the golden one and
/// that exactly one acknowledgement came with it.
async fn embed_case_with_ack(client: &async_nats::Client, case: &Value, id: &str) {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let request = document_request(case, id);
    client
        .publish_with_reply(
            "embed.requests",
            inbox,
            wire::encode(&request).unwrap().into(),
        )
        .await
        .unwrap();
    let (mut vector, mut acks) = (None, 0);
    while vector.is_none() || acks == 0 {
        let message = tokio::time::timeout(Duration::from_secs(20), replies.next())
            .await
            .unwrap_or_else(|_| panic!("{id}: no vector and acknowledgement within 20 s"))
            .unwrap();
        match wire::decode::<EmbedReply>(&message.payload).unwrap() {
            EmbedReply::Chunk(chunk) => vector = Some(chunk.vectors().unwrap().remove(0)),
            EmbedReply::Queued(queued) => {
                assert_eq!((queued.id.as_str(), queued.queued), (id, 1));
                acks += 1;
            }
            EmbedReply::Error(error) => panic!("{id}: {error:?}"),
        }
    }
    let diff = max_abs_diff(&vector.unwrap(), &floats(&case["embedding"]));
    assert!(diff < 2e-5, "{id}: diff {diff}");
    // Nothing more: no second vector, no second acknowledgement.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(replies.next().now_or_never().is_none(), "{id}: extra reply");
}

/// Batches the work queue has ever taken (its stream's last sequence number).
async fn queued_batches(client: &async_nats::Client) -> u64 {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream("EMBED_BATCHES").await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_go_straight_to_a_gpu_worker_and_match_golden() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let nats = nats_config(&server);
    let tokenizer = start_tokenizer_configured(tokenizer_config(&model), nats.clone());
    // A generous wait, so a slow pass on a busy test machine (which would make the worker
    // answer `busy`) cannot send a batch to the queue; `load.rs` tests the estimate itself.
    let gpu = start_gpu_configured(
        gpu_worker::config::GpuWorkerConfig {
            direct_max_wait_ms: 60_000,
            ..gpu_config(&model)
        },
        nats,
    );
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&client).await;

    for (n, case) in document_cases(&golden()).iter().enumerate() {
        embed_case_with_ack(&client, case, &format!("direct-{n}")).await;
    }
    assert_eq!(
        queued_batches(&client).await,
        0,
        "every batch was served directly"
    );

    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_direct_path_off_on_either_side_batches_go_through_the_work_queue() {
    let model = tiny_model_dir();
    let case = document_cases(&golden()).remove(0);
    for off_at in ["tokenizer", "gpu"] {
        let server = NatsServer::start();
        let nats = nats_config(&server);
        let mut tokenizer = tokenizer_config(&model);
        let mut gpu = gpu_config(&model);
        match off_at {
            "tokenizer" => tokenizer.direct_max_tokens = 0,
            _ => gpu.direct_max_wait_ms = 0,
        }
        let tokenizer = start_tokenizer_configured(tokenizer, nats.clone());
        let gpu = start_gpu_configured(gpu, nats);
        let client = async_nats::connect(server.url()).await.unwrap();
        wait_for_workers(&client).await;

        embed_case_with_ack(&client, &case, off_at).await;
        assert_eq!(
            queued_batches(&client).await,
            1,
            "direct path off at the {off_at}"
        );

        gpu.stop().await.unwrap();
        tokenizer.stop().await.unwrap();
    }
}

/// The `Nats-Msg-Id` header of a message's `headers`, if any.
fn msg_id(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers
        .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|id| id.as_str().to_string())
}

/// The `Qwen3-Embed-Failures` header of a message's `headers`, if any.
fn failures(headers: &async_nats::HeaderMap) -> Option<String> {
    headers
        .get(common::queue::FAILURES_HEADER)
        .map(|value| value.as_str().to_string())
}

/// A stand-in for GPU workers on the direct subject that answer every offer `busy`, or
/// (`answer: None`) take it and never answer, as a worker that dies holding it. Returns
/// the message ids of the offers it saw.
async fn fake_direct_worker(
    client: async_nats::Client,
    answer: Option<DirectOutcome>,
) -> tokio::task::JoinHandle<Vec<Option<String>>> {
    let mut offers = client
        .queue_subscribe("embed.direct", "gpu-workers".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(offer)) =
            tokio::time::timeout(Duration::from_secs(3), offers.next()).await
        {
            seen.push(msg_id(offer.headers.as_ref()));
            if let (Some(outcome), Some(reply)) = (answer, offer.reply) {
                let bytes = wire::encode(&DirectReply { outcome }).unwrap();
                client.publish(reply, bytes.into()).await.unwrap();
            }
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_no_gpu_worker_serves_directly_goes_to_the_work_queue() {
    let model = tiny_model_dir();
    let case = document_cases(&golden()).remove(0);
    for answer in [Some(DirectOutcome::Busy), None] {
        let server = NatsServer::start();
        let nats = nats_config(&server);
        let client = async_nats::connect(server.url()).await.unwrap();
        let fake = fake_direct_worker(client.clone(), answer).await;
        let mut tokenizer = tokenizer_config(&model);
        tokenizer.direct_timeout_ms = 300;
        let tokenizer = start_tokenizer_configured(tokenizer, nats.clone());
        // The real GPU worker takes no offers, so every offer reaches the stand-in.
        let gpu = start_gpu_configured(
            gpu_worker::config::GpuWorkerConfig {
                direct_max_wait_ms: 0,
                ..gpu_config(&model)
            },
            nats,
        );
        wait_for_workers(&client).await;
        // What is published to the work queue, seen as it is published (the GPU worker
        // takes it out of the stream).
        let mut published = client.subscribe("embed.batches").await.unwrap();
        client.flush().await.unwrap();

        embed_case_with_ack(&client, &case, &format!("{answer:?}")).await;
        assert_eq!(queued_batches(&client).await, 1, "answer {answer:?}");
        let offers = fake.await.unwrap();
        assert_eq!(offers.len(), 1, "the one batch was offered first");
        // Queued under the offer's message id (a GPU worker whose device failed on the
        // offer queues its copy under it too: the stream keeps one). Unanswered, it counts
        // one failed device; refused `busy`, none.
        let queued = published.next().await.expect("the batch as published");
        let headers = queued.headers.expect("a queued batch has headers");
        assert!(offers[0].is_some(), "the offer carries its message id");
        assert_eq!(msg_id(Some(&headers)), offers[0], "answer {answer:?}");
        let expected = answer.is_none().then(|| "1".to_string());
        assert_eq!(failures(&headers), expected, "answer {answer:?}");

        gpu.stop().await.unwrap();
        tokenizer.stop().await.unwrap();
    }
}

/// A batch of one golden case's tokens, answered on `reply_to`.
fn golden_batch(case: &Value, reply_to: &str) -> TokenBatch {
    let token_ids: Vec<u32> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap() as u32)
        .collect();
    TokenBatch {
        items: vec![BatchItem {
            request_id: "offered".into(),
            reply_to: reply_to.into(),
            index: 0,
            total: 1,
            len: token_ids.len() as u32,
            dims: 0,
            deadline_ms: 0,
            budget_ms: 0,
            trace: None,
            bundle_to: None,
            ..Default::default()
        }],
        token_ids,
    }
}

/// Offers `batch` on the direct subject as message `msg_id` (its `Nats-Msg-Id`, as the
/// tokenizer workers send it) and returns the GPU worker's answer.
async fn offer(client: &async_nats::Client, batch: &TokenBatch, msg_id: &str) -> DirectOutcome {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    let answer = client
        .request_with_headers("embed.direct", headers, wire::encode(batch).unwrap().into())
        .await
        .expect("a GPU worker answers the offer");
    wire::decode::<DirectReply>(&answer.payload)
        .unwrap()
        .outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_worker_answers_done_after_the_requests_replies() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let gpu = start_gpu_configured(gpu_config(&model), nats_config(&server));
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_worker_counts(&client, 0, 1).await;
    let case = document_cases(&golden()).remove(0);

    // A good batch: its vector is already here when `done` arrives.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    assert_eq!(
        offer(&client, &golden_batch(&case, &inbox), "ok-1").await,
        DirectOutcome::Done
    );
    let message = replies
        .next()
        .now_or_never()
        .flatten()
        .expect("the vector came before `done`");
    let EmbedReply::Chunk(chunk) = wire::decode::<EmbedReply>(&message.payload).unwrap() else {
        panic!("not a chunk");
    };
    let diff = max_abs_diff(&chunk.vectors().unwrap()[0], &floats(&case["embedding"]));
    assert!(diff < 2e-5, "diff {diff}");

    // An inconsistent batch (lengths that disagree with its tokens): its request gets
    // `invalid_request`, and the offer is done (queueing it would not help).
    let mut broken = golden_batch(&case, &inbox);
    broken.items[0].len += 1;
    assert_eq!(
        offer(&client, &broken, "broken-1").await,
        DirectOutcome::Done
    );
    let message = replies.next().now_or_never().flatten().expect("an error");
    match wire::decode::<EmbedReply>(&message.payload).unwrap() {
        EmbedReply::Error(error) => assert_eq!(error.error.code, ErrorCode::InvalidRequest),
        other => panic!("expected an error, got {other:?}"),
    }

    gpu.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_device_fails_hands_its_offer_back_and_says_why() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let case = document_cases(&golden()).remove(0);
    let poison = golden_batch(&case, "unused").token_ids[0];
    let gpu = start_gpu_configured(
        gpu_worker::config::GpuWorkerConfig {
            direct_max_wait_ms: 60_000,
            fault: Some(gpu_worker::device::FaultAction::Panic),
            fault_token_id: Some(poison),
            ..gpu_config(&model)
        },
        nats_config(&server),
    );
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_worker_counts(&client, 0, 1).await;

    // The pass panics: the worker puts the batch in the work queue itself, marked with
    // one failed device (so a second failure elsewhere gives it up) under the offer's
    // message id (the tokenizer worker queues it under that id too if its wait ran out:
    // the stream keeps one), and answers the offer `done`; its request gets no reply from
    // this worker, not even an error.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let mut published = client.subscribe("embed.batches").await.unwrap();
    client.flush().await.unwrap();
    let offered = golden_batch(&case, &inbox);
    assert_eq!(
        offer(&client, &offered, "tokenizer-batch-7").await,
        DirectOutcome::Done
    );
    let queued = published.next().await.expect("the failed direct batch");
    let headers = queued.headers.expect("a queued batch has headers");
    assert_eq!(failures(&headers).as_deref(), Some("1"), "{headers:?}");
    assert_eq!(msg_id(Some(&headers)).as_deref(), Some("tokenizer-batch-7"));
    let stored: TokenBatch = wire::decode(&queued.payload).unwrap();
    assert_eq!(stored.token_ids, offered.token_ids);
    // While it leaves, the status subject says why, and it takes no more work.
    let statuses = support::worker_statuses(&client).await;
    let status = statuses
        .first()
        .expect("the worker still answers while it leaves");
    assert!(!status.loaded && !status.serving(), "{status:?}");
    let reason = status.unhealthy.clone().unwrap_or_default();
    assert!(reason.contains("panicked"), "{reason}");
    let later = client
        .request(
            "embed.direct",
            wire::encode(&golden_batch(&case, &inbox)).unwrap().into(),
        )
        .await;
    if let Ok(answer) = later {
        let outcome = wire::decode::<DirectReply>(&answer.payload)
            .unwrap()
            .outcome;
        assert_eq!(outcome, DirectOutcome::Busy);
    }
    assert!(
        replies.next().now_or_never().is_none(),
        "a reply from a lost device"
    );

    // `run` returns the reason, so the process exits non-zero.
    let error = gpu
        .stop()
        .await
        .expect_err("an unhealthy worker's run fails");
    let unhealthy = error
        .downcast_ref::<gpu_worker::service::Unhealthy>()
        .unwrap_or_else(|| panic!("not an Unhealthy: {error:#}"));
    assert!(unhealthy.reason.contains("panicked"), "{unhealthy}");
}
