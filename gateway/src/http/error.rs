//! Every way a request can fail, and the one place that maps each to an HTTP status and an
//! OpenAI-style body `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::subjects::Task;
use common::wire::{ErrorCode, ErrorReply};
use serde::Serialize;
use utoipa::ToSchema;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not declared as JSON.
    #[error("expected Content-Type application/json, got {0}")]
    UnsupportedMediaType(String),
    /// The body is larger than `max_body_bytes`.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body could not be read from the connection.
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    /// The body is not UTF-8.
    #[error("request body is not valid UTF-8 (invalid byte at offset {offset})")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The body is not JSON (or not a JSON object).
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A field is missing, of the wrong type or out of range.
    #[error("{message}")]
    InvalidField {
        /// The field (`input`, `dimensions`, `input[3]`).
        param: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request names a model this gateway does not serve for the route's task.
    #[error(
        "model `{requested}` does not exist; this server serves {}: {}",
        task_models(.task),
        quoted_list(.served)
    )]
    ModelNotFound {
        /// The name the client sent.
        requested: String,
        /// The route's task.
        task: Task,
        /// The names of the task's models served: the default first, then the discovered
        /// ones by name.
        served: Vec<String>,
    },
    /// API keys are configured and the request carries none.
    #[error("missing API key; send it as `Authorization: Bearer <key>`")]
    MissingApiKey,
    /// The request's bearer token is not a configured API key.
    #[error("invalid API key")]
    InvalidApiKey,
    /// No route matches the path.
    #[error("no route for {method} {path}")]
    RouteNotFound {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// The route exists but not for this method.
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    /// `max_concurrent_queries` requests are in flight and `max_queued_requests` wait.
    #[error(
        "server is at its limit of {limit} concurrent requests with {queue_limit} more queued; retry in {retry_after_s} s"
    )]
    Overloaded {
        /// Requests allowed in flight.
        limit: usize,
        /// Requests allowed to wait for a place.
        queue_limit: usize,
        /// Seconds to wait before retrying, sent as `Retry-After`.
        retry_after_s: u64,
    },
    /// Nobody listens on the request subject.
    #[error("no tokenizer worker is available to serve the request")]
    NoWorkers,
    /// Nobody listens on the rerank subject.
    #[error(
        "no rerank worker is available to serve the request (start workers with --task rerank)"
    )]
    NoRerankWorkers,
    /// The gateway is not connected to NATS.
    #[error("the gateway is not connected to the message bus ({0})")]
    BusUnavailable(String),
    /// The request is too large for one NATS message.
    #[error(
        "request of {size} bytes exceeds the message bus limit of {limit} bytes; send fewer or shorter inputs"
    )]
    BusPayloadTooLarge {
        /// Encoded request size.
        size: usize,
        /// The server's `max_payload`.
        limit: usize,
    },
    /// The request deadline passed in the gateway.
    #[error("request timed out after {0} s")]
    Timeout(f64),
    /// A worker answered with an error.
    #[error("{}", .0.error.message)]
    Upstream(ErrorReply),
    /// A worker's answer does not follow the protocol.
    #[error("a worker sent an invalid reply: {0}")]
    BadReply(String),
}

impl ApiError {
    /// An invalid-field error naming `param`.
    pub fn field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField {
            param: param.into(),
            message: message.into(),
        }
    }

    /// HTTP status, error `type`, error `code` and `param` of this error; the one mapping.
    fn parts(&self) -> (StatusCode, &'static str, &'static str, Option<&str>) {
        const INVALID: &str = "invalid_request_error";
        const SERVER: &str = "server_error";
        match self {
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID,
                "unsupported_media_type",
                None,
            ),
            Self::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                "payload_too_large",
                None,
            ),
            Self::BodyRead(_) => (StatusCode::BAD_REQUEST, INVALID, "invalid_body", None),
            Self::InvalidUtf8 { .. } => (StatusCode::BAD_REQUEST, INVALID, "invalid_utf8", None),
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, INVALID, "invalid_json", None),
            Self::InvalidField { param, .. } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "invalid_value",
                Some(param.as_str()),
            ),
            Self::ModelNotFound { .. } => (
                StatusCode::NOT_FOUND,
                INVALID,
                "model_not_found",
                Some("model"),
            ),
            Self::MissingApiKey | Self::InvalidApiKey => {
                (StatusCode::UNAUTHORIZED, INVALID, "invalid_api_key", None)
            }
            Self::RouteNotFound { .. } => (StatusCode::NOT_FOUND, INVALID, "not_found", None),
            Self::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                "method_not_allowed",
                None,
            ),
            Self::Overloaded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "overloaded",
                None,
            ),
            Self::NoWorkers | Self::NoRerankWorkers => {
                (StatusCode::SERVICE_UNAVAILABLE, SERVER, "no_workers", None)
            }
            Self::BusUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER,
                "bus_unavailable",
                None,
            ),
            Self::BusPayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                "payload_too_large",
                Some("input"),
            ),
            Self::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, SERVER, "timeout", None),
            Self::Upstream(reply) => match reply.error.code {
                ErrorCode::InvalidRequest => {
                    (StatusCode::BAD_REQUEST, INVALID, "invalid_request", None)
                }
                ErrorCode::TooManyTokens => (
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    "too_many_tokens",
                    Some("input"),
                ),
                ErrorCode::DeadlineExceeded => {
                    (StatusCode::GATEWAY_TIMEOUT, SERVER, "timeout", None)
                }
                ErrorCode::Overloaded => {
                    (StatusCode::SERVICE_UNAVAILABLE, SERVER, "overloaded", None)
                }
                ErrorCode::Internal => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    SERVER,
                    "internal_error",
                    None,
                ),
            },
            Self::BadReply(_) => (StatusCode::BAD_GATEWAY, SERVER, "bad_worker_reply", None),
        }
    }

    /// Seconds a client should wait before retrying (`Retry-After`), for refusals that a
    /// retry may overcome.
    fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::Overloaded { retry_after_s, .. } => Some(*retry_after_s),
            _ if matches!(
                self.status(),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) =>
            {
                Some(1)
            }
            _ => None,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

/// What a task's models are called in messages.
fn task_models(task: &Task) -> &'static str {
    match task {
        Task::Embed => "these embedding models",
        Task::Rerank => "these rerank models",
    }
}

/// `names` quoted and separated by commas: `` `a`, `b` ``.
fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The body of every error answer (OpenAI's shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    /// What went wrong.
    error: ErrorDetail<'a>,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// A sentence for people, naming the field and the limit where there is one.
    message: String,
    /// `invalid_request_error` (the request's fault), `rate_limit_error` (429) or
    /// `server_error`.
    #[serde(rename = "type")]
    kind: &'a str,
    /// The field at fault (`input`, `input[3]`, `dimensions`, `model`), when there is one.
    param: Option<&'a str>,
    /// A stable code for programs: `invalid_json`, `invalid_utf8`, `invalid_body`,
    /// `invalid_value`, `invalid_request`, `too_many_tokens`, `unsupported_media_type`,
    /// `payload_too_large`, `model_not_found`, `invalid_api_key`, `not_found`,
    /// `method_not_allowed`, `overloaded`, `no_workers`, `bus_unavailable`, `timeout`,
    /// `bad_worker_reply` or `internal_error`.
    code: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code, param) = self.parts();
        if status.is_server_error() {
            tracing::warn!(%status, code, "request failed: {self}");
        } else {
            tracing::debug!(%status, code, "request rejected: {self}");
        }
        let retry_after_s = self.retry_after_s();
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_error_codes_map_to_statuses() {
        let status = |code| ApiError::Upstream(ErrorReply::new(None, code, "x")).status();
        assert_eq!(status(ErrorCode::InvalidRequest), StatusCode::BAD_REQUEST);
        assert_eq!(status(ErrorCode::TooManyTokens), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(ErrorCode::DeadlineExceeded),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            status(ErrorCode::Overloaded),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(ErrorCode::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn an_unknown_model_names_the_models_of_its_task() {
        let error = ApiError::ModelNotFound {
            requested: "other".into(),
            task: Task::Rerank,
            served: vec!["Qwen/Qwen3-Reranker-0.6B".into(), "acme/r".into()],
        };
        assert_eq!(error.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            error.to_string(),
            "model `other` does not exist; this server serves these rerank models: \
             `Qwen/Qwen3-Reranker-0.6B`, `acme/r`"
        );
    }

    #[test]
    fn unauthorized_asks_for_a_bearer_token() {
        for error in [ApiError::MissingApiKey, ApiError::InvalidApiKey] {
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        }
    }

    #[test]
    fn overload_carries_retry_after() {
        let overloaded = ApiError::Overloaded {
            limit: 1,
            queue_limit: 10,
            retry_after_s: 7,
        };
        let response = overloaded.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let response = ApiError::NoWorkers.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::Timeout(1.0).into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
