//! Continuing a stored run: a user's resume (every step that did not
//! complete), a user's retry of one failed step, and a run claimed from the
//! queue or taken over from a host that is gone. Each claims the flow's lease
//! and loads it in one call, then hands it to the scheduler.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::active::ActiveGuard;
use super::schedule::Opening;
use super::{FlowRunner, RunError};
use crate::flow::FlowDefinition;
use crate::observe::Event;
use crate::state::{
    Claim, FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, ListFilter, StepStatus,
};

/// Why a stored flow is continued.
#[derive(Clone, Copy, Debug)]
pub(super) enum Restart<'a> {
    /// A user's resume: every step that did not complete runs.
    Resume,
    /// A user's retry of one failed step.
    Retry(&'a str),
    /// Taken from the queue, or over from a host that is gone.
    Claimed,
}

/// How a run of the scheduler begins: for a new flow every step is pending;
/// for a resumed one, completed steps are kept and the others start at the
/// attempt numbers given here.
pub(super) type FirstAttempts = HashMap<String, u32>;

impl FlowRunner {
    /// Continues a failed, paused or interrupted flow from the steps that did
    /// not complete. Completed steps keep their state and output.
    pub async fn resume_flow(&self, id: FlowId) -> Result<FlowState, RunError> {
        self.detached(|r| async move {
            r.restart(id, Restart::Resume)
                .await
                .map(|s| s.expect("a resume always runs"))
        })
        .await
    }

    /// Resets one failed step and continues the flow from it.
    pub async fn retry_step(&self, id: FlowId, step: &str) -> Result<FlowState, RunError> {
        let step = step.to_owned();
        self.detached(|r| async move {
            r.restart(id, Restart::Retry(&step))
                .await
                .map(|s| s.expect("a retry always runs"))
        })
        .await
    }

    /// Runs a flow taken from the shared queue, or left without a host:
    /// claims its lease and continues it from its last completed step. A
    /// flow that finished or failed is left as it is (`None`).
    pub async fn run_claimed(&self, id: FlowId) -> Result<Option<FlowState>, RunError> {
        self.detached(|r| async move { r.restart(id, Restart::Claimed).await })
            .await
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

    /// Marks `id` executing here and claims its lease, loading the flow with
    /// the claim: nothing else on this host or another can start it
    /// meanwhile.
    pub(super) async fn claim_here(
        &self,
        id: FlowId,
    ) -> Result<(ActiveGuard, Claim, Option<FlowState>), RunError> {
        let guard = self.activate(id)?;
        let (claim, state) = self
            .inner
            .store
            .claim_and_load(id)
            .await
            .map_err(RunError::Store)?;
        Ok((guard, claim, state))
    }

    /// A stored flow, or `NotFound`.
    pub(super) async fn stored(&self, id: FlowId) -> Result<FlowState, RunError> {
        self.inner
            .store
            .get_flow(id)
            .await
            .map_err(RunError::Store)?
            .ok_or(RunError::NotFound(id))
    }

    /// Claims a flow's lease for this host and continues the flow. `Claimed`
    /// runs (from the queue, or taken over) leave a finished or failed flow
    /// alone and return `None`; a resume or retry says why it cannot run.
    async fn restart(&self, id: FlowId, how: Restart<'_>) -> Result<Option<FlowState>, RunError> {
        let (guard, claim, state) = self.claim_here(id).await?;
        match claim {
            Claim::Granted => {}
            Claim::HeldElsewhere(owner) => {
                return Err(RunError::Conflict(format!(
                    "flow {id} is running on another host ({owner})"
                )));
            }
            Claim::Missing => return Err(RunError::NotFound(id)),
        }
        let result = match state {
            Some(state) => self.restart_claimed(state, how, &guard).await,
            None => Err(RunError::NotFound(id)),
        };
        if !matches!(result, Ok(Some(_))) {
            // Not run after all: let the lease go at once.
            if let Err(e) = self.inner.store.release(id).await {
                tracing::debug!(flow_id = %id, error = %e, "cannot release a lease");
            }
        }
        result
    }

    async fn restart_claimed(
        &self,
        mut state: FlowState,
        how: Restart<'_>,
        guard: &ActiveGuard,
    ) -> Result<Option<FlowState>, RunError> {
        let Some(def) = self.restartable(&state, how)? else {
            return Ok(None);
        };
        let was = state.status;
        let first = first_attempts(&def, &mut state, how);
        state.status = FlowStatus::Running;
        state.completed_at = None;
        state.total_execution_time = None;
        state.outputs = None;
        state.error = None;
        // A queued run starting for the first time is no resume.
        if was != FlowStatus::Pending {
            let resumes = state
                .metadata
                .get("resumes")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            state
                .metadata
                .insert("resumes".into(), (resumes + 1).into());
            if matches!(how, Restart::Claimed) {
                self.observe(Event::FlowReclaimed);
            }
            tracing::info!(flow = %def.name, flow_id = %state.flow_id, steps = first.len(), "flow resumed");
        }
        // Recorded with the first steps' running states, in one write.
        let patch = FlowPatch {
            status: Some(FlowStatus::Running),
            metadata: Some(state.metadata.clone()),
            clear_result: true,
            ..FlowPatch::default()
        };
        self.drive(&def, state, first, &guard.entry, Opening::Patch(patch))
            .await
            .map(Some)
    }

    /// The definition to continue `state` with, `None` when a claimed run
    /// has nothing left to do, or why it cannot continue.
    fn restartable(
        &self,
        state: &FlowState,
        how: Restart<'_>,
    ) -> Result<Option<Arc<FlowDefinition>>, RunError> {
        let id = state.flow_id;
        match (state.status, how) {
            (
                FlowStatus::Completed | FlowStatus::Cancelled | FlowStatus::Failed,
                Restart::Claimed,
            ) => return Ok(None),
            (FlowStatus::Completed | FlowStatus::Cancelled, _) => {
                return Err(RunError::Conflict(format!(
                    "flow {id} is {}: only a failed, paused or interrupted flow can continue",
                    state.status
                )));
            }
            (
                FlowStatus::Pending | FlowStatus::Running | FlowStatus::Failed | FlowStatus::Paused,
                _,
            ) => {}
        }
        let def = self.inner.flows.get(&state.flow_name).ok_or_else(|| {
            RunError::Conflict(format!(
                "flow definition `{}` is not loaded, so run {id} cannot continue",
                state.flow_name
            ))
        })?;
        if let Restart::Retry(name) = how {
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
        Ok(Some(def))
    }
}

/// The steps to run and the attempt each starts at; those steps are reset
/// to pending in `state`.
fn first_attempts(def: &FlowDefinition, state: &mut FlowState, how: Restart<'_>) -> FirstAttempts {
    let only_step = match how {
        Restart::Retry(step) => Some(step),
        Restart::Resume | Restart::Claimed => None,
    };
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
            StepStatus::Running | StepStatus::Pending | StepStatus::Completed => st.attempt.max(1),
            StepStatus::Failed | StepStatus::Cancelled => st.attempt + 1,
        };
        st.status = StepStatus::Pending;
        first.insert(step.name.clone(), next);
    }
    first
}
