//! The routes of one run: execute (sync), execute-async, status, and the
//! controls resume, retry and cancel. Handlers turn HTTP into runner calls
//! and the state they return into views. An execute body is JSON, or a
//! `multipart/form-data` form whose files become blobs (`forms`).

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use flowhost_core::flow::FlowDefinition;
use flowhost_core::runner::{FlowContext, FlowRunner, RunError};
use flowhost_core::state::{FlowId, FlowState};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::forms::{self, ExecuteForm};
use super::limits::is_multipart;
use super::views::{FlowRunView, Submitted, flow_view};
use super::{ApiError, AppState, ErrorBody, PathParams};
use crate::app::App;

/// The body of `execute`: the flow's inputs, and optionally its id and
/// metadata to record with it.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecuteRequest {
    /// The flow's inputs, by name.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: Map<String, Value>,
    /// A UUID for the run; one is generated when absent.
    #[serde(default)]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub flow_id: Option<String>,
    /// Recorded with the run.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// The flow served under `name`: 404 for none, 503 for one that waits for
/// a plugin still loading.
pub(super) fn flow_def(app: &App, name: &str) -> Result<Arc<FlowDefinition>, ApiError> {
    let flows = app.flows.snapshot();
    if let Some(def) = flows.get(name) {
        return Ok(def.clone());
    }
    if let Some(waiting) = flows.waiting().iter().find(|w| w.name == name) {
        return Err(ApiError::FlowLoading {
            name: name.to_owned(),
            plugins: waiting.plugins.clone(),
        });
    }
    Err(ApiError::UnknownFlow {
        name: name.to_owned(),
        known: flows.flows().map(|f| f.name.clone()).collect(),
    })
}

/// The stored run `raw_id` of flow `flow`, or 404.
async fn stored_run(
    app: &App,
    flow: &str,
    raw_id: &str,
) -> Result<(Arc<FlowDefinition>, FlowState), ApiError> {
    let def = flow_def(app, flow)?;
    let id = raw_id
        .parse()
        .map_err(|_| ApiError::BadFlowId(raw_id.to_owned()))?;
    let not_found = || ApiError::RunNotFound {
        flow: flow.to_owned(),
        id: raw_id.to_owned(),
    };
    let state = app.store.get_flow(id).await?.ok_or_else(not_found)?;
    if state.flow_name != def.name {
        return Err(not_found());
    }
    Ok((def, state))
}

/// Fills the flow and step names that the runner does not know into errors.
fn in_flow(flow: &str, raw_id: &str, e: RunError) -> ApiError {
    match ApiError::from(e) {
        ApiError::RunNotFound { .. } => ApiError::RunNotFound {
            flow: flow.to_owned(),
            id: raw_id.to_owned(),
        },
        ApiError::UnknownStep { step, .. } => ApiError::UnknownStep {
            flow: flow.to_owned(),
            step,
        },
        other => other,
    }
}

/// Run a flow and wait for its end.
///
/// The body is read as JSON whatever its Content-Type, so a plain `curl -d`
/// works; or it is a `multipart/form-data` form, each file part stored as a
/// blob whose reference is the input named by the part. A plugin failure
/// gives a `failed` run, not an HTTP error.
#[utoipa::path(
    post,
    path = "/api/v1/{flow}/execute",
    params(
        ("flow" = String, Path, description = "The flow's name", example = "document_analysis"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key gives the same run"),
    ),
    request_body(content(
        (ExecuteRequest = "application/json"),
        (ExecuteForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "The run ended: completed, failed, paused or cancelled", body = FlowRunView),
        (status = 400, description = "Malformed body, flow id or Idempotency-Key", body = ErrorBody),
        (status = 404, description = "Unknown flow", body = ErrorBody),
        (status = 409, description = "flow_id already used", body = ErrorBody),
        (status = 422, description = "Inputs that do not match the flow's declaration", body = ErrorBody),
        (status = 503, description = "Shutting down, the state store is unavailable, or the flow waits for a plugin still loading", body = ErrorBody),
    )
)]
pub(super) async fn execute(
    State(app): AppState,
    PathParams(flow): PathParams<String>,
    request: Request,
) -> Result<Json<FlowRunView>, ApiError> {
    let def = flow_def(&app, &flow)?;
    let (inputs, ctx) = execute_request(&app, request).await?;
    let state = app.runner.execute(def.clone(), inputs, ctx).await?;
    Ok(Json(flow_view(&def, &state, false)))
}

/// The inputs and context of an execute request: its body, JSON or a form,
/// and its `Idempotency-Key` header, checked first so that a refused request
/// stores none of its files. The flow was found before, for the same reason.
async fn execute_request(
    app: &App,
    request: Request,
) -> Result<(Map<String, Value>, FlowContext), ApiError> {
    let key = idempotency_key(request.headers())?;
    let body = if is_multipart(request.headers()) {
        forms::execute_form(app, request).await?
    } else {
        let bytes = Bytes::from_request(request, &())
            .await
            .map_err(|e| ApiError::BadBody(e.body_text()))?;
        json_body(&bytes)?
    };
    let mut ctx = FlowContext::new();
    if let Some(raw) = &body.flow_id {
        ctx.flow_id = raw.parse().map_err(|_| ApiError::BadFlowId(raw.clone()))?;
    }
    ctx.metadata = body.metadata;
    ctx.idempotency_key = key;
    Ok((body.inputs, ctx))
}

/// A JSON execute body, read as JSON whatever its Content-Type, so that a
/// plain `curl -d` works.
fn json_body(body: &Bytes) -> Result<ExecuteRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ExecuteRequest::default());
    }
    let example = "send a JSON object such as {\"inputs\": {\"text\": \"...\"}}";
    // Read as an object first: serde would take a JSON array for the
    // struct, field by field in order.
    let object: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        let found = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(_)) => "an array".to_owned(),
            Ok(other) => format!("{other}"),
            Err(_) => return ApiError::BadBody(format!("{e}; {example}")),
        };
        ApiError::BadBody(format!("expected a JSON object, found {found}; {example}"))
    })?;
    serde_json::from_value(Value::Object(object))
        .map_err(|e| ApiError::BadBody(format!("{e}; {example}")))
}

/// The `Idempotency-Key` header, if any.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(|| {
            ApiError::BadBody("Idempotency-Key must be 1 to 256 visible ASCII characters".into())
        })?;
    Ok(Some(key.to_owned()))
}

/// Start a run in the background; poll `status_url` for its progress.
///
/// Refused with 503 while a configured Redis is unreachable (the run would
/// not be durable) and with 429 and `Retry-After` while the host has
/// `submit.max_in_flight` runs in flight. The same `Idempotency-Key` within
/// `submit.idempotency_ttl_seconds` answers with the same run.
#[utoipa::path(
    post,
    path = "/api/v1/{flow}/execute-async",
    params(
        ("flow" = String, Path, description = "The flow's name", example = "document_analysis"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key gives the same run"),
    ),
    request_body(content(
        (ExecuteRequest = "application/json"),
        (ExecuteForm = "multipart/form-data"),
    )),
    responses(
        (status = 202, description = "Accepted: the run is recorded and starts in the background", body = Submitted),
        (status = 400, description = "Malformed body, flow id or Idempotency-Key", body = ErrorBody),
        (status = 404, description = "Unknown flow", body = ErrorBody),
        (status = 409, description = "flow_id already used", body = ErrorBody),
        (status = 422, description = "Inputs that do not match the flow's declaration", body = ErrorBody),
        (status = 429, description = "Too many runs in flight; see Retry-After", body = ErrorBody),
        (status = 503, description = "Redis unreachable, shutting down, or the flow waits for a plugin still loading", body = ErrorBody),
    )
)]
pub(super) async fn execute_async(
    State(app): AppState,
    PathParams(flow): PathParams<String>,
    request: Request,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let def = flow_def(&app, &flow)?;
    let (inputs, ctx) = execute_request(&app, request).await?;
    let id = app.runner.submit(def.clone(), inputs, ctx).await?;
    let status = match app.store.get_flow(id).await? {
        Some(state) => state.status.to_string(),
        None => "pending".to_owned(),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            flow_id: id.to_string(),
            status,
            status_url: format!("/api/v1/{}/status/{id}", def.name),
        }),
    ))
}

/// A run's state, with every step's inputs and outputs.
#[utoipa::path(
    get,
    path = "/api/v1/{flow}/status/{flow_id}",
    params(("flow" = String, Path, example = "document_analysis"), ("flow_id" = uuid::Uuid, Path, description = "The run's UUID")),
    responses(
        (status = 200, body = FlowRunView),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 404, description = "Unknown flow or run", body = ErrorBody),
        (status = 503, description = "The state store is unavailable, or the flow waits for a plugin still loading", body = ErrorBody),
    )
)]
pub(super) async fn status(
    State(app): AppState,
    PathParams((flow, raw_id)): PathParams<(String, String)>,
) -> Result<Json<FlowRunView>, ApiError> {
    let (def, state) = stored_run(&app, &flow, &raw_id).await?;
    Ok(Json(flow_view(&def, &state, true)))
}

/// Continue a failed, paused or interrupted run from the steps that did not
/// complete, and wait for its end.
#[utoipa::path(
    post,
    path = "/api/v1/{flow}/resume/{flow_id}",
    params(("flow" = String, Path, example = "document_analysis"), ("flow_id" = uuid::Uuid, Path, description = "The run's UUID")),
    responses(
        (status = 200, body = FlowRunView),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 404, description = "Unknown flow or run", body = ErrorBody),
        (status = 409, description = "Completed, cancelled, or running here now", body = ErrorBody),
        (status = 503, description = "Shutting down, the state store is unavailable, or the flow waits for a plugin still loading", body = ErrorBody),
    )
)]
pub(super) async fn resume(
    State(app): AppState,
    PathParams((flow, raw_id)): PathParams<(String, String)>,
) -> Result<Json<FlowRunView>, ApiError> {
    control(&app, &flow, &raw_id, |r, id| async move {
        r.resume_flow(id).await
    })
    .await
}

/// Reset one failed step and continue the run from it.
#[utoipa::path(
    post,
    path = "/api/v1/{flow}/retry/{flow_id}/{step}",
    params(
        ("flow" = String, Path, example = "document_analysis"),
        ("flow_id" = uuid::Uuid, Path, description = "The run's UUID"),
        ("step" = String, Path),
    ),
    responses(
        (status = 200, body = FlowRunView),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 404, description = "Unknown flow, run or step", body = ErrorBody),
        (status = 409, description = "The step has not failed, or the run is running here now", body = ErrorBody),
        (status = 503, description = "Shutting down, the state store is unavailable, or the flow waits for a plugin still loading", body = ErrorBody),
    )
)]
pub(super) async fn retry(
    State(app): AppState,
    PathParams((flow, raw_id, step)): PathParams<(String, String, String)>,
) -> Result<Json<FlowRunView>, ApiError> {
    control(&app, &flow, &raw_id, |r, id| async move {
        r.retry_step(id, &step).await
    })
    .await
}

/// Cancel a run: running steps are interrupted, no further step starts.
/// Answers with the state the run was left in.
#[utoipa::path(
    delete,
    path = "/api/v1/{flow}/flows/{flow_id}",
    params(("flow" = String, Path, example = "document_analysis"), ("flow_id" = uuid::Uuid, Path, description = "The run's UUID")),
    responses(
        (status = 200, body = FlowRunView),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 404, description = "Unknown flow or run", body = ErrorBody),
        (status = 409, description = "The run completed already", body = ErrorBody),
        (status = 503, description = "The state store is unavailable, or the flow waits for a plugin still loading", body = ErrorBody),
    )
)]
pub(super) async fn cancel(
    State(app): AppState,
    PathParams((flow, raw_id)): PathParams<(String, String)>,
) -> Result<Json<FlowRunView>, ApiError> {
    control(&app, &flow, &raw_id, |r, id| async move {
        r.cancel_flow(id).await
    })
    .await
}

/// A control of one stored run (resume, retry, cancel): finds the run in
/// `flow`, applies `op` to it, and answers the state it was left in.
async fn control<F>(
    app: &App,
    flow: &str,
    raw_id: &str,
    op: impl FnOnce(FlowRunner, FlowId) -> F,
) -> Result<Json<FlowRunView>, ApiError>
where
    F: Future<Output = Result<FlowState, RunError>>,
{
    let (def, state) = stored_run(app, flow, raw_id).await?;
    let state = op(app.runner.clone(), state.flow_id)
        .await
        .map_err(|e| in_flow(flow, raw_id, e))?;
    Ok(Json(flow_view(&def, &state, false)))
}
