//! The HTTP API (axum): flow routes, plugin and flow listings, health and
//! Prometheus metrics. Handlers translate HTTP to `App` calls and back; they
//! know no Redis key and no wasmtime type.

mod error;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

pub use error::ApiError;

use crate::app::App;
use crate::flow::FlowDefinition;
use crate::runner::FlowContext;
use crate::state::{FlowId, FlowState, RedisHealth, StateStore};

type AppState = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.limits.max_request_bytes;
    Router::new()
        .route("/api/v1/{flow}/execute", post(execute))
        .route("/api/v1/{flow}/status/{flow_id}", get(status))
        .route("/api/v1/{flow}/resume/{flow_id}", post(resume))
        .route("/api/v1/{flow}/retry/{flow_id}/{step}", post(retry))
        .route("/api/v1/{flow}/flows/{flow_id}", delete(cancel))
        .route("/api/v1/flows", get(list_flows))
        .route("/api/v1/cache", delete(invalidate_cache))
        .route("/api/v1/plugins", get(list_plugins))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// Serves `app` on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The body of `execute`: the flow's inputs, and optionally its id and
/// metadata to record with it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteRequest {
    #[serde(default)]
    inputs: Map<String, Value>,
    #[serde(default)]
    flow_id: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
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

fn parse_flow_id(raw: &str) -> Result<FlowId, ApiError> {
    raw.parse().map_err(|_| ApiError::BadFlowId(raw.to_owned()))
}

async fn execute(
    State(app): AppState,
    Path(flow): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let def = flow_def(&app, &flow)?;
    // The body is read as JSON whatever its Content-Type, so that a plain
    // `curl -d` works.
    let request: ExecuteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ExecuteRequest {
            inputs: Map::new(),
            flow_id: None,
            metadata: Map::new(),
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadBody(format!(
                "{e}; send a JSON object such as {{\"inputs\": {{\"text\": \"...\"}}}}"
            ))
        })?
    };
    let mut ctx = FlowContext::new();
    if let Some(raw) = &request.flow_id {
        ctx.flow_id = parse_flow_id(raw)?;
    }
    ctx.metadata = request.metadata;
    let state = app.runner.execute(def.clone(), request.inputs, ctx).await?;
    Ok(Json(flow_view(&def, &state, false)))
}

async fn status(
    State(app): AppState,
    Path((flow, raw_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (def, state) = stored_run(&app, &flow, &raw_id).await?;
    Ok(Json(flow_view(&def, &state, true)))
}

/// The stored run `raw_id` of flow `flow`, or 404.
async fn stored_run(
    app: &App,
    flow: &str,
    raw_id: &str,
) -> Result<(Arc<FlowDefinition>, FlowState), ApiError> {
    let def = flow_def(app, flow)?;
    let id = parse_flow_id(raw_id)?;
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
fn in_flow(flow: &str, raw_id: &str, e: crate::runner::RunError) -> ApiError {
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

async fn resume(
    State(app): AppState,
    Path((flow, raw_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (def, state) = stored_run(&app, &flow, &raw_id).await?;
    let state = app
        .runner
        .resume_flow(state.flow_id)
        .await
        .map_err(|e| in_flow(&flow, &raw_id, e))?;
    Ok(Json(flow_view(&def, &state, false)))
}

async fn retry(
    State(app): AppState,
    Path((flow, raw_id, step)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (def, state) = stored_run(&app, &flow, &raw_id).await?;
    let state = app
        .runner
        .retry_step(state.flow_id, &step)
        .await
        .map_err(|e| in_flow(&flow, &raw_id, e))?;
    Ok(Json(flow_view(&def, &state, false)))
}

async fn cancel(
    State(app): AppState,
    Path((flow, raw_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (def, state) = stored_run(&app, &flow, &raw_id).await?;
    let state = app
        .runner
        .cancel_flow(state.flow_id)
        .await
        .map_err(|e| in_flow(&flow, &raw_id, e))?;
    Ok(Json(flow_view(&def, &state, false)))
}

#[derive(Serialize)]
struct StepView<'a> {
    step_name: &'a str,
    plugin: &'a str,
    status: crate::state::StepStatus,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    completed_at: Option<chrono::DateTime<chrono::Utc>>,
    execution_time: Option<f64>,
    attempt: u32,
    cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_key: Option<&'a str>,
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<&'a Value>,
}

/// A flow run as the API shows it: steps in definition order, with their
/// inputs and outputs when `with_step_data`.
fn flow_view(def: &FlowDefinition, state: &FlowState, with_step_data: bool) -> Value {
    let steps: Vec<StepView<'_>> = def
        .steps
        .iter()
        .filter_map(|s| {
            let st = state.steps.get(&s.name)?;
            Some(StepView {
                step_name: &st.step_name,
                plugin: &s.plugin,
                status: st.status,
                started_at: st.started_at,
                completed_at: st.completed_at,
                execution_time: st.execution_time,
                attempt: st.attempt,
                cached: st.cached,
                cache_key: st.cache_key.as_deref(),
                error: st.error.as_deref(),
                inputs: st.inputs.as_ref().filter(|_| with_step_data),
                outputs: st.outputs.as_ref().filter(|_| with_step_data),
            })
        })
        .collect();
    let mut view = json!({
        "flow_id": state.flow_id,
        "flow_name": state.flow_name,
        "status": state.status,
        "cached": state.metadata.get("flow_cache").is_some_and(|v| v == "hit"),
        "outputs": state.outputs,
        "error": state.error,
        "current_step": state.current_step,
        "started_at": state.started_at,
        "completed_at": state.completed_at,
        "total_execution_time": state.total_execution_time,
        "steps": steps,
        "metadata": state.metadata,
    });
    if with_step_data {
        view["inputs"] = state.inputs.clone();
    }
    view
}

/// Exactly one of the three selects what to remove.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateQuery {
    plugin: Option<String>,
    flow: Option<String>,
    key: Option<String>,
}

async fn invalidate_cache(
    State(app): AppState,
    query: Result<Query<InvalidateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    use crate::cache::Invalidate;
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

async fn list_plugins(State(app): AppState) -> Json<Value> {
    let loaded: Vec<_> = app.plugins.plugins().map(|p| &p.meta).collect();
    Json(json!({ "plugins": loaded, "skipped": app.plugins.skipped() }))
}

async fn healthz(State(app): AppState) -> Json<Value> {
    let redis = app.store.health();
    let degraded = matches!(redis, RedisHealth::Unreachable { .. });
    Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "state_store": app.store.backend(),
        "redis": redis,
        "plugins": { "loaded": app.plugins.plugins().count(), "skipped": app.plugins.skipped().len() },
        "flows": app.flows.flows().count(),
    }))
}

async fn metrics(State(app): AppState) -> Response {
    app.metrics.degraded.set(i64::from(app.store.is_degraded()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute(format!("{method} {}", uri.path()))
}
