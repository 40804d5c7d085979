//! One client connection: the TLS handshake when configured, then HTTP/1.1 or h2 (told
//! apart by the first bytes) until the client closes, a limit closes it, or shutdown.
//!
//! A watchdog closes the connection gracefully (HTTP/1.1: after the response being written;
//! h2: GOAWAY) when no request is in flight for a while: `header_read_timeout` before the
//! first request arrives (a slow h2 preface or an empty connection), `idle_timeout` after.
//! hyper itself closes an HTTP/1.1 connection whose request headers take longer than
//! `header_read_timeout`; it times the wait for the next request on a kept-alive
//! connection that way too, so an idle HTTP/1.1 connection is closed after the shorter of
//! the two limits. A connection asked to close for being idle that has not closed within
//! `header_read_timeout` more (a client that does not read its response) is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::EdgeLimits;
use super::body_deadline::{DeadlineBody, body_too_slow};

/// What every connection shares: the router, the limits, TLS, and the shutdown signal.
#[derive(Clone)]
pub struct Server {
    /// The HTTP connection settings (hyper's timers and timeouts).
    http: Arc<auto::Builder<TokioExecutor>>,
    /// The application.
    router: Router,
    /// The limits.
    limits: EdgeLimits,
    /// Set when serving HTTPS.
    tls: Option<TlsAcceptor>,
    /// Turns true when the gateway shuts down.
    stopping: watch::Receiver<bool>,
}

/// Requests on one connection, as its watchdog sees them.
#[derive(Debug, Clone, Copy, Default)]
struct Activity {
    /// Requests being answered now.
    in_flight: usize,
    /// Requests received so far.
    received: u64,
}

impl Server {
    /// Settings for every connection served with `limits`, through `tls` when given, until
    /// `stopping` turns true.
    pub fn new(
        router: Router,
        limits: EdgeLimits,
        tls: Option<TlsAcceptor>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        http.http2().timer(TokioTimer::new());
        Self {
            http: Arc::new(http),
            router,
            limits,
            tls,
            stopping,
        }
    }

    /// Serves one accepted connection until it closes.
    pub async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let Some(tls) = self.tls.clone() else {
            return self.serve_http(stream, peer).await;
        };
        match tokio::time::timeout(self.limits.header_read_timeout, tls.accept(stream)).await {
            Ok(Ok(stream)) => self.serve_http(stream, peer).await,
            Ok(Err(error)) => tracing::debug!(%peer, "TLS handshake failed: {error}"),
            Err(_) => tracing::debug!(
                %peer,
                "TLS handshake not finished within header_read_timeout_s: connection closed"
            ),
        }
    }

    /// Serves HTTP on `io` under the watchdog described in the module documentation.
    async fn serve_http<I>(mut self, io: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(watch::Sender::new(Activity::default()));
        let mut watched = activity.subscribe();
        let service = EdgeService {
            router: self.router.clone(),
            body_read_timeout: self.limits.body_read_timeout,
            activity,
        };
        let http = self.http.clone();
        let connection = http.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let mut closing = false;
        // Set once the connection is asked to close for being idle: when it must be gone.
        let mut drop_at: Option<Instant> = None;
        loop {
            let now = *watched.borrow_and_update();
            let idle_limit = if closing || now.in_flight > 0 {
                None
            } else if now.received == 0 {
                Some(self.limits.header_read_timeout)
            } else {
                Some(self.limits.idle_timeout)
            };
            let wake_at = drop_at.or_else(|| idle_limit.map(|limit| Instant::now() + limit));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, "connection ended: {error}");
                    }
                    return;
                }
                // A request started or finished: the idle timer starts again.
                _ = watched.changed() => {}
                _ = self.stopping.wait_for(|stopping| *stopping), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = sleep_until_or_never(wake_at) => {
                    if drop_at.is_some() {
                        tracing::debug!(%peer, "idle connection did not close: dropped");
                        return;
                    }
                    tracing::debug!(%peer, "no request in flight within the idle limit: closing");
                    closing = true;
                    drop_at = Some(Instant::now() + self.limits.header_read_timeout);
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when `None`.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The router as one connection serves it: counts requests for the watchdog and holds
/// request bodies to their deadline.
#[derive(Clone)]
struct EdgeService {
    /// The application.
    router: Router,
    /// Time a request body has to arrive.
    body_read_timeout: Duration,
    /// Shared with the connection's watchdog.
    activity: Arc<watch::Sender<Activity>>,
}

/// Counts a request as in flight until dropped (answered, or abandoned with its
/// connection).
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    /// Counts a request that just arrived.
    fn start(activity: &Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|now| {
            now.in_flight += 1;
            now.received += 1;
        });
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|now| now.in_flight -= 1);
    }
}

impl hyper::service::Service<Request<Incoming>> for EdgeService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity);
        let version = request.version();
        let timeout = self.body_read_timeout;
        let (parts, body) = request.into_parts();
        let (body, expired) = DeadlineBody::new(body, timeout);
        let request = Request::from_parts(parts, body);
        let router = self.router.clone();
        Box::pin(async move {
            let _in_flight = in_flight;
            let Ok(response) = router.oneshot(request).await;
            // Whatever the route made of the body it could not read, the answer is 408.
            Ok(if expired.is_set() {
                body_too_slow(version, timeout)
            } else {
                response
            })
        })
    }
}
