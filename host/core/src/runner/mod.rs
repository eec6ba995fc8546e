//! Runs flows: validates inputs, schedules the steps of the DAG (independent
//! steps run concurrently), calls each step's plugin through the `Executor`
//! port with retries, and records every transition through the `StateStore`
//! port before moving on. Resumes, retries, cancels, and pauses flows on
//! shutdown.
//!
//! Invariants: a step is saved as running (inputs, start time, attempt) before
//! its plugin is called, and as completed, failed, cancelled or pending
//! (interrupted) before any step that depends on it starts; a write carries
//! only the steps that changed (a finished step and the ones it lets start
//! share one round trip). A completed step is never run again: resume reads
//! its output back. The runner names no adapter: it sees ports only.
//!
//! One concern a file: `start` (new runs, sync and background), `schedule`
//! (the DAG loop), `step` (one step's attempts), `hold` (the writes a flow
//! waits for while the store is away), `caching`, `restart`
//! (resume, retry, take-over), `cancel`, `active` (flows running here,
//! shutdown), `worker` (the shared queue's loops), `retry` (the backoff).

mod active;
mod blobs;
mod caching;
mod cancel;
mod hold;
mod restart;
mod retry;
mod schedule;
mod start;
mod step;
pub mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub use retry::RetryPolicy;

use crate::blob::BlobStore;
use crate::cache::{ResultCache, SingleFlight};
use crate::executor::Executor;
use crate::flow::FlowCatalog;
use crate::observe::{Event, Observer};
use crate::queue::WorkQueue;
use crate::state::{FlowId, StateStore, StoreError};

use active::{Active, Backlog};

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
    /// A flow input or step output whose JSON is longer is kept as a blob
    /// and referred to, so that no value of a flow's state is larger.
    pub inline_max_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub enabled: bool,
    /// Used when neither the flow nor the step sets `ttl_seconds`.
    pub ttl: Duration,
    /// Longest wait for another flow computing the same key.
    pub single_flight_wait: Duration,
}

/// The adapters a runner works through, chosen once at start.
#[derive(Clone)]
pub struct Ports {
    pub executor: Arc<dyn Executor>,
    /// The flows served now: a handle whose set is swapped whole when a
    /// plugin finishes loading; reading it is one lock-free load.
    pub flows: Arc<FlowCatalog>,
    pub store: Arc<dyn StateStore>,
    pub cache: Arc<dyn ResultCache>,
    /// Where blobs live: those that inputs refer to, and the values moved
    /// out of the state because they were large.
    pub blobs: Arc<dyn BlobStore>,
    /// The work queue shared with other hosts, when there is one.
    pub queue: Option<Arc<dyn WorkQueue>>,
    pub observer: Arc<dyn Observer>,
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
    executor: Arc<dyn Executor>,
    flows: Arc<FlowCatalog>,
    store: Arc<dyn StateStore>,
    cache: Arc<dyn ResultCache>,
    blobs: Arc<dyn BlobStore>,
    observer: Arc<dyn Observer>,
    single_flight: SingleFlight,
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
    /// The longest a flow is held waiting for the store, in ms (`hold.rs`).
    hold_limit_ms: AtomicU64,
}

impl FlowRunner {
    pub fn new(ports: Ports, config: RunnerConfig) -> Self {
        FlowRunner {
            inner: Arc::new(Inner {
                executor: ports.executor,
                flows: ports.flows,
                store: ports.store,
                cache: ports.cache,
                blobs: ports.blobs,
                observer: ports.observer,
                single_flight: SingleFlight::new(),
                config,
                queue: ports.queue.filter(|q| q.shared()),
                backlog: Mutex::new(Backlog::default()),
                active: Mutex::new(HashMap::new()),
                interrupt_all: CancellationToken::new(),
                draining: AtomicBool::new(false),
                hold_limit_ms: AtomicU64::new(hold::DEFAULT_HOLD_LIMIT.as_millis() as u64),
            }),
        }
    }

    /// True when runs are shared with other hosts through a queue.
    pub fn is_shared(&self) -> bool {
        self.inner.queue.is_some()
    }

    fn observe(&self, event: Event<'_>) {
        self.inner.observer.record(event);
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

    /// The outcome of a write that nothing waits for (a stored flow's
    /// cancel, a submission that could not be queued): a refusal by another
    /// host's lease stops the flow here; any other failure is logged and
    /// counted. Writes a flow cannot go on without are held (`hold.rs`).
    fn record(&self, flow_id: FlowId, result: Result<(), StoreError>) {
        if let Err(StoreError::Fenced(id)) = result {
            self.observe(Event::WriteFenced);
            tracing::warn!(flow_id = %id, "state write refused: another host holds this flow's lease");
            self.lose(id);
            return;
        }
        if let Err(e) = result {
            self.observe(Event::StateWriteFailed);
            tracing::error!(flow_id = %flow_id, error = %e, "state write failed");
        }
    }
}
