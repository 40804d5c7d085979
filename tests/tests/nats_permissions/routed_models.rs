//! A model on subjects of its own under NATS permissions: `nats-auth --model NAME` lets the
//! shared `tokenizer` and `gpu` roles serve that model's subjects and streams (real workers
//! with `model_subjects`) and an external client request it on its own `from` subject; a
//! model nats-auth was not told about is refused to both.

use common::nats::NatsConfig;
use common::subjects::{Subjects, Task, model_token};
use common::wire::{self, EmbedReply, WorkerKind};
use e2e_tests::tiny_model_dir;
use futures::StreamExt;
use std::time::Duration;

use super::support::{
    floats, golden, gpu_config, max_abs_diff, start_gpu_configured, start_tokenizer_configured,
    tokenizer_config, wait_for_kinds, worker_statuses,
};
use super::{Secured, document_request, told_refused};

/// The model served on subjects of its own (token `acme-tiny-routed`).
const ROUTED_MODEL: &str = "acme/Tiny-Routed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_on_its_own_subjects_is_served_only_once_nats_auth_names_it() {
    let secured = Secured::start_with("routed", &["--model", ROUTED_MODEL]);
    let token = model_token(ROUTED_MODEL);
    let routed = |role: &str| NatsConfig {
        model_subjects: true,
        ..secured.config(role)
    };
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer_configured(
        tokenizer_worker::config::TokenizerWorkerConfig {
            model_name: ROUTED_MODEL.into(),
            ..tokenizer_config(&model)
        },
        routed("tokenizer"),
    );
    let gpu = start_gpu_configured(
        gpu_worker::config::GpuWorkerConfig {
            model_name: ROUTED_MODEL.into(),
            ..gpu_config(&model)
        },
        routed("gpu"),
    );
    let (operator, _) = secured.connect("operator").await;
    wait_for_kinds(
        &operator,
        &[(WorkerKind::Tokenizer, 1), (WorkerKind::Gpu, 1)],
    )
    .await;
    for status in worker_statuses(&operator).await {
        assert_eq!(status.route.as_deref(), Some(token.as_str()), "{status:?}");
    }

    // The client requests the model on its own subject and gets the golden vector.
    let case = golden()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["is_query"] == false)
        .expect("a document case")
        .clone();
    let (client, mut client_errors) = secured.connect("client").await;
    let subject = Subjects::default()
        .routed(Some(&token))
        .requests_from(Task::Embed, "client");
    assert_eq!(
        subject,
        "embed.models.acme-tiny-routed.requests.from.client"
    );
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    let request = document_request("routed-1", case["text"].as_str().expect("text"));
    client
        .publish_with_reply(
            subject,
            inbox,
            wire::encode(&request).expect("encode").into(),
        )
        .await
        .expect("publish");
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .expect("the client's reply arrives")
        .expect("subscription open");
    match wire::decode::<EmbedReply>(&reply.payload).expect("reply decodes") {
        EmbedReply::Chunk(chunk) => {
            let vectors = chunk.vectors().expect("consistent chunk");
            let diff = max_abs_diff(&vectors[0], &floats(&case["embedding"]));
            assert!(diff < 2e-5, "max abs diff {diff}");
        }
        other => panic!("the client got {other:?}"),
    }

    // A model nats-auth does not name: nobody may request it, no worker may serve it.
    client
        .publish("embed.models.other.requests.from.client", "x".into())
        .await
        .expect("publish");
    told_refused(
        &mut client_errors,
        "publish to \"embed.models.other.requests.from.client\"",
    )
    .await;
    let (worker, mut worker_errors) = secured.connect("tokenizer").await;
    let _unserved = worker
        .subscribe("embed.models.other.requests")
        .await
        .expect("subscribe");
    told_refused(
        &mut worker_errors,
        "subscription to \"embed.models.other.requests\"",
    )
    .await;

    gpu.stop().await.expect("GPU worker stops");
    tokenizer.stop().await.expect("tokenizer worker stops");
    let log = secured.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("Violation") && l.contains(&token)),
        "a worker of the named model did something its role may not:\n{log}"
    );
}
