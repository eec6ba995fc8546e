//! `FallbackStore`, the store the binary chooses: Redis when it is configured
//! and reachable, memory otherwise, with `RedisHealth` for `/healthz`. A
//! monitor task pings Redis and reconnects without a restart; while Redis is
//! away, new flows run on memory (loudly) and stay there; so do new blobs,
//! and reads of blobs look in both.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use flowhost_core::blob::{BlobError, BlobId, BlobStat, BlobStore, BlobUpload, Hold, MemoryBlobs};
use flowhost_core::cache::{CacheError, CachedResult, Invalidate, ResultCache};
use flowhost_core::memory::MemoryStore;
use flowhost_core::observe::{Event, NoObserver, Observer};
use flowhost_core::queue::{Delivery, WorkQueue};
use flowhost_core::state::{
    Claim, FlowId, FlowPatch, FlowState, FlowStepState, FlowSummary, ListFilter, Renewal,
    StateStore, StoreError,
};

use crate::store::{RedisStore, RedisStoreConfig};

/// What `/healthz` reports about Redis.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "redis", rename_all = "snake_case")]
pub enum RedisHealth {
    NotConfigured,
    Connected,
    Unreachable {
        since: DateTime<Utc>,
        last_error: String,
    },
}

pub struct FallbackStore {
    memory: MemoryStore,
    /// Blobs stored while Redis is away (or not configured).
    blobs: MemoryBlobs,
    config: Option<RedisStoreConfig>,
    /// The live connection, when there is one; `None` while Redis is away.
    redis: RwLock<Option<RedisStore>>,
    health: RwLock<RedisHealth>,
    observer: Arc<dyn Observer>,
}

impl FallbackStore {
    /// Memory only: no Redis configured.
    pub fn memory() -> Arc<Self> {
        Arc::new(FallbackStore {
            memory: MemoryStore::new(),
            blobs: MemoryBlobs::new(),
            config: None,
            redis: RwLock::new(None),
            health: RwLock::new(RedisHealth::NotConfigured),
            observer: Arc::new(NoObserver),
        })
    }

    /// Redis, tried once now; when it cannot be reached the store starts on
    /// memory and `monitor` keeps trying.
    pub async fn redis(config: RedisStoreConfig) -> Arc<Self> {
        Self::redis_with_observer(config, Arc::new(NoObserver)).await
    }

    /// As `redis`, reporting every Redis operation to `observer` (one
    /// `Event::StoreCall` each).
    pub async fn redis_with_observer(
        config: RedisStoreConfig,
        observer: Arc<dyn Observer>,
    ) -> Arc<Self> {
        let store = Arc::new(FallbackStore {
            memory: MemoryStore::new(),
            blobs: MemoryBlobs::new(),
            config: Some(config),
            redis: RwLock::new(None),
            health: RwLock::new(RedisHealth::NotConfigured),
            observer,
        });
        store.check().await;
        store
    }

    pub fn health(&self) -> RedisHealth {
        self.health
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True when Redis is configured but not in use.
    pub fn is_degraded(&self) -> bool {
        matches!(self.health(), RedisHealth::Unreachable { .. })
    }

    /// Pings Redis (connecting first if needed) every `interval` until the
    /// shutdown future resolves.
    pub async fn monitor(self: Arc<Self>, interval: Duration) {
        if self.config.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(interval).await;
            self.check().await;
        }
    }

    /// One health check: connect or ping, and record the outcome.
    pub async fn check(&self) {
        let Some(config) = &self.config else { return };
        let current = self.current();
        let result = match &current {
            Some(redis) => redis.ping().await.map(|()| None),
            None => RedisStore::connect(config).await.map(Some),
        };
        match result {
            Ok(fresh) => {
                if let Some(fresh) = fresh {
                    *self.redis.write().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
                }
                self.set_health(RedisHealth::Connected);
            }
            Err(e) => self.mark_unreachable(&e),
        }
    }

    fn current(&self) -> Option<RedisStore> {
        self.redis.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The Redis store, when it is healthy enough to take new flows.
    fn healthy(&self) -> Option<RedisStore> {
        matches!(self.health(), RedisHealth::Connected)
            .then(|| self.current())
            .flatten()
    }

    fn set_health(&self, health: RedisHealth) {
        let mut slot = self.health.write().unwrap_or_else(|e| e.into_inner());
        if *slot != RedisHealth::Connected && health == RedisHealth::Connected {
            tracing::info!("redis reachable: new flows are persisted in redis");
        }
        *slot = health;
    }

    fn mark_unreachable(&self, error: &StoreError) {
        let mut slot = self.health.write().unwrap_or_else(|e| e.into_inner());
        match &mut *slot {
            RedisHealth::Unreachable { last_error, .. } => *last_error = error.to_string(),
            other => {
                tracing::error!(
                    error = %error,
                    "redis unreachable: running DEGRADED, new flows are kept in memory only \
                     and will not survive a restart; reconnecting in the background"
                );
                *other = RedisHealth::Unreachable {
                    since: Utc::now(),
                    last_error: error.to_string(),
                };
            }
        }
    }

    /// The store holding an existing flow: memory if it started there.
    fn owner(&self, id: FlowId) -> Result<Owner, StoreError> {
        if self.memory.contains(id) {
            return Ok(Owner::Memory);
        }
        match self.current() {
            Some(redis) => Ok(Owner::Redis(redis)),
            None if self.config.is_none() => Ok(Owner::Memory),
            None => Err(StoreError::Unavailable("redis not connected".into())),
        }
    }
}

impl FallbackStore {
    /// Runs one Redis operation and reports it: its latency, and whether
    /// it failed.
    async fn timed<T, E>(
        &self,
        op: &'static str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let clock = std::time::Instant::now();
        let result = work.await;
        self.observer.record(Event::StoreCall {
            op,
            seconds: clock.elapsed().as_secs_f64(),
            failed: result.is_err(),
        });
        result
    }
}

enum Owner {
    Memory,
    Redis(RedisStore),
}

#[async_trait]
impl StateStore for FallbackStore {
    async fn create_flow(&self, flow: &FlowState) -> Result<(), StoreError> {
        // Writes go to memory whenever it holds the id: never create a twin.
        if self.memory.contains(flow.flow_id) {
            return Err(StoreError::AlreadyExists(flow.flow_id));
        }
        if let Some(redis) = self.healthy() {
            match self.timed("create_flow", redis.create_flow(flow)).await {
                Err(e @ StoreError::Unavailable(_)) => self.mark_unreachable(&e),
                other => return other,
            }
        }
        self.memory.create_flow(flow).await
    }

    async fn save_steps(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        match self.owner(id)? {
            Owner::Memory => self.memory.save_steps(id, steps, patch).await,
            Owner::Redis(r) => {
                self.timed("save_steps", r.save_steps(id, steps, patch))
                    .await
            }
        }
    }

    async fn update_flow(&self, id: FlowId, patch: &FlowPatch) -> Result<(), StoreError> {
        match self.owner(id)? {
            Owner::Memory => self.memory.update_flow(id, patch).await,
            Owner::Redis(r) => self.timed("update_flow", r.update_flow(id, patch)).await,
        }
    }

    async fn get_flow(&self, id: FlowId) -> Result<Option<FlowState>, StoreError> {
        if let Some(flow) = self.memory.get_flow(id).await? {
            return Ok(Some(flow));
        }
        match (self.current(), &self.config) {
            (Some(redis), _) => self.timed("get_flow", redis.get_flow(id)).await,
            (None, None) => Ok(None),
            (None, Some(_)) => {
                let health = self.health();
                let reason = match health {
                    RedisHealth::Unreachable { last_error, .. } => last_error,
                    _ => "not connected".into(),
                };
                Err(StoreError::Unavailable(
                    format!("redis unreachable: {reason}").into(),
                ))
            }
        }
    }

    async fn list_flows(&self, filter: &ListFilter) -> Result<Vec<FlowSummary>, StoreError> {
        let mut out = self.memory.list_flows(filter).await?;
        if let Some(redis) = self.current() {
            out.extend(self.timed("list_flows", redis.list_flows(filter)).await?);
            out.sort_by_key(|s| std::cmp::Reverse((s.started_at, s.flow_id)));
            out.truncate(filter.limit);
        }
        Ok(out)
    }

    async fn delete_flow(&self, id: FlowId) -> Result<bool, StoreError> {
        match self.owner(id)? {
            Owner::Memory => self.memory.delete_flow(id).await,
            Owner::Redis(r) => self.timed("delete_flow", r.delete_flow(id)).await,
        }
    }

    fn backend(&self) -> &'static str {
        if self.healthy().is_some() {
            "redis"
        } else {
            "memory"
        }
    }
    async fn prune(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut removed = self.memory.prune(cutoff).await?;
        if let Some(redis) = self.current() {
            removed += self.timed("prune", redis.prune(cutoff)).await?;
        }
        Ok(removed)
    }

    async fn repair_indexes(&self) -> Result<u64, StoreError> {
        match self.current() {
            Some(redis) => self.timed("repair_indexes", redis.repair_indexes()).await,
            None => Ok(0),
        }
    }

    async fn remember_key(
        &self,
        key: &str,
        id: FlowId,
        ttl: Duration,
    ) -> Result<Option<FlowId>, StoreError> {
        match self.healthy() {
            Some(redis) => {
                self.timed("remember_key", redis.remember_key(key, id, ttl))
                    .await
            }
            None => self.memory.remember_key(key, id, ttl).await,
        }
    }

    async fn forget_key(&self, key: &str, id: FlowId) -> Result<bool, StoreError> {
        // Given back wherever it may have been taken: memory, and Redis
        // while there is a connection.
        let mut removed = self.memory.forget_key(key, id).await?;
        if let Some(redis) = self.current() {
            removed |= self.timed("forget_key", redis.forget_key(key, id)).await?;
        }
        Ok(removed)
    }

    fn degraded(&self) -> bool {
        self.is_degraded()
    }

    async fn claim(&self, id: FlowId) -> Result<Claim, StoreError> {
        match self.owner(id)? {
            Owner::Memory => self.memory.claim(id).await,
            Owner::Redis(r) => self.timed("claim", r.claim(id)).await,
        }
    }

    async fn claim_and_load(&self, id: FlowId) -> Result<(Claim, Option<FlowState>), StoreError> {
        match self.owner(id)? {
            Owner::Memory => self.memory.claim_and_load(id).await,
            Owner::Redis(r) => self.timed("claim", r.claim_and_load(id)).await,
        }
    }

    async fn renew_claims(&self) -> Result<Renewal, StoreError> {
        match self.current() {
            Some(r) => self.timed("renew_claims", r.renew_claims()).await,
            None => Ok(Renewal::default()),
        }
    }

    async fn request_cancel(&self, id: FlowId) -> Result<(), StoreError> {
        match self.owner(id)? {
            Owner::Memory => Ok(()),
            Owner::Redis(r) => self.timed("request_cancel", r.request_cancel(id)).await,
        }
    }

    async fn release(&self, id: FlowId) -> Result<(), StoreError> {
        match self.owner(id)? {
            Owner::Memory => Ok(()),
            Owner::Redis(r) => self.timed("release", StateStore::release(&r, id)).await,
        }
    }
}

impl FallbackStore {
    /// The Redis store for queue operations: they need Redis, healthy.
    fn queue_store(&self) -> Result<RedisStore, StoreError> {
        self.healthy()
            .ok_or_else(|| StoreError::Unavailable("redis is not reachable".into()))
    }
}

#[async_trait]
impl WorkQueue for FallbackStore {
    fn shared(&self) -> bool {
        self.config.is_some()
    }

    async fn backlog(&self) -> Result<u64, StoreError> {
        let r = self.queue_store()?;
        self.timed("backlog", r.backlog()).await
    }

    async fn take(&self, max: usize) -> Result<Vec<Delivery>, StoreError> {
        let r = self.queue_store()?;
        self.timed("take", r.take(max)).await
    }

    async fn reclaim_deliveries(
        &self,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let r = self.queue_store()?;
        self.timed("reclaim", r.reclaim_deliveries(min_idle, max))
            .await
    }

    async fn done(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let r = self.queue_store()?;
        self.timed("done", r.done(delivery)).await
    }

    async fn orphans(&self, idle: Duration, max: usize) -> Result<Vec<FlowId>, StoreError> {
        let r = self.queue_store()?;
        self.timed("orphans", r.orphans(idle, max)).await
    }
}

/// Results go where new flows go: Redis while it is healthy, memory otherwise.
#[async_trait]
impl ResultCache for FallbackStore {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, CacheError> {
        match self.healthy() {
            Some(redis) => self.timed("cache_get", ResultCache::get(&redis, key)).await,
            None => ResultCache::get(&self.memory, key).await,
        }
    }

    async fn put(&self, entry: &CachedResult, ttl: Duration) -> Result<(), CacheError> {
        match self.healthy() {
            Some(redis) => self.timed("cache_put", redis.put(entry, ttl)).await,
            None => self.memory.put(entry, ttl).await,
        }
    }

    async fn lead(&self, key: &str, ttl: Duration) -> Result<bool, CacheError> {
        match self.healthy() {
            Some(redis) => self.timed("cache_lead", redis.lead(key, ttl)).await,
            None => self.memory.lead(key, ttl).await,
        }
    }

    async fn end_lead(&self, key: &str) -> Result<(), CacheError> {
        match self.current() {
            Some(redis) => self.timed("cache_end_lead", redis.end_lead(key)).await,
            None => Ok(()),
        }
    }

    async fn invalidate(&self, what: &Invalidate) -> Result<u64, CacheError> {
        let mut removed = self.memory.invalidate(what).await?;
        if let Some(redis) = self.current() {
            removed += self
                .timed("cache_invalidate", redis.invalidate(what))
                .await?;
        }
        Ok(removed)
    }
}

/// Blobs go where new flows go; a blob is looked up in memory first, then in
/// Redis while there is a connection.
impl FallbackStore {
    /// Where an existing blob lives: `None` for memory.
    async fn blob_home(&self, id: &BlobId) -> Result<Option<RedisStore>, BlobError> {
        if self.blobs.stat(id).await?.is_some() {
            return Ok(None);
        }
        match (self.current(), &self.config) {
            (Some(redis), _) => Ok(Some(redis)),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(BlobError::Unavailable("redis not connected".into())),
        }
    }
}

#[async_trait]
impl BlobStore for FallbackStore {
    async fn begin(&self, media_type: &str) -> Result<Box<dyn BlobUpload>, BlobError> {
        match self.healthy() {
            Some(redis) => redis.begin(media_type).await,
            None => self.blobs.begin(media_type).await,
        }
    }

    async fn stat(&self, id: &BlobId) -> Result<Option<BlobStat>, BlobError> {
        match self.blob_home(id).await? {
            Some(redis) => self.timed("blob_stat", redis.stat(id)).await,
            None => self.blobs.stat(id).await,
        }
    }

    async fn read(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        match self.blob_home(id).await? {
            Some(redis) => self.timed("blob_read", redis.read(id, offset, len)).await,
            None => self.blobs.read(id, offset, len).await,
        }
    }

    async fn list(&self) -> Result<Vec<BlobId>, BlobError> {
        let mut ids = self.blobs.list().await?;
        if let Some(redis) = self.current() {
            ids.extend(self.timed("blob_list", BlobStore::list(&redis)).await?);
        }
        Ok(ids)
    }

    async fn hold(&self, id: &BlobId, hold: &Hold) -> Result<(), BlobError> {
        match self.blob_home(id).await? {
            Some(redis) => self.timed("blob_hold", redis.hold(id, hold)).await,
            None => self.blobs.hold(id, hold).await,
        }
    }

    async fn holds(&self, id: &BlobId) -> Result<Vec<Hold>, BlobError> {
        match self.blob_home(id).await? {
            Some(redis) => self.timed("blob_holds", redis.holds(id)).await,
            None => self.blobs.holds(id).await,
        }
    }

    async fn release(&self, id: &BlobId, holders: &[String]) -> Result<(), BlobError> {
        match self.blob_home(id).await? {
            Some(redis) => {
                self.timed("blob_release", BlobStore::release(&redis, id, holders))
                    .await
            }
            None => self.blobs.release(id, holders).await,
        }
    }

    async fn remove_unheld(
        &self,
        id: &BlobId,
        touched_before: DateTime<Utc>,
    ) -> Result<bool, BlobError> {
        match self.blob_home(id).await? {
            Some(redis) => {
                self.timed("blob_remove", redis.remove_unheld(id, touched_before))
                    .await
            }
            None => self.blobs.remove_unheld(id, touched_before).await,
        }
    }
}
