//! Executor plugins: the wasmtime engine, the plugins folder scan, validation
//! against the `executor` world, and running one step in a fresh `Store`.
//!
//! Each component is compiled once (or loaded from the host's artifact cache)
//! and kept as an `ExecutorPre`; a step gets a new instance and sandbox with
//! its plugin's grants (`manifest`), is stopped by epoch interruption at its
//! deadline, and every way it can misbehave ends in a typed [`PluginError`].
//! Nothing outside this module touches wasmtime or the bindings.

mod artifacts;
mod bindings;
mod capture;
mod http;
pub mod manifest;
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
use wasmtime_wasi::p2::bindings::cli::environment;
use wasmtime_wasi::p2::bindings::filesystem::preopens;

pub use bindings::CONTRACT_VERSION;
use bindings::{Executor, ExecutorPre, StepError, StepRequest};
use manifest::{Defaults, Grants, ManifestError};
use sandbox::StepCtx;

use crate::metrics::{Metrics, PluginLabel};
pub use sandbox::sanitize;

/// How often the engine's epoch advances: the granularity of timeouts, and how
/// often a running plugin yields to the async runtime.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How the host loads and runs plugins.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Every plugin's limits unless its manifest says otherwise.
    pub defaults: Defaults,
    /// Components instantiated at once, across all flows; more steps wait.
    pub max_instances: u32,
    /// A component file larger than this is not loaded.
    pub max_component_bytes: u64,
    /// Compiling one component may take this long; past it, it is skipped.
    pub compile_timeout: Duration,
    /// Host-owned folder of compiled artifacts; `None` compiles every start.
    pub artifacts_dir: Option<PathBuf>,
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
    /// Time to compile the component, or to load it from the artifact cache.
    pub compile_ms: f64,
    /// `compiled`, or `cached` when it came from the artifact cache.
    pub artifact: &'static str,
    /// Its limits and capabilities: the defaults with its manifest applied.
    #[serde(serialize_with = "serialize_arc")]
    pub grants: Arc<Grants>,
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
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("invalid component: {0:#}")]
    Compile(#[source] wasmtime::Error),
    #[error("compiling took longer than {0:?}; the component is too large or too complex")]
    CompileTimeout(Duration),
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
    #[error("capability denied: {capability}: {detail} (the plugin then said: {plugin_said})")]
    CapabilityDenied {
        /// `filesystem`, `environment`, `socket` or `http`.
        capability: &'static str,
        detail: String,
        plugin_said: String,
    },
}

impl PluginError {
    /// Whether running the step again may succeed.
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
            PluginError::CapabilityDenied { .. } => "capability_denied",
        }
    }
}

/// One call's result, with what the plugin printed.
#[derive(Debug)]
pub struct Execution {
    pub result: Result<Value, PluginError>,
    /// Captured stdout and stderr: bounded, control characters removed.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
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
        // The sandbox's own preopens and environment replace wasmtime-wasi's,
        // so that reaching for either without a grant is recorded.
        linker.allow_shadowing(true);
        preopens::add_to_linker::<_, HasSelf<_>>(&mut linker, |ctx| ctx)?;
        environment::add_to_linker::<_, HasSelf<_>>(&mut linker, |ctx| ctx)?;
        linker.allow_shadowing(false);
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
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

    /// Loads every `*.wasm` in `dir`, with the manifest beside each. A file
    /// that cannot be a plugin is skipped with its reason; it never stops the
    /// host. A missing folder loads nothing, with a warning.
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
                        artifact = plugin.meta.artifact,
                        compile_ms = plugin.meta.compile_ms,
                        http_allow = ?plugin.meta.grants.http_allow,
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

    /// Compiles (or loads from the artifact cache) and validates one
    /// component file, with its manifest.
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
        let grants = Arc::new(manifest::grants_for(path, &self.limits.defaults)?);
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
        let started = Instant::now();
        let (component, artifact) = self.compile(bytes, &hash).await?;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(LoadError::WrongWorld)?;
        let pre = ExecutorPre::new(instance_pre).map_err(LoadError::WrongWorld)?;

        let mut store = self.store(&name, "", "", &grants, Duration::from_secs(10));
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
            artifact,
            grants,
        };
        Ok(Plugin {
            meta,
            pre,
            component,
        })
    }

    /// The component for `bytes`: from the artifact cache when it holds one
    /// for this component and engine, else compiled off the async runtime
    /// under the compile time limit (and then stored in the cache).
    async fn compile(
        &self,
        bytes: Vec<u8>,
        hash: &str,
    ) -> Result<(Component, &'static str), LoadError> {
        let cache = self
            .limits
            .artifacts_dir
            .as_ref()
            .map(|dir| artifacts::ArtifactCache::new(dir, &self.engine));
        if let Some(cache) = &cache
            && let Some(component) = cache.load(&self.engine, hash)
        {
            return Ok((component, "cached"));
        }
        let engine = self.engine.clone();
        // Compilation is CPU-bound and can take a while: off the async
        // runtime, and abandoned (left to finish on its thread) past the limit.
        let job = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes));
        let component = tokio::time::timeout(self.limits.compile_timeout, job)
            .await
            .map_err(|_| LoadError::CompileTimeout(self.limits.compile_timeout))?
            .map_err(|e| LoadError::Compile(wasmtime::Error::msg(e.to_string())))?
            .map_err(LoadError::Compile)?;
        if let Some(cache) = &cache {
            cache.store(hash, &component);
        }
        Ok((component, "compiled"))
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
    /// call's timeout (else the plugin's) or when `call.stop` is cancelled.
    ///
    /// A plugin spinning in wasm is interrupted by the epoch deadline; one
    /// blocked in a host call (a sleep, say) yields, and the call's future is
    /// dropped here, which drops its instance with it.
    pub async fn execute(&self, plugin: &Plugin, call: &Call<'_>) -> Execution {
        let grants = &plugin.meta.grants;
        let timeout = call.timeout.unwrap_or_else(|| grants.timeout());
        let mut store = self.store(&plugin.meta.name, call.flow_id, call.step, grants, timeout);
        let (stdout, stderr) = {
            let ctx = store.data();
            (ctx.stdout.clone(), ctx.stderr.clone())
        };
        let run = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| PluginError::Instantiate(e.to_string()))?;
            self.run(plugin, call, &mut store, timeout).await
        };
        let result = tokio::select! {
            biased;
            () = call.stop.cancelled() => Err(PluginError::Interrupted),
            // Waiting for a slot counts against the timeout too; a bit of
            // slack lets the epoch deadline report a spinning plugin first.
            r = tokio::time::timeout(timeout + EPOCH_TICK * 5, run) => {
                r.unwrap_or(Err(PluginError::TimedOut(timeout)))
            }
        };
        let (stdout, stderr) = (stdout.text(), stderr.text());
        for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            if let Some(text) = text {
                tracing::debug!(plugin = %plugin.meta.name, flow_id = call.flow_id, step = call.step, stream, "{text}");
            }
        }
        Execution {
            result,
            stdout,
            stderr,
        }
    }

    async fn run(
        &self,
        plugin: &Plugin,
        call: &Call<'_>,
        store: &mut Store<StepCtx>,
        timeout: Duration,
    ) -> Result<Value, PluginError> {
        let grants = &plugin.meta.grants;
        let input = call.input.to_string();
        if input.len() > grants.max_input_bytes {
            return Err(PluginError::InputTooLarge {
                size: input.len(),
                limit: grants.max_input_bytes,
            });
        }
        let request = StepRequest {
            flow_id: call.flow_id.to_owned(),
            step: call.step.to_owned(),
            attempt: call.attempt,
            idempotency_key: format!("{}:{}:{}", call.flow_id, call.step, call.attempt),
            config: call.config.to_string(),
            input,
        };
        let clock = Instant::now();
        let executor = plugin
            .pre
            .instantiate_async(&mut *store)
            .await
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        if let Some(m) = &self.metrics {
            m.plugin_instantiate
                .get_or_create(&PluginLabel {
                    plugin: plugin.meta.name.clone(),
                })
                .observe(clock.elapsed().as_secs_f64());
        }
        let called = executor.call_execute(&mut *store, &request).await;
        let ctx = store.data();
        let result = match called {
            Err(trap) => Err(classify_trap(&trap, ctx, grants, timeout)),
            Ok(Ok(text)) if text.len() > grants.max_output_bytes => {
                Err(PluginError::OutputTooLarge {
                    size: text.len(),
                    limit: grants.max_output_bytes,
                })
            }
            Ok(Ok(text)) => serde_json::from_str(&text).map_err(|e| {
                PluginError::InvalidOutput(format!("{e} (output began {:?})", sanitize(&text, 64)))
            }),
            Ok(Err(StepError::InvalidInput(m))) => {
                Err(PluginError::InvalidInput(sanitize(&m, 4096)))
            }
            Ok(Err(StepError::Failed(m))) => Err(PluginError::Failed(sanitize(&m, 4096))),
            Ok(Err(StepError::Retryable(m))) => Err(PluginError::Retryable(sanitize(&m, 4096))),
        };
        // A plugin that reports a failure (or traps for no reason the host
        // can name) after being refused a capability failed because of it.
        // Limits the host enforced (time, memory, stack, fuel, a panic) are
        // reported as themselves: a panic reads the environment, for one.
        let denials = ctx.denials.list();
        match (result, denials.first()) {
            (
                Err(
                    e @ (PluginError::Failed(_)
                    | PluginError::Retryable(_)
                    | PluginError::InvalidInput(_)
                    | PluginError::Trapped { .. }),
                ),
                Some(denial),
            ) => Err(PluginError::CapabilityDenied {
                capability: denial.capability,
                detail: denial.detail.clone(),
                plugin_said: e.to_string(),
            }),
            (result, _) => {
                for d in &denials {
                    tracing::info!(plugin = %plugin.meta.name, flow_id = call.flow_id, step = call.step, capability = d.capability, detail = %d.detail, "capability denied");
                }
                result
            }
        }
    }

    fn store(
        &self,
        plugin: &str,
        flow_id: &str,
        step: &str,
        grants: &Arc<Grants>,
        timeout: Duration,
    ) -> Store<StepCtx> {
        let mut store = Store::new(&self.engine, StepCtx::new(plugin, flow_id, step, grants));
        store.limiter(|ctx| &mut ctx.memory);
        // Fuel is always metered, so that a manifest can set it; without a
        // limit the tank is bottomless.
        let _ = store.set_fuel(grants.fuel.unwrap_or(u64::MAX));
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

/// Names what stopped a call that did not return: the deadline, fuel, the
/// stack, the memory limit, a panic (its message read from stderr), or
/// another trap.
fn classify_trap(
    e: &wasmtime::Error,
    ctx: &StepCtx,
    grants: &Grants,
    timeout: Duration,
) -> PluginError {
    let trap = e.downcast_ref::<Trap>();
    match trap {
        Some(Trap::Interrupt) => return PluginError::TimedOut(timeout),
        Some(Trap::OutOfFuel) => {
            return PluginError::FuelExhausted(grants.fuel.unwrap_or(u64::MAX));
        }
        Some(Trap::StackOverflow) => return PluginError::StackExhausted,
        _ => {}
    }
    if let Some(wanted) = ctx.memory.refused {
        return PluginError::OutOfMemory {
            wanted,
            limit: grants.memory_bytes,
        };
    }
    if matches!(trap, Some(Trap::UnreachableCodeReached))
        && let Some(message) = ctx.stderr.text().as_deref().and_then(panic_message)
    {
        return PluginError::Panicked(sanitize(&message, 4096));
    }
    PluginError::Trapped {
        kind: trap.map_or_else(
            || "host_error".to_owned(),
            |t| snake_case(&format!("{t:?}")),
        ),
        message: sanitize(&format!("{e:#}"), 4096),
    }
}

/// The message of a Rust panic as the standard panic hook prints it:
/// `thread '…' panicked at FILE:LINE:COL:` and the message on the lines after.
fn panic_message(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let rest = &stderr[at..];
    let (place, message) = rest.split_once('\n')?;
    let message: Vec<&str> = message
        .lines()
        .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let place = place
        .trim_start_matches("panicked at ")
        .trim_end_matches(':');
    Some(format!("{} (at {place})", message.join(" ").trim()))
}

fn serialize_arc<S: serde::Serializer, T: Serialize>(
    value: &Arc<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    T::serialize(value, s)
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
            PluginError::InvalidInput(_) | PluginError::Failed(_) | PluginError::Retryable(_) => {
                None
            }
            other => Some(other.kind()),
        }
    }
}

fn engine_config(limits: &Limits, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.consume_fuel(true);
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
            .max_memory_size(limits.defaults.max_memory_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn reads_the_message_of_a_rust_panic() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:12:5:\nhostile: boom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("hostile: boom (at src/lib.rs:12:5)")
        );
        assert_eq!(panic_message("just some output\n"), None);
    }
}
