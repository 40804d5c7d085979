//! The service the vectors come from: the gateway's OpenAI route over HTTP, or the public
//! NATS API. Both answer one batch of texts with one vector per text, in order.

pub mod http;
pub mod nats;

use std::time::Duration;

use common::wire::InputType;

use crate::error::CliError;
use crate::options::Options;
use crate::retry::Backoff;

/// What every request asks for, besides the texts.
#[derive(Debug, Clone)]
pub struct EmbedSettings {
    /// Query or document.
    pub input_type: InputType,
    /// Task description for queries.
    pub instruction: Option<String>,
    /// Matryoshka size.
    pub dimensions: Option<u32>,
    /// Model name for HTTP requests.
    pub model: Option<String>,
    /// How long one attempt may take.
    pub timeout: Duration,
}

impl EmbedSettings {
    /// The settings the options ask for.
    pub fn from_options(options: &Options) -> Self {
        Self {
            input_type: if options.query {
                InputType::Query
            } else {
                InputType::Document
            },
            instruction: options.instruction.clone(),
            dimensions: options.dimensions,
            model: options.model.clone(),
            timeout: options.timeout(),
        }
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Worth another try later (overload, timeouts, lost connections, 5xx).
    Retry {
        /// What happened.
        message: String,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Another try would get the same answer (bad input, bad key).
    Fatal(String),
}

/// How a URL reaches the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `http://` or `https://`: the gateway.
    Http,
    /// `nats://`, `tls://`, `ws://` or `wss://`: the NATS API.
    Nats,
}

impl Transport {
    /// The transport `url`'s scheme names, or an error naming the accepted ones.
    pub fn of(url: &str) -> Result<Self, CliError> {
        let scheme = url
            .trim()
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http" | "https") => Ok(Self::Http),
            Some("nats" | "tls" | "ws" | "wss") => Ok(Self::Nats),
            _ => Err(CliError::Options(format!(
                "--url {url}: expected http://, https://, nats:// or tls://"
            ))),
        }
    }
}

/// A connected client of the service.
pub enum Embedder {
    /// The gateway's `POST /v1/embeddings`.
    Http(http::HttpEmbedder),
    /// The public NATS API (`{prefix}.requests`).
    Nats(nats::NatsEmbedder),
}

impl Embedder {
    /// Connects to the service `options.url` names.
    pub async fn connect(options: &Options) -> Result<Self, CliError> {
        let settings = EmbedSettings::from_options(options);
        let url = options.url.trim();
        match Transport::of(url)? {
            Transport::Http => Ok(Self::Http(http::HttpEmbedder::new(
                url,
                options.api_key.clone(),
                settings,
            )?)),
            Transport::Nats => Ok(Self::Nats(
                nats::NatsEmbedder::connect(url, options, settings).await?,
            )),
        }
    }

    /// One attempt at embedding `texts`.
    async fn attempt(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, Failure> {
        match self {
            Self::Http(http) => http.embed(texts).await,
            Self::Nats(nats) => nats.embed(texts).await,
        }
    }

    /// Embeds `texts`, retrying transient failures per `backoff`; the error says why the
    /// last attempt failed. Checks that every text got a vector and that all vectors have
    /// the same, non-zero length.
    pub async fn embed(
        &self,
        texts: &[String],
        backoff: &Backoff,
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut retry = 0;
        loop {
            let failure = match self.attempt(texts).await {
                Ok(vectors) => return check_shape(vectors, texts.len()),
                Err(failure) => failure,
            };
            match failure {
                Failure::Fatal(message) => return Err(message),
                Failure::Retry {
                    message,
                    retry_after,
                } => match backoff.delay(retry, retry_after, rand::random::<f64>()) {
                    Some(wait) => {
                        tokio::time::sleep(wait).await;
                        retry += 1;
                    }
                    None => return Err(format!("{message} (after {retry} retries)")),
                },
            }
        }
    }
}

fn check_shape(vectors: Vec<Vec<f32>>, texts: usize) -> Result<Vec<Vec<f32>>, String> {
    if vectors.len() != texts {
        return Err(format!(
            "the service answered {} vectors for {texts} texts",
            vectors.len()
        ));
    }
    let dims = vectors.first().map_or(0, Vec::len);
    if vectors.iter().any(|v| v.len() != dims || v.is_empty()) {
        return Err("the service answered vectors of different or zero lengths".into());
    }
    Ok(vectors)
}
