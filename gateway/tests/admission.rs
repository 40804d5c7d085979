//! The admission queue through HTTP: requests beyond `max_concurrent_queries` wait, first
//! come first served, up to `max_queued_requests`; beyond that 429 with `Retry-After`; a
//! request's deadline runs from its arrival, so the wait counts against it; a client that
//! goes away while queued gives its place back. Against a real nats-server and a fake
//! tokenizer worker that holds `!hold` requests until the test releases them.

mod support;

use std::time::{Duration, Instant};

use common::wire;
use serde_json::{Value, json};
use support::{FAKE_DIMS, FakeTokenizer, Harness, error_of, expected_vector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Posts `body` to `path` in the background; yields the status and the JSON body.
fn post_in_background(harness: &Harness, path: &str, body: Value) -> JoinHandle<(u16, Value)> {
    let request = harness.http.post(harness.url(path)).json(&body);
    tokio::spawn(async move {
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    })
}

/// `/debug` as JSON.
async fn debug(harness: &Harness) -> Value {
    harness
        .get("/debug")
        .await
        .json()
        .await
        .expect("debug is JSON")
}

/// Waits (up to 5 s) until `/debug` shows `queued` requests waiting for a place.
async fn wait_queued(harness: &Harness, queued: u64) {
    for _ in 0..500 {
        if debug(harness).await["queued_requests"] == queued {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the queue never held {queued} requests: {}",
        debug(harness).await
    );
}

/// The value of the unlabelled Prometheus sample `name`, or of `name{labels}`.
async fn metric(harness: &Harness, sample: &str) -> Option<f64> {
    let text = harness.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// A gateway that admits one request at once and queues one more, with a deadline of
/// `request_timeout_s` (else the default), and its fake tokenizer worker.
async fn one_place_one_slot(request_timeout_s: Option<f64>) -> (Harness, FakeTokenizer) {
    let harness = Harness::start(|config| {
        config.max_concurrent_queries = 1;
        config.max_queued_requests = Some(1);
        if let Some(timeout_s) = request_timeout_s {
            config.request_timeout_s = timeout_s;
        }
    })
    .await;
    let worker = harness.fake_tokenizer(8).await;
    (harness, worker)
}

/// Asserts `body` is the answer to a request out of time under a 2 s deadline.
fn assert_timed_out_after_2_s(body: &Value) {
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 2 s"),
        "{body}"
    );
}

#[tokio::test]
async fn requests_queue_beyond_the_limit_and_are_refused_beyond_the_queue() {
    let harness = Harness::start(|config| {
        config.max_concurrent_queries = 2;
        config.max_queued_requests = Some(3);
    })
    .await;
    let worker = harness.fake_tokenizer(8).await;

    // Two requests take the places (the worker holds them); three more wait in line.
    let mut clients = Vec::new();
    for n in 0..5 {
        let body = json!({"input": ["!hold", format!("text-{n}")]});
        clients.push(post_in_background(&harness, "/v1/embeddings", body));
        if n < 2 {
            worker.wait_for(n + 1).await;
        } else {
            wait_queued(&harness, n as u64 - 1).await;
        }
    }
    let state = debug(&harness).await;
    assert_eq!(state["active_requests"], 2, "{state}");
    assert_eq!(state["admission_limit"], 2, "{state}");
    assert_eq!(state["queued_requests"], 3, "{state}");
    assert_eq!(state["queue_limit"], 3, "{state}");
    assert_eq!(
        worker.requests().len(),
        2,
        "queued requests wait in the gateway"
    );
    assert_eq!(
        metric(&harness, "embed_http_requests_queued").await,
        Some(3.0)
    );
    assert_eq!(
        metric(&harness, "embed_http_requests_queue_limit").await,
        Some(3.0)
    );
    assert_eq!(
        metric(&harness, "embed_http_requests_in_flight_limit").await,
        Some(2.0)
    );

    // The sixth is refused at once on every admitted route, embedding and rerank alike.
    let refusals = [
        ("/v1/embeddings", json!({"input": ["sixth"]})),
        ("/api/v1/embedding/api", json!({"input": ["sixth"]})),
        ("/v1/rerank", json!({"query": "q", "documents": ["d"]})),
        ("/rerank", json!({"query": "q", "texts": ["d"]})),
    ];
    for (path, body) in &refusals {
        let response = harness.post_json(path, body.clone()).await;
        assert_eq!(response.status(), 429, "{path}");
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .expect("Retry-After in seconds");
        assert!(retry_after >= 1, "{path}: Retry-After {retry_after}");
        if *path == "/rerank" {
            // TEI's route answers TEI's body.
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error_type"], "Overloaded", "{body}");
            continue;
        }
        let error = error_of(response).await;
        assert_eq!(error["code"], "overloaded", "{path}: {error}");
        assert_eq!(error["type"], "rate_limit_error", "{path}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("limit of 2 concurrent requests with 3 more queued"),
            "{path}: {message}"
        );
    }

    // Released, all five are answered, each with its own vectors.
    worker.release_held();
    for (n, client) in clients.into_iter().enumerate() {
        let (status, body) = client.await.unwrap();
        assert_eq!(status, 200, "request {n}: {body}");
        let vectors: Vec<Vec<f32>> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| serde_json::from_value(item["embedding"].clone()).unwrap())
            .collect();
        assert_eq!(
            vectors,
            vec![
                expected_vector("!hold", FAKE_DIMS),
                expected_vector(&format!("text-{n}"), FAKE_DIMS)
            ],
            "request {n}"
        );
    }
    let state = debug(&harness).await;
    assert_eq!(state["active_requests"], 0, "{state}");
    assert_eq!(state["queued_requests"], 0, "{state}");
    assert_eq!(
        metric(
            &harness,
            r#"embed_http_requests_rejected_total{reason="overloaded"}"#
        )
        .await,
        Some(refusals.len() as f64)
    );
}

#[tokio::test]
async fn a_queued_request_runs_with_what_is_left_of_its_deadline() {
    let (harness, worker) = one_place_one_slot(Some(2.0)).await;

    // The first request holds the place until its deadline; the second arrives a second
    // later and waits for it.
    let first = post_in_background(&harness, "/v1/embeddings", json!({"input": ["!silent"]}));
    worker.wait_for(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second_sent_ms = wire::now_ms();
    let second_sent = Instant::now();
    let second = post_in_background(&harness, "/v1/embeddings", json!({"input": ["!silent"]}));
    wait_queued(&harness, 1).await;

    assert_eq!(first.await.unwrap().0, 504);
    let (status, body) = second.await.unwrap();
    let elapsed = second_sent.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_timed_out_after_2_s(&body);
    // Its deadline ran from its arrival, not from its admission about a second later.
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(2800),
        "answered after {elapsed:?}"
    );
    let requests = worker.requests();
    assert_eq!(requests.len(), 2, "the second got the place and was sent");
    let deadline_ms = requests[1].deadline_ms.expect("deadline sent");
    let budget_ms = deadline_ms.saturating_sub(second_sent_ms);
    assert!(
        (2000..2500).contains(&budget_ms),
        "the worker was given {budget_ms} ms from the second request's arrival"
    );
    // Its budget is what was left when it was published: the second it waited for the first
    // request's deadline (2 s after the first's arrival, 1 s after its own) is gone.
    let timeout_ms = requests[1].timeout_ms.expect("timeout_ms sent");
    assert!(
        (1..=1050).contains(&timeout_ms),
        "the worker was given {timeout_ms} ms after the wait for a place"
    );
}

/// Sends the head of a `POST /v1/embeddings` whose body is `body`, and the first half of the
/// body; the caller sends the rest. The gateway counts the request as arrived from the head.
async fn start_slow_request(harness: &Harness, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(harness.gateway.addr()).await.unwrap();
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

#[tokio::test]
async fn a_request_whose_deadline_passes_in_the_queue_gets_the_timeout_answer() {
    let (harness, worker) = one_place_one_slot(Some(2.0)).await;

    // The late request arrives first but sends its body slowly; meanwhile another request
    // takes the only place, so the late one queues with the earlier deadline of the two.
    let body = json!({"input": ["late"]}).to_string().into_bytes();
    let mut late = start_slow_request(&harness, &body).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let holder = post_in_background(&harness, "/v1/embeddings", json!({"input": ["!hold"]}));
    worker.wait_for(1).await;
    late.write_all(&body[body.len() / 2..]).await.unwrap();
    wait_queued(&harness, 1).await;

    // Its deadline passes in the queue: the same 504 as any request out of time.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), late.read_to_end(&mut answer))
        .await
        .expect("answered by its deadline")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").expect("a body");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_timed_out_after_2_s(&body);
    assert_eq!(
        worker.requests().len(),
        1,
        "the late request never reached a worker"
    );
    assert_eq!(debug(&harness).await["queued_requests"], 0);
    assert_eq!(
        metric(
            &harness,
            r#"embed_http_requests_rejected_total{reason="queue_timeout"}"#
        )
        .await,
        Some(1.0)
    );

    // The request holding the place is unaffected.
    worker.release_held();
    let (status, body) = holder.await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_gives_its_place_back() {
    let (harness, worker) = one_place_one_slot(None).await;
    let holder = post_in_background(&harness, "/v1/embeddings", json!({"input": ["!hold"]}));
    worker.wait_for(1).await;
    let leaving = post_in_background(&harness, "/v1/embeddings", json!({"input": ["leaving"]}));
    wait_queued(&harness, 1).await;
    let full = harness
        .post_json("/v1/embeddings", json!({"input": ["full"]}))
        .await;
    assert_eq!(full.status(), 429);

    // The client disconnects: its queue slot is free again, and it is never sent upstream.
    leaving.abort();
    assert!(leaving.await.unwrap_err().is_cancelled());
    wait_queued(&harness, 0).await;
    let next = post_in_background(&harness, "/v1/embeddings", json!({"input": ["next"]}));
    wait_queued(&harness, 1).await;
    worker.release_held();
    assert_eq!(holder.await.unwrap().0, 200);
    let (status, body) = next.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let texts: Vec<String> = worker
        .requests()
        .iter()
        .flat_map(|r| r.input.clone())
        .collect();
    assert_eq!(texts, ["!hold", "next"]);
    let state = debug(&harness).await;
    assert_eq!(
        (&state["active_requests"], &state["queued_requests"]),
        (&json!(0), &json!(0)),
        "{state}"
    );
}
