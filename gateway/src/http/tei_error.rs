//! Errors in text-embeddings-inference's shape, `{"error": "...", "error_type": "..."}`,
//! for every TEI-shaped route (`/embed`, `/info`, `/rerank`, `/tokenize`, `/decode`): a
//! handler returns [`TeiError`] and reads its body with [`TeiJson`].
//!
//! The status is the gateway's own for the failure (the same as on the OpenAI routes, with
//! the same `Retry-After` and `WWW-Authenticate` headers); only the body differs. Routes
//! documented with the OpenAPI tag [`TEI_TAG`] get [`TeiErrorBody`] as their error schema.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::wire::ErrorCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::extract::JsonBody;
use super::types::RequestBody;

/// The OpenAPI tag of the TEI-shaped routes (their refusals are documented with
/// [`TeiErrorBody`]).
pub const TEI_TAG: &str = "TEI";

/// A failure answered in TEI's shape.
#[derive(Debug)]
pub struct TeiError(pub ApiError);

impl From<ApiError> for TeiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

/// TEI's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// `Validation` (the request's fault), `Overloaded` (429, or the workers are full),
    /// `Unhealthy` (no worker, or the message bus is down) or `Backend` (a worker failed,
    /// timed out or answered wrongly).
    pub error_type: TeiErrorType,
}

/// TEI's error kinds (the ones this gateway answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum TeiErrorType {
    /// The request is invalid (any 4xx but 429).
    Validation,
    /// Too much work in hand.
    Overloaded,
    /// Nothing can serve the request now.
    Unhealthy,
    /// A worker failed.
    Backend,
}

/// The TEI kind of `error`.
pub fn error_type(error: &ApiError) -> TeiErrorType {
    match error {
        ApiError::Overloaded { .. } => TeiErrorType::Overloaded,
        ApiError::Upstream(reply) if reply.error.code == ErrorCode::Overloaded => {
            TeiErrorType::Overloaded
        }
        ApiError::NoWorkers | ApiError::NoRerankWorkers | ApiError::BusUnavailable(_) => {
            TeiErrorType::Unhealthy
        }
        other if other.status().is_client_error() => TeiErrorType::Validation,
        _ => TeiErrorType::Backend,
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        let body = TeiErrorBody {
            error: self.0.to_string(),
            error_type: error_type(&self.0),
        };
        reshape(self.0, &body)
    }
}

/// `error`'s answer (status, headers, logging: [`ApiError`]'s) with `body` instead of the
/// OpenAI-style one; shared by the other API shapes.
pub fn reshape(error: ApiError, body: &impl Serialize) -> Response {
    let (parts, _) = error.into_response().into_parts();
    match serde_json::to_vec(body) {
        Ok(bytes) => Response::from_parts(parts, Body::from(bytes)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A JSON request body decoded as `T` whose refusals answer in TEI's shape.
#[derive(Debug)]
pub struct TeiJson<T>(pub T);

impl<T: RequestBody> FromRequest<AppState> for TeiJson<T> {
    type Rejection = TeiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, TeiError> {
        let JsonBody(body) = JsonBody::<T>::from_request(req, state).await?;
        Ok(Self(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::ErrorReply;

    #[test]
    fn kinds_follow_the_failure() {
        let overloaded = ApiError::Overloaded {
            limit: 1,
            queue_limit: 0,
            retry_after_s: 1,
        };
        assert_eq!(error_type(&overloaded), TeiErrorType::Overloaded);
        assert_eq!(
            error_type(&ApiError::field("inputs", "x")),
            TeiErrorType::Validation
        );
        assert_eq!(error_type(&ApiError::NoWorkers), TeiErrorType::Unhealthy);
        assert_eq!(error_type(&ApiError::Timeout(1.0)), TeiErrorType::Backend);
        let internal = ApiError::Upstream(ErrorReply::new(None, ErrorCode::Internal, "x"));
        assert_eq!(error_type(&internal), TeiErrorType::Backend);
    }

    #[tokio::test]
    async fn the_body_is_tei_shaped_and_the_headers_stay() {
        let response = TeiError(ApiError::NoWorkers).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error_type"], "Unhealthy");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no tokenizer worker")
        );
    }
}
