//! A load of concurrent, mixed HTTP requests whose every answer is checked against the
//! qwen3-tiny golden vectors: seed-route documents (one and several per request), queries
//! with their instruction, OpenAI-route batches and Matryoshka sizes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::support::{floats, golden, max_abs_diff};

/// Largest difference from a golden vector accepted (the CPU backend's documented bound).
const TOLERANCE: f32 = 2e-5;

/// How long the HTTP client waits for one answer; above the gateway's deadline, so a
/// request the gateway lets hang shows up as a failure, not a client timeout.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client pauses after a failed request.
const FAILURE_PAUSE: Duration = Duration::from_millis(50);

/// Which HTTP API a request uses.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// `POST /api/v1/embedding/api`: answers a JSON array of vectors.
    Seed,
    /// `POST /v1/embeddings`: answers `data[i].embedding`.
    OpenAi,
}

/// One request and the vectors it must produce.
#[derive(Debug, Clone)]
pub struct Template {
    route: Route,
    body: Value,
    expected: Vec<Vec<f32>>,
    /// For messages.
    name: String,
}

/// The mixed requests, built from the golden file.
pub fn templates() -> Vec<Template> {
    let golden = golden();
    let cases = golden["cases"].as_array().expect("cases");
    let documents: Vec<&Value> = cases.iter().filter(|c| c["is_query"] == false).collect();
    let queries: Vec<&Value> = cases.iter().filter(|c| c["is_query"] == true).collect();
    let mut templates = Vec::new();
    for case in &documents {
        templates.push(Template {
            route: Route::Seed,
            body: json!({"input": [case["text"]], "is_query": false}),
            expected: vec![floats(&case["embedding"])],
            name: format!("seed document {}", case["id"]),
        });
    }
    for group in documents.chunks(3) {
        templates.push(Template {
            route: Route::Seed,
            body: json!({"input": group.iter().map(|c| c["text"].clone()).collect::<Vec<_>>(), "is_query": false}),
            expected: group.iter().map(|c| floats(&c["embedding"])).collect(),
            name: format!("seed documents x{}", group.len()),
        });
    }
    for case in &queries {
        templates.push(Template {
            route: Route::Seed,
            body: json!({"input": [case["text"]], "is_query": true, "instruction": case["instruction"]}),
            expected: vec![floats(&case["embedding"])],
            name: format!("seed query {}", case["id"]),
        });
    }
    templates.push(Template {
        route: Route::OpenAi,
        body: json!({"model": "qwen3-tiny", "input": documents.iter().map(|c| c["text"].clone()).collect::<Vec<_>>()}),
        expected: documents.iter().map(|c| floats(&c["embedding"])).collect(),
        name: "openai all documents".into(),
    });
    for mrl in golden["mrl"].as_array().expect("mrl") {
        let case = cases
            .iter()
            .find(|c| c["id"] == mrl["id"])
            .expect("an mrl entry names a case");
        let mut body = json!({"input": case["text"], "dimensions": mrl["dim"]});
        if case["is_query"] == true {
            body["input_type"] = "query".into();
            body["instruction"] = case["instruction"].clone();
        }
        templates.push(Template {
            route: Route::OpenAi,
            body,
            expected: vec![floats(&mrl["embedding"])],
            name: format!("openai {} dims {}", mrl["id"], mrl["dim"]),
        });
    }
    templates
}

/// What became of one request.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it was sent.
    pub started: Instant,
    /// How long the answer took.
    pub took: Duration,
    /// HTTP status (0: no answer at all).
    pub status: u16,
    /// `None` when every vector matched; else what went wrong.
    pub failure: Option<String>,
}

impl Record {
    /// When the answer came.
    pub fn finished(&self) -> Instant {
        self.started + self.took
    }
}

/// A load running in the background until stopped.
pub struct Load {
    stop: watch::Sender<bool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Record>>>,
}

impl Load {
    /// Starts `clients` concurrent clients, each sending the templates one after the other
    /// (client `i` starts at template `i * 5`) to the gateway at `base`.
    pub fn start(base: &str, clients: usize) -> Self {
        let templates = Arc::new(templates());
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .expect("HTTP client");
        let (stop, stopped) = watch::channel(false);
        let clients = (0..clients)
            .map(|i| {
                let (templates, http, base, stopped) = (
                    templates.clone(),
                    http.clone(),
                    base.to_string(),
                    stopped.clone(),
                );
                tokio::spawn(async move {
                    let mut records = Vec::new();
                    let mut next = i * 5;
                    while !*stopped.borrow() {
                        let template = &templates[next % templates.len()];
                        let record = send(&http, &base, template).await;
                        if record.failure.is_some() {
                            // As a real client would: a short pause before the next try.
                            tokio::time::sleep(FAILURE_PAUSE).await;
                        }
                        records.push(record);
                        next += 1;
                    }
                    records
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops sending, waits for the answers in flight, and returns every record in the
    /// order the requests were sent.
    pub async fn stop(self) -> Vec<Record> {
        let _ = self.stop.send(true);
        let mut records = Vec::new();
        for client in self.clients {
            records.extend(client.await.expect("a load client panicked"));
        }
        records.sort_by_key(|r| r.started);
        records
    }
}

/// Sends one request and checks its answer.
async fn send(http: &reqwest::Client, base: &str, template: &Template) -> Record {
    let url = match template.route {
        Route::Seed => format!("{base}/api/v1/embedding/api"),
        Route::OpenAi => format!("{base}/v1/embeddings"),
    };
    let started = Instant::now();
    let response = http.post(url).json(&template.body).send().await;
    let (status, failure) = match response {
        Err(e) => (0, Some(format!("{}: no answer: {e}", template.name))),
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Result<Value, _> = response.json().await;
            match body {
                Err(e) => (
                    status,
                    Some(format!("{}: unreadable body: {e}", template.name)),
                ),
                Ok(body) if status != 200 => {
                    (status, Some(format!("{}: {status} {body}", template.name)))
                }
                Ok(body) => (status, check(template, &body).err()),
            }
        }
    };
    Record {
        started,
        took: started.elapsed(),
        status,
        failure,
    }
}

/// Compares an answer's vectors with the template's, in order.
fn check(template: &Template, body: &Value) -> Result<(), String> {
    let vectors: Vec<Vec<f32>> = match template.route {
        Route::Seed => body
            .as_array()
            .ok_or_else(|| format!("{}: not an array: {body}", template.name))?
            .iter()
            .map(floats)
            .collect(),
        Route::OpenAi => body["data"]
            .as_array()
            .ok_or_else(|| format!("{}: no data: {body}", template.name))?
            .iter()
            .map(|item| floats(&item["embedding"]))
            .collect(),
    };
    if vectors.len() != template.expected.len() {
        return Err(format!(
            "{}: {} vectors for {} inputs",
            template.name,
            vectors.len(),
            template.expected.len()
        ));
    }
    for (i, (got, want)) in vectors.iter().zip(&template.expected).enumerate() {
        if got.len() != want.len() {
            return Err(format!(
                "{}: vector {i} has {} values, not {}",
                template.name,
                got.len(),
                want.len()
            ));
        }
        let diff = max_abs_diff(got, want);
        if diff > TOLERANCE {
            return Err(format!("{}: vector {i} differs by {diff}", template.name));
        }
    }
    Ok(())
}

/// The failures among `records`, one line each.
pub fn failures(records: &[Record]) -> Vec<String> {
    records.iter().filter_map(|r| r.failure.clone()).collect()
}
