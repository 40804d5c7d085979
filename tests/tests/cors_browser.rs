//! CORS in a real browser: headless Chromium loads a page that the test serves on another
//! origin, and the page's script POSTs a golden document to the gateway's `/v1/embeddings`
//! with an API key (a non-simple request, so Chromium sends a preflight first). From the
//! origin in `cors_allowed_origins` the vector arrives and matches golden.json; from a page
//! on a port that is not listed the fetch fails and no embedding request reaches the
//! gateway. Skipped (with a message) where `/usr/bin/chromium` is absent; deploy/local/setup.sh
//! installs it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::wire::WorkerKind;
use e2e_tests::{NatsServer, tiny_model_dir};
use serde_json::{Value, json};
use support::{
    floats, gateway_config, golden, max_abs_diff, nats_config, start_gpu, start_tokenizer,
    wait_for_kinds, wait_healthy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CHROMIUM: &str = "/usr/bin/chromium";
const API_KEY: &str = "sk-cors-browser-test";
/// How long one Chromium run may take before it is killed and the test fails.
const BROWSER_PATIENCE: Duration = Duration::from_secs(90);

/// The page: POSTs `text` with the key to the gateway named by its `?gateway=` query and
/// writes the outcome into `document.body.dataset.result` (`ok:` and the vector as JSON, or
/// `error:` and the error).
fn page(text: &str) -> String {
    let (key, text) = (json!(format!("Bearer {API_KEY}")), json!(text));
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>cors</title></head><body><script>
const gateway = new URLSearchParams(location.search).get("gateway");
fetch(gateway + "/v1/embeddings", {{
  method: "POST",
  headers: {{"Content-Type": "application/json", "Authorization": {key}}},
  body: JSON.stringify({{input: {text}}}),
}})
  .then(async (r) => {{
    const body = await r.json();
    if (!r.ok) throw new Error(r.status + " " + JSON.stringify(body));
    document.body.dataset.result = "ok:" + JSON.stringify(body.data[0].embedding);
  }})
  .catch((e) => {{ document.body.dataset.result = "error:" + e; }});
</script></body></html>
"#
    )
}

/// Serves `html` to every request on a fresh loopback port; returns the page's origin.
async fn serve_page(html: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                // Read the request head (GET, no body); then answer and close.
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    origin
}

/// Loads `url` in headless Chromium (a fresh profile under `profile`) and returns the
/// outcome the page wrote into `data-result`.
async fn browse(url: &str, profile: &Path) -> String {
    let mut command = tokio::process::Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .kill_on_drop(true);
    let output = tokio::time::timeout(BROWSER_PATIENCE, command.output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish {url} in {BROWSER_PATIENCE:?}"))
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chromium failed on {url}: {}\n{dom}",
        String::from_utf8_lossy(&output.stderr)
    );
    let start = dom.find("data-result=\"").unwrap_or_else(|| {
        panic!(
            "the page at {url} wrote no result: {dom}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    }) + "data-result=\"".len();
    let end = dom[start..].find('"').expect("a closed attribute") + start;
    dom[start..end].to_string()
}

/// The browser profiles' folder, removed on drop (a failing test too).
struct Profiles(PathBuf);

impl Drop for Profiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gateway's `/metrics` (keyed).
async fn metrics(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Answers on `/v1/embeddings` counted so far (preflights included), by status.
fn embeddings_answers(metrics: &str) -> BTreeMap<String, u64> {
    let prefix = r#"embed_http_requests_total{route="/v1/embeddings",status=""#;
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .map(|rest| {
            let (status, count) = rest.split_once("\"} ").expect("a counter line");
            (status.to_string(), count.trim().parse().expect("a count"))
        })
        .collect()
}

/// Texts the model embedded so far (`embed_items_total`; the tests' gateway has no cache).
fn items_embedded(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("embed_items_total "))
        .map_or(0, |count| count.trim().parse().expect("a count"))
}

/// `after - before`, by status, the unchanged ones left out.
fn increase(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(status, &n)| (status.clone(), n - before.get(status).copied().unwrap_or(0)))
        .filter(|&(_, n)| n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_from_a_browser_succeeds_for_allowed_origins_only() {
    if !Path::new(CHROMIUM).exists() {
        println!("skipped: no chromium (deploy/local/setup.sh installs it)");
        return;
    }
    let golden = golden();
    let document = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["is_query"] == false)
        .expect("golden.json has a document case");
    let text = document["text"].as_str().unwrap();

    let server = NatsServer::start();
    let _stages = [
        start_tokenizer(&server, &tiny_model_dir()),
        start_gpu(&server, &tiny_model_dir()),
    ];
    let nats = async_nats::connect(server.url()).await.unwrap();
    wait_for_kinds(&nats, &[(WorkerKind::Tokenizer, 1), (WorkerKind::Gpu, 1)]).await;

    // Two page servers on their own ports (origins); the gateway allows the first only.
    let allowed = serve_page(page(text)).await;
    let other = serve_page(page(text)).await;
    let mut config = gateway_config(nats_config(&server));
    config.api_keys = gateway::api_keys::ApiKeys::from_list(API_KEY, "test").unwrap();
    config.cors_allowed_origins = vec![allowed.clone()];
    let gateway = gateway::spawn(config).await.unwrap();
    let base = gateway.url();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(20)).await;

    let profiles =
        Profiles(std::env::temp_dir().join(format!("cors-browser-{}", std::process::id())));
    let before = metrics(&http, &base).await;

    // The allowed origin: the preflight passes, the POST is answered and the page reads it.
    let result = browse(
        &format!("{allowed}/?gateway={base}"),
        &profiles.0.join("allowed"),
    )
    .await;
    let vector = result
        .strip_prefix("ok:")
        .unwrap_or_else(|| panic!("from the allowed origin {allowed}: {result}"));
    let vector: Value = serde_json::from_str(vector).expect("the vector as JSON");
    let (got, want) = (floats(&vector), floats(&document["embedding"]));
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-4, "max abs diff {diff} from golden.json");
    let middle = metrics(&http, &base).await;
    assert_eq!(
        increase(&embeddings_answers(&before), &embeddings_answers(&middle)),
        BTreeMap::from([("200".to_string(), 2)]),
        "the preflight and the POST, both answered"
    );
    assert_eq!(items_embedded(&middle), items_embedded(&before) + 1);

    // Another origin: the browser refuses after the preflight; the POST is never sent.
    let result = browse(
        &format!("{other}/?gateway={base}"),
        &profiles.0.join("other"),
    )
    .await;
    assert!(
        result.starts_with("error:TypeError") && result.contains("Failed to fetch"),
        "from the unlisted origin {other}: {result}"
    );
    let after = metrics(&http, &base).await;
    assert_eq!(
        increase(&embeddings_answers(&middle), &embeddings_answers(&after)),
        BTreeMap::from([("200".to_string(), 1)]),
        "the preflight only (answered without Access-Control-Allow-Origin)"
    );
    assert_eq!(items_embedded(&after), items_embedded(&middle));
}
