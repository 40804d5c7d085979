//! The NATS side: publishing requests (embedding requests on `{prefix}.requests`, rerank
//! requests on `{prefix}.rerank`), assembling their replies, discovering workers.
//!
//! Each request goes to its model's subjects: the default model's are the prefix's own; a
//! model with a route of its own (see `common::subjects`) has them under
//! `{prefix}.models.{route}`. The caller names the route ([`crate::models`] picks it); one
//! inbox serves every model's replies.
//!
//! A gateway with a NATS `identity` has its inbox under `_INBOX.{identity}` and publishes on
//! `{prefix}.requests.from.{identity}` and `{prefix}.rerank.from.{identity}` instead, where
//! the workers send replies only to that inbox (and NATS permissions can let only this
//! identity publish); the identity is read off the inbox ([`requester_of_inbox`]).
//!
//! The gateway holds ONE wildcard subscription, `{inbox}.>`, and gives each request the
//! reply subject `{inbox}.{n}`; embedding requests also name `{inbox}.bundle` as their
//! `bundle_to`, where the workers send the chunks and acknowledgements of many requests
//! packed in one message. A reader task (`routing`) routes every reply by `n` (for bundled
//! replies, the `n` in the request id `{gateway_id}-{n}`) to the request's entry in the
//! pending map; the entry assembles chunks and hands the finished answer (or the error) to
//! the waiting handler through a oneshot channel. Entries leave the map when
//! answered, timed out or abandoned (the handler's future dropped), so late replies find
//! nothing and are ignored.
//!
//! Every publication of a request carries what is left of its deadline as `timeout_ms`,
//! measured on this gateway's monotonic clock at that moment, so workers whose wall clocks
//! disagree with this machine's count the same budget (the absolute `deadline_ms` the service
//! set goes along for logs and older workers).
//!
//! Requests of both kinds ask the tokenizer workers for an acknowledgement (`ack`); one not
//! acknowledged in time is published again ([`resend`]). When the connection drops, the
//! replies in flight may be lost: a waiting request (of either kind) gives the client a little
//! while to reconnect, publishes again, and fails with `NotConnected` (503) when the
//! connection does not come back.

pub mod assembly;
pub mod discovery;
pub mod resend;
mod routing;
pub mod tokenize;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use common::subjects::{INBOX_ROOT, Subjects, Task, is_identity};
use common::trace::{LOG_TARGET, RequestTrace};
use common::wire::{self, EmbedRequest, ErrorReply, RerankRequest};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::assembly::{Assembly, Embedded, ScoreAssembly, Scored};
use self::resend::Resend;
use self::routing::read_replies;
use crate::metrics::{Metrics, StageSink};

/// How long a waiting request gives a dropped connection to come back before it fails
/// with `NotConnected`; a cluster client fails over to another server well within it.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(1);

/// The last token of this gateway's bundle subject, `{inbox}.bundle`, which its embedding
/// requests name as `bundle_to`.
const BUNDLE_TOKEN: &str = "bundle";

/// Why an upstream request produced no embeddings.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Nobody subscribes to the request subject.
    #[error("no tokenizer worker is listening on the request subject")]
    NoResponders,
    /// The client is not connected to any server.
    #[error("not connected to NATS ({0})")]
    NotConnected(String),
    /// The encoded request is larger than the server's `max_payload`.
    #[error("request of {size} bytes exceeds max_payload {limit}")]
    PayloadTooLarge {
        /// Encoded size.
        size: usize,
        /// The server's limit.
        limit: usize,
    },
    /// Publishing failed.
    #[error("cannot publish the request: {0}")]
    Publish(String),
    /// The deadline passed before the answer was complete.
    #[error("deadline passed")]
    Timeout,
    /// A worker answered with an error.
    #[error("worker error: {}", .0.error.message)]
    Worker(ErrorReply),
    /// A reply did not follow the protocol.
    #[error("invalid reply: {0}")]
    BadReply(String),
    /// The reply reader stopped (the gateway is shutting down or lost its subscription).
    #[error("reply subscription closed")]
    Closed,
}

/// What a waiting request receives.
type Outcome<T> = Result<T, UpstreamError>;

/// A request waiting for its replies.
struct Pending {
    /// The request's id, checked against each reply's.
    id: String,
    /// The items received so far and where the finished answer goes.
    collector: Collector,
    /// Whether a tokenizer worker acknowledged the latest publication.
    acked: bool,
}

/// The answer being put together, by request kind.
enum Collector {
    /// Vectors of an embedding request.
    Embed {
        /// The items received so far.
        assembly: Assembly,
        /// Where the finished answer goes.
        done: oneshot::Sender<Outcome<Vec<Embedded>>>,
    },
    /// Scores of a rerank request.
    Rerank {
        /// The documents scored so far.
        assembly: ScoreAssembly,
        /// Where the finished answer goes.
        done: oneshot::Sender<Outcome<Vec<Scored>>>,
    },
}

impl Collector {
    /// Sends the finished answer (or `error`) to the waiter, if it still waits.
    fn complete(self, error: Option<UpstreamError>) {
        let incomplete = || UpstreamError::BadReply("complete answer with missing items".into());
        // The waiter may have given up in the meantime; nothing to do then.
        match self {
            Self::Embed { assembly, done } => {
                let outcome = match error {
                    Some(error) => Err(error),
                    None => assembly.finish().ok_or_else(incomplete),
                };
                let _ = done.send(outcome);
            }
            Self::Rerank { assembly, done } => {
                let outcome = match error {
                    Some(error) => Err(error),
                    None => assembly.finish().ok_or_else(incomplete),
                };
                let _ = done.send(outcome);
            }
        }
    }
}

/// What one reply did to its request.
enum Step {
    /// Not for this request (another id): ignored.
    Ignore,
    /// A tokenizer worker acknowledged the request (all of it is in the work queue).
    Acked,
    /// Added; more items are due.
    More,
    /// The answer is complete.
    Done,
    /// The request failed.
    Fail(UpstreamError),
}

type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

/// Locks the pending map; a panic while it was held cannot leave it inconsistent (every
/// operation is a single insert or remove), so poisoning is ignored.
fn lock(map: &PendingMap) -> MutexGuard<'_, HashMap<u64, Pending>> {
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Client of the tokenizer workers' request subject: one per gateway, shared by handlers.
pub struct Upstream {
    /// The connection.
    client: Client,
    /// The deployment's subjects (the default model's); a routed model's derive from them.
    subjects: Subjects,
    /// The identity this gateway publishes as (`{requests}.from.{identity}`), read off its
    /// inbox; `None` publishes on the bare request subjects.
    identity: Option<String>,
    /// This gateway's inbox; reply subjects are `{inbox}.{n}`.
    inbox: String,
    /// Where workers may send bundled replies: `{inbox}.bundle`.
    bundle_subject: String,
    /// Unique id of this gateway, prefix of request ids.
    gateway_id: String,
    /// Sequence number of the next request.
    next: AtomicU64,
    /// Requests waiting for replies, by sequence number.
    pending: PendingMap,
    /// Task routing replies to `pending`.
    reader: JoinHandle<()>,
    /// The connection's link: `true` while connected.
    link: watch::Receiver<bool>,
    /// How long to wait for a tokenizer worker's acknowledgement of a request (embedding or
    /// rerank) before publishing it again; `None` sends requests without `ack` and never
    /// again.
    ack_timeout: Option<Duration>,
    /// Requests published again (unacknowledged or after a reconnection), for metrics.
    resends: AtomicU64,
    /// Where each answered request's stages go (its assembly records them).
    metrics: Metrics,
}

impl Upstream {
    /// Subscribes to this gateway's inbox and starts routing replies. `link` follows the
    /// connection (see [`common::nats::NatsConfig::connect_watched`]); `ack_timeout` is how
    /// long an unacknowledged request waits before it is published again (`None`: never).
    pub async fn start(
        client: Client,
        subjects: &Subjects,
        link: watch::Receiver<bool>,
        ack_timeout: Option<Duration>,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let inbox = client.new_inbox();
        let gateway_id = inbox.rsplit('.').next().unwrap_or("gateway").to_string();
        let identity = requester_of_inbox(&inbox).map(str::to_string);
        let subscriber = client.subscribe(format!("{inbox}.>")).await?;
        let pending = PendingMap::default();
        let reader = tokio::spawn(read_replies(subscriber, inbox.clone(), pending.clone()));
        Ok(Self {
            client,
            subjects: subjects.routed(None),
            identity,
            bundle_subject: format!("{inbox}.{BUNDLE_TOKEN}"),
            inbox,
            gateway_id,
            next: AtomicU64::new(0),
            pending,
            reader,
            link,
            ack_timeout,
            resends: AtomicU64::new(0),
            metrics,
        })
    }

    /// Requests published again since start (unacknowledged, or after a reconnection).
    pub fn resends(&self) -> u64 {
        self.resends.load(Ordering::Relaxed)
    }

    /// Unique id of this gateway (also the last token of its inbox).
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Where requests of `task` for the model on `route` (`None`: the default model) are
    /// published: `{requests}.from.{identity}` with an identity, else the bare subject.
    pub fn request_subject(&self, task: Task, route: Option<&str>) -> String {
        let subjects = self.subjects.routed(route);
        match &self.identity {
            Some(identity) => subjects.requests_from(task, identity),
            None => subjects.requests_for(task),
        }
    }

    /// Where tokenize and decode calls for the model on `route` are sent:
    /// `{tokenize}.from.{identity}` with an identity, else the bare subject.
    pub fn tokenize_subject(&self, route: Option<&str>) -> String {
        let subjects = self.subjects.routed(route);
        match &self.identity {
            Some(identity) => subjects.tokenize_from(identity),
            None => subjects.tokenize(),
        }
    }

    /// Requests waiting for replies now.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Publishes `request` for the model on `route` (its `id` is replaced by a unique one)
    /// and waits until its answer is complete, a worker reports an error, or `deadline`
    /// passes. Unacknowledged, it is published again (same id and reply subject); after a
    /// lost connection, it is published again once reconnected, or fails with
    /// `NotConnected` after [`RECONNECT_GRACE`].
    pub async fn embed(
        &self,
        mut request: EmbedRequest,
        route: Option<&str>,
        deadline: Instant,
        trace: &RequestTrace,
    ) -> Outcome<Vec<Embedded>> {
        let n = self.begin()?;
        request.id = format!("{}-{n}", self.gateway_id);
        request.ack = self.ack_timeout.is_some();
        request.bundle_to = Some(self.bundle_subject.clone());
        let (done, answer) = oneshot::channel();
        let collector = Collector::Embed {
            assembly: Assembly::recorded(
                request.input.len(),
                StageSink::new(self.metrics.clone(), trace),
            ),
            done,
        };
        let exchange = Exchange {
            n,
            id: request.id.clone(),
            subject: self.request_subject(Task::Embed, route),
            collector,
            request: Outgoing::Embed(request),
            headers: trace.to_headers(),
            ack_timeout: self.ack_timeout,
        };
        self.exchange(exchange, answer, deadline).await
    }

    /// Publishes a rerank `request` on the rerank subject of the model on `route` (its `id`
    /// replaced by a unique one) and waits for every document's score, a worker's error, or
    /// `deadline`. Like an embedding request it asks for an acknowledgement and is published
    /// again when none comes in time or after a lost connection; its replies are not bundled.
    pub async fn rerank(
        &self,
        mut request: RerankRequest,
        route: Option<&str>,
        deadline: Instant,
        trace: &RequestTrace,
    ) -> Outcome<Vec<Scored>> {
        let n = self.begin()?;
        request.id = format!("{}-{n}", self.gateway_id);
        request.ack = self.ack_timeout.is_some();
        let (done, answer) = oneshot::channel();
        let collector = Collector::Rerank {
            assembly: ScoreAssembly::recorded(
                request.documents.len(),
                StageSink::new(self.metrics.clone(), trace),
            ),
            done,
        };
        let exchange = Exchange {
            n,
            id: request.id.clone(),
            subject: self.request_subject(Task::Rerank, route),
            collector,
            request: Outgoing::Rerank(request),
            headers: trace.to_headers(),
            ack_timeout: self.ack_timeout,
        };
        self.exchange(exchange, answer, deadline).await
    }

    /// Checks that a request can be sent now and numbers it.
    fn begin(&self) -> Result<u64, UpstreamError> {
        let state = self.client.connection_state();
        if state != State::Connected {
            return Err(UpstreamError::NotConnected(state.to_string()));
        }
        if self.reader.is_finished() {
            // Nobody would route the replies: fail now rather than at the deadline.
            return Err(UpstreamError::Closed);
        }
        Ok(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Encodes `request` with what is left of `deadline` now as its `timeout_ms`, refusing
    /// one larger than the server's `max_payload`.
    fn encode(&self, request: &mut Outgoing, deadline: Instant) -> Result<Bytes, UpstreamError> {
        let timeout_ms = wire::remaining_ms(deadline.into_std(), std::time::Instant::now());
        request.set_timeout_ms(timeout_ms);
        let payload = wire::encode(request).map_err(|e| UpstreamError::Publish(e.to_string()))?;
        let limit = self.client.server_info().max_payload;
        if limit > 0 && payload.len() > limit {
            return Err(UpstreamError::PayloadTooLarge {
                size: payload.len(),
                limit,
            });
        }
        Ok(Bytes::from(payload))
    }

    /// Registers a request, publishes it on its subject and waits for its answer,
    /// publishing it again when unacknowledged or after a reconnection.
    async fn exchange<T>(
        &self,
        exchange: Exchange,
        mut answer: oneshot::Receiver<Outcome<T>>,
        deadline: Instant,
    ) -> Outcome<T> {
        let Exchange {
            n,
            id,
            subject,
            collector,
            mut request,
            headers,
            ack_timeout,
        } = exchange;
        // Refused before it is registered when too large; later encodings only shrink
        // (`timeout_ms` only decreases).
        let payload = self.encode(&mut request, deadline)?;
        let pending = Pending {
            id: id.clone(),
            collector,
            acked: false,
        };
        lock(&self.pending).insert(n, pending);
        // From here on the entry leaves the map however this future ends.
        let _entry = PendingEntry {
            map: &self.pending,
            n,
        };
        let reply_to = format!("{}.{n}", self.inbox);
        tracing::debug!(target: LOG_TARGET, %id, %subject, "published");
        self.publish(&subject, &reply_to, &headers, &payload)
            .await?;
        let mut schedule = Resend::new(ack_timeout, Instant::now());
        let mut link = self.link.clone();
        loop {
            let due = schedule.due();
            tokio::select! {
                outcome = &mut answer => return outcome.unwrap_or(Err(UpstreamError::Closed)),
                () = tokio::time::sleep_until(deadline) => return Err(UpstreamError::Timeout),
                () = sleep_until_some(due) => {
                    if self.is_acked(n) {
                        schedule.acknowledged();
                        continue;
                    }
                    tracing::info!(
                        %id,
                        sent = schedule.times_sent(),
                        "no tokenizer worker acknowledged the request; publishing it again"
                    );
                }
                watched = async { link.wait_for(|up| !*up).await.is_ok() } => {
                    if !watched {
                        return Err(UpstreamError::Closed);
                    }
                    tracing::debug!(%id, "NATS connection lost while waiting; replies may be lost");
                    let grace = (Instant::now() + RECONNECT_GRACE).min(deadline);
                    let back = async { link.wait_for(|up| *up).await.is_ok() };
                    match tokio::time::timeout_at(grace, back).await {
                        Ok(true) => {}
                        Ok(false) => return Err(UpstreamError::Closed),
                        Err(_) => return Err(UpstreamError::NotConnected("disconnected".into())),
                    }
                    tracing::debug!(%id, "NATS connection back; publishing the request again");
                }
            }
            self.set_acked(n, false);
            self.resends.fetch_add(1, Ordering::Relaxed);
            // What is left of the deadline now, not what was left at the first publication.
            let payload = self.encode(&mut request, deadline)?;
            self.publish(&subject, &reply_to, &headers, &payload)
                .await?;
            schedule.sent(Instant::now());
        }
    }

    /// Publishes the encoded request on `subject` with `reply_to` and `headers`.
    async fn publish(
        &self,
        subject: &str,
        reply_to: &str,
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> Result<(), UpstreamError> {
        let (size, limit) = (payload.len(), self.client.server_info().max_payload);
        self.client
            .publish_with_reply_and_headers(
                subject.to_string(),
                reply_to.to_string(),
                headers.clone(),
                payload.clone(),
            )
            .await
            .map_err(|e| match e.kind() {
                async_nats::PublishErrorKind::MaxPayloadExceeded => {
                    UpstreamError::PayloadTooLarge { size, limit }
                }
                _ => UpstreamError::Publish(e.to_string()),
            })
    }

    /// Whether request `n` was acknowledged since its latest publication.
    fn is_acked(&self, n: u64) -> bool {
        lock(&self.pending).get(&n).is_some_and(|entry| entry.acked)
    }

    /// Marks request `n` (un)acknowledged.
    fn set_acked(&self, n: u64, acked: bool) {
        if let Some(entry) = lock(&self.pending).get_mut(&n) {
            entry.acked = acked;
        }
    }

    /// Stops routing replies: every waiting request gets `Closed`.
    pub fn close(&self) {
        self.reader.abort();
        lock(&self.pending).clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One request on its way: what [`Upstream::exchange`] publishes and collects.
struct Exchange {
    /// Sequence number (the reply subject's last token).
    n: u64,
    /// The request's id, checked against each reply's.
    id: String,
    /// Where it is published: its task's request subject for its model.
    subject: String,
    /// Where the replies are assembled.
    collector: Collector,
    /// The request, encoded anew (with the budget left) for every publication.
    request: Outgoing,
    /// The request id and trace context, sent as headers.
    headers: HeaderMap,
    /// How long to wait for an acknowledgement before publishing again (`None`: the
    /// request asked for none).
    ack_timeout: Option<Duration>,
}

/// A request as published: either kind, encoded as the message itself.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Outgoing {
    /// An embedding request.
    Embed(EmbedRequest),
    /// A rerank request.
    Rerank(RerankRequest),
}

impl Outgoing {
    /// Sets the milliseconds the request still has.
    fn set_timeout_ms(&mut self, timeout_ms: u64) {
        match self {
            Self::Embed(request) => request.timeout_ms = Some(timeout_ms),
            Self::Rerank(request) => request.timeout_ms = Some(timeout_ms),
        }
    }
}

/// The identity an inbox belongs to: `Some("gateway")` for `_INBOX.gateway.{nuid}` (the
/// inbox of a client connected with `identity = "gateway"`), `None` for `_INBOX.{nuid}`.
fn requester_of_inbox(inbox: &str) -> Option<&str> {
    let (identity, _nuid) = inbox
        .strip_prefix(INBOX_ROOT)?
        .strip_prefix('.')?
        .rsplit_once('.')?;
    is_identity(identity).then_some(identity)
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Removes a request's pending entry when its waiter finishes or is dropped.
struct PendingEntry<'a> {
    map: &'a PendingMap,
    n: u64,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        lock(self.map).remove(&self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requester_is_read_off_an_identity_inbox() {
        assert_eq!(requester_of_inbox("_INBOX.gateway.abc123"), Some("gateway"));
        assert_eq!(requester_of_inbox("_INBOX.abc123"), None);
        assert_eq!(requester_of_inbox("_INBOX.a.b.c"), None);
        assert_eq!(requester_of_inbox("other.gateway.abc"), None);
    }
}
