//! Faults under load, with a real nats-server and the real binaries as child processes:
//! a GPU worker or a tokenizer worker killed with SIGKILL, every worker stopped with SIGTERM,
//! the NATS server restarted, one node of a three-node NATS cluster killed, poisoned batches
//! in the work queue, a GPU worker whose device fails (a pass that panics, aborts the
//! process or hangs, set off by the test-only fault hook). Each test runs a
//! load of concurrent mixed HTTP requests through a gateway process and checks every answer
//! against the golden vectors.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.
//! The tests run one at a time (they share two cores with everything else).

#[path = "faults/device.rs"]
mod device;
#[path = "faults/load.rs"]
mod load;
mod support;

use std::time::Duration;

use common::queue::{QueueConfig, batch_stream, lane_stream_for};
use common::subjects::{Subjects, Task};
use common::wire::{
    self, BatchItem, EmbedReply, EmbedRequest, ErrorCode, ErrorReply, InputType, Priority,
    TokenBatch,
};
use e2e_tests::harness::{DEADLINE, FAULT_ENV, serial, signal, wait_serving};
use e2e_tests::load::{Load, Record, assert_flawless, failures};
use e2e_tests::process::{Pipeline, Worker};
use e2e_tests::{NatsCluster, NatsServer};
use futures::StreamExt;
use load::embedding_templates;
use serde_json::{Value, json};
use support::{golden, publish_for_replies, wait_for_worker_counts, wait_healthy, worker_statuses};
use tokio::time::Instant;

/// Concurrent HTTP clients of the load.
const CLIENTS: usize = 6;

/// Two tokenizer workers, two GPU workers and a gateway on `nats_url`, up and healthy.
struct Stack {
    tokenizers: Vec<Worker>,
    gpus: Vec<Worker>,
    gateway: Worker,
    base: String,
    nats: async_nats::Client,
}

impl Stack {
    async fn start(nats_url: &str, env: &[(&'static str, &str)]) -> Self {
        Self::start_with(nats_url, env, &[]).await
    }

    /// As [`Stack::start`], with `first_gpu_env` added to the first GPU worker's settings.
    async fn start_with(
        nats_url: &str,
        env: &[(&'static str, &str)],
        first_gpu_env: &[(&'static str, &str)],
    ) -> Self {
        let pipeline = Pipeline::new(nats_url, env);
        let tokenizers = vec![
            pipeline.tokenizer("tokenizer-1"),
            pipeline.tokenizer("tokenizer-2"),
        ];
        let mut first = pipeline.clone();
        first
            .env
            .extend(first_gpu_env.iter().map(|(k, v)| (*k, v.to_string())));
        let gpus = vec![first.gpu("gpu-1"), pipeline.gpu("gpu-2")];
        let urls: Vec<&str> = nats_url.split(',').collect();
        let nats = async_nats::connect(urls)
            .await
            .expect("test client connects");
        wait_for_worker_counts(&nats, 2, 2).await;
        let (gateway, base) = pipeline.gateway("gateway");
        wait_healthy(&reqwest::Client::new(), &base, Duration::from_secs(30)).await;
        Self {
            tokenizers,
            gpus,
            gateway,
            base,
            nats,
        }
    }

    /// The gateway's `/debug` document.
    async fn debug(&self) -> Value {
        reqwest::get(format!("{}/debug", self.base))
            .await
            .expect("debug answers")
            .json()
            .await
            .expect("debug is JSON")
    }
}

/// Runs the load for `period`.
async fn load_for(load_period: Duration) {
    tokio::time::sleep(load_period).await;
}

#[test]
fn gpu_worker_killed_under_load_loses_and_duplicates_nothing() {
    serial(async {
        let server = NatsServer::start();
        let mut stack = Stack::start(&server.url(), FAULT_ENV).await;
        let load = Load::start(&stack.base, CLIENTS, embedding_templates());
        load_for(Duration::from_secs(2)).await;
        // Frozen first, so it surely holds pulled batches when it dies: they must be
        // redelivered to the other worker after ack_wait (2 s).
        signal(stack.gpus[0].pid(), "STOP");
        load_for(Duration::from_millis(500)).await;
        stack.gpus[0].kill9();
        load_for(Duration::from_secs(6)).await;
        let records = load.stop().await;
        assert_flawless(&records, "GPU worker killed");
        assert!(stack.gateway.is_running(), "the gateway died");
        assert!(stack.gpus[1].is_running(), "the surviving GPU worker died");
        assert_eq!(stack.debug().await["pending_upstream"], 0);
    });
}

#[test]
fn tokenizer_worker_killed_under_load_loses_no_request() {
    serial(async {
        let server = NatsServer::start();
        let mut stack = Stack::start(&server.url(), FAULT_ENV).await;
        let load = Load::start(&stack.base, CLIENTS, embedding_templates());
        load_for(Duration::from_secs(2)).await;
        // Frozen first, so requests surely reach it and are never answered: the gateway must
        // publish them again when no acknowledgement comes.
        signal(stack.tokenizers[0].pid(), "STOP");
        load_for(Duration::from_millis(1500)).await;
        stack.tokenizers[0].kill9();
        load_for(Duration::from_secs(6)).await;
        let records = load.stop().await;
        assert_flawless(&records, "tokenizer worker killed");
        let debug = stack.debug().await;
        assert!(
            debug["upstream_resends"].as_u64().unwrap_or(0) > 0,
            "the frozen tokenizer's requests were never published again: {debug}"
        );
        let slowest = records.iter().map(|r| r.took).max().unwrap_or_default();
        assert!(slowest < DEADLINE, "a request took {slowest:?}");
    });
}

#[test]
fn sigterm_drains_every_worker_without_failures() {
    serial(async {
        let server = NatsServer::start();
        let mut stack = Stack::start(&server.url(), FAULT_ENV).await;
        let load = Load::start(&stack.base, CLIENTS, embedding_templates());
        load_for(Duration::from_secs(2)).await;
        stack.tokenizers[0].sigterm();
        stack.gpus[0].sigterm();
        for worker in [&mut stack.tokenizers[0], &mut stack.gpus[0]] {
            let status = worker
                .wait_exit(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{} did not exit within 10 s of SIGTERM", worker.name()));
            assert!(status.success(), "{} exited with {status}", worker.name());
        }
        load_for(Duration::from_secs(2)).await;
        // The other two in turn: the stage's last worker of each kind is replaced first.
        let pipeline = Pipeline::new(server.url(), FAULT_ENV);
        let mut fresh_tokenizer = pipeline.tokenizer("tokenizer-3");
        let mut fresh_gpu = pipeline.gpu("gpu-3");
        wait_for_worker_counts(&stack.nats, 2, 2).await;
        stack.tokenizers[1].sigterm();
        stack.gpus[1].sigterm();
        for worker in [&mut stack.tokenizers[1], &mut stack.gpus[1]] {
            let status = worker
                .wait_exit(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{} did not exit within 10 s of SIGTERM", worker.name()));
            assert!(status.success(), "{} exited with {status}", worker.name());
        }
        load_for(Duration::from_secs(2)).await;
        let records = load.stop().await;
        assert_flawless(&records, "workers stopped with SIGTERM");
        assert!(fresh_tokenizer.is_running() && fresh_gpu.is_running());
        assert!(
            stack.tokenizers[0]
                .log()
                .contains("tokenizer worker stopped"),
            "{}",
            stack.tokenizers[0].log()
        );
        assert!(
            stack.gpus[0].log().contains("gpu worker stopped"),
            "{}",
            stack.gpus[0].log()
        );
    });
}

#[test]
fn nats_restart_fails_fast_and_recovers_within_5_s() {
    serial(async {
        let mut server = NatsServer::start();
        let stack = Stack::start(&server.url(), FAULT_ENV).await;
        let load = Load::start(&stack.base, CLIENTS, embedding_templates());
        load_for(Duration::from_secs(2)).await;
        server.kill();
        let killed = Instant::now();
        load_for(Duration::from_secs(2)).await;
        server.restart();
        let back = Instant::now();
        load_for(Duration::from_secs(8)).await;
        let records = load.stop().await;

        // In the gap: nothing hangs; what fails, fails with 503, long before the deadline.
        for record in records.iter().filter(|r| r.failure.is_some()) {
            assert_eq!(record.status, 503, "{:?}", record.failure);
            assert!(
                record.took < Duration::from_secs(3),
                "a failure took {:?} (deadline {DEADLINE:?}): {:?}",
                record.took,
                record.failure
            );
            assert!(
                record.finished() >= killed && record.started < back + Duration::from_secs(5),
                "a failure outside the outage: {:?}",
                record.failure
            );
        }
        let in_gap: Vec<&Record> = records
            .iter()
            .filter(|r| r.started > killed + Duration::from_millis(200) && r.finished() < back)
            .collect();
        assert!(
            !in_gap.is_empty(),
            "no request ran while the server was down"
        );
        assert!(
            in_gap.iter().all(|r| r.status == 503),
            "a request in the gap did not get 503"
        );
        // Back within 5 s of the server's return: every request sent 5 s after it succeeds,
        // and there are some.
        let after: Vec<Record> = records
            .iter()
            .filter(|r| r.started >= back + Duration::from_secs(5))
            .cloned()
            .collect();
        assert_flawless(&after, "after the server's return");
        let first_success = records
            .iter()
            .filter(|r| r.started >= back && r.failure.is_none())
            .map(Record::finished)
            .min()
            .expect("some request succeeded after the restart");
        assert!(
            first_success - back < Duration::from_secs(5),
            "service came back {:?} after the server",
            first_success - back
        );
    });
}

#[test]
fn cluster_node_killed_under_load_clients_carry_on() {
    serial(async {
        let mut cluster = NatsCluster::start(3);
        let urls = cluster.urls();
        let queue = QueueConfig {
            replicas: 3,
            ack_wait_s: 2.0,
            ..QueueConfig::default()
        };
        wait_for_jetstream(&urls, &queue).await;
        let mut env: Vec<(&'static str, &str)> = FAULT_ENV.to_vec();
        env.push(("QWEN3_EMBED__QUEUE__REPLICAS", "3"));
        let stack = Stack::start(&urls, &env).await;
        // A fresh cluster elects the R3 stream's and consumer's leaders only after the
        // workers connected: wait until a request goes through end to end.
        wait_serving(
            &stack.base,
            "/v1/embeddings",
            json!({"input": "ready?"}),
            Duration::from_secs(30),
        )
        .await;
        let load = Load::start(&stack.base, CLIENTS, embedding_templates());
        load_for(Duration::from_secs(2)).await;
        // The node the gateway is connected to, so at least the gateway must fail over.
        let victim = node_serving(&cluster, "gateway").await;
        cluster.nodes[victim].kill();
        let killed = Instant::now();
        // The survivors may elect new stream and consumer leaders: allow them 8 s, then watch
        // 6 s more (requests right after a slow takeover can take a redelivery's 2 s each: a
        // 3 s window once held only 10 of them).
        load_for(Duration::from_secs(14)).await;
        let records = load.stop().await;
        // While the survivors take over, a request may be refused, never answered wrongly
        // or left hanging past its deadline.
        let wrong: Vec<&Record> = records
            .iter()
            .filter(|r| {
                r.failure.is_some()
                    && (r.status == 200
                        || r.status == 0
                        || r.took > DEADLINE + Duration::from_secs(1))
            })
            .collect();
        assert!(wrong.is_empty(), "answered wrongly or hung: {wrong:#?}");
        let after: Vec<Record> = records
            .iter()
            .filter(|r| r.started >= killed + Duration::from_secs(8))
            .cloned()
            .collect();
        assert_flawless(&after, "after a cluster node died");
        let failed = failures(&records);
        eprintln!(
            "cluster: {} requests, {} failed while the survivors took over: {:?}",
            records.len(),
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    });
}

#[test]
fn poisoned_batches_fail_only_their_own_requests() {
    serial(async {
        let server = NatsServer::start();
        let mut stack = Stack::start(&server.url(), FAULT_ENV).await;
        let load = Load::start(&stack.base, CLIENTS, embedding_templates());
        load_for(Duration::from_secs(1)).await;

        // Batches no tokenizer worker would send, straight into the work queue, among the
        // load's: a token outside the vocabulary, lengths that do not add up, a batch over the
        // workers' token budget, and bytes that are no batch at all.
        let inbox = stack.nats.new_inbox();
        let mut replies = stack
            .nats
            .subscribe(format!("{inbox}.>"))
            .await
            .expect("subscribe");
        let item = |id: &str, len| BatchItem::new(id, format!("{inbox}.{id}"), 0, 1, len);
        let poisoned = [
            TokenBatch {
                token_ids: vec![u32::MAX, 151_643],
                items: vec![item("bad-token", 2)],
            },
            TokenBatch {
                token_ids: vec![1, 2, 3],
                items: vec![item("bad-length", 2)],
            },
        ];
        // A batch larger than the GPU workers' budget (`[gpu] max_batch_tokens`, 32768 by
        // default): refused as if the device could not hold it.
        let oversized = TokenBatch {
            token_ids: vec![1; 32_769],
            items: vec![item("too-big", 32_769)],
        };
        let js = async_nats::jetstream::new(stack.nats.clone());
        let mut payloads: Vec<Vec<u8>> = poisoned
            .iter()
            .chain([&oversized])
            .map(|batch| wire::encode(batch).expect("encode"))
            .collect();
        payloads.push(b"\xc1 not a batch".to_vec());
        for payload in payloads {
            js.publish("embed.batches", payload.into())
                .await
                .expect("publish")
                .await
                .expect("queued");
        }

        // Each poisoned request gets one error reply, naming it.
        let mut answered = std::collections::BTreeMap::new();
        while answered.len() < poisoned.len() + 1 {
            let message = tokio::time::timeout(Duration::from_secs(10), replies.next())
                .await
                .expect("an error reply within 10 s")
                .expect("subscription open");
            match wire::decode::<EmbedReply>(&message.payload).expect("a reply") {
                EmbedReply::Error(error) => {
                    let id = error.id.clone().expect("the error names its request");
                    let expected = if id == "too-big" {
                        ErrorCode::Overloaded
                    } else {
                        ErrorCode::InvalidRequest
                    };
                    assert_eq!(error.error.code, expected, "{error:?}");
                    assert_eq!(message.subject.as_str(), format!("{inbox}.{id}"));
                    assert!(answered.insert(id, error).is_none(), "answered twice");
                }
                other => panic!("expected an error reply, got {other:?}"),
            }
        }
        load_for(Duration::from_secs(2)).await;
        let records = load.stop().await;
        assert_flawless(&records, "poisoned batches in the queue");
        for gpu in &mut stack.gpus {
            assert!(gpu.is_running(), "{} died on a poisoned batch", gpu.name());
        }
        // Nothing more for the poisoned requests (no retry of a terminated batch).
        let late = tokio::time::timeout(Duration::from_millis(300), replies.next()).await;
        assert!(late.is_err(), "unexpected reply: {late:?}");
    });
}

/// Waits until the cluster's JetStream answers, by creating the work queue stream with
/// `queue`'s settings (as the workers will).
async fn wait_for_jetstream(urls: &str, queue: &QueueConfig) {
    let urls: Vec<&str> = urls.split(',').collect();
    let client = async_nats::connect(urls)
        .await
        .expect("cluster client connects");
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let subjects = Subjects::default();
        let interactive = batch_stream(&js, &subjects, queue).await;
        let bulk = match interactive {
            Ok(_) => lane_stream_for(&js, &subjects, Task::Embed, Priority::Bulk, queue).await,
            Err(e) => Err(e),
        };
        match bulk {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "JetStream never came up: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The index of the cluster node client `name` is connected to (from each node's `/connz`).
async fn node_serving(cluster: &NatsCluster, name: &str) -> usize {
    for index in 0..cluster.nodes.len() {
        let connz: Value = reqwest::get(format!("{}/connz?limit=1024", cluster.monitor_url(index)))
            .await
            .expect("the monitoring port answers")
            .json()
            .await
            .expect("connz is JSON");
        let connections = connz["connections"].as_array().cloned().unwrap_or_default();
        if connections.iter().any(|c| c["name"] == name) {
            return index;
        }
    }
    panic!("no node serves a client named {name}");
}
