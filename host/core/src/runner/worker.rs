//! The loops of one host sharing work: take submissions from the stream up
//! to `max_running` flows at once, renew the leases of the flows it runs
//! (stopping any whose lease was lost), and take over the flows of hosts
//! that are gone: deliveries left unfinished past a lease's life, and flows
//! left running or paused without a lease. A one-off run (`flowhost run`)
//! renews its lease only. Either way, a flow is held waiting for the store
//! at most one lease's life (`hold.rs`).

use std::sync::Arc;
use std::time::Duration;

use super::{FlowRunner, RunError};
use crate::queue::{Delivery, WorkQueue};
use crate::state::{FlowId, StateStore};

/// How a host takes part in the shared work.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// Flows this host runs at once from the queue.
    pub max_running: usize,
    /// The life of a lease; renewed every third of it.
    pub lease_ttl: Duration,
    /// Pause between polls of an empty queue.
    pub poll: Duration,
    /// Whether to take over flows left without a host.
    pub reclaim: bool,
}

/// Starts the take, renew and reclaim loops; they end when the runner
/// starts draining (shutdown).
pub fn spawn(
    runner: FlowRunner,
    queue: Arc<dyn WorkQueue>,
    store: Arc<dyn StateStore>,
    settings: QueueSettings,
) {
    runner.set_hold_limit(settings.lease_ttl);
    tokio::spawn(take_loop(runner.clone(), queue.clone(), settings.clone()));
    tokio::spawn(renew_loop(runner.clone(), store, settings.lease_ttl));
    if settings.reclaim {
        tokio::spawn(reclaim_loop(runner, queue, settings));
    }
}

/// Starts the renew loop alone, for a runner that runs its own flows and
/// takes none from the queue (`flowhost run`): the leases it takes stay
/// its own for as long as it runs, however long a step takes.
pub fn spawn_renewal(runner: FlowRunner, store: Arc<dyn StateStore>, lease_ttl: Duration) {
    runner.set_hold_limit(lease_ttl);
    tokio::spawn(renew_loop(runner, store, lease_ttl));
}

fn free_slots(runner: &FlowRunner, settings: &QueueSettings) -> usize {
    settings.max_running.saturating_sub(runner.active_count())
}

async fn take_loop(runner: FlowRunner, queue: Arc<dyn WorkQueue>, settings: QueueSettings) {
    let mut failing = false;
    while !runner.is_draining() {
        let free = free_slots(&runner, &settings);
        if free == 0 {
            tokio::time::sleep(settings.poll).await;
            continue;
        }
        match queue.take(free.min(256)).await {
            Ok(deliveries) if deliveries.is_empty() => {
                failing = false;
                tokio::time::sleep(settings.poll).await;
            }
            Ok(deliveries) => {
                failing = false;
                let few = deliveries.len() < 16;
                for delivery in deliveries {
                    tokio::spawn(run_delivery(runner.clone(), queue.clone(), delivery));
                }
                // A trickle: let submissions gather for one read, rather
                // than read them one by one.
                if few {
                    tokio::time::sleep(settings.poll).await;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the work queue; retrying");
                }
                failing = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs one submission, then takes it off the stream, unless the store could
/// not be reached (then another try, here or elsewhere, comes later).
async fn run_delivery(runner: FlowRunner, queue: Arc<dyn WorkQueue>, delivery: Delivery) {
    match runner.run_claimed(delivery.flow_id).await {
        Err(RunError::Store(e)) => {
            tracing::warn!(flow_id = %delivery.flow_id, error = %e, "cannot start a queued flow; it stays queued");
            return;
        }
        Err(RunError::ShuttingDown) => return,
        Err(e) => {
            tracing::debug!(flow_id = %delivery.flow_id, error = %e, "queued flow not run here")
        }
        Ok(_) => {}
    }
    if let Err(e) = queue.done(&delivery).await {
        tracing::warn!(flow_id = %delivery.flow_id, error = %e, "cannot take a finished flow off the queue");
    }
}

async fn renew_loop(runner: FlowRunner, store: Arc<dyn StateStore>, lease_ttl: Duration) {
    let every = lease_ttl / 3;
    while !runner.is_draining() {
        tokio::time::sleep(every).await;
        match store.renew_claims().await {
            Ok(renewal) => {
                for id in renewal.lost {
                    runner.lose(id);
                }
                for id in renewal.cancel {
                    let runner = runner.clone();
                    tokio::spawn(async move {
                        tracing::info!(flow_id = %id, "cancel requested by another host");
                        if let Err(e) = runner.cancel_flow(id).await {
                            tracing::warn!(flow_id = %id, error = %e, "cannot cancel as requested");
                        }
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew leases"),
        }
    }
}

async fn reclaim_loop(runner: FlowRunner, queue: Arc<dyn WorkQueue>, settings: QueueSettings) {
    let every = settings.lease_ttl / 2;
    while !runner.is_draining() {
        let free = free_slots(&runner, &settings);
        if free > 0 {
            // Deliveries another host took and did not finish within a lease.
            match queue.reclaim_deliveries(settings.lease_ttl, free).await {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        tokio::spawn(run_delivery(runner.clone(), queue.clone(), delivery));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot reclaim deliveries"),
            }
            // Flows whose host let go of them, or died, whatever started them.
            match queue.orphans(Duration::from_secs(1), free).await {
                Ok(ids) => {
                    for id in ids {
                        tokio::spawn(take_over(runner.clone(), id));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot look for orphaned flows"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn take_over(runner: FlowRunner, id: FlowId) {
    match runner.run_claimed(id).await {
        Ok(Some(state)) => {
            tracing::info!(flow_id = %id, status = %state.status, "flow taken over from another host finished");
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(flow_id = %id, error = %e, "orphaned flow not taken over"),
    }
}
