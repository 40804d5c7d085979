//! The public NATS API end to end: real nats-server, tokenizer worker, CPU GPU worker, and
//! the qwen3-tiny fixture's golden vectors; and the work queue storing a batch published
//! again under its `Nats-Msg-Id` once.

mod support;

use std::time::{Duration, Instant};

use common::queue::{QueueConfig, batch_stream};
use common::subjects::Task;
use common::wire::{
    self, BatchItem, EmbedChunk, EmbedReply, EmbedRequest, ErrorCode, InputType, Priority,
    ReplyBundle, TokenBatch,
};
use e2e_tests::{NatsServer, tiny_model_dir};
use futures::StreamExt;
use serde_json::Value;
use support::{
    embed_over_nats, floats, golden, max_abs_diff, nats_config, start_gpu, start_tokenizer,
    wait_for_worker_counts, wait_for_workers,
};
use tokenizer_worker::batcher::ReadyBatch;
use tokenizer_worker::publish::{BatchIds, WorkQueue, publish_batch};

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
        timeout_ms: None,
        ack: false,
        bundle_to: None,
        ..Default::default()
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
        // A budget used up: exceeded, whatever the absolute deadline beside it says.
        (
            bad(base.clone(), |r| {
                r.timeout_ms = Some(0);
                r.deadline_ms = Some(wire::now_ms() + 60_000);
            }),
            ErrorCode::DeadlineExceeded,
        ),
        // A budget longer than the work queue keeps a batch.
        (
            bad(base.clone(), |r| r.timeout_ms = Some(3_600_000)),
            ErrorCode::InvalidRequest,
        ),
        (
            bad(base.clone(), |r| r.input = vec!["word ".repeat(33_000)]),
            ErrorCode::TooManyTokens,
        ),
        // Chunks sent there would be lost: refused before any work.
        (
            bad(base.clone(), |r| r.bundle_to = Some("my bundle.>".into())),
            ErrorCode::InvalidRequest,
        ),
    ] {
        let error = embed_over_nats(&client, &req).await.expect_err("must fail");
        assert_eq!(error.error.code, code, "{req:?}: {}", error.error.message);
        assert_eq!(error.id.as_deref(), Some("bad"));
        if code == ErrorCode::InvalidRequest && req.timeout_ms.is_some() {
            let message = &error.error.message;
            assert!(message.contains("max_age_s"), "{message}");
        }
    }
    // A request that gives only a budget is served.
    let timed = bad(base.clone(), |r| r.timeout_ms = Some(20_000));
    embed_over_nats(&client, &timed)
        .await
        .expect("a request with a budget and no absolute deadline");
    let mut long = bad(base.clone(), |r| r.input = vec!["word ".repeat(33_000)]);
    long.truncate = Some(true);
    let (_, tokens) = embed_over_nats(&client, &long)
        .await
        .expect("truncated input embeds");
    assert_eq!(tokens[0], 32768);

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

/// Every reply on `replies` until `patience` passes without one.
async fn drain_replies(
    replies: &mut async_nats::Subscriber,
    patience: Duration,
) -> Vec<EmbedReply> {
    let got = drain_messages(replies, patience).await;
    got.into_iter().map(|(_, reply)| reply).collect()
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

/// Requests that name a `bundle_to` subject get their chunks and acknowledgements there,
/// packed together, and their errors on their own reply subjects. The requests are queued
/// before any GPU worker runs, so one worker pulls them all into one pass and answers them
/// in one bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_replies_carry_every_chunk_and_acknowledgement() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_worker_counts(&client, 1, 0).await;
    let golden = golden();
    let documents: Vec<&Value> = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["is_query"].as_bool().unwrap())
        .collect();

    let inbox = client.new_inbox();
    let bundle_to = format!("{inbox}.bundle");
    let mut own_subjects = client.subscribe(format!("{inbox}.own.>")).await.unwrap();
    let mut bundles = client.subscribe(bundle_to.clone()).await.unwrap();
    let requests = 12;
    let mut published = Vec::new();
    for n in 0..requests {
        let texts: Vec<String> = (0..1 + n % 3)
            .map(|k| {
                documents[(n + k) % documents.len()]["text"]
                    .as_str()
                    .unwrap()
                    .into()
            })
            .collect();
        let mut req = request(&format!("b-{n}"), texts, InputType::Document, None);
        req.ack = true;
        // One lane, so every queued batch may join one pass: without a priority, a request
        // holding the long golden document would go to the bulk lane and run apart.
        req.priority = Some(Priority::Interactive);
        published.push((req, format!("{inbox}.own.{n}")));
    }
    // One bad request: its error comes on its own subject, never in a bundle.
    let mut bad = request("bad", vec!["x".into()], InputType::Document, None);
    bad.dimensions = Some(0);
    published.push((bad, format!("{inbox}.own.bad")));
    for (mut req, reply_to) in published {
        req.bundle_to = Some(bundle_to.clone());
        let payload = wire::encode(&req).unwrap().into();
        client
            .publish_with_reply("embed.requests", reply_to, payload)
            .await
            .unwrap();
    }

    let mut acknowledged = std::collections::BTreeMap::new();
    let wait = Duration::from_secs(10);
    while acknowledged.len() < requests {
        let message = tokio::time::timeout(wait, bundles.next())
            .await
            .expect("acknowledgements within 10 s")
            .unwrap();
        let bundle = wire::decode::<ReplyBundle>(&message.payload).expect("a bundle decodes");
        for reply in bundle.replies {
            match reply {
                EmbedReply::Queued(q) => assert!(acknowledged.insert(q.id, q.queued).is_none()),
                other => panic!("only acknowledgements before a GPU worker runs: {other:?}"),
            }
        }
    }

    let gpu = start_gpu(&server, &model);
    let message = tokio::time::timeout(wait, bundles.next())
        .await
        .expect("vectors within 10 s")
        .unwrap();
    let chunks: Vec<EmbedChunk> = wire::decode::<ReplyBundle>(&message.payload)
        .expect("a bundle decodes")
        .replies
        .into_iter()
        .map(|reply| match reply {
            EmbedReply::Chunk(chunk) => chunk,
            other => panic!("only chunks after the acknowledgements: {other:?}"),
        })
        .collect();
    assert_eq!(
        chunks.len(),
        requests,
        "one pass, one bundle, a chunk per request"
    );
    for chunk in &chunks {
        let n: usize = chunk.id.strip_prefix("b-").unwrap().parse().unwrap();
        assert_eq!(chunk.total as usize, 1 + n % 3);
        assert_eq!(acknowledged[&chunk.id], chunk.total);
        for (k, got) in chunk.vectors().unwrap().iter().enumerate() {
            let want =
                floats(&documents[(n + chunk.offset as usize + k) % documents.len()]["embedding"]);
            let diff = max_abs_diff(got, &want);
            assert!(diff < 2e-5, "{} item {k}: diff {diff}", chunk.id);
        }
    }

    let own: Vec<(String, EmbedReply)> =
        drain_messages(&mut own_subjects, Duration::from_secs(1)).await;
    assert_eq!(own.len(), 1, "only the error travels alone: {own:?}");
    assert_eq!(own[0].0, format!("{inbox}.own.bad"));
    assert!(matches!(&own[0].1, EmbedReply::Error(e) if e.error.code == ErrorCode::InvalidRequest));

    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}

/// Every message (subject and reply) on `subscriber` until `patience` passes without one.
async fn drain_messages(
    subscriber: &mut async_nats::Subscriber,
    patience: Duration,
) -> Vec<(String, EmbedReply)> {
    let mut got = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(patience, subscriber.next()).await {
        let reply = wire::decode::<EmbedReply>(&message.payload).expect("a reply decodes");
        got.push((message.subject.to_string(), reply));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_published_again_under_its_id_is_stored_once() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let subjects = nats_config(&server).subjects();
    let queue_config = QueueConfig::default();
    // No GPU worker pulls: every stored batch stays in the stream, to be counted.
    let stream = batch_stream(&js, &subjects, &queue_config).await.unwrap();
    let queue = WorkQueue {
        js,
        client: client.clone(),
        subjects,
        task: Task::Embed,
        queue: queue_config,
    };
    let batch = ReadyBatch {
        batch: TokenBatch {
            token_ids: vec![11, 12, 151643],
            items: vec![BatchItem {
                request_id: "r".into(),
                reply_to: client.new_inbox(),
                index: 0,
                total: 1,
                len: 3,
                dims: 0,
                deadline_ms: 0,
                budget_ms: 0,
                trace: None,
                bundle_to: None,
                ..Default::default()
            }],
        },
        deadlines: vec![None],
    };
    let mut ids = BatchIds::new(&client);
    let first_id = ids.next_id();
    let second_id = ids.next_id();
    assert_ne!(first_id, second_id, "every batch gets its own id");
    assert_ne!(
        first_id,
        BatchIds::new(&client).next_id(),
        "ids are unique to the worker, not only to the count"
    );

    // The same batch published twice under one id (a retry whose first confirmation was
    // lost): both publishes are confirmed, one message is stored.
    for _ in 0..2 {
        let published = publish_batch(queue.clone(), batch.clone(), first_id.clone()).await;
        assert!(published.queued, "the work queue confirmed the publish");
    }
    let mut info = stream.clone();
    let state = info.info().await.unwrap().clone();
    assert_eq!(state.state.messages, 1);
    // The server's default window (2 minutes, or `max_age` when shorter) covers a publish's
    // retries unless the server is unreachable for minutes; a batch stored twice then is
    // only computed twice (requesters keep one vector per offset).
    assert!(
        state.config.duplicate_window >= Duration::from_secs(60),
        "duplicate window {:?}",
        state.config.duplicate_window
    );
    let stored = info
        .get_last_raw_message_by_subject(&queue.subjects.batches())
        .await
        .unwrap();
    let header = stored
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|value| value.as_str().to_string());
    assert_eq!(header.as_deref(), Some(first_id.as_str()));

    // Another batch id is another message.
    let published = publish_batch(queue.clone(), batch.clone(), second_id).await;
    assert!(published.queued);
    assert_eq!(info.info().await.unwrap().state.messages, 2);

    // A batch whose request has a deadline is stored with what was left of it at the
    // publish (`budget_ms`), its absolute `deadline_ms` as it was.
    let published_at = Instant::now();
    let due = ReadyBatch {
        deadlines: vec![Some(published_at + Duration::from_secs(5))],
        ..batch
    };
    let published = publish_batch(queue.clone(), due, ids.next_id()).await;
    assert!(published.queued);
    let stored = info
        .get_last_raw_message_by_subject(&queue.subjects.batches())
        .await
        .unwrap();
    let stored: TokenBatch = wire::decode(&stored.payload).unwrap();
    let item = &stored.items[0];
    assert!((1..=5_000).contains(&item.budget_ms), "{item:?}");
    assert!(
        u128::from(item.budget_ms) + published_at.elapsed().as_millis() >= 5_000,
        "the budget counts down from the publish only: {item:?}"
    );
    assert_eq!(item.deadline_ms, 0);
}
