//! The `StateStore` port: where flow and step state lives, with the leases
//! that let several hosts share it. A step write touches that step and a few
//! header fields only, so its cost does not grow with the flow's length.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{FlowId, FlowPatch, FlowState, FlowStepState, FlowSummary, ListFilter};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("flow {0} already exists")]
    AlreadyExists(FlowId),
    #[error("flow {0} not found")]
    NotFound(FlowId),
    #[error("corrupt state for flow {flow_id}: {reason}")]
    Corrupt { flow_id: String, reason: String },
    /// The write carried a fencing token that is no longer the flow's:
    /// another host took the flow over, and the write was not applied.
    #[error("flow {0}: write refused, another host holds the flow's lease now")]
    Fenced(FlowId),
}

/// What renewing this host's leases found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// Flows whose lease this host lost.
    pub lost: Vec<FlowId>,
    /// Flows another host asked this one to cancel.
    pub cancel: Vec<FlowId>,
}

/// What claiming a flow's lease found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This host holds the lease now; its writes carry the new fencing token.
    Granted,
    /// Another live host holds it (its owner id).
    HeldElsewhere(String),
    /// No such flow.
    Missing,
}

/// Where flow and step state lives. Object-safe: chosen once at start as
/// `Arc<dyn StateStore>`.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Records a new flow with all its steps.
    async fn create_flow(&self, flow: &FlowState) -> Result<(), StoreError>;
    /// Writes these steps' states and the header fields in `patch`, all in
    /// one go (one round trip, atomically where the store can).
    async fn save_steps(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
    ) -> Result<(), StoreError>;
    /// Writes one step's state and the header fields in `patch`, together.
    async fn save_step(
        &self,
        id: FlowId,
        step: &FlowStepState,
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        self.save_steps(id, &[step], patch).await
    }
    /// Writes header fields only.
    async fn update_flow(&self, id: FlowId, patch: &FlowPatch) -> Result<(), StoreError>;
    async fn get_flow(&self, id: FlowId) -> Result<Option<FlowState>, StoreError>;
    async fn list_flows(&self, filter: &ListFilter) -> Result<Vec<FlowSummary>, StoreError>;
    /// Removes a flow and its steps; false when there was none.
    async fn delete_flow(&self, id: FlowId) -> Result<bool, StoreError>;
    /// Removes the finished flows (completed, failed, cancelled) that
    /// finished before `cutoff`; returns how many.
    async fn prune(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Brings the status indexes in line with the flows' headers: a line in
    /// the index of a status its flow is no longer in moves to the right
    /// index, a line whose flow is gone is dropped. For stores whose indexes
    /// can fall out of step (a Redis Cluster, where they are written after
    /// the flow, command by command); `prune` does it first. Returns how many
    /// lines it fixed.
    async fn repair_indexes(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Removes the finished flows that finished longer than `age` ago.
    async fn prune_older_than(&self, age: std::time::Duration) -> Result<u64, StoreError> {
        // An age too large to represent prunes nothing.
        let cutoff = chrono::Duration::from_std(age)
            .ok()
            .and_then(|age| Utc::now().checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.prune(cutoff).await
    }
    /// Takes the lease on a flow for this host. Until it is lost or given up,
    /// this host's writes to the flow carry the lease's fencing token, and a
    /// store shared by several hosts refuses them (`Fenced`) once another
    /// host has taken the lease over. A flow created `running` is leased to
    /// its creator; a write that leaves a flow finished or paused gives the
    /// lease up. Stores that serve one host grant every claim.
    async fn claim(&self, id: FlowId) -> Result<Claim, StoreError> {
        let _ = id;
        Ok(Claim::Granted)
    }
    /// `claim`, and when granted the flow's state as of the claim (one round
    /// trip where the store can).
    async fn claim_and_load(&self, id: FlowId) -> Result<(Claim, Option<FlowState>), StoreError> {
        match self.claim(id).await? {
            Claim::Granted => Ok((Claim::Granted, self.get_flow(id).await?)),
            other => Ok((other, None)),
        }
    }
    /// Renews every lease this host holds; returns the flows whose lease was
    /// lost (expired and taken, or the flow gone), and those another host
    /// asked to cancel.
    async fn renew_claims(&self) -> Result<Renewal, StoreError> {
        Ok(Renewal::default())
    }
    /// Asks the host that holds a flow's lease to cancel the flow; it sees
    /// the request when it next renews the lease.
    async fn request_cancel(&self, id: FlowId) -> Result<(), StoreError> {
        let _ = id;
        Ok(())
    }
    /// Gives up this host's lease on a flow, if it holds one.
    async fn release(&self, id: FlowId) -> Result<(), StoreError> {
        let _ = id;
        Ok(())
    }
    /// Maps an idempotency key to a flow for `ttl`, unless it maps to one
    /// already: then returns that flow and changes nothing.
    async fn remember_key(
        &self,
        key: &str,
        id: FlowId,
        ttl: std::time::Duration,
    ) -> Result<Option<FlowId>, StoreError>;
    /// Gives an idempotency key back: removes it if it still maps to `id`
    /// (a request refused after `remember_key` leaves no trace), and leaves
    /// it alone when it maps to another flow or to none. True when removed.
    async fn forget_key(&self, key: &str, id: FlowId) -> Result<bool, StoreError>;
    /// Short name of the backend that serves requests now.
    fn backend(&self) -> &'static str;
    /// True while the store runs on a fallback instead of its configured
    /// backend (Redis configured but unreachable).
    fn degraded(&self) -> bool {
        false
    }
}
