//! The closed-loop driver: `concurrency` workers, each sending its next request when the
//! previous answer arrives, over one shared keep-alive HTTP/1.1 client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, StatusCode, Url};

use crate::api::{Answer, Api, Failure, snippet};
use crate::stats::Stats;
use crate::workload::Prepared;

/// Where and how to send requests.
#[derive(Debug, Clone)]
pub struct Target {
    /// The shared client (connection pool).
    pub client: Client,
    /// The full endpoint URL.
    pub url: Url,
    /// The API shape.
    pub api: Api,
    /// Count tokens as estimated from the texts even when answers report usage.
    pub estimate_tokens: bool,
}

impl Target {
    /// A target for `url` (the endpoint itself), with a pool for `max_concurrency` connections.
    /// Refuses hosts that are not loopback unless `allow_remote`.
    pub async fn new(
        api: Api,
        url: Url,
        max_concurrency: usize,
        timeout: Duration,
        allow_remote: bool,
    ) -> Result<Self> {
        ensure!(
            url.scheme() == "http",
            "only http:// URLs are supported (got {url}); loadgen is built without TLS"
        );
        let mut builder = Client::builder()
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(max_concurrency)
            .pool_idle_timeout(Duration::from_secs(90))
            .timeout(timeout);
        if !allow_remote {
            let host = url.host_str().context("the URL has no host")?;
            let port = url.port_or_known_default().unwrap_or(80);
            if let Some(addrs) = loopback_addrs(host, port).await? {
                // Pin the checked addresses so the connection goes where we checked.
                builder = builder.resolve_to_addrs(host, &addrs);
            }
        }
        let client = builder.build().context("building the HTTP client")?;
        Ok(Self {
            client,
            url,
            api,
            estimate_tokens: false,
        })
    }

    /// Sends one prepared request and checks the answer holds its vectors.
    pub async fn send(&self, req: &Prepared) -> Result<Answer, Failure> {
        let resp = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(req.body.clone())
            .send()
            .await
            .map_err(transport_failure)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport_failure)?;
        if status != StatusCode::OK {
            return Err(Failure::new(
                format!("http_{}", status.as_u16()),
                snippet(&body),
            ));
        }
        self.api.check_answer(&body, req.inputs)
    }
}

/// Checks that `host` is loopback: an IP literal, or a name that resolves only to loopback
/// addresses (returned, to pin them). Fails otherwise.
async fn loopback_addrs(host: &str, port: u16) -> Result<Option<Vec<SocketAddr>>> {
    let refuse = || {
        format!(
            "refusing non-loopback host {host:?}: load tests may only target this machine \
             (pass --allow-remote to override)"
        )
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        ensure!(ip.is_loopback(), refuse());
        return Ok(None);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!("{} (it resolves to {addrs:?})", refuse());
    }
    Ok(Some(addrs))
}

fn transport_failure(e: reqwest::Error) -> Failure {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        detail.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Failure::new(kind, detail)
}

/// When a phase stops.
#[derive(Debug, Clone, Copy)]
pub enum Schedule {
    /// Cycle through the bodies for `warmup` (unmeasured) then `duration` (measured), sending
    /// at most `max_requests` in all.
    Timed {
        /// Unmeasured lead-in.
        warmup: Duration,
        /// Measured window.
        duration: Duration,
        /// Hard cap on requests sent, warmup included.
        max_requests: Option<usize>,
    },
    /// Send every body exactly once (all measured), at most `max_requests` of them.
    EachOnce {
        /// Hard cap on requests sent.
        max_requests: Option<usize>,
    },
}

/// What a phase measured.
#[derive(Debug)]
pub struct Measured {
    /// Merged worker measurements.
    pub stats: Stats,
    /// From the start of the measured window to the end of its last request.
    pub elapsed: Duration,
    /// Requests sent (warmup included).
    pub sent: usize,
}

struct Shared {
    target: Target,
    bodies: Arc<Vec<Prepared>>,
    /// Index of the first body to use (so successive phases use fresh bodies).
    offset: usize,
    next: AtomicUsize,
    /// Bodies handed out (`next` overshoots: each worker asks once more to learn it must stop).
    sent: AtomicUsize,
    schedule: Schedule,
    measure_from: Instant,
    stop_at: Option<Instant>,
}

impl Shared {
    /// The next body to send, or `None` when the phase is over.
    fn next_body(&self) -> Option<&Prepared> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let body = self.body_at(i)?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Some(body)
    }

    /// The `i`-th body of the phase, or `None` past its end.
    fn body_at(&self, i: usize) -> Option<&Prepared> {
        match self.schedule {
            Schedule::Timed { max_requests, .. } => {
                if max_requests.is_some_and(|m| i >= m)
                    || self.stop_at.is_some_and(|t| Instant::now() >= t)
                {
                    return None;
                }
                self.bodies.get((self.offset + i) % self.bodies.len())
            }
            Schedule::EachOnce { max_requests } => {
                if max_requests.is_some_and(|m| i >= m) {
                    return None;
                }
                self.bodies.get(self.offset + i)
            }
        }
    }
}

/// Runs `concurrency` closed-loop workers over `bodies` (starting at `offset`) until
/// `schedule` ends, and merges what they measured.
pub async fn run_phase(
    target: &Target,
    bodies: Arc<Vec<Prepared>>,
    offset: usize,
    concurrency: usize,
    schedule: Schedule,
) -> Result<Measured> {
    ensure!(!bodies.is_empty(), "no request bodies to send");
    let start = Instant::now();
    let (measure_from, stop_at) = match schedule {
        Schedule::Timed {
            warmup, duration, ..
        } => (start + warmup, Some(start + warmup + duration)),
        Schedule::EachOnce { .. } => (start, None),
    };
    let shared = Arc::new(Shared {
        target: target.clone(),
        bodies,
        offset,
        next: AtomicUsize::new(0),
        sent: AtomicUsize::new(0),
        schedule,
        measure_from,
        stop_at,
    });
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(Arc::clone(&shared))))
        .collect();
    let mut stats = Stats::default();
    for w in futures::future::join_all(workers).await {
        stats.merge(w.context("a load worker panicked")?);
    }
    let elapsed = stats.last_end.map_or(Duration::ZERO, |end| {
        end.saturating_duration_since(measure_from)
    });
    Ok(Measured {
        stats,
        elapsed,
        sent: shared.sent.load(Ordering::Relaxed),
    })
}

/// One closed-loop worker: send, wait for the answer, record it, repeat.
async fn worker(shared: Arc<Shared>) -> Stats {
    let mut stats = Stats::default();
    while let Some(req) = shared.next_body() {
        let started = Instant::now();
        let outcome = shared.target.send(req).await;
        let ended = Instant::now();
        if started < shared.measure_from {
            continue;
        }
        match outcome {
            Ok(mut answer) => {
                if shared.target.estimate_tokens {
                    answer.usage_tokens = None;
                }
                stats.record_ok(ended - started, &answer, req.est_tokens);
            }
            Err(failure) => stats.record_error(failure),
        }
        stats.last_end = Some(ended);
    }
    stats
}
