//! Work shared by several hosts through Redis: background runs are submitted
//! to a stream read by one consumer group (the store queues a flow created
//! `pending`, in the same script on one server), a host runs a flow only under a
//! lease (claimed, renewed, fenced: see `StateStore::claim`), and the flows
//! of a host that died or shut down are taken over by the others.
//!
//! `WorkQueue` is the port; the Redis crate implements it. The loops each
//! host runs over it (take, renew, reclaim) are `runner::worker`.

use std::time::Duration;

use async_trait::async_trait;

use crate::state::{FlowId, StoreError};

/// One delivery of a submitted run from the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The queue's own id of the entry.
    pub entry: String,
    pub flow_id: FlowId,
}

#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// True when runs are shared through Redis (false: one host, memory).
    fn shared(&self) -> bool;
    /// Submitted runs not finished yet, across all hosts.
    async fn backlog(&self) -> Result<u64, StoreError>;
    /// Up to `max` submissions for this host.
    async fn take(&self, max: usize) -> Result<Vec<Delivery>, StoreError>;
    /// Submissions another host was given and has not finished for
    /// `min_idle`, now given to this host.
    async fn reclaim_deliveries(
        &self,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Removes a submission that was run (or that needs no run).
    async fn done(&self, delivery: &Delivery) -> Result<(), StoreError>;
    /// Flows left running or paused, for longer than `idle`, by a host that
    /// no longer holds their lease.
    async fn orphans(&self, idle: Duration, max: usize) -> Result<Vec<FlowId>, StoreError>;
}
