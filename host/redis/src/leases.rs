//! Leases: claiming a flow (loading it in the same script), renewing,
//! releasing, and the cancel request another host leaves for the holder.
//! `impl StateStore` delegates its lease methods here; the tokens held are
//! in `fencing`.

use flowhost_core::state::{Claim, FlowId, FlowState, Renewal, StoreError};

use crate::codec::{Fields, decode_flow, unavailable};
use crate::scripts::{CLAIM, DELETE_IF, RENEW};
use crate::store::RedisStore;

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
        type Reply = (i64, String, Fields, Fields);
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
        let held = self.held.live();
        let mut renewal = Renewal::default();
        for (id, token) in held {
            let renewed: i64 = RENEW
                .key(self.keys.lease(id))
                .key(self.keys.flow(id))
                .arg(self.lease_value(token))
                .arg(self.lease_ttl.as_millis() as u64)
                .arg(token)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            if renewed == 0 {
                if self.held.lose_if_current(id, token) {
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
        let Some(held) = self.held.take(id) else {
            return Ok(());
        };
        if held.lost {
            return Ok(());
        }
        let _: i64 = DELETE_IF
            .key(self.keys.lease(id))
            .arg(self.lease_value(held.token))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
