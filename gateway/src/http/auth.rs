//! API-key authentication: when keys are configured, every request but a `GET` of
//! [`routes::OPEN_PATHS`] (`/health`, `/openapi.json`, `/docs`, at the root and under
//! `root_path`) must carry `Authorization: Bearer <key>`; others get 401
//! with `WWW-Authenticate: Bearer` (see [`ApiError::MissingApiKey`]). Keys are never
//! logged: failures name only their kind.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{AppState, routes};

/// Middleware: lets the request through when authentication is off, the route is open, or
/// the bearer token is a configured key; answers 401 otherwise.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.api_keys.is_empty() || is_open(&state, &request) {
        return next.run(request).await;
    }
    match bearer(request.headers()) {
        None => ApiError::MissingApiKey.into_response(),
        Some(key) if state.api_keys.verify(key) => next.run(request).await,
        Some(_) => ApiError::InvalidApiKey.into_response(),
    }
}

/// Whether the request needs no key: a `GET` of one of [`routes::OPEN_PATHS`] (health
/// probes, the API's description).
fn is_open(state: &AppState, request: &Request) -> bool {
    (request.method() == Method::GET || request.method() == Method::HEAD)
        && routes::is_open(request.uri().path(), &state.config.route_prefix())
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if
/// there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("valid header"),
        );
        headers
    }

    #[test]
    fn reads_bearer_tokens() {
        assert_eq!(bearer(&with_authorization("Bearer sk-1")), Some("sk-1"));
        assert_eq!(bearer(&with_authorization("bearer   sk-2 ")), Some("sk-2"));
        assert_eq!(bearer(&with_authorization("Basic dXNlcjpwdw==")), None);
        assert_eq!(bearer(&with_authorization("Bearer ")), None);
        assert_eq!(bearer(&with_authorization("sk-1")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
