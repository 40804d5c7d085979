//! Reply routing the workers can trust, with real processes on a real nats-server: a request
//! on `{requests}.from.{identity}` is answered only under `_INBOX.{identity}.` (a reply
//! subject elsewhere gets nothing, and the tokenizer worker logs it; a `bundle_to` elsewhere
//! gets `invalid_request`); one on the bare subject only under `reply_prefixes` (`_INBOX.`);
//! ids, subjects and instructions over their caps are refused by name; batches are cut by
//! their encoded size, so requests with the longest ids and subjects the caps allow are all
//! served by a server with a small `max_payload`; a gateway, and `embed-jsonl`, with an
//! identity request on their own subjects. Two identities, `alice` and `bob`, share one
//! connection (the rule is the workers'; no server permissions are needed to test it), so
//! every message the worker publishes reaches the test in order.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::Subscriber;
use common::wire::limits::{MAX_ID_BYTES, MAX_INSTRUCTION_CHARS, MAX_SUBJECT_BYTES};
use common::wire::{
    self, EmbedReply, EmbedRequest, ErrorCode, ErrorReply, InputType, ReplyBundle, RerankReply,
    RerankRequest, WorkerKind,
};
use e2e_tests::process::{Pipeline, Worker};
use e2e_tests::{NatsServer, tiny_model_dir, tiny_reranker_dir};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{
    floats, gateway_config, golden, golden_rerank, max_abs_diff, nats_config, next_reply,
    start_gpu, start_rerank_gpu, start_tokenizer, start_tokenizer_configured, tokenizer_config,
    wait_for_kinds, wait_for_workers, wait_healthy,
};

/// What the tokenizer worker logs for a request it drops unanswered.
const DROPPED_LINE: &str = "request dropped unanswered";

/// How long a subject that must stay silent is watched once the worker is known to be past
/// the request (a later request of the same connection was answered).
const SILENCE: Duration = Duration::from_millis(300);

fn embed_request(id: &str, text: &str) -> EmbedRequest {
    EmbedRequest {
        id: id.into(),
        input: vec![text.into()],
        input_type: InputType::Document,
        instruction: None,
        dimensions: None,
        truncate: None,
        deadline_ms: None,
        timeout_ms: Some(20_000),
        ack: false,
        bundle_to: None,
        ..Default::default()
    }
}

/// The first document case of the embedding fixture's golden file: its text and vector.
fn golden_document() -> (String, Vec<f32>) {
    let golden = golden();
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["is_query"] == false)
        .expect("a document case")
        .clone();
    (
        case["text"].as_str().unwrap().to_string(),
        floats(&case["embedding"]),
    )
}

/// Publishes `request` on `subject` with reply subject `reply`.
async fn publish<T: serde::Serialize>(
    client: &async_nats::Client,
    subject: &str,
    reply: &str,
    request: &T,
) {
    let payload = wire::encode(request).expect("encodes");
    client
        .publish_with_reply(subject.to_string(), reply.to_string(), payload.into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
}

/// The next reply on `replies` as an embedding reply.
async fn next_embed_reply(replies: &mut Subscriber) -> EmbedReply {
    wire::decode(&next_reply(replies).await.payload).expect("reply decodes")
}

/// The one vector of a one-input request, read from `replies`; panics on an error.
async fn one_vector(replies: &mut Subscriber) -> Vec<f32> {
    match next_embed_reply(replies).await {
        EmbedReply::Chunk(chunk) => chunk.vectors().expect("consistent").remove(0),
        other => panic!("expected a chunk, got {other:?}"),
    }
}

/// The error reply on `replies`; panics on anything else.
async fn error_reply(replies: &mut Subscriber) -> ErrorReply {
    match next_embed_reply(replies).await {
        EmbedReply::Error(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Asserts that `error` is `invalid_request` and its message holds every one of `parts`.
fn assert_invalid(error: &ErrorReply, parts: &[&str]) {
    assert_eq!(error.error.code, ErrorCode::InvalidRequest, "{error:?}");
    for part in parts {
        assert!(error.error.message.contains(part), "{part:?} in {error:?}");
    }
}

/// Asserts that nothing arrived on any of `silent` (the caller made sure the worker is past
/// the requests that could have sent something there).
async fn assert_silent(silent: &mut [(&str, Subscriber)]) {
    for (what, subscription) in silent.iter_mut() {
        let got = tokio::time::timeout(SILENCE, subscription.next()).await;
        if let Ok(Some(message)) = got {
            panic!("{what} received a message on {}", message.subject);
        }
    }
}

/// Waits until the worker's log holds `needle`s, all on one line; returns the line.
async fn logged_line(worker: &Worker, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = worker.log();
        if let Some(line) = log
            .lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
        {
            return line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never logged {needles:?}",
            worker.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `head` padded with `x` to exactly `len` bytes.
fn padded(head: &str, len: usize) -> String {
    format!("{head}{}", "x".repeat(len - head.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_replies_go_only_where_the_request_subject_allows() {
    let server = NatsServer::start();
    let tokenizer = Pipeline::new(server.url(), &[]).tokenizer("tokenizer");
    let _gpu = start_gpu(&server, &tiny_model_dir());
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&client).await;
    let (text, want) = golden_document();
    let bob = client.subscribe("_INBOX.bob.>").await.unwrap();
    let gateway = client.subscribe("_INBOX.gateway.>").await.unwrap();
    let evil = client.subscribe("evil.>").await.unwrap();
    let mut alice = client.subscribe("_INBOX.alice.>").await.unwrap();

    // 1. Alice aims her request's replies at Bob's inbox: nobody is answered.
    let from_alice = "embed.requests.from.alice";
    publish(
        &client,
        from_alice,
        "_INBOX.bob.x",
        &embed_request("forged", &text),
    )
    .await;

    // 2. Her own reply subject, but the gateway's bundle subject: refused, on her inbox.
    let request = EmbedRequest {
        bundle_to: Some("_INBOX.gateway.x.bundle".into()),
        ..embed_request("bundle-elsewhere", &text)
    };
    publish(&client, from_alice, "_INBOX.alice.r2", &request).await;
    let error = error_reply(&mut alice).await;
    assert_eq!(error.id.as_deref(), Some("bundle-elsewhere"));
    assert_invalid(&error, &["`bundle_to`", "`_INBOX.alice.`"]);

    // 3. Her own inbox for both: the golden vector, bundled where she asked.
    let request = EmbedRequest {
        bundle_to: Some("_INBOX.alice.bundle".into()),
        ..embed_request("own-inbox", &text)
    };
    publish(&client, from_alice, "_INBOX.alice.r3", &request).await;
    let message = next_reply(&mut alice).await;
    assert_eq!(message.subject.as_str(), "_INBOX.alice.bundle");
    let bundle: ReplyBundle = wire::decode(&message.payload).unwrap();
    let EmbedReply::Chunk(chunk) = &bundle.replies[0] else {
        panic!("expected a chunk: {bundle:?}");
    };
    assert_eq!(chunk.id, "own-inbox");
    assert!(max_abs_diff(&chunk.vectors().unwrap()[0], &want) < 2e-5);

    // 4. The bare subject: any inbox is served, any other subject is not.
    let mut anything = client.subscribe("_INBOX.anything").await.unwrap();
    publish(
        &client,
        "embed.requests",
        "_INBOX.anything",
        &embed_request("bare", &text),
    )
    .await;
    assert!(max_abs_diff(&one_vector(&mut anything).await, &want) < 2e-5);
    publish(
        &client,
        "embed.requests",
        "evil.subject",
        &embed_request("evil", &text),
    )
    .await;

    // 5. Fields over their caps: refused, naming the field, its length and the cap.
    let long_id = "i".repeat(MAX_ID_BYTES + 1);
    publish(
        &client,
        from_alice,
        "_INBOX.alice.r5",
        &embed_request(&long_id, &text),
    )
    .await;
    let error = error_reply(&mut alice).await;
    assert_eq!(error.id, None, "an id over its cap is not echoed");
    assert_invalid(&error, &["`id` is 257 bytes", "at most 256"]);
    let request = EmbedRequest {
        bundle_to: Some(padded("_INBOX.alice.", MAX_SUBJECT_BYTES + 1)),
        ..embed_request("long-bundle", &text)
    };
    publish(&client, from_alice, "_INBOX.alice.r6", &request).await;
    let error = error_reply(&mut alice).await;
    assert_eq!(error.id.as_deref(), Some("long-bundle"));
    assert_invalid(&error, &["`bundle_to` is 257 bytes", "at most 256"]);
    let request = EmbedRequest {
        input_type: InputType::Query,
        instruction: Some("t".repeat(MAX_INSTRUCTION_CHARS + 1)),
        ..embed_request("long-instruction", &text)
    };
    publish(&client, from_alice, "_INBOX.alice.r7", &request).await;
    let error = error_reply(&mut alice).await;
    assert_eq!(error.id.as_deref(), Some("long-instruction"));
    assert_invalid(
        &error,
        &["`instruction` is 4097 characters", "at most 4096"],
    );
    // A reply subject over its cap, even in her inbox, is not answered.
    let long_reply = padded("_INBOX.alice.", MAX_SUBJECT_BYTES + 1);
    publish(
        &client,
        from_alice,
        &long_reply,
        &embed_request("long-reply", &text),
    )
    .await;

    // The worker has read everything above once this later request is answered; nothing
    // went to Bob, the gateway, a foreign subject, or Alice's over-long reply subject.
    publish(
        &client,
        from_alice,
        "_INBOX.alice.last",
        &embed_request("last", &text),
    )
    .await;
    let message = next_reply(&mut alice).await;
    assert_eq!(message.subject.as_str(), "_INBOX.alice.last");
    assert_silent(&mut [
        ("bob", bob),
        ("the gateway", gateway),
        ("evil", evil),
        ("alice", alice),
    ])
    .await;
    // The first drop is logged with who sent it and where it aimed (the next ones within
    // the log interval are only counted).
    let line = logged_line(&tokenizer, &[DROPPED_LINE, "alice", "_INBOX.bob.x"]).await;
    assert!(line.contains("forged"), "{line}");
    assert!(line.contains("WARN"), "{line}");
}

fn rerank_request(
    id: &str,
    query: &str,
    document: &str,
    instruction: Option<&str>,
) -> RerankRequest {
    RerankRequest {
        id: id.into(),
        query: query.into(),
        documents: vec![document.into()],
        instruction: instruction.map(String::from),
        truncate: None,
        deadline_ms: None,
        timeout_ms: Some(20_000),
        ack: false,
        ..Default::default()
    }
}

/// The next reply on `replies` as a rerank reply.
async fn next_rerank_reply(replies: &mut Subscriber) -> RerankReply {
    wire::decode(&next_reply(replies).await.payload).expect("reply decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_replies_follow_the_same_rule() {
    let server = NatsServer::start();
    let model = tiny_reranker_dir();
    let args: Vec<String> = [
        "--nats-url",
        &server.url(),
        "--task",
        "rerank",
        "--model-dir",
        &model.display().to_string(),
        "--model-name",
        "qwen3-tiny-reranker",
        "--threads",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let tokenizer = Worker::spawn("rerank-tokenizer", "tokenizer-worker", &args, &[]);
    let _gpu = start_rerank_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_kinds(
        &client,
        &[(WorkerKind::RerankTokenizer, 1), (WorkerKind::RerankGpu, 1)],
    )
    .await;
    let golden = golden_rerank();
    let case = &golden["cases"][0];
    let field = |name: &str| case[name].as_str().unwrap().to_string();
    let (query, document) = (field("query"), field("document"));
    let instruction = case["instruction"].as_str();
    let bob = client.subscribe("_INBOX.bob.>").await.unwrap();
    let evil = client.subscribe("evil.>").await.unwrap();
    let mut alice = client.subscribe("_INBOX.alice.>").await.unwrap();
    let from_alice = "embed.rerank.from.alice";

    // Aimed at Bob's inbox, or at no inbox on the bare subject: not answered.
    let forged = rerank_request("forged-rerank", &query, &document, instruction);
    publish(&client, from_alice, "_INBOX.bob.y", &forged).await;
    let evil_request = rerank_request("evil", &query, &document, instruction);
    publish(&client, "embed.rerank", "evil.subject", &evil_request).await;

    // Fields over their caps: refused by name on her own inbox.
    let long_instruction = "t".repeat(MAX_INSTRUCTION_CHARS + 1);
    let request = rerank_request("long", &query, &document, Some(&long_instruction));
    publish(&client, from_alice, "_INBOX.alice.r1", &request).await;
    let RerankReply::Error(error) = next_rerank_reply(&mut alice).await else {
        panic!("expected an error");
    };
    assert_eq!(error.id.as_deref(), Some("long"));
    assert_invalid(&error, &["`instruction` is 4097 characters"]);
    let long_id = "i".repeat(MAX_ID_BYTES + 1);
    let request = rerank_request(&long_id, &query, &document, instruction);
    publish(&client, from_alice, "_INBOX.alice.r2", &request).await;
    let RerankReply::Error(error) = next_rerank_reply(&mut alice).await else {
        panic!("expected an error");
    };
    assert_invalid(&error, &["`id` is 257 bytes"]);

    // Her own inbox: the golden scores.
    let request = rerank_request("own", &query, &document, instruction);
    publish(&client, from_alice, "_INBOX.alice.r3", &request).await;
    let RerankReply::Chunk(chunk) = next_rerank_reply(&mut alice).await else {
        panic!("expected scores");
    };
    assert_eq!(chunk.id, "own");
    let want = case["logit_yes"].as_f64().unwrap() as f32;
    assert!((chunk.logit_yes[0] - want).abs() < 1e-4, "{chunk:?}");
    assert!((chunk.scores[0] - case["score"].as_f64().unwrap() as f32).abs() < 1e-5);

    assert_silent(&mut [("bob", bob), ("evil", evil), ("alice", alice)]).await;
    logged_line(&tokenizer, &[DROPPED_LINE, "alice", "_INBOX.bob.y"]).await;
}

/// A nats-server whose `max_payload` is 64 KiB (a configuration file: it has no flag).
fn server_with_small_max_payload() -> (NatsServer, std::path::PathBuf) {
    let config = std::env::temp_dir().join(format!(
        "nats-small-payload-{}-{}.conf",
        std::process::id(),
        e2e_tests::free_port()
    ));
    std::fs::write(&config, "max_payload: 65536\n").expect("write the server's configuration");
    let server = NatsServer::start_with_args(&["-c", config.to_str().unwrap()]);
    (server, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_cut_by_size_under_a_small_max_payload() {
    let (server, config_file) = server_with_small_max_payload();
    let model = tiny_model_dir();
    // Sequences wait up to half a second for company: the requests below pile up in one
    // batcher, whose uncut batch would be several times the server's limit.
    // One sequence of `max_length` tokens must fit the 64 KiB payload (the worker refuses to
    // start otherwise): 8,192 tokens at most 5 bytes each do, the model's 32,768 do not.
    let config = tokenizer_worker::config::TokenizerWorkerConfig {
        max_wait_ms: 500,
        max_length: 8192,
        ..tokenizer_config(&model)
    };
    let _tokenizer = start_tokenizer_configured(config, nats_config(&server));
    let _gpu = start_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&client).await;
    assert_eq!(client.server_info().max_payload, 65_536);
    let (text, want) = golden_document();
    let mut alice = client.subscribe("_INBOX.alice.>").await.unwrap();

    // Each request at the caps: a 256-byte id, reply subject and bundle subject (one
    // bundle subject for all, as a gateway names), about a kilobyte per batch item.
    let requests = 200;
    let bundle_to = padded("_INBOX.alice.bundle.", MAX_SUBJECT_BYTES);
    let id_of = |n: usize| padded(&format!("{n}-"), MAX_ID_BYTES);
    for n in 0..requests {
        let request = EmbedRequest {
            bundle_to: Some(bundle_to.clone()),
            ..embed_request(&id_of(n), &text)
        };
        let reply = padded(&format!("_INBOX.alice.r{n}."), MAX_SUBJECT_BYTES);
        let payload = wire::encode(&request).unwrap();
        client
            .publish_with_reply("embed.requests.from.alice", reply, payload.into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    while vectors.len() < requests {
        let message = next_reply(&mut alice).await;
        let replies = if message.subject.as_str() == bundle_to {
            wire::decode::<ReplyBundle>(&message.payload)
                .unwrap()
                .replies
        } else {
            vec![wire::decode::<EmbedReply>(&message.payload).unwrap()]
        };
        for reply in replies {
            match reply {
                EmbedReply::Chunk(chunk) => {
                    let vector = chunk.vectors().unwrap().remove(0);
                    assert!(
                        vectors.insert(chunk.id.clone(), vector).is_none(),
                        "{} answered twice",
                        chunk.id
                    );
                }
                other => panic!("every request is served, got {other:?}"),
            }
        }
    }
    for n in 0..requests {
        let vector = &vectors[&id_of(n)];
        assert!(max_abs_diff(vector, &want) < 2e-5, "request {n}");
    }
    let _ = std::fs::remove_file(config_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_an_identity_requests_on_its_own_subject() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let _tokenizer = start_tokenizer(&server, &model);
    let _gpu = start_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&client).await;
    // Watchers beside the workers' queue group: they see where the gateway publishes.
    let mut own = client
        .subscribe("embed.requests.from.gateway")
        .await
        .unwrap();
    let bare = client.subscribe("embed.requests").await.unwrap();
    let mut nats = nats_config(&server);
    nats.identity = Some("gateway".into());
    let gateway = gateway::spawn(gateway_config(nats)).await.unwrap();
    let http = reqwest::Client::new();
    wait_healthy(&http, &gateway.url(), Duration::from_secs(20)).await;

    let (text, want) = golden_document();
    let response = http
        .post(format!("{}/v1/embeddings", gateway.url()))
        .json(&json!({"model": "qwen3-tiny", "input": [text]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert!(max_abs_diff(&floats(&answer["data"][0]["embedding"]), &want) < 2e-5);
    let request = tokio::time::timeout(Duration::from_secs(5), own.next())
        .await
        .expect("the request was published on the gateway's own subject")
        .unwrap();
    let reply = request.reply.expect("a reply subject");
    assert!(reply.starts_with("_INBOX.gateway."), "{reply}");
    let request: EmbedRequest = wire::decode(&request.payload).unwrap();
    let bundle_to = request.bundle_to.expect("the gateway bundles its replies");
    assert!(bundle_to.starts_with("_INBOX.gateway."), "{bundle_to}");
    assert_silent(&mut [("the bare subject", bare)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_jsonl_with_an_identity_requests_on_its_own_subject() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let _tokenizer = start_tokenizer(&server, &model);
    let _gpu = start_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&client).await;
    let mut own = client.subscribe("embed.requests.from.alice").await.unwrap();
    let bare = client.subscribe("embed.requests").await.unwrap();

    let dir = std::env::temp_dir().join(format!("reply-routing-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.npy"));
    let (text, want) = golden_document();
    std::fs::write(&input, format!("{}\n", json!({ "text": text }))).unwrap();
    let args = [
        "embed-jsonl",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--url",
        &server.url(),
        "--nats-identity",
        "alice",
        "--no-progress",
    ];
    let options = <embed_jsonl::Options as clap::Parser>::try_parse_from(args).unwrap();
    embed_jsonl::run(&options).await.expect("the CLI is served");
    let bytes = std::fs::read(&output).unwrap();
    let (_, _, offset) = embed_jsonl::output::npy::parse_header(&bytes).unwrap();
    let got: Vec<f32> = bytes[offset..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert!(max_abs_diff(&got, &want) < 2e-5);
    let request = tokio::time::timeout(Duration::from_secs(5), own.next())
        .await
        .expect("the request was published on alice's own subject")
        .unwrap();
    let reply = request.reply.expect("a reply subject");
    assert!(reply.starts_with("_INBOX.alice."), "{reply}");
    assert_silent(&mut [("the bare subject", bare)]).await;
    let _ = std::fs::remove_dir_all(&dir);
}
