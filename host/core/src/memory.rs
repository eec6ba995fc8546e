//! The in-process adapter of the `StateStore` and `ResultCache` ports: the
//! default when no Redis is configured, the fallback while a configured Redis
//! is unreachable, and the store of the runner's own tests. Nothing survives
//! a restart; every claim is granted (one host).

use std::collections::HashMap;
use std::sync::Mutex;

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::cache::{CacheError, CachedResult, Invalidate, ResultCache};

use crate::state::{
    FlowId, FlowPatch, FlowState, FlowStepState, FlowSummary, ListFilter, StateStore, StoreError,
};

#[derive(Default)]
pub struct MemoryStore {
    flows: Mutex<HashMap<FlowId, FlowState>>,
    /// Cached results with the (tokio) instant they expire.
    results: Mutex<HashMap<String, (CachedResult, Instant)>>,
    puts: std::sync::atomic::AtomicU64,
    /// Idempotency keys with the flow they name and when they expire.
    keys: Mutex<HashMap<String, (FlowId, Instant)>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, id: FlowId) -> bool {
        self.lock().contains_key(&id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlowId, FlowState>> {
        // A panic while holding the lock cannot leave a half-written entry:
        // every mutation below is a single insert or field assignment.
        self.flows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn create_flow(&self, flow: &FlowState) -> Result<(), StoreError> {
        let mut flows = self.lock();
        if flows.contains_key(&flow.flow_id) {
            return Err(StoreError::AlreadyExists(flow.flow_id));
        }
        flows.insert(flow.flow_id, flow.clone());
        Ok(())
    }

    async fn save_steps(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        let mut flows = self.lock();
        let flow = flows.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        for step in steps {
            flow.steps.insert(step.step_name.clone(), (*step).clone());
        }
        patch.apply(flow);
        Ok(())
    }

    async fn update_flow(&self, id: FlowId, patch: &FlowPatch) -> Result<(), StoreError> {
        let mut flows = self.lock();
        let flow = flows.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        patch.apply(flow);
        Ok(())
    }

    async fn get_flow(&self, id: FlowId) -> Result<Option<FlowState>, StoreError> {
        Ok(self.lock().get(&id).cloned())
    }

    async fn list_flows(&self, filter: &ListFilter) -> Result<Vec<FlowSummary>, StoreError> {
        let flows = self.lock();
        let mut out: Vec<FlowSummary> = flows
            .values()
            .map(FlowSummary::from)
            .filter(|s| filter.matches(s))
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse((s.started_at, s.flow_id)));
        out.truncate(filter.limit);
        Ok(out)
    }

    async fn delete_flow(&self, id: FlowId) -> Result<bool, StoreError> {
        Ok(self.lock().remove(&id).is_some())
    }

    async fn prune(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let mut flows = self.lock();
        let before = flows.len();
        flows
            .retain(|_, f| !(f.status.is_finished() && f.completed_at.is_some_and(|t| t < cutoff)));
        Ok((before - flows.len()) as u64)
    }

    async fn remember_key(
        &self,
        key: &str,
        id: FlowId,
        ttl: Duration,
    ) -> Result<Option<FlowId>, StoreError> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if keys.len() > 4096 {
            keys.retain(|_, (_, expires)| *expires > now);
        }
        match keys.get(key) {
            Some((earlier, expires)) if *expires > now => Ok(Some(*earlier)),
            _ => {
                keys.insert(key.to_owned(), (id, now + ttl));
                Ok(None)
            }
        }
    }

    async fn forget_key(&self, key: &str, id: FlowId) -> Result<bool, StoreError> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let names_id = keys.get(key).is_some_and(|(named, _)| *named == id);
        if names_id {
            keys.remove(key);
        }
        Ok(names_id)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[async_trait]
impl ResultCache for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, CacheError> {
        let mut results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        match results.get(key) {
            Some((entry, expires)) if *expires > Instant::now() => Ok(Some(entry.clone())),
            Some(_) => {
                results.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, entry: &CachedResult, ttl: Duration) -> Result<(), CacheError> {
        let mut results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Expired entries are swept every 256 writes, so the map does not
        // grow without bound and a write stays cheap.
        if self.puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 256 == 255 {
            results.retain(|_, (_, expires)| *expires > now);
        }
        results.insert(entry.key.clone(), (entry.clone(), now + ttl));
        Ok(())
    }

    async fn invalidate(&self, what: &Invalidate) -> Result<u64, CacheError> {
        let mut results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let before = results.values().filter(|(_, x)| *x > now).count();
        results.retain(|key, (entry, expires)| {
            *expires > now
                && !match what {
                    Invalidate::Key(k) => key == k,
                    Invalidate::Plugin(p) => entry.plugin == *p,
                    Invalidate::Flow(f) => entry.flow == *f,
                }
        });
        Ok((before - results.len()) as u64)
    }
}
