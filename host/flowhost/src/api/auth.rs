//! Who may call the API: the configured bearer tokens, compared in constant
//! time (the scheme in any case); `/metrics` and `/healthz` open unless
//! protected.

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
        .and_then(bearer_token);
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

/// The token of an `Authorization: Bearer TOKEN` value. The scheme is
/// case-insensitive and may be followed by several spaces (RFC 9110, 11.4).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_scheme_is_case_insensitive() {
        for value in ["Bearer t1", "bearer t1", "BEARER t1", "bEaReR   t1"] {
            assert_eq!(bearer_token(value), Some("t1"), "{value}");
        }
        for value in ["Basic t1", "Bearer", "Bearer ", "Bearert1", "t1"] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
    }
}
