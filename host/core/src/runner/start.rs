//! New runs: `execute` (run to the end and answer the final state) and
//! `submit` (record the run `pending` and run it in the background, here or,
//! with a shared queue, on whichever host takes it). Both check the inputs
//! against the flow's declaration and honour idempotency keys first: a key
//! names the run it started, a request refused after taking a key gives it
//! back, and a sync replay answers the run's end, waiting for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value};

use super::active::Backlog;
use super::schedule::Opening;
use super::{FlowContext, FlowRunner, RunError};
use crate::blob;
use crate::flow::FlowDefinition;
use crate::observe::Event;
use crate::queue::WorkQueue;
use crate::state::{FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, StoreError};

/// What a sync execute found: its own run, ended, or the run its
/// idempotency key named already, as it stands.
enum Executed {
    Ran(FlowState),
    Replayed(FlowState),
}

impl FlowRunner {
    /// Runs a new flow to its end and returns its final state. Step failures
    /// are part of the state (status `failed`), not an `Err`. A replayed
    /// idempotency key answers its run's end, waiting for it if it is still
    /// pending or running (for as long as the caller waits).
    pub async fn execute(
        &self,
        def: Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<FlowState, RunError> {
        let executed = self
            .detached(|r| async move { r.execute_here(def, inputs, ctx).await })
            .await?;
        match executed {
            Executed::Ran(state) => Ok(state),
            // Waited for here, not in the detached task: a caller that stops
            // waiting (a request's time limit) ends the wait.
            Executed::Replayed(state) => self.await_end(state).await,
        }
    }

    async fn execute_here(
        &self,
        def: Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<Executed, RunError> {
        let inputs = checked_inputs(&def, inputs)?;
        if let Some(earlier) = self.replayed(&def, &ctx).await? {
            return Ok(Executed::Replayed(earlier));
        }
        let (key, id) = (scoped_key(&def, &ctx), ctx.flow_id);
        let result = self.execute_new(def, inputs, ctx).await;
        if let Err(e) = &result {
            self.give_key_back(key, id, e).await;
        }
        result.map(Executed::Ran)
    }

    async fn execute_new(
        &self,
        def: Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<FlowState, RunError> {
        let guard = self.activate(ctx.flow_id)?;
        let mut state = self.new_state(&def, inputs, ctx, FlowStatus::Running).await;
        // The flow is recorded with its first write (see `drive`), which
        // saves a round trip.
        let flow_key = self.flow_cache_key(&def, &state.inputs);
        if let Some(key) = &flow_key {
            if let Some(hit) = self.flow_cache_hit(&def, &mut state, key).await? {
                return Ok(hit);
            }
            self.observe(Event::FlowCacheMiss { flow: &def.name });
        }
        let first = def.steps.iter().map(|s| (s.name.clone(), 1)).collect();
        let state = self
            .drive(&def, state, first, &guard.entry, Opening::Create)
            .await?;
        if let (Some(key), FlowStatus::Completed) = (flow_key, state.status) {
            self.store_flow_result(&def, key, &state).await;
        }
        Ok(state)
    }

    /// A new run's state, every step pending; its inputs as recorded (the
    /// blobs they refer to held, large values offloaded).
    async fn new_state(
        &self,
        def: &FlowDefinition,
        inputs: Map<String, Value>,
        ctx: FlowContext,
        status: FlowStatus,
    ) -> FlowState {
        let mut inputs = Value::Object(inputs);
        self.complete_refs(&mut inputs).await;
        let inputs = self.keep(ctx.flow_id, inputs).await;
        let mut metadata = ctx.metadata;
        metadata.insert("state_store".into(), self.inner.store.backend().into());
        metadata.insert("flow_hash".into(), def.hash.clone().into());
        FlowState {
            flow_id: ctx.flow_id,
            flow_name: def.name.clone(),
            status,
            inputs,
            steps: def
                .steps
                .iter()
                .map(|s| (s.name.clone(), FlowStepState::pending(&s.name)))
                .collect(),
            current_step: None,
            started_at: Utc::now(),
            completed_at: None,
            total_execution_time: None,
            metadata,
            outputs: None,
            error: None,
        }
    }

    /// Records a new flow, noting in its metadata where it went (the store
    /// may fall back to memory while creating it).
    pub(super) async fn create(&self, state: &mut FlowState) -> Result<(), RunError> {
        match self.inner.store.create_flow(state).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(id)) => return Err(RunError::DuplicateId(id)),
            Err(e) => return Err(RunError::Store(e)),
        }
        let backend = self.inner.store.backend();
        state.metadata.insert("state_store".into(), backend.into());
        let degraded = self.inner.store.degraded();
        self.observe(Event::Degraded(degraded));
        if degraded {
            state.metadata.insert("degraded".into(), true.into());
        }
        Ok(())
    }

    /// The run an idempotency key already names, as it stands now; `None`
    /// when the key is new (it now names `ctx.flow_id`) or absent.
    async fn replayed(
        &self,
        def: &FlowDefinition,
        ctx: &FlowContext,
    ) -> Result<Option<FlowState>, RunError> {
        let Some(key) = scoped_key(def, ctx) else {
            return Ok(None);
        };
        let ttl = self.inner.config.idempotency_ttl;
        let store = &self.inner.store;
        let mut named = None;
        // The earlier request may still be creating its run, or be refused
        // and give the key back: look again for a while.
        for _ in 0..50 {
            let Some(id) = store
                .remember_key(&key, ctx.flow_id, ttl)
                .await
                .map_err(RunError::Store)?
            else {
                return Ok(None);
            };
            if let Some(state) = store.get_flow(id).await.map_err(RunError::Store)? {
                return Ok(Some(state));
            }
            named = Some(id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let id = named.expect("the key named a run");
        Err(RunError::Conflict(format!(
            "idempotency key {:?} names run {id}, which was never recorded; use another key",
            ctx.idempotency_key.as_deref().unwrap_or_default()
        )))
    }

    /// Gives an idempotency key back after the request that took it was
    /// refused, so that a retry of the request starts its run: unless the
    /// run may have been recorded all the same (a store error).
    async fn give_key_back(&self, key: Option<String>, id: FlowId, refusal: &RunError) {
        let Some(key) = key else { return };
        if matches!(refusal, RunError::Store(_) | RunError::Internal(_))
            && !matches!(self.inner.store.get_flow(id).await, Ok(None))
        {
            return;
        }
        if let Err(e) = self.inner.store.forget_key(&key, id).await {
            tracing::warn!(flow_id = %id, error = %e, "cannot give back the idempotency key of a refused request");
        }
    }

    /// The end of a run that an earlier request started: at once when it is
    /// over; otherwise when it ends here (its `finished` signal), or, while
    /// it is pending or runs on another host, as the store shows it, looked
    /// at with backoff. Unbounded: the caller bounds the wait.
    async fn await_end(&self, mut state: FlowState) -> Result<FlowState, RunError> {
        let id = state.flow_id;
        let mut pause = Duration::from_millis(20);
        while matches!(state.status, FlowStatus::Pending | FlowStatus::Running) {
            let here = self.lock_active().get(&id).cloned();
            match here {
                Some(active) => {
                    let mut finished = active.finished.subscribe();
                    let _ = finished.wait_for(|f| *f).await;
                }
                None => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
            state = self.stored(id).await?;
        }
        Ok(state)
    }

    /// Starts a run in the background and returns once it is recorded
    /// (`pending`); its status route follows it. Refused while Redis is
    /// configured but unreachable (a run accepted on memory would be lost by a
    /// restart), and while `max_async_in_flight` runs are in flight here.
    pub async fn submit(
        &self,
        def: Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<FlowId, RunError> {
        let inputs = checked_inputs(&def, inputs)?;
        if self.inner.store.degraded() {
            return Err(RunError::NotDurable(
                "redis is unreachable: background runs need it to be durable; retry later, \
                 or use /execute"
                    .into(),
            ));
        }
        if let Some(earlier) = self.replayed(&def, &ctx).await? {
            return Ok(earlier.flow_id);
        }
        let (key, id) = (scoped_key(&def, &ctx), ctx.flow_id);
        let result = match &self.inner.queue {
            Some(queue) => self.submit_shared(queue, &def, inputs, ctx).await,
            None => self.submit_here(def, inputs, ctx).await,
        };
        if let Err(e) = &result {
            self.give_key_back(key, id, e).await;
        }
        result
    }

    /// A submission run by this host alone: recorded pending, then run in a
    /// task of its own.
    async fn submit_here(
        &self,
        def: Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<FlowId, RunError> {
        let in_flight = self.active_count();
        if in_flight >= self.inner.config.max_async_in_flight {
            return Err(RunError::Busy {
                in_flight,
                retry_after_secs: 1,
            });
        }
        let guard = self.activate(ctx.flow_id)?;
        let mut state = self.new_state(&def, inputs, ctx, FlowStatus::Pending).await;
        let id = state.flow_id;
        if let Some(key) = self.flow_cache_key(&def, &state.inputs)
            && self.flow_cache_hit(&def, &mut state, &key).await?.is_some()
        {
            return Ok(id);
        }
        self.create(&mut state).await?;
        let runner = self.clone();
        tokio::spawn(async move {
            let guard = guard;
            state.status = FlowStatus::Running;
            let patch = FlowPatch {
                status: Some(FlowStatus::Running),
                ..FlowPatch::default()
            };
            let first = def.steps.iter().map(|s| (s.name.clone(), 1)).collect();
            match runner
                .drive(&def, state, first, &guard.entry, Opening::Patch(patch))
                .await
            {
                Ok(end) => {
                    tracing::debug!(flow_id = %id, status = %end.status, "background run ended")
                }
                Err(e) => tracing::error!(flow_id = %id, error = %e, "background run failed"),
            }
        });
        Ok(id)
    }

    /// A submission with hosts sharing the work: recorded pending and put on
    /// the queue, for whichever host has room. Refused while the queue holds
    /// `max_async_in_flight` unfinished runs.
    async fn submit_shared(
        &self,
        queue: &Arc<dyn WorkQueue>,
        def: &Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<FlowId, RunError> {
        if self.is_draining() {
            return Err(RunError::ShuttingDown);
        }
        let backlog = self.backlog(queue).await?;
        if backlog >= self.inner.config.max_async_in_flight {
            return Err(RunError::Busy {
                in_flight: backlog,
                retry_after_secs: 1,
            });
        }
        let mut state = self.new_state(def, inputs, ctx, FlowStatus::Pending).await;
        let id = state.flow_id;
        if let Some(key) = self.flow_cache_key(def, &state.inputs)
            && self.flow_cache_hit(def, &mut state, &key).await?.is_some()
        {
            return Ok(id);
        }
        // Recorded pending in Redis, the flow is queued with it.
        self.create(&mut state).await?;
        self.lock_backlog().added += 1;
        if state.metadata.get("state_store").and_then(Value::as_str) != Some("redis") {
            // Redis went away meanwhile: recorded in memory, it would wait
            // for a queue it is not in. Fail it rather than leave it waiting.
            let patch = FlowPatch {
                status: Some(FlowStatus::Failed),
                completed_at: Some(Utc::now()),
                error: Some("could not be queued: redis is unreachable".into()),
                ..FlowPatch::default()
            };
            let r = self.inner.store.update_flow(id, &patch).await;
            self.record(id, r);
            return Err(RunError::NotDurable(
                "redis is unreachable: background runs need it; retry later, or use /execute"
                    .into(),
            ));
        }
        Ok(id)
    }

    /// The queue's length for the submission limit: read from the queue when
    /// the last reading is older than 100 ms or the estimate (that reading
    /// plus the submissions here since) nears the limit; else the estimate,
    /// which saves a round trip per submission.
    async fn backlog(&self, queue: &Arc<dyn WorkQueue>) -> Result<usize, RunError> {
        let limit = self.inner.config.max_async_in_flight;
        {
            let b = self.lock_backlog();
            let estimate = b.read + b.added;
            if b.at
                .is_some_and(|at| at.elapsed() < Duration::from_millis(100))
                && estimate < limit / 2
            {
                return Ok(estimate);
            }
        }
        let read = queue.backlog().await.map_err(RunError::Store)? as usize;
        *self.lock_backlog() = Backlog {
            read,
            added: 0,
            at: Some(Instant::now()),
        };
        Ok(read)
    }
}

/// An idempotency key as stored: scoped to the flow it was given for.
fn scoped_key(def: &FlowDefinition, ctx: &FlowContext) -> Option<String> {
    let key = ctx.idempotency_key.as_ref()?;
    Some(format!("{}:{key}", def.name))
}

/// The inputs with defaults filled in, or every way they miss the
/// declaration (a malformed blob reference among them).
fn checked_inputs(
    def: &FlowDefinition,
    inputs: Map<String, Value>,
) -> Result<Map<String, Value>, RunError> {
    let inputs = def
        .resolve_inputs(inputs)
        .map_err(RunError::InvalidInputs)?;
    for (name, value) in &inputs {
        blob::refs_in_strict(value, &format!("inputs.{name}"))
            .map_err(|e| RunError::InvalidInputs(vec![e.to_string()]))?;
    }
    Ok(inputs)
}
