//! The limits every request is held to before its handler runs: the URI's
//! length (414), the body's size (413) and the time the body takes to arrive
//! (408), and the time to answer (408). Each rejection is an `ApiError`, so
//! it answers JSON. The head's size is checked by hyper (`server.rs`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::ApiError;

#[derive(Clone, Copy)]
pub(super) struct RequestLimits {
    pub max_uri_bytes: usize,
    pub max_body_bytes: usize,
    pub body_timeout_ms: u64,
}

/// Answers 414 to a URI (path and query) over `limits.max_uri_bytes`.
pub(super) async fn check_uri(
    State(limits): State<RequestLimits>,
    request: Request,
    next: Next,
) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if length > limits.max_uri_bytes {
        return ApiError::UriTooLong(limits.max_uri_bytes).into_response();
    }
    next.run(request).await
}

/// Reads the whole body before the handler runs, within
/// `limits.body_timeout_ms` and `limits.max_request_bytes`: a client that
/// announces a body and sends it slowly, or never, is answered 408 and its
/// connection closed, instead of holding it for the whole request timeout.
pub(super) async fn read_body(
    State(limits): State<RequestLimits>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body announced too large is refused before a byte of it is read.
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return ApiError::BodyTooLarge(limits.max_body_bytes).into_response();
    }
    let whole = Limited::new(body, limits.max_body_bytes).collect();
    let timeout = Duration::from_millis(limits.body_timeout_ms);
    let bytes = match tokio::time::timeout(timeout, whole).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return ApiError::BodyTooLarge(limits.max_body_bytes).into_response();
        }
        Ok(Err(e)) => {
            return ApiError::BadBody(format!("the body could not be read: {e}")).into_response();
        }
        Err(_) => return ApiError::BodyTimedOut(limits.body_timeout_ms).into_response(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Answers 408 to a request still unanswered after `limits.request_timeout_ms`.
pub(super) async fn time_limit(
    State(limit_ms): State<u64>,
    request: Request,
    next: Next,
) -> Response {
    let limit = Duration::from_millis(limit_ms);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::TimedOut(limit_ms).into_response(),
    }
}
