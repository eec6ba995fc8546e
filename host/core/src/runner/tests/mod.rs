//! The runner's tests, on the in-memory store and cache and a scripted fake
//! executor: no Redis, no wasm, no plugin is ever compiled.
//!
//! Covered: a chain runs in order, each step fed from the one before;
//! independent steps overlap and a join waits for both; retries and their
//! backoff (on tokio's paused clock), a non-retryable error, attempts running
//! out; a step input that cannot be resolved; cancel of a running flow and
//! of a stored one; resume and retry of a failed flow (completed steps are
//! not run again) and the conflicts they answer; a shutdown that pauses a
//! flow, resumed by another runner; refused (fenced) writes stopping the
//! flow; step and whole-flow cache hits and single-flight across concurrent
//! flows; background submission and its limit; idempotency keys, given back
//! by refused requests, and a sync replay answering its run's end; a store
//! outage holding the flow (no step starts unrecorded) up to the hold limit;
//! which plugin failures are retried; large values offloaded to blobs and
//! put back for plugins, blob references held, checked and swept.
//!
//! Every test asserts on the state recorded in the store, not only on what
//! the runner returns. One file per concern; this one holds the helpers: the fake executor
//! (`FakeExecutor`, driven per plugin by a `Script`), a `Gate` to hold a
//! plugin call, a recording observer (`Recorder`), a store that delegates to
//! `MemoryStore` and records, signals and can refuse writes (`TestStore`),
//! and the `Harness` that wires them into a `FlowRunner`. No test sleeps to
//! synchronise: they wait on the fake's calls, the observer's events or the
//! store's writes, each bounded by `PATIENCE`.

mod blobs;
mod caching;
mod cancel;
mod fencing;
mod order;
mod outage;
mod resume;
mod retries;
mod retryable;
mod single_flight;
mod submit;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tokio::sync::{Barrier, watch};
use tokio::time::Instant;

use super::{CacheSettings, FlowContext, FlowRunner, Ports, RetryPolicy, RunError, RunnerConfig};
use crate::blob::MemoryBlobs;
use crate::cache::{CacheError, CachedResult, Invalidate, ResultCache};
use crate::executor::{Call, Execution, Executor, PluginError, PluginFacts};
use crate::flow::{FlowCatalog, FlowDefinition};
use crate::memory::MemoryStore;
use crate::observe::{Event, Observer};
use crate::state::{
    Claim, FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, FlowSummary, ListFilter,
    Renewal, StateStore, StepStatus, StoreError,
};

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not a JSON object: {other}"),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `(step, status, attempt)` rows, as `TestStore::history` gives them.
fn rows(items: &[(&str, StepStatus, u32)]) -> Vec<(String, StepStatus, u32)> {
    items
        .iter()
        .map(|(s, st, a)| ((*s).to_owned(), *st, *a))
        .collect()
}

fn config() -> RunnerConfig {
    RunnerConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(5),
            factor: 2.0,
            max_delay: Duration::from_millis(20),
            jitter: 0.0,
        },
        cache: CacheSettings {
            enabled: true,
            ttl: Duration::from_secs(60),
            single_flight_wait: PATIENCE,
        },
        max_async_in_flight: 8,
        idempotency_ttl: Duration::from_secs(60),
        inline_max_bytes: 64 * 1024,
    }
}

// ---------------------------------------------------------------------------
// The fake executor
// ---------------------------------------------------------------------------

type Outcome = Result<Value, PluginError>;

/// What a fake plugin does with one call.
type Script =
    Arc<dyn Fn(Invocation) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// What a script sees of one call.
struct Invocation {
    input: Value,
    /// 1 for the plugin's first call in the test, 2 for its second, …
    nth: usize,
}

fn script<F, Fut>(f: F) -> Script
where
    F: Fn(Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(move |call| Box::pin(f(call)))
}

/// Answers `f(input)` at once.
fn compute(f: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Script {
    script(move |call| std::future::ready(Ok(f(&call.input))))
}

/// Fails every call with `error()`.
fn fail(error: impl Fn() -> PluginError + Send + Sync + 'static) -> Script {
    script(move |_| std::future::ready(Err(error())))
}

/// Fails the first `n` calls with `error()`, then answers `f(input)`.
fn fail_then(
    n: usize,
    error: impl Fn() -> PluginError + Send + Sync + 'static,
    f: impl Fn(&Value) -> Value + Send + Sync + 'static,
) -> Script {
    script(move |call| {
        std::future::ready(if call.nth <= n {
            Err(error())
        } else {
            Ok(f(&call.input))
        })
    })
}

/// Never answers: the call runs until its `stop` token interrupts it.
fn until_stopped() -> Script {
    script(|_| std::future::pending())
}

/// Answers `f(input)` once `gate` is open.
fn gated(gate: &Gate, f: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Script {
    let gate = gate.clone();
    script(move |call| {
        let (gate, out) = (gate.clone(), f(&call.input));
        async move {
            gate.wait().await;
            Ok(out)
        }
    })
}

fn text_at(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

fn text(v: &Value) -> String {
    text_at(v, "text")
}

fn upper(v: &Value) -> Value {
    json!({"text": text(v).to_uppercase()})
}

fn exclaim(v: &Value) -> Value {
    json!({"text": format!("{}!", text(v))})
}

fn count(v: &Value) -> Value {
    json!({"n": text(v).chars().count()})
}

/// Held closed until a test opens it; any number of calls may wait on it.
#[derive(Clone)]
struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new(watch::channel(false).0))
    }

    fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

struct FakePlugin {
    deterministic: bool,
    script: Script,
    calls: usize,
}

/// One finished call, as the fake saw it.
#[derive(Clone, Debug)]
struct CallRecord {
    step: String,
    attempt: u32,
    input: Value,
    started: Instant,
    ended: Instant,
    /// The output, or the error's text.
    result: Result<Value, String>,
}

/// Runs each plugin by the script a test gave it; counts calls, records
/// each one (times, input, attempt, result) and how many ran at once. Like
/// the wasm adapter, it races every call against `call.stop`, biased toward
/// the stop: a cancelled token interrupts the call (`Interrupted`).
struct FakeExecutor {
    plugins: Mutex<HashMap<String, FakePlugin>>,
    log: Mutex<Vec<CallRecord>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Bumped at the start of every call.
    started: watch::Sender<usize>,
}

impl FakeExecutor {
    fn new() -> Self {
        FakeExecutor {
            plugins: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            started: watch::channel(0).0,
        }
    }

    /// Adds a plugin; a deterministic one has its results cached.
    fn with(self, name: &str, deterministic: bool, script: Script) -> Self {
        lock(&self.plugins).insert(
            name.to_owned(),
            FakePlugin {
                deterministic,
                script,
                calls: 0,
            },
        );
        self
    }

    /// Changes what a plugin does from its next call on.
    fn set(&self, name: &str, script: Script) {
        lock(&self.plugins)
            .get_mut(name)
            .expect("a plugin the test declared")
            .script = script;
    }

    /// Calls of `plugin` so far, finished or not.
    fn calls(&self, plugin: &str) -> usize {
        lock(&self.plugins).get(plugin).map_or(0, |p| p.calls)
    }

    fn log(&self) -> Vec<CallRecord> {
        lock(&self.log).clone()
    }

    fn calls_of_step(&self, step: &str) -> Vec<CallRecord> {
        self.log().into_iter().filter(|c| c.step == step).collect()
    }

    fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until `plugin` has been called `n` times.
    async fn wait_calls(&self, plugin: &str, n: usize) {
        let mut rx = self.started.subscribe();
        within(&format!("{n} call(s) of `{plugin}`"), async {
            while self.calls(plugin) < n {
                rx.changed().await.expect("the executor lives");
            }
        })
        .await;
    }
}

#[async_trait]
impl Executor for FakeExecutor {
    fn plugin(&self, name: &str) -> Option<PluginFacts> {
        lock(&self.plugins).get(name).map(|p| PluginFacts {
            hash: format!("hash-of-{name}"),
            deterministic: p.deterministic,
        })
    }

    fn contract_version(&self) -> &str {
        "test-contract"
    }

    async fn execute(&self, plugin: &str, call: &Call<'_>) -> Execution {
        let started = Instant::now();
        let (script, nth) = {
            let mut plugins = lock(&self.plugins);
            let Some(p) = plugins.get_mut(plugin) else {
                return Execution::failed(PluginError::Failed(format!("no plugin `{plugin}`")));
            };
            p.calls += 1;
            (p.script.clone(), p.calls)
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.started.send_modify(|n| *n += 1);
        let run = script(Invocation {
            input: call.input.clone(),
            nth,
        });
        let result = tokio::select! {
            biased;
            () = call.stop.cancelled() => Err(PluginError::Interrupted),
            r = run => r,
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        lock(&self.log).push(CallRecord {
            step: call.step.to_owned(),
            attempt: call.attempt,
            input: call.input.clone(),
            started,
            ended: Instant::now(),
            result: result
                .as_ref()
                .map(Clone::clone)
                .map_err(ToString::to_string),
        });
        Execution {
            result,
            stdout: None,
            stderr: None,
        }
    }
}

// ---------------------------------------------------------------------------
// The recording observer
// ---------------------------------------------------------------------------

/// Keeps every event as its `Debug` text (`WriteFenced`,
/// `StepAttempted { flow: "f", step: "a", … }`), and signals each one.
struct Recorder {
    events: Mutex<Vec<String>>,
    tick: watch::Sender<usize>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            events: Mutex::new(Vec::new()),
            tick: watch::channel(0).0,
        }
    }

    /// The events whose text starts with `prefix`.
    fn matching(&self, prefix: &str) -> Vec<String> {
        lock(&self.events)
            .iter()
            .filter(|e| e.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn count(&self, prefix: &str) -> usize {
        self.matching(prefix).len()
    }

    /// Waits until `n` events start with `prefix`.
    async fn wait_for(&self, prefix: &str, n: usize) {
        let mut rx = self.tick.subscribe();
        within(&format!("{n} event(s) `{prefix}…`"), async {
            while self.count(prefix) < n {
                rx.changed().await.expect("the observer lives");
            }
        })
        .await;
    }
}

impl Observer for Recorder {
    fn record(&self, event: Event<'_>) {
        lock(&self.events).push(format!("{event:?}"));
        self.tick.send_modify(|n| *n += 1);
    }
}

// ---------------------------------------------------------------------------
// The store: MemoryStore, recorded and optionally fenced
// ---------------------------------------------------------------------------

/// `MemoryStore` behind a wrapper that delegates every call and adds: the
/// history of step states written, a signal on every write, the leases
/// released, fencing: after `fence_after(n)`, the step and header writes
/// beyond the next `n` are refused with `StoreError::Fenced` and not
/// applied, as a shared store does once another host took the lease; and
/// outages: while `set_outage(true)`, step and header writes fail with
/// `StoreError::Unavailable`, as Redis does while it is down.
struct TestStore {
    inner: MemoryStore,
    writes_left: AtomicUsize,
    refused: AtomicUsize,
    outage: std::sync::atomic::AtomicBool,
    /// Writes failed by the outage.
    unavailable: AtomicUsize,
    history: Mutex<Vec<(FlowId, String, StepStatus, u32)>>,
    released: Mutex<Vec<FlowId>>,
    tick: watch::Sender<usize>,
}

impl TestStore {
    fn new() -> Self {
        TestStore {
            inner: MemoryStore::new(),
            writes_left: AtomicUsize::new(usize::MAX),
            refused: AtomicUsize::new(0),
            outage: std::sync::atomic::AtomicBool::new(false),
            unavailable: AtomicUsize::new(0),
            history: Mutex::new(Vec::new()),
            released: Mutex::new(Vec::new()),
            tick: watch::channel(0).0,
        }
    }

    /// Accepts `n` more step or header writes, then refuses them all.
    fn fence_after(&self, n: usize) {
        self.writes_left.store(n, Ordering::SeqCst);
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Starts or ends an outage of step and header writes.
    fn set_outage(&self, down: bool) {
        self.outage.store(down, Ordering::SeqCst);
    }

    /// Waits until `n` writes have failed in outages.
    async fn wait_unavailable(&self, n: usize) {
        let mut rx = self.tick.subscribe();
        within(&format!("{n} write(s) failed by the outage"), async {
            while self.unavailable.load(Ordering::SeqCst) < n {
                rx.changed().await.expect("the store lives");
            }
        })
        .await;
    }

    fn released(&self) -> Vec<FlowId> {
        lock(&self.released).clone()
    }

    /// Every step state written for flow `id`, in order: `(step, status,
    /// attempt)`; a new flow's steps that are not pending count as written.
    fn history(&self, id: FlowId) -> Vec<(String, StepStatus, u32)> {
        lock(&self.history)
            .iter()
            .filter(|(f, ..)| *f == id)
            .map(|(_, s, st, a)| (s.clone(), *st, *a))
            .collect()
    }

    fn admit(&self, id: FlowId) -> Result<(), StoreError> {
        if self.outage.load(Ordering::SeqCst) {
            self.unavailable.fetch_add(1, Ordering::SeqCst);
            self.tick.send_modify(|n| *n += 1);
            return Err(StoreError::Unavailable("test outage".into()));
        }
        self.writes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map(drop)
            .map_err(|_| {
                self.refused.fetch_add(1, Ordering::SeqCst);
                StoreError::Fenced(id)
            })
    }

    fn note<'a>(&self, id: FlowId, steps: impl IntoIterator<Item = &'a FlowStepState>) {
        lock(&self.history).extend(
            steps
                .into_iter()
                .map(|s| (id, s.step_name.clone(), s.status, s.attempt)),
        );
        self.tick.send_modify(|n| *n += 1);
    }
}

#[async_trait]
impl StateStore for TestStore {
    async fn create_flow(&self, flow: &FlowState) -> Result<(), StoreError> {
        self.inner.create_flow(flow).await?;
        let started = flow
            .steps
            .values()
            .filter(|s| s.status != StepStatus::Pending);
        self.note(flow.flow_id, started);
        Ok(())
    }

    async fn save_steps(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        self.admit(id)?;
        self.inner.save_steps(id, steps, patch).await?;
        self.note(id, steps.iter().copied());
        Ok(())
    }

    async fn update_flow(&self, id: FlowId, patch: &FlowPatch) -> Result<(), StoreError> {
        self.admit(id)?;
        self.inner.update_flow(id, patch).await?;
        self.note(id, []);
        Ok(())
    }

    async fn get_flow(&self, id: FlowId) -> Result<Option<FlowState>, StoreError> {
        self.inner.get_flow(id).await
    }

    async fn list_flows(&self, filter: &ListFilter) -> Result<Vec<FlowSummary>, StoreError> {
        self.inner.list_flows(filter).await
    }

    async fn delete_flow(&self, id: FlowId) -> Result<bool, StoreError> {
        self.inner.delete_flow(id).await
    }

    async fn prune(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        self.inner.prune(cutoff).await
    }

    async fn claim(&self, id: FlowId) -> Result<Claim, StoreError> {
        self.inner.claim(id).await
    }

    async fn claim_and_load(&self, id: FlowId) -> Result<(Claim, Option<FlowState>), StoreError> {
        self.inner.claim_and_load(id).await
    }

    async fn renew_claims(&self) -> Result<Renewal, StoreError> {
        self.inner.renew_claims().await
    }

    async fn request_cancel(&self, id: FlowId) -> Result<(), StoreError> {
        self.inner.request_cancel(id).await
    }

    async fn release(&self, id: FlowId) -> Result<(), StoreError> {
        lock(&self.released).push(id);
        self.inner.release(id).await
    }

    async fn remember_key(
        &self,
        key: &str,
        id: FlowId,
        ttl: Duration,
    ) -> Result<Option<FlowId>, StoreError> {
        self.inner.remember_key(key, id, ttl).await
    }

    async fn forget_key(&self, key: &str, id: FlowId) -> Result<bool, StoreError> {
        self.inner.forget_key(key, id).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn degraded(&self) -> bool {
        self.inner.degraded()
    }
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/// A runner over the fake executor, a `TestStore`, a `MemoryStore` cache
/// and a `Recorder`, with the flows given as YAML.
struct Harness {
    runner: FlowRunner,
    exec: Arc<FakeExecutor>,
    store: Arc<TestStore>,
    cache: Arc<MemoryStore>,
    blobs: Arc<MemoryBlobs>,
    events: Arc<Recorder>,
    flows: Arc<FlowCatalog>,
}

impl Harness {
    fn new(exec: FakeExecutor, flows: &[&str]) -> Self {
        Self::with_config(exec, flows, config())
    }

    fn with_config(exec: FakeExecutor, flows: &[&str], config: RunnerConfig) -> Self {
        let exec = Arc::new(exec);
        let mut catalog = FlowCatalog::default();
        for (i, yaml) in flows.iter().enumerate() {
            let file = PathBuf::from(format!("flows/test-{i}.yaml"));
            let def = FlowDefinition::parse(&file, yaml, &|p| exec.plugin(p).is_some())
                .unwrap_or_else(|e| panic!("a test flow does not parse: {e:?}"));
            catalog.insert(def);
        }
        let store = Arc::new(TestStore::new());
        let cache = Arc::new(MemoryStore::new());
        let (events, flows) = (Arc::new(Recorder::new()), Arc::new(catalog));
        let blobs = Arc::new(MemoryBlobs::new());
        let runner = new_runner(&exec, &flows, (&store, &cache, &blobs), &events, config);
        Harness {
            runner,
            exec,
            store,
            cache,
            blobs,
            events,
            flows,
        }
    }

    /// A runner on the same executor, store, cache, observer and flows: a
    /// second host, or this one restarted.
    fn another_runner(&self, config: RunnerConfig) -> FlowRunner {
        let Harness {
            exec,
            store,
            cache,
            blobs,
            events,
            flows,
            ..
        } = self;
        new_runner(exec, flows, (store, cache, blobs), events, config)
    }

    fn def(&self, name: &str) -> Arc<FlowDefinition> {
        self.flows.get(name).expect("a test flow").clone()
    }

    /// Executes a new run of `flow` to its end.
    async fn run(&self, flow: &str, inputs: Value) -> FlowState {
        self.run_with(flow, inputs, FlowContext::new()).await
    }

    async fn run_with(&self, flow: &str, inputs: Value, ctx: FlowContext) -> FlowState {
        let run = self.runner.execute(self.def(flow), obj(inputs), ctx);
        within(&format!("a run of `{flow}`"), run)
            .await
            .expect("the run is recorded")
    }

    /// Starts a run of `flow` in a task; returns its id and the task.
    fn spawn_run(
        &self,
        flow: &str,
        inputs: Value,
    ) -> (FlowId, tokio::task::JoinHandle<Result<FlowState, RunError>>) {
        let ctx = FlowContext::new();
        let id = ctx.flow_id;
        let (runner, def) = (self.runner.clone(), self.def(flow));
        let task = tokio::spawn(async move { runner.execute(def, obj(inputs), ctx).await });
        (id, task)
    }

    async fn stored(&self, id: FlowId) -> FlowState {
        self.store
            .get_flow(id)
            .await
            .expect("the store answers")
            .expect("the flow is recorded")
    }

    /// Waits for a write after which the stored flow satisfies `done`.
    async fn wait_stored(
        &self,
        id: FlowId,
        what: &str,
        done: impl Fn(&FlowState) -> bool,
    ) -> FlowState {
        let mut rx = self.store.tick.subscribe();
        within(what, async {
            loop {
                if let Some(state) = self.store.get_flow(id).await.expect("the store answers")
                    && done(&state)
                {
                    return state;
                }
                rx.changed().await.expect("the store lives");
            }
        })
        .await
    }
}

fn new_runner(
    exec: &Arc<FakeExecutor>,
    flows: &Arc<FlowCatalog>,
    (store, cache, blobs): (&Arc<TestStore>, &Arc<MemoryStore>, &Arc<MemoryBlobs>),
    events: &Arc<Recorder>,
    config: RunnerConfig,
) -> FlowRunner {
    let ports = Ports {
        executor: exec.clone(),
        flows: flows.clone(),
        store: store.clone(),
        cache: cache.clone(),
        blobs: blobs.clone(),
        queue: None,
        observer: events.clone(),
    };
    FlowRunner::new(ports, config)
}

/// upper → exclaim → count, over `${inputs.text}`.
const CHAIN: &str = r#"
name: chain
inputs:
  text: {type: string}
steps:
  - name: a
    plugin: upper
    input:
      text: "${inputs.text}"
  - name: b
    plugin: exclaim
    input:
      text: "${steps.a.output.text}"
  - name: c
    plugin: count
    input:
      text: "${steps.b.output.text}"
outputs:
  text: "${steps.b.output.text}"
  length: "${steps.c.output.n}"
"#;

/// The plugins of `CHAIN`, none deterministic (nothing cached).
fn chain_plugins() -> FakeExecutor {
    FakeExecutor::new()
        .with("upper", false, compute(upper))
        .with("exclaim", false, compute(exclaim))
        .with("count", false, compute(count))
}

/// `a` fails for good; `b` would run after it.
const STRICT: &str = r#"
name: strict
inputs:
  text: {type: string}
steps:
  - name: a
    plugin: picky
    input:
      text: "${inputs.text}"
    retry: {max_attempts: 5, initial_delay_ms: 1}
  - name: b
    plugin: upper
    input:
      text: "${steps.a.output.text}"
"#;
