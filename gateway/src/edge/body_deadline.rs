//! The request body deadline: a body that has not fully arrived within
//! `body_read_timeout_s` of its headers fails to read, and its request is answered 408
//! whatever the route made of the failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, Version, header};
use bytes::Bytes;
use hyper::Response;
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep, sleep_until};

/// Errors a request body may produce.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body held to a deadline.
pub struct DeadlineBody<B> {
    /// The body as it comes from the connection.
    body: B,
    /// When the whole body must have arrived.
    deadline: Instant,
    /// The timer, made the first time the body is not ready.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Set when the deadline passed with the body unfinished.
    expired: Arc<AtomicBool>,
    /// The limit, for the error message.
    timeout: Duration,
}

/// Tells whether a [`DeadlineBody`] ran out of time.
pub struct Expired(Arc<AtomicBool>);

impl Expired {
    /// Whether the body's deadline passed before it was read.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl<B> DeadlineBody<B> {
    /// `body`, which must arrive within `timeout` from now, and the flag its expiry sets.
    pub fn new(body: B, timeout: Duration) -> (Self, Expired) {
        let expired = Arc::new(AtomicBool::new(false));
        let body = Self {
            body,
            deadline: Instant::now() + timeout,
            sleep: None,
            expired: expired.clone(),
            timeout,
        };
        (body, Expired(expired))
    }

    /// The error every read returns once the deadline has passed.
    fn too_slow(&self) -> BoxError {
        Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "request body not received within body_read_timeout_s ({} s)",
                self.timeout.as_secs_f64()
            ),
        ))
    }
}

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.expired.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(this.too_slow())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        this.expired.store(true, Ordering::Release);
        Poll::Ready(Some(Err(this.too_slow())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The 408 answer to a request whose body did not arrive within `timeout`, in the
/// OpenAI-style error shape; HTTP/1 connections close after it (the rest of the body is
/// never read).
pub fn body_too_slow(version: Version, timeout: Duration) -> Response<Body> {
    let body = serde_json::json!({
        "error": {
            "message": format!(
                "request body not received within body_read_timeout_s ({} s)",
                timeout.as_secs_f64()
            ),
            "type": "invalid_request_error",
            "param": null,
            "code": "request_timeout",
        }
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if version <= Version::HTTP_11 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
