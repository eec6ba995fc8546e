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
//! which plugin failures are retried.
//!
//! Every test asserts on the state recorded in the store, not only on what
//! the runner returns. Helpers come first: the fake executor
//! (`FakeExecutor`, driven per plugin by a `Script`), a `Gate` to hold a
//! plugin call, a recording observer (`Recorder`), a store that delegates to
//! `MemoryStore` and records, signals and can refuse writes (`TestStore`),
//! and the `Harness` that wires them into a `FlowRunner`. No test sleeps to
//! synchronise: they wait on the fake's calls, the observer's events or the
//! store's writes, each bounded by `PATIENCE`.

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
        let runner = new_runner(&exec, &flows, &store, &cache, &events, config);
        Harness {
            runner,
            exec,
            store,
            cache,
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
            events,
            flows,
            ..
        } = self;
        new_runner(exec, flows, store, cache, events, config)
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
    store: &Arc<TestStore>,
    cache: &Arc<MemoryStore>,
    events: &Arc<Recorder>,
    config: RunnerConfig,
) -> FlowRunner {
    let ports = Ports {
        executor: exec.clone(),
        flows: flows.clone(),
        store: store.clone(),
        cache: cache.clone(),
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

// ---------------------------------------------------------------------------
// Ordering and concurrency
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_chain_runs_in_order_each_step_fed_by_the_one_before() {
    use StepStatus::{Completed, Running};
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let end = h.run("chain", json!({"text": "hello"})).await;
    let stored = h.stored(end.flow_id).await;
    assert_eq!(stored, end, "the store holds the state the runner returned");

    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"text": "HELLO!", "length": 6})));
    assert_eq!(stored.error, None);
    assert!(stored.completed_at.is_some() && stored.total_execution_time.is_some());
    for (name, input, output) in [
        ("a", json!({"text": "hello"}), json!({"text": "HELLO"})),
        ("b", json!({"text": "HELLO"}), json!({"text": "HELLO!"})),
        ("c", json!({"text": "HELLO!"}), json!({"n": 6})),
    ] {
        let st = &stored.steps[name];
        assert_eq!(st.status, Completed, "step {name}");
        assert_eq!(st.attempt, 1, "step {name}");
        assert_eq!(st.inputs, Some(input), "step {name}");
        assert_eq!(st.outputs, Some(output), "step {name}");
        assert_eq!((st.cached, &st.error), (false, &None), "step {name}");
        assert!(st.started_at.is_some() && st.execution_time.is_some());
    }
    for (before, after) in [("a", "b"), ("b", "c")] {
        assert!(stored.steps[before].completed_at <= stored.steps[after].started_at);
    }

    // Each plugin was called once, after the one before had returned.
    let log = h.exec.log();
    let order: Vec<&str> = log.iter().map(|c| c.step.as_str()).collect();
    assert_eq!(order, ["a", "b", "c"]);
    assert!(log.windows(2).all(|w| w[1].started >= w[0].ended));
    assert!(log.iter().all(|c| c.attempt == 1));

    // Each step was recorded running before its plugin was called, and
    // completed before the next one started.
    assert_eq!(
        h.store.history(end.flow_id),
        rows(&[
            ("a", Running, 1),
            ("a", Completed, 1),
            ("b", Running, 1),
            ("b", Completed, 1),
            ("c", Running, 1),
            ("c", Completed, 1),
        ])
    );
    assert_eq!(h.events.count("FlowStarted"), 1);
    assert_eq!(
        h.events
            .count("FlowEnded { flow: \"chain\", status: Completed"),
        1
    );
    let attempts = h.events.matching("StepAttempted");
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|e| e.contains("outcome: \"completed\""))
    );
    assert_eq!(h.runner.active_count(), 0);
}

#[tokio::test]
async fn independent_steps_overlap_and_a_join_waits_for_both() {
    const FAN: &str = r#"
name: fan
steps:
  - name: left
    plugin: meet
    input: {side: left}
  - name: right
    plugin: meet
    input: {side: right}
  - name: join
    plugin: join
    input:
      left: "${steps.left.output.side}"
      right: "${steps.right.output.side}"
outputs:
  joined: "${steps.join.output}"
"#;
    // Both sides must be in their plugin at once to pass the barrier; then
    // `right` is held until the test has seen `left` recorded completed.
    let barrier = Arc::new(Barrier::new(2));
    let hold_right = Gate::new();
    let meet = {
        let (barrier, hold_right) = (barrier.clone(), hold_right.clone());
        script(move |call| {
            let (barrier, hold_right) = (barrier.clone(), hold_right.clone());
            async move {
                let side = call.input["side"].clone();
                if tokio::time::timeout(PATIENCE, barrier.wait())
                    .await
                    .is_err()
                {
                    return Err(PluginError::Failed("the other side never came".into()));
                }
                if side == "right" {
                    hold_right.wait().await;
                }
                Ok(json!({"side": side}))
            }
        })
    };
    let exec = FakeExecutor::new().with("meet", false, meet).with(
        "join",
        false,
        compute(|v| json!(format!("{}+{}", text_at(v, "left"), text_at(v, "right")))),
    );
    let h = Harness::new(exec, &[FAN]);
    let (id, run) = h.spawn_run("fan", json!({}));

    let midway = h
        .wait_stored(id, "`left` recorded completed", |s| {
            s.steps["left"].status == StepStatus::Completed
        })
        .await;
    assert_eq!(midway.steps["right"].status, StepStatus::Running);
    assert_eq!(
        midway.steps["join"].status,
        StepStatus::Pending,
        "the join must not start while `right` runs"
    );
    assert_eq!(h.exec.calls("join"), 0);
    hold_right.open();

    let end = within("the run", run).await.unwrap().unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"joined": "left+right"})));
    assert_eq!(
        stored.steps["join"].inputs,
        Some(json!({"left": "left", "right": "right"}))
    );
    assert!(
        stored
            .steps
            .values()
            .all(|s| s.status == StepStatus::Completed)
    );
    assert_eq!(end.status, FlowStatus::Completed);

    assert!(h.exec.max_in_flight() >= 2, "left and right ran at once");
    let [left, right, join] = ["left", "right", "join"].map(|s| h.exec.calls_of_step(s));
    assert_eq!((left.len(), right.len(), join.len()), (1, 1, 1));
    assert!(left[0].started < right[0].ended && right[0].started < left[0].ended);
    assert!(join[0].started >= left[0].ended.max(right[0].ended));
    assert!(stored.steps["join"].started_at >= stored.steps["right"].completed_at);
}

// ---------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_retryable_error_is_retried_with_backoff_until_it_succeeds() {
    use StepStatus::{Completed, Failed, Running};
    const FLAKY: &str = r#"
name: flaky
steps:
  - name: a
    plugin: flaky
    input: {n: 1}
    retry: {max_attempts: 3, initial_delay_ms: 100, factor: 2.0, max_delay_ms: 1000, jitter: 0.0}
outputs:
  ok: "${steps.a.output.ok}"
"#;
    let exec = FakeExecutor::new().with(
        "flaky",
        false,
        fail_then(
            2,
            || PluginError::Retryable("busy".into()),
            |_| json!({"ok": true}),
        ),
    );
    let h = Harness::new(exec, &[FLAKY]);
    let end = h.run("flaky", json!({})).await;
    let stored = h.stored(end.flow_id).await;

    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"ok": true})));
    let a = &stored.steps["a"];
    assert_eq!((a.status, a.attempt), (Completed, 3));
    assert_eq!((&a.error, &a.error_kind), (&None, &None));
    assert_eq!(a.outputs, Some(json!({"ok": true})));

    let log = h.exec.log();
    assert_eq!(h.exec.calls("flaky"), 3);
    assert_eq!(log.iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(log[0].result, Err("failed (retryable): busy".into()));
    // The backoff: 100 ms after the first failure, 200 ms after the second.
    for (i, ms) in [(1, 100), (2, 200)] {
        let waited = log[i].started - log[i - 1].ended;
        assert!(
            waited >= Duration::from_millis(ms) && waited < Duration::from_millis(ms + 50),
            "waited {waited:?} before attempt {}",
            i + 1
        );
    }
    // Each failed attempt was recorded, then the next one running.
    assert_eq!(
        h.store.history(end.flow_id),
        rows(&[
            ("a", Running, 1),
            ("a", Failed, 1),
            ("a", Running, 2),
            ("a", Failed, 2),
            ("a", Running, 3),
            ("a", Completed, 3),
        ])
    );
    assert_eq!(h.events.count("StepRetried"), 2);
    let outcomes: Vec<bool> = h
        .events
        .matching("StepAttempted")
        .iter()
        .map(|e| e.contains("outcome: \"completed\""))
        .collect();
    assert_eq!(outcomes, [false, false, true]);
}

#[tokio::test(start_paused = true)]
async fn retries_end_at_max_attempts_and_fail_the_flow() {
    use StepStatus::{Failed, Running};
    const HOPELESS: &str = r#"
name: hopeless
steps:
  - name: a
    plugin: busy
    retry: {max_attempts: 2, initial_delay_ms: 50}
"#;
    let exec = FakeExecutor::new().with(
        "busy",
        false,
        fail(|| PluginError::Retryable("busy".into())),
    );
    let h = Harness::new(exec, &[HOPELESS]);
    let end = h.run("hopeless", json!({})).await;
    let stored = h.stored(end.flow_id).await;

    assert_eq!(h.exec.calls("busy"), 2);
    let a = &stored.steps["a"];
    assert_eq!((a.status, a.attempt), (Failed, 2));
    assert_eq!(a.error.as_deref(), Some("failed (retryable): busy"));
    assert_eq!(a.error_kind.as_deref(), Some("retryable"));
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(
        stored.error.as_deref(),
        Some("step `a` failed: failed (retryable): busy")
    );
    assert_eq!(
        h.store.history(end.flow_id),
        rows(&[
            ("a", Running, 1),
            ("a", Failed, 1),
            ("a", Running, 2),
            ("a", Failed, 2)
        ])
    );
    assert_eq!(h.events.count("StepRetried"), 1);
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

#[tokio::test]
async fn a_non_retryable_error_fails_the_step_and_the_flow_at_once() {
    let exec = FakeExecutor::new()
        .with(
            "picky",
            false,
            fail(|| PluginError::Failed("bad input".into())),
        )
        .with("upper", false, compute(upper));
    let h = Harness::new(exec, &[STRICT]);
    let end = h.run("strict", json!({"text": "x"})).await;
    let stored = h.stored(end.flow_id).await;
    assert_eq!(stored, end);

    assert_eq!(
        h.exec.calls("picky"),
        1,
        "a non-retryable error is not retried"
    );
    assert_eq!(h.exec.calls("upper"), 0, "nothing runs after a failed step");
    let a = &stored.steps["a"];
    assert_eq!((a.status, a.attempt), (StepStatus::Failed, 1));
    assert_eq!(a.error.as_deref(), Some("failed: bad input"));
    assert_eq!(a.error_kind.as_deref(), Some("failed"));
    assert_eq!(a.outputs, None);
    let b = &stored.steps["b"];
    assert_eq!(
        (b.status, b.attempt, b.started_at),
        (StepStatus::Pending, 0, None)
    );
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(
        stored.error.as_deref(),
        Some("step `a` failed: failed: bad input")
    );
    assert!(stored.completed_at.is_some());
    assert_eq!(stored.outputs, None);
    assert_eq!(h.events.count("StepRetried"), 0);
    assert_eq!(
        h.events
            .count("FlowEnded { flow: \"strict\", status: Failed"),
        1
    );
}

#[tokio::test]
async fn an_input_that_cannot_be_resolved_fails_its_step_without_a_call() {
    const MISSING: &str = r#"
name: missing
steps:
  - name: a
    plugin: upper
    input: {text: "x"}
  - name: b
    plugin: count
    input:
      text: "${steps.a.output.nothing_here}"
"#;
    let h = Harness::new(chain_plugins(), &[MISSING]);
    let end = h.run("missing", json!({})).await;
    let stored = h.stored(end.flow_id).await;
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(stored.steps["a"].status, StepStatus::Completed);
    let b = &stored.steps["b"];
    assert_eq!(b.status, StepStatus::Failed);
    assert!(
        b.error.as_deref().is_some_and(|e| e.starts_with("input: ")),
        "{b:?}"
    );
    assert!(
        stored
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("step `b` failed: input: ")),
        "{:?}",
        stored.error
    );
    assert_eq!(h.exec.calls("count"), 0);
}

#[tokio::test]
async fn invalid_inputs_are_refused_before_anything_is_recorded() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let err = h
        .runner
        .execute(h.def("chain"), obj(json!({"txt": 1})), FlowContext::new())
        .await
        .unwrap_err();
    let RunError::InvalidInputs(problems) = err else {
        panic!("expected InvalidInputs, got {err:?}");
    };
    assert_eq!(
        problems,
        [
            "unknown input `txt`: flow `chain` takes [text]",
            "missing required input `text`"
        ]
    );
    let all = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    assert!(h.store.list_flows(&all).await.unwrap().is_empty());
    assert!(h.exec.log().is_empty());
}

// ---------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cancelling_a_running_flow_stops_its_step_and_starts_nothing_more() {
    const CANCEL: &str = r#"
name: cancel
steps:
  - name: quick
    plugin: upper
    input: {text: "x"}
  - name: wait
    plugin: sleeper
  - name: after
    plugin: count
    depends_on: [wait]
    input:
      text: "${steps.quick.output.text}"
"#;
    let exec = chain_plugins().with("sleeper", false, until_stopped());
    let h = Harness::new(exec, &[CANCEL]);
    let (id, run) = h.spawn_run("cancel", json!({}));
    h.exec.wait_calls("sleeper", 1).await;
    h.events
        .wait_for("StepAttempted { flow: \"cancel\", step: \"quick\"", 1)
        .await;

    let cancelled = within("the cancel", h.runner.cancel_flow(id))
        .await
        .expect("a running flow can be cancelled");
    assert_eq!(cancelled.status, FlowStatus::Cancelled);
    let end = within("the run", run).await.unwrap().unwrap();
    assert_eq!(end.status, FlowStatus::Cancelled);

    let stored = h.stored(id).await;
    assert_eq!(stored, cancelled);
    assert_eq!(stored.status, FlowStatus::Cancelled);
    assert!(stored.completed_at.is_some());
    assert_eq!((&stored.outputs, &stored.error), (&None, &None));
    assert_eq!(stored.steps["quick"].status, StepStatus::Completed);
    let wait = &stored.steps["wait"];
    assert_eq!(wait.status, StepStatus::Cancelled);
    assert_eq!(wait.error.as_deref(), Some("cancelled while running"));
    let after = &stored.steps["after"];
    assert_eq!((after.status, after.attempt), (StepStatus::Pending, 0));
    assert_eq!(h.exec.calls("count"), 0, "no step starts after a cancel");
    assert_eq!(
        h.exec.calls_of_step("wait")[0].result,
        Err("interrupted".into())
    );
    assert_eq!(h.runner.active_count(), 0);
    assert_eq!(
        h.events
            .count("FlowEnded { flow: \"cancel\", status: Cancelled"),
        1
    );

    // Cancelling it again answers it as it is; it cannot be resumed.
    let again = h.runner.cancel_flow(id).await.unwrap();
    assert_eq!(again.status, FlowStatus::Cancelled);
    let resumed = h.runner.resume_flow(id).await;
    assert!(matches!(resumed, Err(RunError::Conflict(_))), "{resumed:?}");
}

#[tokio::test]
async fn cancelling_a_stored_flow_records_it_cancelled() {
    let exec = FakeExecutor::new()
        .with("picky", false, fail(|| PluginError::Failed("no".into())))
        .with("upper", false, compute(upper));
    let h = Harness::new(exec, &[STRICT]);
    let failed = h.run("strict", json!({"text": "x"})).await;
    assert_eq!(failed.status, FlowStatus::Failed);

    let cancelled = h.runner.cancel_flow(failed.flow_id).await.unwrap();
    assert_eq!(cancelled.status, FlowStatus::Cancelled);
    let stored = h.stored(failed.flow_id).await;
    assert_eq!(stored.status, FlowStatus::Cancelled);
    assert_eq!(stored.steps["a"].status, StepStatus::Failed);
    assert!(stored.completed_at >= failed.completed_at);

    h.exec.set("picky", compute(upper));
    let done = h.run("strict", json!({"text": "y"})).await;
    assert_eq!(done.status, FlowStatus::Completed);
    let refused = h.runner.cancel_flow(done.flow_id).await;
    assert!(matches!(refused, Err(RunError::Conflict(_))), "{refused:?}");
    assert_eq!(h.stored(done.flow_id).await.status, FlowStatus::Completed);
    let unknown = h.runner.cancel_flow(FlowId::new()).await;
    assert!(matches!(unknown, Err(RunError::NotFound(_))), "{unknown:?}");
}

// ---------------------------------------------------------------------------
// Resume, retry of a step, shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn resume_runs_what_did_not_complete_and_reads_completed_outputs_back() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    h.exec
        .set("exclaim", fail(|| PluginError::Failed("not now".into())));
    let failed = h.run("chain", json!({"text": "hi"})).await;
    let id = failed.flow_id;
    let before = h.stored(id).await;
    assert_eq!(before.status, FlowStatus::Failed);
    assert_eq!(
        before.error.as_deref(),
        Some("step `b` failed: failed: not now")
    );
    assert_eq!(before.steps["a"].status, StepStatus::Completed);
    assert_eq!(
        (before.steps["b"].status, before.steps["b"].attempt),
        (StepStatus::Failed, 1)
    );
    assert_eq!(before.steps["c"].status, StepStatus::Pending);

    h.exec.set("exclaim", compute(exclaim));
    let resumed = within("the resume", h.runner.resume_flow(id))
        .await
        .unwrap();
    let after = h.stored(id).await;
    assert_eq!(after, resumed);
    assert_eq!(after.status, FlowStatus::Completed);
    assert_eq!(after.outputs, Some(json!({"text": "HI!", "length": 3})));
    assert_eq!(after.error, None);
    assert_eq!(after.metadata["resumes"], json!(1));
    assert_eq!(
        after.steps["a"], before.steps["a"],
        "a completed step is kept as it was"
    );
    let b = &after.steps["b"];
    assert_eq!((b.status, b.attempt), (StepStatus::Completed, 2));
    assert_eq!((&b.error, &b.error_kind), (&None, &None));
    assert_eq!(b.inputs, Some(json!({"text": "HI"})));
    let c = &after.steps["c"];
    assert_eq!((c.status, c.attempt), (StepStatus::Completed, 1));

    assert_eq!(
        h.exec.calls("upper"),
        1,
        "the completed step is not run again"
    );
    assert_eq!(h.exec.calls("exclaim"), 2);
    assert_eq!(h.exec.calls("count"), 1);
    let second = &h.exec.calls_of_step("b")[1];
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.input,
        json!({"text": "HI"}),
        "fed from a's stored output"
    );

    let again = h.runner.resume_flow(id).await;
    assert!(matches!(again, Err(RunError::Conflict(_))), "{again:?}");
    assert_eq!(
        h.stored(id).await,
        after,
        "a refused resume changes nothing"
    );
    let unknown = h.runner.resume_flow(FlowId::new()).await;
    assert!(matches!(unknown, Err(RunError::NotFound(_))), "{unknown:?}");
}

#[tokio::test]
async fn retry_step_reruns_only_that_failed_step() {
    const PAIR: &str = r#"
name: pair
steps:
  - name: x
    plugin: px
    input: {n: 1}
  - name: y
    plugin: py
    input: {n: 2}
  - name: z
    plugin: pz
    input:
      x: "${steps.x.output.n}"
      y: "${steps.y.output.n}"
outputs:
  z: "${steps.z.output}"
"#;
    let no = || fail(|| PluginError::Failed("no".into()));
    let exec = FakeExecutor::new()
        .with("px", false, no())
        .with("py", false, no())
        .with(
            "pz",
            false,
            compute(|v| json!(v["x"].as_i64().unwrap() + v["y"].as_i64().unwrap())),
        );
    let h = Harness::new(exec, &[PAIR]);
    let failed = h.run("pair", json!({})).await;
    let id = failed.flow_id;
    let stored = h.stored(id).await;
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(stored.steps["x"].status, StepStatus::Failed);
    assert_eq!(stored.steps["y"].status, StepStatus::Failed);
    assert_eq!(stored.steps["z"].status, StepStatus::Pending);

    // x is retried alone: y stays failed, so z cannot run and the flow
    // fails again, now for y.
    h.exec.set("px", compute(|v| v.clone()));
    let once = h.runner.retry_step(id, "x").await.unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored, once);
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(stored.error.as_deref(), Some("step `y` failed: failed: no"));
    let x = &stored.steps["x"];
    assert_eq!((x.status, x.attempt), (StepStatus::Completed, 2));
    assert_eq!(x.outputs, Some(json!({"n": 1})));
    let y = &stored.steps["y"];
    assert_eq!((y.status, y.attempt), (StepStatus::Failed, 1));
    assert_eq!(stored.steps["z"].status, StepStatus::Pending);
    assert_eq!(
        (h.exec.calls("px"), h.exec.calls("py"), h.exec.calls("pz")),
        (2, 1, 0)
    );

    // What cannot be retried.
    let completed = h.runner.retry_step(id, "x").await;
    assert!(
        matches!(completed, Err(RunError::Conflict(_))),
        "{completed:?}"
    );
    let pending = h.runner.retry_step(id, "z").await;
    assert!(matches!(pending, Err(RunError::Conflict(_))), "{pending:?}");
    let unknown = h.runner.retry_step(id, "nope").await;
    assert!(matches!(unknown, Err(RunError::UnknownStep(s)) if s == "nope"));
    assert_eq!(
        h.stored(id).await,
        stored,
        "a refused retry changes nothing"
    );

    // y retried: z runs after it, and the flow completes.
    h.exec.set("py", compute(|v| v.clone()));
    let done = h.runner.retry_step(id, "y").await.unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored, done);
    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"z": 3})));
    assert_eq!(stored.steps["z"].inputs, Some(json!({"x": 1, "y": 2})));
    assert_eq!(stored.steps["x"], once.steps["x"]);
    assert_eq!(
        (h.exec.calls("px"), h.exec.calls("py"), h.exec.calls("pz")),
        (2, 2, 1)
    );
    assert_eq!(stored.metadata["resumes"], json!(2));

    let resumed = h.runner.resume_flow(id).await;
    assert!(matches!(resumed, Err(RunError::Conflict(_))), "{resumed:?}");
    let retried = h.runner.retry_step(id, "y").await;
    assert!(matches!(retried, Err(RunError::Conflict(_))), "{retried:?}");
}

#[tokio::test]
async fn shutdown_pauses_a_flow_and_another_runner_resumes_the_interrupted_attempt() {
    const PAUSABLE: &str = r#"
name: pausable
steps:
  - name: a
    plugin: upper
    input: {text: "x"}
  - name: b
    plugin: sleeper
    input:
      text: "${steps.a.output.text}"
"#;
    let exec = chain_plugins().with("sleeper", false, until_stopped());
    let h = Harness::new(exec, &[PAUSABLE]);
    let (id, run) = h.spawn_run("pausable", json!({}));
    h.exec.wait_calls("sleeper", 1).await;

    assert_eq!(
        within("the shutdown", h.runner.shutdown(Duration::ZERO)).await,
        1
    );
    let paused = within("the run", run).await.unwrap().unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored, paused);
    assert_eq!(stored.status, FlowStatus::Paused);
    assert_eq!(stored.completed_at, None);
    let b = &stored.steps["b"];
    assert_eq!((b.status, b.attempt), (StepStatus::Pending, 1));
    assert_eq!(b.error.as_deref(), Some("interrupted by shutdown"));
    let refused = h
        .runner
        .execute(h.def("pausable"), Map::new(), FlowContext::new())
        .await;
    assert!(
        matches!(refused, Err(RunError::ShuttingDown)),
        "{refused:?}"
    );

    // Another host (or this one restarted) picks the flow up.
    h.exec.set("sleeper", compute(|v| v.clone()));
    let other = h.another_runner(config());
    let resumed = within("the resume", other.resume_flow(id)).await.unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored, resumed);
    assert_eq!(stored.status, FlowStatus::Completed);
    let b = &stored.steps["b"];
    assert_eq!(
        (b.status, b.attempt),
        (StepStatus::Completed, 1),
        "the interrupted attempt runs again"
    );
    assert_eq!(b.outputs, Some(json!({"text": "X"})));
    assert_eq!(h.exec.calls("upper"), 1);
    assert_eq!(h.exec.calls("sleeper"), 2);
    assert_eq!(stored.metadata["resumes"], json!(1));
}

// ---------------------------------------------------------------------------
// Fencing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_fenced_write_stops_the_flow_and_no_further_step_runs() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    // Created with `a` running, then one write ([a completed, b running]);
    // the next ([b completed, c running]) is refused: another host has the
    // flow now.
    h.store.fence_after(1);
    let end = h.run("chain", json!({"text": "hi"})).await;
    let id = end.flow_id;

    assert_eq!(h.store.refused(), 1, "nothing is written after the refusal");
    assert_eq!(h.events.count("WriteFenced"), 1, "the refusal is reported");
    assert_eq!(h.events.count("LeaseLost"), 1, "the lease is given up");
    assert_ne!(
        end.status,
        FlowStatus::Completed,
        "this host did not finish the flow"
    );
    assert!(h.store.released().contains(&id), "the lost lease is let go");
    assert_eq!(h.runner.active_count(), 0);

    // The store holds the last write it accepted: nothing of this host's
    // since is applied.
    let stored = h.stored(id).await;
    assert_eq!(stored.status, FlowStatus::Running);
    assert_eq!(stored.steps["a"].status, StepStatus::Completed);
    assert_eq!(stored.steps["b"].status, StepStatus::Running);
    assert_eq!(stored.steps["c"].status, StepStatus::Pending);
    assert_eq!((h.exec.calls("upper"), h.exec.calls("exclaim")), (1, 1));
    assert_eq!(
        h.exec.calls("count"),
        0,
        "step c's plugin was called although the write recording c running was refused \
         (calls: {:?})",
        h.exec.calls_of_step("c")
    );
}

#[tokio::test(start_paused = true)]
async fn a_fenced_write_between_attempts_stops_the_retries() {
    const FLAKY: &str = r#"
name: flaky
steps:
  - name: a
    plugin: flaky
    retry: {max_attempts: 5, initial_delay_ms: 1000}
"#;
    let exec = FakeExecutor::new().with(
        "flaky",
        false,
        fail_then(1, || PluginError::Retryable("busy".into()), |_| json!(1)),
    );
    let h = Harness::new(exec, &[FLAKY]);
    // The flow is created with `a` running; its first failure's write is
    // refused.
    h.store.fence_after(0);
    let end = h.run("flaky", json!({})).await;

    assert_eq!(
        h.exec.calls("flaky"),
        1,
        "no attempt after the lease was lost"
    );
    assert_eq!(h.events.count("WriteFenced"), 1);
    assert_eq!(h.events.count("LeaseLost"), 1);
    assert_ne!(end.status, FlowStatus::Completed);
    let stored = h.stored(end.flow_id).await;
    assert_eq!(stored.status, FlowStatus::Running);
    assert_eq!(
        (stored.steps["a"].status, stored.steps["a"].attempt),
        (StepStatus::Running, 1)
    );
    assert!(h.store.released().contains(&end.flow_id));
}

// ---------------------------------------------------------------------------
// Caching
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_deterministic_step_is_served_from_the_cache_and_a_non_deterministic_one_is_not() {
    const CACHED: &str = r#"
name: cached
inputs:
  text: {type: string}
steps:
  - name: det
    plugin: upper-det
    input:
      text: "${inputs.text}"
  - name: nondet
    plugin: upper-rand
    input:
      text: "${inputs.text}"
outputs:
  det: "${steps.det.output.text}"
  nondet: "${steps.nondet.output.text}"
"#;
    let exec = FakeExecutor::new()
        .with("upper-det", true, compute(upper))
        .with("upper-rand", false, compute(upper));
    let h = Harness::new(exec, &[CACHED]);
    let first = h.run("cached", json!({"text": "hello"})).await;
    let second = h.run("cached", json!({"text": "hello"})).await;
    let other = h.run("cached", json!({"text": "other"})).await;

    assert_eq!(h.exec.calls("upper-det"), 2, "once per distinct input");
    assert_eq!(h.exec.calls("upper-rand"), 3, "never cached");
    let [first, second, other] = [first, second, other].map(|s| s.flow_id);
    let (first, second, other) = (
        h.stored(first).await,
        h.stored(second).await,
        h.stored(other).await,
    );
    for state in [&first, &second, &other] {
        assert_eq!(state.status, FlowStatus::Completed);
        assert!(state.steps["nondet"].cache_key.is_none());
        assert!(!state.steps["nondet"].cached);
    }
    assert_eq!(second.outputs, first.outputs);
    assert_eq!(
        second.outputs,
        Some(json!({"det": "HELLO", "nondet": "HELLO"}))
    );

    let (d1, d2, d3) = (
        &first.steps["det"],
        &second.steps["det"],
        &other.steps["det"],
    );
    assert!(!d1.cached && d2.cached && !d3.cached);
    assert_eq!(d2.outputs, d1.outputs);
    assert_eq!((d2.status, d2.attempt), (StepStatus::Completed, 1));
    assert!(d1.cache_key.is_some());
    assert_eq!(d2.cache_key, d1.cache_key);
    assert_ne!(d3.cache_key, d1.cache_key);

    assert_eq!(h.events.count("CacheHit { plugin: \"upper-det\" }"), 1);
    assert_eq!(h.events.count("CacheMiss { plugin: \"upper-det\" }"), 2);
    assert_eq!(h.events.count("CacheStored { plugin: \"upper-det\" }"), 2);
    assert_eq!(h.events.count("CacheHit { plugin: \"upper-rand\" }"), 0);
}

#[tokio::test]
async fn a_flow_that_caches_its_result_is_answered_without_running_again() {
    const WHOLE: &str = r#"
name: whole
cache: {flow_result: true}
inputs:
  text: {type: string}
steps:
  - name: shout
    plugin: upper
    input:
      text: "${inputs.text}"
outputs:
  text: "${steps.shout.output.text}"
"#;
    let h = Harness::new(chain_plugins(), &[WHOLE]);
    let first = h.run("whole", json!({"text": "hey"})).await;
    let second = h.run("whole", json!({"text": "hey"})).await;

    assert_eq!(h.exec.calls("upper"), 1);
    assert_ne!(first.flow_id, second.flow_id);
    let stored = h.stored(second.flow_id).await;
    assert_eq!(stored, second);
    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"text": "HEY"})));
    assert_eq!(stored.metadata["flow_cache"], json!("hit"));
    let shout = &stored.steps["shout"];
    assert!(shout.cached);
    assert_eq!(shout.status, StepStatus::Completed);
    assert_eq!(shout.outputs, Some(json!({"text": "HEY"})));
    assert_eq!(h.events.count("FlowCacheMiss"), 1);
    assert_eq!(h.events.count("FlowCacheHit"), 1);
}

#[tokio::test]
async fn concurrent_flows_needing_the_same_key_call_the_plugin_once() {
    const SHARED: &str = r#"
name: shared
inputs:
  text: {type: string}
steps:
  - name: slow
    plugin: slow
    input:
      text: "${inputs.text}"
outputs:
  text: "${steps.slow.output.text}"
"#;
    let gate = Gate::new();
    let exec = FakeExecutor::new().with("slow", true, gated(&gate, upper));
    let h = Harness::new(exec, &[SHARED]);
    let runs: Vec<_> = (0..3)
        .map(|_| h.spawn_run("shared", json!({"text": "same"})))
        .collect();
    // The first flow computes; the two others wait for it.
    h.exec.wait_calls("slow", 1).await;
    h.events
        .wait_for("CacheWaited { plugin: \"slow\" }", 2)
        .await;
    gate.open();

    let mut cached = Vec::new();
    for (id, run) in runs {
        let end = within("a run", run).await.unwrap().unwrap();
        assert_eq!(end.status, FlowStatus::Completed);
        assert_eq!(end.outputs, Some(json!({"text": "SAME"})));
        let stored = h.stored(id).await;
        assert_eq!(stored.status, FlowStatus::Completed);
        assert_eq!(stored.steps["slow"].outputs, Some(json!({"text": "SAME"})));
        cached.push(stored.steps["slow"].cached);
    }
    assert_eq!(
        h.exec.calls("slow"),
        1,
        "one computation for the three flows"
    );
    cached.sort();
    assert_eq!(cached, [false, true, true]);
    assert_eq!(h.events.count("CacheMiss"), 1);
    assert_eq!(h.events.count("CacheStored"), 1);
    assert_eq!(h.events.count("CacheHit"), 2);
}

// ---------------------------------------------------------------------------
// Background runs and idempotency
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_submitted_flow_is_recorded_pending_then_runs_in_the_background() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let id = h
        .runner
        .submit(
            h.def("chain"),
            obj(json!({"text": "bg"})),
            FlowContext::new(),
        )
        .await
        .unwrap();
    // On this (current-thread) runtime the background task cannot have run
    // yet: the flow is as `submit` recorded it.
    let pending = h.stored(id).await;
    assert_eq!(pending.status, FlowStatus::Pending);
    assert!(
        pending
            .steps
            .values()
            .all(|s| s.status == StepStatus::Pending)
    );
    assert_eq!(h.exec.log().len(), 0);

    let done = h
        .wait_stored(id, "the submitted flow to finish", |s| {
            s.status.is_finished()
        })
        .await;
    assert_eq!(done.status, FlowStatus::Completed);
    assert_eq!(done.outputs, Some(json!({"text": "BG!", "length": 3})));
    assert!(
        done.steps
            .values()
            .all(|s| s.status == StepStatus::Completed && s.attempt == 1)
    );
    assert_eq!(
        (
            h.exec.calls("upper"),
            h.exec.calls("exclaim"),
            h.exec.calls("count")
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn submissions_beyond_the_limit_are_refused_busy() {
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::with_config(
        exec,
        &[CHAIN],
        RunnerConfig {
            max_async_in_flight: 1,
            ..config()
        },
    );
    let submit = || {
        h.runner.submit(
            h.def("chain"),
            obj(json!({"text": "q"})),
            FlowContext::new(),
        )
    };
    let first = submit().await.unwrap();
    let busy = submit().await;
    assert!(
        matches!(busy, Err(RunError::Busy { in_flight: 1, .. })),
        "{busy:?}"
    );
    let all = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(
        h.store.list_flows(&all).await.unwrap().len(),
        1,
        "a refusal records nothing"
    );

    gate.open();
    let done = h
        .wait_stored(first, "the first submission to finish", |s| {
            s.status.is_finished()
        })
        .await;
    assert_eq!(done.status, FlowStatus::Completed);
    // Once it has left the active set, there is room again.
    within("the first flow to leave", async {
        while h.runner.active_count() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    submit().await.expect("room for a new submission");
}

#[tokio::test]
async fn the_same_idempotency_key_gives_the_same_run() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let keyed = || FlowContext {
        idempotency_key: Some("order-7".into()),
        ..FlowContext::new()
    };
    let first = h.run_with("chain", json!({"text": "k"}), keyed()).await;
    let ctx = keyed();
    let unused = ctx.flow_id;
    let second = h.run_with("chain", json!({"text": "k"}), ctx).await;
    assert_eq!(second.flow_id, first.flow_id);
    assert_eq!(second, h.stored(first.flow_id).await);
    assert_eq!(h.exec.calls("upper"), 1, "the repeat does not run the flow");
    assert_eq!(h.store.get_flow(unused).await.unwrap(), None);

    let submitted = h
        .runner
        .submit(h.def("chain"), obj(json!({"text": "k"})), keyed())
        .await
        .unwrap();
    assert_eq!(submitted, first.flow_id);

    let other = h
        .run_with(
            "chain",
            json!({"text": "k"}),
            FlowContext {
                idempotency_key: Some("order-8".into()),
                ..FlowContext::new()
            },
        )
        .await;
    assert_ne!(other.flow_id, first.flow_id);
    assert_eq!(h.exec.calls("upper"), 2);
}

#[tokio::test]
async fn a_key_refused_busy_is_given_back_and_its_retry_runs() {
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::with_config(
        exec,
        &[CHAIN],
        RunnerConfig {
            max_async_in_flight: 1,
            ..config()
        },
    );
    let submit = |ctx: FlowContext| {
        h.runner
            .submit(h.def("chain"), obj(json!({"text": "q"})), ctx)
    };
    let keyed = || FlowContext {
        idempotency_key: Some("order-9".into()),
        ..FlowContext::new()
    };
    let first = submit(FlowContext::new()).await.unwrap();
    let refused = keyed();
    let refused_id = refused.flow_id;
    let busy = submit(refused).await;
    assert!(matches!(busy, Err(RunError::Busy { .. })), "{busy:?}");

    gate.open();
    h.wait_stored(first, "the first submission to finish", |s| {
        s.status.is_finished()
    })
    .await;
    within("the first flow to leave", async {
        while h.runner.active_count() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // The retry after Retry-After starts its run: the key was given back.
    let retry = keyed();
    let retry_id = retry.flow_id;
    let id = submit(retry).await.expect("the retry is accepted");
    assert_eq!(id, retry_id);
    assert_ne!(id, refused_id);
    let done = h
        .wait_stored(id, "the retried submission to finish", |s| {
            s.status.is_finished()
        })
        .await;
    assert_eq!(done.status, FlowStatus::Completed);
    assert_eq!(h.store.get_flow(refused_id).await.unwrap(), None);
    // And the key names it now.
    assert_eq!(submit(keyed()).await.unwrap(), id);
}

#[tokio::test]
async fn a_key_refused_for_a_taken_flow_id_is_given_back() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let other = h.run("chain", json!({"text": "first"})).await;
    let keyed = || FlowContext {
        idempotency_key: Some("order-10".into()),
        ..FlowContext::new()
    };
    let taken = FlowContext {
        flow_id: other.flow_id,
        ..keyed()
    };
    let refused = h
        .runner
        .submit(h.def("chain"), obj(json!({"text": "again"})), taken)
        .await;
    assert!(
        matches!(refused, Err(RunError::DuplicateId(id)) if id == other.flow_id),
        "{refused:?}"
    );
    let refused = h
        .runner
        .execute(
            h.def("chain"),
            obj(json!({"text": "again"})),
            FlowContext {
                flow_id: other.flow_id,
                ..keyed()
            },
        )
        .await;
    assert!(
        matches!(refused, Err(RunError::DuplicateId(_))),
        "{refused:?}"
    );

    // Resent without the flow id, the key starts a run of its own.
    let ctx = keyed();
    let fresh = ctx.flow_id;
    let run = h.run_with("chain", json!({"text": "again"}), ctx).await;
    assert_eq!(run.flow_id, fresh, "the key named the other flow's run");
    assert_eq!(run.outputs, Some(json!({"text": "AGAIN!", "length": 6})));
    assert_eq!(h.stored(other.flow_id).await.outputs, other.outputs);
}

#[tokio::test(start_paused = true)]
async fn a_sync_replay_of_a_running_key_answers_the_runs_end() {
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::new(exec, &[CHAIN]);
    let keyed = || FlowContext {
        idempotency_key: Some("order-11".into()),
        ..FlowContext::new()
    };
    let first = keyed();
    let id = first.flow_id;
    let (runner, def) = (h.runner.clone(), h.def("chain"));
    let original =
        tokio::spawn(async move { runner.execute(def, obj(json!({"text": "r"})), first).await });
    h.exec.wait_calls("upper", 1).await;

    let (runner, def) = (h.runner.clone(), h.def("chain"));
    let mut replay = tokio::spawn(async move {
        runner
            .execute(def, obj(json!({"text": "r"})), keyed())
            .await
    });
    // On the paused clock, time only moves once every task waits: the replay
    // has done all it can and is still waiting for the run.
    let early = tokio::time::timeout(Duration::from_secs(60), &mut replay).await;
    assert!(
        early.is_err(),
        "the replay answered before the run ended: {:?}",
        early.map(|r| r.unwrap().map(|s| s.status))
    );

    gate.open();
    let replayed = within("the replay", replay).await.unwrap().unwrap();
    let ended = within("the original", original).await.unwrap().unwrap();
    assert_eq!(replayed.flow_id, id);
    assert_eq!(replayed.status, FlowStatus::Completed);
    assert_eq!(replayed.outputs, Some(json!({"text": "R!", "length": 2})));
    assert_eq!(replayed, ended);
    assert_eq!(h.exec.calls("upper"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_sync_replay_of_a_key_run_elsewhere_waits_for_the_store() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    // A run another host started: recorded running, not active here.
    let elsewhere = h.another_runner(config());
    let ctx = FlowContext {
        idempotency_key: Some("order-12".into()),
        ..FlowContext::new()
    };
    let id = ctx.flow_id;
    let gate = Gate::new();
    h.exec.set("upper", gated(&gate, upper));
    let (runner, def) = (elsewhere.clone(), h.def("chain"));
    let original =
        tokio::spawn(async move { runner.execute(def, obj(json!({"text": "e"})), ctx).await });
    h.exec.wait_calls("upper", 1).await;
    // The replay comes to a runner where the run is not active: it reads
    // the store until the run ends.
    let fresh = new_runner(&h.exec, &h.flows, &h.store, &h.cache, &h.events, config());
    let def = h.def("chain");
    let mut replay = tokio::spawn(async move {
        let ctx = FlowContext {
            idempotency_key: Some("order-12".into()),
            ..FlowContext::new()
        };
        fresh.execute(def, obj(json!({"text": "e"})), ctx).await
    });
    let early = tokio::time::timeout(Duration::from_secs(60), &mut replay).await;
    assert!(early.is_err(), "the replay answered before the run ended");
    gate.open();
    let replayed = within("the replay", replay).await.unwrap().unwrap();
    let ended = within("the original", original).await.unwrap().unwrap();
    assert_eq!(replayed.flow_id, id);
    assert_eq!(replayed.status, FlowStatus::Completed);
    assert_eq!(replayed, ended);
}

// ---------------------------------------------------------------------------
// Store outages: no step starts whose start could not be recorded
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_flow_is_held_while_the_store_is_down_and_goes_on_when_it_returns() {
    use StepStatus::{Completed, Running};
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::new(exec, &[CHAIN]);
    let (id, run) = h.spawn_run("chain", json!({"text": "hold"}));
    h.exec.wait_calls("upper", 1).await;

    // `a` ends while the store is down: its end and `b`'s start cannot be
    // recorded, so `b` does not start.
    h.store.set_outage(true);
    gate.open();
    h.store.wait_unavailable(4).await;
    assert_eq!(
        h.exec.calls("exclaim"),
        0,
        "step b started although its start was not recorded"
    );
    let held = h.stored(id).await;
    assert_eq!(held.steps["a"].status, Running);
    assert_eq!(held.steps["b"].status, StepStatus::Pending);

    h.store.set_outage(false);
    let end = within("the run", run).await.unwrap().unwrap();
    assert_eq!(end.status, FlowStatus::Completed);
    assert_eq!(end.outputs, Some(json!({"text": "HOLD!", "length": 5})));
    assert_eq!(
        (
            h.exec.calls("upper"),
            h.exec.calls("exclaim"),
            h.exec.calls("count")
        ),
        (1, 1, 1)
    );
    assert_eq!(h.stored(id).await, end);
    assert_eq!(
        h.store.history(id),
        rows(&[
            ("a", Running, 1),
            ("a", Completed, 1),
            ("b", Running, 1),
            ("b", Completed, 1),
            ("c", Running, 1),
            ("c", Completed, 1),
        ])
    );
    assert!(h.events.count("StateWriteFailed") >= 4);
    assert_eq!(h.events.count("LeaseLost"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_flow_the_store_cannot_take_past_the_hold_limit_stops_here_unrecorded() {
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::new(exec, &[CHAIN]);
    h.runner.set_hold_limit(Duration::from_secs(3));
    let (id, run) = h.spawn_run("chain", json!({"text": "gone"}));
    h.exec.wait_calls("upper", 1).await;
    h.store.set_outage(true);
    let held_at = Instant::now();
    gate.open();

    let end = within("the run", run).await.unwrap();
    let held = held_at.elapsed();
    assert!(
        matches!(&end, Err(RunError::Store(StoreError::Unavailable(_)))),
        "{end:?}"
    );
    assert!(held >= Duration::from_secs(3), "held only {held:?}");
    assert_eq!(h.exec.calls("exclaim"), 0, "nothing more started");
    assert_eq!(h.runner.active_count(), 0);
    assert_eq!(h.events.count("FlowEnded"), 0);
    // It stays as last recorded: running, `a` running, for whichever host
    // takes it over; it is not recorded failed anywhere.
    h.store.set_outage(false);
    let stored = h.stored(id).await;
    assert_eq!(stored.status, FlowStatus::Running);
    assert_eq!(stored.steps["a"].status, StepStatus::Running);
    assert_eq!(stored.steps["b"].status, StepStatus::Pending);

    // Taken over once the store is back: `a`, whose end was never recorded,
    // runs again; the rest once.
    let resumed = within("the resume", h.runner.resume_flow(id))
        .await
        .unwrap();
    assert_eq!(resumed.status, FlowStatus::Completed);
    assert_eq!(
        (
            h.exec.calls("upper"),
            h.exec.calls("exclaim"),
            h.exec.calls("count")
        ),
        (2, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_whose_start_cannot_be_recorded_waits_for_the_store() {
    use StepStatus::{Completed, Failed, Running};
    const FLAKY: &str = r#"
name: flaky
steps:
  - name: a
    plugin: flaky
    retry: {max_attempts: 3, initial_delay_ms: 10}
"#;
    let gate = Gate::new();
    let held = gate.clone();
    let exec = FakeExecutor::new().with(
        "flaky",
        false,
        script(move |call| {
            let gate = held.clone();
            async move {
                gate.wait().await;
                if call.nth == 1 {
                    Err(PluginError::Retryable("busy".into()))
                } else {
                    Ok(json!({"ok": true}))
                }
            }
        }),
    );
    let h = Harness::new(exec, &[FLAKY]);
    let (id, run) = h.spawn_run("flaky", json!({}));
    h.exec.wait_calls("flaky", 1).await;
    h.store.set_outage(true);
    gate.open();
    h.store.wait_unavailable(4).await;
    assert_eq!(h.exec.calls("flaky"), 1, "a retry started unrecorded");

    h.store.set_outage(false);
    let end = within("the run", run).await.unwrap().unwrap();
    assert_eq!(end.status, FlowStatus::Completed);
    assert_eq!(h.exec.calls("flaky"), 2);
    assert_eq!(
        h.store.history(id),
        rows(&[
            ("a", Running, 1),
            ("a", Failed, 1),
            ("a", Running, 2),
            ("a", Completed, 2),
        ])
    );
}

// ---------------------------------------------------------------------------
// Which failures are retried
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn timeouts_traps_and_panics_are_retried_limits_and_verdicts_are_not() {
    use std::time::Duration as D;
    /// A failure's kind, how to make one, and whether it is retried.
    type Kind = (&'static str, fn() -> PluginError, bool);
    let kinds: Vec<Kind> = vec![
        ("retryable", || PluginError::Retryable("busy".into()), true),
        ("timed_out", || PluginError::TimedOut(D::from_secs(1)), true),
        (
            "trapped",
            || PluginError::Trapped {
                kind: "integer_divide_by_zero".into(),
                message: "divide by zero".into(),
            },
            true,
        ),
        ("panicked", || PluginError::Panicked("boom".into()), true),
        (
            "instantiate",
            || PluginError::Instantiate("busy".into()),
            true,
        ),
        (
            "invalid_input",
            || PluginError::InvalidInput("no".into()),
            false,
        ),
        ("failed", || PluginError::Failed("no".into()), false),
        (
            "invalid_output",
            || PluginError::InvalidOutput("x".into()),
            false,
        ),
        (
            "out_of_memory",
            || PluginError::OutOfMemory {
                wanted: 2,
                limit: 1,
            },
            false,
        ),
        ("stack_exhausted", || PluginError::StackExhausted, false),
        ("fuel_exhausted", || PluginError::FuelExhausted(10), false),
        (
            "input_too_large",
            || PluginError::InputTooLarge { size: 2, limit: 1 },
            false,
        ),
        (
            "output_too_large",
            || PluginError::OutputTooLarge { size: 2, limit: 1 },
            false,
        ),
        (
            "capability_denied",
            || PluginError::CapabilityDenied {
                capability: "http",
                detail: "example.com".into(),
                plugin_said: "refused".into(),
            },
            false,
        ),
    ];
    let mut exec = FakeExecutor::new();
    let mut yaml = String::from("name: kinds\nsteps:\n");
    for (kind, error, _) in &kinds {
        exec = exec.with(kind, false, fail(*error));
        yaml.push_str(&format!(
            "  - name: {kind}\n    plugin: {kind}\n    retry: {{max_attempts: 2, initial_delay_ms: 1}}\n"
        ));
    }
    let h = Harness::new(exec, &[yaml.as_str()]);
    let end = h.run("kinds", json!({})).await;
    let stored = h.stored(end.flow_id).await;
    for (kind, _, retried) in &kinds {
        let step = &stored.steps[*kind];
        assert_eq!(step.error_kind.as_deref(), Some(*kind));
        let calls = h.exec.calls(kind);
        assert_eq!(
            (calls, step.attempt),
            if *retried { (2, 2) } else { (1, 1) },
            "`{kind}` is {}retried",
            if *retried { "" } else { "not " }
        );
    }
}

// ---------------------------------------------------------------------------
// Single-flight across hosts
// ---------------------------------------------------------------------------

/// One host's view of a cache shared by several: the entries of one
/// `MemoryStore`, and leads held in a map shared by the hosts, each lead
/// under its host's name.
struct SharedCache {
    entries: Arc<MemoryStore>,
    leads: Arc<Mutex<HashMap<String, String>>>,
    host: &'static str,
}

#[async_trait]
impl ResultCache for SharedCache {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, CacheError> {
        self.entries.get(key).await
    }

    async fn put(&self, entry: &CachedResult, ttl: Duration) -> Result<(), CacheError> {
        self.entries.put(entry, ttl).await
    }

    async fn invalidate(&self, what: &Invalidate) -> Result<u64, CacheError> {
        self.entries.invalidate(what).await
    }

    async fn lead(&self, key: &str, _ttl: Duration) -> Result<bool, CacheError> {
        let mut leads = lock(&self.leads);
        let holder = leads.entry(key.to_owned()).or_insert(self.host.to_owned());
        Ok(holder == self.host)
    }

    async fn end_lead(&self, key: &str) -> Result<(), CacheError> {
        let mut leads = lock(&self.leads);
        if leads.get(key).is_some_and(|h| h == self.host) {
            leads.remove(key);
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn identical_steps_on_two_hosts_call_the_plugin_once() {
    const SHARED: &str = r#"
name: shared
inputs:
  text: {type: string}
steps:
  - name: slow
    plugin: slow
    input:
      text: "${inputs.text}"
outputs:
  text: "${steps.slow.output.text}"
"#;
    let gate = Gate::new();
    let exec = FakeExecutor::new().with("slow", true, gated(&gate, upper));
    let h = Harness::new(exec, &[SHARED]);
    let (entries, leads) = (Arc::new(MemoryStore::new()), Arc::default());
    let host = |name: &'static str| {
        let cache = SharedCache {
            entries: entries.clone(),
            leads: Arc::clone(&leads),
            host: name,
        };
        let ports = Ports {
            executor: h.exec.clone(),
            flows: h.flows.clone(),
            store: h.store.clone(),
            cache: Arc::new(cache),
            queue: None,
            observer: h.events.clone(),
        };
        FlowRunner::new(ports, config())
    };
    let (first, second) = (host("first"), host("second"));
    let run = |runner: &FlowRunner| {
        let (runner, def) = (runner.clone(), h.def("shared"));
        tokio::spawn(async move {
            let inputs = obj(json!({"text": "same"}));
            runner.execute(def, inputs, FlowContext::new()).await
        })
    };
    let on_first = run(&first);
    h.exec.wait_calls("slow", 1).await;
    let on_second = run(&second);
    h.events
        .wait_for("CacheWaited { plugin: \"slow\" }", 1)
        .await;
    gate.open();

    let first_end = within("the first host's run", on_first)
        .await
        .unwrap()
        .unwrap();
    let second_end = within("the second host's run", on_second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.exec.calls("slow"), 1, "the plugin ran on both hosts");
    for end in [&first_end, &second_end] {
        assert_eq!(end.status, FlowStatus::Completed);
        assert_eq!(end.outputs, Some(json!({"text": "SAME"})));
    }
    assert!(!first_end.steps["slow"].cached);
    assert!(second_end.steps["slow"].cached);
    assert!(lock(&leads).is_empty(), "the lead was given up");
}

#[tokio::test(start_paused = true)]
async fn a_host_waiting_for_another_computes_once_its_lead_is_given_up_without_a_result() {
    const SHARED: &str = r#"
name: shared
steps:
  - name: slow
    plugin: slow
    input: {text: "x"}
"#;
    let exec = FakeExecutor::new().with("slow", true, compute(upper));
    let h = Harness::new(exec, &[SHARED]);
    // The step's key, from a run on a cache of its own.
    let key = h.run("shared", json!({})).await.steps["slow"]
        .cache_key
        .clone()
        .expect("a cached step has a key");
    // Another host leads that key, and gives the lead up without a result.
    let (entries, leads) = (Arc::new(MemoryStore::new()), Arc::default());
    let other = SharedCache {
        entries: entries.clone(),
        leads: Arc::clone(&leads),
        host: "other",
    };
    assert!(other.lead(&key, PATIENCE).await.unwrap());
    let cache = SharedCache {
        entries,
        leads: Arc::clone(&leads),
        host: "here",
    };
    let ports = Ports {
        executor: h.exec.clone(),
        flows: h.flows.clone(),
        store: h.store.clone(),
        cache: Arc::new(cache),
        queue: None,
        observer: h.events.clone(),
    };
    let runner = FlowRunner::new(ports, config());
    let (r, def) = (runner.clone(), h.def("shared"));
    let run = tokio::spawn(async move { r.execute(def, Map::new(), FlowContext::new()).await });
    h.events
        .wait_for("CacheWaited { plugin: \"slow\" }", 1)
        .await;
    assert_eq!(h.exec.calls("slow"), 1, "ran while another host led");
    other.end_lead(&key).await.unwrap();

    let end = within("the run", run).await.unwrap().unwrap();
    assert_eq!(end.status, FlowStatus::Completed);
    assert!(!end.steps["slow"].cached);
    assert_eq!(h.exec.calls("slow"), 2);
    assert!(lock(&leads).is_empty(), "the lead was given up");
}
