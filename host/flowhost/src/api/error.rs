//! `ApiError`: every way a request can fail, mapped to an HTTP status in one
//! exhaustive match. 4xx bodies say what to fix; 5xx bodies say "internal
//! error" (or that the store is unavailable) and the cause goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use flowhost_core::blob::BlobError;
use flowhost_core::runner::RunError;
use flowhost_core::state::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no flow named `{name}`; loaded flows: [{}]", known.join(", "))]
    UnknownFlow { name: String, known: Vec<String> },
    #[error("flow `{name}` is not served yet: it waits for plugin(s) [{}] still loading; retry shortly", plugins.join(", "))]
    FlowLoading { name: String, plugins: Vec<String> },
    #[error("no run {id} of flow `{flow}`")]
    RunNotFound { flow: String, id: String },
    #[error("`{0}` is not a flow id: expected a UUID such as 0193a7c4-5e1b-7cc0-9f3a-2d4e5f607182")]
    BadFlowId(String),
    #[error("request body is not valid: {0}")]
    BadBody(String),
    #[error("{0}; percent-encode names and ids as UTF-8")]
    BadPath(String),
    #[error("the request is not valid HTTP/1.1: check the request line and the header fields")]
    BadRequest,
    #[error("{method} is not allowed on {path}: the Allow header lists the methods it takes")]
    MethodNotAllowed { method: String, path: String },
    #[error("the request body is over {0} bytes (limits.max_request_bytes): send a smaller body")]
    BodyTooLarge(usize),
    #[error(
        "the request body did not arrive within {0} ms (limits.body_timeout_ms): send the \
         whole body at once, with a Content-Length that matches it"
    )]
    BodyTimedOut(u64),
    #[error(
        "the body is over {0} bytes (blobs.max_bytes): store smaller blobs, or raise the limit"
    )]
    BlobTooLarge(u64),
    #[error("{0}")]
    BadBlobId(String),
    #[error("no blob {0}; upload one with POST /api/v1/blobs")]
    BlobNotFound(String),
    #[error(
        "blob {id} is held by [{}]: it can be removed once they are gone",
        holders.join(", ")
    )]
    BlobHeld { id: String, holders: Vec<String> },
    #[error("the range is outside the blob's {size} bytes: ask for bytes=0-{}", size.saturating_sub(1))]
    RangeNotSatisfiable { size: u64 },
    #[error("the URI is over {0} bytes (limits.max_uri_bytes): send long values in the body")]
    UriTooLong(usize),
    #[error(
        "the request line and header fields are over {bytes} bytes \
         (limits.max_header_bytes) or {fields} fields: send fewer or shorter header fields \
         and a shorter URI"
    )]
    HeadersTooLarge { bytes: usize, fields: usize },
    #[error("invalid inputs")]
    InvalidInputs(Vec<String>),
    #[error("{0}")]
    Conflict(String),
    #[error("no step `{step}` in flow `{flow}`")]
    UnknownStep { flow: String, step: String },
    #[error("flowhost is shutting down; retry on another host or later")]
    ShuttingDown,
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    NotDurable(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("missing or unknown bearer token: send Authorization: Bearer TOKEN")]
    Unauthorized,
    #[error(
        "the request took longer than {0} ms; a flow it started goes on running \
         (list it with GET /api/v1/FLOW/active-flows), or use execute-async"
    )]
    TimedOut(u64),
    #[error("state store unavailable")]
    Unavailable(#[source] StoreError),
    #[error("blob store unavailable")]
    BlobsUnavailable(#[source] BlobError),
    #[error("cache unavailable")]
    CacheUnavailable(#[source] flowhost_core::cache::CacheError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::UnknownFlow { .. } => (StatusCode::NOT_FOUND, "unknown_flow"),
            ApiError::FlowLoading { .. } => (StatusCode::SERVICE_UNAVAILABLE, "flow_loading"),
            ApiError::RunNotFound { .. } => (StatusCode::NOT_FOUND, "run_not_found"),
            ApiError::BadFlowId(_) => (StatusCode::BAD_REQUEST, "bad_flow_id"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::BadPath(_) => (StatusCode::BAD_REQUEST, "bad_path"),
            ApiError::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BodyTimedOut(_) => (StatusCode::REQUEST_TIMEOUT, "body_timed_out"),
            ApiError::BlobTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "blob_too_large"),
            ApiError::BadBlobId(_) => (StatusCode::BAD_REQUEST, "bad_blob_id"),
            ApiError::BlobNotFound(_) => (StatusCode::NOT_FOUND, "blob_not_found"),
            ApiError::BlobHeld { .. } => (StatusCode::CONFLICT, "blob_held"),
            ApiError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ApiError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ApiError::InvalidInputs(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_inputs"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::UnknownStep { .. } => (StatusCode::NOT_FOUND, "unknown_step"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            ApiError::NotDurable(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_durable"),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::TimedOut(_) => (StatusCode::REQUEST_TIMEOUT, "timed_out"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::BlobsUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::CacheUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable(e),
            StoreError::AlreadyExists(id) => {
                ApiError::Conflict(format!("a flow with id {id} exists already"))
            }
            StoreError::NotFound(id) => ApiError::RunNotFound {
                flow: String::new(),
                id: id.to_string(),
            },
            StoreError::Corrupt { .. } => ApiError::Internal(Box::new(e)),
            StoreError::Fenced(id) => ApiError::Conflict(format!(
                "flow {id} is now run by another host; this host's change was not applied"
            )),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound(id) => ApiError::BlobNotFound(id.to_string()),
            BlobError::Unavailable(_) => ApiError::BlobsUnavailable(e),
            BlobError::Corrupt { .. } => ApiError::Internal(Box::new(e)),
        }
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::InvalidInputs(problems) => ApiError::InvalidInputs(problems),
            RunError::DuplicateId(id) => ApiError::Conflict(format!(
                "a flow with id {id} exists already: omit flow_id or pick a new one"
            )),
            RunError::NotFound(id) => ApiError::RunNotFound {
                flow: String::new(),
                id: id.to_string(),
            },
            RunError::Conflict(reason) => ApiError::Conflict(reason),
            RunError::UnknownStep(step) => ApiError::UnknownStep {
                flow: String::new(),
                step,
            },
            RunError::ShuttingDown => ApiError::ShuttingDown,
            e @ RunError::Busy {
                retry_after_secs, ..
            } => ApiError::Busy {
                message: e.to_string(),
                retry_after_secs,
            },
            RunError::NotDurable(reason) => ApiError::NotDurable(reason),
            RunError::Internal(reason) => ApiError::Internal(reason.into()),
            RunError::Store(e) => e.into(),
        }
    }
}

/// The body of every error response.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong and, for a 4xx, what to fix.
    pub error: String,
    /// A stable name of the error, such as `invalid_inputs`.
    pub code: String,
    /// One line per problem, for `invalid_inputs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<String>>,
}

impl ApiError {
    /// The status and the JSON body this error answers.
    fn answer(&self) -> (StatusCode, ErrorBody) {
        let (status, code) = self.parts();
        if status.is_server_error() {
            let cause = std::error::Error::source(self)
                .map(|s| format!("{s:#}"))
                .unwrap_or_default();
            tracing::error!(code, %cause, "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            code: code.to_owned(),
            details: match self {
                ApiError::InvalidInputs(problems) => Some(problems.clone()),
                _ => None,
            },
        };
        (status, body)
    }

    /// The whole HTTP/1.1 response, bytes ready for the socket, for answers
    /// written below axum (in place of hyper's own empty ones); the
    /// connection closes after it.
    pub(super) fn raw_response(&self) -> Vec<u8> {
        let (status, body) = self.answer();
        let json = serde_json::to_string(&body).unwrap_or_default();
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{json}",
            json.len()
        )
        .into_bytes()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.answer();
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RangeNotSatisfiable { size } = &self
            && let Ok(range) = axum::http::HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response
                .headers_mut()
                .insert(axum::http::header::CONTENT_RANGE, range);
        }
        let retry_after = match &self {
            ApiError::Busy {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::FlowLoading { .. } => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}
