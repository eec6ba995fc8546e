//! In-process `StateStore`: the embedded default when no Redis is configured,
//! and the fallback while a configured Redis is unreachable. Nothing survives
//! a restart.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    FlowId, FlowPatch, FlowState, FlowStepState, FlowSummary, ListFilter, StateStore, StoreError,
};

#[derive(Default)]
pub struct MemoryStore {
    flows: Mutex<HashMap<FlowId, FlowState>>,
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

    async fn save_step(
        &self,
        id: FlowId,
        step: &FlowStepState,
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        let mut flows = self.lock();
        let flow = flows.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        flow.steps.insert(step.step_name.clone(), step.clone());
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
            .filter(|f| filter.flow_name.as_ref().is_none_or(|n| *n == f.flow_name))
            .filter(|f| filter.status.is_none_or(|s| s == f.status))
            .map(FlowSummary::from)
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse((s.started_at, s.flow_id)));
        out.truncate(filter.limit);
        Ok(out)
    }

    async fn delete_flow(&self, id: FlowId) -> Result<bool, StoreError> {
        Ok(self.lock().remove(&id).is_some())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
