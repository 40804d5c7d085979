//! The clients users arrive with, against the real stack (nats-server, tokenizer and CPU GPU
//! workers for the tiny model and its reranker, the gateway with an API key): the `cohere`
//! SDK (`ClientV2.embed` with every embedding type, `rerank`) and `huggingface_hub`'s
//! `InferenceClient.feature_extraction` and `.sentence_similarity` (at `/similarity` and at
//! `/`), every vector and score compared with golden.json (quantized ones with the reference
//! quantization of the golden vectors); TEI's `/embed` and `/info` over HTTP with TEI's error
//! body; `/v1/models` listing both models; CORS preflights over
//! HTTP (tests/tests/cors_browser.rs checks them from pages in headless Chromium).

mod support;

use std::time::Duration;

use common::wire::WorkerKind;
use e2e_tests::{NatsServer, repo_root, tiny_model_dir, tiny_reranker_dir};
use serde_json::{Value, json};
use support::{
    floats, gateway_config, golden, max_abs_diff, nats_config, start_gpu, start_rerank_gpu,
    start_rerank_tokenizer, start_tokenizer, tokenizer_config, wait_for_kinds, wait_healthy,
};

const API_KEY: &str = "sk-peer-clients-test";
const MODEL: &str = "Qwen/Qwen3-Embedding-tiny";
const RERANK_MODEL: &str = "Qwen/Qwen3-Reranker-tiny";

/// Drives both SDKs; prints one JSON object of what they returned.
const CLIENTS: &str = r#"
import json, sys
import cohere
from huggingface_hub import InferenceClient
base, key, model, rerank_model = sys.argv[1:5]
documents, queries = json.loads(sys.argv[5]), json.loads(sys.argv[6])
co = cohere.ClientV2(api_key=key, base_url=base)
kinds = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
e = co.embed(model=model, texts=documents, input_type="search_document", embedding_types=kinds).embeddings
out = {"documents": {"float": e.float_, "int8": e.int8, "uint8": e.uint8, "binary": e.binary,
                     "ubinary": e.ubinary, "base64": e.base64}}
out["queries"] = co.embed(model=model, texts=queries, input_type="search_query",
                          embedding_types=["float"]).embeddings.float_
ranked = co.rerank(model=rerank_model, query=queries[0], documents=documents, top_n=2)
out["rerank"] = [[r.index, r.relevance_score] for r in ranked.results]
try:
    co.embed(model="embed-v4.0", texts=documents[:1], input_type="search_document")
except cohere.core.api_error.ApiError as error:
    out["error"] = [error.status_code, error.body]
hub = InferenceClient(base_url=base, api_key=key)
out["hub"] = hub.feature_extraction(documents[0]).tolist()
out["hub_query"] = InferenceClient(model=base + "/embed", api_key=key).feature_extraction(
    queries[0], prompt_name="query").tolist()
out["similarity"] = InferenceClient(model=base + "/similarity", api_key=key).sentence_similarity(
    documents[0], other_sentences=documents[1:4])
out["similarity_at_root"] = hub.sentence_similarity(documents[0], other_sentences=documents[1:4])
print(json.dumps(out))
"#;

fn assert_close(got: &Value, want: &Value, what: &str) {
    let (got, want) = (floats(got), floats(want));
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 2e-5, "{what}: max abs diff {diff}");
}

/// Integers of a JSON list.
fn ints(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|x| x.as_i64().expect("an integer"))
        .collect()
}

/// The reference int8 of docs/api.md on a golden vector: round(x * 127 * sqrt(d) / 4),
/// half away from zero, clamped to [-127, 127].
fn reference_int8(vector: &[f32]) -> Vec<i64> {
    let scale = 127.0 * (vector.len() as f64).sqrt() / 4.0;
    vector
        .iter()
        .map(|&x| (f64::from(x) * scale).round().clamp(-127.0, 127.0) as i64)
        .collect()
}

/// Sign bits of `vector`, most significant first, zero-padded (numpy.packbits).
fn reference_ubinary(vector: &[f32]) -> Vec<i64> {
    vector
        .chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .map(|(bit, &x)| i64::from(x > 0.0) << (7 - bit))
                .sum()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_and_hub_clients_get_golden_vectors() {
    let server = NatsServer::start();
    let _stages = [
        start_tokenizer(&server, &tiny_model_dir()),
        start_gpu(&server, &tiny_model_dir()),
        start_rerank_tokenizer(&server, &tiny_reranker_dir()),
        start_rerank_gpu(&server, &tiny_reranker_dir()),
    ];
    let nats = async_nats::connect(server.url()).await.unwrap();
    let kinds = [
        (WorkerKind::Tokenizer, 1),
        (WorkerKind::Gpu, 1),
        (WorkerKind::RerankTokenizer, 1),
        (WorkerKind::RerankGpu, 1),
    ];
    wait_for_kinds(&nats, &kinds).await;
    let mut config = gateway_config(nats_config(&server));
    config.model = MODEL.into();
    config.rerank_model = RERANK_MODEL.into();
    config.api_keys = gateway::api_keys::ApiKeys::from_list(API_KEY, "test").unwrap();
    let gateway = gateway::spawn(config).await.unwrap();
    let base = gateway.url();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(20)).await;

    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    let documents: Vec<&Value> = cases.iter().filter(|c| c["is_query"] == false).collect();
    // Queries with the workers' default instruction (Cohere and TEI send none).
    let default_task = "Given a web search query, retrieve relevant passages that answer the query";
    let queries: Vec<&Value> = cases
        .iter()
        .filter(|c| c["is_query"] == true && c["instruction"] == default_task)
        .collect();
    assert!(!queries.is_empty());
    let texts = |cases: &[&Value]| json!(cases.iter().map(|c| &c["text"]).collect::<Vec<_>>());

    let output = tokio::process::Command::new(repo_root().join(".venv/bin/python"))
        .args(["-c", CLIENTS, &base, API_KEY, MODEL, RERANK_MODEL])
        .arg(texts(&documents).to_string())
        .arg(texts(&queries).to_string())
        .output()
        .await
        .expect("run .venv/bin/python (deploy/local/setup.sh installs cohere and huggingface_hub)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).expect("JSON output");

    let by_type = &out["documents"];
    for (i, case) in documents.iter().enumerate() {
        let id = case["id"].as_str().unwrap();
        let want = floats(&case["embedding"]);
        assert_close(&by_type["float"][i], &case["embedding"], id);
        // The gateway quantizes its own floats, which differ from golden by < 2e-5: a
        // component that close to a rounding boundary may land one step away.
        let int8 = ints(&by_type["int8"][i]);
        let reference = reference_int8(&want);
        let off = int8
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .max();
        assert_eq!(int8.len(), want.len(), "{id} int8 width");
        assert!(off <= Some(1), "{id}: int8 {int8:?} against {reference:?}");
        let uint8: Vec<i64> = int8.iter().map(|q| q + 128).collect();
        assert_eq!(
            ints(&by_type["uint8"][i]),
            uint8,
            "{id} uint8 is int8 + 128"
        );
        let gateway_floats = floats(&by_type["float"][i]);
        assert_eq!(
            ints(&by_type["ubinary"][i]),
            reference_ubinary(&gateway_floats),
            "{id} ubinary"
        );
        let binary: Vec<i64> = reference_ubinary(&gateway_floats)
            .iter()
            .map(|b| b - 128)
            .collect();
        assert_eq!(ints(&by_type["binary"][i]), binary, "{id} binary");
        let bytes = base64_decode(by_type["base64"][i].as_str().unwrap());
        let decoded: Vec<f32> = bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(decoded, gateway_floats, "{id} base64");
    }
    for (i, case) in queries.iter().enumerate() {
        assert_close(
            &out["queries"][i],
            &case["embedding"],
            "cohere search_query",
        );
    }
    assert_close(
        &out["hub"][0],
        &documents[0]["embedding"],
        "hub feature_extraction",
    );
    assert_close(
        &out["hub_query"][0],
        &queries[0]["embedding"],
        "hub prompt_name=query",
    );

    // TEI's /similarity through the hub client: the cosine of golden's (normalized) vectors.
    let similarity = floats(&out["similarity"]);
    let source = floats(&documents[0]["embedding"]);
    let want: Vec<f32> = documents[1..4]
        .iter()
        .map(|case| {
            let other = floats(&case["embedding"]);
            source.iter().zip(&other).map(|(a, b)| a * b).sum()
        })
        .collect();
    assert_eq!(similarity.len(), 3, "{}", out["similarity"]);
    assert!(
        max_abs_diff(&similarity, &want) < 1e-5,
        "similarity {similarity:?} against golden {want:?}"
    );
    // The same through `InferenceClient(base_url=...)`, which posts to `/`.
    assert_eq!(floats(&out["similarity_at_root"]), similarity);

    // Rerank: the best two of the documents, highest first, scores in (0, 1).
    let ranked = out["rerank"].as_array().unwrap();
    assert_eq!(ranked.len(), 2);
    let score = |i: usize| ranked[i][1].as_f64().unwrap();
    assert!(
        score(0) >= score(1) && score(0) < 1.0 && score(1) > 0.0,
        "{ranked:?}"
    );

    // Another model: 404 with Cohere's {message}.
    assert_eq!(out["error"][0], 404, "{}", out["error"]);
    assert!(
        out["error"][1]["message"]
            .as_str()
            .unwrap()
            .contains("embed-v4.0"),
        "{}",
        out["error"]
    );

    // TEI: a bad /embed answers {error, error_type}.
    let answer = http
        .post(format!("{base}/embed"))
        .bearer_auth(API_KEY)
        .json(&json!({"inputs": ["a"], "prompt_name": "summary"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error_type"], "Validation", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("prompt_name"),
        "{body}"
    );

    // TEI: normalize false answers the pooled vector, golden's norm before normalizing.
    let answer: Value = http
        .post(format!("{base}/embed"))
        .bearer_auth(API_KEY)
        .json(&json!({"inputs": documents[0]["text"], "normalize": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pooled = floats(&answer[0]);
    let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt();
    let want = documents[0]["norm_before_normalize"].as_f64().unwrap() as f32;
    assert!(
        (norm - want).abs() < 1e-3 * want,
        "normalize: false gave norm {norm}, golden {want}"
    );

    // TEI /info: what discovery knows (a busy worker may miss one status round: ask again).
    let mut info = Value::Null;
    for _ in 0..50 {
        info = http
            .get(format!("{base}/info"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !info["model_dtype"].is_null() && !info["max_input_length"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(info["model_id"], MODEL);
    assert_eq!(info["model_dtype"], "float32");
    assert_eq!(info["model_type"]["embedding"]["pooling"], "last_token");
    // The tokenizer worker's max_length (its default in these tests).
    let max_length = info["max_input_length"]
        .as_u64()
        .expect("known once a worker answers");
    assert!(max_length > 0, "{info}");
    // The tokenizer worker's max_batch_tokens (its default in these tests).
    let max_batch_tokens = tokenizer_config(&tiny_model_dir()).max_batch_tokens;
    assert_eq!(info["max_batch_tokens"], max_batch_tokens, "{info}");
    assert_eq!(info["tokenization_workers"], 1);
    assert!(info["max_client_batch_size"].as_u64().unwrap() >= 1);

    // /v1/models: both models, with kind, dimensions and input length.
    // A discovery's window (`status_wait_ms`) may miss a worker busy on a loaded machine:
    // ask again until the reranker and the embedding model's tokenizer (its input length)
    // are heard, for at most 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let models: Value = loop {
        let models: Value = http
            .get(format!("{base}/v1/models"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let data = models["data"].as_array().unwrap();
        let complete = data.len() == 2
            && data
                .iter()
                .all(|model| !model["max_input_length"].is_null());
        if complete || tokio::time::Instant::now() > deadline {
            break models;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let data = models["data"].as_array().unwrap();
    let model = |id: &str| data.iter().find(|m| m["id"] == id).cloned();
    let embedding = model(MODEL).expect("the embedding model is listed");
    assert_eq!(embedding["kind"], "embedding");
    assert_eq!(
        embedding["dimensions"],
        floats(&documents[0]["embedding"]).len()
    );
    assert_eq!(embedding["max_input_length"], max_length, "{models}");
    let reranker = model(RERANK_MODEL).expect("the rerank model is listed");
    assert_eq!(reranker["kind"], "rerank");
    assert!(
        reranker["max_input_length"].as_u64().unwrap() > 0,
        "{reranker}"
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// A preflight as a browser sends it from `origin` for a keyed JSON POST.
async fn preflight(http: &reqwest::Client, base: &str, origin: &str) -> reqwest::Response {
    http.request(reqwest::Method::OPTIONS, format!("{base}/v1/embeddings"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_allowed_origins_only() {
    let server = NatsServer::start();
    let allowed = "http://127.0.0.1:9";
    let mut config = gateway_config(nats_config(&server));
    config.api_keys = gateway::api_keys::ApiKeys::from_list(API_KEY, "test").unwrap();
    config.cors_allowed_origins = vec![allowed.into()];
    let gateway = gateway::spawn(config).await.unwrap();
    let base = gateway.url();
    let http = reqwest::Client::new();

    // The preflight carries no key and is answered, for the allowed origin only.
    let answer = preflight(&http, &base, allowed).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    let headers = answer.headers();
    assert_eq!(headers["access-control-allow-origin"], allowed);
    let allowed_headers = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    assert!(headers.get("access-control-allow-credentials").is_none());
    let answer = preflight(&http, &base, "http://evil.example").await;
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // Answers (refusals too) carry the header for the allowed origin, so the page can read them.
    let answer = http
        .post(format!("{base}/v1/embeddings"))
        .header("Origin", allowed)
        .json(&json!({"input": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(answer.headers()["access-control-allow-origin"], allowed);

    // Without the setting: no CORS header at all (as before).
    let plain = gateway::spawn(gateway_config(nats_config(&server)))
        .await
        .unwrap();
    let answer = preflight(&http, &plain.url(), allowed).await;
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
