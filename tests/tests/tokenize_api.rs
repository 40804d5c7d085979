//! Tokenize and decode end to end (gateway, tokenizer and CPU GPU workers over a real
//! nats-server): TEI's `/tokenize` and `/decode`, vLLM's `/v1/tokenize` and `/v1/detokenize`
//! against the fixture's golden ids (a query's include its instruction template); long
//! inputs: a 250,000-character input answered with truncation (the model reads exactly
//! `max_length` tokens) and refused without it naming both lengths; left truncation keeping
//! the end of the text; no tokenizer worker answering 503.
//!
//! The tokenizer runs with `max_length` 512 (not the model's 32,768) to keep the CPU forward
//! passes short on a small machine.

mod support;

use std::time::Duration;

use e2e_tests::{NatsServer, tiny_model_dir};
use serde_json::{Value, json};
use support::{
    floats, gateway_config, golden, max_abs_diff, nats_config, start_gpu,
    start_tokenizer_configured, tokenizer_config, wait_for_workers, wait_healthy,
};

/// The tokenizer's token limit in these tests.
const MAX_LENGTH: usize = 512;

async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = http.post(url).json(&body).send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|id| id.as_u64().expect("an id"))
        .collect()
}

/// The golden case `id`.
fn case(golden: &Value, id: &str) -> Value {
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["id"] == id)
        .unwrap_or_else(|| panic!("no case {id}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_decode_and_long_inputs() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer_configured(
        tokenizer_worker::config::TokenizerWorkerConfig {
            max_length: MAX_LENGTH,
            truncate: false,
            ..tokenizer_config(&model)
        },
        nats_config(&server),
    );
    let gpu = start_gpu(&server, &model);
    let nats = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&nats).await;
    let gateway = gateway::spawn(gateway_config(nats_config(&server)))
        .await
        .unwrap();
    let base = gateway.url();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(20)).await;
    let golden = golden();

    // TEI /tokenize: a document and a query, the ids the model reads, with offsets.
    let document = case(&golden, "en_short");
    let query = case(&golden, "query_custom_task");
    let (status, answer) = post(
        &http,
        &format!("{base}/tokenize"),
        json!({"inputs": [document["text"]]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, query_answer) = post(
        &http,
        &format!("{base}/tokenize"),
        json!({"inputs": query["text"], "prompt_name": "query", "instruction": query["instruction"]}),
    )
    .await;
    assert_eq!(status, 200, "{query_answer}");
    for (tokens, case) in [(&answer[0], &document), (&query_answer[0], &query)] {
        let tokens = tokens.as_array().expect("a token list");
        let got: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
        assert_eq!(got, ids(&case["input_ids"]), "{}", case["id"]);
        let formatted = case["formatted"].as_str().unwrap();
        let (last, text) = tokens.split_last().unwrap();
        assert_eq!(last["text"], "<|endoftext|>");
        assert_eq!(
            (&last["special"], &last["start"]),
            (&json!(true), &Value::Null)
        );
        for token in text {
            let (start, stop) = (
                token["start"].as_u64().unwrap() as usize,
                token["stop"].as_u64().unwrap() as usize,
            );
            assert_eq!(token["text"].as_str(), formatted.get(start..stop));
        }
        let joined: String = text.iter().map(|t| t["text"].as_str().unwrap()).collect();
        assert_eq!(joined, formatted, "the tokens cover the formatted text");
    }
    let (status, bare) = post(
        &http,
        &format!("{base}/tokenize"),
        json!({"inputs": document["text"], "add_special_tokens": false}),
    )
    .await;
    assert_eq!(status, 200, "{bare}");
    assert_eq!(
        bare[0].as_array().unwrap().len(),
        ids(&document["input_ids"]).len() - 1
    );

    // vLLM /v1/tokenize: the query's ids, the count and the limit.
    let (status, answer) = post(
        &http,
        &format!("{base}/v1/tokenize"),
        json!({"model": "qwen3-tiny", "prompt": query["text"], "input_type": "query",
               "instruction": query["instruction"], "return_token_strs": true}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ids(&answer["tokens"]), ids(&query["input_ids"]));
    assert_eq!(
        answer["count"],
        query["input_ids"].as_array().unwrap().len()
    );
    assert_eq!(answer["max_model_len"], MAX_LENGTH);
    assert_eq!(
        answer["token_strs"].as_array().unwrap().len(),
        answer["count"]
    );
    let (status, answer) = post(
        &http,
        &format!("{base}/v1/tokenize"),
        json!({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "messages");

    // Decoding round-trips, in both shapes.
    let (status, texts) = post(
        &http,
        &format!("{base}/decode"),
        json!({"ids": [document["input_ids"], query["input_ids"]]}),
    )
    .await;
    assert_eq!(status, 200, "{texts}");
    assert_eq!(texts, json!([document["text"], query["formatted"]]));
    let (status, texts) = post(
        &http,
        &format!("{base}/decode"),
        json!({"ids": document["input_ids"], "skip_special_tokens": false}),
    )
    .await;
    assert_eq!(status, 200, "{texts}");
    assert_eq!(
        texts[0],
        format!("{}<|endoftext|>", document["text"].as_str().unwrap())
    );
    let (status, answer) = post(
        &http,
        &format!("{base}/v1/detokenize"),
        json!({"tokens": document["input_ids"]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["prompt"], document["text"]);
    let (status, answer) = post(
        &http,
        &format!("{base}/decode"),
        json!({"ids": [1, 4_000_000]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error_type"], "Validation");
    assert!(
        answer["error"].as_str().unwrap().contains("4000000"),
        "{answer}"
    );

    // A 250,000-character input: answered with truncation, the model reading exactly
    // `max_length` tokens; refused without, naming both lengths.
    let embeddings = format!("{base}/v1/embeddings");
    let huge = "word ".repeat(50_000);
    assert_eq!(huge.len(), 250_000);
    let (status, answer) = post(&http, &embeddings, json!({"input": huge, "truncate": true})).await;
    assert_eq!(status, 200, "{}", answer["error"]);
    assert_eq!(answer["usage"]["prompt_tokens"], MAX_LENGTH);
    let (status, answer) = post(
        &http,
        &embeddings,
        json!({"input": huge, "truncate": false}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("250000") && message.contains("200000"),
        "{message}"
    );

    // Left truncation keeps the end: the ids read are the last of the whole text's, so the
    // vector is that of the text those ids spell; right truncation keeps the start.
    let long = format!("alpha{}omega", " word".repeat(1000));
    let (_, whole) = post(
        &http,
        &format!("{base}/v1/tokenize"),
        json!({"prompt": long, "add_special_tokens": false}),
    )
    .await;
    let whole = ids(&whole["tokens"]);
    let tail = &whole[whole.len() - (MAX_LENGTH - 1)..];
    let (_, tail_text) = post(
        &http,
        &format!("{base}/v1/detokenize"),
        json!({"tokens": tail}),
    )
    .await;
    let tail_text = tail_text["prompt"].as_str().unwrap().to_string();
    let (_, tail_ids) = post(
        &http,
        &format!("{base}/v1/tokenize"),
        json!({"prompt": tail_text, "add_special_tokens": false}),
    )
    .await;
    assert_eq!(
        ids(&tail_ids["tokens"]),
        tail,
        "the tail spells its own ids"
    );
    let vector = |answer: &Value| floats(&answer["data"][0]["embedding"]);
    let (status, left) = post(
        &http,
        &embeddings,
        json!({"input": long, "truncate": true, "truncation_direction": "left"}),
    )
    .await;
    assert_eq!(status, 200, "{left}");
    assert_eq!(left["usage"]["prompt_tokens"], MAX_LENGTH);
    let (_, tail_vector) = post(&http, &embeddings, json!({"input": tail_text})).await;
    assert_eq!(tail_vector["usage"]["prompt_tokens"], MAX_LENGTH);
    let diff = max_abs_diff(&vector(&left), &vector(&tail_vector));
    assert!(
        diff < 1e-5,
        "left truncation reads the tail: max abs diff {diff}"
    );
    let (_, right) = post(
        &http,
        &embeddings,
        json!({"input": long, "truncate": true, "truncation_direction": "Right"}),
    )
    .await;
    assert!(max_abs_diff(&vector(&right), &vector(&left)) > 1e-3);

    // No tokenizer worker: 503, in TEI's shape on TEI's route.
    tokenizer.stop().await.unwrap();
    let (status, answer) = post(&http, &format!("{base}/tokenize"), json!({"inputs": "a"})).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error_type"], "Unhealthy");
    let (status, answer) = post(
        &http,
        &format!("{base}/v1/tokenize"),
        json!({"prompt": "a"}),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "no_workers");

    gateway.shutdown().await.unwrap();
    gpu.stop().await.unwrap();
}
