//! The `Observer` port: what the core and the adapters report as it happens
//! (flows and steps ending, cache hits, refused writes, store calls), for an
//! adapter to count. The binary's Prometheus metrics implement it; tests use
//! `NoObserver` or a recorder of their own.
//!
//! Labels are bounded: names of flows, steps and plugins, and fixed words;
//! never a flow id or an error text.

use crate::state::FlowStatus;

/// One thing that happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<'a> {
    /// A run of the scheduler began (a new run, a resume, a retry).
    FlowStarted {
        flow: &'a str,
    },
    /// A run of the scheduler ended, whatever its outcome.
    FlowLeft,
    /// A run was recorded finished (or paused) after `seconds`.
    FlowEnded {
        flow: &'a str,
        status: FlowStatus,
        seconds: f64,
    },
    FlowCacheHit {
        flow: &'a str,
    },
    FlowCacheMiss {
        flow: &'a str,
    },
    /// One attempt of a step ended: `completed`, `failed` or `interrupted`.
    StepAttempted {
        flow: &'a str,
        step: &'a str,
        plugin: &'a str,
        outcome: &'static str,
        seconds: f64,
    },
    StepRetried {
        flow: &'a str,
        step: &'a str,
        plugin: &'a str,
    },
    /// A fault the host detected in a plugin (not a verdict it returned).
    PluginTrapped {
        plugin: &'a str,
        kind: &'a str,
    },
    CacheHit {
        plugin: &'a str,
    },
    CacheMiss {
        plugin: &'a str,
    },
    /// A step waited for an identical one computing the same key.
    CacheWaited {
        plugin: &'a str,
    },
    CacheStored {
        plugin: &'a str,
    },
    /// The cache could not be read or written; the step ran regardless.
    CacheFailed,
    CacheInvalidated {
        by: &'static str,
        removed: u64,
    },
    /// A state write failed. A write the flow waits for is tried again, and
    /// each try that fails is one event.
    StateWriteFailed,
    /// A state write was refused: another host holds the flow's lease.
    WriteFenced,
    LeaseLost,
    /// A flow taken over from a host that is gone.
    FlowReclaimed,
    /// A large value of a run's state was stored as a blob of `bytes`.
    ValueOffloaded {
        bytes: usize,
    },
    /// Whether the state store runs on its fallback.
    Degraded(bool),
    PluginCompiled {
        plugin: &'a str,
        seconds: f64,
    },
    PluginInstantiated {
        plugin: &'a str,
        seconds: f64,
    },
    /// One call to a store's backend (`op` is a fixed name).
    StoreCall {
        op: &'static str,
        seconds: f64,
        failed: bool,
    },
}

/// Receives events. Must be cheap: it is called on the path of every step.
pub trait Observer: Send + Sync {
    fn record(&self, event: Event<'_>);
}

/// Drops every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn record(&self, _: Event<'_>) {}
}
