//! The fencing tokens of the leases this host holds (or lost), by flow: the
//! token every write of this host to a flow carries, which Redis checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flowhost_core::state::FlowId;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    pub token: u64,
    pub lost: bool,
}

/// The fencing token of every lease this host holds or lost, by flow.
/// A lost lease stays here, so that this host's later writes to the flow
/// still carry its (old) token and are refused, until it lets go.
#[derive(Clone, Default)]
pub(crate) struct HeldLeases(Arc<Mutex<HashMap<FlowId, Held>>>);

impl HeldLeases {
    fn lock(&self) -> MutexGuard<'_, HashMap<FlowId, Held>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a lease just taken with `token`.
    pub(crate) fn hold(&self, id: FlowId, token: u64) {
        self.lock().insert(id, Held { token, lost: false });
    }

    /// The token this host's writes to the flow carry, if it holds (or lost)
    /// the flow's lease.
    pub(crate) fn token(&self, id: FlowId) -> Option<u64> {
        self.lock().get(&id).map(|h| h.token)
    }

    /// Marks the lease lost: a write carrying its token was refused.
    pub(crate) fn mark_lost(&self, id: FlowId) {
        if let Some(held) = self.lock().get_mut(&id) {
            held.lost = true;
        }
    }

    /// Forgets the lease: it was given up.
    pub(crate) fn forget(&self, id: FlowId) {
        self.lock().remove(&id);
    }

    /// The leases still held (not lost), with their tokens.
    pub(crate) fn live(&self) -> Vec<(FlowId, u64)> {
        self.lock()
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(id, h)| (*id, h.token))
            .collect()
    }

    /// Marks the lease lost if it is still the one taken with `token` (not
    /// given up or claimed anew meanwhile); true when it was.
    pub(crate) fn lose_if_current(&self, id: FlowId, token: u64) -> bool {
        let mut held = self.lock();
        match held.get_mut(&id).filter(|h| h.token == token && !h.lost) {
            Some(h) => {
                h.lost = true;
                true
            }
            None => false,
        }
    }

    /// Forgets the lease and returns what was held.
    pub(crate) fn take(&self, id: FlowId) -> Option<Held> {
        self.lock().remove(&id)
    }
}
