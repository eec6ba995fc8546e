//! Cancelling a run: one executing here is stopped through its token; one
//! stored is claimed and recorded cancelled; one another live host runs is
//! asked, through the store, to cancel where it runs.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::{FlowRunner, RunError};
use crate::state::{Claim, FlowId, FlowPatch, FlowState, FlowStatus, StepStatus};

impl FlowRunner {
    /// Cancels a flow: a running one stops its steps (within about one epoch
    /// tick) and starts no more; a stopped one is marked cancelled. Returns
    /// the state it was left in.
    pub async fn cancel_flow(&self, id: FlowId) -> Result<FlowState, RunError> {
        self.detached(|r| async move { r.cancel_here(id).await })
            .await
    }

    async fn cancel_here(&self, id: FlowId) -> Result<FlowState, RunError> {
        let active = self.lock_active().get(&id).cloned();
        if let Some(active) = active {
            let mut finished = active.finished.subscribe();
            active
                .cancelled
                .store(true, std::sync::atomic::Ordering::SeqCst);
            active.stop.cancel();
            // The driver records the final state, then flips `finished`.
            let stopped = tokio::time::timeout(Duration::from_secs(10), finished.wait_for(|f| *f))
                .await
                .is_ok();
            let state = self.stored(id).await?;
            return match (stopped, state.status) {
                (true, FlowStatus::Cancelled) => Ok(state),
                (true, status) => Err(RunError::Conflict(format!(
                    "flow {id} ended {status} before the cancel took effect"
                ))),
                (false, _) => Err(RunError::Internal(format!(
                    "flow {id} did not stop within 10 s of the cancel"
                ))),
            };
        }
        // Claim the flow so that a resume cannot start it meanwhile, here or
        // on another host; a flow another live host runs is cancelled there.
        let (guard, claim, state) = self.claim_here(id).await?;
        let state = match (claim, state) {
            (Claim::Granted, Some(state)) => state,
            (Claim::HeldElsewhere(owner), _) => {
                drop(guard);
                return self.cancel_elsewhere(id, &owner).await;
            }
            (Claim::Granted | Claim::Missing, _) => return Err(RunError::NotFound(id)),
        };
        let result = self.cancel_claimed(state).await;
        // The cancelled state gave the lease up; any other outcome does here.
        if let Err(e) = self.inner.store.release(id).await {
            tracing::debug!(flow_id = %id, error = %e, "cannot release a lease");
        }
        drop(guard);
        result
    }

    /// A flow that another live host runs: asks that host, through the
    /// store, to cancel it (it sees the request when it next renews its
    /// lease), then waits for the flow to be recorded cancelled.
    async fn cancel_elsewhere(&self, id: FlowId, owner: &str) -> Result<FlowState, RunError> {
        self.inner
            .store
            .request_cancel(id)
            .await
            .map_err(RunError::Store)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = self.stored(id).await?;
            match state.status {
                FlowStatus::Cancelled => return Ok(state),
                FlowStatus::Completed | FlowStatus::Failed => {
                    return Err(RunError::Conflict(format!(
                        "flow {id} ended {} on host {owner} before the cancel took effect",
                        state.status
                    )));
                }
                FlowStatus::Pending | FlowStatus::Running | FlowStatus::Paused => {}
            }
            if Instant::now() > deadline {
                return Err(RunError::Internal(format!(
                    "host {owner} did not cancel flow {id} within 30 s of the request"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cancels a flow claimed here, as loaded with its claim.
    async fn cancel_claimed(&self, mut state: FlowState) -> Result<FlowState, RunError> {
        let id = state.flow_id;
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
}
