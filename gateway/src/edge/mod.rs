//! The HTTP edge: accepts TCP connections (with TLS when configured) and serves HTTP/1.1 and
//! h2 on them with limits that protect the service from slow and idle clients.
//!
//! - At most `max_connections` connections are served at once; at the cap the accept loop
//!   stops accepting, so new connections wait in the kernel's listen backlog (they are
//!   served, in order, as others close) rather than being cut.
//! - A connection has `header_read_timeout_s` to finish its TLS handshake and start its
//!   first request, and every HTTP/1.1 request's headers must arrive within it
//!   (`connection`).
//! - A request body must arrive within `body_read_timeout_s` of its headers, else 408
//!   (`body_deadline`).
//! - A connection with no request in flight for `idle_timeout_s` is closed (`connection`).
//! - HTTPS, when configured, is read at start (`tls`).
//!
//! Shutdown stops accepting at once, asks every connection to close once its requests in
//! flight are answered, and waits for all of them.

mod body_deadline;
mod connection;
mod tls;

pub use tls::load_acceptor;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::GatewayConfig;

/// How long to pause accepting after an error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The limits the edge enforces (from `[gateway]`).
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Time to finish the TLS handshake and start the first request, and to send a
    /// request's headers.
    pub header_read_timeout: Duration,
    /// Time to send a request body once its headers are in.
    pub body_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl EdgeLimits {
    /// The limits `config` sets.
    pub fn from_config(config: &GatewayConfig) -> Self {
        Self {
            header_read_timeout: config.header_read_timeout(),
            body_read_timeout: config.body_read_timeout(),
            idle_timeout: config.idle_timeout(),
            max_connections: config.max_connections,
        }
    }
}

/// Serves `router` on `listener` (through `tls` when given) within `limits` until `shutdown`
/// resolves, then stops accepting and waits for every connection to finish its requests in
/// flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: EdgeLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let server = connection::Server::new(router, limits, tls, stopping);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut at_cap = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                at_cap = false;
                slot
            }
            Err(_) => {
                if !at_cap {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "at max_connections: new connections wait in the listen backlog \
                         until others close"
                    );
                    at_cap = true;
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => {
                        slot.expect("the connection semaphore is never closed")
                    }
                    () = &mut shutdown => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let server = server.clone();
                tokio::spawn(async move {
                    server.serve(stream, peer).await;
                    drop(slot);
                });
            }
            Err(error) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // the listener itself stays usable.
                tracing::warn!("accepting a connection failed: {error}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(listener);
    stop.send_replace(true);
    // Every connection task holds a slot until it ends.
    let all = u32::try_from(limits.max_connections).expect("validated: max_connections fits");
    let _all_closed = slots.acquire_many(all).await;
}
