//! flowhost's plugin host: WebAssembly executor components loaded from the
//! plugins folder and run, one fresh sandboxed instance per step, with
//! wasmtime. [`PluginHost`] is the core's `Executor` port; every way a step
//! can misbehave ends in a typed `PluginError`. Nothing outside this crate
//! touches wasmtime or the bindings.

mod artifacts;
mod bindings;
mod capture;
mod denials;
mod engine;
mod http;
mod load;
pub mod manifest;
mod meta;
mod run;
mod sandbox;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use flowhost_core::executor::{Executor, PluginFacts};
use flowhost_core::observe::{NoObserver, Observer};
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::Linker;

pub use bindings::CONTRACT_VERSION;
pub use flowhost_core::executor::{Call, Execution, PluginError};
pub use load::{LoadError, Skipped};
pub use meta::{Limits, Plugin, PluginMeta};
pub use sandbox::sanitize;

use sandbox::StepCtx;

/// The loaded plugins and the engine that runs them. Cheap to share in an Arc.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<StepCtx>,
    limits: Limits,
    plugins: BTreeMap<String, Arc<Plugin>>,
    skipped: Vec<Skipped>,
    /// One per instance alive at once (`Limits::max_instances`).
    permits: Semaphore,
    observer: Arc<dyn Observer>,
}

impl PluginHost {
    /// Builds the engine (pooling allocator sized from `limits`, falling back
    /// to on-demand allocation where the address space cannot be reserved).
    pub fn new(limits: Limits) -> wasmtime::Result<Self> {
        let engine = engine::engine(&limits)?;
        let linker = engine::linker(&engine)?;
        Ok(PluginHost {
            engine,
            linker,
            permits: Semaphore::new(limits.max_instances as usize),
            limits,
            plugins: BTreeMap::new(),
            skipped: Vec::new(),
            observer: Arc::new(NoObserver),
        })
    }

    /// Reports compile and instantiate times to `observer` from now on.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The engine every plugin is compiled for, for benchmarks that measure
    /// the bare wasmtime floor with the same settings.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

#[async_trait]
impl Executor for PluginHost {
    fn plugin(&self, name: &str) -> Option<PluginFacts> {
        self.plugins.get(name).map(|p| PluginFacts {
            hash: p.meta.hash.clone(),
            deterministic: p.meta.deterministic,
        })
    }

    fn contract_version(&self) -> &str {
        CONTRACT_VERSION
    }

    async fn execute(&self, plugin: &str, call: &Call<'_>) -> Execution {
        match self.plugins.get(plugin) {
            Some(loaded) => self.execute_plugin(loaded, call).await,
            None => Execution::failed(PluginError::Failed(format!(
                "plugin `{plugin}` is not loaded"
            ))),
        }
    }
}
