//! Reranking end to end: real nats-server, a rerank tokenizer worker and a CPU rerank GPU
//! worker on the qwen3-tiny-reranker fixture, and the gateway. Every golden case through the
//! NATS subject (`logit_yes`, `logit_no` within 1e-4, score within 1e-5, token counts exact),
//! `POST /v1/rerank` and TEI's `POST /rerank` (probability and raw logit difference); the
//! same scores whatever the batch composition; bad input answered with clear errors; 503
//! while no rerank worker listens. A rerank request that sets `ack` is acknowledged once,
//! with its document count, as embedding requests are.

mod support;

use std::time::Duration;

use common::wire::{self, ErrorCode, QueuedReply, RerankReply, RerankRequest, WorkerKind};
use e2e_tests::{NatsServer, tiny_reranker_dir};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{
    RerankAnswer, gateway_config, golden_rerank, nats_config, next_reply, publish_for_replies,
    rerank_over_nats, start_rerank_gpu, start_rerank_tokenizer, wait_for_kinds,
};

/// Served reranker name in these tests.
const RERANK_MODEL: &str = "Qwen/Qwen3-Reranker-tiny";

fn request(
    id: &str,
    query: &str,
    documents: Vec<String>,
    instruction: Option<&str>,
) -> RerankRequest {
    RerankRequest {
        id: id.into(),
        query: query.into(),
        documents,
        instruction: instruction.map(String::from),
        truncate: None,
        deadline_ms: None,
        timeout_ms: None,
        ack: false,
        ..Default::default()
    }
}

fn text(case: &Value, field: &str) -> String {
    case[field].as_str().expect("string field").to_string()
}

fn number(case: &Value, field: &str) -> f32 {
    case[field].as_f64().expect("number field") as f32
}

/// Asserts one document's NATS answer against its golden case.
fn assert_golden(answer: &RerankAnswer, case: &Value) {
    let id = &case["id"];
    let d_yes = (answer.logit_yes - number(case, "logit_yes")).abs();
    let d_no = (answer.logit_no - number(case, "logit_no")).abs();
    let d_score = (answer.score - number(case, "score")).abs();
    assert!(d_yes < 1e-4, "case {id}: logit_yes off by {d_yes}");
    assert!(d_no < 1e-4, "case {id}: logit_no off by {d_no}");
    assert!(d_score < 1e-5, "case {id}: score off by {d_score}");
    let ids = case["input_ids"].as_array().expect("input_ids").len();
    assert_eq!(answer.tokens as usize, ids, "case {id}: prompt tokens");
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = http.post(url).json(&body).send().await.expect("answer");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_matches_golden_over_nats_and_http() {
    let server = NatsServer::start();
    let mut config = gateway_config(nats_config(&server));
    config.rerank_model = RERANK_MODEL.into();
    config.max_inputs_per_request = 16;
    let gateway = gateway::spawn(config).await.unwrap();
    let base = gateway.url();
    let http = reqwest::Client::new();
    let golden = golden_rerank();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);

    // 1. No rerank worker listens: 503 `no_workers` (once the gateway is connected; until
    //    then it answers 503 `bus_unavailable`).
    let body = json!({"query": "q", "documents": ["d"]});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = post(&http, format!("{base}/v1/rerank"), body.clone()).await;
        assert_eq!(status, 503, "{answer}");
        if answer["error"]["code"] == "no_workers" {
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("rerank")
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = post(
        &http,
        format!("{base}/rerank"),
        json!({"query": "q", "texts": ["d"]}),
    )
    .await;
    // TEI's route answers TEI's error body.
    assert_eq!(
        (status, &answer["error_type"]),
        (503, &json!("Unhealthy")),
        "{answer}"
    );

    let model = tiny_reranker_dir();
    let tokenizer = start_rerank_tokenizer(&server, &model);
    let gpu = start_rerank_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_kinds(
        &client,
        &[(WorkerKind::RerankTokenizer, 1), (WorkerKind::RerankGpu, 1)],
    )
    .await;

    // 2. NATS: every golden case as a request of its own.
    for (k, case) in cases.iter().enumerate() {
        let request = request(
            &format!("case-{k}"),
            &text(case, "query"),
            vec![text(case, "document")],
            case["instruction"].as_str(),
        );
        let answers = rerank_over_nats(&client, &request).await.expect("scores");
        assert_eq!(answers.len(), 1);
        assert_golden(&answers[0], case);
    }

    // 3. Batch composition: every case's document under pair0's query, in one request, in
    //    one request per document, and in concurrent requests: the same scores.
    let query = text(&cases[0], "query");
    let documents: Vec<String> = cases.iter().map(|c| text(c, "document")).collect();
    let together = rerank_over_nats(&client, &request("all", &query, documents.clone(), None))
        .await
        .expect("scores");
    assert_golden(&together[0], &cases[0]);
    assert_golden(&together[1], &cases[1]);
    let concurrent = futures::future::join_all(documents.iter().enumerate().map(|(k, d)| {
        let client = client.clone();
        let request = request(&format!("one-{k}"), &query, vec![d.clone()], None);
        async move { rerank_over_nats(&client, &request).await.expect("scores") }
    }))
    .await;
    for (k, alone) in concurrent.iter().enumerate() {
        let single = rerank_over_nats(
            &client,
            &request("s", &query, vec![documents[k].clone()], None),
        )
        .await
        .expect("scores");
        for other in [&alone[0], &single[0]] {
            assert!(
                (other.score - together[k].score).abs() <= 1e-6
                    && (other.logit_yes - together[k].logit_yes).abs() <= 1e-5
                    && (other.logit_no - together[k].logit_no).abs() <= 1e-5,
                "document {k}: {other:?} alone, {:?} in one request",
                together[k]
            );
            assert_eq!(other.tokens, together[k].tokens);
        }
    }

    // 4. NATS bad input: error replies naming the request.
    let error = rerank_over_nats(&client, &request("empty", "q", Vec::new(), None))
        .await
        .unwrap_err();
    assert_eq!(error.error.code, ErrorCode::InvalidRequest);
    assert_eq!(error.id.as_deref(), Some("empty"));

    // 5. `/v1/rerank`: every golden case.
    for case in cases {
        let (status, answer) = post(
            &http,
            format!("{base}/v1/rerank"),
            json!({
                "model": RERANK_MODEL,
                "query": case["query"],
                "documents": [case["document"]],
                "instruction": case["instruction"],
            }),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model"], RERANK_MODEL);
        let result = &answer["results"][0];
        assert_eq!(result["index"], 0);
        assert!(result.get("document").is_none(), "{answer}");
        let score = result["relevance_score"].as_f64().unwrap() as f32;
        assert!(
            (score - number(case, "score")).abs() < 1e-5,
            "case {}: {score}",
            case["id"]
        );
        let ids = case["input_ids"].as_array().unwrap().len();
        assert_eq!(answer["usage"]["total_tokens"], ids);
    }

    // 6. `/v1/rerank` with many documents: sorted by score, `top_n`, documents returned
    //    (as strings and as `{text}` objects, the way Cohere and Jina clients send them).
    let mut sent: Vec<Value> = documents.iter().map(|d| json!(d)).collect();
    sent[1] = json!({"text": documents[1]});
    let (status, answer) = post(
        &http,
        format!("{base}/v1/rerank"),
        json!({"query": query, "documents": sent, "top_n": 3, "return_documents": true}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let mut expected: Vec<usize> = (0..documents.len()).collect();
    expected.sort_by(|&a, &b| {
        let key = |k: usize| together[k].logit_yes - together[k].logit_no;
        key(b).total_cmp(&key(a))
    });
    for (rank, result) in results.iter().enumerate() {
        let index = result["index"].as_u64().unwrap() as usize;
        assert_eq!(index, expected[rank], "{answer}");
        assert_eq!(result["document"]["text"], documents[index].as_str());
        let score = result["relevance_score"].as_f64().unwrap() as f32;
        assert!((score - together[index].score).abs() <= 1e-6);
    }
    let total: u32 = together.iter().map(|a| a.tokens).sum();
    assert_eq!(answer["usage"]["total_tokens"], total);

    // 7. TEI `/rerank`: probabilities, raw logit differences, texts.
    for case in cases {
        let body = json!({
            "query": case["query"],
            "texts": [case["document"]],
            "instruction": case["instruction"],
        });
        let (status, answer) = post(&http, format!("{base}/rerank"), body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        let score = answer[0]["score"].as_f64().unwrap() as f32;
        assert!(
            (score - number(case, "score")).abs() < 1e-5,
            "case {}: {score}",
            case["id"]
        );
        assert!(answer[0].get("text").is_none());

        let mut raw = body;
        raw["raw_scores"] = json!(true);
        raw["return_text"] = json!(true);
        let (status, answer) = post(&http, format!("{base}/rerank"), raw).await;
        assert_eq!(status, 200, "{answer}");
        let logit = answer[0]["score"].as_f64().unwrap() as f32;
        let want = number(case, "logit_yes") - number(case, "logit_no");
        assert!(
            (logit - want).abs() < 1e-4,
            "case {}: {logit} vs {want}",
            case["id"]
        );
        assert_eq!(answer[0]["text"], case["document"]);
        assert_eq!(answer[0]["index"], 0);
    }
    let (status, answer) = post(
        &http,
        format!("{base}/rerank"),
        json!({"query": query, "texts": documents}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let order: Vec<usize> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(order, expected);

    // 8. Bad input over HTTP: clear 4xx naming the field.
    let too_many: Vec<String> = (0..17).map(|k| format!("doc {k}")).collect();
    for (route, body, status, param) in [
        (
            "/v1/rerank",
            json!({"query": "q", "documents": []}),
            400,
            "documents",
        ),
        ("/v1/rerank", json!({"documents": ["d"]}), 400, "query"),
        ("/v1/rerank", json!({"query": "q"}), 400, "documents"),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": too_many}),
            400,
            "documents",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["d"], "top_n": 0}),
            400,
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": [1]}),
            400,
            "documents[0]",
        ),
        (
            "/v1/rerank",
            json!({"model": "other", "query": "q", "documents": ["d"]}),
            404,
            "model",
        ),
        ("/rerank", json!({"query": "q", "texts": []}), 400, "texts"),
        ("/rerank", json!({"texts": ["d"]}), 400, "query"),
        ("/rerank", json!({"query": "q", "texts": "d"}), 400, "texts"),
        (
            "/rerank",
            json!({"query": "q", "texts": ["d"], "raw_scores": "yes"}),
            400,
            "raw_scores",
        ),
    ] {
        let (got, answer) = post(&http, format!("{base}{route}"), body.clone()).await;
        assert_eq!(got, status, "{route} {body}: {answer}");
        if route == "/rerank" {
            // TEI's body: `{error, error_type}`, the message naming the field.
            assert_eq!(answer["error_type"], "Validation", "{body}: {answer}");
            let message = answer["error"].as_str().unwrap();
            assert!(message.contains(param), "{body}: {answer}");
            continue;
        }
        assert_eq!(answer["error"]["param"], param, "{route} {body}: {answer}");
    }

    // 9. `/debug` and `/metrics` show the rerank workers (discovery refreshes its snapshot
    // on its own schedule, so poll until both kinds are in it).
    let give_up = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let debug: Value = http
            .get(format!("{base}/debug"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kinds: Vec<&str> = debug["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w["kind"].as_str())
            .collect();
        if kinds.contains(&"rerank_tokenizer") && kinds.contains(&"rerank_gpu") {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "rerank workers missing from /debug after 15 s: {debug}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"embed_workers{kind="rerank_gpu"} 1"#),
        "{metrics}"
    );

    gateway.shutdown().await.unwrap();
    tokenizer.stop().await.unwrap();
    gpu.stop().await.unwrap();
}

/// Records one reply to a rerank request: scores by document, acknowledgements, errors.
fn record(
    message: async_nats::Message,
    answers: &mut [Option<RerankAnswer>],
    acks: &mut Vec<QueuedReply>,
    errors: &mut Vec<wire::ErrorReply>,
) {
    match wire::decode::<RerankReply>(&message.payload).expect("reply decodes") {
        RerankReply::Chunk(chunk) => {
            chunk.validate().expect("consistent chunk");
            for k in 0..chunk.count as usize {
                answers[chunk.offset as usize + k] = Some(RerankAnswer {
                    score: chunk.scores[k],
                    logit_yes: chunk.logit_yes[k],
                    logit_no: chunk.logit_no[k],
                    tokens: chunk.tokens[k],
                });
            }
        }
        RerankReply::Queued(queued) => acks.push(queued),
        RerankReply::Error(error) => errors.push(error),
    }
}

/// Every reply to one rerank request: its chunks' scores by document, its acknowledgements
/// and its errors, gathered until the answer is complete (every score, and an
/// acknowledgement when `ack`; or an error) and then for half a second more, so a second
/// acknowledgement would be seen.
async fn rerank_replies(
    client: &async_nats::Client,
    request: &RerankRequest,
) -> (
    Vec<Option<RerankAnswer>>,
    Vec<QueuedReply>,
    Vec<wire::ErrorReply>,
) {
    let mut replies = publish_for_replies(client, "embed.rerank", request, None).await;
    let mut answers = vec![None; request.documents.len()];
    let (mut acks, mut errors) = (Vec::new(), Vec::new());
    while errors.is_empty()
        && (answers.iter().any(Option::is_none) || (request.ack && acks.is_empty()))
    {
        let message = next_reply(&mut replies).await;
        record(message, &mut answers, &mut acks, &mut errors);
    }
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), replies.next()).await
    {
        record(message, &mut answers, &mut acks, &mut errors);
    }
    (answers, acks, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_requests_that_ask_are_acknowledged_once() {
    let server = NatsServer::start();
    let model = tiny_reranker_dir();
    let tokenizer = start_rerank_tokenizer(&server, &model);
    let gpu = start_rerank_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_kinds(
        &client,
        &[(WorkerKind::RerankTokenizer, 1), (WorkerKind::RerankGpu, 1)],
    )
    .await;
    let golden = golden_rerank();
    let case = &golden["cases"][0];

    // 1. `ack: true`, three documents: the scores, and one acknowledgement of 3 documents.
    let acked = RerankRequest {
        ack: true,
        ..request(
            "acked",
            &text(case, "query"),
            vec![text(case, "document"); 3],
            case["instruction"].as_str(),
        )
    };
    let (answers, acks, errors) = rerank_replies(&client, &acked).await;
    assert!(errors.is_empty(), "{errors:?}");
    for answer in &answers {
        assert_golden(answer.as_ref().expect("every document scored"), case);
    }
    assert_eq!(
        acks,
        [QueuedReply {
            id: "acked".into(),
            queued: 3
        }]
    );

    // 2. Without `ack`: no acknowledgement.
    let unacked = RerankRequest {
        ack: false,
        ..acked.clone()
    };
    let (answers, acks, errors) = rerank_replies(&client, &unacked).await;
    assert!(errors.is_empty() && answers.iter().all(Option::is_some));
    assert!(acks.is_empty(), "{acks:?}");

    // 3. A refused request is never acknowledged: its error is its only reply.
    let refused = RerankRequest {
        documents: Vec::new(),
        ..acked
    };
    let (_, acks, errors) = rerank_replies(&client, &refused).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].error.code, ErrorCode::InvalidRequest);
    assert!(acks.is_empty(), "{acks:?}");

    tokenizer.stop().await.unwrap();
    gpu.stop().await.unwrap();
}
