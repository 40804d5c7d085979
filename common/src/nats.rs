//! Connecting to NATS with the deployment's servers, credentials and TLS.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Longest pause between two reconnection attempts. The client's own default grows to 4 s,
/// which would keep a stage away for up to 4 s after its server came back; attempts are
/// cheap (one TCP connect), so they are capped at 1 s.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How often [`NatsConfig::connect_watched`] checks the client's connection state.
pub const LINK_POLL: Duration = Duration::from_millis(100);

/// Pause before reconnection attempt `attempts`: none for the first, then 2, 4, 8... ms,
/// at most [`MAX_RECONNECT_DELAY`].
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(20);
    Duration::from_millis(1u64 << exponent).min(MAX_RECONNECT_DELAY)
}

/// How to reach and authenticate to the NATS servers (`[nats]` in the configuration).
/// Its `Debug` output redacts the password, token and NKey seed.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs, comma-separated (several URLs let clients fail over in a cluster).
    pub url: String,
    /// Subject prefix of this deployment (`embed` gives `embed.requests`).
    pub subject_prefix: String,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`.
    pub password: Option<String>,
    /// Authentication token.
    pub token: Option<String>,
    /// NKey seed (`SU...`).
    pub nkey: Option<String>,
    /// File holding an NKey seed (what `nats-auth` writes); kept out of the configuration
    /// so the seed never sits in a TOML file or an environment listing.
    pub nkey_file: Option<PathBuf>,
    /// Who this process is on the bus (`gateway`, `tokenizer`, `alice`...): its inbox
    /// becomes `_INBOX.{identity}` (so NATS permissions can keep each identity to its own
    /// replies), and a requester's requests go to `{subject}.from.{identity}`, where workers
    /// accept only reply subjects under that inbox. Unset: `_INBOX` and the bare subjects.
    pub identity: Option<String>,
    /// `.creds` file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the servers with; implies TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS, with `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Require TLS even without certificates configured.
    pub tls_required: bool,
    /// Seconds to wait for the first connection.
    pub connect_timeout_s: f64,
    /// Workers only: serve this worker's model on subjects of its own,
    /// `{subject_prefix}.models.{token}` with the token derived from the model's name, beside
    /// the deployment's default model (false: the prefix's own subjects). Gateways find such
    /// models in the workers' status replies and route requests by their `model` field.
    pub model_subjects: bool,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("subject_prefix", &self.subject_prefix)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("token", &redacted(&self.token))
            .field("nkey", &redacted(&self.nkey))
            .field("nkey_file", &self.nkey_file)
            .field("identity", &self.identity)
            .field("creds_file", &self.creds_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_required", &self.tls_required)
            .field("connect_timeout_s", &self.connect_timeout_s)
            .field("model_subjects", &self.model_subjects)
            .finish()
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: crate::subjects::DEFAULT_PREFIX.into(),
            user: None,
            password: None,
            token: None,
            nkey: None,
            nkey_file: None,
            identity: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            connect_timeout_s: 5.0,
            model_subjects: false,
        }
    }
}

/// Connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The settings contradict each other.
    #[error("invalid NATS settings: {0}")]
    Settings(String),
    /// The credentials file could not be read.
    #[error("cannot read NATS credentials {path}: {source}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No server answered.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URLs tried.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
}

impl NatsConfig {
    /// The server URLs of `url`, split at commas (the client library takes one URL per
    /// entry; one string holding several fails to parse).
    pub fn server_urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// The subjects of this deployment.
    pub fn subjects(&self) -> crate::subjects::Subjects {
        crate::subjects::Subjects::new(self.subject_prefix.clone())
    }

    /// The subjects a worker serving model `model_name` works on: its own route when
    /// [`model_subjects`](Self::model_subjects) is set, else the deployment's default ones.
    pub fn worker_subjects(&self, model_name: &str) -> crate::subjects::Subjects {
        let token = self
            .model_subjects
            .then(|| crate::subjects::model_token(model_name));
        self.subjects().routed(token.as_deref())
    }

    /// This identity's inbox prefix: `_INBOX.{identity}`, or `_INBOX` without one. Every
    /// reply this process asks for (its requests, JetStream API calls) arrives under it.
    pub fn inbox_prefix(&self) -> String {
        match &self.identity {
            Some(identity) => format!("{}.{identity}", crate::subjects::INBOX_ROOT),
            None => crate::subjects::INBOX_ROOT.to_string(),
        }
    }

    /// The NKey seed: `nkey`, or the first non-empty line of `nkey_file`; both set is an
    /// error.
    fn nkey_seed(&self) -> Result<Option<String>, ConnectError> {
        match (&self.nkey, &self.nkey_file) {
            (Some(_), Some(_)) => Err(ConnectError::Settings(
                "give nkey or nkey_file, not both".into(),
            )),
            (Some(seed), None) => Ok(Some(seed.clone())),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConnectError::Credentials {
                        path: path.clone(),
                        source,
                    })?;
                text.lines()
                    .map(str::trim)
                    .find(|line| !line.is_empty())
                    .map(|seed| Some(seed.to_string()))
                    .ok_or_else(|| {
                        ConnectError::Settings(format!("{} holds no NKey seed", path.display()))
                    })
            }
            (None, None) => Ok(None),
        }
    }

    /// Checks `identity`: one subject token of letters, digits, `-` and `_`.
    pub fn validate_identity(&self) -> Result<(), ConnectError> {
        match &self.identity {
            Some(identity) if !crate::subjects::is_identity(identity) => {
                Err(ConnectError::Settings(format!(
                    "identity `{identity}` must be 1 to {} letters, digits, `-` or `_`",
                    crate::subjects::MAX_IDENTITY_LEN
                )))
            }
            _ => Ok(()),
        }
    }

    /// Client options with authentication and TLS applied; `name` identifies the client in
    /// the server's monitoring. Connecting with them fails at once when the server refuses
    /// (tests check refusals this way); [`Self::connect`] adds retrying.
    pub async fn options(&self, name: &str) -> Result<async_nats::ConnectOptions, ConnectError> {
        self.validate_identity()?;
        let nkey = self.nkey_seed()?;
        let mut options = match (
            &self.user,
            &self.password,
            &self.token,
            &nkey,
            &self.creds_file,
        ) {
            (Some(user), Some(password), None, None, None) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            (None, None, Some(token), None, None) => {
                async_nats::ConnectOptions::with_token(token.clone())
            }
            (None, None, None, Some(seed), None) => {
                async_nats::ConnectOptions::with_nkey(seed.clone())
            }
            (None, None, None, None, Some(path)) => {
                async_nats::ConnectOptions::with_credentials_file(path.clone())
                    .await
                    .map_err(|source| ConnectError::Credentials {
                        path: path.clone(),
                        source,
                    })?
            }
            (None, None, None, None, None) => async_nats::ConnectOptions::new(),
            _ => {
                return Err(ConnectError::Settings(
                    "give exactly one of user+password, token, nkey (or nkey_file) or creds_file"
                        .into(),
                ));
            }
        };
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => {
                return Err(ConnectError::Settings(
                    "tls_cert_file and tls_key_file go together".into(),
                ));
            }
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        Ok(options
            .custom_inbox_prefix(self.inbox_prefix())
            .name(name)
            .connection_timeout(Duration::from_secs_f64(self.connect_timeout_s.max(0.1)))
            .reconnect_delay_callback(reconnect_delay))
    }

    /// Connects (retrying in the background until the first connection succeeds).
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConnectError> {
        let options = self
            .options(name)
            .await?
            .retry_on_initial_connect()
            .event_callback(|event| async move { log_event(&event) });
        options
            .connect(self.server_urls())
            .await
            .map_err(|source| ConnectError::Connect {
                url: self.url.clone(),
                source,
            })
    }

    /// Connects like [`Self::connect`] and also returns a watch of the link: `true` while
    /// connected, `false` from the moment the client notices a disconnection until it is
    /// connected again. Connection events move it at once; a check of the client's state
    /// every [`LINK_POLL`] corrects it should an event be dropped. The checking task ends
    /// when every receiver is dropped.
    pub async fn connect_watched(
        &self,
        name: &str,
    ) -> Result<(async_nats::Client, tokio::sync::watch::Receiver<bool>), ConnectError> {
        let (link_tx, link_rx) = tokio::sync::watch::channel(false);
        let link_tx = std::sync::Arc::new(link_tx);
        let on_event = std::sync::Arc::clone(&link_tx);
        let options = self.options(name).await?.retry_on_initial_connect();
        let options = options.event_callback(move |event| {
            match event {
                async_nats::Event::Connected => {
                    on_event.send_replace(true);
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting");
                    on_event.send_replace(false);
                }
                other => log_event(&other),
            }
            async {}
        });
        let client = options
            .connect(self.server_urls())
            .await
            .map_err(|source| ConnectError::Connect {
                url: self.url.clone(),
                source,
            })?;
        let watched = client.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LINK_POLL);
            while !link_tx.is_closed() {
                tick.tick().await;
                let up = watched.connection_state() == async_nats::connection::State::Connected;
                link_tx.send_if_modified(|link| std::mem::replace(link, up) != up);
            }
        });
        Ok((client, link_rx))
    }
}

/// Logs a connection event: what the server refused (a wrong key, a permissions
/// violation, an authorization timeout) at warn, so a misconfigured identity is seen at
/// once rather than as silent retries; the rest at debug.
fn log_event(event: &async_nats::Event) {
    match event {
        async_nats::Event::ServerError(error) => {
            tracing::warn!("NATS server refused this client: {error}");
        }
        other => tracing::debug!(event = %other, "NATS connection event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_secrets() {
        let config = NatsConfig {
            user: Some("embed".into()),
            password: Some("hunter2".into()),
            token: Some("tok-123".into()),
            nkey: Some("SUAB".into()),
            ..NatsConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(
            shown.contains("embed") && shown.contains("<redacted>"),
            "{shown}"
        );
        for secret in ["hunter2", "tok-123", "SUAB"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }

    #[test]
    fn several_urls_are_split_at_commas() {
        let config = NatsConfig {
            url: "nats://a:4222, nats://b:4223,,nats://c:4224".into(),
            ..NatsConfig::default()
        };
        assert_eq!(
            config.server_urls(),
            ["nats://a:4222", "nats://b:4223", "nats://c:4224"]
        );
    }

    #[test]
    fn reconnect_delays_grow_to_the_cap() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(2));
        assert_eq!(reconnect_delay(5), Duration::from_millis(16));
        assert_eq!(reconnect_delay(11), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn the_identity_names_the_inbox() {
        assert_eq!(NatsConfig::default().inbox_prefix(), "_INBOX");
        let config = NatsConfig {
            identity: Some("gateway".into()),
            ..NatsConfig::default()
        };
        assert_eq!(config.inbox_prefix(), "_INBOX.gateway");
        assert!(config.validate_identity().is_ok());
        let bad = NatsConfig {
            identity: Some("a.b".into()),
            ..NatsConfig::default()
        };
        assert!(matches!(
            bad.validate_identity(),
            Err(ConnectError::Settings(_))
        ));
    }

    #[tokio::test]
    async fn the_nkey_seed_is_read_from_its_file() {
        let dir = std::env::temp_dir().join(format!("nkey-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seed");
        std::fs::write(&path, "\n  SUSEED  \n").unwrap();
        let config = NatsConfig {
            nkey_file: Some(path.clone()),
            ..NatsConfig::default()
        };
        assert_eq!(config.nkey_seed().unwrap().as_deref(), Some("SUSEED"));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(config.nkey_seed(), Err(ConnectError::Settings(_))));
        let both = NatsConfig {
            nkey: Some("SU".into()),
            ..config.clone()
        };
        assert!(matches!(both.nkey_seed(), Err(ConnectError::Settings(_))));
        let missing = NatsConfig {
            nkey_file: Some(dir.join("absent")),
            ..NatsConfig::default()
        };
        assert!(matches!(
            missing.nkey_seed(),
            Err(ConnectError::Credentials { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn contradictory_credentials_are_refused() {
        let config = NatsConfig {
            token: Some("t".into()),
            user: Some("u".into()),
            password: Some("p".into()),
            ..NatsConfig::default()
        };
        assert!(matches!(
            config.options("x").await,
            Err(ConnectError::Settings(_))
        ));
    }
}
