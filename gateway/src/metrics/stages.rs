//! Per-stage metrics: where each request served spent its time, per model and lane, from what
//! the workers measured and sent along in the request's chunks ([`common::wire::timings`]);
//! the admission wait measured here; the GPU workers' memory and busy time, and the workers
//! and backlog of each model, from discovery.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `embed_admission_wait_seconds` | histogram | `model` |
//! | `embed_stage_tokenize_seconds` | histogram | `model`, `lane` |
//! | `embed_stage_queue_wait_seconds` | histogram | `model`, `lane`, `path` |
//! | `embed_stage_forward_seconds` | histogram | `model`, `lane`, `path` |
//! | `embed_stage_assembly_seconds` | histogram | `model`, `lane` |
//! | `embed_batch_sequences`, `embed_batch_tokens` | histogram | `model`, `lane` |
//! | `embed_request_input_tokens` | histogram | `model`, `lane` |
//! | `embed_direct_path_total` | counter | `model`, `outcome` (`hit`, `fallback`) |
//! | `embed_gpu_worker_memory_used_bytes`, `embed_gpu_worker_memory_total_bytes` | gauge | `worker`, `model`, `kind` |
//! | `embed_gpu_worker_busy_seconds` | gauge (rising) | `worker`, `model`, `kind` |
//! | `embed_model_workers` | gauge | `kind`, `model` |
//! | `embed_model_queue_depth` | gauge | `model` |
//!
//! Every request answered from the workers is observed once per stage ([`RequestStages`]);
//! `path` is `direct` when every batch of the request was taken on the direct path, `queue`
//! otherwise.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::otlp::{self, KeyValue, StageSpan};
use common::trace::{RequestTrace, TraceParent};
use common::wire::timings::lane_label;
use common::wire::{BatchPath, Priority, WorkerKind, WorkerStatus};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use super::Metrics;

/// Buckets of the stage durations, seconds: from a sub-millisecond tokenization to a long
/// queue wait.
const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets of batch sizes in sequences.
const SEQUENCE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Buckets of token counts (a batch's, a request's).
const TOKEN_BUCKETS: &[f64] = &[
    16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 262144.0,
];

/// The stage histograms and their buckets.
const HISTOGRAMS: &[(&str, &[f64])] = &[
    ("embed_admission_wait_seconds", STAGE_BUCKETS),
    ("embed_stage_tokenize_seconds", STAGE_BUCKETS),
    ("embed_stage_queue_wait_seconds", STAGE_BUCKETS),
    ("embed_stage_forward_seconds", STAGE_BUCKETS),
    ("embed_stage_assembly_seconds", STAGE_BUCKETS),
    ("embed_batch_sequences", SEQUENCE_BUCKETS),
    ("embed_batch_tokens", TOKEN_BUCKETS),
    ("embed_request_input_tokens", TOKEN_BUCKETS),
];

/// `builder` with the buckets of every stage histogram.
pub(super) fn with_buckets(
    mut builder: PrometheusBuilder,
) -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    for (name, buckets) in HISTOGRAMS {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).into()), buckets)?;
    }
    Ok(builder)
}

/// Where one request spent its time, once per stage: what its chunks said (the longest of
/// each duration over its chunks, the largest pass that computed it) and what the gateway
/// measured (the queue wait, the assembly).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestStages {
    /// The model that computed it (the GPU workers' model name).
    pub model: String,
    /// The lane it travelled in.
    pub lane: Priority,
    /// Direct when every batch was taken on the direct path; fallback when a batch was
    /// offered and refused; queue otherwise.
    pub path: BatchPath,
    /// Arrival at the tokenizer worker to tokens ready.
    pub tokenize: Duration,
    /// Batch sent to pass started: the work queue (or direct offer), the GPU worker's turn,
    /// and NATS transit.
    pub queue_wait: Duration,
    /// The forward pass.
    pub forward: Duration,
    /// First chunk to answer complete, at the gateway.
    pub assembly: Duration,
    /// Sequences of the largest pass that computed it.
    pub batch_sequences: u32,
    /// Tokens of the largest pass that computed it.
    pub batch_tokens: u32,
    /// Tokens of all its inputs.
    pub input_tokens: u64,
}

impl Metrics {
    /// One request of `model` waited `waited` for its admission.
    pub fn admission_wait(&self, model: &str, waited: Duration) {
        self.with(|| {
            histogram!("embed_admission_wait_seconds", "model" => model.to_string())
                .record(waited.as_secs_f64());
        });
    }

    /// One request was served: each stage observed once.
    pub fn request_stages(&self, stages: &RequestStages) {
        let (model, lane) = (stages.model.clone(), lane_label(stages.lane));
        let path = match stages.path {
            BatchPath::Direct => "direct",
            BatchPath::Fallback | BatchPath::Queue => "queue",
        };
        let outcome = match stages.path {
            BatchPath::Direct => Some("hit"),
            BatchPath::Fallback => Some("fallback"),
            BatchPath::Queue => None,
        };
        self.with(|| {
            histogram!("embed_stage_tokenize_seconds", "model" => model.clone(), "lane" => lane)
                .record(stages.tokenize.as_secs_f64());
            histogram!("embed_stage_queue_wait_seconds", "model" => model.clone(), "lane" => lane, "path" => path)
                .record(stages.queue_wait.as_secs_f64());
            histogram!("embed_stage_forward_seconds", "model" => model.clone(), "lane" => lane, "path" => path)
                .record(stages.forward.as_secs_f64());
            histogram!("embed_stage_assembly_seconds", "model" => model.clone(), "lane" => lane)
                .record(stages.assembly.as_secs_f64());
            histogram!("embed_batch_sequences", "model" => model.clone(), "lane" => lane)
                .record(f64::from(stages.batch_sequences));
            histogram!("embed_batch_tokens", "model" => model.clone(), "lane" => lane)
                .record(f64::from(stages.batch_tokens));
            histogram!("embed_request_input_tokens", "model" => model.clone(), "lane" => lane)
                .record(stages.input_tokens as f64);
            if let Some(outcome) = outcome {
                counter!("embed_direct_path_total", "model" => model, "outcome" => outcome)
                    .increment(1);
            }
        });
    }

    /// Device memory and busy time of every GPU worker discovery found, per worker. Series of
    /// workers gone are no longer set and leave the exposition after a while (gauges go idle).
    pub fn set_worker_gauges(&self, workers: &[WorkerStatus]) {
        self.with(|| {
            for worker in workers {
                let kind = match worker.kind {
                    WorkerKind::Gpu => "gpu",
                    WorkerKind::RerankGpu => "rerank_gpu",
                    WorkerKind::Tokenizer | WorkerKind::RerankTokenizer => continue,
                };
                let (id, model) = (worker.worker_id.clone(), worker.model.clone());
                if let Some(used) = worker.device_memory_used {
                    gauge!("embed_gpu_worker_memory_used_bytes", "worker" => id.clone(), "model" => model.clone(), "kind" => kind)
                        .set(used as f64);
                }
                if let Some(total) = worker.device_memory_total {
                    gauge!("embed_gpu_worker_memory_total_bytes", "worker" => id.clone(), "model" => model.clone(), "kind" => kind)
                        .set(total as f64);
                }
                if let Some(busy_ms) = worker.device_busy_ms {
                    // A gauge (a counter holds whole units, and would never leave): it only
                    // rises while the worker lives, so its rate is the device's utilisation.
                    gauge!("embed_gpu_worker_busy_seconds", "worker" => id, "model" => model, "kind" => kind)
                        .set(busy_ms as f64 / 1e3);
                }
            }
        });
    }

    /// Workers serving per kind and model, and each model's tokenizer backlog, from
    /// discovery: `embed_workers` and `embed_queue_depth` split by model, so that several
    /// models on one bus can be told apart. A worker that answered but does not serve counts
    /// 0; a model gone is no longer set and its series leave after a while (gauges go idle).
    pub fn set_model_gauges(&self, workers: &[WorkerStatus]) {
        let mut serving: BTreeMap<(&'static str, &str), usize> = BTreeMap::new();
        let mut backlog: BTreeMap<&str, u64> = BTreeMap::new();
        for worker in workers {
            let count = serving
                .entry((worker.kind.name(), &worker.model))
                .or_default();
            *count += usize::from(worker.serving());
            if worker.kind == WorkerKind::Tokenizer {
                *backlog.entry(&worker.model).or_default() += worker.in_flight;
            }
        }
        self.with(|| {
            for ((kind, model), count) in serving {
                gauge!("embed_model_workers", "kind" => kind, "model" => model.to_string())
                    .set(count as f64);
            }
            for (model, depth) in backlog {
                gauge!("embed_model_queue_depth", "model" => model.to_string()).set(depth as f64);
            }
        });
    }
}

/// Where a finished request's stages go: this gateway's metrics, and (when traces are
/// exported) an `assembly` span under the gateway's span of the request.
pub struct StageSink {
    /// This gateway's metrics.
    metrics: Metrics,
    /// The gateway's span of the request: the trace context it sent the workers.
    span: Option<TraceParent>,
}

impl std::fmt::Debug for StageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageSink")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl StageSink {
    /// A sink for one request whose trace context (as sent to the workers) is `trace`.
    pub fn new(metrics: Metrics, trace: &RequestTrace) -> Self {
        Self {
            metrics,
            span: trace.parent(),
        }
    }

    /// Records a served request: its stages, and its `assembly` span from `first_chunk` to
    /// `done`.
    pub fn record(self, stages: &RequestStages, first_chunk: Instant, done: Instant) {
        self.metrics.request_stages(stages);
        let Some(span) = self.span.filter(|_| otlp::enabled()) else {
            return;
        };
        otlp::record(StageSpan {
            name: "assembly",
            parent: span,
            span_id: 0,
            start: otlp::wall_time(first_chunk),
            end: otlp::wall_time(done),
            attributes: vec![
                KeyValue::new("model", stages.model.clone()),
                KeyValue::new("lane", lane_label(stages.lane)),
                KeyValue::new("input_tokens", stages.input_tokens as i64),
            ],
        });
    }
}

/// Describes the stage metrics.
pub(super) fn describe() {
    let seconds = [
        (
            "embed_admission_wait_seconds",
            "Time requests waited for a place under max_concurrent_queries, by model.",
        ),
        (
            "embed_stage_tokenize_seconds",
            "Arrival at a tokenizer worker to tokens ready, per request, by model and lane.",
        ),
        (
            "embed_stage_queue_wait_seconds",
            "Batch sent to forward pass started (work queue or direct offer, the GPU worker's \
             turn, NATS transit), per request, by model, lane and path.",
        ),
        (
            "embed_stage_forward_seconds",
            "Forward pass that computed the request (the longest, when split), by model, lane \
             and path.",
        ),
        (
            "embed_stage_assembly_seconds",
            "First chunk to complete answer at the gateway, per request, by model and lane.",
        ),
    ];
    for (name, help) in seconds {
        describe_histogram!(name, Unit::Seconds, help);
    }
    describe_histogram!(
        "embed_batch_sequences",
        Unit::Count,
        "Sequences in the forward pass that computed each request (the largest, when split)."
    );
    describe_histogram!(
        "embed_batch_tokens",
        Unit::Count,
        "Tokens in the forward pass that computed each request (the largest, when split)."
    );
    describe_histogram!(
        "embed_request_input_tokens",
        Unit::Count,
        "Tokens of all the inputs of each request served by the workers."
    );
    describe_counter!(
        "embed_direct_path_total",
        "Requests whose batches were offered on the direct path: hit (taken), fallback \
         (refused, then queued)."
    );
    describe_gauge!(
        "embed_gpu_worker_memory_used_bytes",
        Unit::Bytes,
        "Device memory a GPU worker uses, per worker."
    );
    describe_gauge!(
        "embed_gpu_worker_memory_total_bytes",
        Unit::Bytes,
        "Device memory of a GPU worker's device, per worker."
    );
    describe_gauge!(
        "embed_model_workers",
        Unit::Count,
        "Workers of a kind serving a model, as discovery found them."
    );
    describe_gauge!(
        "embed_model_queue_depth",
        Unit::Count,
        "Sequences waiting in a model's tokenizer workers."
    );
    describe_gauge!(
        "embed_gpu_worker_busy_seconds",
        Unit::Seconds,
        "Time a GPU worker spent in forward passes since it started; rising, so its rate is \
         the device's utilisation."
    );
}
