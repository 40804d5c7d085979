//! Test support: a real nats-server, a gateway on port 0, and small in-test workers that
//! answer requests and status queries the way the real ones do.
//!
//! The fake tokenizer worker is scripted by the texts it receives:
//! - `!error:CODE` (e.g. `!error:too_many_tokens`): answers with an `ErrorReply` of that code;
//! - `!silent`: never answers;
//! - `!sleep:MS`: waits MS milliseconds, then answers normally;
//! - `!hold`: waits until the test calls [`FakeTokenizer::release_held`] (at once after
//!   it), then answers normally;
//! - `!garbage`: answers with bytes that are not a reply;
//! - anything else: a vector derived from the text (see [`expected_vector`]).
//!
//! Answers come as chunks of `chunk_size` items, last chunk first (out of order). A fake
//! tokenizer may serve a model's route of its own ([`Harness::fake_tokenizer_on`]); its
//! vectors are then shifted by a bias, so answers show which model computed them.

#![allow(dead_code)]

pub mod models;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::subjects::{Subjects, TOKENIZER_QUEUE_GROUP, model_token};
use common::wire::{
    self, EmbedChunk, EmbedRequest, ErrorCode, ErrorReply, WorkerKind, WorkerStatus,
};
use e2e_tests::NatsServer;
use futures::StreamExt;
use gateway::{GatewayConfig, RunningGateway};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A nats-server, a gateway using it, and clients for both.
pub struct Harness {
    /// The server (killed on drop).
    pub nats: NatsServer,
    /// The gateway under test.
    pub gateway: RunningGateway,
    /// A NATS client for fake workers.
    pub client: async_nats::Client,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// The deployment's subjects.
    pub subjects: Subjects,
    /// API key the harness itself uses (waiting for the gateway) when keys are configured.
    pub api_key: Option<String>,
}

impl Harness {
    /// Starts a server and a gateway whose configuration `tweak` adjusts.
    pub async fn start(tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_with_key(None, tweak).await
    }

    /// Like [`Self::start`], for a gateway that requires API keys: the harness presents
    /// `api_key` while waiting for the gateway to serve.
    pub async fn start_with_key(
        api_key: Option<&str>,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        Self::start_with_client(api_key, reqwest::Client::new(), tweak).await
    }

    /// Like [`Self::start_with_key`], with `http` as the harness's HTTP client (one that
    /// trusts a test certificate, or keeps no idle connection).
    pub async fn start_with_client(
        api_key: Option<&str>,
        http: reqwest::Client,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let nats = NatsServer::start();
        let mut config = GatewayConfig {
            host: "127.0.0.1".into(),
            port: 0,
            status_wait_ms: 100,
            status_cache_ms: 0,
            request_timeout_s: 10.0,
            ..GatewayConfig::default()
        };
        config.nats.url = nats.url();
        tweak(&mut config);
        let subjects = config.nats.subjects();
        let gateway = gateway::spawn(config).await.expect("gateway starts");
        let client = async_nats::connect(nats.url())
            .await
            .expect("test client connects");
        let harness = Self {
            nats,
            gateway,
            client,
            http,
            subjects,
            api_key: api_key.map(str::to_string),
        };
        harness.wait_until_serving().await;
        harness
    }

    /// Waits until the gateway answers HTTP and is connected to NATS.
    async fn wait_until_serving(&self) {
        for _ in 0..200 {
            let mut request = self.http.get(self.url("/debug"));
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            if let Ok(response) = request.send().await {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                if body["discovery"]["error"].is_null() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the gateway did not start serving");
    }

    /// Full URL of `path` on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("the gateway answers")
    }

    /// POSTs raw bytes with a content type to `path`.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self.http.post(self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("the gateway answers")
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("the gateway answers")
    }

    /// Starts a fake tokenizer worker answering in chunks of `chunk_size`.
    pub async fn fake_tokenizer(&self, chunk_size: usize) -> FakeTokenizer {
        FakeTokenizer::start(self.client.clone(), &self.subjects, chunk_size, 0.0).await
    }

    /// Starts a fake tokenizer worker of model `model` on its own route (the subjects of
    /// `model_token(model)`), answering in chunks of `chunk_size` with vectors shifted by
    /// `bias` (see [`biased_vector`]).
    pub async fn fake_tokenizer_on(
        &self,
        model: &str,
        chunk_size: usize,
        bias: f32,
    ) -> FakeTokenizer {
        let subjects = self.subjects.routed(Some(&model_token(model)));
        FakeTokenizer::start(self.client.clone(), &subjects, chunk_size, bias).await
    }

    /// Answers status queries with `statuses`.
    pub async fn fake_statuses(&self, statuses: Vec<WorkerStatus>) -> JoinHandle<()> {
        let mut subscriber = self
            .client
            .subscribe(self.subjects.status())
            .await
            .expect("subscribe to status");
        sync(&self.client).await;
        let client = self.client.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Some(reply) = message.reply else { continue };
                for status in &statuses {
                    let payload = wire::encode(status).expect("status encodes");
                    let _ = client.publish(reply.clone(), payload.into()).await;
                }
            }
        })
    }
}

/// Returns once the server has processed everything `client` sent before (`flush` only
/// writes the socket): a request round trip on the same connection.
pub async fn sync(client: &async_nats::Client) {
    let _no_responders = client
        .request(client.new_inbox(), bytes::Bytes::new())
        .await;
}

/// A status answer of a worker of `kind` serving the default model, as an up-to-date worker
/// sends it (optional fields it does not report left out).
pub fn status(kind: WorkerKind, id: &str, loaded: bool, in_flight: u64) -> WorkerStatus {
    let gpu = kind == WorkerKind::Gpu;
    let status = serde_json::json!({
        "worker_id": id,
        "kind": kind,
        "model": gateway::config::DEFAULT_MODEL,
        "loaded": loaded,
        "backend": gpu.then_some("cpu-f32"),
        "hidden_size": gpu.then_some(8),
        "batches": 0,
        "sequences": 0,
        "tokens": 0,
        "in_flight": in_flight,
        "started_ms": wire::now_ms(),
    });
    serde_json::from_value(status).expect("a valid worker status")
}

/// The status answer of a loaded worker of `kind` serving `model` on its own route, GPU
/// workers with vectors `hidden_size` wide.
pub fn routed_status(kind: WorkerKind, id: &str, model: &str, hidden_size: u32) -> WorkerStatus {
    WorkerStatus {
        model: model.into(),
        hidden_size: matches!(kind, WorkerKind::Gpu).then_some(hidden_size),
        route: Some(model_token(model)),
        ..status(kind, id, true, 0)
    }
}

/// Dimensions the fake worker answers with when the request names none.
pub const FAKE_DIMS: u32 = 4;

/// The vector the fake worker computes for `text` at `dims`.
pub fn expected_vector(text: &str, dims: u32) -> Vec<f32> {
    (0..dims)
        .map(|i| {
            text.len() as f32 + i as f32 / 10.0 + text.bytes().next().unwrap_or(0) as f32 * 100.0
        })
        .collect()
}

/// The vector a fake worker with `bias` computes for `text` at `dims`: [`expected_vector`]
/// with `bias` added to every component.
pub fn biased_vector(text: &str, dims: u32, bias: f32) -> Vec<f32> {
    expected_vector(text, dims)
        .into_iter()
        .map(|x| x + bias)
        .collect()
}

/// Tokens the fake worker reports for `text`.
pub fn expected_tokens(text: &str) -> u32 {
    text.len() as u32 + 2
}

/// An in-test tokenizer worker; records every request it receives.
pub struct FakeTokenizer {
    /// Requests received, with their reply subjects.
    pub received: Arc<Mutex<Vec<(EmbedRequest, String)>>>,
    /// Set once by [`Self::release_held`]: `!hold` requests answer from then on.
    released: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FakeTokenizer {
    async fn start(
        client: async_nats::Client,
        subjects: &Subjects,
        chunk_size: usize,
        bias: f32,
    ) -> Self {
        let mut subscriber = client
            .queue_subscribe(subjects.requests(), TOKENIZER_QUEUE_GROUP.into())
            .await
            .expect("subscribe to requests");
        sync(&client).await;
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let (released, release) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Some(reply) = message.reply else { continue };
                let request: EmbedRequest =
                    wire::decode(&message.payload).expect("request decodes");
                let receipts = {
                    let mut log = log.lock().unwrap();
                    log.push((request.clone(), reply.to_string()));
                    log.iter().filter(|(r, _)| r.id == request.id).count()
                };
                // `!unacked`: the first copy is lost, as if the worker that took it died.
                if receipts == 1 && request.input.iter().any(|t| t == "!unacked") {
                    continue;
                }
                if request.ack {
                    let queued = wire::QueuedReply {
                        id: request.id.clone(),
                        queued: request.input.len() as u32,
                    };
                    let _ = client
                        .publish(reply.to_string(), wire::encode(&queued).unwrap().into())
                        .await;
                }
                tokio::spawn(answer(
                    client.clone(),
                    reply.to_string(),
                    request,
                    (chunk_size, bias),
                    release.clone(),
                ));
            }
        });
        Self {
            received,
            released,
            task,
        }
    }

    /// Lets every `!hold` request answer, those held now and those still to come.
    pub fn release_held(&self) {
        self.released.send_replace(true);
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<EmbedRequest> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Waits until `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) {
        for _ in 0..400 {
            if self.received.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the fake tokenizer did not receive {n} requests");
    }
}

impl Drop for FakeTokenizer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    client: async_nats::Client,
    reply: String,
    request: EmbedRequest,
    (chunk_size, bias): (usize, f32),
    mut release: watch::Receiver<bool>,
) {
    for text in &request.input {
        if let Some(code) = text.strip_prefix("!error:") {
            let code: ErrorCode =
                serde_json::from_value(serde_json::json!(code)).expect("known code");
            let error = ErrorReply::new(
                Some(request.id.clone()),
                code,
                format!("scripted {code:?} for {}", request.id),
            );
            let _ = client
                .publish(reply, wire::encode(&error).unwrap().into())
                .await;
            return;
        }
        if text == "!silent" {
            return;
        }
        if text == "!garbage" {
            let _ = client
                .publish(reply, b"\xc1not msgpack".to_vec().into())
                .await;
            return;
        }
        if text == "!hold" {
            // An error means the worker is gone: answer anyway.
            let _ = release.wait_for(|released| *released).await;
        }
        if let Some(ms) = text.strip_prefix("!sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().expect("sleep ms"))).await;
        }
    }
    let dims = request.dimensions.unwrap_or(FAKE_DIMS);
    let total = request.input.len() as u32;
    let starts: Vec<usize> = (0..request.input.len())
        .step_by(chunk_size.max(1))
        .collect();
    for &start in starts.iter().rev() {
        let texts = &request.input[start..(start + chunk_size).min(request.input.len())];
        let vectors: Vec<Vec<f32>> = texts.iter().map(|t| biased_vector(t, dims, bias)).collect();
        let chunk = EmbedChunk {
            id: request.id.clone(),
            offset: start as u32,
            count: texts.len() as u32,
            total,
            dims,
            embeddings: wire::f32_le_bytes(vectors.iter().map(Vec::as_slice)),
            tokens: texts.iter().map(|t| expected_tokens(t)).collect(),
            timings: None,
        };
        let _ = client
            .publish(reply.clone(), wire::encode(&chunk).unwrap().into())
            .await;
    }
}

/// The error object of an error response, after checking its shape.
pub async fn error_of(response: reqwest::Response) -> serde_json::Value {
    let body: serde_json::Value = response.json().await.expect("error body is JSON");
    let error = body["error"].clone();
    assert!(error["message"].is_string(), "error body {body}");
    assert!(error["type"].is_string(), "error body {body}");
    assert!(error["code"].is_string(), "error body {body}");
    assert!(error.get("param").is_some(), "error body {body}");
    error
}
