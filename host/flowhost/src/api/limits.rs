//! The limits every request is held to before its handler runs: the URI's
//! length (414), the body's size (413) and the time the body takes to arrive
//! (408), and the time to answer (408). Each rejection is an `ApiError`, so
//! it answers JSON. The head's size is checked by hyper (`server.rs`).
//! A body the handler streams (a blob upload, an execute with files) is not
//! read here: it is passed on held to `blobs.max_bytes`, with
//! `limits.body_timeout_ms` between two of its pieces instead of for the whole.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::ApiError;

#[derive(Clone, Copy)]
pub(super) struct RequestLimits {
    pub max_uri_bytes: usize,
    pub max_body_bytes: usize,
    /// The largest body a handler streams (`blobs.max_bytes`).
    pub max_streamed_bytes: u64,
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
    if streamed(&parts) {
        return pass_streamed(limits, parts, body, next).await;
    }
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

/// Whether the handler reads the body of this request as a stream: a blob
/// upload, and an execute or execute-async sent as `multipart/form-data`
/// (its files are stored as blobs).
fn streamed(parts: &Parts) -> bool {
    if parts.method != Method::POST {
        return false;
    }
    match parts
        .extensions
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/api/v1/blobs") => true,
        Some("/api/v1/{flow}/execute" | "/api/v1/{flow}/execute-async") => {
            is_multipart(&parts.headers)
        }
        _ => false,
    }
}

/// Whether the body is `multipart/form-data`.
pub(super) fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// Passes a streamed body on unread, held to `max_streamed_bytes` (a body
/// announced larger is refused before a byte of it is read) and to
/// `body_timeout_ms` between pieces: a large upload may take longer than
/// the timeout in all, but never stall that long.
async fn pass_streamed(limits: RequestLimits, parts: Parts, body: Body, next: Next) -> Response {
    let max = limits.max_streamed_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return ApiError::BlobTooLarge(max).into_response();
    }
    let body = guarded(body, max, limits.body_timeout_ms);
    next.run(Request::from_parts(parts, body)).await
}

/// Why a streamed body ended before its end: what `guarded` puts in the
/// body's error, found again by `body_error`.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyCut {
    #[error("the body is over {0} bytes")]
    TooLarge(u64),
    #[error("no part of the body arrived for {0} ms")]
    Stalled(u64),
}

/// `body` as it arrives, failing with a `BodyCut` once it is over `max`
/// bytes or a piece is awaited longer than `idle_ms`.
fn guarded(body: Body, max: u64, idle_ms: u64) -> Body {
    let idle = Duration::from_millis(idle_ms);
    let start = (body.into_data_stream(), 0u64, false);
    let pieces =
        futures_util::stream::unfold(start, move |(mut data, received, done)| async move {
            if done {
                return None;
            }
            let item: Result<Bytes, axum::BoxError> =
                match tokio::time::timeout(idle, data.next()).await {
                    Err(_) => Err(BodyCut::Stalled(idle_ms).into()),
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => Err(e.into()),
                    Ok(Some(Ok(piece))) if received + piece.len() as u64 > max => {
                        Err(BodyCut::TooLarge(max).into())
                    }
                    Ok(Some(Ok(piece))) => Ok(piece),
                };
            let received = received + item.as_ref().map_or(0, |p| p.len() as u64);
            let done = item.is_err();
            Some((item, (data, received, done)))
        });
    Body::from_stream(pieces)
}

/// The answer to a streamed body that could not be read whole: 413 over
/// `blobs.max_bytes`, 408 stalled, 400 otherwise (the client went away, or
/// sent a malformed body).
pub(super) fn body_error(e: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut cause = Some(e);
    while let Some(c) = cause {
        match c.downcast_ref::<BodyCut>() {
            Some(BodyCut::TooLarge(max)) => return ApiError::BlobTooLarge(*max),
            Some(BodyCut::Stalled(ms)) => return ApiError::BodyTimedOut(*ms),
            None => cause = c.source(),
        }
    }
    ApiError::BadBody(format!("the body could not be read: {e}"))
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
