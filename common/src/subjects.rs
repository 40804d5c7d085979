//! NATS subject names, all under one configurable prefix (default `embed`).

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "embed";

/// Queue group the tokenizer workers share on the request subject.
pub const TOKENIZER_QUEUE_GROUP: &str = "tokenizers";

/// The subjects of one deployment, derived from its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (e.g. `embed` gives `embed.requests`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Public embedding requests (`EmbedRequest`), served by the tokenizer workers.
    pub fn requests(&self) -> String {
        format!("{}.requests", self.prefix)
    }

    /// Internal packed batches (`TokenBatch`), consumed by the GPU workers.
    pub fn batches(&self) -> String {
        format!("{}.batches", self.prefix)
    }

    /// Status requests: every worker answers with a `WorkerStatus` (scatter-gather).
    pub fn status(&self) -> String {
        format!("{}.status", self.prefix)
    }

    /// Name of the JetStream stream holding the batches.
    pub fn batch_stream(&self) -> String {
        format!(
            "{}_BATCHES",
            self.prefix.to_uppercase().replace(['.', '-'], "_")
        )
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_prefix() {
        let subjects = Subjects::new("prod.embed");
        assert_eq!(subjects.requests(), "prod.embed.requests");
        assert_eq!(subjects.batches(), "prod.embed.batches");
        assert_eq!(subjects.status(), "prod.embed.status");
        assert_eq!(subjects.batch_stream(), "PROD_EMBED_BATCHES");
        assert_eq!(Subjects::default().requests(), "embed.requests");
    }
}
