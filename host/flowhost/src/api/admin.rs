//! Routes about the host rather than one run: loaded flows and plugins
//! (and those still loading), cache invalidation, pruning, health and
//! Prometheus metrics.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Json, Response};
use flowhost_core::cache::Invalidate;
use flowhost_redis::RedisHealth;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, ErrorBody};

/// The flow definitions served, those waiting for a plugin still loading,
/// and the files rejected with their errors.
#[utoipa::path(get, path = "/api/v1/flows", responses((status = 200, body = Object)))]
pub(super) async fn list_flows(State(app): AppState) -> Json<Value> {
    let set = app.flows.snapshot();
    let flows: Vec<Value> = set
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
    let errors: Vec<String> = set.errors().iter().map(ToString::to_string).collect();
    Json(json!({ "flows": flows, "waiting": set.waiting(), "errors": errors }))
}

/// The loaded plugins, the files skipped in the plugins folder with why, and
/// the files still loading.
#[utoipa::path(get, path = "/api/v1/plugins", responses((status = 200, body = Object)))]
pub(super) async fn list_plugins(State(app): AppState) -> Json<Value> {
    let set = app.plugins_now();
    let loaded: Vec<_> = set.plugins().map(|p| &p.meta).collect();
    let skipped: Vec<_> = set.skipped().collect();
    let loading: Vec<_> = set.loading().collect();
    Json(json!({ "plugins": loaded, "skipped": skipped, "loading": loading }))
}

/// Exactly one of the three selects what to remove.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct InvalidateQuery {
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
        (status = 503, description = "The cache is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn invalidate_cache(
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
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PruneQuery {
    /// Remove finished flows older than this: 30m, 12h, 7d.
    older_than: String,
}

/// Remove the finished flows (completed, failed, cancelled) that finished
/// longer ago than `older_than`; answers how many.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/flows",
    params(PruneQuery),
    responses(
        (status = 200, description = "{\"removed\": n}", body = Object),
        (status = 400, description = "older_than missing or not a duration", body = ErrorBody),
        (status = 503, description = "The state store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn prune_flows(
    State(app): AppState,
    query: Result<Query<PruneQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadBody(format!("{e}; e.g. ?older_than=7d")))?;
    let age = flowhost_core::analytics::parse_window(&q.older_than).map_err(ApiError::BadBody)?;
    let removed = app.store.prune_older_than(age).await?;
    Ok(Json(json!({ "removed": removed })))
}

/// Health: `ok`, or `degraded` while a configured Redis is unreachable;
/// the plugin files still loading, and the flows waiting for them.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Object)))]
pub(super) async fn healthz(State(app): AppState) -> Json<Value> {
    let redis = app.redis_health();
    let degraded = matches!(redis, RedisHealth::Unreachable { .. });
    let (plugins, flows) = (app.plugins_now(), app.flows.snapshot());
    Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "state_store": app.store.backend(),
        "redis": redis,
        "plugins": {
            "loaded": plugins.plugins().count(),
            "skipped": plugins.skipped().count(),
            "loading": plugins.loading().collect::<Vec<_>>(),
        },
        "flows": flows.flows().count(),
        "flows_waiting": flows.waiting().len(),
        "flows_running": app.runner.active_count(),
    }))
}

/// Prometheus metrics, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(app): AppState) -> Response {
    app.metrics.degraded.set(i64::from(app.store.degraded()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
