//! Model routing end to end, with a real nats-server and the real binaries as child
//! processes: two embedding models of different shapes and a reranker behind one gateway.
//!
//! The default embedding model is the qwen3-tiny fixture (width 32) and the default reranker
//! the qwen3-tiny-reranker fixture, both on the bare subjects. The second embedding model is
//! a random Qwen3 of the 0.6B widths (1024) with one layer, generated for the run by
//! `shared/tools/make-random-qwen3.py` ([`e2e_tests::models`]); its tokenizer and GPU worker
//! are started with `[nats] model_subjects` on its own route, after the gateway has already
//! answered requests: it must be served without restarting the gateway.
//!
//! Checked: the default model's answers against golden.json (no `model`, its name, the seed
//! route, TEI's `/embed`); the second model's against a CPU pass of gpu-worker's f32 engine in
//! this process on the same token ids (full width and Matryoshka), each answer naming its
//! model; `dimensions` checked against each model's own width; the reranker against
//! golden_rerank.json; unknown models refused with 404 `model_not_found` naming the models
//! served; `/v1/models`, `/info` and `/debug` listing every model; requests for both models
//! interleaved concurrently, each answered by its own model (the gateway's cache is on, so
//! the same text under two models must not share an entry).
//!
//! The binaries must be built first: `cargo build -p gateway -p tokenizer-worker -p gpu-worker
//! --bins`.

mod support;

use std::path::Path;
use std::time::Duration;

use common::subjects::model_token;
use common::wire::{InputType, WorkerKind, WorkerStatus};
use e2e_tests::models::RandomModel;
use e2e_tests::process::{Pipeline, Worker};
use e2e_tests::{NatsServer, free_port, tiny_model_dir, tiny_reranker_dir};
use gateway::models::MISS_REFRESH_INTERVAL;
use gpu_worker::cpu::CpuBackend;
use gpu_worker::model::qwen3::Qwen3;
use gpu_worker::ops::BatchLayout;
use serde_json::{Value, json};
use support::{floats, golden, golden_rerank, max_abs_diff, wait_for_kinds, worker_statuses};
use tokenizer_worker::tokenize::{TextTokenizer, TokenizerOptions};
use tokio::time::Instant;

/// The default embedding model's served name (the tiny fixture).
const DEFAULT_MODEL: &str = "qwen3-tiny";

/// The default reranker's served name (the tiny reranker fixture).
const RERANK_MODEL: &str = "qwen3-tiny-reranker";

/// The routed model's served name; clients may leave out the organisation.
const ROUTED_MODEL: &str = "e2e/random-0.6b-1layer";

/// [`ROUTED_MODEL`] without its organisation.
const ROUTED_SHORT_NAME: &str = "random-0.6b-1layer";

/// The routed model: the 0.6B widths, one layer, bf16 as published checkpoints store it.
const ROUTED_SHAPE: RandomModel = RandomModel {
    preset: "0.6b",
    layers: 1,
    dtype: "bf16",
    seed: 7,
};

/// The routed model's vector width (the 0.6B preset's hidden size).
const ROUTED_WIDTH: usize = 1024;

/// The tiny fixture's vector width.
const DEFAULT_WIDTH: usize = 32;

/// Largest difference allowed between the pipeline's vectors and the expected ones.
const TOLERANCE: f32 = 1e-5;

/// Requests per model in the concurrent, interleaved phase.
const CONCURRENT_PER_MODEL: usize = 20;

/// The instruction of the queries sent to the routed model.
const INSTRUCTION: &str = "Given a web search query, retrieve relevant passages";

/// A model's tokenizer and weights loaded in this process: the expected vectors.
struct Reference {
    tokenizer: TextTokenizer,
    model: Qwen3<CpuBackend>,
}

impl Reference {
    /// Loads the tokenizer and the f32 CPU model of `dir`.
    fn load(dir: &Path) -> Self {
        let tokenizer =
            TextTokenizer::from_file(&dir.join("tokenizer.json"), TokenizerOptions::default())
                .expect("the model's tokenizer loads");
        let model = gpu_worker::model::load(dir, &CpuBackend::F32).expect("the model loads");
        Self { tokenizer, model }
    }

    /// The vector of `text` as the pipeline computes it: tokenized with the template of `kind`
    /// (and `instruction`), embedded at the model's full width or cut to `dimensions`.
    fn embed(
        &self,
        text: &str,
        kind: InputType,
        instruction: Option<&str>,
        dimensions: Option<usize>,
    ) -> Vec<f32> {
        let ids = self
            .tokenizer
            .encode(text, kind, instruction, None)
            .expect("the text tokenizes");
        let layout = BatchLayout::from_lengths(&[ids.len()]).expect("one sequence");
        let width = dimensions.unwrap_or(self.model.config().hidden_size);
        self.model
            .embed(&CpuBackend::F32, &ids, &layout, &[width])
            .expect("the CPU pass runs")
            .remove(0)
    }
}

/// `POST {url}` with a JSON body: the status and the JSON answer.
async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = http.post(url).json(&body).send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// `GET {url}`: the JSON answer of a 200.
async fn get(http: &reqwest::Client, url: &str) -> Value {
    let response = http.get(url).send().await.expect("answered");
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.expect("a JSON body")
}

/// Asserts `got` has the length of `want` and lies within [`TOLERANCE`] of it.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: vector length");
    let diff = max_abs_diff(got, want);
    assert!(diff < TOLERANCE, "{what}: max abs diff {diff}");
}

/// The `index`-th vector of an OpenAI embeddings answer.
fn vector(answer: &Value, index: usize) -> Vec<f32> {
    floats(&answer["data"][index]["embedding"])
}

/// A worker process of `binary` (called `label` in messages) serving the model in `dir` as
/// `name`, with `extra` flags and `env` settings added to the pipeline's.
fn worker(
    pipeline: &Pipeline,
    (binary, label): (&str, &str),
    (dir, name): (&Path, &str),
    extra: &[&str],
    env: &[(&'static str, String)],
) -> Worker {
    let mut args = vec![
        "--nats-url".to_string(),
        pipeline.nats_url.clone(),
        "--model-dir".into(),
        dir.display().to_string(),
        "--model-name".into(),
        name.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let env: Vec<_> = pipeline.env.iter().chain(env).cloned().collect();
    Worker::spawn(label, binary, &args, &env)
}

/// A gateway process serving [`DEFAULT_MODEL`] and [`RERANK_MODEL`] by default, its cache on
/// (the configured default size); its base URL.
fn gateway(pipeline: &Pipeline) -> (Worker, String) {
    let port = free_port().to_string();
    let args: Vec<String> = [
        "--nats-url",
        &pipeline.nats_url,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--model",
        DEFAULT_MODEL,
        "--rerank-model",
        RERANK_MODEL,
    ]
    .map(String::from)
    .into();
    let gateway = Worker::spawn("gateway", "gateway", &args, &pipeline.env);
    (gateway, format!("http://127.0.0.1:{port}"))
}

/// Waits until a tokenizer and a GPU worker on route `route` serve; their statuses.
async fn wait_for_route(nats: &async_nats::Client, route: &str) -> Vec<WorkerStatus> {
    // Generous: the GPU worker loads 0.3 GB of weights on a machine shared with builds.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let routed: Vec<WorkerStatus> = worker_statuses(nats)
            .await
            .into_iter()
            .filter(|s| s.route.as_deref() == Some(route) && s.serving())
            .collect();
        let has = |kind| routed.iter().any(|s| s.kind == kind);
        if has(WorkerKind::Tokenizer) && has(WorkerKind::Gpu) {
            return routed;
        }
        assert!(
            Instant::now() < deadline,
            "the workers of route {route} did not come up: {routed:?}"
        );
    }
}

/// Asserts an embeddings request for `model` is refused with 404 `model_not_found` naming
/// each of `served`, in that order.
async fn assert_model_not_found(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: Value,
    served: &[&str],
) {
    let (status, answer) = post(http, &format!("{base}{path}"), body.clone()).await;
    assert_eq!(status, 404, "{body} -> {answer}");
    assert_eq!(answer["error"]["code"], "model_not_found", "{answer}");
    let message = answer["error"]["message"].as_str().expect("a message");
    let positions: Vec<usize> = served
        .iter()
        .map(|name| {
            message
                .find(name)
                .unwrap_or_else(|| panic!("{message:?} does not name {name}"))
        })
        .collect();
    assert!(
        positions.is_sorted(),
        "{message:?} names {served:?} out of order"
    );
}

/// The golden cases of one kind (`is_query`).
fn golden_cases(is_query: bool) -> Vec<Value> {
    golden()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|case| case["is_query"] == is_query)
        .cloned()
        .collect()
}

/// The default model's answers: golden vectors with no `model`, with its name, and through
/// the seed route and TEI's `/embed`; `dimensions` beyond its width refused.
async fn check_default_model(http: &reqwest::Client, base: &str) {
    let documents = golden_cases(false);
    let texts: Vec<&Value> = documents.iter().map(|case| &case["text"]).collect();
    let url = format!("{base}/v1/embeddings");
    for body in [
        json!({"input": texts}),
        json!({"input": texts, "model": DEFAULT_MODEL}),
    ] {
        let (status, answer) = post(http, &url, body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model"], DEFAULT_MODEL);
        for (index, case) in documents.iter().enumerate() {
            let what = format!("default model, {}", case["id"]);
            assert_close(&vector(&answer, index), &floats(&case["embedding"]), &what);
        }
    }
    for case in golden_cases(true) {
        let body = json!({
            "model": DEFAULT_MODEL, "input": case["text"], "input_type": "query",
            "instruction": case["instruction"],
        });
        let (status, answer) = post(http, &url, body).await;
        assert_eq!(status, 200, "{answer}");
        let what = format!("default model, {}", case["id"]);
        assert_close(&vector(&answer, 0), &floats(&case["embedding"]), &what);
    }
    let first = &documents[0];
    let seed = json!({"input": [first["text"]], "is_query": false});
    let (status, answer) = post(http, &format!("{base}/api/v1/embedding/api"), seed).await;
    assert_eq!(status, 200, "{answer}");
    let golden_first = floats(&first["embedding"]);
    assert_close(&floats(&answer[0]), &golden_first, "seed route");
    let (status, answer) = post(
        http,
        &format!("{base}/embed"),
        json!({"inputs": first["text"]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_close(&floats(&answer[0]), &golden_first, "TEI /embed");
    let wide = json!({"input": "x", "model": DEFAULT_MODEL, "dimensions": DEFAULT_WIDTH + 1});
    let (status, answer) = post(http, &url, wide).await;
    assert_eq!(status, 400, "wider than the default model: {answer}");
}

/// The reranker answers a golden pair through `/v1/rerank`, naming itself.
async fn check_reranker(http: &reqwest::Client, base: &str) {
    let golden = golden_rerank();
    let case = &golden["cases"][0];
    let body = json!({
        "model": RERANK_MODEL, "query": case["query"], "documents": [case["document"]],
        "instruction": case["instruction"],
    });
    let (status, answer) = post(http, &format!("{base}/v1/rerank"), body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], RERANK_MODEL);
    let score = answer["results"][0]["relevance_score"]
        .as_f64()
        .expect("a score") as f32;
    let want = case["score"].as_f64().expect("golden score") as f32;
    assert!(
        (score - want).abs() < TOLERANCE,
        "rerank score {score}, golden {want}"
    );
}

/// The routed model's answers: full-width documents and a query against the CPU pass, by full
/// and short name, Matryoshka `dimensions`, and `dimensions` beyond its width refused.
async fn check_routed_model(http: &reqwest::Client, base: &str, reference: &Reference) {
    let url = format!("{base}/v1/embeddings");
    // Golden texts the default model answered already: the cache must not mix the models.
    let texts: Vec<String> = golden_cases(false)
        .iter()
        .map(|case| case["text"].as_str().expect("text").to_string())
        .collect();
    for name in [ROUTED_MODEL, ROUTED_SHORT_NAME] {
        let (status, answer) = post(http, &url, json!({"input": texts, "model": name})).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer["model"], ROUTED_MODEL, "asked for {name}");
        for (index, text) in texts.iter().enumerate() {
            let want = reference.embed(text, InputType::Document, None, None);
            assert_eq!(want.len(), ROUTED_WIDTH);
            assert_close(&vector(&answer, index), &want, &format!("routed {text:?}"));
        }
    }
    let query = "what is the capital of France?";
    let body = json!({
        "model": ROUTED_MODEL, "input": query, "input_type": "query", "instruction": INSTRUCTION,
    });
    let (status, answer) = post(http, &url, body).await;
    assert_eq!(status, 200, "{answer}");
    let want = reference.embed(query, InputType::Query, Some(INSTRUCTION), None);
    assert_close(&vector(&answer, 0), &want, "routed query");
    // Wider than the default model, within the routed one's width.
    let cut = ROUTED_WIDTH / 2;
    let body = json!({"model": ROUTED_MODEL, "input": texts[0], "dimensions": cut});
    let (status, answer) = post(http, &url, body).await;
    assert_eq!(status, 200, "{answer}");
    let want = reference.embed(&texts[0], InputType::Document, None, Some(cut));
    assert_close(&vector(&answer, 0), &want, "routed Matryoshka");
    let body = json!({"model": ROUTED_MODEL, "input": "x", "dimensions": ROUTED_WIDTH + 1});
    let (status, answer) = post(http, &url, body).await;
    assert_eq!(status, 400, "wider than the routed model: {answer}");
}

/// `/v1/models`, `/info` and `/debug` list every model; the routed one with its width and
/// its workers (`routed_workers`, as they answered discovery).
async fn check_listings(http: &reqwest::Client, base: &str, routed_workers: &[WorkerStatus]) {
    let models = get(http, &format!("{base}/v1/models")).await;
    let cards = models["data"].as_array().expect("a model list");
    let ids: Vec<&str> = cards.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, [DEFAULT_MODEL, RERANK_MODEL, ROUTED_MODEL], "{models}");
    assert_eq!(cards[0]["dimensions"], DEFAULT_WIDTH, "{models}");
    let routed = &cards[2];
    assert_eq!(routed["dimensions"], ROUTED_WIDTH, "{models}");
    assert_eq!(routed["workers"], routed_workers.len(), "{models}");
    assert_eq!(routed["task"], "embed", "{models}");
    assert_eq!(cards[1]["task"], "rerank", "{models}");

    let info = get(http, &format!("{base}/info")).await;
    assert_eq!(info["model_id"], DEFAULT_MODEL, "{info}");
    let listed: Vec<&str> = info["models"]
        .as_array()
        .unwrap_or_else(|| panic!("/info lists no models: {info}"))
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(listed, ids, "{info}");

    let debug = get(http, &format!("{base}/debug")).await;
    let entries = debug["models"]
        .as_array()
        .unwrap_or_else(|| panic!("/debug lists no models: {debug}"));
    let entry = entries
        .iter()
        .find(|m| m["model"] == ROUTED_MODEL)
        .unwrap_or_else(|| panic!("/debug does not list {ROUTED_MODEL}: {debug}"));
    assert_eq!(entry["route"], model_token(ROUTED_MODEL), "{entry}");
    assert_eq!(entry["task"], "embed", "{entry}");
    for status in routed_workers {
        let kind = match status.kind {
            WorkerKind::Tokenizer => "tokenizer",
            WorkerKind::Gpu => "gpu",
            other => panic!("a rerank worker on the embedding route: {other:?}"),
        };
        let ids = entry["workers"][kind].as_array();
        assert!(
            ids.is_some_and(|ids| ids.contains(&json!(status.worker_id))),
            "/debug does not list {kind} worker {} of {ROUTED_MODEL}: {entry}",
            status.worker_id
        );
    }
    let default = entries
        .iter()
        .find(|m| m["model"] == DEFAULT_MODEL)
        .unwrap_or_else(|| panic!("/debug does not list {DEFAULT_MODEL}: {debug}"));
    assert_eq!(default["route"], Value::Null, "{default}");
}

/// Requests for both models, interleaved and all in flight at once, each text new (no cache
/// hit): every answer comes from its own model.
async fn check_interleaved(
    http: &reqwest::Client,
    base: &str,
    default: &Reference,
    routed: &Reference,
) {
    let url = format!("{base}/v1/embeddings");
    let requests = (0..2 * CONCURRENT_PER_MODEL).map(|k| {
        let (name, reference) = if k % 2 == 0 {
            (DEFAULT_MODEL, default)
        } else {
            (ROUTED_MODEL, routed)
        };
        let text = format!("interleaved request {k}: the same words under two models");
        let want = reference.embed(&text, InputType::Document, None, None);
        let body = json!({"model": name, "input": text});
        let url = url.clone();
        async move {
            let (status, answer) = post(http, &url, body).await;
            assert_eq!(status, 200, "request {k}: {answer}");
            assert_eq!(answer["model"], name, "request {k}");
            assert_close(&vector(&answer, 0), &want, &format!("request {k} ({name})"));
        }
    });
    futures::future::join_all(requests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_embedding_models_and_a_reranker_behind_one_gateway() {
    let routed_dir = ROUTED_SHAPE.dir();
    let default_reference = Reference::load(&tiny_model_dir());
    let routed_reference = Reference::load(&routed_dir);
    assert_eq!(routed_reference.model.config().hidden_size, ROUTED_WIDTH);

    let server = NatsServer::start();
    let pipeline = Pipeline::new(server.url(), &[]);
    let _tokenizer = pipeline.tokenizer("default-tokenizer");
    let _gpu = pipeline.gpu("default-gpu");
    let reranker = (tiny_reranker_dir(), RERANK_MODEL);
    let rerank_pool = |process, extra: &[&str]| {
        let flags = [&["--task", "rerank"], extra].concat();
        worker(&pipeline, process, (&reranker.0, reranker.1), &flags, &[])
    };
    let _rerank_tokenizer = rerank_pool(
        ("tokenizer-worker", "rerank-tokenizer"),
        &["--threads", "1"],
    );
    let _rerank_gpu = rerank_pool(("gpu-worker", "rerank-gpu"), &["--backend", "cpu"]);
    let nats = async_nats::connect(server.url()).await.expect("connect");
    wait_for_kinds(
        &nats,
        &[
            (WorkerKind::Tokenizer, 1),
            (WorkerKind::Gpu, 1),
            (WorkerKind::RerankTokenizer, 1),
            (WorkerKind::RerankGpu, 1),
        ],
    )
    .await;
    let (_gateway, base) = gateway(&pipeline);
    let probe = json!({"input": "ready?"});
    e2e_tests::harness::wait_serving(&base, "/v1/embeddings", probe, Duration::from_secs(30)).await;
    let http = reqwest::Client::new();

    // 1. Before the second model exists: the default model and the reranker serve, the
    //    second model's name is unknown.
    check_default_model(&http, &base).await;
    check_reranker(&http, &base).await;
    let unknown = json!({"model": ROUTED_MODEL, "input": "x"});
    assert_model_not_found(&http, &base, "/v1/embeddings", unknown, &[DEFAULT_MODEL]).await;
    let last_miss = Instant::now();

    // 2. The second model's pool joins the running stack on its own route.
    let routed_env = [("QWEN3_EMBED__NATS__MODEL_SUBJECTS", "true".to_string())];
    let routed_pool = |process, extra: &[&str]| {
        worker(
            &pipeline,
            process,
            (&routed_dir, ROUTED_MODEL),
            extra,
            &routed_env,
        )
    };
    let _routed_tokenizer = routed_pool(
        ("tokenizer-worker", "routed-tokenizer"),
        &["--threads", "1"],
    );
    let _routed_gpu = routed_pool(("gpu-worker", "routed-gpu"), &["--backend", "cpu"]);
    let routed_workers = wait_for_route(&nats, &model_token(ROUTED_MODEL)).await;
    assert!(
        routed_workers.iter().all(|s| s.model == ROUTED_MODEL),
        "{routed_workers:?}"
    );
    // The gateway looks again for a model it does not know at most once a second.
    tokio::time::sleep_until(last_miss + MISS_REFRESH_INTERVAL).await;

    // 3. Served at once, by the same gateway, each model with its own vectors and width.
    check_routed_model(&http, &base, &routed_reference).await;
    check_default_model(&http, &base).await;
    check_reranker(&http, &base).await;

    // 4. Unknown models are refused naming the models served for the task.
    let unknown = json!({"model": "no-such-model", "input": "x"});
    let embedders = [DEFAULT_MODEL, ROUTED_MODEL];
    assert_model_not_found(&http, &base, "/v1/embeddings", unknown, &embedders).await;
    // An embedding model is not a reranker.
    let rerank = json!({"model": ROUTED_MODEL, "query": "q", "documents": ["d"]});
    assert_model_not_found(&http, &base, "/v1/rerank", rerank, &[RERANK_MODEL]).await;

    // 5. Every model listed, the second with its width and workers.
    check_listings(&http, &base, &routed_workers).await;

    // 6. Both models at once, interleaved.
    check_interleaved(&http, &base, &default_reference, &routed_reference).await;
}
