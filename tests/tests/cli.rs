//! `embed-jsonl` (the `cli` crate) against the real stack: golden vectors over HTTP and NATS,
//! JSONL and `.npy` output, an interrupted and crashed job resumed into exactly the output
//! of an uninterrupted one, retries through 429s, and the errors that stop a job.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_tests::{NatsServer, tiny_model_dir};
use embed_jsonl::output::{npy, parse_jsonl_row};
use embed_jsonl::{CliError, Options};
use serde_json::{Value, json};
use support::{
    floats, gateway_config, golden, max_abs_diff, nats_config, start_gpu, start_tokenizer,
    wait_for_workers, wait_healthy,
};

const API_KEY: &str = "sk-embed-jsonl-test";

/// A scratch directory for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("embed-jsonl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn embed(
    input: &Path,
    output: &Path,
    url: &str,
    extra: &[&str],
) -> Result<embed_jsonl::Summary, CliError> {
    let mut args = vec![
        "embed-jsonl".to_string(),
        input.display().to_string(),
        output.display().to_string(),
        "--url".into(),
        url.into(),
        "--no-progress".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let options = <Options as clap::Parser>::try_parse_from(&args).expect("valid options");
    embed_jsonl::run(&options).await
}

/// Rows of a `.npy` written by the CLI.
fn read_npy(path: &Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let (rows, dims, offset) = npy::parse_header(&bytes).expect("a valid .npy header");
    let values: Vec<f32> = bytes[offset..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(
        values.len() as u64,
        rows * dims,
        "the header's shape covers the data exactly"
    );
    values.chunks(dims as usize).map(<[f32]>::to_vec).collect()
}

/// Rows of a JSONL output: (id or line, vector).
fn read_jsonl(path: &Path) -> Vec<(Value, Vec<f32>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| parse_jsonl_row(line).expect("a complete row"))
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let diff = max_abs_diff(got, want);
    assert!(diff <= tolerance, "{what}: max abs diff {diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_jsonl_gets_golden_vectors_and_resumes_exactly() {
    let scratch = Scratch::new("e2e");
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer(&server, &model);
    let gpu = start_gpu(&server, &model);
    let nats = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&nats).await;
    let mut config = gateway_config(nats_config(&server));
    config.api_keys = gateway::api_keys::ApiKeys::from_list(API_KEY, "test").unwrap();
    let gateway = gateway::spawn(config.clone()).await.unwrap();
    // A second gateway that admits one request at a time and queues none: concurrent
    // batches get 429.
    config.max_concurrent_queries = 1;
    config.max_queued_requests = Some(0);
    let narrow = gateway::spawn(config).await.unwrap();
    let http = reqwest::Client::new();
    wait_healthy(&http, &gateway.url(), Duration::from_secs(20)).await;
    wait_healthy(&http, &narrow.url(), Duration::from_secs(20)).await;
    let key: &[&str] = &["--api-key", API_KEY];

    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    let documents: Vec<&Value> = cases.iter().filter(|c| c["is_query"] == false).collect();
    let mrl = golden["mrl"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "en_short")
        .unwrap();
    let dim = mrl["dim"].to_string();

    // The documents, ids in `doc_id`, texts in `body`, with a blank line in the middle.
    let input = scratch.path("documents.jsonl");
    let mut lines: Vec<String> = documents
        .iter()
        .map(|c| json!({"doc_id": c["id"], "body": c["text"], "extra": 1}).to_string())
        .collect();
    lines.insert(3, String::new());
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let fields: &[&str] = &["--text-field", "body", "--id-field", "doc_id"];

    // 1. HTTP to JSONL: every golden document, in input order, under its id.
    let jsonl = scratch.path("documents.out.jsonl");
    let args = [fields, key, &["--batch-size", "3", "--concurrency", "3"]].concat();
    let summary = embed(&input, &jsonl, &gateway.url(), &args).await.unwrap();
    assert_eq!(
        (summary.embedded, summary.rows),
        (documents.len() as u64, documents.len() as u64)
    );
    assert!(summary.complete);
    let rows = read_jsonl(&jsonl);
    assert_eq!(rows.len(), documents.len());
    for ((id, vector), case) in rows.iter().zip(&documents) {
        assert_eq!(id, &case["id"]);
        assert_close(
            vector,
            &floats(&case["embedding"]),
            2e-5,
            case["id"].as_str().unwrap(),
        );
    }
    // Running it again embeds nothing and leaves the output as it was.
    let before = std::fs::read(&jsonl).unwrap();
    let again = embed(&input, &jsonl, &gateway.url(), &args).await.unwrap();
    assert_eq!(
        (again.embedded, again.rows, again.complete),
        (0, documents.len() as u64, true)
    );
    assert_eq!(std::fs::read(&jsonl).unwrap(), before);
    // Other settings on the same output are refused, naming the difference.
    let error = embed(
        &input,
        &jsonl,
        &gateway.url(),
        &[&args[..], &["--dimensions", "8"][..]].concat(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("dimensions"), "{error}");

    // 2. HTTP to .npy with Matryoshka dimensions, uninterrupted, through a gateway that
    // refuses all but one request at a time: the 429s are retried after Retry-After.
    let npy_args = [
        fields,
        key,
        &[
            "--dimensions",
            &dim,
            "--batch-size",
            "2",
            "--concurrency",
            "4",
            "--retries",
            "30",
        ],
    ]
    .concat();
    let full = scratch.path("full.npy");
    let summary = embed(&input, &full, &narrow.url(), &npy_args)
        .await
        .unwrap();
    assert_eq!(summary.rows, documents.len() as u64);
    assert_eq!(summary.dims, Some(mrl["dim"].as_u64().unwrap() as u32));
    let metrics = http
        .get(format!("{}/metrics", narrow.url()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("embed_http_requests_rejected_total") && !l.ends_with(" 0")),
        "the narrow gateway refused some batches (so retries were exercised):\n{metrics}"
    );
    let full_rows = read_npy(&full);
    let en_short = documents
        .iter()
        .position(|c| c["id"] == "en_short")
        .unwrap();
    assert_close(
        &full_rows[en_short],
        &floats(&mrl["embedding"]),
        2e-5,
        "en_short at 16 dims",
    );

    // 3. The same job interrupted: 5 rows (--limit), then a crash in the middle of writing
    // the next batch (bytes after the last checkpoint, a row cut in half), then resumed.
    let resumed = scratch.path("resumed.npy");
    let partial = embed(
        &input,
        &resumed,
        &gateway.url(),
        &[&npy_args[..], &["--limit", "5"][..]].concat(),
    )
    .await
    .unwrap();
    assert_eq!((partial.embedded, partial.complete), (5, false));
    assert_eq!(
        read_npy(&resumed).len(),
        5,
        "a valid .npy of the rows done so far"
    );
    let mut torn = std::fs::read(&resumed).unwrap();
    torn.extend_from_slice(&[0x42; 4 * 16 + 6]);
    std::fs::write(&resumed, &torn).unwrap();
    let rest = embed(&input, &resumed, &gateway.url(), &npy_args)
        .await
        .unwrap();
    assert_eq!(
        (rest.embedded, rest.rows, rest.complete),
        (documents.len() as u64 - 5, documents.len() as u64, true)
    );
    let resumed_rows = read_npy(&resumed);
    assert_eq!(
        resumed_rows.len(),
        full_rows.len(),
        "no duplicated or missing rows"
    );
    for (i, (got, want)) in resumed_rows.iter().zip(&full_rows).enumerate() {
        assert_close(
            got,
            want,
            1e-6,
            &format!("row {i} resumed vs uninterrupted"),
        );
    }

    // 4. NATS to JSONL: queries with their instruction, rows keyed by input line.
    let query = cases.iter().find(|c| c["id"] == "query_web_1").unwrap();
    let queries: Vec<&Value> = cases
        .iter()
        .filter(|c| c["is_query"] == true && c["instruction"] == query["instruction"])
        .collect();
    let query_input = scratch.path("queries.jsonl");
    let query_lines: Vec<String> = queries
        .iter()
        .map(|c| json!({"text": c["text"]}).to_string())
        .collect();
    std::fs::write(&query_input, query_lines.join("\n")).unwrap();
    let query_output = scratch.path("queries.out.jsonl");
    let instruction = query["instruction"].as_str().unwrap();
    embed(
        &query_input,
        &query_output,
        &server.url(),
        &["--query", "--instruction", instruction],
    )
    .await
    .unwrap();
    let rows = read_jsonl(&query_output);
    assert_eq!(rows.len(), queries.len());
    for (i, ((line, vector), case)) in rows.iter().zip(&queries).enumerate() {
        assert_eq!(line, &json!(i + 1));
        assert_close(
            vector,
            &floats(&case["embedding"]),
            2e-5,
            case["id"].as_str().unwrap(),
        );
    }

    // 5. Errors that stop a job at once, naming what is wrong.
    let error = embed(&input, &scratch.path("nokey.jsonl"), &gateway.url(), fields)
        .await
        .unwrap_err();
    assert!(
        matches!(error, CliError::Service { first: 1, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("401"), "{error}");
    let bad_input = scratch.path("bad.jsonl");
    std::fs::write(&bad_input, "{\"text\": \"fine\"}\n{\"text\": 7}\n").unwrap();
    let bad_output = scratch.path("bad.out.jsonl");
    let error = embed(
        &bad_input,
        &bad_output,
        &server.url(),
        &["--batch-size", "1"],
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("input line 2: field `text` must be a string"),
        "{error}"
    );
    assert_eq!(
        read_jsonl(&bad_output).len(),
        1,
        "the line before the bad one is kept"
    );
    let error = embed(&input, &scratch.path("x.jsonl"), "ftp://nowhere", &[])
        .await
        .unwrap_err();
    assert!(matches!(error, CliError::Options(_)), "{error}");

    narrow.shutdown().await.unwrap();
    gateway.shutdown().await.unwrap();
    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}
