//! `RedisStore`: flow state in Redis behind the `StateStore` port, its
//! configuration and its connect. The trait impl here delegates writes to
//! `write`, listings and pruning to `index`, and leases to `leases`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowhost_core::state::{
    Claim, FlowId, FlowPatch, FlowState, FlowStepState, FlowSummary, ListFilter, Renewal,
    StateStore, StoreError,
};

use crate::codec::{Fields, decode_flow, parse_flow_id, unavailable};
pub use crate::config::RedisStoreConfig;
use crate::conn::Conn;
use crate::fencing::HeldLeases;
use crate::keys::{ALL_STATUSES, Keys};
use crate::scripts;

#[derive(Clone)]
pub struct RedisStore {
    pub(crate) conn: Conn,
    pub(crate) keys: Keys,
    pub(crate) retention: Option<Duration>,
    pub(crate) owner: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) held: HeldLeases,
    /// State values longer than this are stored compressed (0: none).
    pub(crate) compress_min: usize,
}

impl RedisStore {
    /// Connects once and fails when Redis cannot be reached now; afterwards
    /// the connection manager reconnects by itself.
    pub async fn connect(config: &RedisStoreConfig) -> Result<Self, StoreError> {
        let store = RedisStore {
            conn: Conn::connect(config).await?,
            keys: Keys::new(&config.key_prefix),
            retention: config.retention,
            owner: config.owner.clone(),
            lease_ttl: config.lease_ttl,
            held: HeldLeases::default(),
            compress_min: config.compress_min_bytes,
        };
        store.ping().await?;
        store.ensure_group().await?;
        // Loaded up front, so that no request pays for sending a script.
        for script in scripts::all() {
            script
                .load_async(&mut store.conn.clone())
                .await
                .map_err(unavailable)?;
        }
        Ok(store)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn create_flow(&self, flow: &FlowState) -> Result<(), StoreError> {
        self.create(flow).await
    }

    async fn save_steps(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        self.write(id, steps, patch).await
    }

    async fn update_flow(&self, id: FlowId, patch: &FlowPatch) -> Result<(), StoreError> {
        if patch.is_empty() {
            return Ok(());
        }
        self.write(id, &[], patch).await
    }

    async fn get_flow(&self, id: FlowId) -> Result<Option<FlowState>, StoreError> {
        let (header, steps): (Fields, Fields) = redis::pipe()
            .hgetall(self.keys.flow(id))
            .hgetall(self.keys.steps(id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if header.is_empty() {
            return Ok(None);
        }
        decode_flow(id, header, steps).map(Some)
    }

    async fn list_flows(&self, filter: &ListFilter) -> Result<Vec<FlowSummary>, StoreError> {
        self.list(filter).await
    }

    async fn delete_flow(&self, id: FlowId) -> Result<bool, StoreError> {
        let name: Option<String> = redis::cmd("HGET")
            .arg(self.keys.flow(id))
            .arg("flow_name")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let Some(name) = name else {
            return Ok(false);
        };
        let member = id.to_string();
        let mut pipe = redis::pipe();
        pipe.del(self.keys.flow(id)).ignore();
        pipe.del(self.keys.steps(id)).ignore();
        pipe.del(self.keys.lease(id)).ignore();
        pipe.zrem(self.keys.started(), &member).ignore();
        pipe.zrem(self.keys.by_name(&name), &member).ignore();
        for status in ALL_STATUSES {
            pipe.zrem(self.keys.by_status(status), &member).ignore();
        }
        self.conn.run(pipe).await?;
        Ok(true)
    }

    async fn prune(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        if self.conn.is_cluster() {
            // Index lines a host that died left out of step: fixed first, so
            // that what follows (and the take-over of orphans) sees them.
            let fixed = self.repair_status_index().await?;
            if fixed > 0 {
                tracing::warn!(
                    fixed,
                    "status index lines out of step with their flows, fixed"
                );
            }
        }
        self.prune_finished(cutoff).await
    }

    async fn repair_indexes(&self) -> Result<u64, StoreError> {
        self.repair_status_index().await
    }

    async fn remember_key(
        &self,
        key: &str,
        id: FlowId,
        ttl: Duration,
    ) -> Result<Option<FlowId>, StoreError> {
        // SET NX GET: one round trip, the earlier value when there is one.
        let earlier = self
            .conn
            .set_nx_get(self.keys.idempotency(key), &id.to_string(), ttl)
            .await
            .map_err(unavailable)?;
        earlier
            .map(|raw| parse_flow_id(&raw, "idempotency key names no flow id"))
            .transpose()
    }

    async fn forget_key(&self, key: &str, id: FlowId) -> Result<bool, StoreError> {
        let removed: i64 = scripts::DELETE_IF
            .key(self.keys.idempotency(key))
            .arg(id.to_string())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(removed == 1)
    }

    async fn claim(&self, id: FlowId) -> Result<Claim, StoreError> {
        self.claim_lease(id).await.map(|(claim, _)| claim)
    }

    async fn claim_and_load(&self, id: FlowId) -> Result<(Claim, Option<FlowState>), StoreError> {
        self.claim_lease(id).await
    }

    async fn request_cancel(&self, id: FlowId) -> Result<(), StoreError> {
        self.mark_cancel_requested(id).await
    }

    async fn renew_claims(&self) -> Result<Renewal, StoreError> {
        self.renew_leases().await
    }

    async fn release(&self, id: FlowId) -> Result<(), StoreError> {
        self.release_lease(id).await
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
