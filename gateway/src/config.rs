//! The gateway's typed configuration (`[gateway]` in the configuration files).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::nats::NatsConfig;
use common::queue::QueueConfig;
use common::wire::InputType;
use serde::Deserialize;

use crate::api_keys::{ApiKeys, ApiKeysError};

/// Model name served when none is configured.
pub const DEFAULT_MODEL: &str = "Qwen/Qwen3-Embedding-0.6B";

/// Reranker name served when none is configured.
pub const DEFAULT_RERANK_MODEL: &str = "Qwen/Qwen3-Reranker-0.6B";

/// Requests queued per place in flight when `max_queued_requests` is unset.
pub const DEFAULT_QUEUE_FACTOR: usize = 10;

/// The largest `max_connections` accepted (each connection holds a file descriptor).
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;

/// Everything the gateway needs to serve; `[gateway]` in the configuration files, with
/// `nats` read from `[nats]` by the binary.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on (Ray Serve `http_options.host`).
    pub host: String,
    /// Port to listen on; 0 picks a free one (Ray Serve `http_options.port`, 4008 in the seed).
    pub port: u16,
    /// Prefix of the seed-compatible routes (Ray Serve `root_path`, `/api/v1` in the seed).
    /// The OpenAI routes (`/v1/...`) and `/health`, `/metrics` are served without it.
    pub root_path: String,
    /// Model name clients pass in `model` and that `/v1/models` lists.
    pub model: String,
    /// Reranker name: the `model` of rerank answers, and the only one rerank requests may
    /// name (the rerank workers serve it).
    pub rerank_model: String,
    /// Requests in flight at once; beyond it requests wait in the admission queue (Ray
    /// Serve `max_concurrent_queries`, 100 by default there; kept at 100 here).
    pub max_concurrent_queries: usize,
    /// Requests that may wait, first come first served, for a place under
    /// `max_concurrent_queries`; the wait counts against their deadline. Beyond it requests
    /// are refused at once with 429 and `Retry-After`. 0 means no queue; unset means 10
    /// times `max_concurrent_queries` (see [`Self::queue_limit`]).
    pub max_queued_requests: Option<usize>,
    /// Seconds a request may take end to end; the deadline travels with the work to every
    /// stage, and the client gets 504 when it passes (Ray Serve `request_timeout_s`).
    pub request_timeout_s: f64,
    /// Finished vectors kept in the LRU cache, keyed by text and options; 0 disables it
    /// (the seed's `lru_cache(maxsize=1000)`).
    pub cache_size: u64,
    /// Largest request body accepted, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most texts in one request (400 beyond).
    pub max_inputs_per_request: usize,
    /// Most characters in one text (400 beyond); bounds the tokenizer's work per text.
    pub max_input_chars: usize,
    /// `input_type` of OpenAI requests that do not name one (the seed route uses `is_query`).
    pub default_input_type: InputType,
    /// Whether over-long inputs are cut instead of rejected; unset leaves the tokenizer
    /// workers' own default.
    pub truncate: Option<bool>,
    /// Milliseconds to wait for a tokenizer worker to acknowledge that a request is queued
    /// before publishing it again (the worker that took it may have died); the wait doubles
    /// after each resend, up to 4 times this. 0 turns acknowledgements off (for tokenizer
    /// workers older than the acknowledgement, which would never send one).
    pub tokenizer_ack_timeout_ms: u64,
    /// How long a worker discovery waits for status answers, milliseconds (every worker
    /// answers; their number is unknown, so the gateway always waits this long).
    pub status_wait_ms: u64,
    /// How long a discovery result is reused, milliseconds, so `/health` under load does not
    /// flood NATS.
    pub status_cache_ms: u64,
    /// File of API keys, one per line (blank lines and `#` comments skipped), read once at
    /// start. When any key is configured (here or in `api_keys`), every route but `/health`
    /// requires `Authorization: Bearer <key>`, `/metrics` and `/debug` included.
    pub api_keys_file: Option<PathBuf>,
    /// API keys given directly (the binary reads them from `QWEN3_EMBED_API_KEYS`), merged
    /// with the file's; never read from configuration files, and redacted in `Debug`.
    #[serde(skip)]
    pub api_keys: ApiKeys,
    /// Seconds a client has to send a request's headers (and, on a new connection, to finish
    /// the TLS handshake and start its first request); the connection is closed after it.
    pub header_read_timeout_s: f64,
    /// Seconds a client has to send a request's whole body once its headers are in; 408
    /// after it.
    pub body_read_timeout_s: f64,
    /// Seconds a connection may stay open with no request in flight before it is closed.
    pub idle_timeout_s: f64,
    /// Connections served at once; at the cap new connections wait in the kernel's listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// PEM certificate chain to serve HTTPS with (with `tls_key_file`); unset serves plain
    /// HTTP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Whether to refuse to start on a non-loopback address with no API key configured
    /// (the production profile sets it); otherwise that only logs a warning.
    pub require_api_keys_on_public_bind: bool,
    /// Origins (`https://app.example.com`) whose pages may call the API from a browser (CORS);
    /// `["*"]` allows every origin. Empty (the default) sends no CORS headers. Credentials
    /// (cookies) are never allowed; the API key goes in the `Authorization` header.
    pub cors_allowed_origins: Vec<String>,
    /// NATS connection and subject prefix (`[nats]`, set by the binary).
    #[serde(skip)]
    pub nats: NatsConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 4008,
            root_path: "/api/v1".into(),
            model: DEFAULT_MODEL.into(),
            rerank_model: DEFAULT_RERANK_MODEL.into(),
            max_concurrent_queries: 100,
            max_queued_requests: None,
            request_timeout_s: 30.0,
            cache_size: 1000,
            max_body_bytes: 2 * 1024 * 1024,
            max_inputs_per_request: 2048,
            max_input_chars: 200_000,
            default_input_type: InputType::Document,
            truncate: None,
            tokenizer_ack_timeout_ms: 1000,
            status_wait_ms: 200,
            status_cache_ms: 1000,
            api_keys_file: None,
            api_keys: ApiKeys::default(),
            header_read_timeout_s: 10.0,
            body_read_timeout_s: 30.0,
            idle_timeout_s: 60.0,
            max_connections: 4096,
            tls_cert_file: None,
            tls_key_file: None,
            require_api_keys_on_public_bind: false,
            cors_allowed_origins: Vec::new(),
            nats: NatsConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// The request deadline as a duration (at least 1 ms).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_s.max(0.001))
    }

    /// Requests that may wait for a place: `max_queued_requests`, or 10 times
    /// `max_concurrent_queries` when unset.
    pub fn queue_limit(&self) -> usize {
        self.max_queued_requests.unwrap_or_else(|| {
            self.max_concurrent_queries
                .saturating_mul(DEFAULT_QUEUE_FACTOR)
        })
    }

    /// How long to wait for a tokenizer worker's acknowledgement; `None` when off.
    pub fn tokenizer_ack_timeout(&self) -> Option<Duration> {
        (self.tokenizer_ack_timeout_ms > 0)
            .then(|| Duration::from_millis(self.tokenizer_ack_timeout_ms))
    }

    /// `header_read_timeout_s` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_read_timeout_s)
    }

    /// `body_read_timeout_s` as a duration.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.body_read_timeout_s)
    }

    /// `idle_timeout_s` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout_s)
    }

    /// Whether serving on `ip` with `keys` leaves every route but `/health` open to other
    /// hosts: a non-loopback address and no API key. An error when
    /// `require_api_keys_on_public_bind` forbids it.
    pub fn open_public_bind(&self, ip: IpAddr, keys: &ApiKeys) -> anyhow::Result<bool> {
        let open = !ip.is_loopback() && keys.is_empty();
        anyhow::ensure!(
            !(open && self.require_api_keys_on_public_bind),
            "refusing to serve on {ip} without API keys: /v1/embeddings, /debug and /metrics \
             would be open to anyone who can reach it (require_api_keys_on_public_bind is set, \
             as in the production profile). Configure API keys (api_keys_file or \
             QWEN3_EMBED_API_KEYS), bind a loopback host, or set \
             QWEN3_EMBED__GATEWAY__REQUIRE_API_KEYS_ON_PUBLIC_BIND=false to serve openly on purpose"
        );
        Ok(open)
    }

    /// `root_path` without a trailing slash, with a leading one (empty when it is `/`).
    pub fn route_prefix(&self) -> String {
        let trimmed = self.root_path.trim_matches('/');
        if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        }
    }

    /// Every configured API key: `api_keys` and those of `api_keys_file` (read now; an
    /// error when it cannot be read or holds no key). Empty means authentication is off.
    pub fn load_api_keys(&self) -> Result<ApiKeys, ApiKeysError> {
        let mut keys = self.api_keys.clone();
        if let Some(path) = &self.api_keys_file {
            keys = keys.merged(ApiKeys::from_file(path)?);
        }
        Ok(keys)
    }

    /// Rejects settings the gateway cannot serve with.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_concurrent_queries >= 1,
            "max_concurrent_queries must be at least 1"
        );
        anyhow::ensure!(
            self.request_timeout_s.is_finite() && self.request_timeout_s > 0.0,
            "request_timeout_s must be a positive number of seconds"
        );
        anyhow::ensure!(
            self.max_inputs_per_request >= 1,
            "max_inputs_per_request must be at least 1"
        );
        anyhow::ensure!(
            self.max_body_bytes >= 1,
            "max_body_bytes must be at least 1"
        );
        anyhow::ensure!(!self.model.is_empty(), "model must not be empty");
        for (name, seconds) in [
            ("header_read_timeout_s", self.header_read_timeout_s),
            ("body_read_timeout_s", self.body_read_timeout_s),
            ("idle_timeout_s", self.idle_timeout_s),
        ] {
            anyhow::ensure!(
                seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0,
                "{name} must be a positive number of seconds, at most a day (got {seconds})"
            );
        }
        anyhow::ensure!(
            (1..=MAX_CONNECTIONS_LIMIT).contains(&self.max_connections),
            "max_connections must be between 1 and {MAX_CONNECTIONS_LIMIT}"
        );
        anyhow::ensure!(
            self.tls_cert_file.is_some() == self.tls_key_file.is_some(),
            "tls_cert_file and tls_key_file go together: set both (HTTPS) or neither (HTTP)"
        );
        anyhow::ensure!(
            self.root_path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c)),
            "root_path may hold only letters, digits and / - . _ ~"
        );
        anyhow::ensure!(
            self.route_prefix() != "/v1",
            "root_path /v1 would collide with the OpenAI routes"
        );
        crate::http::cors::check_origins(&self.cors_allowed_origins)?;
        Ok(())
    }

    /// Rejects a request timeout not shorter than the work queue keeps a batch: the server
    /// drops a batch at `[queue] max_age_s` unanswered, and tokenizer workers refuse requests
    /// whose deadline lies beyond it (a timeout equal to it would leave no margin for the
    /// time a request spends before its batch is queued).
    pub fn validate_against(&self, queue: &QueueConfig) -> anyhow::Result<()> {
        let max_age = queue.max_age();
        anyhow::ensure!(
            self.request_timeout() < max_age,
            "request_timeout_s {} exceeds [queue] max_age_s {} (it must be shorter): the work \
             queue would drop batches of requests still waiting; raise max_age_s with it",
            self.request_timeout_s,
            max_age.as_secs_f64()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed() {
        let config = GatewayConfig::default();
        assert_eq!(config.port, 4008);
        assert_eq!(config.route_prefix(), "/api/v1");
        assert_eq!(config.max_concurrent_queries, 100);
        assert_eq!(config.queue_limit(), 1000);
        assert_eq!(config.cache_size, 1000);
        assert_eq!(config.tokenizer_ack_timeout(), Some(Duration::from_secs(1)));
        assert!(config.validate().is_ok());
        let off = GatewayConfig {
            tokenizer_ack_timeout_ms: 0,
            ..GatewayConfig::default()
        };
        assert_eq!(off.tokenizer_ack_timeout(), None);
    }

    #[test]
    fn the_queue_follows_the_limit_unless_set() {
        let mut config = GatewayConfig {
            max_concurrent_queries: 7,
            ..GatewayConfig::default()
        };
        assert_eq!(config.queue_limit(), 70);
        config.max_queued_requests = Some(0);
        assert_eq!(config.queue_limit(), 0, "0 means no queue");
        config.max_queued_requests = Some(3);
        assert_eq!(config.queue_limit(), 3);
        let parsed: GatewayConfig = serde_json::from_str(r#"{"max_queued_requests": 5}"#).unwrap();
        assert_eq!(parsed.queue_limit(), 5);
        assert!(serde_json::from_str::<GatewayConfig>(r#"{"max_queued_requests": -1}"#).is_err());
    }

    #[test]
    fn root_path_is_normalised() {
        let mut config = GatewayConfig {
            root_path: "api/v2/".into(),
            ..GatewayConfig::default()
        };
        assert_eq!(config.route_prefix(), "/api/v2");
        config.root_path = "/".into();
        assert_eq!(config.route_prefix(), "");
        assert!(config.validate().is_ok());
        config.root_path = "/api/{id}".into();
        assert!(config.validate().is_err());
        config.root_path = "/api".into();
        config.request_timeout_s = 0.0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn edge_limits_are_validated() {
        let ok = GatewayConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            GatewayConfig {
                header_read_timeout_s: 0.0,
                ..GatewayConfig::default()
            },
            GatewayConfig {
                body_read_timeout_s: f64::NAN,
                ..GatewayConfig::default()
            },
            GatewayConfig {
                idle_timeout_s: -1.0,
                ..GatewayConfig::default()
            },
            GatewayConfig {
                max_connections: 0,
                ..GatewayConfig::default()
            },
            GatewayConfig {
                tls_cert_file: Some("cert.pem".into()),
                ..GatewayConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_public_bind_without_keys_is_flagged_and_refused_when_required() {
        let public: IpAddr = "0.0.0.0".parse().unwrap();
        let loopback: IpAddr = "::1".parse().unwrap();
        let none = ApiKeys::default();
        let some = ApiKeys::from_list("secret", "test").unwrap();
        let mut config = GatewayConfig::default();
        assert!(config.open_public_bind(public, &none).unwrap());
        assert!(!config.open_public_bind(public, &some).unwrap());
        assert!(!config.open_public_bind(loopback, &none).unwrap());
        config.require_api_keys_on_public_bind = true;
        let error = config
            .open_public_bind(public, &none)
            .unwrap_err()
            .to_string();
        assert!(error.contains("refusing to serve on 0.0.0.0"), "{error}");
        assert!(!config.open_public_bind(public, &some).unwrap());
        assert!(!config.open_public_bind(loopback, &none).unwrap());
    }

    #[test]
    fn request_timeout_must_fit_in_the_queue_age() {
        let queue = QueueConfig::default();
        let mut config = GatewayConfig::default();
        assert!(config.validate_against(&queue).is_ok());
        config.request_timeout_s = queue.max_age_s - 1.0;
        assert!(config.validate_against(&queue).is_ok());
        config.request_timeout_s = queue.max_age_s;
        let error = config.validate_against(&queue).unwrap_err().to_string();
        assert!(error.contains("must be shorter"), "{error}");
        config.request_timeout_s = queue.max_age_s + 1.0;
        let error = config.validate_against(&queue).unwrap_err().to_string();
        assert!(error.contains("max_age_s"), "{error}");
    }
}
