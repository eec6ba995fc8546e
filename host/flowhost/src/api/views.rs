//! How runs look in answers: a run with its steps in definition order, a
//! listing's lines, and what `execute-async` answers. Pure: state in, views
//! out.

use chrono::{DateTime, Utc};
use flowhost_core::flow::FlowDefinition;
use flowhost_core::state::FlowState;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// One step of a run.
#[derive(Serialize, ToSchema)]
pub(super) struct StepView {
    pub step_name: String,
    pub plugin: String,
    /// pending, running, completed, failed or cancelled.
    pub status: String,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Seconds.
    pub execution_time: Option<f64>,
    pub attempt: u32,
    /// Served from the result cache, without running the plugin.
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    pub error: Option<String>,
    /// The kind of the error: timed_out, out_of_memory, stack_exhausted,
    /// panicked, output_too_large, invalid_output, capability_denied, failed…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// What the plugin printed (status route only; bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// The step's resolved input (status route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
    /// The step's output (status route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
}

/// A flow run.
#[derive(Serialize, ToSchema)]
pub(super) struct FlowRunView {
    pub flow_id: String,
    pub flow_name: String,
    /// pending, running, completed, failed, paused or cancelled.
    pub status: String,
    /// Answered from the whole-flow result cache.
    pub cached: bool,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub current_step: Option<String>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Seconds from start to finish.
    pub total_execution_time: Option<f64>,
    /// In definition order.
    pub steps: Vec<StepView>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// The run's inputs (status route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
}

/// A run as the API shows it: steps in definition order, with their inputs
/// and outputs when `with_step_data`.
pub(super) fn flow_view(
    def: &FlowDefinition,
    state: &FlowState,
    with_step_data: bool,
) -> FlowRunView {
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

/// One line of a listing.
#[derive(Serialize, ToSchema)]
pub(super) struct RunSummary {
    pub flow_id: String,
    pub status: String,
    pub current_step: Option<String>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub total_execution_time: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct RunPage {
    /// Newest first.
    pub flows: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What `execute-async` answers.
#[derive(Serialize, ToSchema)]
pub(super) struct Submitted {
    pub flow_id: String,
    /// `pending` for a new run; the run's current status for a replayed
    /// idempotency key.
    pub status: String,
    /// Where to follow the run.
    pub status_url: String,
}
