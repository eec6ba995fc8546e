//! flowhost's plugin host: WebAssembly executor components loaded from the
//! plugins folder (concurrently, each becoming available when loaded) and
//! run, one fresh sandboxed instance per step, with wasmtime. [`PluginHost`]
//! is the core's `Executor` port; every way a step can misbehave ends in a
//! typed `PluginError`. Nothing outside this crate touches wasmtime or the
//! bindings.

mod artifacts;
mod bindings;
mod blobs;
mod capture;
mod denials;
mod engine;
mod http;
mod load;
pub mod manifest;
mod meta;
mod run;
mod sandbox;
mod set;

use std::sync::Arc;

use arc_swap::ArcSwap;

use async_trait::async_trait;
use flowhost_core::blob::BlobStore;
use flowhost_core::executor::{Executor, PluginFacts};
use flowhost_core::observe::{NoObserver, Observer};
use tokio::sync::{Semaphore, watch};
use wasmtime::Engine;
use wasmtime::component::Linker;

pub use bindings::CONTRACT_VERSION;
pub use flowhost_core::executor::{Call, Execution, PluginError};
pub use load::{LoadError, Skipped};
pub use meta::{Limits, Plugin, PluginMeta};
pub use sandbox::sanitize;
pub use set::PluginSet;

use sandbox::StepCtx;

/// The loaded plugins and the engine that runs them. Cheap to share in an
/// Arc; the plugin set changes while it is shared (see `set.rs`).
pub struct PluginHost {
    engine: Engine,
    linker: Linker<StepCtx>,
    limits: Limits,
    /// The plugins now, swapped whole on every change.
    set: ArcSwap<PluginSet>,
    /// Bumped on every swap of `set`.
    changes: watch::Sender<u64>,
    /// One per instance alive at once (`Limits::max_instances`); `describe`
    /// takes one too.
    permits: Semaphore,
    /// One per compilation running at once (`Limits::max_compiles`), held
    /// until the compiler's thread returns, even when its load gave up.
    compile_slots: Arc<Semaphore>,
    observer: Arc<dyn Observer>,
    /// What the `blobs` import reads and writes; `None` answers every call
    /// `unavailable`.
    blobs: Option<Arc<dyn BlobStore>>,
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
            compile_slots: Arc::new(Semaphore::new(limits.max_compiles.max(1))),
            limits,
            set: ArcSwap::default(),
            changes: watch::Sender::new(0),
            observer: Arc::new(NoObserver),
            blobs: None,
        })
    }

    /// Reports compile and instantiate times to `observer` from now on.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Serves the `blobs` import from `blobs`: each step reads the blobs
    /// its input refers to and creates new ones there.
    pub fn with_blobs(mut self, blobs: Arc<dyn BlobStore>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// The plugin loaded under `name`, now.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.set.load().get(name).cloned()
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
        self.set.load().get(name).map(|p| PluginFacts {
            hash: p.meta.hash.clone(),
            deterministic: p.meta.deterministic,
        })
    }

    fn contract_version(&self) -> &str {
        CONTRACT_VERSION
    }

    async fn execute(&self, plugin: &str, call: &Call<'_>) -> Execution {
        // One lock-free load and one reference count: the step keeps its
        // plugin even if the set is swapped while it runs.
        let loaded = self.set.load().get(plugin).cloned();
        match loaded {
            Some(loaded) => self.execute_plugin(&loaded, call).await,
            None => Execution::failed(PluginError::Failed(format!(
                "plugin `{plugin}` is not loaded"
            ))),
        }
    }
}
