//! The `Executor` port: what the runner needs from whatever runs a step's
//! plugin (the wasm adapter in production, a fake in the runner's tests).
//!
//! Every way a call can end without output is a `PluginError` with a stable
//! `kind()`, whatever runs the plugin; the runner records it and decides
//! whether to retry from `is_retryable()` alone.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What the runner must know of a plugin before calling it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginFacts {
    /// blake3 of the plugin's code, hex: part of every cache key.
    pub hash: String,
    /// The same input always gives the same output (so results are cached).
    pub deterministic: bool,
}

/// One step's call: who is asking, and with what.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub flow_id: &'a str,
    pub step: &'a str,
    pub attempt: u32,
    pub config: &'a Value,
    pub input: &'a Value,
    /// The flow file's timeout for this step; the plugin's own otherwise.
    pub timeout: Option<Duration>,
    /// Cancelling it interrupts the call promptly (`PluginError::Interrupted`).
    pub stop: &'a CancellationToken,
}

/// One call's result, with what the plugin printed.
#[derive(Debug)]
pub struct Execution {
    pub result: Result<Value, PluginError>,
    /// Captured stdout and stderr: bounded, control characters removed.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

impl Execution {
    /// A call that produced nothing and printed nothing.
    pub fn failed(error: PluginError) -> Self {
        Execution {
            result: Err(error),
            stdout: None,
            stderr: None,
        }
    }
}

/// Runs plugins by name. Object-safe: chosen once at start as
/// `Arc<dyn Executor>`.
#[async_trait]
pub trait Executor: Send + Sync {
    /// The plugin of this name, if one is loaded.
    fn plugin(&self, name: &str) -> Option<PluginFacts>;
    /// The plugin contract's version: part of every cache key.
    fn contract_version(&self) -> &str;
    /// Runs one step in a fresh sandbox. A plugin that is not loaded fails
    /// the call (`PluginError::Failed`).
    async fn execute(&self, plugin: &str, call: &Call<'_>) -> Execution;
}

/// Why a step's plugin call produced no output.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("failed: {0}")]
    Failed(String),
    #[error("failed (retryable): {0}")]
    Retryable(String),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("trapped: {message}")]
    Trapped {
        /// The wasm trap code in snake case (`unreachable_code_reached` for a
        /// Rust panic, `stack_overflow`, …), or `host_error`.
        kind: String,
        message: String,
    },
    #[error("returned output that is not JSON: {0}")]
    InvalidOutput(String),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("interrupted")]
    Interrupted,
    #[error("out of memory: tried to grow to {wanted} bytes, over the limit of {limit}")]
    OutOfMemory { wanted: usize, limit: usize },
    #[error("stack exhausted (runaway recursion)")]
    StackExhausted,
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("ran out of fuel (limit {0})")]
    FuelExhausted(u64),
    #[error("input is {size} bytes, over the plugin's limit of {limit}")]
    InputTooLarge { size: usize, limit: usize },
    #[error("output is {size} bytes, over the plugin's limit of {limit}")]
    OutputTooLarge { size: usize, limit: usize },
    #[error("blob bytes {what} would reach {size}, over the plugin's limit of {limit}")]
    BlobTooLarge {
        /// `read` or `written`.
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("capability denied: {capability}: {detail} (the plugin then said: {plugin_said})")]
    CapabilityDenied {
        /// `filesystem`, `environment`, `socket`, `http` or `blobs`.
        capability: &'static str,
        detail: String,
        plugin_said: String,
    },
}

impl PluginError {
    /// Whether running the step again may succeed: a transient failure the
    /// plugin reported, and timeouts, traps and panics (a slow server the
    /// plugin waits for, or a transient fault, may pass on a second try;
    /// README, "Security" and "Retry" say so, `runner::tests` pins it).
    pub fn is_retryable(&self) -> bool {
        match self {
            PluginError::Retryable(_)
            | PluginError::TimedOut(_)
            | PluginError::Trapped { .. }
            | PluginError::Panicked(_) => true,
            PluginError::Instantiate(_) => true,
            // The same input hits the same limit or the same refusal again.
            PluginError::Interrupted
            | PluginError::InvalidInput(_)
            | PluginError::Failed(_)
            | PluginError::InvalidOutput(_)
            | PluginError::OutOfMemory { .. }
            | PluginError::StackExhausted
            | PluginError::FuelExhausted(_)
            | PluginError::InputTooLarge { .. }
            | PluginError::OutputTooLarge { .. }
            | PluginError::BlobTooLarge { .. }
            | PluginError::CapabilityDenied { .. } => false,
        }
    }

    /// A short stable name for metrics and step state.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::InvalidInput(_) => "invalid_input",
            PluginError::Failed(_) => "failed",
            PluginError::Retryable(_) => "retryable",
            PluginError::TimedOut(_) => "timed_out",
            PluginError::Trapped { .. } => "trapped",
            PluginError::InvalidOutput(_) => "invalid_output",
            PluginError::Instantiate(_) => "instantiate",
            PluginError::Interrupted => "interrupted",
            PluginError::OutOfMemory { .. } => "out_of_memory",
            PluginError::StackExhausted => "stack_exhausted",
            PluginError::Panicked(_) => "panicked",
            PluginError::FuelExhausted(_) => "fuel_exhausted",
            PluginError::InputTooLarge { .. } => "input_too_large",
            PluginError::OutputTooLarge { .. } => "output_too_large",
            PluginError::BlobTooLarge { .. } => "blob_too_large",
            PluginError::CapabilityDenied { .. } => "capability_denied",
        }
    }

    /// For `flowhost_plugin_traps_total`: the kind of a fault the host
    /// detected, or `None` for a verdict the plugin returned itself.
    pub fn trap_kind(&self) -> Option<&str> {
        match self {
            PluginError::Trapped { kind, .. } => Some(kind),
            PluginError::InvalidInput(_) | PluginError::Failed(_) | PluginError::Retryable(_) => {
                None
            }
            other => Some(other.kind()),
        }
    }
}
