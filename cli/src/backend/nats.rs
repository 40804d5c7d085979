//! The public NATS API (`docs/protocol.md`): an `EmbedRequest` on `{prefix}.requests` (or,
//! with `--nats-identity`, `{prefix}.requests.from.{identity}`) with a reply subject,
//! answered by chunks (in any order) or one error.

use std::sync::atomic::{AtomicU64, Ordering};

use common::nats::NatsConfig;
use common::subjects::Task;
use common::wire::{self, EmbedReply, EmbedRequest, ErrorCode};
use futures::StreamExt;

use super::{EmbedSettings, Failure};
use crate::error::CliError;
use crate::options::Options;

/// A client of the NATS API.
pub struct NatsEmbedder {
    /// The connection, shared by the concurrent requests.
    client: async_nats::Client,
    /// `{prefix}.requests`, or `{prefix}.requests.from.{identity}`.
    subject: String,
    /// What every request asks for.
    settings: EmbedSettings,
    /// Makes request ids unique within this process.
    next_id: AtomicU64,
}

impl NatsEmbedder {
    /// Connects to the servers at `url` with the options' credentials.
    pub async fn connect(
        url: &str,
        options: &Options,
        settings: EmbedSettings,
    ) -> Result<Self, CliError> {
        let config = NatsConfig {
            url: url.to_string(),
            subject_prefix: options.subject_prefix.clone(),
            creds_file: options.nats_creds.clone(),
            nkey_file: options.nats_nkey_file.clone(),
            identity: options.nats_identity.clone(),
            ..NatsConfig::default()
        };
        let client = config
            .connect("embed-jsonl")
            .await
            .map_err(|e| CliError::Connect {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self {
            client,
            subject: match &config.identity {
                Some(identity) => config.subjects().requests_from(Task::Embed, identity),
                None => config.subjects().requests(),
            },
            settings,
            next_id: AtomicU64::new(0),
        })
    }

    /// One request for `texts`: publishes it and gathers the chunks until every vector is
    /// held, an error arrives, or the timeout passes.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, Failure> {
        let settings = &self.settings;
        let timeout = settings.timeout;
        let request = EmbedRequest {
            id: format!(
                "embed-jsonl-{}-{}",
                std::process::id(),
                self.next_id.fetch_add(1, Ordering::Relaxed)
            ),
            input: texts.to_vec(),
            input_type: settings.input_type,
            instruction: settings.instruction.clone(),
            dimensions: settings.dimensions,
            truncate: None,
            // For workers that predate `timeout_ms`, which rules for the others (counted on
            // their own clocks, whatever this machine's wall clock says).
            deadline_ms: Some(wire::now_ms() + timeout.as_millis() as u64),
            timeout_ms: Some(timeout.as_millis() as u64),
            // The job retries a whole batch on timeout instead.
            ack: false,
            bundle_to: None,
            // A batch job: the bulk lane, behind interactive work (`docs/configuration.md`).
            priority: Some(wire::Priority::Bulk),
            ..Default::default()
        };
        let retry = |message: String| Failure::Retry {
            message,
            retry_after: None,
        };
        let payload = wire::encode(&request).map_err(|e| Failure::Fatal(e.to_string()))?;
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| retry(format!("subscribe: {e}")))?;
        self.client
            .publish_with_reply(self.subject.clone(), inbox, payload.into())
            .await
            .map_err(|e| retry(format!("publish on {}: {e}", self.subject)))?;

        let gather = async {
            let mut vectors = vec![None; texts.len()];
            let mut held = 0;
            while held < texts.len() {
                let Some(message) = replies.next().await else {
                    return Err(retry("the connection closed".into()));
                };
                if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    return Err(retry(format!(
                        "no tokenizer worker listens on {}",
                        self.subject
                    )));
                }
                let reply = wire::decode::<EmbedReply>(&message.payload)
                    .map_err(|e| Failure::Fatal(format!("unreadable reply: {e}")))?;
                match reply {
                    EmbedReply::Chunk(chunk) if chunk.id == request.id => {
                        let rows = chunk.vectors().map_err(|e| Failure::Fatal(e.to_string()))?;
                        for (k, vector) in rows.into_iter().enumerate() {
                            let index = chunk.offset as usize + k;
                            match vectors.get_mut(index) {
                                Some(slot @ None) => {
                                    *slot = Some(vector);
                                    held += 1;
                                }
                                _ => {
                                    return Err(Failure::Fatal(format!(
                                        "reply item {index} out of range or repeated"
                                    )));
                                }
                            }
                        }
                    }
                    // Acknowledgements are never asked for (`ack: false`); ignore any.
                    EmbedReply::Chunk(_) | EmbedReply::Queued(_) => continue,
                    EmbedReply::Error(error) => {
                        let message = format!("{:?}: {}", error.error.code, error.error.message);
                        return Err(match error.error.code {
                            ErrorCode::Overloaded
                            | ErrorCode::Internal
                            | ErrorCode::DeadlineExceeded => retry(message),
                            ErrorCode::InvalidRequest | ErrorCode::TooManyTokens => {
                                Failure::Fatal(message)
                            }
                        });
                    }
                }
            }
            Ok(vectors.into_iter().flatten().collect())
        };
        tokio::time::timeout(timeout, gather)
            .await
            .unwrap_or_else(|_| Err(retry(format!("no complete answer within {timeout:?}"))))
    }
}
