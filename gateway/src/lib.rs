//! The gateway: HTTP front door of the Qwen3 embedding and reranking pipeline. It
//! validates requests, picks the model each names (the configured defaults, or any model
//! whose workers answer discovery on a route of their own), admits at most
//! `max_concurrent_queries` at once (queueing up to `max_queued_requests` more, first come
//! first served), answers what its LRU cache holds and publishes the rest as one
//! `EmbedRequest` on the model's `{prefix}.requests` (rerank requests as one `RerankRequest`
//! on `{prefix}.rerank`, never cached), then assembles the workers' chunks into one answer.
//!
//! # Layout
//! - [`config`]: [`GatewayConfig`], the `[gateway]` section; [`api_keys`]: the bearer
//!   tokens clients authenticate with, kept as digests.
//! - [`edge`]: connections: HTTP/1.1 and h2, optionally over TLS, with header, body and
//!   idle timeouts and a connection cap.
//! - [`http`]: the router and one module per endpoint family: [`http::embeddings`]
//!   (OpenAI `/v1/embeddings`, `/v1/models`), [`http::seed`] (the seed's
//!   `{root_path}/embedding/api`), [`http::rerank`] (`/v1/rerank` for Cohere and Jina
//!   clients, TEI's `/rerank`), [`http::health`], [`http::debug`]; `/metrics` is served by
//!   the router itself. [`http::auth`] checks API keys on every route but health;
//!   [`http::request_id`] gives every request an `X-Request-Id` and a W3C trace context;
//!   [`http::extract`] reads JSON bodies field by field and [`http::error`] maps every
//!   failure to a status and an OpenAI-style body in one place.
//! - [`models`]: the served models (defaults and discovered ones) and the rule that picks
//!   a request's.
//! - [`service`]: one request from validation to vectors or scores (limits, admission,
//!   cache, upstream).
//! - [`admission`]: the in-flight limit and its FIFO queue; [`cache`]: the vector LRU;
//!   [`metrics`]: this gateway's Prometheus recorder.
//! - [`upstream`]: the NATS side: one wildcard inbox (each request's reply subject, and the
//!   bundle subject where workers pack many requests' replies) and a map of pending requests
//!   ([`upstream::assembly`] puts chunks together), publishing again what no tokenizer
//!   worker acknowledged in time ([`upstream::resend`]), and worker discovery
//!   ([`upstream::discovery`]).
//!
//! [`run`] serves on a listener until a shutdown future resolves; [`spawn`] binds and runs
//! it in the background for tests.

pub mod admission;
pub mod api_keys;
pub mod cache;
pub mod config;
pub mod edge;
pub mod http;
pub mod metrics;
pub mod models;
pub mod quantize;
pub mod service;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::api_keys::ApiKeys;
pub use crate::config::GatewayConfig;
use crate::edge::EdgeLimits;
use crate::http::Shared;
use crate::metrics::Metrics;
use crate::models::{Defaults, Models};
use crate::service::EmbedService;
use crate::upstream::Upstream;
use crate::upstream::discovery::Discovery;

/// How often histogram samples are drained into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Serves `config` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (each within its deadline), and drains the NATS connection.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (api_keys, tls) = prepare(&config, &listener)?;
    if api_keys.is_empty() {
        tracing::info!("no API key configured: every route is open to any client");
    } else {
        tracing::info!(
            keys = api_keys.len(),
            "API keys required on every route but /health"
        );
    }
    let (client, link) = config
        .nats
        .connect_watched("gateway")
        .await
        .context("connecting to NATS")?;
    let subjects = config.nats.subjects();
    let metrics = Metrics::new();
    let upstream = Upstream::start(
        client.clone(),
        &subjects,
        link,
        config.tokenizer_ack_timeout(),
        metrics.clone(),
    )
    .await
    .context("subscribing to the reply inbox")?;
    let discovery = Arc::new(Discovery::new(
        client.clone(),
        &subjects,
        Duration::from_millis(config.status_wait_ms),
        Duration::from_millis(config.status_cache_ms),
    ));
    let service = EmbedService::new(&config, upstream, metrics.clone());
    let models = Models::new(Defaults::of_config(&config), discovery.clone());
    let state = Arc::new(Shared {
        started_s: common::wire::now_ms() / 1000,
        config,
        service,
        models,
        discovery: discovery.clone(),
        metrics: metrics.clone(),
        api_keys,
    });

    // Learn the workers (the models and their hidden sizes) before the first request.
    let patience = Duration::from_secs_f64(state.config.nats.connect_timeout_s.clamp(0.1, 60.0));
    let warm_up = tokio::spawn(async move { discovery.warm_up(patience).await });
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });

    tracing::info!(
        addr = %listener.local_addr()?,
        https = tls.is_some(),
        gateway_id = state.service.upstream.gateway_id(),
        subject = subjects.requests(),
        "gateway listening"
    );
    let limits = EdgeLimits::from_config(&state.config);
    edge::serve(listener, http::router(state.clone()), limits, tls, shutdown).await;
    tracing::info!("gateway stopped accepting; in-flight requests finished");
    warm_up.abort();
    upkeep.abort();
    state.service.upstream.close();
    if let Err(e) = client.drain().await {
        tracing::warn!("draining the NATS connection failed: {e}");
    }
    Ok(())
}

/// Checks what can fail before serving: the settings, the API keys, the exposure of the
/// bound address, the TLS files. Returns the keys and the TLS acceptor (when HTTPS is
/// configured), and warns loudly when a public address is served without keys.
fn prepare(
    config: &GatewayConfig,
    listener: &TcpListener,
) -> anyhow::Result<(ApiKeys, Option<TlsAcceptor>)> {
    config.validate()?;
    let api_keys = config.load_api_keys()?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if config.open_public_bind(addr.ip(), &api_keys)? {
        tracing::warn!(
            %addr,
            "SERVING A PUBLIC ADDRESS WITHOUT API KEYS: /v1/embeddings, /v1/rerank, /debug and \
             /metrics are open to anyone who can reach {addr}; configure api_keys_file or \
             QWEN3_EMBED_API_KEYS, or bind a loopback host"
        );
    }
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(edge::load_acceptor(cert, key)?),
        _ => None,
    };
    Ok((api_keys, tls))
}

/// A gateway running in the background (for tests and embedding in other programs).
pub struct RunningGateway {
    /// The bound address.
    addr: SocketAddr,
    /// Resolves the shutdown future given to [`run`].
    stop: Option<oneshot::Sender<()>>,
    /// The task running [`run`].
    task: JoinHandle<anyhow::Result<()>>,
    /// Whether it serves HTTPS.
    https: bool,
}

/// Binds `config.host:config.port` (port 0 picks a free one) and runs the gateway in a
/// background task.
pub async fn spawn(config: GatewayConfig) -> anyhow::Result<RunningGateway> {
    config.validate()?;
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    // Bad key or TLS files and a refused public bind fail here rather than in the
    // background task.
    prepare(&config, &listener)?;
    let addr = listener.local_addr()?;
    let https = config.tls_cert_file.is_some();
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        // A dropped sender also means stop.
        let _ = stopped.await;
    };
    let task = tokio::spawn(run(config, listener, shutdown));
    Ok(RunningGateway {
        addr,
        stop: Some(stop),
        task,
        https,
    })
}

impl RunningGateway {
    /// The address the gateway listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL (`http://127.0.0.1:PORT` when bound to every interface; `https://` when
    /// serving HTTPS).
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the gateway has stopped (after [`Self::begin_shutdown`]), returning what
    /// [`run`] returned.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the gateway task panicked")?
    }

    /// Shuts down gracefully and waits for the end.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.wait().await
    }
}
