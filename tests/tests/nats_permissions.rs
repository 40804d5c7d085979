//! NATS identities and permissions end to end: credentials written by the real `nats-auth`
//! binary, a nats-server running its `auth.conf`, and real connections with each role's
//! seed. A client is refused (and told so) when it publishes into the work queue, requests
//! as another identity, reads another identity's inbox, answers `embed.status` or deletes
//! the stream; a GPU worker cannot delete the stream either; a connection without
//! credentials, or with a seed the server does not know, is refused; a rotated key is
//! refused once the server reloads, while the new seed and the other roles get in. The
//! real pipeline, each stage under its own role, serves embeddings over HTTP and to an
//! external client over NATS without a single permission violation in the server's log. A
//! model on subjects of its own is served under its task's roles ([`routed_models`]).
//!
//! The binaries must be built first: `cargo build --workspace --bins` (for `nats-auth`).

#[path = "nats_permissions/routed_models.rs"]
mod routed_models;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use common::nats::NatsConfig;
use common::queue::{QueueConfig, batch_stream_for};
use common::subjects::{Subjects, Task};
use common::wire::{self, EmbedReply, EmbedRequest, InputType, WorkerKind};
use e2e_tests::process::binary;
use e2e_tests::{NatsServer, free_port, tiny_model_dir, tiny_reranker_dir};
use futures::{FutureExt, StreamExt};
use serde_json::json;
use support::{
    floats, gateway_config, golden, max_abs_diff, start_gpu_configured, start_gpu_with,
    start_tokenizer_configured, start_tokenizer_with, wait_for_kinds, wait_healthy,
};
use tokio::sync::mpsc;

/// The embedding batch stream of the default prefix.
const STREAM: &str = "EMBED_BATCHES";

/// Subjects the gateway and the client may request on, unserved in the refusals test (no
/// worker runs there): their requests make round trips.
const GATEWAY_ROUND_TRIP: &str = "embed.requests.from.gateway";
/// See [`GATEWAY_ROUND_TRIP`].
const CLIENT_ROUND_TRIP: &str = "embed.requests.from.client";

/// How long a JetStream API call of a refused role waits for the answer that never comes.
const REFUSED_API_TIMEOUT: Duration = Duration::from_secs(2);

/// A nats-server that knows only the users `nats-auth` wrote, and those credentials.
struct Secured {
    server: NatsServer,
    /// The directory `nats-auth` wrote (auth.conf, one seed per role).
    dir: PathBuf,
    /// The server's log file.
    log: PathBuf,
}

impl Secured {
    /// Writes credentials with `nats-auth` (roles plus the client `client`) and starts a
    /// nats-server with JetStream and the written `auth.conf`.
    fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    /// [`Secured::start`] with more arguments for `nats-auth`.
    fn start_with(name: &str, nats_auth_args: &[&str]) -> Self {
        let base = std::env::temp_dir().join(format!(
            "qwen3-nats-permissions-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let dir = base.join("auth");
        run_nats_auth_with(&dir, nats_auth_args);
        let log = base.join("nats-server.log");
        // The server's name in its configuration file too: a reload (SIGHUP) reads the file
        // again and refuses a name that changed from the command line's.
        let name = base
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 path")
            .to_string();
        let conf = base.join("nats-server.conf");
        std::fs::write(
            &conf,
            format!("server_name: \"{name}\"\ninclude \"auth/auth.conf\"\n"),
        )
        .expect("write the server configuration");
        let server = NatsServer::start_with_args(&[
            "-c",
            conf.to_str().expect("UTF-8 path"),
            "--server_name",
            &name,
            "-l",
            log.to_str().expect("UTF-8 path"),
        ]);
        Self { server, dir, log }
    }

    /// The NATS settings of `role`: its identity and its seed file.
    fn config(&self, role: &str) -> NatsConfig {
        NatsConfig {
            url: self.server.url(),
            identity: Some(role.into()),
            nkey_file: Some(self.dir.join(format!("{role}.nk"))),
            ..NatsConfig::default()
        }
    }

    /// Connects as `role`; the connection's events (the server's errors, disconnections)
    /// arrive on the receiver.
    async fn connect(&self, role: &str) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let (errors_tx, errors) = mpsc::unbounded_channel();
        let options = self
            .config(role)
            .options(role)
            .await
            .expect("role settings")
            .event_callback(move |event| {
                let _ = errors_tx.send(event.to_string());
                async {}
            });
        let client = options
            .connect(self.server.url())
            .await
            .unwrap_or_else(|e| panic!("{role} connects: {e}"));
        (client, errors)
    }

    /// The nats-server process (found by the configuration file only it runs).
    fn server_pid(&self) -> u32 {
        let conf = self.dir.parent().expect("base").join("nats-server.conf");
        let conf = conf.to_str().expect("UTF-8 path");
        std::fs::read_dir("/proc")
            .expect("read /proc")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    cmdline.split(|&b| b == 0).any(|arg| arg == conf.as_bytes())
                })
            })
            .expect("the nats-server runs")
    }

    /// The server's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- nats-server log ----\n{}", self.log());
        }
        if let Some(base) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Runs `nats-auth --out DIR` with `args`, checks it succeeded; its standard output.
fn run_nats_auth_with(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(binary("nats-auth"))
        .arg("--out")
        .arg(dir)
        .args(args)
        .output()
        .expect("run nats-auth");
    assert!(
        output.status.success(),
        "nats-auth failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Runs `nats-auth --out DIR` and checks it succeeded.
fn run_nats_auth(dir: &Path) {
    run_nats_auth_with(dir, &[]);
}

/// Waits for the server to tell the connection of `errors` that `what` (e.g.
/// `Publish to "embed.batches"`) violates its permissions.
async fn told_refused(errors: &mut mpsc::UnboundedReceiver<String>, what: &str) {
    told(errors, &format!("permissions violation for {what}")).await;
}

/// Waits for an event of the connection of `events` that says `what` (any case).
async fn told(events: &mut mpsc::UnboundedReceiver<String>, what: &str) {
    let what = what.to_lowercase();
    let wait = async {
        while let Some(event) = events.recv().await {
            if event.to_lowercase().contains(&what) {
                return;
            }
        }
        panic!("the connection closed before it was told {what}");
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("the connection was never told {what}"));
}

/// A round trip through the server on `client`'s connection: a request on `subject`, which
/// `client` may publish on and nobody serves here, answered at once with "no responders".
/// The server handles a connection's messages in order, so everything `client` sent before
/// has been handled, and everything the server sent it before has arrived.
async fn round_trip(client: &async_nats::Client, subject: &'static str) {
    let answer = client.request(subject, "".into()).await;
    assert!(
        matches!(&answer, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "the round trip on {subject} was answered: {answer:?}"
    );
}

/// Whether `subscriber` holds no message after a round trip of its connection.
async fn got_nothing(
    client: &async_nats::Client,
    subject: &'static str,
    subscriber: &mut async_nats::Subscriber,
) -> bool {
    round_trip(client, subject).await;
    matches!(subscriber.next().now_or_never(), None | Some(None))
}

/// Messages in the batch stream, as the operator sees them.
async fn queued(operator: &jetstream::Context) -> u64 {
    let mut stream = operator
        .get_stream(STREAM)
        .await
        .expect("the stream exists");
    stream.info().await.expect("stream info").state.messages
}

/// A JetStream context whose calls give up after [`REFUSED_API_TIMEOUT`].
fn refused_jetstream(client: &async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(REFUSED_API_TIMEOUT);
    js
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_refused_outside_its_permissions() {
    let secured = Secured::start("refusals");
    let url = secured.server.url();
    let (tokenizer, _) = secured.connect("tokenizer").await;
    let (gateway, _) = secured.connect("gateway").await;
    let (client, mut client_errors) = secured.connect("client").await;
    let (gpu, mut gpu_errors) = secured.connect("gpu").await;
    let (operator, _) = secured.connect("operator").await;
    let operator_js = jetstream::new(operator.clone());
    let tokenizer_js = jetstream::new(tokenizer.clone());
    batch_stream_for(
        &tokenizer_js,
        &Subjects::default(),
        Task::Embed,
        &QueueConfig::default(),
    )
    .await
    .expect("a tokenizer worker creates the work queue");

    // Publishing into the work queue: refused for the client, allowed for a tokenizer.
    client
        .publish("embed.batches", "forged batch".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    told_refused(&mut client_errors, "publish to \"embed.batches\"").await;
    tokenizer_js
        .publish("embed.batches", "batch".into())
        .await
        .expect("publish")
        .await
        .expect("the stream stores a tokenizer's batch");
    assert_eq!(queued(&operator_js).await, 1, "only the tokenizer's batch");

    // Requesting as another identity, or on the bare subject.
    for subject in [
        "embed.requests",
        "embed.requests.from.gateway",
        "embed.rerank",
    ] {
        client.publish(subject, "x".into()).await.expect("publish");
        told_refused(&mut client_errors, &format!("publish to \"{subject}\"")).await;
    }

    // Reading another identity's inbox: refused; the gateway gets its reply, the client not.
    let mut stolen = client
        .subscribe("_INBOX.gateway.>")
        .await
        .expect("subscribe");
    told_refused(&mut client_errors, "subscription to \"_INBOX.gateway.>\"").await;
    let mut own = gateway
        .subscribe("_INBOX.gateway.reply")
        .await
        .expect("subscribe");
    round_trip(&gateway, GATEWAY_ROUND_TRIP).await;
    tokenizer
        .publish("_INBOX.gateway.reply", "vectors".into())
        .await
        .expect("publish");
    let reply = tokio::time::timeout(Duration::from_secs(10), own.next())
        .await
        .expect("the gateway's reply arrives")
        .expect("subscription open");
    assert_eq!(&reply.payload[..], b"vectors");
    assert!(
        got_nothing(&client, CLIENT_ROUND_TRIP, &mut stolen).await,
        "the client read the gateway's inbox"
    );

    // Answering embed.status: the client cannot listen there, nor write to the gateway's
    // inbox; the gateway's status request finds nobody (no worker runs here).
    let _fake_worker = client.subscribe("embed.status").await.expect("subscribe");
    told_refused(&mut client_errors, "subscription to \"embed.status\"").await;
    let asked = gateway.request("embed.status", "".into()).await;
    assert!(
        matches!(&asked, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "someone answered the gateway's status request: {asked:?}"
    );
    let mut answers = gateway
        .subscribe("_INBOX.gateway.status")
        .await
        .expect("subscribe");
    round_trip(&gateway, GATEWAY_ROUND_TRIP).await;
    client
        .publish("_INBOX.gateway.status", "fake worker, hidden_size 1".into())
        .await
        .expect("publish");
    round_trip(&client, CLIENT_ROUND_TRIP).await;
    told_refused(&mut client_errors, "publish to \"_INBOX.gateway.status\"").await;
    tokenizer
        .publish("_INBOX.gateway.status", "real worker".into())
        .await
        .expect("publish");
    let first = tokio::time::timeout(Duration::from_secs(10), answers.next())
        .await
        .expect("the worker's answer arrives")
        .expect("subscription open");
    assert_eq!(
        &first.payload[..],
        b"real worker",
        "the fake answer got through"
    );

    // Deleting the stream: refused for the client and for a GPU worker; the operator may.
    for (who, connection, errors) in [
        ("client", &client, &mut client_errors),
        ("gpu", &gpu, &mut gpu_errors),
    ] {
        let deleted = refused_jetstream(connection).delete_stream(STREAM).await;
        assert!(deleted.is_err(), "{who} deleted the stream");
        told_refused(
            errors,
            &format!("publish to \"$JS.API.STREAM.DELETE.{STREAM}\""),
        )
        .await;
        assert_eq!(queued(&operator_js).await, 1, "the queue survived {who}");
    }
    operator_js
        .delete_stream(STREAM)
        .await
        .expect("the operator deletes the stream");
    assert!(operator_js.get_stream(STREAM).await.is_err());

    // No credentials, or a seed of another deployment: refused at connection.
    assert!(
        async_nats::ConnectOptions::new()
            .connect(url.as_str())
            .await
            .is_err(),
        "a connection without credentials was accepted"
    );
    let elsewhere = secured.dir.parent().expect("base").join("elsewhere");
    run_nats_auth(&elsewhere);
    let stranger = NatsConfig {
        url: url.clone(),
        nkey_file: Some(elsewhere.join("client.nk")),
        ..NatsConfig::default()
    };
    let attempt = stranger
        .options("stranger")
        .await
        .expect("settings")
        .connect(url)
        .await;
    assert!(attempt.is_err(), "an unknown NKey was accepted");

    // The server logs every refusal with the user's key.
    let log = secured.log();
    for what in [
        "Publish Violation",
        "Subscription Violation",
        "authentication error",
    ] {
        assert!(
            log.to_lowercase().contains(&what.to_lowercase()),
            "the server log names no {what}:\n{log}"
        );
    }
}

/// An embedding request for `text` as a document.
fn document_request(id: &str, text: &str) -> EmbedRequest {
    EmbedRequest {
        id: id.into(),
        input: vec![text.into()],
        input_type: InputType::Document,
        instruction: None,
        dimensions: None,
        truncate: None,
        deadline_ms: None,
        timeout_ms: None,
        ack: false,
        bundle_to: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_serves_every_role_under_its_own_identity() {
    let secured = Secured::start("pipeline");
    let model = tiny_model_dir();
    let reranker = tiny_reranker_dir();
    let tokenizer = start_tokenizer_with(secured.config("tokenizer"), &model);
    let gpu = start_gpu_with(secured.config("gpu"), &model);
    let rerank_tokenizer = start_tokenizer_configured(
        tokenizer_worker::config::TokenizerWorkerConfig {
            task: Task::Rerank,
            ..support::tokenizer_config(&reranker)
        },
        secured.config("rerank-tokenizer"),
    );
    let rerank_gpu = start_gpu_configured(
        gpu_worker::config::GpuWorkerConfig {
            task: Task::Rerank,
            ..support::gpu_config(&reranker)
        },
        secured.config("rerank-gpu"),
    );
    let (operator, _) = secured.connect("operator").await;
    wait_for_kinds(
        &operator,
        &[
            (WorkerKind::Tokenizer, 1),
            (WorkerKind::Gpu, 1),
            (WorkerKind::RerankTokenizer, 1),
            (WorkerKind::RerankGpu, 1),
        ],
    )
    .await;

    let gateway = gateway::spawn(gateway_config(secured.config("gateway")))
        .await
        .expect("gateway starts");
    let base = gateway.url();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(30)).await;
    let golden = golden();
    let case = golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["is_query"] == false)
        .expect("a document case")
        .clone();
    let text = case["text"].as_str().expect("text");
    let expected = floats(&case["embedding"]);
    let response = http
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": "qwen3-tiny", "input": [text]}))
        .send()
        .await
        .expect("embedding request sent");
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.expect("JSON body");
    let got = floats(&answer["data"][0]["embedding"]);
    assert!(max_abs_diff(&got, &expected) < 2e-5, "HTTP: {got:?}");

    // An external client over NATS: its own request subject, its own inbox.
    let (client, _) = secured.connect("client").await;
    let inbox = client.new_inbox();
    assert!(inbox.starts_with("_INBOX.client."), "{inbox}");
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    let request = document_request("external-1", text);
    client
        .publish_with_reply(
            "embed.requests.from.client",
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
            assert!(
                max_abs_diff(&vectors[0], &expected) < 2e-5,
                "NATS: {vectors:?}"
            );
        }
        other => panic!("the client got {other:?}"),
    }

    // The same client through `embed-jsonl`, with its identity and seed file.
    let out = secured.dir.join("cli-out.npy");
    let input = secured.dir.join("cli-in.jsonl");
    std::fs::write(&input, format!("{}\n", json!({ "text": text }))).expect("write input");
    let seed = secured.dir.join("client.nk");
    let url = secured.server.url();
    let args = [
        "embed-jsonl",
        input.to_str().expect("UTF-8 path"),
        out.to_str().expect("UTF-8 path"),
        "--url",
        &url,
        "--nats-identity",
        "client",
        "--nats-nkey-file",
        seed.to_str().expect("UTF-8 path"),
        "--no-progress",
    ];
    let options = <embed_jsonl::Options as clap::Parser>::try_parse_from(args).expect("flags");
    embed_jsonl::run(&options)
        .await
        .expect("embed-jsonl is served as the client");
    let bytes = std::fs::read(&out).expect("the CLI wrote its output");
    let (_, _, offset) = embed_jsonl::output::npy::parse_header(&bytes).expect("an .npy");
    let got: Vec<f32> = bytes[offset..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert!(max_abs_diff(&got, &expected) < 2e-5, "embed-jsonl: {got:?}");

    gateway.shutdown().await.expect("gateway stops");
    for stage in [tokenizer, gpu, rerank_tokenizer, rerank_gpu] {
        stage.stop().await.expect("stage stops");
    }
    let log = secured.log();
    assert!(
        !log.contains("Violation"),
        "a stage did something its role may not:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_refused_once_the_server_reloads() {
    let secured = Secured::start("rotation");
    let seed = |role: &str| std::fs::read_to_string(secured.dir.join(format!("{role}.nk")));
    let (old_tokenizer, old_gpu) = (seed("tokenizer").unwrap(), seed("gpu").unwrap());
    let old_gpu_file = secured.dir.parent().expect("base").join("old-gpu.nk");
    std::fs::write(&old_gpu_file, &old_gpu).unwrap();
    let (_gpu, mut gpu_events) = secured.connect("gpu").await;
    let (_tokenizer, mut tokenizer_events) = secured.connect("tokenizer").await;

    let output = run_nats_auth_with(&secured.dir, &["--rotate", "gpu"]);
    assert!(output.contains("ROTATED"), "{output}");
    assert!(output.contains("reload nats-server"), "{output}");
    assert_ne!(
        seed("gpu").unwrap(),
        old_gpu,
        "the gpu seed was not replaced"
    );
    assert_eq!(
        seed("tokenizer").unwrap(),
        old_tokenizer,
        "another role's seed changed"
    );
    e2e_tests::harness::signal(secured.server_pid(), "HUP");

    // The reloaded server closes the old key's connection and refuses it from then on; the
    // new seed and the roles that kept theirs get in.
    told(&mut gpu_events, "authorization violation").await;
    let url = secured.server.url();
    let with_old_key = NatsConfig {
        nkey_file: Some(old_gpu_file),
        ..secured.config("gpu")
    };
    let attempt = with_old_key
        .options("gpu")
        .await
        .expect("settings")
        .connect(&url)
        .await;
    assert!(attempt.is_err(), "the rotated key was admitted");
    secured.connect("gpu").await;
    secured.connect("tokenizer").await;
    while let Ok(event) = tokenizer_events.try_recv() {
        assert!(
            !event.contains("disconnected") && !event.to_lowercase().contains("violation"),
            "a role that kept its key was disturbed: {event}"
        );
    }
}
