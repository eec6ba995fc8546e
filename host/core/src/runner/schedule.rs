//! The scheduler: runs every pending step whose dependencies completed, as
//! many at once as are ready, until none is left to start. After a failure,
//! a cancel or a shutdown no new step starts; the running ones are awaited.
//! Then it records the flow's final state.
//!
//! Step states to record are written together with the next ones: a
//! finished step and the steps it lets start share one round trip, and the
//! last one shares it with the flow's final state. A step is still recorded
//! running before its plugin is called, and finished before anything that
//! depends on it starts: while the store cannot take a write the flow is
//! held (`hold.rs`), and a write that never went through leaves its steps
//! to write with the next one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::active::Active;
use super::hold::Hold;
use super::restart::FirstAttempts;
use super::{FlowRunner, RunError};
use crate::blob::BlobError;
use crate::flow::{FlowDefinition, Scope};
use crate::observe::Event;
use crate::state::{
    FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, StepStatus, StoreError,
};

/// How the scheduler records a run's start: by creating the flow with its
/// first steps, or by writing this header patch with them.
pub(super) enum Opening {
    Create,
    Patch(FlowPatch),
}

/// What one run of the scheduler knows as it goes.
struct Progress {
    inputs: Map<String, Value>,
    /// Outputs of the completed steps, by step name.
    outputs: HashMap<String, Value>,
    done: BTreeSet<String>,
    launched: HashSet<String>,
    /// Why the flow fails, once a step failed.
    failure: Option<String>,
    /// Step states not written yet.
    unwritten: Vec<FlowStepState>,
    /// The flow is not recorded yet: its first write creates it.
    create: bool,
    /// The header patch that goes with the first write.
    opening: Option<FlowPatch>,
}

impl Progress {
    /// From the run's `inputs` and completed steps' `outputs`, their
    /// offloaded values put back (`FlowRunner::scope_of`).
    fn new((inputs, outputs): Values, opening: Opening) -> Self {
        let (create, opening) = match opening {
            Opening::Create => (true, None),
            Opening::Patch(patch) => (false, Some(patch)),
        };
        Progress {
            inputs,
            done: outputs.keys().cloned().collect(),
            outputs,
            launched: HashSet::new(),
            failure: None,
            unwritten: Vec::new(),
            create,
            opening,
        }
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            inputs: &self.inputs,
            outputs: &self.outputs,
        }
    }

    /// Takes in a step's final state (and, for a completed step, its output
    /// with offloaded values put back).
    fn absorb(&mut self, state: &mut FlowState, (step_state, output): Finished) {
        state.current_step = Some(step_state.step_name.clone());
        match step_state.status {
            StepStatus::Completed => {
                self.done.insert(step_state.step_name.clone());
                let out = output.unwrap_or(Value::Null);
                self.outputs.insert(step_state.step_name.clone(), out);
            }
            StepStatus::Failed if self.failure.is_none() => {
                self.failure = Some(failure_of(&step_state));
            }
            _ => {}
        }
        self.unwritten.push(step_state.clone());
        state.steps.insert(step_state.step_name.clone(), step_state);
    }
}

fn failure_of(step: &FlowStepState) -> String {
    format!(
        "step `{}` failed: {}",
        step.step_name,
        step.error.as_deref().unwrap_or("unknown error")
    )
}

/// A step's final state as recorded, and its whole output when it completed.
pub(super) type Finished = (FlowStepState, Option<Value>);

/// A run's inputs and its completed steps' outputs, offloaded values put back.
type Values = (Map<String, Value>, HashMap<String, Value>);

/// A step ready to start: its index, its state (recorded running, large
/// input values offloaded), and its whole input.
pub(super) type Ready = (usize, FlowStepState, Value);

type Running = JoinSet<Finished>;

impl FlowRunner {
    /// Runs `state` from the steps in `first` to its end, and records it.
    pub(super) async fn drive(
        &self,
        def: &Arc<FlowDefinition>,
        state: FlowState,
        first: FirstAttempts,
        active: &Arc<Active>,
        opening: Opening,
    ) -> Result<FlowState, RunError> {
        // Every log line of the flow, its steps' and plugins' included,
        // carries the flow's name and id.
        let span = tracing::info_span!("flow", flow = %def.name, flow_id = %state.flow_id);
        self.observe(Event::FlowStarted { flow: &def.name });
        let id = state.flow_id;
        let result = self
            .drive_in_span(def, state, first, active, opening)
            .instrument(span)
            .await;
        self.observe(Event::FlowLeft);
        if active.is_lost() {
            // Forget the lost lease: this host is done with the flow.
            if let Err(e) = self.inner.store.release(id).await {
                tracing::debug!(flow_id = %id, error = %e, "cannot let go of a lost lease");
            }
        }
        result
    }

    async fn drive_in_span(
        &self,
        def: &Arc<FlowDefinition>,
        mut state: FlowState,
        first: FirstAttempts,
        active: &Arc<Active>,
        opening: Opening,
    ) -> Result<FlowState, RunError> {
        let clock = Instant::now();
        let values = match self.scope_of(&state).await {
            Ok(values) => values,
            Err(e) => {
                let mut progress = Progress::new(Values::default(), opening);
                progress.failure = Some(format!("cannot read a value kept as a blob: {e}"));
                return self.finish(def, state, progress, active, clock).await;
            }
        };
        let mut progress = Progress::new(values, opening);
        let mut running = Running::new();
        loop {
            let stopping = progress.failure.is_some()
                || active.stop.is_cancelled()
                || self.inner.draining.load(Ordering::SeqCst);
            let to_start = if stopping {
                Vec::new()
            } else {
                let ready = ready_steps(def, &first, &mut progress, &mut state);
                self.kept_inputs(state.flow_id, ready, &mut progress).await
            };
            if running.is_empty() && to_start.is_empty() {
                break;
            }
            let current = to_start.last().map(|(i, _, _)| def.steps[*i].name.clone());
            // When the write does not go through, the flow is stopped: the
            // steps in `to_start` end at once, uncalled (see `run_step`).
            self.write_progress(&mut progress, &mut state, current, active)
                .await?;
            let Some(step_state) = self
                .next_finished(def, &state, to_start, &mut running, active)
                .await
            else {
                break;
            };
            match step_state {
                Ok(step_state) => progress.absorb(&mut state, step_state),
                Err(e) => {
                    // A panicking step task is a host bug; fail the flow, not the host.
                    tracing::error!(flow_id = %state.flow_id, error = %e, "step task panicked");
                    progress
                        .failure
                        .get_or_insert_with(|| "internal error in a step".into());
                }
            }
        }
        self.finish(def, state, progress, active, clock).await
    }

    /// Writes the step states not written yet, with the opening patch; the
    /// first write of a new flow creates it. A write held until the flow
    /// stopped leaves them for the next one.
    async fn write_progress(
        &self,
        progress: &mut Progress,
        state: &mut FlowState,
        current: Option<String>,
        active: &Active,
    ) -> Result<(), RunError> {
        if progress.create {
            // A new flow is created with its first steps already running.
            let mut snapshot = state.clone();
            for st in progress.unwritten.drain(..) {
                snapshot.steps.insert(st.step_name.clone(), st);
            }
            snapshot.current_step = current;
            self.create(&mut snapshot).await?;
            state.metadata = snapshot.metadata;
            progress.create = false;
        } else if !progress.unwritten.is_empty() || progress.opening.is_some() {
            let mut patch = progress.opening.clone().unwrap_or_default();
            patch.current_step = current.or(patch.current_step);
            let id = state.flow_id;
            let unwritten = &mut progress.unwritten;
            if self
                .save_unwritten(id, unwritten, &patch, active, Hold::UntilStopped)
                .await
            {
                progress.opening = None;
            }
        }
        Ok(())
    }

    /// Starts `to_start` and waits for the next step to finish; `None` when
    /// nothing runs. A lone step (a chain, say) runs in this task: no spawn
    /// and no wake-up between tasks.
    async fn next_finished(
        &self,
        def: &Arc<FlowDefinition>,
        state: &FlowState,
        mut to_start: Vec<Ready>,
        running: &mut Running,
        active: &Arc<Active>,
    ) -> Option<Result<Finished, tokio::task::JoinError>> {
        if running.is_empty() && to_start.len() == 1 {
            let (index, st, input) = to_start.remove(0);
            let span = tracing::info_span!("step", step = %def.steps[index].name);
            let done = self
                .run_step(state.flow_id, def, index, (st, input), active)
                .instrument(span)
                .await;
            return Some(Ok(done));
        }
        for (index, st, input) in to_start {
            let (runner, def, id, active) =
                (self.clone(), def.clone(), state.flow_id, active.clone());
            let span = tracing::info_span!("step", step = %def.steps[index].name);
            running.spawn(
                async move { runner.run_step(id, &def, index, (st, input), &active).await }
                    .instrument(span),
            );
        }
        running.join_next().await
    }

    /// Decides the flow's final status (completed, failed, cancelled, or
    /// paused when steps are left), records it with the last step states,
    /// and reports it.
    async fn finish(
        &self,
        def: &FlowDefinition,
        mut state: FlowState,
        mut progress: Progress,
        active: &Active,
        clock: Instant,
    ) -> Result<FlowState, RunError> {
        // A step that failed in an earlier run and was not retried still
        // fails the flow.
        if progress.failure.is_none()
            && let Some(s) = state
                .steps
                .values()
                .find(|s| s.status == StepStatus::Failed && def.step(&s.step_name).is_some())
        {
            progress.failure = Some(failure_of(s));
        }
        let all_done = def.steps.iter().all(|s| progress.done.contains(&s.name));
        state.status = if active.is_cancelled() {
            FlowStatus::Cancelled
        } else if progress.failure.is_some() {
            FlowStatus::Failed
        } else if all_done {
            match def.outputs.resolve(&progress.scope()) {
                Ok(v) => {
                    state.outputs = Some(self.keep(state.flow_id, v).await);
                    FlowStatus::Completed
                }
                Err(e) => {
                    progress.failure = Some(format!("flow outputs: {e}"));
                    FlowStatus::Failed
                }
            }
        } else {
            FlowStatus::Paused
        };
        state.error = progress.failure.take();
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
        if !active.is_lost() {
            // A host that lost the lease writes nothing more: the flow is
            // another host's now.
            self.write_end(&mut state, &mut progress, active).await?;
        }
        if active.is_unrecorded() {
            return Err(unrecorded(state.flow_id, self.hold_limit()));
        }
        self.count_finished(&state, elapsed);
        tracing::info!(
            flow = %def.name,
            flow_id = %state.flow_id,
            status = %state.status,
            seconds = elapsed,
            "flow {}", if finished { "finished" } else { "paused" }
        );
        Ok(state)
    }

    /// The final write: the flow's end with the step states not written yet
    /// (or the whole flow, when no step ever started).
    async fn write_end(
        &self,
        state: &mut FlowState,
        progress: &mut Progress,
        active: &Active,
    ) -> Result<(), RunError> {
        if progress.create {
            return self.create(state).await;
        }
        let patch = FlowPatch {
            status: Some(state.status),
            completed_at: state.completed_at,
            total_execution_time: state.total_execution_time,
            outputs: state.outputs.clone(),
            error: state.error.clone(),
            metadata: Some(state.metadata.clone()),
            // An opening never written (no step was left to start) still
            // clears the result of the run before.
            clear_result: progress.opening.as_ref().is_some_and(|o| o.clear_result),
            ..FlowPatch::default()
        };
        let unwritten = &mut progress.unwritten;
        self.save_unwritten(state.flow_id, unwritten, &patch, active, Hold::ToTheLimit)
            .await;
        Ok(())
    }

    /// Writes the step states not written yet (the latest of each step) with
    /// `patch`, in one call held as `hold` says; they are kept for the next
    /// write unless it went through. True when written.
    async fn save_unwritten(
        &self,
        id: FlowId,
        unwritten: &mut Vec<FlowStepState>,
        patch: &FlowPatch,
        active: &Active,
        hold: Hold,
    ) -> bool {
        let mut seen = HashSet::new();
        let mut batch: Vec<&FlowStepState> = unwritten
            .iter()
            .rev()
            .filter(|s| seen.insert(s.step_name.as_str()))
            .collect();
        batch.reverse();
        let written = self.save_held(id, &batch, patch, active, hold).await;
        if written {
            unwritten.clear();
        }
        written
    }

    /// The run's inputs and its completed steps' outputs, offloaded values
    /// put back: what templates resolve against.
    async fn scope_of(&self, state: &FlowState) -> Result<Values, BlobError> {
        let inputs = match self.expand(&state.inputs).await? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let mut outputs = HashMap::new();
        for s in state.steps.values() {
            if s.status == StepStatus::Completed {
                let out = s.outputs.as_ref().unwrap_or(&Value::Null);
                outputs.insert(s.step_name.clone(), self.expand(out).await?);
            }
        }
        Ok((inputs, outputs))
    }

    /// The ready steps with their inputs as recorded (large values
    /// offloaded), queued for writing.
    async fn kept_inputs(
        &self,
        id: FlowId,
        ready: Vec<Ready>,
        progress: &mut Progress,
    ) -> Vec<Ready> {
        let mut out = Vec::with_capacity(ready.len());
        for (index, mut st, input) in ready {
            st.inputs = Some(self.keep(id, input.clone()).await);
            progress.unwritten.push(st.clone());
            out.push((index, st, input));
        }
        out
    }

    /// Reports a run recorded finished (or paused).
    pub(super) fn count_finished(&self, state: &FlowState, elapsed: f64) {
        self.observe(Event::FlowEnded {
            flow: &state.flow_name,
            status: state.status,
            seconds: elapsed,
        });
    }
}

/// Why a run stopped here without its end recorded.
fn unrecorded(id: FlowId, limit: std::time::Duration) -> RunError {
    RunError::Store(StoreError::Unavailable(
        format!(
            "flow {id}: the state store did not take its state within {limit:?}; the run \
             stopped here and continues, from its state as last recorded, on the host that \
             takes it over"
        )
        .into(),
    ))
}

/// The steps ready to start: pending in `first`, not launched, every
/// dependency done. Each is returned running with its whole input (for
/// `kept_inputs` to queue for writing); a step whose input cannot be
/// resolved fails the flow instead.
fn ready_steps(
    def: &FlowDefinition,
    first: &FirstAttempts,
    progress: &mut Progress,
    state: &mut FlowState,
) -> Vec<Ready> {
    let mut to_start = Vec::new();
    for (index, step) in def.steps.iter().enumerate() {
        let Some(&attempt) = first.get(&step.name) else {
            continue;
        };
        if progress.launched.contains(&step.name) || !step.depends_on.is_subset(&progress.done) {
            continue;
        }
        progress.launched.insert(step.name.clone());
        let mut st = FlowStepState::pending(&step.name);
        st.attempt = attempt;
        match step.input.resolve(&progress.scope()) {
            Ok(input) => {
                st.status = StepStatus::Running;
                st.started_at = Some(Utc::now());
                to_start.push((index, st, input));
            }
            Err(e) => {
                st.status = StepStatus::Failed;
                st.error = Some(format!("input: {e}"));
                progress.failure = Some(format!("step `{}` failed: input: {e}", step.name));
                progress.unwritten.push(st.clone());
                state.steps.insert(step.name.clone(), st);
                break;
            }
        }
    }
    to_start
}
