//! Writes of flows: creating one (`CREATE_FLOW`), the fenced write of steps
//! and header fields (`WRITE_FLOW`), and the index lines that follow a
//! status, inline in the script on one server, in a pipeline after it on a
//! Cluster (where a host dying in between leaves lines that `index.rs`
//! repairs).

use chrono::Utc;
use flowhost_core::state::{FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, StoreError};
use redis::{Pipeline, Script, ScriptInvocation};

use crate::codec::{encode_step, header_fields, patch_fields, unavailable};
use crate::scripts::{CREATE_FLOW, WRITE_FLOW};
use crate::store::RedisStore;

impl RedisStore {
    /// `StateStore::create_flow`: one script call; on a Cluster, the index
    /// lines and the queue entry after it.
    pub(crate) async fn create(&self, flow: &FlowState) -> Result<(), StoreError> {
        let id = flow.flow_id;
        let header = header_fields(flow, self.compress_min);
        // A flow created running is its creator's; a pending one waits for
        // a host to claim it.
        let leased = flow.status == FlowStatus::Running;
        let inline_index = !self.conn.is_cluster();
        let mut invocation = self.flow_invocation(&CREATE_FLOW, id);
        if inline_index {
            invocation
                .key(self.keys.queue())
                .key(self.keys.started())
                .key(self.keys.by_name(&flow.flow_name));
            self.status_keys(&mut invocation, flow.status);
        }
        invocation
            .arg(id.to_string())
            .arg(flow.started_at.timestamp_millis())
            .arg(if leased { self.owner.as_str() } else { "" })
            .arg(self.lease_ttl.as_millis() as u64)
            .arg(header.len() * 2);
        for (field, value) in &header {
            invocation.arg(*field).arg(value);
        }
        for step in flow.steps.values() {
            invocation
                .arg(&step.step_name)
                .arg(encode_step(step, self.compress_min)?);
        }
        // A flow created pending waits in the queue for a host to run it.
        let queued = flow.status == FlowStatus::Pending;
        invocation.arg(if queued { "1" } else { "0" });
        let created: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if created == 0 {
            return Err(StoreError::AlreadyExists(id));
        }
        if leased {
            self.held.hold(id, 1);
        }
        if !inline_index {
            self.index_created(flow, queued).await?;
        }
        Ok(())
    }

    /// On a Cluster: a created flow's index lines, then its queue entry.
    async fn index_created(&self, flow: &FlowState, queued: bool) -> Result<(), StoreError> {
        let id = flow.flow_id;
        let member = id.to_string();
        let at = flow.started_at.timestamp_millis();
        let mut pipe = redis::pipe();
        // The status line first: it is how orphaned flows are found.
        self.push_status_index(&mut pipe, id, flow.status, at);
        pipe.zadd(self.keys.started(), &member, at).ignore();
        pipe.zadd(self.keys.by_name(&flow.flow_name), &member, at)
            .ignore();
        self.conn.run(pipe).await?;
        if queued {
            self.enqueue(id).await?;
        }
        Ok(())
    }

    /// An invocation of a flow script with the KEYS every one starts with:
    /// header, steps, lease.
    fn flow_invocation(&self, script: &'static Script, id: FlowId) -> ScriptInvocation<'static> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.flow(id))
            .key(self.keys.steps(id))
            .key(self.keys.lease(id));
        invocation
    }

    /// The status KEYS of a flow script: the index of `status`, then the
    /// other statuses' indexes.
    fn status_keys(&self, invocation: &mut ScriptInvocation<'_>, status: FlowStatus) {
        invocation.key(self.keys.by_status(status));
        for other in self.keys.other_statuses(status) {
            invocation.key(other);
        }
    }

    /// The index lines of a flow in `status` since `at_ms`, for a pipeline:
    /// the new line first, so that a host dying half-way leaves the flow in
    /// two indexes (which `repair_status_index` fixes), never in none.
    fn push_status_index(&self, pipe: &mut Pipeline, id: FlowId, status: FlowStatus, at_ms: i64) {
        let member = id.to_string();
        pipe.zadd(self.keys.by_status(status), &member, at_ms)
            .ignore();
        for other in self.keys.other_statuses(status) {
            pipe.zrem(other, &member).ignore();
        }
    }

    /// One fenced write of a flow's steps and header (see `WRITE_FLOW`).
    pub(crate) async fn write(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        let token = self.held.token(id);
        // A flow left finished or paused is given up by its owner.
        let release = token.filter(|_| {
            patch
                .status
                .is_some_and(|s| !matches!(s, FlowStatus::Running | FlowStatus::Pending))
        });
        let expiry = match (patch.status, self.retention) {
            (Some(s), Some(keep)) if s.is_finished() => keep.as_millis().to_string(),
            (Some(_), _) => "persist".to_owned(),
            (None, _) => String::new(),
        };
        let inline_index = patch.status.filter(|_| !self.conn.is_cluster());
        let mut invocation = self.flow_invocation(&WRITE_FLOW, id);
        if let Some(status) = inline_index {
            self.status_keys(&mut invocation, status);
        }
        let fields = patch_fields(patch, self.compress_min);
        invocation
            .arg(token.map(|t| t.to_string()).unwrap_or_default())
            .arg(release.map(|t| self.lease_value(t)).unwrap_or_default())
            .arg(if patch.clear_result { "1" } else { "0" })
            .arg(expiry)
            .arg(fields.len() * 2);
        for (field, value) in &fields {
            invocation.arg(*field).arg(value);
        }
        invocation.arg(steps.len() * 2);
        for step in steps {
            invocation
                .arg(&step.step_name)
                .arg(encode_step(step, self.compress_min)?);
        }
        let now = Utc::now().timestamp_millis();
        if inline_index.is_some() {
            invocation.arg(id.to_string()).arg(now);
        }
        let written: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if written == 0 {
            self.held.mark_lost(id);
            return Err(StoreError::Fenced(id));
        }
        if release.is_some() {
            self.held.forget(id);
        }
        if let (Some(status), None) = (patch.status, inline_index) {
            let mut pipe = redis::pipe();
            self.push_status_index(&mut pipe, id, status, now);
            self.conn.run(pipe).await?;
        }
        Ok(())
    }
}
