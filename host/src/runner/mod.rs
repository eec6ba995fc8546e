//! Runs flows: validates inputs, schedules the steps of the DAG (independent
//! steps run concurrently), calls each step's plugin and records every
//! transition through the `StateStore` port before moving on.
//!
//! Invariant: a step is saved as running (with its inputs and start time)
//! before its plugin is called, and as completed or failed after; each write
//! carries that one step only. The runner names no Redis key and no HTTP type.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use crate::flow::{FlowDefinition, Scope};
use crate::metrics::{FlowLabel, FlowOutcome, Metrics, StepLabel, StepOutcome};
use crate::plugin::{Call, PluginError, PluginHost};
use crate::state::{
    FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, StateStore, StepStatus, StoreError,
};

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Used for steps whose flow file sets no `timeout_ms`.
    pub step_timeout: Duration,
}

/// Who runs a flow and under which id.
#[derive(Clone, Debug, Default)]
pub struct FlowContext {
    pub flow_id: FlowId,
    /// Copied into the flow's state; flowhost adds `state_store`.
    pub metadata: Map<String, Value>,
}

impl FlowContext {
    pub fn new() -> Self {
        Self::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid inputs: {}", .0.join("; "))]
    InvalidInputs(Vec<String>),
    #[error("a flow with id {0} exists already")]
    DuplicateId(FlowId),
    #[error("cannot record the flow: {0}")]
    Store(#[source] StoreError),
}

/// Cheap to clone: one `Arc` inside.
#[derive(Clone)]
pub struct FlowRunner {
    inner: Arc<Inner>,
}

struct Inner {
    plugins: Arc<PluginHost>,
    store: Arc<dyn StateStore>,
    metrics: Arc<Metrics>,
    config: RunnerConfig,
}

impl FlowRunner {
    pub fn new(
        plugins: Arc<PluginHost>,
        store: Arc<dyn StateStore>,
        metrics: Arc<Metrics>,
        config: RunnerConfig,
    ) -> Self {
        FlowRunner {
            inner: Arc::new(Inner {
                plugins,
                store,
                metrics,
                config,
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    /// Runs a flow to its end and returns its final state. Step failures are
    /// part of the state (status `failed`), not an `Err`.
    pub async fn execute(
        &self,
        def: Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<FlowState, RunError> {
        let inputs = def
            .resolve_inputs(inputs)
            .map_err(RunError::InvalidInputs)?;
        let clock = Instant::now();
        let mut metadata = ctx.metadata;
        metadata.insert("state_store".into(), self.inner.store.backend().into());
        metadata.insert("flow_hash".into(), def.hash.clone().into());
        let mut state = FlowState {
            flow_id: ctx.flow_id,
            flow_name: def.name.clone(),
            status: FlowStatus::Running,
            inputs: Value::Object(inputs),
            steps: def
                .steps
                .iter()
                .map(|s| (s.name.clone(), FlowStepState::pending(&s.name)))
                .collect(),
            current_step: None,
            started_at: Utc::now(),
            completed_at: None,
            total_execution_time: None,
            metadata,
            outputs: None,
            error: None,
        };
        match self.inner.store.create_flow(&state).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(id)) => return Err(RunError::DuplicateId(id)),
            Err(e) => return Err(RunError::Store(e)),
        }
        // The store may have fallen back to memory while creating the flow.
        state
            .metadata
            .insert("state_store".into(), self.inner.store.backend().into());
        if state.metadata["state_store"] == "memory" && self.inner.metrics.degraded.get() == 1 {
            state.metadata.insert("degraded".into(), true.into());
        }

        self.inner.metrics.flows_in_flight.inc();
        self.run_steps(&def, &mut state).await;
        self.inner.metrics.flows_in_flight.dec();

        if state.error.is_none() {
            let outputs = HashMap::from_iter(
                state
                    .steps
                    .values()
                    .filter_map(|s| Some((s.step_name.clone(), s.outputs.clone()?))),
            );
            let inputs = state.inputs.as_object().cloned().unwrap_or_default();
            match def.outputs.resolve(&Scope {
                inputs: &inputs,
                outputs: &outputs,
            }) {
                Ok(v) => state.outputs = Some(v),
                Err(e) => state.error = Some(format!("flow outputs: {e}")),
            }
        }
        state.status = if state.error.is_some() {
            FlowStatus::Failed
        } else {
            FlowStatus::Completed
        };
        let elapsed = clock.elapsed().as_secs_f64();
        state.completed_at = Some(Utc::now());
        state.total_execution_time = Some(elapsed);
        let patch = FlowPatch {
            status: Some(state.status),
            current_step: None,
            completed_at: state.completed_at,
            total_execution_time: Some(elapsed),
            outputs: state.outputs.clone(),
            error: state.error.clone(),
            metadata: Some(state.metadata.clone()),
        };
        self.record(
            state.flow_id,
            self.inner.store.update_flow(state.flow_id, &patch).await,
        );

        let m = &self.inner.metrics;
        m.flow_runs
            .get_or_create(&FlowOutcome {
                flow: def.name.clone(),
                outcome: state.status.to_string(),
            })
            .inc();
        m.flow_duration
            .get_or_create(&FlowLabel {
                flow: def.name.clone(),
            })
            .observe(elapsed);
        tracing::info!(
            flow = %def.name,
            flow_id = %state.flow_id,
            status = %state.status,
            seconds = elapsed,
            "flow finished"
        );
        Ok(state)
    }

    /// Runs every pending step whose dependencies completed, as many at once
    /// as are ready, until all completed or one failed. After a failure no new
    /// step starts; the ones running are awaited.
    async fn run_steps(&self, def: &Arc<FlowDefinition>, state: &mut FlowState) {
        let inputs = state.inputs.as_object().cloned().unwrap_or_default();
        let mut outputs: HashMap<String, Value> = HashMap::new();
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut launched: HashSet<String> = HashSet::new();
        let mut running = JoinSet::new();
        loop {
            if state.error.is_none() {
                for (index, step) in def.steps.iter().enumerate() {
                    if launched.contains(&step.name) || !step.depends_on.is_subset(&done) {
                        continue;
                    }
                    launched.insert(step.name.clone());
                    let scope = Scope {
                        inputs: &inputs,
                        outputs: &outputs,
                    };
                    match step.input.resolve(&scope) {
                        Ok(input) => {
                            let (runner, def, id) = (self.clone(), def.clone(), state.flow_id);
                            running.spawn(
                                async move { runner.run_step(id, &def, index, input).await },
                            );
                        }
                        Err(e) => {
                            let mut failed = FlowStepState::pending(&step.name);
                            failed.status = StepStatus::Failed;
                            failed.error = Some(format!("input: {e}"));
                            self.record(
                                state.flow_id,
                                self.inner
                                    .store
                                    .save_step(state.flow_id, &failed, &FlowPatch::default())
                                    .await,
                            );
                            state.error = Some(format!("step `{}` failed: input: {e}", step.name));
                            state.steps.insert(step.name.clone(), failed);
                            break;
                        }
                    }
                }
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let step_state = match joined {
                Ok(s) => s,
                Err(e) => {
                    // A panicking step task is a host bug; fail the flow, not the host.
                    tracing::error!(flow_id = %state.flow_id, error = %e, "step task panicked");
                    state
                        .error
                        .get_or_insert_with(|| "internal error in a step".into());
                    continue;
                }
            };
            state.current_step = Some(step_state.step_name.clone());
            match step_state.status {
                StepStatus::Completed => {
                    done.insert(step_state.step_name.clone());
                    if let Some(out) = &step_state.outputs {
                        outputs.insert(step_state.step_name.clone(), out.clone());
                    }
                }
                _ => {
                    if state.error.is_none() {
                        state.error = Some(format!(
                            "step `{}` failed: {}",
                            step_state.step_name,
                            step_state.error.as_deref().unwrap_or("unknown error")
                        ));
                    }
                }
            }
            state.steps.insert(step_state.step_name.clone(), step_state);
        }
    }

    /// One attempt of one step: saved running, executed, saved finished.
    async fn run_step(
        &self,
        flow_id: FlowId,
        def: &FlowDefinition,
        index: usize,
        input: Value,
    ) -> FlowStepState {
        let step = &def.steps[index];
        let store = &self.inner.store;
        let mut st = FlowStepState::pending(&step.name);
        st.status = StepStatus::Running;
        st.started_at = Some(Utc::now());
        st.inputs = Some(input);
        st.attempt = 1;
        let patch = FlowPatch {
            current_step: Some(step.name.clone()),
            ..FlowPatch::default()
        };
        self.record(flow_id, store.save_step(flow_id, &st, &patch).await);

        let clock = Instant::now();
        let id = flow_id.to_string();
        let result = match self.inner.plugins.get(&step.plugin) {
            Some(plugin) => {
                let call = Call {
                    flow_id: &id,
                    step: &step.name,
                    attempt: st.attempt,
                    config: &step.config,
                    input: st.inputs.as_ref().unwrap_or(&Value::Null),
                    timeout: step.timeout.unwrap_or(self.inner.config.step_timeout),
                };
                self.inner.plugins.execute(plugin, &call).await
            }
            None => Err(PluginError::Failed(format!(
                "plugin `{}` is not loaded",
                step.plugin
            ))),
        };
        let elapsed = clock.elapsed().as_secs_f64();
        st.completed_at = Some(Utc::now());
        st.execution_time = Some(elapsed);
        let outcome = match result {
            Ok(output) => {
                st.status = StepStatus::Completed;
                st.outputs = Some(output);
                "completed"
            }
            Err(e) => {
                tracing::warn!(flow_id = %flow_id, step = %step.name, plugin = %step.plugin, error = %e, "step failed");
                st.status = StepStatus::Failed;
                st.error = Some(e.to_string());
                "failed"
            }
        };
        self.record(
            flow_id,
            store.save_step(flow_id, &st, &FlowPatch::default()).await,
        );
        let m = &self.inner.metrics;
        m.step_runs
            .get_or_create(&StepOutcome {
                flow: def.name.clone(),
                step: step.name.clone(),
                plugin: step.plugin.clone(),
                outcome: outcome.into(),
            })
            .inc();
        m.step_duration
            .get_or_create(&StepLabel {
                flow: def.name.clone(),
                step: step.name.clone(),
                plugin: step.plugin.clone(),
            })
            .observe(elapsed);
        st
    }

    /// A failed state write does not stop the flow: it is logged and counted,
    /// and the flow's result is still returned to the caller.
    fn record(&self, flow_id: FlowId, result: Result<(), StoreError>) {
        if let Err(e) = result {
            self.inner.metrics.state_write_errors.inc();
            tracing::error!(flow_id = %flow_id, error = %e, "state write failed; the flow goes on");
        }
    }
}
