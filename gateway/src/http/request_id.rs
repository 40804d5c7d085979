//! Request ids and trace context: every request gets an `X-Request-Id` (the caller's when
//! valid, a new one otherwise), echoed on the response, and a W3C trace context (the
//! caller's `traceparent` continued, or a new trace). Both go to the workers as NATS
//! headers; the handling of the request runs in an `http_request` span carrying `request_id`
//! and `trace_id`, so every log line it writes names them.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use common::otlp::{self, KeyValue, StageSpan};
use common::trace::{
    REQUEST_ID_HEADER, RequestTrace, TRACEPARENT_HEADER, TraceParent, new_request_id,
};
use tracing::Instrument as _;

/// Assigns the request's id and trace context, runs it inside its span and echoes the id.
pub async fn assign(mut request: Request, next: Next) -> Response {
    let started = std::time::SystemTime::now();
    let caller = caller_parent(request.headers());
    let trace = incoming(request.headers());
    let own = trace.parent();
    let span = tracing::info_span!(
        "http_request",
        request_id = trace.request_id(),
        trace_id = trace.trace_id(),
    );
    let echoed = HeaderValue::from_str(trace.request_id()).ok();
    request.extensions_mut().insert(trace);
    let mut response = next.run(request).instrument(span).await;
    if let Some(id) = echoed {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    if let Some(own) = own.filter(|_| otlp::enabled()) {
        otlp::record(StageSpan {
            name: "gateway",
            // The caller's span is the parent (none: this is the trace's root).
            parent: TraceParent {
                parent_id: caller.map_or(0, |caller| caller.parent_id),
                ..own
            },
            span_id: own.parent_id,
            start: started,
            end: std::time::SystemTime::now(),
            attributes: vec![KeyValue::new(
                "http.status_code",
                i64::from(response.status().as_u16()),
            )],
        });
    }
    response
}

/// The caller's valid `traceparent`, if it sent one.
fn caller_parent(headers: &HeaderMap) -> Option<TraceParent> {
    headers
        .get(TRACEPARENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceParent::parse)
}

/// The request's trace: the caller's valid request id or a new one, and a child of the
/// caller's valid `traceparent` or a new trace.
fn incoming(headers: &HeaderMap) -> RequestTrace {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let given = RequestTrace::from_values(header(REQUEST_ID_HEADER), header(TRACEPARENT_HEADER));
    let parent = given
        .parent()
        .map_or_else(TraceParent::root, |parent| parent.child());
    RequestTrace::new(given.request_id.unwrap_or_else(new_request_id), parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_callers_id_and_trace_are_continued() {
        let trace = incoming(&headers(&[
            ("x-request-id", "client-7"),
            ("traceparent", PARENT),
        ]));
        assert_eq!(trace.request_id(), "client-7");
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(trace.traceparent.as_deref(), Some(PARENT), "a new span id");
    }

    #[test]
    fn missing_or_invalid_values_are_replaced() {
        for pairs in [
            &[][..],
            &[("x-request-id", ""), ("traceparent", "00-zz")][..],
            &[("x-request-id", "two words")][..],
        ] {
            let trace = incoming(&headers(pairs));
            assert_eq!(trace.request_id().len(), 32);
            assert_eq!(trace.trace_id().len(), 32);
            assert!(trace.parent().is_some());
        }
    }
}
