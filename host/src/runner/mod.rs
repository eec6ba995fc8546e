//! Runs flows: validates inputs, schedules the steps of the DAG (independent
//! steps run concurrently), calls each step's plugin with retries, and records
//! every transition through the `StateStore` port before moving on. Resumes,
//! retries, cancels, and pauses flows on shutdown.
//!
//! Invariants: a step is saved as running (inputs, start time, attempt) before
//! its plugin is called, and as completed, failed, cancelled or pending
//! (interrupted) before any step that depends on it starts; a write carries
//! only the steps that changed (a finished step and the ones it lets start
//! share one round trip). A completed step is never run again: resume reads
//! its output back. The runner names no Redis key and no HTTP type.

mod retry;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use retry::RetryPolicy;

use crate::cache::{self, CachedResult, Flight, Leader, ResultCache, SingleFlight};
use crate::flow::{FlowCatalog, FlowDefinition, Scope, StepDef};
use crate::metrics::{FlowLabel, FlowOutcome, Metrics, PluginLabel, StepLabel, StepOutcome};
use crate::plugin::{CONTRACT_VERSION, Call, Execution, PluginError, PluginHost, PluginMeta};
use crate::queue::WorkQueue;
use crate::state::{
    Claim, FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, ListFilter, StateStore,
    StepStatus, StoreError,
};

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Used for what a step's `retry` does not set.
    pub retry: RetryPolicy,
    pub cache: CacheSettings,
    /// Flows in flight at most when a flow is submitted to run in the
    /// background; more are refused with `Busy`.
    pub max_async_in_flight: usize,
    /// How long an idempotency key maps to its flow.
    pub idempotency_ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub enabled: bool,
    /// Used when neither the flow nor the step sets `ttl_seconds`.
    pub ttl: Duration,
    /// Longest wait for another flow computing the same key.
    pub single_flight_wait: Duration,
}

/// How one step uses the cache.
struct CachePlan {
    key: String,
    ttl: Duration,
}

/// Who runs a flow and under which id.
#[derive(Clone, Debug, Default)]
pub struct FlowContext {
    pub flow_id: FlowId,
    /// Copied into the flow's state; flowhost adds `state_store`, `flow_hash`.
    pub metadata: Map<String, Value>,
    /// A caller's key: the same key, for the same flow definition, within
    /// `idempotency_ttl`, gives the same run instead of a second one.
    pub idempotency_key: Option<String>,
}

impl FlowContext {
    pub fn new() -> Self {
        Self::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid inputs: {}", .0.join("; "))]
    InvalidInputs(Vec<String>),
    #[error("a flow with id {0} exists already")]
    DuplicateId(FlowId),
    #[error("no flow run {0}")]
    NotFound(FlowId),
    /// The request does not fit the flow's state; the text says why.
    #[error("{0}")]
    Conflict(String),
    #[error("no step `{0}` in this flow")]
    UnknownStep(String),
    #[error("flowhost is shutting down and takes no new work")]
    ShuttingDown,
    /// Too much work in flight: try again after the given seconds.
    #[error("{in_flight} flows are in flight, the limit of this host: try again shortly")]
    Busy {
        in_flight: usize,
        retry_after_secs: u64,
    },
    /// The work needs a durable store that is unavailable now.
    #[error("{0}")]
    NotDurable(String),
    #[error("cannot record the flow: {0}")]
    Store(#[source] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Cheap to clone: one `Arc` inside.
#[derive(Clone)]
pub struct FlowRunner {
    inner: Arc<Inner>,
}

struct Inner {
    plugins: Arc<PluginHost>,
    flows: Arc<FlowCatalog>,
    store: Arc<dyn StateStore>,
    cache: Arc<dyn ResultCache>,
    single_flight: SingleFlight,
    metrics: Arc<Metrics>,
    config: RunnerConfig,
    /// The work queue shared with other hosts, when there is one (Redis).
    queue: Option<Arc<dyn WorkQueue>>,
    /// The queue's length as last read, and submissions here since.
    backlog: Mutex<Backlog>,
    /// Flows executing in this process.
    active: Mutex<HashMap<FlowId, Arc<Active>>>,
    /// Cancelled when the shutdown grace period is over: interrupts every
    /// running step, whose flows are then left paused.
    interrupt_all: CancellationToken,
    /// Set on shutdown: no new flow and no new step starts.
    draining: AtomicBool,
}

/// A flow executing in this process.
struct Active {
    /// Stops the flow's running steps and backoff waits.
    stop: CancellationToken,
    /// Set with `stop` when a user cancelled the flow (rather than a shutdown).
    cancelled: AtomicBool,
    /// Set with `stop` when this host lost the flow's lease to another host.
    lost: AtomicBool,
    /// Becomes true when the flow's final state is recorded.
    finished: watch::Sender<bool>,
}

/// Removes a flow from the active set however its driver ends.
struct ActiveGuard {
    runner: FlowRunner,
    id: FlowId,
    entry: Arc<Active>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.runner.lock_active().remove(&self.id);
        self.entry.finished.send_replace(true);
    }
}

/// What this host knows of the shared queue's length.
struct Backlog {
    read: usize,
    added: usize,
    at: Option<Instant>,
}

/// How the scheduler records a run's start: by creating the flow with its
/// first steps, or by writing this header patch with them.
enum Opening {
    Create,
    Patch(FlowPatch),
}

/// Why a stored flow is continued.
#[derive(Clone, Copy, Debug)]
enum Restart<'a> {
    /// A user's resume: every step that did not complete runs.
    Resume,
    /// A user's retry of one failed step.
    Retry(&'a str),
    /// Taken from the queue, or over from a host that is gone.
    Claimed,
}

/// How a run of the scheduler begins: for a new flow every step is pending;
/// for a resumed one, completed steps are kept and the others start at the
/// attempt numbers given here.
type FirstAttempts = HashMap<String, u32>;

impl FlowRunner {
    pub fn new(
        plugins: Arc<PluginHost>,
        flows: Arc<FlowCatalog>,
        store: Arc<dyn StateStore>,
        cache: Arc<dyn ResultCache>,
        metrics: Arc<Metrics>,
        config: RunnerConfig,
        queue: Option<Arc<dyn WorkQueue>>,
    ) -> Self {
        FlowRunner {
            inner: Arc::new(Inner {
                plugins,
                flows,
                store,
                cache,
                single_flight: SingleFlight::new(),
                metrics,
                config,
                queue: queue.filter(|q| q.shared()),
                backlog: Mutex::new(Backlog {
                    read: 0,
                    added: 0,
                    at: None,
                }),
                active: Mutex::new(HashMap::new()),
                interrupt_all: CancellationToken::new(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<FlowId, Arc<Active>>> {
        self.inner.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn active_count(&self) -> usize {
        self.lock_active().len()
    }

    /// True once shutdown began: no new flow or step starts.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// True when runs are shared with other hosts through a queue.
    pub fn is_shared(&self) -> bool {
        self.inner.queue.is_some()
    }

    /// Stops running a flow whose lease this host lost: another host runs
    /// it now. Nothing more is written for it from here (the store would
    /// refuse it anyway).
    pub fn lose(&self, id: FlowId) {
        self.inner.metrics.leases_lost.inc();
        tracing::warn!(flow_id = %id, "lease lost: another host runs this flow now; stopping it here");
        if let Some(active) = self.lock_active().get(&id).cloned() {
            active.lost.store(true, Ordering::SeqCst);
            active.stop.cancel();
        }
    }

    /// Runs a flow taken from the shared queue, or left without a host:
    /// claims its lease and continues it from its last completed step. A
    /// flow that finished or failed is left as it is (`None`).
    pub async fn run_claimed(&self, id: FlowId) -> Result<Option<FlowState>, RunError> {
        self.detached(|r| async move { r.restart(id, Restart::Claimed).await })
            .await
    }

    /// Claims `id` for this process; fails if it is executing here already.
    fn activate(&self, id: FlowId) -> Result<ActiveGuard, RunError> {
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(RunError::ShuttingDown);
        }
        let mut active = self.lock_active();
        if active.contains_key(&id) {
            return Err(RunError::Conflict(format!("flow {id} is running already")));
        }
        let entry = Arc::new(Active {
            stop: self.inner.interrupt_all.child_token(),
            cancelled: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            finished: watch::channel(false).0,
        });
        active.insert(id, entry.clone());
        Ok(ActiveGuard {
            runner: self.clone(),
            id,
            entry,
        })
    }

    /// Runs `work` in a task of its own, so that a caller that goes away (an
    /// HTTP client disconnecting) cannot abort a flow half-way.
    async fn detached<T, F>(&self, work: impl FnOnce(FlowRunner) -> F) -> Result<T, RunError>
    where
        F: Future<Output = Result<T, RunError>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(work(self.clone()))
            .await
            .map_err(|e| RunError::Internal(e.to_string()))?
    }

    /// Runs a new flow to its end and returns its final state. Step failures
    /// are part of the state (status `failed`), not an `Err`.
    pub async fn execute(
        &self,
        def: Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<FlowState, RunError> {
        self.detached(|r| async move { r.execute_here(def, inputs, ctx).await })
            .await
    }

    async fn execute_here(
        &self,
        def: Arc<FlowDefinition>,
        inputs: Map<String, Value>,
        ctx: FlowContext,
    ) -> Result<FlowState, RunError> {
        let inputs = def
            .resolve_inputs(inputs)
            .map_err(RunError::InvalidInputs)?;
        if let Some(earlier) = self.replayed(&def, &ctx).await? {
            return Ok(earlier);
        }
        let guard = self.activate(ctx.flow_id)?;
        let mut state = self.new_state(&def, inputs, ctx, FlowStatus::Running);
        // The flow is recorded with its first write (see `drive`), which
        // saves a round trip.
        let flow_key = self.flow_cache_key(&def, &state.inputs);
        if let Some(key) = &flow_key {
            if let Some(hit) = self.flow_cache_hit(&def, &mut state, key).await? {
                return Ok(hit);
            }
            self.inner
                .metrics
                .flow_cache_misses
                .get_or_create(&FlowLabel {
                    flow: def.name.clone(),
                })
                .inc();
        }
        let first = def.steps.iter().map(|s| (s.name.clone(), 1)).collect();
        let state = self
            .drive(&def, state, first, &guard.entry, Opening::Create)
            .await?;
        if let (Some(key), FlowStatus::Completed) = (flow_key, state.status) {
            let steps: Map<String, Value> = state
                .steps
                .iter()
                .filter_map(|(name, s)| Some((name.clone(), s.outputs.clone()?)))
                .collect();
            let entry = CachedResult {
                key,
                plugin: String::new(),
                flow: def.name.clone(),
                step: String::new(),
                output: serde_json::json!({ "outputs": state.outputs, "steps": steps }),
                stored_at: Utc::now(),
            };
            if let Err(e) = self.inner.cache.put(&entry, self.flow_ttl(&def)).await {
                self.inner.metrics.cache_errors.inc();
                tracing::warn!(error = %e, "cannot store the flow result");
            }
        }
        Ok(state)
    }

    /// Removes cached results; returns how many there were.
    pub async fn invalidate_cache(
        &self,
        what: &cache::Invalidate,
    ) -> Result<u64, cache::CacheError> {
        let removed = self.inner.cache.invalidate(what).await?;
        self.inner
            .metrics
            .cache_invalidations
            .get_or_create(&crate::metrics::ByLabel {
                by: what.label().into(),
            })
            .inc_by(removed);
        tracing::info!(by = what.label(), removed, "cache invalidated");
        Ok(removed)
    }

    fn flow_ttl(&self, def: &FlowDefinition) -> Duration {
        def.cache
            .ttl_seconds
            .map_or(self.inner.config.cache.ttl, Duration::from_secs)
    }

    /// The whole-flow key, when the flow asks for whole-flow caching.
    fn flow_cache_key(&self, def: &FlowDefinition, inputs: &Value) -> Option<String> {
        if !(self.inner.config.cache.enabled && def.cache.flow_result)
            || def.cache.enabled == Some(false)
        {
            return None;
        }
        let hashes: Vec<(&str, &str)> = def
            .steps
            .iter()
            .map(|s| {
                let hash = self
                    .inner
                    .plugins
                    .get(&s.plugin)
                    .map_or("", |p| p.meta.hash.as_str());
                (s.name.as_str(), hash)
            })
            .collect();
        Some(cache::flow_key(&def.hash, &hashes, inputs))
    }

    /// Completes `state` from a stored whole-flow result, if there is one.
    async fn flow_cache_hit(
        &self,
        def: &FlowDefinition,
        state: &mut FlowState,
        key: &str,
    ) -> Result<Option<FlowState>, RunError> {
        let clock = Instant::now();
        let entry = match self.inner.cache.get(key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.inner.metrics.cache_errors.inc();
                tracing::warn!(error = %e, "flow cache unavailable; running the flow");
                return Ok(None);
            }
        };
        let now = Utc::now();
        for (name, st) in state.steps.iter_mut() {
            st.status = StepStatus::Completed;
            st.cached = true;
            st.cache_key = Some(key.to_owned());
            st.started_at = Some(now);
            st.completed_at = Some(now);
            st.execution_time = Some(0.0);
            st.outputs = entry.output["steps"].get(name).cloned();
        }
        state.status = FlowStatus::Completed;
        state.outputs = entry.output.get("outputs").cloned();
        state.completed_at = Some(now);
        state.total_execution_time = Some(clock.elapsed().as_secs_f64());
        state.metadata.insert("flow_cache".into(), "hit".into());
        state.metadata.insert("cache_key".into(), key.into());
        let m = &self.inner.metrics;
        m.flow_cache_hits
            .get_or_create(&FlowLabel {
                flow: def.name.clone(),
            })
            .inc();
        // The run is recorded like any other, already completed.
        self.create(state).await?;
        self.count_finished(state, clock.elapsed().as_secs_f64());
        Ok(Some(state.clone()))
    }

    /// Whether and how a step uses the cache: on unless turned off by the
    /// configuration, the flow or the step; only for a deterministic plugin
    /// unless the step forces it.
    fn cache_plan(
        &self,
        def: &FlowDefinition,
        step: &StepDef,
        plugin: &PluginMeta,
        input: &Value,
    ) -> Option<CachePlan> {
        let settings = &self.inner.config.cache;
        let on = settings.enabled
            && def.cache.enabled != Some(false)
            && step.cache.enabled != Some(false)
            && (plugin.deterministic || step.cache.force);
        on.then(|| CachePlan {
            key: cache::step_key(&plugin.hash, CONTRACT_VERSION, &step.config, input),
            ttl: step
                .cache
                .ttl_seconds
                .or(def.cache.ttl_seconds)
                .map_or(settings.ttl, Duration::from_secs),
        })
    }

    /// Looks a key up; on a miss, either leads its computation or waits
    /// (bounded) for the flow that does. `Ok` is a hit.
    async fn cache_lookup(&self, plan: &CachePlan, plugin: &str) -> Result<Value, Option<Leader>> {
        let m = &self.inner.metrics;
        let label = PluginLabel {
            plugin: plugin.to_owned(),
        };
        match self.inner.cache.get(&plan.key).await {
            Ok(Some(entry)) => {
                m.cache_hits.get_or_create(&label).inc();
                return Ok(entry.output);
            }
            Ok(None) => {}
            Err(e) => {
                m.cache_errors.inc();
                tracing::warn!(error = %e, "cache unavailable; running the step");
            }
        }
        match self.inner.single_flight.join(&plan.key) {
            Flight::Leader(leader) => {
                m.cache_misses.get_or_create(&label).inc();
                Err(Some(leader))
            }
            Flight::Follower(rx) => {
                m.cache_single_flight_waits.get_or_create(&label).inc();
                match cache::wait(rx, self.inner.config.cache.single_flight_wait).await {
                    Some(output) => {
                        m.cache_hits.get_or_create(&label).inc();
                        Ok(output)
                    }
                    None => {
                        m.cache_misses.get_or_create(&label).inc();
                        Err(None)
                    }
                }
            }
        }
    }

    /// A new run's state, every step pending.
    fn new_state(
        &self,
        def: &FlowDefinition,
        inputs: Map<String, Value>,
        ctx: FlowContext,
        status: FlowStatus,
    ) -> FlowState {
        let mut metadata = ctx.metadata;
        metadata.insert("state_store".into(), self.inner.store.backend().into());
        metadata.insert("flow_hash".into(), def.hash.clone().into());
        FlowState {
            flow_id: ctx.flow_id,
            flow_name: def.name.clone(),
            status,
            inputs: Value::Object(inputs),
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

    /// The run an idempotency key already names, as it stands now; `None`
    /// when the key is new (it now names `ctx.flow_id`) or absent.
    async fn replayed(
        &self,
        def: &FlowDefinition,
        ctx: &FlowContext,
    ) -> Result<Option<FlowState>, RunError> {
        let Some(key) = &ctx.idempotency_key else {
            return Ok(None);
        };
        let scoped = format!("{}:{key}", def.name);
        let earlier = self
            .inner
            .store
            .remember_key(&scoped, ctx.flow_id, self.inner.config.idempotency_ttl)
            .await
            .map_err(RunError::Store)?;
        let Some(id) = earlier else {
            return Ok(None);
        };
        // The earlier request may still be creating its run: wait briefly.
        for _ in 0..50 {
            if let Some(state) = self
                .inner
                .store
                .get_flow(id)
                .await
                .map_err(RunError::Store)?
            {
                return Ok(Some(state));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(RunError::Conflict(format!(
            "idempotency key {key:?} names run {id}, which was never recorded; use another key"
        )))
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
        let inputs = def
            .resolve_inputs(inputs)
            .map_err(RunError::InvalidInputs)?;
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
        if let Some(queue) = &self.inner.queue {
            return self.submit_shared(queue, &def, inputs, ctx).await;
        }
        let in_flight = self.active_count();
        if in_flight >= self.inner.config.max_async_in_flight {
            return Err(RunError::Busy {
                in_flight,
                retry_after_secs: 1,
            });
        }
        let guard = self.activate(ctx.flow_id)?;
        let mut state = self.new_state(&def, inputs, ctx, FlowStatus::Pending);
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
        let mut state = self.new_state(def, inputs, ctx, FlowStatus::Pending);
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

    fn lock_backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue's length for the submission limit: read from Redis when the
    /// last reading is older than 100 ms or the estimate (that reading plus
    /// the submissions here since) nears the limit; else the estimate, which
    /// saves a round trip per submission.
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
        let mut b = self.lock_backlog();
        *b = Backlog {
            read,
            added: 0,
            at: Some(Instant::now()),
        };
        Ok(read)
    }

    /// Continues a failed, paused or interrupted flow from the steps that did
    /// not complete. Completed steps keep their state and output.
    pub async fn resume_flow(&self, id: FlowId) -> Result<FlowState, RunError> {
        self.detached(|r| async move {
            r.restart(id, Restart::Resume)
                .await
                .map(|s| s.expect("a resume always runs"))
        })
        .await
    }

    /// Resets one failed step and continues the flow from it.
    pub async fn retry_step(&self, id: FlowId, step: &str) -> Result<FlowState, RunError> {
        let step = step.to_owned();
        self.detached(|r| async move {
            r.restart(id, Restart::Retry(&step))
                .await
                .map(|s| s.expect("a retry always runs"))
        })
        .await
    }

    /// A stored flow, or `NotFound`.
    async fn stored(&self, id: FlowId) -> Result<FlowState, RunError> {
        self.inner
            .store
            .get_flow(id)
            .await
            .map_err(RunError::Store)?
            .ok_or(RunError::NotFound(id))
    }

    /// Claims a flow's lease for this host and continues the flow. `Claimed`
    /// runs (from the queue, or taken over) leave a finished or failed flow
    /// alone and return `None`; a resume or retry says why it cannot run.
    async fn restart(&self, id: FlowId, how: Restart<'_>) -> Result<Option<FlowState>, RunError> {
        let guard = self.activate(id)?;
        let (claim, state) = self
            .inner
            .store
            .claim_and_load(id)
            .await
            .map_err(RunError::Store)?;
        match claim {
            Claim::Granted => {}
            Claim::HeldElsewhere(owner) => {
                return Err(RunError::Conflict(format!(
                    "flow {id} is running on another host ({owner})"
                )));
            }
            Claim::Missing => return Err(RunError::NotFound(id)),
        }
        let result = match state {
            Some(state) => self.restart_claimed(state, how, &guard).await,
            None => Err(RunError::NotFound(id)),
        };
        if !matches!(result, Ok(Some(_))) {
            // Not run after all: let the lease go at once.
            if let Err(e) = self.inner.store.release(id).await {
                tracing::debug!(flow_id = %id, error = %e, "cannot release a lease");
            }
        }
        result
    }

    async fn restart_claimed(
        &self,
        mut state: FlowState,
        how: Restart<'_>,
        guard: &ActiveGuard,
    ) -> Result<Option<FlowState>, RunError> {
        let id = state.flow_id;
        let only_step = match how {
            Restart::Retry(step) => Some(step),
            Restart::Resume | Restart::Claimed => None,
        };
        let was = state.status;
        match (state.status, how) {
            (
                FlowStatus::Completed | FlowStatus::Cancelled | FlowStatus::Failed,
                Restart::Claimed,
            ) => return Ok(None),
            (FlowStatus::Completed | FlowStatus::Cancelled, _) => {
                return Err(RunError::Conflict(format!(
                    "flow {id} is {}: only a failed, paused or interrupted flow can continue",
                    state.status
                )));
            }
            (
                FlowStatus::Pending | FlowStatus::Running | FlowStatus::Failed | FlowStatus::Paused,
                _,
            ) => {}
        }
        let def = self
            .inner
            .flows
            .get(&state.flow_name)
            .cloned()
            .ok_or_else(|| {
                RunError::Conflict(format!(
                    "flow definition `{}` is not loaded, so run {id} cannot continue",
                    state.flow_name
                ))
            })?;
        if let Some(name) = only_step {
            match state.steps.get(name) {
                _ if def.step(name).is_none() => {
                    return Err(RunError::UnknownStep(name.to_owned()));
                }
                Some(s) if s.status == StepStatus::Failed => {}
                other => {
                    let status = other.map_or(StepStatus::Pending, |s| s.status);
                    return Err(RunError::Conflict(format!(
                        "step `{name}` of flow {id} is {status}: only a failed step can be retried"
                    )));
                }
            }
        }
        let mut first = FirstAttempts::new();
        for step in &def.steps {
            let st = state
                .steps
                .entry(step.name.clone())
                .or_insert_with(|| FlowStepState::pending(&step.name));
            // Resume continues every step that did not complete; retry resets
            // the one failed step and continues what never ran.
            let reset = match only_step {
                Some(name) if step.name == name => true,
                Some(_) => matches!(st.status, StepStatus::Pending | StepStatus::Running),
                None => st.status != StepStatus::Completed,
            };
            if !reset {
                continue;
            }
            // A step interrupted mid-attempt (crash, shutdown) runs that
            // attempt again, with the same idempotency key; a failed or
            // cancelled one starts the next attempt.
            let next = match st.status {
                StepStatus::Running | StepStatus::Pending | StepStatus::Completed => {
                    st.attempt.max(1)
                }
                StepStatus::Failed | StepStatus::Cancelled => st.attempt + 1,
            };
            st.status = StepStatus::Pending;
            first.insert(step.name.clone(), next);
        }
        state.status = FlowStatus::Running;
        state.completed_at = None;
        state.total_execution_time = None;
        state.outputs = None;
        state.error = None;
        // A queued run starting for the first time is no resume.
        if was != FlowStatus::Pending {
            let resumes = state
                .metadata
                .get("resumes")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            state
                .metadata
                .insert("resumes".into(), (resumes + 1).into());
            if matches!(how, Restart::Claimed) {
                self.inner.metrics.flows_reclaimed.inc();
            }
        }
        // Recorded with the first steps' running states, in one write.
        let patch = FlowPatch {
            status: Some(FlowStatus::Running),
            metadata: Some(state.metadata.clone()),
            clear_result: true,
            ..FlowPatch::default()
        };
        if was != FlowStatus::Pending {
            tracing::info!(flow = %def.name, flow_id = %id, steps = first.len(), "flow resumed");
        }
        self.drive(&def, state, first, &guard.entry, Opening::Patch(patch))
            .await
            .map(Some)
    }

    /// Cancels a flow: a running one stops its steps (within about one epoch
    /// tick) and starts no more; a stopped one is marked cancelled. Returns
    /// the state it was left in.
    pub async fn cancel_flow(&self, id: FlowId) -> Result<FlowState, RunError> {
        self.detached(|r| async move { r.cancel_here(id).await })
            .await
    }

    async fn cancel_here(&self, id: FlowId) -> Result<FlowState, RunError> {
        let active = self.lock_active().get(&id).cloned();
        if let Some(active) = active {
            let mut finished = active.finished.subscribe();
            active.cancelled.store(true, Ordering::SeqCst);
            active.stop.cancel();
            // The driver records the final state, then flips `finished`.
            let stopped = tokio::time::timeout(Duration::from_secs(10), finished.wait_for(|f| *f))
                .await
                .is_ok();
            let state = self.stored(id).await?;
            return match (stopped, state.status) {
                (true, FlowStatus::Cancelled) => Ok(state),
                (true, status) => Err(RunError::Conflict(format!(
                    "flow {id} ended {status} before the cancel took effect"
                ))),
                (false, _) => Err(RunError::Internal(format!(
                    "flow {id} did not stop within 10 s of the cancel"
                ))),
            };
        }
        // Claim the flow so that a resume cannot start it meanwhile, here or
        // on another host; a flow another live host runs is cancelled there.
        let _guard = self.activate(id)?;
        let (claim, state) = self
            .inner
            .store
            .claim_and_load(id)
            .await
            .map_err(RunError::Store)?;
        let state = match (claim, state) {
            (Claim::Granted, Some(state)) => state,
            (Claim::HeldElsewhere(owner), _) => {
                drop(_guard);
                return self.cancel_elsewhere(id, &owner).await;
            }
            (Claim::Granted | Claim::Missing, _) => return Err(RunError::NotFound(id)),
        };
        let result = self.cancel_claimed(state).await;
        // The cancelled state gave the lease up; any other outcome does here.
        if let Err(e) = self.inner.store.release(id).await {
            tracing::debug!(flow_id = %id, error = %e, "cannot release a lease");
        }
        result
    }

    /// A flow that another live host runs: asks that host, through the
    /// store, to cancel it (it sees the request when it next renews its
    /// lease), then waits for the flow to be recorded cancelled.
    async fn cancel_elsewhere(&self, id: FlowId, owner: &str) -> Result<FlowState, RunError> {
        self.inner
            .store
            .request_cancel(id)
            .await
            .map_err(RunError::Store)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = self.stored(id).await?;
            match state.status {
                FlowStatus::Cancelled => return Ok(state),
                FlowStatus::Completed | FlowStatus::Failed => {
                    return Err(RunError::Conflict(format!(
                        "flow {id} ended {} on host {owner} before the cancel took effect",
                        state.status
                    )));
                }
                FlowStatus::Pending | FlowStatus::Running | FlowStatus::Paused => {}
            }
            if Instant::now() > deadline {
                return Err(RunError::Internal(format!(
                    "host {owner} did not cancel flow {id} within 30 s of the request"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cancels a flow claimed here, as loaded with its claim.
    async fn cancel_claimed(&self, mut state: FlowState) -> Result<FlowState, RunError> {
        let id = state.flow_id;
        match state.status {
            FlowStatus::Completed => {
                return Err(RunError::Conflict(format!(
                    "flow {id} completed already: nothing to cancel"
                )));
            }
            FlowStatus::Cancelled => return Ok(state),
            FlowStatus::Pending | FlowStatus::Running | FlowStatus::Failed | FlowStatus::Paused => {
            }
        }
        // Not executing here: steps left running belonged to a host that is
        // gone; record them cancelled with the flow.
        for st in state.steps.values_mut() {
            if st.status == StepStatus::Running {
                st.status = StepStatus::Cancelled;
                st.completed_at = Some(Utc::now());
                let r = self
                    .inner
                    .store
                    .save_step(id, st, &FlowPatch::default())
                    .await;
                self.record(id, r);
            }
        }
        let patch = FlowPatch {
            status: Some(FlowStatus::Cancelled),
            completed_at: Some(Utc::now()),
            ..FlowPatch::default()
        };
        self.inner
            .store
            .update_flow(id, &patch)
            .await
            .map_err(RunError::Store)?;
        patch.apply(&mut state);
        self.count_finished(&state, 0.0);
        Ok(state)
    }

    /// Stops taking work, gives running steps `grace` to finish, then
    /// interrupts them; every unfinished flow is left paused. Returns how many
    /// flows were still running when the grace period ended.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.inner.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        while self.active_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.active_count();
        if left > 0 {
            tracing::warn!(
                flows = left,
                "grace period over: interrupting running steps"
            );
            self.inner.interrupt_all.cancel();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while self.active_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        left
    }

    /// Resumes, in the background, every flow left paused or running (by a
    /// host that is gone). Returns how many were found.
    pub async fn resume_interrupted(&self) -> Result<usize, RunError> {
        let mut ids = Vec::new();
        for status in [FlowStatus::Running, FlowStatus::Paused] {
            let filter = ListFilter {
                status: Some(status),
                limit: usize::MAX,
                ..ListFilter::default()
            };
            let found = self
                .inner
                .store
                .list_flows(&filter)
                .await
                .map_err(RunError::Store)?;
            ids.extend(found.into_iter().map(|s| s.flow_id));
        }
        for &id in &ids {
            let runner = self.clone();
            tokio::spawn(async move {
                match runner.resume_flow(id).await {
                    Ok(state) => {
                        tracing::info!(flow_id = %id, status = %state.status, "resumed flow finished")
                    }
                    Err(e) => tracing::warn!(flow_id = %id, error = %e, "cannot resume flow"),
                }
            });
        }
        Ok(ids.len())
    }

    /// The scheduler: runs every pending step whose dependencies completed,
    /// as many at once as are ready, until none is left to start. After a
    /// failure, a cancel or a shutdown no new step starts; the running ones
    /// are awaited. Then records the flow's final state.
    async fn drive(
        &self,
        def: &Arc<FlowDefinition>,
        state: FlowState,
        first: FirstAttempts,
        active: &Arc<Active>,
        opening: Opening,
    ) -> Result<FlowState, RunError> {
        // Every log line of the flow, its steps' and plugins' included,
        // carries the flow's name and id.
        let span = tracing::info_span!("flow", flow = %def.name, flow_id = %state.flow_id);
        self.inner.metrics.flows_in_flight.inc();
        self.inner
            .metrics
            .flows_started
            .get_or_create(&FlowLabel {
                flow: def.name.clone(),
            })
            .inc();
        let id = state.flow_id;
        let result = self
            .drive_in_span(def, state, first, active, opening)
            .instrument(span)
            .await;
        self.inner.metrics.flows_in_flight.dec();
        if active.lost.load(Ordering::SeqCst) {
            // Forget the lost lease: this host is done with the flow.
            if let Err(e) = self.inner.store.release(id).await {
                tracing::debug!(flow_id = %id, error = %e, "cannot let go of a lost lease");
            }
        }
        result
    }

    async fn drive_in_span(
        &self,
        def: &Arc<FlowDefinition>,
        mut state: FlowState,
        first: FirstAttempts,
        active: &Arc<Active>,
        opening: Opening,
    ) -> Result<FlowState, RunError> {
        let (mut create, mut opening) = match opening {
            Opening::Create => (true, None),
            Opening::Patch(patch) => (false, Some(patch)),
        };
        let clock = Instant::now();
        let inputs = state.inputs.as_object().cloned().unwrap_or_default();
        let mut outputs: HashMap<String, Value> = state
            .steps
            .values()
            .filter(|s| s.status == StepStatus::Completed)
            .map(|s| {
                (
                    s.step_name.clone(),
                    s.outputs.clone().unwrap_or(Value::Null),
                )
            })
            .collect();
        let mut done: BTreeSet<String> = outputs.keys().cloned().collect();
        let mut launched: HashSet<String> = HashSet::new();
        let mut failure: Option<String> = None;
        let mut running = JoinSet::new();
        // Step states to record, written together with the next ones: a
        // finished step and the steps it lets start share one round trip,
        // and the last one shares it with the flow's final state. A step is
        // still recorded running before its plugin is called, and finished
        // before anything that depends on it starts.
        let mut unwritten: Vec<FlowStepState> = Vec::new();
        loop {
            let stopping = failure.is_some()
                || active.stop.is_cancelled()
                || self.inner.draining.load(Ordering::SeqCst);
            let mut to_start: Vec<(usize, FlowStepState)> = Vec::new();
            if !stopping {
                for (index, step) in def.steps.iter().enumerate() {
                    let Some(&attempt) = first.get(&step.name) else {
                        continue;
                    };
                    if launched.contains(&step.name) || !step.depends_on.is_subset(&done) {
                        continue;
                    }
                    launched.insert(step.name.clone());
                    let scope = Scope {
                        inputs: &inputs,
                        outputs: &outputs,
                    };
                    match step.input.resolve(&scope) {
                        Ok(input) => {
                            let mut st = FlowStepState::pending(&step.name);
                            st.status = StepStatus::Running;
                            st.started_at = Some(Utc::now());
                            st.inputs = Some(input);
                            st.attempt = attempt;
                            unwritten.push(st.clone());
                            to_start.push((index, st));
                        }
                        Err(e) => {
                            let mut failed = FlowStepState::pending(&step.name);
                            failed.status = StepStatus::Failed;
                            failed.attempt = attempt;
                            failed.error = Some(format!("input: {e}"));
                            failure = Some(format!("step `{}` failed: input: {e}", step.name));
                            unwritten.push(failed.clone());
                            state.steps.insert(step.name.clone(), failed);
                            break;
                        }
                    }
                }
            }
            if running.is_empty() && to_start.is_empty() {
                break;
            }
            let current = to_start.last().map(|(i, _)| def.steps[*i].name.clone());
            if create {
                // A new flow is created with its first steps already running.
                let mut snapshot = state.clone();
                for st in unwritten.drain(..) {
                    snapshot.steps.insert(st.step_name.clone(), st);
                }
                snapshot.current_step = current;
                self.create(&mut snapshot).await?;
                state.metadata = snapshot.metadata;
                create = false;
            } else if !unwritten.is_empty() || opening.is_some() {
                let mut patch = opening.take().unwrap_or_default();
                patch.current_step = current.or(patch.current_step);
                let batch: Vec<&FlowStepState> = unwritten.iter().collect();
                let r = self
                    .inner
                    .store
                    .save_steps(state.flow_id, &batch, &patch)
                    .await;
                self.record(state.flow_id, r);
                unwritten.clear();
            }
            let step_state = if running.is_empty() && to_start.len() == 1 {
                // A lone step (a chain, say) runs in this task: no spawn and
                // no wake-up between tasks.
                let (index, st) = to_start.remove(0);
                let span = tracing::info_span!("step", step = %def.steps[index].name);
                self.run_step(state.flow_id, def, index, st, active)
                    .instrument(span)
                    .await
            } else {
                for (index, st) in to_start {
                    let (runner, def, id, active) =
                        (self.clone(), def.clone(), state.flow_id, active.clone());
                    let span = tracing::info_span!("step", step = %def.steps[index].name);
                    running.spawn(
                        async move { runner.run_step(id, &def, index, st, &active).await }
                            .instrument(span),
                    );
                }
                let Some(joined) = running.join_next().await else {
                    break;
                };
                match joined {
                    Ok(s) => s,
                    Err(e) => {
                        // A panicking step task is a host bug; fail the flow, not the host.
                        tracing::error!(flow_id = %state.flow_id, error = %e, "step task panicked");
                        failure.get_or_insert_with(|| "internal error in a step".into());
                        continue;
                    }
                }
            };
            state.current_step = Some(step_state.step_name.clone());
            match step_state.status {
                StepStatus::Completed => {
                    done.insert(step_state.step_name.clone());
                    let out = step_state.outputs.clone().unwrap_or(Value::Null);
                    outputs.insert(step_state.step_name.clone(), out);
                }
                StepStatus::Failed if failure.is_none() => {
                    failure = Some(format!(
                        "step `{}` failed: {}",
                        step_state.step_name,
                        step_state.error.as_deref().unwrap_or("unknown error")
                    ));
                }
                _ => {}
            }
            unwritten.push(step_state.clone());
            state.steps.insert(step_state.step_name.clone(), step_state);
        }
        // A step that failed in an earlier run and was not retried still
        // fails the flow.
        if failure.is_none()
            && let Some(s) = state
                .steps
                .values()
                .find(|s| s.status == StepStatus::Failed && def.step(&s.step_name).is_some())
        {
            failure = Some(format!(
                "step `{}` failed: {}",
                s.step_name,
                s.error.as_deref().unwrap_or("unknown error")
            ));
        }
        let all_done = def.steps.iter().all(|s| done.contains(&s.name));
        state.status = if active.cancelled.load(Ordering::SeqCst) {
            FlowStatus::Cancelled
        } else if failure.is_some() {
            FlowStatus::Failed
        } else if all_done {
            match def.outputs.resolve(&Scope {
                inputs: &inputs,
                outputs: &outputs,
            }) {
                Ok(v) => {
                    state.outputs = Some(v);
                    FlowStatus::Completed
                }
                Err(e) => {
                    failure = Some(format!("flow outputs: {e}"));
                    FlowStatus::Failed
                }
            }
        } else {
            FlowStatus::Paused
        };
        state.error = failure;
        let elapsed = clock.elapsed().as_secs_f64();
        let finished = state.status != FlowStatus::Paused;
        if finished {
            state.completed_at = Some(Utc::now());
            state.total_execution_time = Some(
                (Utc::now() - state.started_at)
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1e6,
            );
        }
        let patch = FlowPatch {
            status: Some(state.status),
            completed_at: state.completed_at,
            total_execution_time: state.total_execution_time,
            outputs: state.outputs.clone(),
            error: state.error.clone(),
            metadata: Some(state.metadata.clone()),
            // An opening never written (no step was left to start) still
            // clears the result of the run before.
            clear_result: opening.is_some_and(|o| o.clear_result),
            ..FlowPatch::default()
        };
        if create {
            self.create(&mut state).await?;
        } else {
            let batch: Vec<&FlowStepState> = unwritten.iter().collect();
            let r = self
                .inner
                .store
                .save_steps(state.flow_id, &batch, &patch)
                .await;
            self.record(state.flow_id, r);
        }
        self.count_finished(&state, elapsed);
        tracing::info!(
            flow = %def.name,
            flow_id = %state.flow_id,
            status = %state.status,
            seconds = elapsed,
            "flow {}", if finished { "finished" } else { "paused" }
        );
        Ok(state)
    }

    /// Records a new flow, noting in its metadata where it went (the store
    /// may fall back to memory while creating it).
    async fn create(&self, state: &mut FlowState) -> Result<(), RunError> {
        match self.inner.store.create_flow(state).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(id)) => return Err(RunError::DuplicateId(id)),
            Err(e) => return Err(RunError::Store(e)),
        }
        let backend = self.inner.store.backend();
        state.metadata.insert("state_store".into(), backend.into());
        let degraded = self.inner.store.degraded();
        self.inner.metrics.degraded.set(i64::from(degraded));
        if degraded {
            state.metadata.insert("degraded".into(), true.into());
        }
        Ok(())
    }

    fn count_finished(&self, state: &FlowState, elapsed: f64) {
        let m = &self.inner.metrics;
        m.flow_runs
            .get_or_create(&FlowOutcome {
                flow: state.flow_name.clone(),
                outcome: state.status.to_string(),
            })
            .inc();
        if state.status == FlowStatus::Completed || state.status == FlowStatus::Failed {
            m.flow_duration
                .get_or_create(&FlowLabel {
                    flow: state.flow_name.clone(),
                })
                .observe(elapsed);
        }
    }

    /// One step: attempts under its retry policy, each saved running before
    /// the plugin call and finished after.
    /// One step, from its first attempt's `running` state (recorded by the
    /// driver) to its final state, which it returns for the driver to record.
    /// Only what happens between attempts is written here.
    async fn run_step(
        &self,
        flow_id: FlowId,
        def: &FlowDefinition,
        index: usize,
        mut st: FlowStepState,
        active: &Active,
    ) -> FlowStepState {
        let step = &def.steps[index];
        let policy = self.inner.config.retry.with_overrides(&step.retry);
        let store = &self.inner.store;
        let labels = StepLabel {
            flow: def.name.clone(),
            step: step.name.clone(),
            plugin: step.plugin.clone(),
        };
        let id = flow_id.to_string();
        let plugin = self.inner.plugins.get(&step.plugin).cloned();
        let input = st.inputs.clone().unwrap_or(Value::Null);
        let plan = plugin
            .as_ref()
            .and_then(|p| self.cache_plan(def, step, &p.meta, &input));
        let mut leader = None;
        if let Some(plan) = &plan {
            st.cache_key = Some(plan.key.clone());
            let clock = Instant::now();
            match self.cache_lookup(plan, &step.plugin).await {
                Ok(output) => {
                    st.status = StepStatus::Completed;
                    st.cached = true;
                    st.outputs = Some(output);
                    st.completed_at = Some(Utc::now());
                    st.execution_time = Some(clock.elapsed().as_secs_f64());
                    return st;
                }
                Err(lead) => leader = lead,
            }
        }
        let mut tries = 0;
        loop {
            tries += 1;
            if tries > 1 {
                st.status = StepStatus::Running;
                st.started_at = Some(Utc::now());
                st.completed_at = None;
                st.execution_time = None;
                let patch = FlowPatch {
                    current_step: Some(step.name.clone()),
                    ..FlowPatch::default()
                };
                let r = store.save_step(flow_id, &st, &patch).await;
                self.record(flow_id, r);
            }

            let clock = Instant::now();
            let execution = match &plugin {
                Some(plugin) => {
                    let call = Call {
                        flow_id: &id,
                        step: &step.name,
                        attempt: st.attempt,
                        config: &step.config,
                        input: st.inputs.as_ref().unwrap_or(&Value::Null),
                        timeout: step.timeout,
                        stop: &active.stop,
                    };
                    self.inner.plugins.execute(plugin, &call).await
                }
                None => Execution {
                    result: Err(PluginError::Failed(format!(
                        "plugin `{}` is not loaded",
                        step.plugin
                    ))),
                    stdout: None,
                    stderr: None,
                },
            };
            st.stdout = execution.stdout;
            st.stderr = execution.stderr;
            let result = execution.result;
            let elapsed = clock.elapsed().as_secs_f64();
            st.completed_at = Some(Utc::now());
            st.execution_time = Some(elapsed);
            let outcome = match result {
                Ok(output) => {
                    st.status = StepStatus::Completed;
                    st.outputs = Some(output);
                    st.error = None;
                    st.error_kind = None;
                    "completed"
                }
                Err(PluginError::Interrupted) => {
                    if active.cancelled.load(Ordering::SeqCst) {
                        st.status = StepStatus::Cancelled;
                        st.error = Some("cancelled while running".into());
                    } else if active.lost.load(Ordering::SeqCst) {
                        // Another host runs the flow now; nothing is recorded.
                        st.status = StepStatus::Pending;
                        st.error = Some("interrupted: lease lost".into());
                    } else {
                        // Shutdown: this attempt runs again on resume.
                        st.status = StepStatus::Pending;
                        st.error = Some("interrupted by shutdown".into());
                    }
                    "interrupted"
                }
                Err(e) => {
                    if let Some(kind) = e.trap_kind() {
                        self.inner
                            .metrics
                            .plugin_traps
                            .get_or_create(&crate::metrics::TrapLabel {
                                plugin: step.plugin.clone(),
                                kind: kind.to_owned(),
                            })
                            .inc();
                    }
                    tracing::warn!(flow_id = %flow_id, step = %step.name, plugin = %step.plugin, attempt = st.attempt, error = %e, "step attempt failed");
                    st.status = StepStatus::Failed;
                    st.error = Some(e.to_string());
                    st.error_kind = Some(e.kind().to_owned());
                    if e.is_retryable() && tries < policy.max_attempts {
                        "retrying"
                    } else {
                        "failed"
                    }
                }
            };
            if outcome == "retrying" {
                let r = store.save_step(flow_id, &st, &FlowPatch::default()).await;
                self.record(flow_id, r);
            }
            let m = &self.inner.metrics;
            m.step_runs
                .get_or_create(&StepOutcome {
                    flow: labels.flow.clone(),
                    step: labels.step.clone(),
                    plugin: labels.plugin.clone(),
                    outcome: if outcome == "retrying" {
                        "failed"
                    } else {
                        outcome
                    }
                    .into(),
                })
                .inc();
            m.step_duration.get_or_create(&labels).observe(elapsed);
            if outcome == "completed"
                && let (Some(plan), Some(output)) = (&plan, &st.outputs)
            {
                let entry = CachedResult {
                    key: plan.key.clone(),
                    plugin: step.plugin.clone(),
                    flow: def.name.clone(),
                    step: step.name.clone(),
                    output: output.clone(),
                    stored_at: Utc::now(),
                };
                match self.inner.cache.put(&entry, plan.ttl).await {
                    Ok(()) => {
                        m.cache_stores
                            .get_or_create(&PluginLabel {
                                plugin: step.plugin.clone(),
                            })
                            .inc();
                    }
                    Err(e) => {
                        m.cache_errors.inc();
                        tracing::warn!(error = %e, "cannot store the step result");
                    }
                }
                if let Some(leader) = leader.take() {
                    leader.finish(Some(output.clone()));
                }
            }
            if outcome != "retrying" {
                return st;
            }
            m.step_retries.get_or_create(&labels).inc();
            let delay = policy.delay(tries, fastrand::f64());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = active.stop.cancelled() => {
                    if active.cancelled.load(Ordering::SeqCst) {
                        st.status = StepStatus::Cancelled;
                    } else {
                        // Shutdown between attempts: the next attempt is due
                        // and runs on resume.
                        st.status = StepStatus::Pending;
                        st.attempt += 1;
                    }
                    return st;
                }
            }
            st.attempt += 1;
        }
    }

    /// A failed state write does not stop the flow: it is logged and counted,
    /// and the flow's result is still returned to the caller.
    fn record(&self, flow_id: FlowId, result: Result<(), StoreError>) {
        if let Err(StoreError::Fenced(id)) = result {
            self.inner.metrics.fenced_writes.inc();
            tracing::warn!(flow_id = %id, "state write refused: another host holds this flow's lease");
            self.lose(id);
            return;
        }
        if let Err(e) = result {
            self.inner.metrics.state_write_errors.inc();
            tracing::error!(flow_id = %flow_id, error = %e, "state write failed; the flow goes on");
        }
    }
}
