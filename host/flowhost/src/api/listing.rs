//! Reading many runs of a flow: the paged listing (active-flows) and the
//! analytics computed over a time window of stored runs.

use axum::extract::{Query, State};
use axum::response::Json;
use chrono::{DateTime, Utc};
use flowhost_core::state::{FlowStatus, ListFilter};
use serde::Deserialize;
use serde_json::Value;

use super::runs::flow_def;
use super::views::{RunPage, RunSummary};
use super::{ApiError, AppState, ErrorBody, PathParams};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ActiveQuery {
    /// Comma-separated statuses; default `pending,running,paused`; `all` for every status.
    status: Option<String>,
    /// Only runs started at or after this RFC 3339 time.
    started_after: Option<DateTime<Utc>>,
    /// Only runs started before this RFC 3339 time.
    started_before: Option<DateTime<Utc>>,
    /// At most this many runs (1 to 1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]+$")]
    cursor: Option<String>,
}

/// The runs of a flow, newest first, filtered by status and start time,
/// a page at a time. Served from the indexes in the store, not a scan.
#[utoipa::path(
    get,
    path = "/api/v1/{flow}/active-flows",
    params(("flow" = String, Path, example = "document_analysis"), ActiveQuery),
    responses(
        (status = 200, body = RunPage),
        (status = 400, description = "Bad status, time, limit or cursor", body = ErrorBody),
        (status = 404, description = "Unknown flow", body = ErrorBody),
        (status = 503, description = "The state store is unavailable, or the flow waits for a plugin still loading", body = ErrorBody),
    )
)]
pub(super) async fn active_flows(
    State(app): AppState,
    PathParams(flow): PathParams<String>,
    query: Result<Query<ActiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AnalyticsQuery {
    /// How far back to look: 30s, 15m, 1h (the default), 7d; at most 366d.
    #[param(pattern = "^[0-9]+[smhd]$")]
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
    params(("flow" = String, Path, example = "document_analysis"), AnalyticsQuery),
    responses(
        (status = 200, description = "See the analytics module for the fields", body = Object),
        (status = 400, description = "Bad window", body = ErrorBody),
        (status = 404, description = "Unknown flow", body = ErrorBody),
        (status = 503, description = "The state store is unavailable, or the flow waits for a plugin still loading", body = ErrorBody),
    )
)]
pub(super) async fn analytics(
    State(app): AppState,
    PathParams(flow): PathParams<String>,
    query: Result<Query<AnalyticsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let def = flow_def(&app, &flow)?;
    let Query(q) = query.map_err(|e| ApiError::BadBody(format!("{e}; use ?window=1h")))?;
    let window = flowhost_core::analytics::parse_window(q.window.as_deref().unwrap_or("1h"))
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
    let result = flowhost_core::analytics::compute(&def.name, window, &steps, &runs);
    Ok(Json(serde_json::to_value(result).unwrap_or_default()))
}
