//! What every worker process does on NATS besides its own work: answering a request with an
//! error, sending collected replies (an [`Outbox`]: alone or bundled), answering on the
//! status subject, registering as a micro service for operators, and flushing at shutdown.

use std::time::Duration;

use crate::outbox::Outbox;
use crate::wire::{self, ErrorReply, WorkerKind, WorkerStatus};

/// How long a worker's shutdown waits to flush what its client buffered.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Publishes `error` to `reply_to` without waiting (the publish is buffered by the client).
pub fn send_error(client: &async_nats::Client, reply_to: &str, error: &ErrorReply) {
    send_outbox(client, error_outbox(reply_to, error), "error reply");
}

/// Publishes `error` to `reply_to` and waits until the client has taken it, so whatever the
/// caller publishes next on `client` reaches the server after it.
pub async fn send_error_in_order(client: &async_nats::Client, reply_to: &str, error: &ErrorReply) {
    let messages = error_outbox(reply_to, error).into_messages(client.server_info().max_payload);
    publish_all(client, messages, "error reply").await;
}

/// The message answering a request on `reply_to` with `error`, logged.
fn error_outbox(reply_to: &str, error: &ErrorReply) -> Outbox {
    tracing::debug!(
        id = ?error.id,
        code = ?error.error.code,
        message = %error.error.message,
        "request refused"
    );
    let mut outbox = Outbox::default();
    outbox.push(reply_to, None, error);
    outbox
}

/// Publishes the messages of `outbox` in the background, in order (bundles no larger than
/// the server's `max_payload`); `what` names them in log lines.
pub fn send_outbox(client: &async_nats::Client, outbox: Outbox, what: &'static str) {
    if outbox.is_empty() {
        return;
    }
    let messages = outbox.into_messages(client.server_info().max_payload);
    let client = client.clone();
    tokio::spawn(async move { publish_all(&client, messages, what).await });
}

/// Publishes `messages` in order, logging (as `what`) the ones the client refuses.
async fn publish_all(client: &async_nats::Client, messages: Vec<(String, Vec<u8>)>, what: &str) {
    for (subject, payload) in messages {
        if let Err(e) = client.publish(subject.clone(), payload.into()).await {
            tracing::warn!(error = %e, %subject, "{what} not sent");
        }
    }
}

/// Registers the worker as NATS micro service `name` so operators can list workers
/// (`nats micro ls`). The gateway discovers workers on the status subject instead, which
/// every worker answers (service endpoints are load-balanced, so only one would). A failed
/// registration is logged, not fatal.
pub async fn register_service(
    client: &async_nats::Client,
    name: &str,
    description: String,
) -> Option<async_nats::service::Service> {
    use async_nats::service::ServiceExt;
    client
        .service_builder()
        .description(description)
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "could not register the micro service"))
        .ok()
}

/// The status of a worker of `kind` serving `model` that has done no work yet: loaded,
/// healthy, started now, its id `{id_prefix}-` and 64 random bits in hex. The worker fills in
/// what it knows of its device and model.
///
/// Ids must differ between workers, on every host: discovery keeps one status per id. (They
/// were the start time in milliseconds XOR the process id, which collided for workers started
/// a millisecond apart with neighbouring process ids, and one of them vanished from the
/// gateway's view.)
pub fn initial_status(id_prefix: &str, kind: WorkerKind, model: String) -> WorkerStatus {
    let started_ms = wire::now_ms();
    WorkerStatus {
        worker_id: format!("{id_prefix}-{:016x}", rand::random::<u64>()),
        kind,
        model,
        loaded: true,
        backend: None,
        device: None,
        device_memory_used: None,
        device_memory_total: None,
        hidden_size: None,
        batches: 0,
        sequences: 0,
        tokens: 0,
        in_flight: 0,
        started_ms,
        unhealthy: None,
        max_input_tokens: None,
        max_batch_tokens: None,
        route: None,
        device_busy_ms: None,
    }
}

/// Answers the status request `message` with `status`; a request without a reply subject
/// is ignored, an answer the client refuses is logged.
pub async fn answer_status(
    client: &async_nats::Client,
    message: async_nats::Message,
    status: &WorkerStatus,
) {
    let Some(reply) = message.reply else { return };
    match wire::encode(status) {
        Ok(bytes) => {
            if let Err(e) = client.publish(reply, bytes.into()).await {
                tracing::warn!(error = %e, "status answer not sent");
            }
        }
        Err(e) => tracing::error!(error = %e, "status does not encode; this is a bug"),
    }
}

/// Flushes what `client` buffered, for at most [`SHUTDOWN_FLUSH`]: with the server gone, a
/// flush would wait for a reconnection forever, so what is unsent by then is lost (logged).
pub async fn flush_at_shutdown(client: &async_nats::Client) {
    if tokio::time::timeout(SHUTDOWN_FLUSH, client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS unreachable at shutdown; unsent replies are lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_started_together_get_different_ids() {
        // Same prefix, same process, same millisecond: what neighbouring processes started
        // together amounted to under the old scheme.
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| initial_status("tokenizer", WorkerKind::Tokenizer, "m".into()).worker_id)
            .collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.starts_with("tokenizer-")));
    }
}
