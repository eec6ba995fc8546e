//! The flows executing in this process: each has a stop token (cancel,
//! shutdown, a lost lease) and a signal that its final state is recorded.
//! Shutdown drains them: no new flow or step starts, running steps get a
//! grace period, then are interrupted and their flows left paused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{FlowRunner, RunError};
use crate::observe::Event;
use crate::state::FlowId;

/// A flow executing in this process.
pub(super) struct Active {
    /// Stops the flow's running steps and backoff waits.
    pub stop: CancellationToken,
    /// Set with `stop` when a user cancelled the flow (rather than a shutdown).
    pub cancelled: AtomicBool,
    /// Set with `stop` when this host lost the flow's lease to another host,
    /// or could not record the flow: it writes nothing more for it.
    pub lost: AtomicBool,
    /// Set with `lost` when the store could not record the flow's state
    /// within the hold limit (`hold.rs`).
    pub unrecorded: AtomicBool,
    /// Becomes true when the flow's final state is recorded.
    pub finished: watch::Sender<bool>,
}

impl Active {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub fn is_unrecorded(&self) -> bool {
        self.unrecorded.load(Ordering::SeqCst)
    }
}

/// Removes a flow from the active set however its driver ends.
pub(super) struct ActiveGuard {
    runner: FlowRunner,
    id: FlowId,
    pub entry: Arc<Active>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.runner.lock_active().remove(&self.id);
        self.entry.finished.send_replace(true);
    }
}

/// What this host knows of the shared queue's length.
#[derive(Default)]
pub(super) struct Backlog {
    pub read: usize,
    pub added: usize,
    pub at: Option<Instant>,
}

impl FlowRunner {
    pub(super) fn lock_active(
        &self,
    ) -> MutexGuard<'_, std::collections::HashMap<FlowId, Arc<Active>>> {
        self.inner.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lock_backlog(&self) -> MutexGuard<'_, Backlog> {
        self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn active_count(&self) -> usize {
        self.lock_active().len()
    }

    /// True once shutdown began: no new flow or step starts.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Stops running a flow whose lease this host lost: another host runs
    /// it now. Nothing more is written for it from here (the store would
    /// refuse it anyway).
    pub fn lose(&self, id: FlowId) {
        self.observe(Event::LeaseLost);
        tracing::warn!(flow_id = %id, "lease lost: another host runs this flow now; stopping it here");
        if let Some(active) = self.lock_active().get(&id).cloned() {
            active.lost.store(true, Ordering::SeqCst);
            active.stop.cancel();
        }
    }

    /// Claims `id` for this process; fails if it is executing here already.
    pub(super) fn activate(&self, id: FlowId) -> Result<ActiveGuard, RunError> {
        if self.is_draining() {
            return Err(RunError::ShuttingDown);
        }
        let mut active = self.lock_active();
        if active.contains_key(&id) {
            return Err(RunError::Conflict(format!("flow {id} is running already")));
        }
        let entry = Arc::new(Active {
            stop: self.inner.interrupt_all.child_token(),
            cancelled: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            unrecorded: AtomicBool::new(false),
            finished: watch::channel(false).0,
        });
        active.insert(id, entry.clone());
        Ok(ActiveGuard {
            runner: self.clone(),
            id,
            entry,
        })
    }

    /// Stops taking work, gives running steps `grace` to finish, then
    /// interrupts them; every unfinished flow is left paused. Returns how many
    /// flows were still running when the grace period ended.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.wait_idle(grace, Duration::from_millis(20)).await;
        let left = self.active_count();
        if left > 0 {
            tracing::warn!(
                flows = left,
                "grace period over: interrupting running steps"
            );
            self.inner.interrupt_all.cancel();
            self.wait_idle(Duration::from_secs(5), Duration::from_millis(10))
                .await;
        }
        left
    }

    /// Waits until no flow executes here, or `limit` has passed.
    async fn wait_idle(&self, limit: Duration, every: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.active_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(every).await;
        }
    }
}
