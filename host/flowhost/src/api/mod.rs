//! The HTTP API (axum): flow routes, plugin and flow listings, cache
//! invalidation, analytics, health and Prometheus metrics, and the OpenAPI
//! document of them all. Every route is registered through
//! `utoipa_axum::routes!`, so the document cannot miss one. Handlers translate
//! HTTP to `App` calls and back; they know no Redis key and no wasmtime type.

mod error;

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};

use crate::app::App;
use crate::cache::Invalidate;
use crate::flow::FlowDefinition;
use crate::runner::{FlowContext, RunError};
use crate::state::{FlowState, ListFilter, RedisHealth, StateStore};

type AppState = State<Arc<App>>;

#[derive(OpenApi)]
#[openapi(info(
    title = "flowhost",
    description = "Runs flows of sandboxed WebAssembly executor steps, with state in Redis."
))]
struct ApiDoc;

/// The router and the OpenAPI document of every route in it.
pub fn router_and_openapi(app: Arc<App>) -> (Router, utoipa::openapi::OpenApi) {
    let body_limit = app.config.limits.max_request_bytes;
    let request_timeout = app.config.limits.request_timeout_ms;
    let auth = Auth {
        tokens: Arc::new(app.config.auth.tokens.clone()),
        protect_metrics: app.config.auth.protect_metrics,
        protect_health: app.config.auth.protect_health,
    };
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(execute))
        .routes(routes!(execute_async))
        .routes(routes!(active_flows))
        .routes(routes!(status))
        .routes(routes!(resume))
        .routes(routes!(retry))
        .routes(routes!(cancel))
        .routes(routes!(analytics))
        .routes(routes!(list_flows))
        .routes(routes!(list_plugins))
        .routes(routes!(invalidate_cache))
        .routes(routes!(prune_flows))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .with_state(app)
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    let router = router
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            time_limit,
        ))
        .layer(Extension(Arc::new(doc.clone())))
        .layer(axum::middleware::from_fn_with_state(auth, require_token));
    (router, doc)
}

/// Who may call the API: the configured bearer tokens.
#[derive(Clone)]
struct Auth {
    tokens: Arc<Vec<String>>,
    protect_metrics: bool,
    protect_health: bool,
}

/// Refuses a request without one of the configured bearer tokens (when any
/// is configured), except `/metrics` and `/healthz` unless they are
/// protected too.
/// Answers 408 to a request still unanswered after `limits.request_timeout_ms`.
async fn time_limit(
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

async fn require_token(
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

pub fn router(app: Arc<App>) -> Router {
    router_and_openapi(app).0
}

/// Serves `app` on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small JSON answers should leave at once, not wait on Nagle's algorithm.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The body of `execute`: the flow's inputs, and optionally its id and
/// metadata to record with it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ExecuteRequest {
    /// The flow's inputs, by name.
    #[serde(default)]
    #[schema(value_type = Object)]
    inputs: Map<String, Value>,
    /// A UUID for the run; one is generated when absent.
    #[serde(default)]
    flow_id: Option<String>,
    /// Recorded with the run.
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
}

/// One step of a run.
#[derive(Serialize, ToSchema)]
struct StepView {
    step_name: String,
    plugin: String,
    /// pending, running, completed, failed or cancelled.
    status: String,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    /// Seconds.
    execution_time: Option<f64>,
    attempt: u32,
    /// Served from the result cache, without running the plugin.
    cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_key: Option<String>,
    error: Option<String>,
    /// The kind of the error: timed_out, out_of_memory, stack_exhausted,
    /// panicked, output_too_large, invalid_output, capability_denied, failed…
    #[serde(skip_serializing_if = "Option::is_none")]
    error_kind: Option<String>,
    /// What the plugin printed (status route only; bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    /// The step's resolved input (status route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<Value>,
    /// The step's output (status route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<Value>,
}

/// A flow run.
#[derive(Serialize, ToSchema)]
struct FlowRunView {
    flow_id: String,
    flow_name: String,
    /// pending, running, completed, failed, paused or cancelled.
    status: String,
    /// Answered from the whole-flow result cache.
    cached: bool,
    outputs: Option<Value>,
    error: Option<String>,
    current_step: Option<String>,
    started_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    /// Seconds from start to finish.
    total_execution_time: Option<f64>,
    /// In definition order.
    steps: Vec<StepView>,
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
    /// The run's inputs (status route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<Value>,
}

fn flow_def(app: &App, name: &str) -> Result<Arc<FlowDefinition>, ApiError> {
    app.flows
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::UnknownFlow {
            name: name.to_owned(),
            known: app.flows.flows().map(|f| f.name.clone()).collect(),
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

/// A run as the API shows it: steps in definition order, with their inputs
/// and outputs when `with_step_data`.
fn flow_view(def: &FlowDefinition, state: &FlowState, with_step_data: bool) -> FlowRunView {
    let steps = def
        .steps
        .iter()
        .filter_map(|s| {
            let st = state.steps.get(&s.name)?;
            Some(StepView {
                step_name: st.step_name.clone(),
                plugin: s.plugin.clone(),
                status: st.status.to_string(),
                started_at: st.started_at,
                completed_at: st.completed_at,
                execution_time: st.execution_time,
                attempt: st.attempt,
                cached: st.cached,
                cache_key: st.cache_key.clone(),
                error: st.error.clone(),
                error_kind: st.error_kind.clone(),
                stdout: st.stdout.clone().filter(|_| with_step_data),
                stderr: st.stderr.clone().filter(|_| with_step_data),
                inputs: st.inputs.clone().filter(|_| with_step_data),
                outputs: st.outputs.clone().filter(|_| with_step_data),
            })
        })
        .collect();
    FlowRunView {
        flow_id: state.flow_id.to_string(),
        flow_name: state.flow_name.clone(),
        status: state.status.to_string(),
        cached: state.metadata.get("flow_cache").is_some_and(|v| v == "hit"),
        outputs: state.outputs.clone(),
        error: state.error.clone(),
        current_step: state.current_step.clone(),
        started_at: state.started_at,
        completed_at: state.completed_at,
        total_execution_time: state.total_execution_time,
        steps,
        metadata: state.metadata.clone(),
        inputs: with_step_data.then(|| state.inputs.clone()),
    }
}

/// Run a flow and wait for its end.
///
/// The body is read as JSON whatever its Content-Type, so a plain `curl -d`
/// works. A plugin failure gives a `failed` run, not an HTTP error.
#[utoipa::path(
    post,
    path = "/api/v1/{flow}/execute",
    params(
        ("flow" = String, Path, description = "The flow's name"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key gives the same run"),
    ),
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "The run ended: completed, failed, paused or cancelled", body = FlowRunView),
        (status = 400, description = "Malformed body or flow id", body = ErrorBody),
        (status = 404, description = "Unknown flow", body = ErrorBody),
        (status = 409, description = "flow_id already used", body = ErrorBody),
        (status = 422, description = "Inputs that do not match the flow's declaration", body = ErrorBody),
        (status = 503, description = "Shutting down, or the state store is unavailable", body = ErrorBody),
    )
)]
async fn execute(
    State(app): AppState,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<FlowRunView>, ApiError> {
    let def = flow_def(&app, &flow)?;
    let (inputs, ctx) = execute_request(&body, &headers)?;
    let state = app.runner.execute(def.clone(), inputs, ctx).await?;
    Ok(Json(flow_view(&def, &state, false)))
}

/// The inputs and context of an execute request: its JSON body (read as JSON
/// whatever its Content-Type, so a plain `curl -d` works) and its
/// `Idempotency-Key` header.
fn execute_request(
    body: &Bytes,
    headers: &HeaderMap,
) -> Result<(Map<String, Value>, FlowContext), ApiError> {
    let request: ExecuteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ExecuteRequest {
            inputs: Map::new(),
            flow_id: None,
            metadata: Map::new(),
        }
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::BadBody(format!(
                "{e}; send a JSON object such as {{\"inputs\": {{\"text\": \"...\"}}}}"
            ))
        })?
    };
    let mut ctx = FlowContext::new();
    if let Some(raw) = &request.flow_id {
        ctx.flow_id = raw.parse().map_err(|_| ApiError::BadFlowId(raw.clone()))?;
    }
    ctx.metadata = request.metadata;
    if let Some(key) = headers.get("idempotency-key") {
        let key = key
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or_else(|| {
                ApiError::BadBody(
                    "Idempotency-Key must be 1 to 256 visible ASCII characters".into(),
                )
            })?;
        ctx.idempotency_key = Some(key.to_owned());
    }
    Ok((request.inputs, ctx))
}

/// What `execute-async` answers.
#[derive(Serialize, ToSchema)]
struct Submitted {
    flow_id: String,
    /// `pending` for a new run; the run's current status for a replayed
    /// idempotency key.
    status: String,
    /// Where to follow the run.
    status_url: String,
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
        ("flow" = String, Path, description = "The flow's name"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key gives the same run"),
    ),
    request_body = ExecuteRequest,
    responses(
        (status = 202, description = "Accepted: the run is recorded and starts in the background", body = Submitted),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "Too many runs in flight; see Retry-After", body = ErrorBody),
        (status = 503, description = "Redis unreachable, or shutting down", body = ErrorBody),
    )
)]
async fn execute_async(
    State(app): AppState,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let def = flow_def(&app, &flow)?;
    let (inputs, ctx) = execute_request(&body, &headers)?;
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ActiveQuery {
    /// Comma-separated statuses; default `pending,running,paused`; `all` for every status.
    status: Option<String>,
    /// Only runs started at or after this RFC 3339 time.
    started_after: Option<DateTime<Utc>>,
    /// Only runs started before this RFC 3339 time.
    started_before: Option<DateTime<Utc>>,
    /// At most this many runs (1 to 1000; default 100).
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One line of a listing.
#[derive(Serialize, ToSchema)]
struct RunSummary {
    flow_id: String,
    status: String,
    current_step: Option<String>,
    started_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    total_execution_time: Option<f64>,
}

#[derive(Serialize, ToSchema)]
struct RunPage {
    /// Newest first.
    flows: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// The runs of a flow, newest first, filtered by status and start time,
/// a page at a time. Served from the indexes in the store, not a scan.
#[utoipa::path(
    get,
    path = "/api/v1/{flow}/active-flows",
    params(("flow" = String, Path), ActiveQuery),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn active_flows(
    State(app): AppState,
    Path(flow): Path<String>,
    query: Result<Query<ActiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    use crate::state::FlowStatus;
    let def = flow_def(&app, &flow)?;
    let Query(q) = query.map_err(|e| {
        ApiError::BadBody(format!(
            "{e}; e.g. ?status=running&limit=50&started_after=2026-01-01T00:00:00Z"
        ))
    })?;
    let statuses: Vec<Option<FlowStatus>> =
        match q.status.as_deref().unwrap_or("pending,running,paused") {
            "all" => vec![None],
            list => list
                .split(',')
                .map(|s| s.trim().parse().map(Some).map_err(ApiError::BadBody))
                .collect::<Result<_, _>>()?,
        };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadBody("limit must be between 1 and 1000".into()));
    }
    let offset: usize = match &q.cursor {
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::BadBody(format!("cursor {c:?} is not one this route gave")))?,
        None => 0,
    };
    // Each status has its own index; the pages are merged newest first.
    let mut runs = Vec::new();
    for status in statuses {
        let filter = ListFilter {
            flow_name: Some(def.name.clone()),
            status,
            started_after: q.started_after,
            started_before: q.started_before,
            limit: offset + limit + 1,
        };
        runs.extend(app.store.list_flows(&filter).await?);
    }
    runs.sort_by_key(|s| std::cmp::Reverse((s.started_at, s.flow_id)));
    runs.dedup_by_key(|s| s.flow_id);
    let more = runs.len() > offset + limit;
    let flows = runs
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|s| RunSummary {
            flow_id: s.flow_id.to_string(),
            status: s.status.to_string(),
            current_step: s.current_step,
            started_at: s.started_at,
            completed_at: s.completed_at,
            total_execution_time: s.total_execution_time,
        })
        .collect();
    Ok(Json(RunPage {
        flows,
        next_cursor: more.then(|| (offset + limit).to_string()),
    }))
}

/// A run's state, with every step's inputs and outputs.
#[utoipa::path(
    get,
    path = "/api/v1/{flow}/status/{flow_id}",
    params(("flow" = String, Path), ("flow_id" = String, Path, description = "The run's UUID")),
    responses(
        (status = 200, body = FlowRunView),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 404, description = "Unknown flow or run", body = ErrorBody),
    )
)]
async fn status(
    State(app): AppState,
    Path((flow, raw_id)): Path<(String, String)>,
) -> Result<Json<FlowRunView>, ApiError> {
    let (def, state) = stored_run(&app, &flow, &raw_id).await?;
    Ok(Json(flow_view(&def, &state, true)))
}

/// Continue a failed, paused or interrupted run from the steps that did not
/// complete, and wait for its end.
#[utoipa::path(
    post,
    path = "/api/v1/{flow}/resume/{flow_id}",
    params(("flow" = String, Path), ("flow_id" = String, Path)),
    responses(
        (status = 200, body = FlowRunView),
        (status = 404, description = "Unknown flow or run", body = ErrorBody),
        (status = 409, description = "Completed, cancelled, or running here now", body = ErrorBody),
    )
)]
async fn resume(
    State(app): AppState,
    Path((flow, raw_id)): Path<(String, String)>,
) -> Result<Json<FlowRunView>, ApiError> {
    let (def, state) = stored_run(&app, &flow, &raw_id).await?;
    let state = app
        .runner
        .resume_flow(state.flow_id)
        .await
        .map_err(|e| in_flow(&flow, &raw_id, e))?;
    Ok(Json(flow_view(&def, &state, false)))
}

/// Reset one failed step and continue the run from it.
#[utoipa::path(
    post,
    path = "/api/v1/{flow}/retry/{flow_id}/{step}",
    params(("flow" = String, Path), ("flow_id" = String, Path), ("step" = String, Path)),
    responses(
        (status = 200, body = FlowRunView),
        (status = 404, description = "Unknown flow, run or step", body = ErrorBody),
        (status = 409, description = "The step has not failed", body = ErrorBody),
    )
)]
async fn retry(
    State(app): AppState,
    Path((flow, raw_id, step)): Path<(String, String, String)>,
) -> Result<Json<FlowRunView>, ApiError> {
    let (def, state) = stored_run(&app, &flow, &raw_id).await?;
    let state = app
        .runner
        .retry_step(state.flow_id, &step)
        .await
        .map_err(|e| in_flow(&flow, &raw_id, e))?;
    Ok(Json(flow_view(&def, &state, false)))
}

/// Cancel a run: running steps are interrupted, no further step starts.
/// Answers with the state the run was left in.
#[utoipa::path(
    delete,
    path = "/api/v1/{flow}/flows/{flow_id}",
    params(("flow" = String, Path), ("flow_id" = String, Path)),
    responses(
        (status = 200, body = FlowRunView),
        (status = 404, description = "Unknown flow or run", body = ErrorBody),
        (status = 409, description = "The run completed already", body = ErrorBody),
    )
)]
async fn cancel(
    State(app): AppState,
    Path((flow, raw_id)): Path<(String, String)>,
) -> Result<Json<FlowRunView>, ApiError> {
    let (def, state) = stored_run(&app, &flow, &raw_id).await?;
    let state = app
        .runner
        .cancel_flow(state.flow_id)
        .await
        .map_err(|e| in_flow(&flow, &raw_id, e))?;
    Ok(Json(flow_view(&def, &state, false)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct AnalyticsQuery {
    /// How far back to look: 30s, 15m, 1h (the default), 7d.
    window: Option<String>,
}

/// The most recent runs examined by analytics.
const ANALYTICS_RUNS: usize = 1000;

/// Runs by status, p50 and p95 durations, per-step durations and failure
/// reasons, and the cache hit rate, over the runs of a time window (at most
/// the 1000 most recent), computed from stored state.
#[utoipa::path(
    get,
    path = "/api/v1/{flow}/analytics",
    params(("flow" = String, Path), AnalyticsQuery),
    responses(
        (status = 200, description = "See the analytics module for the fields", body = Object),
        (status = 400, description = "Bad window", body = ErrorBody),
        (status = 404, description = "Unknown flow", body = ErrorBody),
    )
)]
async fn analytics(
    State(app): AppState,
    Path(flow): Path<String>,
    query: Result<Query<AnalyticsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let def = flow_def(&app, &flow)?;
    let Query(q) = query.map_err(|e| ApiError::BadBody(format!("{e}; use ?window=1h")))?;
    let window = crate::analytics::parse_window(q.window.as_deref().unwrap_or("1h"))
        .map_err(ApiError::BadBody)?;
    let since = Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
    let filter = ListFilter {
        flow_name: Some(def.name.clone()),
        started_after: Some(since),
        limit: ANALYTICS_RUNS,
        ..ListFilter::default()
    };
    let mut runs = Vec::new();
    for summary in app.store.list_flows(&filter).await? {
        if let Some(run) = app.store.get_flow(summary.flow_id).await? {
            runs.push(run);
        }
    }
    let steps: Vec<String> = def.steps.iter().map(|s| s.name.clone()).collect();
    let result = crate::analytics::compute(&def.name, window, &steps, &runs);
    Ok(Json(serde_json::to_value(result).unwrap_or_default()))
}

/// The loaded flow definitions, and the files rejected with their errors.
#[utoipa::path(get, path = "/api/v1/flows", responses((status = 200, body = Object)))]
async fn list_flows(State(app): AppState) -> Json<Value> {
    let flows: Vec<Value> = app
        .flows
        .flows()
        .map(|f| {
            json!({
                "name": f.name,
                "description": f.description,
                "file": f.file,
                "hash": f.hash,
                "inputs": f.inputs,
                "cache": f.cache,
                "steps": f.steps.iter().map(|s| json!({
                    "name": s.name,
                    "plugin": s.plugin,
                    "depends_on": s.depends_on,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let errors: Vec<String> = app.flows.errors().iter().map(ToString::to_string).collect();
    Json(json!({ "flows": flows, "errors": errors }))
}

/// The loaded plugins and the files skipped in the plugins folder, with why.
#[utoipa::path(get, path = "/api/v1/plugins", responses((status = 200, body = Object)))]
async fn list_plugins(State(app): AppState) -> Json<Value> {
    let loaded: Vec<_> = app.plugins.plugins().map(|p| &p.meta).collect();
    Json(json!({ "plugins": loaded, "skipped": app.plugins.skipped() }))
}

/// Exactly one of the three selects what to remove.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct InvalidateQuery {
    /// Every result computed by this plugin.
    plugin: Option<String>,
    /// Every result stored by runs of this flow, whole-flow results included.
    flow: Option<String>,
    /// One cache key.
    key: Option<String>,
}

/// Remove cached results; answers how many there were.
#[utoipa::path(
    delete,
    path = "/api/v1/cache",
    params(InvalidateQuery),
    responses(
        (status = 200, description = "{\"removed\": n}", body = Object),
        (status = 400, description = "Not exactly one of plugin, flow, key", body = ErrorBody),
    )
)]
async fn invalidate_cache(
    State(app): AppState,
    query: Result<Query<InvalidateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let usage = "give exactly one of ?plugin=NAME, ?flow=NAME or ?key=KEY";
    let Query(q) = query.map_err(|e| ApiError::BadBody(format!("{e}; {usage}")))?;
    let what = match (q.plugin, q.flow, q.key) {
        (Some(p), None, None) => Invalidate::Plugin(p),
        (None, Some(f), None) => Invalidate::Flow(f),
        (None, None, Some(k)) => Invalidate::Key(k),
        _ => return Err(ApiError::BadBody(usage.into())),
    };
    let removed = app
        .runner
        .invalidate_cache(&what)
        .await
        .map_err(ApiError::CacheUnavailable)?;
    Ok(Json(json!({ "removed": removed })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct PruneQuery {
    /// Remove finished flows older than this: 30m, 12h, 7d.
    older_than: String,
}

/// Remove the finished flows (completed, failed, cancelled) that finished
/// longer ago than `older_than`; answers how many.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/flows",
    params(PruneQuery),
    responses((status = 200, description = "{\"removed\": n}", body = Object), (status = 400, body = ErrorBody))
)]
async fn prune_flows(
    State(app): AppState,
    query: Result<Query<PruneQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadBody(format!("{e}; e.g. ?older_than=7d")))?;
    let age = crate::analytics::parse_window(&q.older_than).map_err(ApiError::BadBody)?;
    let removed = app.store.prune_older_than(age).await?;
    Ok(Json(json!({ "removed": removed })))
}

/// Health: `ok`, or `degraded` while a configured Redis is unreachable.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Object)))]
async fn healthz(State(app): AppState) -> Json<Value> {
    let redis = app.store.health();
    let degraded = matches!(redis, RedisHealth::Unreachable { .. });
    Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "state_store": app.store.backend(),
        "redis": redis,
        "plugins": { "loaded": app.plugins.plugins().count(), "skipped": app.plugins.skipped().len() },
        "flows": app.flows.flows().count(),
        "flows_running": app.runner.active_count(),
    }))
}

/// Prometheus metrics, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(app): AppState) -> Response {
    app.metrics.degraded.set(i64::from(app.store.is_degraded()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, body = Object)))]
async fn openapi(
    Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(doc.as_ref().clone())
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute(format!("{method} {}", uri.path()))
}

#[cfg(test)]
mod tests {
    /// Every route goes through `routes!`, which puts it in the OpenAPI
    /// document: a plain axum `.route(` here would escape it.
    #[test]
    fn routes_are_registered_only_through_the_openapi_router() {
        let source = include_str!("mod.rs");
        let code = &source[..source.find("#[cfg(test)]").unwrap()];
        assert!(
            !code.contains(concat!(".route", "(")),
            "use .routes(routes!(handler))"
        );
        assert_eq!(code.matches(".routes(routes!(").count(), 15);
    }
}
