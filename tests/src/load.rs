//! A load of concurrent HTTP requests run in the background while a test breaks something,
//! every answer checked against what its [`Template`] expects (golden vectors or scores),
//! every request's fate kept as a [`Record`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest difference from a golden vector accepted (the CPU backend's documented bound).
const VECTOR_TOLERANCE: f32 = 2e-5;

/// Largest difference from a golden score accepted (as in `rerank_api.rs`).
const SCORE_TOLERANCE: f32 = 1e-5;

/// How long the HTTP client waits for one answer; above the gateway's deadline, so a
/// request the gateway lets hang shows up as a failure, not a client timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client pauses after a failed request.
const FAILURE_PAUSE: Duration = Duration::from_millis(50);

/// The API a request goes to, and what its answer must hold.
#[derive(Debug, Clone)]
pub enum Expected {
    /// `POST /api/v1/embedding/api`: a JSON array of these vectors.
    SeedVectors(Vec<Vec<f32>>),
    /// `POST /v1/embeddings`: these vectors as `data[i].embedding`.
    OpenAiVectors(Vec<Vec<f32>>),
    /// `POST /v1/rerank`: `results` scoring document `index` with the `index`th score.
    Scores(Vec<f32>),
}

impl Expected {
    /// The path the request is posted to.
    fn path(&self) -> &'static str {
        match self {
            Self::SeedVectors(_) => "/api/v1/embedding/api",
            Self::OpenAiVectors(_) => "/v1/embeddings",
            Self::Scores(_) => "/v1/rerank",
        }
    }
}

/// One request and what its answer must hold.
#[derive(Debug, Clone)]
pub struct Template {
    /// The JSON body.
    pub body: Value,
    /// The API, and the vectors or scores the answer must hold.
    pub expected: Expected,
    /// For messages.
    pub name: String,
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
    /// `None` when the answer held what was expected; else what went wrong.
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
    /// Set to `true` to stop the clients.
    stop: watch::Sender<bool>,
    /// The clients, each yielding the records of its requests.
    clients: Vec<JoinHandle<Vec<Record>>>,
}

impl Load {
    /// Starts `clients` concurrent clients, each sending `templates` one after the other
    /// (client `i` starts at template `i * 5`) to the gateway at `base`.
    pub fn start(base: &str, clients: usize, templates: Vec<Template>) -> Self {
        let templates = Arc::new(templates);
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
    let url = format!("{base}{}", template.expected.path());
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

/// Compares an answer with what the template expects.
fn check(template: &Template, body: &Value) -> Result<(), String> {
    let name = &template.name;
    match &template.expected {
        Expected::SeedVectors(want) => {
            let got = body
                .as_array()
                .ok_or_else(|| format!("{name}: not an array: {body}"))?;
            check_vectors(name, got.iter(), want)
        }
        Expected::OpenAiVectors(want) => {
            let data = body["data"]
                .as_array()
                .ok_or_else(|| format!("{name}: no data: {body}"))?;
            check_vectors(name, data.iter().map(|item| &item["embedding"]), want)
        }
        Expected::Scores(want) => check_scores(name, body, want),
    }
}

/// Compares the vectors of an answer with `want`, in order.
fn check_vectors<'a>(
    name: &str,
    got: impl ExactSizeIterator<Item = &'a Value>,
    want: &[Vec<f32>],
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{name}: {} vectors for {} inputs",
            got.len(),
            want.len()
        ));
    }
    for (i, (got, want)) in got.zip(want).enumerate() {
        let got: Vec<f32> = serde_json::from_value(got.clone())
            .map_err(|e| format!("{name}: vector {i} is no array of numbers: {e}"))?;
        if got.len() != want.len() {
            return Err(format!(
                "{name}: vector {i} has {} values, not {}",
                got.len(),
                want.len()
            ));
        }
        let diff = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f32::max);
        if diff > VECTOR_TOLERANCE {
            return Err(format!("{name}: vector {i} differs by {diff}"));
        }
    }
    Ok(())
}

/// Compares the score of every document in a rerank answer with `want`.
fn check_scores(name: &str, body: &Value, want: &[f32]) -> Result<(), String> {
    let results = body["results"]
        .as_array()
        .ok_or_else(|| format!("{name}: no results: {body}"))?;
    if results.len() != want.len() {
        return Err(format!(
            "{name}: {} results for {} documents",
            results.len(),
            want.len()
        ));
    }
    for result in results {
        let index = result["index"].as_u64().unwrap_or(u64::MAX) as usize;
        let want = want
            .get(index)
            .ok_or_else(|| format!("{name}: result index {index}"))?;
        let got = result["relevance_score"].as_f64().unwrap_or(f64::NAN) as f32;
        if (got - want).abs() > SCORE_TOLERANCE || got.is_nan() {
            return Err(format!(
                "{name}: document {index} scored {got}, golden {want}"
            ));
        }
    }
    Ok(())
}

/// The failures among `records`, one line each.
pub fn failures(records: &[Record]) -> Vec<String> {
    records.iter().filter_map(|r| r.failure.clone()).collect()
}

/// Asserts a load went through without a single failure and did real work.
pub fn assert_flawless(records: &[Record], what: &str) {
    let failed = failures(records);
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed: {:#?}",
        failed.len(),
        records.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(
        records.len() >= 20,
        "{what}: only {} requests ran",
        records.len()
    );
}
