//! Flow and step state: a run's id, its header and its steps' states, the
//! patches that change them, listings, and (in `store`) the `StateStore` port
//! that persists them. Adapters implement the port elsewhere (`memory`, and
//! the Redis crate).

mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use store::{Claim, Renewal, StateStore, StoreError};

/// A flow run's id: a UUID, v7 when flowhost generates it so ids sort by time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FlowId(Uuid);

impl FlowId {
    pub fn new() -> Self {
        FlowId(Uuid::now_v7())
    }
}

impl Default for FlowId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for FlowId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(FlowId)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Paused,
    Cancelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

macro_rules! status_str {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),* }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Self::$variant),)*
                    other => Err(format!("unknown status {other:?}")),
                }
            }
        }
    };
}

status_str!(FlowStatus {
    Pending => "pending",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Paused => "paused",
    Cancelled => "cancelled",
});

status_str!(StepStatus {
    Pending => "pending",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl FlowStatus {
    /// True once the flow will not change without a resume or retry.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// One step's state within one flow run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowStepState {
    pub step_name: String,
    pub status: StepStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub inputs: Option<Value>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    /// Seconds spent in the step, plugin call included.
    pub execution_time: Option<f64>,
    /// 0 before the first attempt; 1 on the first.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub cached: bool,
    #[serde(default)]
    pub cache_key: Option<String>,
    /// Why the last attempt failed, as a stable name: `timed_out`,
    /// `out_of_memory`, `stack_exhausted`, `panicked`, `output_too_large`,
    /// `invalid_output`, `capability_denied`, `failed`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// What the plugin printed on the last attempt (bounded, control
    /// characters removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

impl FlowStepState {
    pub fn pending(step_name: impl Into<String>) -> Self {
        FlowStepState {
            step_name: step_name.into(),
            status: StepStatus::Pending,
            started_at: None,
            completed_at: None,
            inputs: None,
            outputs: None,
            error: None,
            execution_time: None,
            attempt: 0,
            cached: false,
            cache_key: None,
            error_kind: None,
            stdout: None,
            stderr: None,
        }
    }
}

/// One flow run: its header and every step's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowState {
    pub flow_id: FlowId,
    pub flow_name: String,
    pub status: FlowStatus,
    pub inputs: Value,
    /// Step name → state; every step of the definition is present.
    pub steps: BTreeMap<String, FlowStepState>,
    pub current_step: Option<String>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Seconds from start to finish.
    pub total_execution_time: Option<f64>,
    pub metadata: Map<String, Value>,
    /// The flow's outputs once it completed.
    pub outputs: Option<Value>,
    /// Why the flow failed, when it did.
    pub error: Option<String>,
}

/// The header fields that change while a flow runs; `None` leaves a field as
/// it is. Sent along with step writes so one round trip records both.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowPatch {
    pub status: Option<FlowStatus>,
    pub current_step: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
    pub total_execution_time: Option<f64>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    /// Clears `completed_at`, `total_execution_time`, `outputs` and `error`
    /// before the fields above are applied: a resumed flow is unfinished.
    pub clear_result: bool,
}

impl FlowPatch {
    pub fn is_empty(&self) -> bool {
        *self == FlowPatch::default()
    }

    /// Applies the patch to a state held in memory.
    pub fn apply(&self, flow: &mut FlowState) {
        if self.clear_result {
            flow.completed_at = None;
            flow.total_execution_time = None;
            flow.outputs = None;
            flow.error = None;
        }
        if let Some(status) = self.status {
            flow.status = status;
        }
        if let Some(step) = &self.current_step {
            flow.current_step = Some(step.clone());
        }
        if let Some(at) = self.completed_at {
            flow.completed_at = Some(at);
        }
        if let Some(t) = self.total_execution_time {
            flow.total_execution_time = Some(t);
        }
        if let Some(outputs) = &self.outputs {
            flow.outputs = Some(outputs.clone());
        }
        if let Some(error) = &self.error {
            flow.error = Some(error.clone());
        }
        if let Some(metadata) = &self.metadata {
            flow.metadata = metadata.clone();
        }
    }
}

/// A line of a flow listing: the header without inputs, outputs or steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowSummary {
    pub flow_id: FlowId,
    pub flow_name: String,
    pub status: FlowStatus,
    pub current_step: Option<String>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub total_execution_time: Option<f64>,
}

impl From<&FlowState> for FlowSummary {
    fn from(f: &FlowState) -> Self {
        FlowSummary {
            flow_id: f.flow_id,
            flow_name: f.flow_name.clone(),
            status: f.status,
            current_step: f.current_step.clone(),
            started_at: f.started_at,
            completed_at: f.completed_at,
            total_execution_time: f.total_execution_time,
        }
    }
}

/// Which flows a listing returns, newest first.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub flow_name: Option<String>,
    pub status: Option<FlowStatus>,
    /// Only flows started at or after this time.
    pub started_after: Option<DateTime<Utc>>,
    /// Only flows started before this time.
    pub started_before: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl ListFilter {
    /// Whether a summary passes every filter.
    pub fn matches(&self, s: &FlowSummary) -> bool {
        self.flow_name.as_ref().is_none_or(|n| *n == s.flow_name)
            && self.status.is_none_or(|st| st == s.status)
            && self.started_after.is_none_or(|t| s.started_at >= t)
            && self.started_before.is_none_or(|t| s.started_at < t)
    }
}
