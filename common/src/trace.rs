//! Following one request through the stages: the caller's request id (`X-Request-Id`) and
//! its W3C trace context (`traceparent`), carried as NATS headers on requests and inside
//! token batch items (one batch serves many requests, so it has no single header).
//!
//! Every stage logs its per-request lines on the [`LOG_TARGET`] target with the fields
//! `request_id` and `trace_id`, so `RUST_LOG=info,requests=debug` shows one request's path
//! through the gateway, a tokenizer worker and a GPU worker.

use std::fmt;

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

/// Header holding the caller's request id (HTTP and NATS).
pub const REQUEST_ID_HEADER: &str = "X-Request-Id";

/// Header holding the W3C trace context (HTTP and NATS).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// `tracing` target of the per-request log lines of every stage.
pub const LOG_TARGET: &str = "requests";

/// Longest request id taken from a caller.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A W3C `traceparent`: which trace a request belongs to and which span sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace, shared by every span of one request (never zero).
    pub trace_id: u128,
    /// The span that sent this hop (never zero).
    pub parent_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Reads a `traceparent` header value (`00-{32 hex}-{16 hex}-{2 hex}`); `None` for
    /// anything the W3C rules say to ignore. Later versions are read by their first four
    /// fields, as the specification asks.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut fields = value.splitn(5, '-');
        let version = fields.next().filter(|v| is_lower_hex(v, 2))?;
        let trace_id = fields.next().filter(|v| is_lower_hex(v, 32))?;
        let parent_id = fields.next().filter(|v| is_lower_hex(v, 16))?;
        let flags = fields.next().filter(|v| is_lower_hex(v, 2))?;
        let rest = fields.next();
        if version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        let parsed = Self {
            trace_id: u128::from_str_radix(trace_id, 16).ok()?,
            parent_id: u64::from_str_radix(parent_id, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.parent_id != 0).then_some(parsed)
    }

    /// A new trace (random ids, sampled), for a request that came without one.
    pub fn root() -> Self {
        Self {
            trace_id: nonzero_random(),
            parent_id: nonzero_random(),
            flags: 1,
        }
    }

    /// The context this stage passes on: same trace and flags, a new span id.
    pub fn child(&self) -> Self {
        Self {
            parent_id: nonzero_random(),
            ..*self
        }
    }

    /// The trace id as 32 lowercase hex digits, as logged.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// A random id that is not zero (zero ids are invalid in trace context).
fn nonzero_random<T: Default + PartialEq>() -> T
where
    rand::distr::StandardUniform: rand::distr::Distribution<T>,
{
    loop {
        let id: T = rand::random();
        if id != T::default() {
            return id;
        }
    }
}

fn is_lower_hex(field: &str, len: usize) -> bool {
    field.len() == len
        && field
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `id` may be used as a request id: 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII
/// characters (so it is safe in headers and log lines).
pub fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A new random request id (32 lowercase hex digits).
pub fn new_request_id() -> String {
    format!("{:032x}", nonzero_random::<u128>())
}

/// What identifies one request in every stage's logs. Travels as NATS headers on requests
/// and as the `trace` field of token batch items.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTrace {
    /// The caller's request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C `traceparent` of the hop that sent the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl RequestTrace {
    /// A trace with both parts.
    pub fn new(request_id: String, traceparent: TraceParent) -> Self {
        Self {
            request_id: Some(request_id),
            traceparent: Some(traceparent.to_string()),
        }
    }

    /// The valid parts of a caller's request id and `traceparent` values (HTTP or NATS
    /// headers); invalid ones are left out.
    pub fn from_values(request_id: Option<&str>, traceparent: Option<&str>) -> Self {
        Self {
            request_id: request_id
                .filter(|id| is_valid_request_id(id))
                .map(str::to_string),
            traceparent: traceparent
                .and_then(TraceParent::parse)
                .map(|parent| parent.to_string()),
        }
    }

    /// Reads the two headers of a NATS message, ignoring invalid values; `None` when
    /// neither is there.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Option<Self> {
        let headers = headers?;
        let value = |name: &str| headers.get(name).map(|value| value.as_str());
        let trace = Self::from_values(value(REQUEST_ID_HEADER), value(TRACEPARENT_HEADER));
        (!trace.is_empty()).then_some(trace)
    }

    /// The NATS headers carrying this trace.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(id) = &self.request_id {
            headers.insert(REQUEST_ID_HEADER, id.as_str());
        }
        if let Some(parent) = &self.traceparent {
            headers.insert(TRACEPARENT_HEADER, parent.as_str());
        }
        headers
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.request_id.is_none() && self.traceparent.is_none()
    }

    /// The parsed trace context, when there is a valid one.
    pub fn parent(&self) -> Option<TraceParent> {
        self.traceparent.as_deref().and_then(TraceParent::parse)
    }

    /// The trace id (32 hex digits) for log lines; empty without a trace context.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .as_deref()
            .and_then(|parent| parent.get(3..35))
            .unwrap_or("")
    }

    /// The request id for log lines; empty without one.
    pub fn request_id(&self) -> &str {
        self.request_id.as_deref().unwrap_or("")
    }

    /// The trace this stage passes downstream: same request id, a child span.
    pub fn child(&self) -> Self {
        Self {
            request_id: self.request_id.clone(),
            traceparent: self.parent().map(|parent| parent.child().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_round_trips() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(parent.flags, 1);
        assert_eq!(parent.to_string(), EXAMPLE);
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn invalid_trace_contexts_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = format!("01{}-more", &EXAMPLE[2..]);
        let parent = TraceParent::parse(&later).expect("future versions are read");
        assert_eq!(parent.to_string(), EXAMPLE);
    }

    #[test]
    fn children_keep_the_trace_and_change_the_span() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.parent_id, parent.parent_id);
        assert_ne!(TraceParent::root().trace_id, TraceParent::root().trace_id);
    }

    #[test]
    fn request_ids_are_visible_ascii_of_bounded_length() {
        assert!(is_valid_request_id("req-42_a.b:c/d"));
        assert!(is_valid_request_id(&"x".repeat(MAX_REQUEST_ID_LEN)));
        assert!(!is_valid_request_id(""));
        assert!(!is_valid_request_id("has space"));
        assert!(!is_valid_request_id("tab\there"));
        assert!(!is_valid_request_id("é"));
        assert!(!is_valid_request_id(&"x".repeat(MAX_REQUEST_ID_LEN + 1)));
        let generated = new_request_id();
        assert!(is_valid_request_id(&generated));
        assert_eq!(generated.len(), 32);
    }

    #[test]
    fn headers_round_trip_and_invalid_values_are_dropped() {
        let trace = RequestTrace::new("abc".into(), TraceParent::parse(EXAMPLE).unwrap());
        let headers = trace.to_headers();
        assert_eq!(
            RequestTrace::from_headers(Some(&headers)),
            Some(trace.clone())
        );
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.request_id(), "abc");

        let mut bad = HeaderMap::new();
        bad.insert(REQUEST_ID_HEADER, "two words");
        bad.insert(TRACEPARENT_HEADER, "nonsense");
        assert_eq!(RequestTrace::from_headers(Some(&bad)), None);
        assert_eq!(RequestTrace::from_headers(None), None);
    }

    #[test]
    fn a_child_trace_keeps_the_request_id_and_trace_id() {
        let trace = RequestTrace::new("abc".into(), TraceParent::parse(EXAMPLE).unwrap());
        let child = trace.child();
        assert_eq!(child.request_id(), "abc");
        assert_eq!(child.trace_id(), trace.trace_id());
        assert_ne!(child.traceparent, trace.traceparent);
        let without_context = RequestTrace {
            request_id: Some("abc".into()),
            traceparent: None,
        };
        assert_eq!(without_context.child(), without_context);
    }
}
