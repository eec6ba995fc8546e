//! Who may call the API (the configured bearer tokens, compared in constant
//! time; `/metrics` and `/healthz` open unless protected) and the time limit
//! on every request.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Who may call the API: the configured bearer tokens.
#[derive(Clone)]
pub(super) struct Auth {
    pub tokens: Arc<Vec<String>>,
    pub protect_metrics: bool,
    pub protect_health: bool,
}

/// Refuses a request without one of the configured bearer tokens (when any
/// is configured), except `/metrics` and `/healthz` unless they are
/// protected too.
/// Answers 408 to a request still unanswered after `limits.request_timeout_ms`.
pub(super) async fn time_limit(
    State(limit_ms): State<u64>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = std::time::Duration::from_millis(limit_ms);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::TimedOut(limit_ms).into_response(),
    }
}

pub(super) async fn require_token(
    State(auth): State<Auth>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if auth.tokens.is_empty() {
        return next.run(request).await;
    }
    let path = request.uri().path();
    let open = (path == "/metrics" && !auth.protect_metrics)
        || (path == "/healthz" && !auth.protect_health);
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Every token is compared in full, so the time taken does not tell how
    // much of a guess was right.
    let valid = given.is_some_and(|g| {
        auth.tokens.iter().fold(false, |ok, t| {
            ok | constant_time_eq(t.as_bytes(), g.as_bytes())
        })
    });
    if open || valid {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
