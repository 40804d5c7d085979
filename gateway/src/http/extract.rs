//! Reading a JSON request body: content type and size here, then the typed decoding of
//! [`super::types::decode`] within the configured limits.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};

use super::AppState;
use super::error::ApiError;
use super::types::decode::ModelName;
use super::types::{Limits, RequestBody, decode};

/// The body of a JSON request, decoded as a `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: RequestBody> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        check_content_type(req.headers().get(header::CONTENT_TYPE))?;
        let limit = state.config.max_body_bytes;
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::BodyRead(rejection.body_text())
            }
        })?;
        let limits = Limits::for_bodies(&state.config);
        let error = match decode::<T>(&body, limits) {
            Ok(request) => return Ok(Self(request)),
            Err(error) => error,
        };
        // A model not served answers 404 whatever else is wrong (the model is checked
        // first): `model` alone is read again, on this error path only.
        let (ApiError::InvalidField { .. }, Some(task)) = (&error, T::model_task()) else {
            return Err(error);
        };
        match decode::<ModelName>(&body, limits) {
            Ok(ModelName(Some(requested))) => {
                match state.models.resolve(task, Some(&requested)).await {
                    Err(not_found @ ApiError::ModelNotFound { .. }) => Err(not_found),
                    _ => Err(error),
                }
            }
            _ => Err(error),
        }
    }
}

fn check_content_type(value: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Err(ApiError::UnsupportedMediaType("no Content-Type".into()));
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!("`{text}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_must_be_json() {
        let value = |s: &'static str| header::HeaderValue::from_static(s);
        assert!(check_content_type(Some(&value("application/json; charset=utf-8"))).is_ok());
        assert!(check_content_type(Some(&value("application/vnd.api+json"))).is_ok());
        assert!(check_content_type(Some(&value("text/plain"))).is_err());
        assert!(check_content_type(None).is_err());
    }
}
