//! The pipeline's worker stages, started in-process against a real nats-server.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use common::nats::NatsConfig;
use common::queue::QueueConfig;
use common::subjects::Task;
use common::wire::{self, EmbedReply, EmbedRequest, RerankReply, RerankRequest, WorkerKind};
use e2e_tests::NatsServer;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A stage running in this process, stopped through its shutdown channel.
pub struct Stage {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// What a stage's `run` is given to wait on: resolves when the stage is asked to stop.
type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Stage {
    /// Spawns the stage that `run` returns, handing it the future that resolves when
    /// [`Stage::stop`] is called.
    fn spawn<F>(run: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        Self {
            stop: Some(stop),
            task: tokio::spawn(run(shutdown)),
        }
    }

    /// Asks the stage to drain and waits for it to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}

/// NATS settings for a test server.
pub fn nats_config(server: &NatsServer) -> NatsConfig {
    NatsConfig {
        url: server.url(),
        ..NatsConfig::default()
    }
}

/// Starts a tokenizer worker on `model_dir`.
pub fn start_tokenizer(server: &NatsServer, model_dir: &Path) -> Stage {
    start_tokenizer_with(nats_config(server), model_dir)
}

/// Starts a CPU GPU-worker on `model_dir`.
pub fn start_gpu(server: &NatsServer, model_dir: &Path) -> Stage {
    start_gpu_with(nats_config(server), model_dir)
}

/// Publishes `request` on `subject` (with `headers`, when given) and a fresh inbox as its
/// reply subject, subscribed before publishing so no reply is missed.
pub async fn publish_for_replies<T: serde::Serialize>(
    client: &async_nats::Client,
    subject: &'static str,
    request: &T,
    headers: Option<async_nats::HeaderMap>,
) -> async_nats::Subscriber {
    let inbox = client.new_inbox();
    let replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    let payload = wire::encode(request).expect("encode").into();
    match headers {
        Some(headers) => {
            client
                .publish_with_reply_and_headers(subject, inbox, headers, payload)
                .await
        }
        None => client.publish_with_reply(subject, inbox, payload).await,
    }
    .expect("publish");
    replies
}

/// The next reply on `replies`, at most 30 s away.
pub async fn next_reply(replies: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .expect("a reply within 30 s")
        .expect("subscription open")
}

/// Sends a request on the public NATS API and collects its replies: the vectors in input
/// order with their token counts, or the error reply.
pub async fn embed_over_nats(
    client: &async_nats::Client,
    request: &EmbedRequest,
) -> Result<(Vec<Vec<f32>>, Vec<u32>), wire::ErrorReply> {
    let mut replies = publish_for_replies(client, "embed.requests", request, None).await;
    let total = request.input.len();
    let mut vectors = vec![None; total];
    let mut tokens = vec![0; total];
    let mut held = 0;
    // An empty request still gets one (error) reply.
    while held < total.max(1) {
        let message = next_reply(&mut replies).await;
        match wire::decode::<EmbedReply>(&message.payload).expect("reply decodes") {
            EmbedReply::Chunk(chunk) => {
                assert_eq!(chunk.id, request.id);
                assert_eq!(chunk.total as usize, total);
                for (k, vector) in chunk
                    .vectors()
                    .expect("consistent chunk")
                    .into_iter()
                    .enumerate()
                {
                    let index = chunk.offset as usize + k;
                    assert!(vectors[index].is_none(), "item {index} answered twice");
                    vectors[index] = Some(vector);
                    tokens[index] = chunk.tokens[k];
                    held += 1;
                }
            }
            EmbedReply::Error(error) => return Err(error),
            EmbedReply::Queued(queued) => {
                assert!(
                    request.ack,
                    "an acknowledgement nobody asked for: {queued:?}"
                );
                assert_eq!(queued.id, request.id);
            }
        }
    }
    Ok((
        vectors.into_iter().map(|v| v.expect("all held")).collect(),
        tokens,
    ))
}

/// One document's answer over the rerank subject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RerankAnswer {
    /// Probability of `yes` against `no`.
    pub score: f32,
    /// Logit of `yes`.
    pub logit_yes: f32,
    /// Logit of `no`.
    pub logit_no: f32,
    /// Tokens of the prompt.
    pub tokens: u32,
}

/// Sends a request on the public rerank subject and collects its chunks: one answer per
/// document in document order, or the error reply.
pub async fn rerank_over_nats(
    client: &async_nats::Client,
    request: &RerankRequest,
) -> Result<Vec<RerankAnswer>, wire::ErrorReply> {
    let mut replies = publish_for_replies(client, "embed.rerank", request, None).await;
    let total = request.documents.len();
    let mut answers: Vec<Option<RerankAnswer>> = vec![None; total];
    let mut held = 0;
    while held < total.max(1) {
        let message = next_reply(&mut replies).await;
        match wire::decode::<RerankReply>(&message.payload).expect("reply decodes") {
            RerankReply::Chunk(chunk) => {
                assert_eq!(chunk.id, request.id);
                assert_eq!(chunk.total as usize, total);
                chunk.validate().expect("consistent chunk");
                for k in 0..chunk.count as usize {
                    let index = chunk.offset as usize + k;
                    assert!(answers[index].is_none(), "document {index} answered twice");
                    answers[index] = Some(RerankAnswer {
                        score: chunk.scores[k],
                        logit_yes: chunk.logit_yes[k],
                        logit_no: chunk.logit_no[k],
                        tokens: chunk.tokens[k],
                    });
                    held += 1;
                }
            }
            RerankReply::Error(error) => return Err(error),
            RerankReply::Queued(queued) => {
                assert!(
                    request.ack,
                    "an acknowledgement nobody asked for: {queued:?}"
                );
                assert_eq!(queued.id, request.id);
            }
        }
    }
    Ok(answers.into_iter().map(|a| a.expect("all held")).collect())
}

/// Waits until at least `count` workers of each listed kind answer the status subject.
pub async fn wait_for_kinds(client: &async_nats::Client, kinds: &[(WorkerKind, usize)]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let statuses = worker_statuses(client).await;
        let ready = kinds
            .iter()
            .all(|&(kind, count)| statuses.iter().filter(|s| s.kind == kind).count() >= count);
        if ready {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers did not come up: {statuses:?}"
        );
    }
}

/// Every worker's answer to one status request (gathered for 200 ms).
pub async fn worker_statuses(client: &async_nats::Client) -> Vec<wire::WorkerStatus> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply("embed.status", inbox, Vec::new().into())
        .await
        .expect("publish");
    let mut statuses = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(200), answers.next()).await
    {
        if let Ok(status) = wire::decode::<wire::WorkerStatus>(&message.payload) {
            statuses.push(status);
        }
    }
    statuses
}

/// Waits until at least one worker of each kind answers the status subject.
pub async fn wait_for_workers(client: &async_nats::Client) {
    wait_for_worker_counts(client, 1, 1).await;
}

/// Waits until at least `tokenizers` tokenizer workers and `gpus` GPU workers answer the
/// status subject (a worker answers once it has subscribed to its work).
pub async fn wait_for_worker_counts(client: &async_nats::Client, tokenizers: usize, gpus: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let statuses = worker_statuses(client).await;
        let count = |kind| statuses.iter().filter(|s| s.kind == kind).count();
        if count(wire::WorkerKind::Tokenizer) >= tokenizers && count(wire::WorkerKind::Gpu) >= gpus
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers did not come up: {statuses:?}"
        );
    }
}

/// Starts a tokenizer worker on `model_dir` connecting with `nats` (credentials, TLS).
pub fn start_tokenizer_with(nats: NatsConfig, model_dir: &Path) -> Stage {
    start_tokenizer_for(nats, model_dir, Task::Embed)
}

/// Starts a rerank tokenizer worker (`task = rerank`) on the reranker `model_dir`.
pub fn start_rerank_tokenizer(server: &NatsServer, model_dir: &Path) -> Stage {
    start_tokenizer_for(nats_config(server), model_dir, Task::Rerank)
}

/// Starts a CPU rerank GPU-worker (`task = rerank`) on the reranker `model_dir`.
pub fn start_rerank_gpu(server: &NatsServer, model_dir: &Path) -> Stage {
    start_gpu_for(nats_config(server), model_dir, Task::Rerank)
}

/// The tokenizer worker settings of the tests: `model_dir`, named `qwen3-tiny`, batches
/// sent after 1 ms.
pub fn tokenizer_config(model_dir: &Path) -> tokenizer_worker::config::TokenizerWorkerConfig {
    tokenizer_worker::config::TokenizerWorkerConfig {
        model_dir: model_dir.to_path_buf(),
        model_name: "qwen3-tiny".into(),
        max_wait_ms: 1,
        ..Default::default()
    }
}

/// Starts a tokenizer worker for `task`.
fn start_tokenizer_for(nats: NatsConfig, model_dir: &Path, task: Task) -> Stage {
    let config = tokenizer_worker::config::TokenizerWorkerConfig {
        task,
        ..tokenizer_config(model_dir)
    };
    start_tokenizer_configured(config, nats)
}

/// Starts a tokenizer worker with `config`, connecting with `nats`.
pub fn start_tokenizer_configured(
    config: tokenizer_worker::config::TokenizerWorkerConfig,
    nats: NatsConfig,
) -> Stage {
    Stage::spawn(|shutdown| {
        tokenizer_worker::service::run(config, nats, QueueConfig::default(), shutdown)
    })
}

/// Starts a CPU GPU-worker on `model_dir` connecting with `nats` (credentials, TLS).
pub fn start_gpu_with(nats: NatsConfig, model_dir: &Path) -> Stage {
    start_gpu_for(nats, model_dir, Task::Embed)
}

/// The GPU worker settings of the tests: `model_dir` on the CPU, named `qwen3-tiny`.
pub fn gpu_config(model_dir: &Path) -> gpu_worker::config::GpuWorkerConfig {
    gpu_worker::config::GpuWorkerConfig {
        model_dir: model_dir.to_path_buf(),
        model_name: "qwen3-tiny".into(),
        backend: gpu_worker::engine::BackendChoice::Cpu,
        ..Default::default()
    }
}

/// Starts a CPU GPU-worker for `task`.
fn start_gpu_for(nats: NatsConfig, model_dir: &Path, task: Task) -> Stage {
    let config = gpu_worker::config::GpuWorkerConfig {
        task,
        ..gpu_config(model_dir)
    };
    start_gpu_configured(config, nats)
}

/// Starts a GPU worker with `config`, connecting with `nats`.
pub fn start_gpu_configured(
    config: gpu_worker::config::GpuWorkerConfig,
    nats: NatsConfig,
) -> Stage {
    Stage::spawn(|shutdown| {
        gpu_worker::service::run(config, nats, QueueConfig::default(), shutdown)
    })
}

/// The embedding fixture's `golden.json`.
pub fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(e2e_tests::tiny_model_dir().join("golden.json"))
        .expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

/// The reranker fixture's `golden_rerank.json`.
pub fn golden_rerank() -> serde_json::Value {
    let text = std::fs::read_to_string(e2e_tests::tiny_reranker_dir().join("golden_rerank.json"))
        .expect("golden_rerank.json");
    serde_json::from_str(&text).expect("golden_rerank.json parses")
}

/// A JSON array of numbers as f32.
pub fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

/// Largest absolute difference of two equally long vectors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A gateway for tests: loopback, a free port, the fixture's model name, no cache.
pub fn gateway_config(nats: NatsConfig) -> gateway::GatewayConfig {
    gateway::GatewayConfig {
        host: "127.0.0.1".into(),
        port: 0,
        model: "qwen3-tiny".into(),
        cache_size: 0,
        nats,
        ..gateway::GatewayConfig::default()
    }
}

/// Polls `/health` until it answers 200 (the gateway connects to NATS in the background; a
/// gateway process may not listen yet), for at most `patience`.
pub async fn wait_healthy(http: &reqwest::Client, base: &str, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let last = match http.get(format!("{base}/health")).send().await {
            Ok(response) if response.status() == 200 => return,
            Ok(response) => format!("{}: {:?}", response.status(), response.text().await),
            Err(e) => e.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "never healthy: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
