//! OTLP trace export: each stage sends one span per request (or per batch of a request) to an
//! OpenTelemetry collector, joined into one trace by the W3C `traceparent` the stages
//! already carry ([`crate::trace`]).
//!
//! Off unless `[telemetry] otlp_endpoint` is set. [`init`] installs this process's exporter
//! (the SDK's batch processor, sending OTLP/HTTP JSON from a thread of its own, so no stage
//! waits on the collector); [`record`] hands it one finished span; [`Exporter::shutdown`]
//! sends what is left at exit. A span is recorded only when its trace is sampled (flag bit 0
//! of its `traceparent`): a caller who sends `-00` keeps its request out of the traces.
//!
//! Spans carry their own start and end (each stage measures on its own clock and records once
//! the stage is over), and their own span ids: the id a stage puts in the `traceparent` it
//! sends downstream, so the next stage's span is its child.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::Context;
pub use opentelemetry::KeyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};

use crate::telemetry::TelemetryConfig;
use crate::trace::TraceParent;

/// The tracer of this process, once [`init`] installed an exporter.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The path OTLP/HTTP collectors take traces on.
const TRACES_PATH: &str = "/v1/traces";

/// How long [`Exporter::shutdown`] waits for the last spans to go out.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint is not a URL the exporter can send to.
    #[error("[telemetry] otlp_endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The configured endpoint.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
}

/// This process's exporter; [`Exporter::shutdown`] sends the spans still buffered. Does
/// nothing when export is off.
#[must_use = "call shutdown() at exit, or the last spans are lost"]
pub struct Exporter {
    /// The SDK's provider; `None` when export is off (or another exporter was installed).
    provider: Option<SdkTracerProvider>,
}

impl Exporter {
    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the buffered spans (waiting a few seconds at most) and stops exporting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_PATIENCE)
        {
            tracing::warn!(error = %e, "the last spans may not have reached the collector");
        }
    }
}

/// Installs the exporter `config` describes for this process (`default_service`: its
/// service name unless the configuration names one). An empty endpoint turns export off;
/// a second call keeps the first exporter.
pub fn init(config: &TelemetryConfig, default_service: &str) -> Result<Exporter, OtlpError> {
    let endpoint = config.otlp_endpoint.trim();
    if endpoint.is_empty() {
        return Ok(Exporter { provider: None });
    }
    let url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| OtlpError::Endpoint {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(config.export_delay_ms.max(1)))
        .build();
    let service = match config.service_name.trim() {
        "" => default_service.to_string(),
        name => name.to_string(),
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batches)
                .build(),
        )
        .with_resource(
            Resource::builder()
                .with_service_name(service.clone())
                .build(),
        )
        .build();
    if TRACER.set(provider.tracer("qwen3-embed")).is_err() {
        tracing::warn!("an OTLP exporter is installed already; keeping it");
        return Ok(Exporter { provider: None });
    }
    tracing::info!(%url, %service, "exporting traces over OTLP");
    Ok(Exporter {
        provider: Some(provider),
    })
}

/// The collector's traces URL: `endpoint` (its OTLP/HTTP base, e.g.
/// `http://collector:4318`) with `/v1/traces` added unless it ends so already.
fn traces_url(endpoint: &str) -> Result<String, OtlpError> {
    let refuse = |reason: &str| OtlpError::Endpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| refuse("must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(refuse("names no host"));
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with(TRACES_PATH) {
        base.to_string()
    } else {
        format!("{base}{TRACES_PATH}")
    })
}

/// Whether an exporter is installed (so callers may skip building spans).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// One finished stage of one request, as a span.
#[derive(Debug, Clone)]
pub struct StageSpan {
    /// The stage (`gateway`, `tokenize`, `queue_wait`, `forward`, `assembly`).
    pub name: &'static str,
    /// The trace it belongs to, and the span that sent the work to this stage (the parent);
    /// `parent_id` 0 makes a root span.
    pub parent: TraceParent,
    /// This span's id (0: a new random one). A stage that passed a `traceparent` on gives
    /// the id it put there, so the next stage's spans are its children.
    pub span_id: u64,
    /// When the stage began, on this machine's wall clock.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// What else is worth knowing (model, lane, sizes).
    pub attributes: Vec<KeyValue>,
}

/// Exports `span` when an exporter is installed and its trace is sampled; otherwise does
/// nothing. Never blocks on the collector.
pub fn record(span: StageSpan) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    if span.parent.flags & 1 == 0 || span.parent.trace_id == 0 {
        return;
    }
    let trace_id = TraceId::from_bytes(span.parent.trace_id.to_be_bytes());
    let parent = match span.parent.parent_id {
        0 => Context::new(),
        id => Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from_bytes(id.to_be_bytes()),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
    };
    let mut builder = tracer
        .span_builder(span.name)
        .with_kind(SpanKind::Internal)
        .with_trace_id(trace_id)
        .with_start_time(span.start)
        .with_attributes(span.attributes);
    if span.span_id != 0 {
        builder = builder.with_span_id(SpanId::from_bytes(span.span_id.to_be_bytes()));
    }
    let mut started = builder.start_with_context(tracer, &parent);
    opentelemetry::trace::Span::end_with_timestamp(&mut started, span.end);
}

/// The wall-clock time of `instant` (a reading of this process's monotonic clock), for span
/// bounds measured on the monotonic clock.
pub fn wall_time(instant: Instant) -> SystemTime {
    let now = Instant::now();
    let wall = SystemTime::now();
    if instant <= now {
        wall.checked_sub(now - instant).unwrap_or(wall)
    } else {
        wall.checked_add(instant - now).unwrap_or(wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        for (given, url) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            ("https://c.example/v1/traces", "https://c.example/v1/traces"),
            (
                "http://127.0.0.1:9/otlp",
                "http://127.0.0.1:9/otlp/v1/traces",
            ),
        ] {
            assert_eq!(traces_url(given).unwrap(), url, "{given}");
        }
        for bad in [
            "collector:4318",
            "ftp://c",
            "http://",
            "http:///v1",
            "http://a b",
        ] {
            let error = traces_url(bad).unwrap_err().to_string();
            assert!(error.contains("otlp_endpoint"), "{bad}: {error}");
        }
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported() {
        let exporter = init(&TelemetryConfig::default(), "test").unwrap();
        assert!(!exporter.is_on());
        exporter.shutdown();
        // Recording without an exporter is a no-op, never an error.
        record(StageSpan {
            name: "tokenize",
            parent: TraceParent::root(),
            span_id: 0,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: Vec::new(),
        });
    }

    #[test]
    fn a_monotonic_reading_maps_onto_the_wall_clock() {
        let before = SystemTime::now();
        let earlier = Instant::now() - Duration::from_millis(250);
        let wall = wall_time(earlier);
        let back = before.duration_since(wall).unwrap_or_default();
        assert!(back >= Duration::from_millis(240), "{back:?}");
        assert!(back < Duration::from_secs(5), "{back:?}");
    }
}
