//! The gateway's OpenAI-compatible route, `POST /v1/embeddings`, with base64 vectors.

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{EmbedSettings, Failure};
use crate::error::CliError;
use crate::retry::parse_retry_after;

/// A client of one gateway.
pub struct HttpEmbedder {
    /// Connection pool shared by the concurrent requests.
    client: reqwest::Client,
    /// The full `/v1/embeddings` URL.
    endpoint: String,
    /// Bearer token, when the gateway wants one.
    api_key: Option<String>,
    /// What every request asks for.
    settings: EmbedSettings,
}

/// The part of the answer this client reads.
#[derive(Deserialize)]
struct EmbeddingList {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    /// Base64 of little-endian f32 values.
    embedding: String,
}

impl HttpEmbedder {
    /// A client of the gateway at `url` (its root, or its `/v1` OpenAI base URL).
    pub fn new(
        url: &str,
        api_key: Option<String>,
        settings: EmbedSettings,
    ) -> Result<Self, CliError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| CliError::Connect {
                url: url.into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            client,
            endpoint: endpoint(url),
            api_key,
            settings,
        })
    }

    /// One request for `texts`.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, Failure> {
        let settings = &self.settings;
        let mut body = json!({
            "input": texts,
            "input_type": settings.input_type,
            "encoding_format": "base64",
            // A batch job: the bulk lane, behind interactive work (`docs/configuration.md`).
            "priority": "bulk",
        });
        if let Some(instruction) = &settings.instruction {
            body["instruction"] = instruction.as_str().into();
        }
        if let Some(dimensions) = settings.dimensions {
            body["dimensions"] = dimensions.into();
        }
        if let Some(model) = &settings.model {
            body["model"] = model.as_str().into();
        }
        let mut request = self.client.post(&self.endpoint).json(&body);
        if let Some(key) = &self.api_key {
            request = request.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let response = request.send().await.map_err(|e| Failure::Retry {
            message: format!("POST {}: {e}", self.endpoint),
            retry_after: None,
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(|e| Failure::Retry {
            message: format!("reading the answer: {e}"),
            retry_after: None,
        })?;
        if status.is_success() {
            return decode(&bytes, texts.len()).map_err(Failure::Fatal);
        }
        let message = format!("{status}: {}", error_message(&bytes));
        if retryable(status) {
            Err(Failure::Retry {
                message,
                retry_after,
            })
        } else {
            Err(Failure::Fatal(message))
        }
    }
}

/// `/v1/embeddings` under the gateway's root; a `/v1` base URL (what OpenAI clients take)
/// or the full route work too.
fn endpoint(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/v1/embeddings") {
        url.to_string()
    } else if url.ends_with("/v1") {
        format!("{url}/embeddings")
    } else {
        format!("{url}/v1/embeddings")
    }
}

/// 429, 408 and every 5xx but 501 are worth retrying.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// The `error.message` of an OpenAI-style error body, else the body itself (shortened).
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned())
}

/// The vectors of a 200 answer, in input order.
fn decode(bytes: &[u8], texts: usize) -> Result<Vec<Vec<f32>>, String> {
    let list: EmbeddingList =
        serde_json::from_slice(bytes).map_err(|e| format!("unexpected answer: {e}"))?;
    let mut vectors = vec![None; texts];
    for item in list.data {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&item.embedding)
            .map_err(|e| format!("item {}: bad base64: {e}", item.index))?;
        if raw.len() % 4 != 0 {
            return Err(format!(
                "item {}: {} bytes is not whole f32s",
                item.index,
                raw.len()
            ));
        }
        let vector = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        match vectors.get_mut(item.index) {
            Some(slot @ None) => *slot = Some(vector),
            _ => {
                return Err(format!(
                    "item index {} out of range or repeated",
                    item.index
                ));
            }
        }
    }
    vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| format!("no vector for item {i}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_root_or_openai_base_url() {
        for url in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/embeddings",
        ] {
            assert_eq!(endpoint(url), "http://h:1/v1/embeddings", "{url}");
        }
    }

    #[test]
    fn statuses_worth_retrying() {
        for code in [429, 408, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 404, 413, 501] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn answers_decode_in_index_order_and_bad_ones_are_errors() {
        let b64 = |values: &[f32]| {
            base64::engine::general_purpose::STANDARD.encode(common::wire::f32_le_bytes([values]))
        };
        let body = json!({"data": [
            {"index": 1, "embedding": b64(&[3.0, 4.0])},
            {"index": 0, "embedding": b64(&[1.0, 2.0])},
        ]});
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(
            decode(&bytes, 2).unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        assert!(
            decode(&bytes, 3)
                .unwrap_err()
                .contains("no vector for item 2")
        );
        assert!(decode(&bytes, 1).unwrap_err().contains("out of range"));
        assert!(decode(b"{}", 1).is_err());
        assert_eq!(
            error_message(br#"{"error": {"message": "bad key"}}"#),
            "bad key"
        );
        assert_eq!(error_message(b"plain"), "plain");
    }
}
