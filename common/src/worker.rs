//! What every worker process does on NATS besides its own work: answering a request with an
//! error, and registering as a micro service for operators.

use crate::wire::{self, ErrorReply};

/// Publishes `error` to `reply_to` without waiting (the publish is buffered by the client).
pub fn send_error(client: &async_nats::Client, reply_to: &str, error: &ErrorReply) {
    tracing::debug!(
        id = ?error.id,
        code = ?error.error.code,
        message = %error.error.message,
        "request refused"
    );
    let Ok(bytes) = wire::encode(error) else {
        tracing::error!("error reply does not encode; this is a bug");
        return;
    };
    let (client, reply_to) = (client.clone(), reply_to.to_string());
    tokio::spawn(async move {
        if let Err(e) = client.publish(reply_to, bytes.into()).await {
            tracing::warn!(error = %e, "error reply not sent");
        }
    });
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
