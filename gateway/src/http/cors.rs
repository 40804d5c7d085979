//! CORS for browser pages on other origins (`[gateway] cors_allowed_origins`): preflights
//! (`OPTIONS` with `Access-Control-Request-Method`) are answered here, before the API-key
//! check (browsers send no `Authorization` on a preflight), and answers to allowed origins
//! carry `Access-Control-Allow-Origin`. Pages of other origins get no CORS header, so the
//! browser keeps the answer from them. Credentials (cookies) are never allowed: the API key
//! travels in the `Authorization` header, which a page sets itself.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The headers a page may send: the API key, the body's type, its own request id and trace
/// context.
const ALLOWED_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
];

/// The answer headers a page may read besides the safelisted ones.
const EXPOSED_HEADERS: [HeaderName; 2] =
    [HeaderName::from_static("x-request-id"), header::RETRY_AFTER];

/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer for `origins` (checked by [`check_origins`]); `None` when empty (no CORS).
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

/// Rejects a `cors_allowed_origins` the layer cannot serve: `*` with other entries, or an
/// entry that is not an origin (`scheme://host[:port]`, no path, no trailing slash).
pub fn check_origins(origins: &[String]) -> anyhow::Result<()> {
    if origins.iter().any(|origin| origin == "*") {
        anyhow::ensure!(
            origins.len() == 1,
            "cors_allowed_origins: `*` allows every origin and stands alone"
        );
        return Ok(());
    }
    for origin in origins {
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let valid = rest.is_some_and(|host| {
            !host.is_empty() && !host.contains('/') && host.chars().all(|c| c.is_ascii_graphic())
        });
        anyhow::ensure!(
            valid,
            "cors_allowed_origins: `{origin}` is not an origin; write scheme://host[:port] \
             (such as https://app.example.com), without a path or trailing slash"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn origins_are_checked() {
        assert!(check_origins(&[]).is_ok());
        assert!(check_origins(&origins(&["*"])).is_ok());
        assert!(check_origins(&origins(&["https://a.example", "http://localhost:3000"])).is_ok());
        assert!(check_origins(&origins(&["*", "https://a.example"])).is_err());
        assert!(check_origins(&origins(&["https://a.example/"])).is_err());
        assert!(check_origins(&origins(&["a.example"])).is_err());
        assert!(check_origins(&origins(&["https://"])).is_err());
    }

    #[test]
    fn no_origins_no_layer() {
        assert!(layer(&[]).is_none());
        assert!(layer(&origins(&["https://a.example"])).is_some());
    }
}
