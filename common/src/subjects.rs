//! NATS subject names, all under one configurable prefix (default `embed`).
//!
//! One deployment serves any number of models. The default model of each task works on the
//! prefix's own subjects (`embed.requests`, `EMBED_BATCHES`); every other model works on a
//! route of its own, `{prefix}.models.{token}` (`embed.models.qwen-qwen3-embedding-4b.requests`,
//! stream `EMBED_MODELS_QWEN_QWEN3_EMBEDDING_4B_BATCHES`), where the token is derived from
//! the model's name by [`model_token`]. Status requests stay on `{prefix}.status` for every
//! model, so one scatter-gather finds them all.

use crate::wire::Priority;

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "embed";

/// Root of every reply inbox; an identity's inbox is `_INBOX.{identity}`.
pub const INBOX_ROOT: &str = "_INBOX";

/// The token between a request subject and the requester's identity:
/// `embed.requests.from.alice`.
pub const FROM_TOKEN: &str = "from";

/// Longest identity (one subject token).
pub const MAX_IDENTITY_LEN: usize = 64;

/// Whether `identity` can name a requester: 1 to [`MAX_IDENTITY_LEN`] ASCII letters,
/// digits, `-` or `_` (one subject token, no wildcard).
pub fn is_identity(identity: &str) -> bool {
    (1..=MAX_IDENTITY_LEN).contains(&identity.len())
        && identity
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where the replies to `identity`'s requests must go: `_INBOX.{identity}.` (the prefix
/// its inbox subjects start with).
pub fn reply_prefix_of(identity: &str) -> String {
    format!("{INBOX_ROOT}.{identity}.")
}

/// The token between the prefix and a model's route: `embed.models.{token}`.
pub const MODELS_TOKEN: &str = "models";

/// Longest model token (one subject token).
pub const MAX_MODEL_TOKEN_LEN: usize = 64;

/// The subject token of model `name`: ASCII letters and digits lowercased, `_` kept, every
/// other character (`/`, `.`, spaces...) becomes `-`; at most [`MAX_MODEL_TOKEN_LEN`]
/// characters (`Qwen/Qwen3-Embedding-4B` gives `qwen-qwen3-embedding-4b`).
pub fn model_token(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .take(MAX_MODEL_TOKEN_LEN)
        .collect()
}

/// Queue group the tokenizer workers share on the request subject.
pub const TOKENIZER_QUEUE_GROUP: &str = "tokenizers";

/// Queue group the rerank tokenizer workers share on the rerank subject.
pub const RERANK_TOKENIZER_QUEUE_GROUP: &str = "rerank-tokenizers";

/// Queue group the GPU workers share on the direct batch subject.
pub const GPU_DIRECT_QUEUE_GROUP: &str = "gpu-workers";

/// Queue group the rerank GPU workers share on the rerank direct batch subject.
pub const RERANK_DIRECT_QUEUE_GROUP: &str = "rerank-workers";

/// What a worker serves: embeddings or reranking. Each task has its own request subject,
/// batch stream and worker pools, so the two scale independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Qwen3-Embedding: `EmbedRequest`s in, vectors out.
    #[default]
    Embed,
    /// Qwen3-Reranker: `RerankRequest`s in, one relevance score per document out.
    Rerank,
}

impl Task {
    /// The task's name (`embed`, `rerank`), for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embed => "embed",
            Self::Rerank => "rerank",
        }
    }
}

/// The subjects of one deployment's model, derived from the deployment's prefix and the
/// model's route (none for the default model).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subjects {
    /// The deployment's prefix: status requests go under it whatever the route.
    root: String,
    /// Where the model's work subjects live: the root, or `{root}.models.{token}`.
    prefix: String,
    /// The model's token, when it has a route of its own.
    route: Option<String>,
}

impl Subjects {
    /// The default model's subjects under `prefix` (e.g. `embed` gives `embed.requests`).
    pub fn new(prefix: impl Into<String>) -> Self {
        let root = prefix.into();
        Self {
            prefix: root.clone(),
            root,
            route: None,
        }
    }

    /// The subjects of the model whose route is `token` (see [`model_token`]) in the same
    /// deployment: work subjects under `{prefix}.models.{token}`, status on the prefix's.
    /// `None` gives the default model's subjects.
    pub fn routed(&self, token: Option<&str>) -> Self {
        match token {
            None => Self::new(self.root.clone()),
            Some(token) => Self {
                root: self.root.clone(),
                prefix: format!("{}.{MODELS_TOKEN}.{token}", self.root),
                route: Some(token.to_string()),
            },
        }
    }

    /// The model's route token, `None` for the default model's subjects.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// Where the model's work subjects live: the deployment's prefix, or
    /// `{prefix}.models.{token}` for a routed model.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The deployment's prefix, whatever the route.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Public embedding requests (`EmbedRequest`), served by the tokenizer workers.
    pub fn requests(&self) -> String {
        format!("{}.requests", self.prefix)
    }

    /// Internal packed batches (`TokenBatch`), consumed by the GPU workers.
    pub fn batches(&self) -> String {
        format!("{}.batches", self.prefix)
    }

    /// Public rerank requests (`RerankRequest`), served by the rerank tokenizer workers.
    pub fn rerank(&self) -> String {
        format!("{}.rerank", self.prefix)
    }

    /// Internal packed batches of formatted (query, document) pairs, consumed by the rerank
    /// GPU workers.
    pub fn rerank_batches(&self) -> String {
        format!("{}.rerank.batches", self.prefix)
    }

    /// The request subject of `task`.
    pub fn requests_for(&self, task: Task) -> String {
        match task {
            Task::Embed => self.requests(),
            Task::Rerank => self.rerank(),
        }
    }

    /// Where `identity` publishes its requests of `task`: `{requests}.from.{identity}`
    /// (`embed.requests.from.gateway`, `embed.rerank.from.alice`). NATS permissions can
    /// let each identity publish only on its own; workers hold its replies to its inbox.
    pub fn requests_from(&self, task: Task, identity: &str) -> String {
        format!("{}.{FROM_TOKEN}.{identity}", self.requests_for(task))
    }

    /// The identity a request of `task` arrived from, read off its subject: `Some` for
    /// `{requests}.from.{identity}`, `None` for the bare request subject (and any other).
    pub fn requester_of<'a>(&self, task: Task, subject: &'a str) -> Option<&'a str> {
        let requests = self.requests_for(task);
        let identity = subject
            .strip_prefix(requests.as_str())?
            .strip_prefix('.')?
            .strip_prefix(FROM_TOKEN)?
            .strip_prefix('.')?;
        is_identity(identity).then_some(identity)
    }

    /// Tokenize and decode calls (`TokenizerCall`), answered over core NATS request/reply by
    /// the embedding tokenizer workers in their queue group; no GPU work.
    pub fn tokenize(&self) -> String {
        format!("{}.tokenize", self.prefix)
    }

    /// Where `identity` publishes its tokenize calls: `{tokenize}.from.{identity}`.
    pub fn tokenize_from(&self, identity: &str) -> String {
        format!("{}.{FROM_TOKEN}.{identity}", self.tokenize())
    }

    /// The identity a tokenize call arrived from, read off its subject, as
    /// [`requester_of`](Self::requester_of) does for requests.
    pub fn tokenize_requester_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let identity = subject
            .strip_prefix(self.tokenize().as_str())?
            .strip_prefix('.')?
            .strip_prefix(FROM_TOKEN)?
            .strip_prefix('.')?;
        is_identity(identity).then_some(identity)
    }

    /// The batch subject of `task`.
    pub fn batches_for(&self, task: Task) -> String {
        match task {
            Task::Embed => self.batches(),
            Task::Rerank => self.rerank_batches(),
        }
    }

    /// The batch subject of `task`'s lane `lane`: interactive batches on
    /// [`batches_for`](Self::batches_for), bulk ones on `{batches}.bulk` (`embed.batches.bulk`,
    /// `embed.rerank.batches.bulk`), a stream of their own so GPU workers pull them apart.
    pub fn lane_batches(&self, task: Task, lane: Priority) -> String {
        match lane {
            Priority::Interactive => self.batches_for(task),
            Priority::Bulk => format!("{}.bulk", self.batches_for(task)),
        }
    }

    /// Name of the JetStream stream holding `task`'s batches of lane `lane`:
    /// [`batch_stream_for`](Self::batch_stream_for) for interactive work, `EMBED_BULK_BATCHES`
    /// and `EMBED_RERANK_BULK_BATCHES` for bulk work.
    pub fn lane_stream(&self, task: Task, lane: Priority) -> String {
        match (lane, task) {
            (Priority::Interactive, _) => self.batch_stream_for(task),
            (Priority::Bulk, Task::Embed) => format!("{}_BULK_BATCHES", self.stream_stem()),
            (Priority::Bulk, Task::Rerank) => {
                format!("{}_RERANK_BULK_BATCHES", self.stream_stem())
            }
        }
    }

    /// Where tokenizer workers offer small batches of `task` straight to an idle GPU worker
    /// (core NATS request/reply), before the work queue: `embed.direct`,
    /// `embed.rerank.direct`.
    pub fn direct_batches_for(&self, task: Task) -> String {
        match task {
            Task::Embed => format!("{}.direct", self.prefix),
            Task::Rerank => format!("{}.rerank.direct", self.prefix),
        }
    }

    /// The queue group of `task`'s GPU workers on its direct batch subject.
    pub fn direct_queue_group(task: Task) -> &'static str {
        match task {
            Task::Embed => GPU_DIRECT_QUEUE_GROUP,
            Task::Rerank => RERANK_DIRECT_QUEUE_GROUP,
        }
    }

    /// Name of the JetStream stream holding the batches of `task`.
    pub fn batch_stream_for(&self, task: Task) -> String {
        match task {
            Task::Embed => self.batch_stream(),
            Task::Rerank => format!("{}_RERANK_BATCHES", self.stream_stem()),
        }
    }

    /// Status requests: every worker answers with a `WorkerStatus` (scatter-gather). The
    /// same subject for every model of the deployment.
    pub fn status(&self) -> String {
        format!("{}.status", self.root)
    }

    /// Name of the JetStream stream holding the batches.
    pub fn batch_stream(&self) -> String {
        format!("{}_BATCHES", self.stream_stem())
    }

    /// The prefix as a stream name stem (`prod.embed` gives `PROD_EMBED`).
    fn stream_stem(&self) -> String {
        self.prefix.to_uppercase().replace(['.', '-'], "_")
    }
}

/// Whether `subject` can be published on: dot-separated tokens, none empty, none a wildcard
/// (`*`, `>`), no whitespace.
pub fn is_publish_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|token| !token.is_empty() && token != "*" && token != ">")
        && !subject.contains(char::is_whitespace)
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
        assert_eq!(subjects.rerank(), "prod.embed.rerank");
        assert_eq!(subjects.rerank_batches(), "prod.embed.rerank.batches");
        assert_eq!(
            subjects.batch_stream_for(Task::Rerank),
            "PROD_EMBED_RERANK_BATCHES"
        );
        assert_eq!(subjects.batches_for(Task::Embed), subjects.batches());
        assert_eq!(subjects.requests_for(Task::Rerank), subjects.rerank());
        assert_eq!(
            subjects.direct_batches_for(Task::Embed),
            "prod.embed.direct"
        );
        assert_eq!(
            subjects.direct_batches_for(Task::Rerank),
            "prod.embed.rerank.direct"
        );
        let bulk = Priority::Bulk;
        assert_eq!(
            subjects.lane_batches(Task::Embed, Priority::Interactive),
            "prod.embed.batches"
        );
        assert_eq!(
            subjects.lane_batches(Task::Embed, bulk),
            "prod.embed.batches.bulk"
        );
        assert_eq!(
            subjects.lane_batches(Task::Rerank, bulk),
            "prod.embed.rerank.batches.bulk"
        );
        assert_eq!(
            subjects.lane_stream(Task::Embed, Priority::Interactive),
            "PROD_EMBED_BATCHES"
        );
        assert_eq!(
            subjects.lane_stream(Task::Embed, bulk),
            "PROD_EMBED_BULK_BATCHES"
        );
        assert_eq!(
            subjects.lane_stream(Task::Rerank, bulk),
            "PROD_EMBED_RERANK_BULK_BATCHES"
        );
    }

    #[test]
    fn a_routed_model_has_its_own_work_subjects_and_streams_and_the_shared_status() {
        let token = model_token("Qwen/Qwen3-Embedding-4B");
        assert_eq!(token, "qwen-qwen3-embedding-4b");
        assert_eq!(model_token("a.b c_D"), "a-b-c_d");
        assert_eq!(model_token(&"x".repeat(100)).len(), MAX_MODEL_TOKEN_LEN);
        let base = Subjects::new("prod.embed");
        let routed = base.routed(Some(&token));
        assert_eq!(routed.route(), Some("qwen-qwen3-embedding-4b"));
        assert_eq!(routed.root(), "prod.embed");
        assert_eq!(
            routed.requests(),
            "prod.embed.models.qwen-qwen3-embedding-4b.requests"
        );
        assert_eq!(
            routed.requests_from(Task::Rerank, "gateway"),
            "prod.embed.models.qwen-qwen3-embedding-4b.rerank.from.gateway"
        );
        assert_eq!(
            routed.lane_batches(Task::Embed, Priority::Bulk),
            "prod.embed.models.qwen-qwen3-embedding-4b.batches.bulk"
        );
        assert_eq!(
            routed.batch_stream(),
            "PROD_EMBED_MODELS_QWEN_QWEN3_EMBEDDING_4B_BATCHES"
        );
        assert_eq!(routed.status(), "prod.embed.status");
        assert_eq!(
            routed.tokenize(),
            "prod.embed.models.qwen-qwen3-embedding-4b.tokenize"
        );
        assert_eq!(routed.routed(None), base);
        assert_eq!(base.route(), None);
    }

    #[test]
    fn requesters_are_read_off_their_subjects() {
        let subjects = Subjects::new("prod.embed");
        let from = subjects.requests_from(Task::Embed, "alice");
        assert_eq!(from, "prod.embed.requests.from.alice");
        assert_eq!(subjects.requester_of(Task::Embed, &from), Some("alice"));
        assert_eq!(
            subjects.requests_from(Task::Rerank, "gateway"),
            "prod.embed.rerank.from.gateway"
        );
        for other in [
            "prod.embed.requests",
            "prod.embed.requests.from",
            "prod.embed.requests.from.a.b",
            "prod.embed.requests.alice",
            "prod.embed.rerank.from.alice",
        ] {
            assert_eq!(subjects.requester_of(Task::Embed, other), None, "{other}");
        }
        assert_eq!(subjects.tokenize(), "prod.embed.tokenize");
        let tokenize = subjects.tokenize_from("alice");
        assert_eq!(tokenize, "prod.embed.tokenize.from.alice");
        assert_eq!(subjects.tokenize_requester_of(&tokenize), Some("alice"));
        assert_eq!(subjects.tokenize_requester_of("prod.embed.tokenize"), None);
        assert_eq!(subjects.tokenize_requester_of(&from), None);
        assert_eq!(reply_prefix_of("alice"), "_INBOX.alice.");
        assert!(is_identity("gpu-worker_2"));
        for bad in [
            "",
            "a.b",
            "a*",
            ">",
            "a b",
            &"x".repeat(MAX_IDENTITY_LEN + 1),
        ] {
            assert!(!is_identity(bad), "{bad:?}");
        }
    }

    #[test]
    fn publish_subjects_have_tokens_and_no_wildcards_or_spaces() {
        for good in ["a", "_INBOX.x.bundle", "embed.requests", "a-b.c_d.9"] {
            assert!(is_publish_subject(good), "{good}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a.*", "a.>", "*", "a b", "a\tb", "a.b\n",
        ] {
            assert!(!is_publish_subject(bad), "{bad:?}");
        }
    }
}
