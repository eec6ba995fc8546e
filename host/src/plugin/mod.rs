//! Executor plugins: the wasmtime engine, the plugins folder scan, validation
//! against the `executor` world, and running one step in a fresh `Store`.
//!
//! Each component is compiled once and kept as an `ExecutorPre`; a step gets a
//! new instance and sandbox, and is stopped by epoch interruption at its
//! deadline. Nothing outside this module touches wasmtime or the bindings.

mod bindings;
mod sandbox;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

pub use bindings::CONTRACT_VERSION;
use bindings::{Executor, ExecutorPre, StepError, StepRequest};
use sandbox::StepCtx;

use crate::metrics::{Metrics, PluginLabel};
pub use sandbox::sanitize;

/// How often the engine's epoch advances: the granularity of timeouts, and how
/// often a running plugin yields to the async runtime.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every plugin.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest linear memory a plugin may grow to.
    pub memory_bytes: usize,
    /// Components instantiated at once, across all flows; more steps wait.
    pub max_instances: u32,
    /// A component file larger than this is not loaded.
    pub max_component_bytes: u64,
}

/// What a plugin says about itself, plus what the host knows of it.
#[derive(Clone, Debug, Serialize)]
pub struct PluginMeta {
    /// The name flows use: the file name without `.wasm`.
    pub name: String,
    /// The name, version and description from the plugin's `describe`.
    pub declared_name: String,
    pub version: String,
    pub description: String,
    pub deterministic: bool,
    pub input_schema: Option<Value>,
    pub output_schema: Option<Value>,
    /// blake3 of the component's bytes, hex.
    pub hash: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub compile_ms: f64,
}

pub struct Plugin {
    pub meta: PluginMeta,
    pre: ExecutorPre<StepCtx>,
    component: Component,
}

impl Plugin {
    /// The compiled component, for benchmarks that call it without flowhost.
    pub fn component(&self) -> &Component {
        &self.component
    }
}

/// A file in the plugins folder that was not loaded, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Why a file in the plugins folder cannot be a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read file: {0}")]
    Io(#[source] std::io::Error),
    #[error("file is {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build it for wasm32-wasip2 \
         (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("file name {0:?} is not a plugin name: use letters, digits, '-' and '_'")]
    BadName(String),
    #[error("invalid component: {0:#}")]
    Compile(#[source] wasmtime::Error),
    #[error("does not implement the flowhost:executor world: {0:#}")]
    WrongWorld(#[source] wasmtime::Error),
    #[error("describe() failed: {0:#}")]
    Describe(#[source] wasmtime::Error),
    #[error("describe() returned a schema that is not JSON: {0}")]
    BadSchema(#[source] serde_json::Error),
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
}

impl PluginError {
    /// Whether running the step again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PluginError::Retryable(_) | PluginError::TimedOut(_) | PluginError::Trapped { .. } => {
                true
            }
            PluginError::Instantiate(_) => true,
            PluginError::Interrupted
            | PluginError::InvalidInput(_)
            | PluginError::Failed(_)
            | PluginError::InvalidOutput(_) => false,
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
        }
    }
}

/// One step's call: who is asking, and with what.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub flow_id: &'a str,
    pub step: &'a str,
    pub attempt: u32,
    pub config: &'a Value,
    pub input: &'a Value,
    pub timeout: Duration,
    /// Cancelling it interrupts the call within one epoch tick.
    pub stop: &'a CancellationToken,
}

/// The loaded plugins and the engine that runs them. Cheap to share in an Arc.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<StepCtx>,
    limits: Limits,
    plugins: BTreeMap<String, Arc<Plugin>>,
    skipped: Vec<Skipped>,
    permits: Semaphore,
    metrics: Option<Arc<Metrics>>,
}

impl PluginHost {
    /// Builds the engine (pooling allocator sized from `limits`, falling back
    /// to on-demand allocation where the address space cannot be reserved).
    pub fn new(limits: Limits) -> wasmtime::Result<Self> {
        let engine = match Engine::new(&engine_config(&limits, true)) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(error = %e, "pooling allocator unavailable, using on-demand allocation");
                Engine::new(&engine_config(&limits, false))?
            }
        };
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("flowhost-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Executor::add_to_linker::<_, HasSelf<_>>(&mut linker, |ctx| ctx)?;
        Ok(PluginHost {
            engine,
            linker,
            permits: Semaphore::new(limits.max_instances as usize),
            limits,
            plugins: BTreeMap::new(),
            skipped: Vec::new(),
            metrics: None,
        })
    }

    /// Records compile and instantiate times in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Loads every `*.wasm` in `dir`. A file that cannot be a plugin is
    /// skipped with its reason; it never stops the host. A missing folder
    /// loads nothing, with a warning.
    pub async fn load_dir(&mut self, dir: &Path) {
        let mut paths = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the plugins folder");
                return;
            }
        };
        paths.sort();
        for path in paths {
            match self.load_file(&path).await {
                Ok(plugin) => {
                    if let Some(m) = &self.metrics {
                        m.plugin_compile
                            .get_or_create(&PluginLabel {
                                plugin: plugin.meta.name.clone(),
                            })
                            .observe(plugin.meta.compile_ms / 1e3);
                    }
                    tracing::info!(
                        plugin = %plugin.meta.name,
                        version = %plugin.meta.version,
                        hash = %&plugin.meta.hash[..16],
                        compile_ms = plugin.meta.compile_ms,
                        "plugin loaded"
                    );
                    self.plugins
                        .insert(plugin.meta.name.clone(), Arc::new(plugin));
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "plugin skipped");
                    self.skipped.push(Skipped {
                        path,
                        reason: reason.to_string(),
                    });
                }
            }
        }
    }

    /// Compiles and validates one component file.
    pub async fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(LoadError::BadName(name));
        }
        let size = std::fs::metadata(path).map_err(LoadError::Io)?.len();
        if size > self.limits.max_component_bytes {
            return Err(LoadError::TooLarge {
                size,
                limit: self.limits.max_component_bytes,
            });
        }
        let bytes = std::fs::read(path).map_err(LoadError::Io)?;
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => return Err(LoadError::CoreModule),
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm),
        }
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let engine = self.engine.clone();
        let started = Instant::now();
        // Compilation is CPU-bound and can take a while: off the async runtime.
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| LoadError::Compile(wasmtime::Error::msg(e.to_string())))?
            .map_err(LoadError::Compile)?;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(LoadError::WrongWorld)?;
        let pre = ExecutorPre::new(instance_pre).map_err(LoadError::WrongWorld)?;

        let mut store = self.store(&name, "", "", Duration::from_secs(10));
        let info = async {
            let executor = pre.instantiate_async(&mut store).await?;
            executor.call_describe(&mut store).await
        }
        .await
        .map_err(LoadError::Describe)?;
        let schema = |s: Option<String>| {
            s.map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(LoadError::BadSchema)
        };
        let meta = PluginMeta {
            name,
            declared_name: info.name,
            version: info.version,
            description: info.description,
            deterministic: info.deterministic,
            input_schema: schema(info.input_schema)?,
            output_schema: schema(info.output_schema)?,
            hash,
            path: path.to_owned(),
            size_bytes: size,
            compile_ms,
        };
        Ok(Plugin {
            meta,
            pre,
            component,
        })
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

    /// Runs one step: a fresh instance in a fresh sandbox, stopped at the
    /// call's timeout or when `call.stop` is cancelled.
    ///
    /// A plugin spinning in wasm is interrupted by the epoch deadline; one
    /// blocked in a host call (a sleep, say) yields, and the call's future is
    /// dropped here, which drops its instance with it.
    pub async fn execute(&self, plugin: &Plugin, call: &Call<'_>) -> Result<Value, PluginError> {
        let run = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| PluginError::Instantiate(e.to_string()))?;
            self.run(plugin, call).await
        };
        tokio::select! {
            biased;
            () = call.stop.cancelled() => Err(PluginError::Interrupted),
            // Waiting for a slot counts against the timeout too; a bit of
            // slack lets the epoch deadline report a spinning plugin first.
            r = tokio::time::timeout(call.timeout + EPOCH_TICK * 5, run) => {
                r.unwrap_or(Err(PluginError::TimedOut(call.timeout)))
            }
        }
    }

    async fn run(&self, plugin: &Plugin, call: &Call<'_>) -> Result<Value, PluginError> {
        let mut store = self.store(&plugin.meta.name, call.flow_id, call.step, call.timeout);
        let request = StepRequest {
            flow_id: call.flow_id.to_owned(),
            step: call.step.to_owned(),
            attempt: call.attempt,
            idempotency_key: format!("{}:{}:{}", call.flow_id, call.step, call.attempt),
            config: call.config.to_string(),
            input: call.input.to_string(),
        };
        let clock = Instant::now();
        let executor = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        if let Some(m) = &self.metrics {
            m.plugin_instantiate
                .get_or_create(&PluginLabel {
                    plugin: plugin.meta.name.clone(),
                })
                .observe(clock.elapsed().as_secs_f64());
        }
        let result = executor
            .call_execute(&mut store, &request)
            .await
            .map_err(|e| classify_trap(&e, call.timeout))?;
        match result {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                PluginError::InvalidOutput(format!("{e} (output began {:?})", sanitize(&text, 64)))
            }),
            Err(StepError::InvalidInput(m)) => Err(PluginError::InvalidInput(sanitize(&m, 4096))),
            Err(StepError::Failed(m)) => Err(PluginError::Failed(sanitize(&m, 4096))),
            Err(StepError::Retryable(m)) => Err(PluginError::Retryable(sanitize(&m, 4096))),
        }
    }

    fn store(&self, plugin: &str, flow_id: &str, step: &str, timeout: Duration) -> Store<StepCtx> {
        let mut store = Store::new(
            &self.engine,
            StepCtx::new(plugin, flow_id, step, self.limits.memory_bytes),
        );
        store.limiter(|ctx| &mut ctx.limits);
        let deadline = Instant::now() + timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

fn classify_trap(e: &wasmtime::Error, timeout: Duration) -> PluginError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::TimedOut(timeout),
        trap => PluginError::Trapped {
            kind: trap.map_or_else(
                || "host_error".to_owned(),
                |t| snake_case(&format!("{t:?}")),
            ),
            message: sanitize(&format!("{e:#}"), 4096),
        },
    }
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        }
    }
    out
}

impl PluginError {
    /// For `flowhost_plugin_traps_total`: the kind of a fault the host
    /// detected, or `None` for a verdict the plugin returned itself.
    pub fn trap_kind(&self) -> Option<&str> {
        match self {
            PluginError::Trapped { kind, .. } => Some(kind),
            PluginError::TimedOut(_) => Some("timed_out"),
            PluginError::Interrupted => Some("interrupted"),
            PluginError::InvalidOutput(_) => Some("invalid_output"),
            PluginError::Instantiate(_) => Some("instantiate"),
            PluginError::InvalidInput(_) | PluginError::Failed(_) | PluginError::Retryable(_) => {
                None
            }
        }
    }
}

fn engine_config(limits: &Limits, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    if pooling {
        let instances = limits.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // A Rust component built for wasip2 has a handful of core instances
        // (the program plus adapter shims), each possibly with a memory.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 4)
            .total_tables(instances * 8)
            .total_stacks(instances)
            .max_memory_size(limits.memory_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}
