//! Writes a flow cannot go on without: a step's start (before its plugin is
//! called) and its end (before anything that depends on it starts, and with
//! the flow's final state). While the store cannot be reached the flow is
//! held: no step starts, and the write is tried again with backoff until it
//! goes through, the flow is stopped (a cancel, a shutdown, a lost lease),
//! or the hold limit passes (the lease's life: past it, another host may take
//! the flow over). Then the flow stops here, unrecorded: it stays in the
//! store as it was last recorded, for the host that takes it over.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::FlowRunner;
use super::active::Active;
use crate::observe::Event;
use crate::state::{FlowId, FlowPatch, FlowStepState, StoreError};

/// The pause before a failed write is tried again; it doubles up to
/// `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The hold limit until a host sharing work sets its lease's life: the
/// default `queue.lease_ttl_ms`.
pub(super) const DEFAULT_HOLD_LIMIT: Duration = Duration::from_secs(15);

/// How long a held write waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hold {
    /// Until the write goes through, the hold limit, or the flow is
    /// stopped: a write that only lets more work start.
    UntilStopped,
    /// Until the write goes through or the hold limit: a write that
    /// records how a stopped flow ended.
    ToTheLimit,
}

impl FlowRunner {
    /// The longest a flow is held waiting for the store.
    pub(super) fn hold_limit(&self) -> Duration {
        Duration::from_millis(self.inner.hold_limit_ms.load(Ordering::Relaxed))
    }

    /// Sets the longest a flow is held waiting for the store: the life of
    /// this host's leases, once it shares work.
    pub(super) fn set_hold_limit(&self, limit: Duration) {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        self.inner.hold_limit_ms.store(ms, Ordering::Relaxed);
    }

    /// Writes `steps` with `patch` in one call, holding the flow while the
    /// store cannot be reached. True when written; false when the flow
    /// stopped here instead, its `stop` then cancelled so that nothing more
    /// starts: its lease was lost (a fenced write), it was stopped while held
    /// (`Hold::UntilStopped`), or the hold limit passed or the store refused
    /// the write for good (`Active::unrecorded`).
    pub(super) async fn save_held(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
        active: &Active,
        hold: Hold,
    ) -> bool {
        let mut pause = FIRST_PAUSE;
        let mut deadline = None;
        loop {
            let error = match self.inner.store.save_steps(id, steps, patch).await {
                Ok(()) => {
                    if deadline.is_some() {
                        tracing::info!(flow_id = %id, "flow state recorded again; the flow goes on");
                    }
                    return true;
                }
                Err(StoreError::Fenced(_)) => {
                    self.observe(Event::WriteFenced);
                    tracing::warn!(flow_id = %id, "state write refused: another host holds this flow's lease");
                    self.lose(id);
                    stop_here(active, false);
                    return false;
                }
                Err(e) => e,
            };
            self.observe(Event::StateWriteFailed);
            let limit = self.hold_limit();
            let deadline = *deadline.get_or_insert_with(|| {
                tracing::warn!(flow_id = %id, error = %error, hold_limit = ?limit, "cannot record the flow's state; holding it (no step starts) until the store answers");
                Instant::now() + limit
            });
            let now = Instant::now();
            if !matches!(error, StoreError::Unavailable(_)) || now >= deadline {
                tracing::error!(flow_id = %id, error = %error, "flow state not recorded; the flow stops here and stays in the store as last recorded, for the host that takes it over");
                stop_here(active, true);
                return false;
            }
            let stoppable = hold == Hold::UntilStopped;
            if stoppable && active.stop.is_cancelled() {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep(pause.min(deadline - now)) => {}
                () = active.stop.cancelled(), if stoppable => return false,
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// Stops a flow here for good: nothing more of it starts or is written by
/// this host. `unrecorded` when the store could not take its state.
fn stop_here(active: &Active, unrecorded: bool) {
    if unrecorded {
        active.unrecorded.store(true, Ordering::SeqCst);
    }
    active.lost.store(true, Ordering::SeqCst);
    active.stop.cancel();
}
