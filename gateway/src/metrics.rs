//! Prometheus metrics of one gateway.
//!
//! Each gateway owns its recorder (no global one is installed), so several gateways in one
//! process (tests) keep separate counts; everything is recorded through
//! `metrics::with_local_recorder`.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `embed_http_requests_total` | counter | `route`, `status` |
//! | `embed_http_request_duration_seconds` | histogram | `route` |
//! | `embed_http_requests_in_flight` | gauge | |
//! | `embed_http_requests_in_flight_limit` | gauge | |
//! | `embed_http_requests_queued` | gauge | |
//! | `embed_http_requests_queue_limit` | gauge | |
//! | `embed_http_requests_rejected_total` | counter | `reason` |
//! | `embed_items_total` | counter | |
//! | `embed_tokens_total` | counter | |
//! | `embed_rerank_documents_total`, `embed_rerank_tokens_total` | counter | |
//! | `embed_cache_hits_total`, `embed_cache_misses_total` | counter | |
//! | `embed_cache_entries` | gauge | |
//! | `embed_queue_depth` | gauge | |
//! | `embed_workers` | gauge | `kind` (`tokenizer`, `gpu`, `rerank_tokenizer`, `rerank_gpu`) |
//! | `embed_upstream_errors_total` | counter | `code` |
//! | `embed_worker_batches_total`, `embed_worker_sequences_total`, `embed_worker_tokens_total` | counter | `kind` |
//! | `embed_worker_device_memory_used_bytes` | gauge | |
//!
//! The per-stage metrics (`embed_admission_wait_seconds`, `embed_stage_*`, batch sizes,
//! direct-path outcomes, per-GPU-worker memory and busy time) are in [`stages`].
//!
//! The `embed_worker_*` counters are the sums over the workers discovery found, as they
//! report them: the mean GPU batch size is `rate(embed_worker_sequences_total{kind="gpu"})`
//! over `rate(embed_worker_batches_total{kind="gpu"})` (in tokens, the same with
//! `embed_worker_tokens_total`), and the model's tokens/s is the rate of the tokens counter.

mod stages;

use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;

pub use self::stages::{RequestStages, StageSink};

/// Latency buckets, seconds: embedding requests take milliseconds to tens of seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How long a per-worker series stays after its worker stopped answering discovery.
const GONE_WORKER_SERIES: Duration = Duration::from_secs(300);

/// Handle to this gateway's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// Where values are recorded.
    recorder: Arc<PrometheusRecorder>,
    /// Renders the text exposition format.
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh recorder with every metric described.
    pub fn new() -> Self {
        // Gauges are set before every scrape, so only those of workers gone go idle.
        let builder =
            PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(GONE_WORKER_SERIES));
        let recorder = builder
            .set_buckets_for_metric(
                Matcher::Full("embed_http_request_duration_seconds".into()),
                LATENCY_BUCKETS,
            )
            .and_then(stages::with_buckets)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let metrics = Self {
            recorder: Arc::new(recorder),
            handle,
        };
        metrics.with(describe);
        metrics.with(stages::describe);
        metrics
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self.recorder.as_ref(), f)
    }

    /// One HTTP request finished on `route` with `status` after `seconds`.
    pub fn http_request(&self, route: &str, status: u16, seconds: f64) {
        self.with(|| {
            let route = route.to_string();
            counter!("embed_http_requests_total", "route" => route.clone(), "status" => status.to_string())
                .increment(1);
            histogram!("embed_http_request_duration_seconds", "route" => route).record(seconds);
        });
    }

    /// A request was refused for `reason` (`overloaded`: the admission queue was full;
    /// `queue_timeout`: its deadline passed while it waited for a place).
    pub fn rejected(&self, reason: &'static str) {
        self.with(|| {
            counter!("embed_http_requests_rejected_total", "reason" => reason).increment(1)
        });
    }

    /// The model embedded `items` texts of `tokens` tokens (cache hits not included).
    pub fn embedded(&self, items: u64, tokens: u64) {
        self.with(|| {
            counter!("embed_items_total").increment(items);
            counter!("embed_tokens_total").increment(tokens);
        });
    }

    /// The reranker scored `documents` pairs of `tokens` tokens.
    pub fn reranked(&self, documents: u64, tokens: u64) {
        self.with(|| {
            counter!("embed_rerank_documents_total").increment(documents);
            counter!("embed_rerank_tokens_total").increment(tokens);
        });
    }

    /// Cache lookups of one request.
    pub fn cache_lookups(&self, hits: u64, misses: u64) {
        self.with(|| {
            counter!("embed_cache_hits_total").increment(hits);
            counter!("embed_cache_misses_total").increment(misses);
        });
    }

    /// A worker answered with error `code`, or the gateway gave up (`timeout`,
    /// `no_responders`, ...).
    pub fn upstream_error(&self, code: &'static str) {
        self.with(|| counter!("embed_upstream_errors_total", "code" => code).increment(1));
    }

    /// Gauges read at scrape time.
    pub fn set_gauges(&self, gauges: Gauges) {
        self.with(|| {
            gauge!("embed_http_requests_in_flight").set(gauges.in_flight as f64);
            gauge!("embed_http_requests_in_flight_limit").set(gauges.in_flight_limit as f64);
            gauge!("embed_http_requests_queued").set(gauges.queued as f64);
            gauge!("embed_http_requests_queue_limit").set(gauges.queue_limit as f64);
            gauge!("embed_cache_entries").set(gauges.cache_entries as f64);
            gauge!("embed_queue_depth").set(gauges.queue_depth as f64);
            gauge!("embed_workers", "kind" => "tokenizer").set(gauges.tokenizer_workers as f64);
            gauge!("embed_workers", "kind" => "gpu").set(gauges.gpu_workers as f64);
            gauge!("embed_workers", "kind" => "rerank_tokenizer")
                .set(gauges.rerank_tokenizer_workers as f64);
            gauge!("embed_workers", "kind" => "rerank_gpu").set(gauges.rerank_gpu_workers as f64);
            for (kind, totals) in [
                ("tokenizer", gauges.tokenizer_totals),
                ("gpu", gauges.gpu_totals),
                ("rerank_tokenizer", gauges.rerank_tokenizer_totals),
                ("rerank_gpu", gauges.rerank_gpu_totals),
            ] {
                counter!("embed_worker_batches_total", "kind" => kind).absolute(totals.batches);
                counter!("embed_worker_sequences_total", "kind" => kind).absolute(totals.sequences);
                counter!("embed_worker_tokens_total", "kind" => kind).absolute(totals.tokens);
            }
            gauge!("embed_worker_device_memory_used_bytes").set(gauges.device_memory_used as f64);
        });
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples so memory stays bounded between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Point-in-time values set as gauges before each scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Requests admitted and not finished.
    pub in_flight: usize,
    /// Requests allowed in flight (`max_concurrent_queries`).
    pub in_flight_limit: usize,
    /// Requests waiting in the admission queue for a place.
    pub queued: usize,
    /// Requests allowed to wait (`max_queued_requests`).
    pub queue_limit: usize,
    /// Vectors in the cache.
    pub cache_entries: u64,
    /// Sequences waiting in tokenizer workers.
    pub queue_depth: u64,
    /// Loaded tokenizer workers.
    pub tokenizer_workers: usize,
    /// Loaded GPU workers.
    pub gpu_workers: usize,
    /// Work done by the tokenizer workers (batches emitted).
    pub tokenizer_totals: WorkerTotals,
    /// Work done by the GPU workers (batches computed).
    pub gpu_totals: WorkerTotals,
    /// Loaded rerank tokenizer workers.
    pub rerank_tokenizer_workers: usize,
    /// Loaded rerank GPU workers.
    pub rerank_gpu_workers: usize,
    /// Work done by the rerank tokenizer workers.
    pub rerank_tokenizer_totals: WorkerTotals,
    /// Work done by the rerank GPU workers.
    pub rerank_gpu_totals: WorkerTotals,
    /// Device memory the GPU workers use, bytes.
    pub device_memory_used: u64,
}

/// Counters summed over the workers of one kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerTotals {
    /// Batches.
    pub batches: u64,
    /// Sequences in those batches.
    pub sequences: u64,
    /// Tokens in those batches.
    pub tokens: u64,
}

fn describe() {
    describe_counter!(
        "embed_http_requests_total",
        "HTTP requests answered, by route and status."
    );
    describe_histogram!(
        "embed_http_request_duration_seconds",
        Unit::Seconds,
        "Time from request to response, by route."
    );
    describe_gauge!(
        "embed_http_requests_in_flight",
        "Embedding requests admitted and not yet answered."
    );
    describe_gauge!(
        "embed_http_requests_in_flight_limit",
        "Requests allowed in flight at once (max_concurrent_queries)."
    );
    describe_gauge!(
        "embed_http_requests_queued",
        "Requests waiting, first come first served, for a place under the in-flight limit."
    );
    describe_gauge!(
        "embed_http_requests_queue_limit",
        "Requests allowed to wait for a place (max_queued_requests); beyond it, 429."
    );
    describe_counter!(
        "embed_http_requests_rejected_total",
        "Requests refused by admission control, by reason: overloaded (queue full, 429), \
         queue_timeout (deadline passed while queued, 504)."
    );
    describe_counter!(
        "embed_items_total",
        "Texts embedded by the model (cache hits excluded)."
    );
    describe_counter!(
        "embed_tokens_total",
        "Tokens embedded by the model (cache hits excluded); tokens/s is its rate."
    );
    describe_counter!(
        "embed_rerank_documents_total",
        "Documents scored by the reranker."
    );
    describe_counter!(
        "embed_rerank_tokens_total",
        "Tokens of the reranker prompts scored (template, query and document)."
    );
    describe_counter!(
        "embed_cache_hits_total",
        "Texts answered from the vector cache."
    );
    describe_counter!(
        "embed_cache_misses_total",
        "Texts looked up in the cache and not found."
    );
    describe_gauge!("embed_cache_entries", "Vectors held in the cache.");
    describe_gauge!(
        "embed_queue_depth",
        "Sequences waiting in tokenizer workers (sum of their in_flight)."
    );
    describe_gauge!(
        "embed_workers",
        "Loaded workers that answered discovery, by kind."
    );
    describe_counter!(
        "embed_worker_batches_total",
        "Batches emitted (tokenizer) or computed (gpu), summed over the workers found."
    );
    describe_counter!(
        "embed_worker_sequences_total",
        "Sequences in those batches; divided by the batch rate, the mean batch size."
    );
    describe_counter!(
        "embed_worker_tokens_total",
        "Tokens in those batches; its rate is the model's tokens/s."
    );
    describe_gauge!(
        "embed_worker_device_memory_used_bytes",
        "Device memory used by the GPU workers found."
    );
    describe_counter!(
        "embed_upstream_errors_total",
        "Requests that failed upstream, by error code."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_gateways_keep_separate_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.http_request("/v1/embeddings", 200, 0.02);
        a.embedded(3, 42);
        let text = a.render();
        assert!(
            text.contains(r#"embed_http_requests_total{route="/v1/embeddings",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains("embed_tokens_total 42"), "{text}");
        assert!(
            text.contains("embed_http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(!b.render().contains("embed_tokens_total 42"));
    }

    #[test]
    fn gpu_workers_get_their_own_series_and_admission_waits_are_timed() {
        use common::wire::{WorkerKind, WorkerStatus};

        let status = |id: &str, kind| WorkerStatus {
            device_memory_used: Some(2048),
            device_memory_total: Some(8192),
            device_busy_ms: Some(1500),
            ..common::worker::initial_status(id, kind, "qwen3-tiny".into())
        };
        let gpu = status("gpu", WorkerKind::Gpu);
        let tokenizer = status("tok", WorkerKind::Tokenizer);
        let metrics = Metrics::new();
        metrics.set_worker_gauges(&[gpu.clone(), tokenizer]);
        metrics.admission_wait("qwen3-tiny", Duration::from_millis(30));
        let text = metrics.render();
        let labels = format!(
            r#"{{worker="{}",model="qwen3-tiny",kind="gpu"}}"#,
            gpu.worker_id
        );
        for line in [
            format!("embed_gpu_worker_memory_used_bytes{labels} 2048"),
            format!("embed_gpu_worker_memory_total_bytes{labels} 8192"),
            format!("embed_gpu_worker_busy_seconds{labels} 1.5"),
            r#"embed_admission_wait_seconds_count{model="qwen3-tiny"} 1"#.to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(
            !text.contains("kind=\"tokenizer\""),
            "tokenizers have no device:\n{text}"
        );
    }

    #[test]
    fn workers_and_backlog_are_counted_per_model() {
        use common::wire::{WorkerKind, WorkerStatus};

        let status = |id: &str, kind, model: &str, in_flight| WorkerStatus {
            in_flight,
            ..common::worker::initial_status(id, kind, model.into())
        };
        let unhealthy = WorkerStatus {
            unhealthy: Some("device lost".into()),
            ..status("gpu-b2", WorkerKind::Gpu, "b", 0)
        };
        let metrics = Metrics::new();
        metrics.set_model_gauges(&[
            status("tok-a1", WorkerKind::Tokenizer, "a", 3),
            status("tok-a2", WorkerKind::Tokenizer, "a", 4),
            status("gpu-a1", WorkerKind::Gpu, "a", 1),
            status("tok-b1", WorkerKind::Tokenizer, "b", 5),
            status("gpu-b1", WorkerKind::Gpu, "b", 0),
            unhealthy,
            status("rtok-r1", WorkerKind::RerankTokenizer, "r", 9),
        ]);
        let text = metrics.render();
        for line in [
            r#"embed_model_workers{kind="tokenizer",model="a"} 2"#,
            r#"embed_model_workers{kind="gpu",model="a"} 1"#,
            r#"embed_model_workers{kind="tokenizer",model="b"} 1"#,
            r#"embed_model_workers{kind="gpu",model="b"} 1"#,
            r#"embed_model_workers{kind="rerank_tokenizer",model="r"} 1"#,
            r#"embed_model_queue_depth{model="a"} 7"#,
            r#"embed_model_queue_depth{model="b"} 5"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(
            !text.contains(r#"embed_model_queue_depth{model="r"}"#),
            "the embedding backlog counts embedding tokenizers only:\n{text}"
        );
    }

    #[test]
    fn admission_gauges_are_rendered() {
        let metrics = Metrics::new();
        metrics.set_gauges(Gauges {
            in_flight: 2,
            in_flight_limit: 2,
            queued: 3,
            queue_limit: 20,
            ..Gauges::default()
        });
        metrics.rejected("queue_timeout");
        let text = metrics.render();
        for line in [
            "embed_http_requests_in_flight 2",
            "embed_http_requests_in_flight_limit 2",
            "embed_http_requests_queued 3",
            "embed_http_requests_queue_limit 20",
            r#"embed_http_requests_rejected_total{reason="queue_timeout"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
