//! OTLP trace export, end to end: a stand-in collector (a small HTTP server in this test,
//! taking OTLP/HTTP JSON on `POST /v1/traces`), a real nats-server, a tokenizer worker and a
//! CPU GPU worker (child processes exporting to the collector), and the gateway (in this
//! process, exporting too). One request carrying a caller's `traceparent` yields one trace:
//! a span per stage (`gateway`, `tokenize`, `queue_wait`, `forward`, `assembly`), each from
//! the process that ran the stage and each the child of the stage that sent it the work. A
//! request whose `traceparent` is not sampled yields no span at all.
//!
//! Failure rules: a collector that is down costs no request (the workers log each failed
//! export); an endpoint that is not a URL stops a worker at start, naming the setting.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use common::otlp;
use common::telemetry::TelemetryConfig;
use e2e_tests::process::Pipeline;
use e2e_tests::{NatsServer, free_port};
use serde_json::{Value, json};
use support::{gateway_config, nats_config, wait_for_worker_counts, wait_healthy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How often the processes send their buffered spans, ms.
const EXPORT_DELAY_MS: &str = "100";

/// One exported span, as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    /// The `service.name` of the process that sent it.
    service: String,
    /// Its name (the stage).
    name: String,
    /// Hex ids.
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// Unix nanoseconds.
    start: u64,
    end: u64,
}

/// A stand-in OTLP collector on a free loopback port: answers every `POST` with 200 and
/// sends each body's spans on. Returns its base URL.
async fn collector() -> (String, mpsc::UnboundedReceiver<Span>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (spans_tx, spans) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_exports(stream, spans_tx.clone()));
        }
    });
    (url, spans)
}

/// Reads the HTTP/1.1 requests of one connection (`Content-Length` bodies), answering each.
async fn serve_exports(stream: TcpStream, spans: mpsc::UnboundedSender<Span>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a numeric Content-Length");
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.expect("the whole body");
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "{request_line}"
        );
        let export: Value = serde_json::from_slice(&body).expect("OTLP/HTTP JSON");
        for span in spans_of(&export) {
            let _ = spans.send(span);
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The spans of an OTLP `ExportTraceServiceRequest` in JSON.
fn spans_of(export: &Value) -> Vec<Span> {
    let mut found = Vec::new();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|attribute| attribute["key"] == "service.name")
            .and_then(|attribute| attribute["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                let nanos = |key: &str| match &span[key] {
                    Value::String(text) => text.parse().unwrap_or(0),
                    other => other.as_u64().unwrap_or(0),
                };
                found.push(Span {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    start: nanos("startTimeUnixNano"),
                    end: nanos("endTimeUnixNano"),
                });
            }
        }
    }
    found
}

/// Collects spans until every one of `names` arrived for trace `trace_id` (at most 30 s);
/// the spans of that trace by name, with every other span received meanwhile.
async fn trace(
    spans: &mut mpsc::UnboundedReceiver<Span>,
    seen: &mut Vec<Span>,
    trace_id: &str,
    names: &[&str],
) -> BTreeMap<String, Span> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let of_trace: BTreeMap<String, Span> = seen
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .map(|span| (span.name.clone(), span.clone()))
            .collect();
        if names.iter().all(|name| of_trace.contains_key(*name)) {
            return of_trace;
        }
        match tokio::time::timeout_at(deadline, spans.recv()).await {
            Ok(Some(span)) => seen.push(span),
            _ => panic!("trace {trace_id}: only {of_trace:#?} arrived; all spans: {seen:#?}"),
        }
    }
}

/// Embeds one text through the gateway with `traceparent`.
async fn embed(http: &reqwest::Client, base: &str, text: &str, traceparent: &str) {
    let response = http
        .post(format!("{base}/v1/embeddings"))
        .header("traceparent", traceparent)
        .json(&json!({"model": "qwen3-tiny", "input": [text]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_with_a_span_per_stage() {
    let (collector_url, mut spans) = collector().await;
    let server = NatsServer::start();
    let pipeline = Pipeline::new(
        server.url(),
        &[
            (
                "QWEN3_EMBED__TELEMETRY__OTLP_ENDPOINT",
                collector_url.as_str(),
            ),
            ("QWEN3_EMBED__TELEMETRY__EXPORT_DELAY_MS", EXPORT_DELAY_MS),
        ],
    );
    let _tokenizer = pipeline.tokenizer("tokenizer");
    let _gpu = pipeline.gpu("gpu");
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_worker_counts(&client, 1, 1).await;
    // The gateway runs in this process: its exporter is this process's.
    let exporter = otlp::init(
        &TelemetryConfig {
            otlp_endpoint: collector_url.clone(),
            service_name: String::new(),
            export_delay_ms: 100,
        },
        "qwen3-embed-gateway",
    )
    .expect("the exporter starts");
    assert!(exporter.is_on());
    let gateway = gateway::spawn(gateway_config(nats_config(&server)))
        .await
        .expect("the gateway starts");
    let (http, base) = (reqwest::Client::new(), gateway.url());
    wait_healthy(&http, &base, Duration::from_secs(30)).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    embed(
        &http,
        &base,
        "a traced request",
        &format!("00-{trace_id}-{caller_span}-01"),
    )
    .await;
    let stages = ["gateway", "tokenize", "queue_wait", "forward", "assembly"];
    let mut seen = Vec::new();
    let spans_of_trace = trace(&mut spans, &mut seen, trace_id, &stages).await;
    let span = |name: &str| &spans_of_trace[name];

    // Each stage's span comes from the process that ran it...
    for (name, service) in [
        ("gateway", "qwen3-embed-gateway"),
        ("tokenize", "qwen3-embed-tokenizer"),
        ("queue_wait", "qwen3-embed-gpu"),
        ("forward", "qwen3-embed-gpu"),
        ("assembly", "qwen3-embed-gateway"),
    ] {
        assert_eq!(span(name).service, service, "{name}: {:?}", span(name));
        assert!(
            span(name).start <= span(name).end,
            "{name}: {:?}",
            span(name)
        );
        assert_eq!(span(name).span_id.len(), 16, "{name}: {:?}", span(name));
    }
    // ...and is the child of the stage that sent it the work.
    assert_eq!(span("gateway").parent_span_id, caller_span);
    assert_eq!(span("tokenize").parent_span_id, span("gateway").span_id);
    assert_eq!(span("queue_wait").parent_span_id, span("tokenize").span_id);
    assert_eq!(span("forward").parent_span_id, span("tokenize").span_id);
    assert_eq!(span("assembly").parent_span_id, span("gateway").span_id);
    // One span per stage for this one request.
    let of_trace = seen.iter().filter(|s| s.trace_id == trace_id).count();
    assert_eq!(of_trace, stages.len(), "{seen:#?}");

    // A caller that does not sample its trace (`-00`) gets none exported; a sampled request
    // sent after it is exported by every process after it would have been.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    embed(
        &http,
        &base,
        "not traced",
        &format!("00-{unsampled}-b7ad6b7169203331-00"),
    )
    .await;
    let marker = "5d0e2a3b7c9f41e6a8b4c2d1e0f9a8b7";
    embed(
        &http,
        &base,
        "traced again",
        &format!("00-{marker}-{caller_span}-01"),
    )
    .await;
    trace(&mut spans, &mut seen, marker, &stages).await;
    assert!(
        seen.iter().all(|span| span.trace_id != unsampled),
        "an unsampled trace was exported: {seen:#?}"
    );

    gateway.shutdown().await.unwrap();
    exporter.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_request() {
    // Nothing listens there: every export fails.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let server = NatsServer::start();
    let pipeline = Pipeline::new(
        server.url(),
        &[
            ("QWEN3_EMBED__TELEMETRY__OTLP_ENDPOINT", dead.as_str()),
            ("QWEN3_EMBED__TELEMETRY__EXPORT_DELAY_MS", EXPORT_DELAY_MS),
        ],
    );
    let tokenizer = pipeline.tokenizer("tokenizer");
    let _gpu = pipeline.gpu("gpu");
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_worker_counts(&client, 1, 1).await;
    let gateway = gateway::spawn(gateway_config(nats_config(&server)))
        .await
        .expect("the gateway starts");
    let (http, base) = (reqwest::Client::new(), gateway.url());
    wait_healthy(&http, &base, Duration::from_secs(30)).await;

    for n in 0..3 {
        let traceparent = format!("00-{:032x}-00f067aa0ba902b7-01", 0xabc0 + n);
        embed(
            &http,
            &base,
            &format!("served all the same {n}"),
            &traceparent,
        )
        .await;
    }
    // The failed exports are logged (by the SDK, on its own thread), not hidden.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !tokenizer.log().contains("BatchSpanProcessor.ExportError") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed export logged:\n{}",
            tokenizer.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.shutdown().await.unwrap();
}

#[test]
fn an_endpoint_that_is_not_a_url_stops_a_worker_at_start() {
    let server = NatsServer::start();
    let pipeline = Pipeline::new(
        server.url(),
        &[("QWEN3_EMBED__TELEMETRY__OTLP_ENDPOINT", "collector:4318")],
    );
    let mut tokenizer = pipeline.tokenizer("tokenizer");
    let status = tokenizer
        .wait_exit(Duration::from_secs(30))
        .expect("the worker stops");
    assert!(!status.success(), "{status:?}");
    let log = tokenizer.log();
    assert!(
        log.contains("otlp_endpoint") && log.contains("collector:4318"),
        "{log}"
    );
}
