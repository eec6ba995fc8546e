//! Runs flows: validates inputs, schedules the steps of the DAG (independent
//! steps run concurrently), calls each step's plugin with retries, and records
//! every transition through the `StateStore` port before moving on. Resumes,
//! retries, cancels, and pauses flows on shutdown.
//!
//! Invariants: a step is saved as running (inputs, start time, attempt) before
//! its plugin is called, and as completed, failed, cancelled or pending
//! (interrupted) after; each write carries that one step only. A completed step
//! is never run again: resume reads its output back. The runner names no Redis
//! key and no HTTP type.

mod retry;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use retry::RetryPolicy;

use crate::flow::{FlowCatalog, FlowDefinition, Scope};
use crate::metrics::{FlowLabel, FlowOutcome, Metrics, StepLabel, StepOutcome};
use crate::plugin::{Call, PluginError, PluginHost};
use crate::state::{
    FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, ListFilter, StateStore, StepStatus,
    StoreError,
};

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Used for steps whose flow file sets no `timeout_ms`.
    pub step_timeout: Duration,
    /// Used for what a step's `retry` does not set.
    pub retry: RetryPolicy,
}

/// Who runs a flow and under which id.
#[derive(Clone, Debug, Default)]
pub struct FlowContext {
    pub flow_id: FlowId,
    /// Copied into the flow's state; flowhost adds `state_store`, `flow_hash`.
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
    #[error("no flow run {0}")]
    NotFound(FlowId),
    /// The request does not fit the flow's state; the text says why.
    #[error("{0}")]
    Conflict(String),
    #[error("no step `{0}` in this flow")]
    UnknownStep(String),
    #[error("flowhost is shutting down and takes no new work")]
    ShuttingDown,
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
    flows: Arc<FlowCatalog>,
    store: Arc<dyn StateStore>,
    metrics: Arc<Metrics>,
    config: RunnerConfig,
    /// Flows executing in this process.
    active: Mutex<HashMap<FlowId, Arc<Active>>>,
    /// Cancelled when the shutdown grace period is over: interrupts every
    /// running step, whose flows are then left paused.
    interrupt_all: CancellationToken,
    /// Set on shutdown: no new flow and no new step starts.
    draining: AtomicBool,
}

/// A flow executing in this process.
struct Active {
    /// Stops the flow's running steps and backoff waits.
    stop: CancellationToken,
    /// Set with `stop` when a user cancelled the flow (rather than a shutdown).
    cancelled: AtomicBool,
    /// Becomes true when the flow's final state is recorded.
    finished: watch::Sender<bool>,
}

/// Removes a flow from the active set however its driver ends.
struct ActiveGuard<'a> {
    runner: &'a FlowRunner,
    id: FlowId,
    entry: Arc<Active>,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.runner.lock_active().remove(&self.id);
        self.entry.finished.send_replace(true);
    }
}

/// How a run of the scheduler begins: for a new flow every step is pending;
/// for a resumed one, completed steps are kept and the others start at the
/// attempt numbers given here.
type FirstAttempts = HashMap<String, u32>;

impl FlowRunner {
    pub fn new(
        plugins: Arc<PluginHost>,
        flows: Arc<FlowCatalog>,
        store: Arc<dyn StateStore>,
        metrics: Arc<Metrics>,
        config: RunnerConfig,
    ) -> Self {
        FlowRunner {
            inner: Arc::new(Inner {
                plugins,
                flows,
                store,
                metrics,
                config,
                active: Mutex::new(HashMap::new()),
                interrupt_all: CancellationToken::new(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<FlowId, Arc<Active>>> {
        self.inner.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_active(&self, id: FlowId) -> bool {
        self.lock_active().contains_key(&id)
    }

    pub fn active_count(&self) -> usize {
        self.lock_active().len()
    }

    /// Claims `id` for this process; fails if it is executing here already.
    fn activate(&self, id: FlowId) -> Result<ActiveGuard<'_>, RunError> {
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(RunError::ShuttingDown);
        }
        let mut active = self.lock_active();
        if active.contains_key(&id) {
            return Err(RunError::Conflict(format!("flow {id} is running already")));
        }
        let entry = Arc::new(Active {
            stop: self.inner.interrupt_all.child_token(),
            cancelled: AtomicBool::new(false),
            finished: watch::channel(false).0,
        });
        active.insert(id, entry.clone());
        Ok(ActiveGuard {
            runner: self,
            id,
            entry,
        })
    }

    /// Runs a new flow to its end and returns its final state. Step failures
    /// are part of the state (status `failed`), not an `Err`.
    pub async fn execute(
        &self,
        def: Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<FlowState, RunError> {
        let inputs = def
            .resolve_inputs(inputs)
            .map_err(RunError::InvalidInputs)?;
        let guard = self.activate(ctx.flow_id)?;
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
        let backend = self.inner.store.backend();
        state.metadata.insert("state_store".into(), backend.into());
        if backend == "memory" && self.inner.metrics.degraded.get() == 1 {
            state.metadata.insert("degraded".into(), true.into());
        }
        let first = def.steps.iter().map(|s| (s.name.clone(), 1)).collect();
        Ok(self.drive(&def, state, first, &guard.entry).await)
    }

    /// Continues a failed, paused or interrupted flow from the steps that did
    /// not complete. Completed steps keep their state and output.
    pub async fn resume_flow(&self, id: FlowId) -> Result<FlowState, RunError> {
        self.restart(id, None).await
    }

    /// Resets one failed step and continues the flow from it.
    pub async fn retry_step(&self, id: FlowId, step: &str) -> Result<FlowState, RunError> {
        self.restart(id, Some(step)).await
    }

    async fn restart(&self, id: FlowId, only_step: Option<&str>) -> Result<FlowState, RunError> {
        let guard = self.activate(id)?;
        let mut state = self
            .inner
            .store
            .get_flow(id)
            .await
            .map_err(RunError::Store)?
            .ok_or(RunError::NotFound(id))?;
        match state.status {
            FlowStatus::Completed | FlowStatus::Cancelled => {
                return Err(RunError::Conflict(format!(
                    "flow {id} is {}: only a failed, paused or interrupted flow can continue",
                    state.status
                )));
            }
            FlowStatus::Pending | FlowStatus::Running | FlowStatus::Failed | FlowStatus::Paused => {
            }
        }
        let def = self
            .inner
            .flows
            .get(&state.flow_name)
            .cloned()
            .ok_or_else(|| {
                RunError::Conflict(format!(
                    "flow definition `{}` is not loaded, so run {id} cannot continue",
                    state.flow_name
                ))
            })?;
        if let Some(name) = only_step {
            match state.steps.get(name) {
                _ if def.step(name).is_none() => {
                    return Err(RunError::UnknownStep(name.to_owned()));
                }
                Some(s) if s.status == StepStatus::Failed => {}
                other => {
                    let status = other.map_or(StepStatus::Pending, |s| s.status);
                    return Err(RunError::Conflict(format!(
                        "step `{name}` of flow {id} is {status}: only a failed step can be retried"
                    )));
                }
            }
        }
        let mut first = FirstAttempts::new();
        for step in &def.steps {
            let st = state
                .steps
                .entry(step.name.clone())
                .or_insert_with(|| FlowStepState::pending(&step.name));
            // Resume continues every step that did not complete; retry resets
            // the one failed step and continues what never ran.
            let reset = match only_step {
                Some(name) if step.name == name => true,
                Some(_) => matches!(st.status, StepStatus::Pending | StepStatus::Running),
                None => st.status != StepStatus::Completed,
            };
            if !reset {
                continue;
            }
            // A step interrupted mid-attempt (crash, shutdown) runs that
            // attempt again, with the same idempotency key; a failed or
            // cancelled one starts the next attempt.
            let next = match st.status {
                StepStatus::Running | StepStatus::Pending | StepStatus::Completed => {
                    st.attempt.max(1)
                }
                StepStatus::Failed | StepStatus::Cancelled => st.attempt + 1,
            };
            st.status = StepStatus::Pending;
            first.insert(step.name.clone(), next);
        }
        state.status = FlowStatus::Running;
        state.completed_at = None;
        state.total_execution_time = None;
        state.outputs = None;
        state.error = None;
        let resumes = state
            .metadata
            .get("resumes")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        state
            .metadata
            .insert("resumes".into(), (resumes + 1).into());
        let patch = FlowPatch {
            status: Some(FlowStatus::Running),
            metadata: Some(state.metadata.clone()),
            clear_result: true,
            ..FlowPatch::default()
        };
        self.inner
            .store
            .update_flow(id, &patch)
            .await
            .map_err(RunError::Store)?;
        tracing::info!(flow = %def.name, flow_id = %id, steps = first.len(), "flow resumed");
        Ok(self.drive(&def, state, first, &guard.entry).await)
    }

    /// Cancels a flow: a running one stops its steps (within about one epoch
    /// tick) and starts no more; a stopped one is marked cancelled. Returns
    /// the state it was left in.
    pub async fn cancel_flow(&self, id: FlowId) -> Result<FlowState, RunError> {
        let active = self.lock_active().get(&id).cloned();
        if let Some(active) = active {
            let mut finished = active.finished.subscribe();
            active.cancelled.store(true, Ordering::SeqCst);
            active.stop.cancel();
            // The driver records the final state, then flips `finished`.
            let _ = tokio::time::timeout(Duration::from_secs(10), finished.wait_for(|f| *f)).await;
            return self
                .inner
                .store
                .get_flow(id)
                .await
                .map_err(RunError::Store)?
                .ok_or(RunError::NotFound(id));
        }
        let mut state = self
            .inner
            .store
            .get_flow(id)
            .await
            .map_err(RunError::Store)?
            .ok_or(RunError::NotFound(id))?;
        match state.status {
            FlowStatus::Completed => {
                return Err(RunError::Conflict(format!(
                    "flow {id} completed already: nothing to cancel"
                )));
            }
            FlowStatus::Cancelled => return Ok(state),
            FlowStatus::Pending | FlowStatus::Running | FlowStatus::Failed | FlowStatus::Paused => {
            }
        }
        // Not executing here: steps left running belonged to a host that is
        // gone; record them cancelled with the flow.
        for st in state.steps.values_mut() {
            if st.status == StepStatus::Running {
                st.status = StepStatus::Cancelled;
                st.completed_at = Some(Utc::now());
                let r = self
                    .inner
                    .store
                    .save_step(id, st, &FlowPatch::default())
                    .await;
                self.record(id, r);
            }
        }
        let patch = FlowPatch {
            status: Some(FlowStatus::Cancelled),
            completed_at: Some(Utc::now()),
            ..FlowPatch::default()
        };
        self.inner
            .store
            .update_flow(id, &patch)
            .await
            .map_err(RunError::Store)?;
        patch.apply(&mut state);
        self.count_finished(&state, 0.0);
        Ok(state)
    }

    /// Stops taking work, gives running steps `grace` to finish, then
    /// interrupts them; every unfinished flow is left paused. Returns how many
    /// flows were still running when the grace period ended.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.inner.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        while self.active_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.active_count();
        if left > 0 {
            tracing::warn!(
                flows = left,
                "grace period over: interrupting running steps"
            );
            self.inner.interrupt_all.cancel();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while self.active_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        left
    }

    /// Resumes, in the background, every flow left paused or running (by a
    /// host that is gone). Returns how many were found.
    pub async fn resume_interrupted(&self) -> Result<usize, RunError> {
        let mut ids = Vec::new();
        for status in [FlowStatus::Running, FlowStatus::Paused] {
            let filter = ListFilter {
                status: Some(status),
                limit: usize::MAX,
                ..ListFilter::default()
            };
            let found = self
                .inner
                .store
                .list_flows(&filter)
                .await
                .map_err(RunError::Store)?;
            ids.extend(found.into_iter().map(|s| s.flow_id));
        }
        for &id in &ids {
            let runner = self.clone();
            tokio::spawn(async move {
                match runner.resume_flow(id).await {
                    Ok(state) => {
                        tracing::info!(flow_id = %id, status = %state.status, "resumed flow finished")
                    }
                    Err(e) => tracing::warn!(flow_id = %id, error = %e, "cannot resume flow"),
                }
            });
        }
        Ok(ids.len())
    }

    /// The scheduler: runs every pending step whose dependencies completed,
    /// as many at once as are ready, until none is left to start. After a
    /// failure, a cancel or a shutdown no new step starts; the running ones
    /// are awaited. Then records the flow's final state.
    async fn drive(
        &self,
        def: &Arc<FlowDefinition>,
        mut state: FlowState,
        first: FirstAttempts,
        active: &Arc<Active>,
    ) -> FlowState {
        let clock = Instant::now();
        self.inner.metrics.flows_in_flight.inc();
        let inputs = state.inputs.as_object().cloned().unwrap_or_default();
        let mut outputs: HashMap<String, Value> = state
            .steps
            .values()
            .filter(|s| s.status == StepStatus::Completed)
            .filter_map(|s| Some((s.step_name.clone(), s.outputs.clone()?)))
            .collect();
        let mut done: BTreeSet<String> = outputs.keys().cloned().collect();
        let mut launched: HashSet<String> = HashSet::new();
        let mut failure: Option<String> = None;
        let mut running = JoinSet::new();
        loop {
            let stopping = failure.is_some()
                || active.stop.is_cancelled()
                || self.inner.draining.load(Ordering::SeqCst);
            if !stopping {
                for (index, step) in def.steps.iter().enumerate() {
                    let Some(&attempt) = first.get(&step.name) else {
                        continue;
                    };
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
                            let (runner, def, id, active) =
                                (self.clone(), def.clone(), state.flow_id, active.clone());
                            running.spawn(async move {
                                runner
                                    .run_step(id, &def, index, input, attempt, &active)
                                    .await
                            });
                        }
                        Err(e) => {
                            let mut failed = FlowStepState::pending(&step.name);
                            failed.status = StepStatus::Failed;
                            failed.attempt = attempt;
                            failed.error = Some(format!("input: {e}"));
                            let r = self
                                .inner
                                .store
                                .save_step(state.flow_id, &failed, &FlowPatch::default())
                                .await;
                            self.record(state.flow_id, r);
                            failure = Some(format!("step `{}` failed: input: {e}", step.name));
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
                    failure.get_or_insert_with(|| "internal error in a step".into());
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
                StepStatus::Failed if failure.is_none() => {
                    failure = Some(format!(
                        "step `{}` failed: {}",
                        step_state.step_name,
                        step_state.error.as_deref().unwrap_or("unknown error")
                    ));
                }
                _ => {}
            }
            state.steps.insert(step_state.step_name.clone(), step_state);
        }
        // A step that failed in an earlier run and was not retried still
        // fails the flow.
        if failure.is_none()
            && let Some(s) = state
                .steps
                .values()
                .find(|s| s.status == StepStatus::Failed)
        {
            failure = Some(format!(
                "step `{}` failed: {}",
                s.step_name,
                s.error.as_deref().unwrap_or("unknown error")
            ));
        }
        let all_done = def.steps.iter().all(|s| done.contains(&s.name));
        state.status = if active.cancelled.load(Ordering::SeqCst) {
            FlowStatus::Cancelled
        } else if failure.is_some() {
            FlowStatus::Failed
        } else if all_done {
            match def.outputs.resolve(&Scope {
                inputs: &inputs,
                outputs: &outputs,
            }) {
                Ok(v) => {
                    state.outputs = Some(v);
                    FlowStatus::Completed
                }
                Err(e) => {
                    failure = Some(format!("flow outputs: {e}"));
                    FlowStatus::Failed
                }
            }
        } else {
            FlowStatus::Paused
        };
        state.error = failure;
        let elapsed = clock.elapsed().as_secs_f64();
        let finished = state.status != FlowStatus::Paused;
        if finished {
            state.completed_at = Some(Utc::now());
            state.total_execution_time = Some(
                (Utc::now() - state.started_at)
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1e6,
            );
        }
        let patch = FlowPatch {
            status: Some(state.status),
            completed_at: state.completed_at,
            total_execution_time: state.total_execution_time,
            outputs: state.outputs.clone(),
            error: state.error.clone(),
            metadata: Some(state.metadata.clone()),
            ..FlowPatch::default()
        };
        let r = self.inner.store.update_flow(state.flow_id, &patch).await;
        self.record(state.flow_id, r);
        self.inner.metrics.flows_in_flight.dec();
        self.count_finished(&state, elapsed);
        tracing::info!(
            flow = %def.name,
            flow_id = %state.flow_id,
            status = %state.status,
            seconds = elapsed,
            "flow {}", if finished { "finished" } else { "paused" }
        );
        state
    }

    fn count_finished(&self, state: &FlowState, elapsed: f64) {
        let m = &self.inner.metrics;
        m.flow_runs
            .get_or_create(&FlowOutcome {
                flow: state.flow_name.clone(),
                outcome: state.status.to_string(),
            })
            .inc();
        if state.status == FlowStatus::Completed || state.status == FlowStatus::Failed {
            m.flow_duration
                .get_or_create(&FlowLabel {
                    flow: state.flow_name.clone(),
                })
                .observe(elapsed);
        }
    }

    /// One step: attempts under its retry policy, each saved running before
    /// the plugin call and finished after.
    async fn run_step(
        &self,
        flow_id: FlowId,
        def: &FlowDefinition,
        index: usize,
        input: Value,
        first_attempt: u32,
        active: &Active,
    ) -> FlowStepState {
        let step = &def.steps[index];
        let policy = self.inner.config.retry.with_overrides(&step.retry);
        let store = &self.inner.store;
        let labels = StepLabel {
            flow: def.name.clone(),
            step: step.name.clone(),
            plugin: step.plugin.clone(),
        };
        let id = flow_id.to_string();
        let mut st = FlowStepState::pending(&step.name);
        st.inputs = Some(input);
        st.attempt = first_attempt;
        let mut tries = 0;
        loop {
            tries += 1;
            st.status = StepStatus::Running;
            st.started_at = Some(Utc::now());
            st.completed_at = None;
            st.execution_time = None;
            let patch = FlowPatch {
                current_step: Some(step.name.clone()),
                ..FlowPatch::default()
            };
            let r = store.save_step(flow_id, &st, &patch).await;
            self.record(flow_id, r);

            let clock = Instant::now();
            let result = match self.inner.plugins.get(&step.plugin) {
                Some(plugin) => {
                    let call = Call {
                        flow_id: &id,
                        step: &step.name,
                        attempt: st.attempt,
                        config: &step.config,
                        input: st.inputs.as_ref().unwrap_or(&Value::Null),
                        timeout: step.timeout.unwrap_or(self.inner.config.step_timeout),
                        stop: &active.stop,
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
                    st.error = None;
                    "completed"
                }
                Err(PluginError::Interrupted) => {
                    if active.cancelled.load(Ordering::SeqCst) {
                        st.status = StepStatus::Cancelled;
                        st.error = Some("cancelled while running".into());
                    } else {
                        // Shutdown: this attempt runs again on resume.
                        st.status = StepStatus::Pending;
                        st.error = Some("interrupted by shutdown".into());
                    }
                    "interrupted"
                }
                Err(e) => {
                    tracing::warn!(flow_id = %flow_id, step = %step.name, plugin = %step.plugin, attempt = st.attempt, error = %e, "step attempt failed");
                    st.status = StepStatus::Failed;
                    st.error = Some(e.to_string());
                    if e.is_retryable() && tries < policy.max_attempts {
                        "retrying"
                    } else {
                        "failed"
                    }
                }
            };
            let r = store.save_step(flow_id, &st, &FlowPatch::default()).await;
            self.record(flow_id, r);
            let m = &self.inner.metrics;
            m.step_runs
                .get_or_create(&StepOutcome {
                    flow: labels.flow.clone(),
                    step: labels.step.clone(),
                    plugin: labels.plugin.clone(),
                    outcome: if outcome == "retrying" {
                        "failed"
                    } else {
                        outcome
                    }
                    .into(),
                })
                .inc();
            m.step_duration.get_or_create(&labels).observe(elapsed);
            if outcome != "retrying" {
                return st;
            }
            m.step_retries.get_or_create(&labels).inc();
            let delay = policy.delay(tries, fastrand::f64());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = active.stop.cancelled() => {
                    if active.cancelled.load(Ordering::SeqCst) {
                        st.status = StepStatus::Cancelled;
                    } else {
                        // Shutdown between attempts: the next attempt is due
                        // and runs on resume.
                        st.status = StepStatus::Pending;
                        st.attempt += 1;
                    }
                    let r = store.save_step(flow_id, &st, &FlowPatch::default()).await;
                    self.record(flow_id, r);
                    return st;
                }
            }
            st.attempt += 1;
        }
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
