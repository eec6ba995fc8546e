//! Leases: the fencing tokens of the flows this host holds (or lost), and
//! claiming a flow (loading it in the same script), renewing, releasing, and
//! the cancel request another host leaves for the holder. `impl StateStore`
//! delegates its lease methods here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flowhost_core::state::{Claim, FlowId, FlowState, Renewal, StoreError};

use crate::codec::{decode_flow, unavailable};
use crate::scripts::{CLAIM, RELEASE, RENEW};
use crate::store::RedisStore;

#[derive(Clone, Copy, Debug)]
struct Held {
    token: u64,
    lost: bool,
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
}

impl RedisStore {
    /// A lease's value in Redis: `OWNER TOKEN`.
    pub(crate) fn lease_value(&self, token: u64) -> String {
        format!("{} {token}", self.owner)
    }

    /// `StateStore::claim_and_load`: the `CLAIM` script, one round trip.
    pub(crate) async fn claim_lease(
        &self,
        id: FlowId,
    ) -> Result<(Claim, Option<FlowState>), StoreError> {
        type Reply = (
            i64,
            String,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
        );
        let (token, holder, header, steps): Reply = CLAIM
            .key(self.keys.flow(id))
            .key(self.keys.lease(id))
            .key(self.keys.steps(id))
            .arg(&self.owner)
            .arg(self.lease_ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let state = if token > 0 {
            Some(decode_flow(id, header, steps)?)
        } else {
            None
        };
        let claim = match token {
            -1 => Claim::HeldElsewhere(holder.split(' ').next().unwrap_or_default().to_owned()),
            -2 => Claim::Missing,
            token => {
                self.held.hold(id, token as u64);
                Claim::Granted
            }
        };
        Ok((claim, state))
    }

    /// `StateStore::request_cancel`: a header field the holder sees when it
    /// next renews the lease.
    pub(crate) async fn mark_cancel_requested(&self, id: FlowId) -> Result<(), StoreError> {
        let _: i64 = redis::cmd("HSET")
            .arg(self.keys.flow(id))
            .arg("cancel_requested")
            .arg("1")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// `StateStore::renew_claims`: one `RENEW` per lease still held.
    pub(crate) async fn renew_leases(&self) -> Result<Renewal, StoreError> {
        let held: Vec<(FlowId, u64)> = self
            .held
            .lock()
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(id, h)| (*id, h.token))
            .collect();
        let mut renewal = Renewal::default();
        for (id, token) in held {
            let renewed: i64 = RENEW
                .key(self.keys.lease(id))
                .key(self.keys.flow(id))
                .arg(self.lease_value(token))
                .arg(self.lease_ttl.as_millis() as u64)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            if renewed == 0 {
                let mut held = self.held.lock();
                // Only if it was not given up or claimed anew meanwhile.
                if let Some(h) = held.get_mut(&id).filter(|h| h.token == token && !h.lost) {
                    h.lost = true;
                    renewal.lost.push(id);
                }
            } else if renewed == 2 {
                renewal.cancel.push(id);
            }
        }
        Ok(renewal)
    }

    /// `StateStore::release`: deletes the lease if it is still this host's.
    pub(crate) async fn release_lease(&self, id: FlowId) -> Result<(), StoreError> {
        let Some(held) = self.held.lock().remove(&id) else {
            return Ok(());
        };
        if held.lost {
            return Ok(());
        }
        let _: i64 = RELEASE
            .key(self.keys.lease(id))
            .arg(self.lease_value(held.token))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
