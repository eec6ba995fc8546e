//! Loading plugins: the plugins folder scan, every file loaded in a task of
//! its own, and one file's checks (name, manifest, size, component header),
//! compilation (or the artifact cache) under a bounded number of compile
//! slots, linking against the `executor` world and `describe` under a step's
//! limits, its answer bounded field by field. A file that cannot be a plugin
//! is skipped with its [`LoadError`]; it never stops or delays the host.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowhost_core::executor::PluginError;
use flowhost_core::observe::Event;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wasmtime::component::Component;

use crate::PluginHost;
use crate::artifacts::ArtifactCache;
use crate::bindings::{ExecutorPre, PluginInfo};
use crate::manifest::{self, Grants, ManifestError};
use crate::meta::{Plugin, PluginMeta};
use crate::run::classify_trap;
use crate::sandbox::{StepCtx, sanitize};

/// The longest name and version `describe` may return, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// The longest description `describe` may return, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4 << 10;
/// The longest input or output schema `describe` may return, in bytes each.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;

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
    #[error(
        "compiling took longer than {0:?} (waiting for a compile slot included); the \
         component is too large or too complex, or the host is busy compiling others"
    )]
    CompileTimeout(Duration),
    #[error("does not implement the flowhost:executor world: {0:#}")]
    WrongWorld(#[source] wasmtime::Error),
    #[error("describe() failed: {0}")]
    Describe(#[source] PluginError),
    #[error("describe() returned a {field} of {size} bytes, over the limit of {limit}")]
    DescribeTooLarge {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("describe() returned a schema that is not JSON: {0}")]
    BadSchema(#[source] serde_json::Error),
}

impl PluginHost {
    /// Marks every `*.wasm` in `dir` as loading, at once, and returns the
    /// work that loads them: each file in a task of its own, each plugin
    /// available as soon as it is loaded. A file that cannot be a plugin is
    /// skipped with its reason; it never stops the host. A missing folder
    /// loads nothing, with a warning.
    pub fn load_dir(self: &Arc<Self>, dir: &Path) -> impl Future<Output = ()> + Send + 'static {
        let paths = plugin_files(dir);
        self.mark_loading(&paths);
        let host = self.clone();
        async move {
            let mut tasks = JoinSet::new();
            let mut files = HashMap::new();
            for path in paths {
                let (h, p) = (host.clone(), path.clone());
                let task = tasks.spawn(async move {
                    let outcome = h.load_and_report(&p).await;
                    h.finish_loading(&p, outcome);
                });
                files.insert(task.id(), path);
            }
            while let Some(done) = tasks.join_next_with_id().await {
                // A load that panicked is skipped, never left loading.
                if let Err(e) = done
                    && let Some(path) = files.remove(&e.id())
                {
                    let reason = format!("loading failed: {e}");
                    host.finish_loading(&path.clone(), Err(Skipped { path, reason }));
                }
            }
        }
    }

    /// [`Self::load_dir`] on a thread of its own, with a runtime of its own,
    /// so that plugins busy in `describe` (up to its time limit) never hold
    /// up the threads that serve requests; returns once every file is marked
    /// loading.
    pub fn load_dir_in_background(self: &Arc<Self>, dir: &Path) -> std::io::Result<()> {
        let loading = self.load_dir(dir);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("flowhost-load")
            .build()?;
        std::thread::Builder::new()
            .name("flowhost-load".into())
            .spawn(move || runtime.block_on(loading))?;
        Ok(())
    }

    /// Loads one file, logging and reporting how it went.
    async fn load_and_report(&self, path: &Path) -> Result<Arc<Plugin>, Skipped> {
        match self.load_file(path).await {
            Ok(plugin) => {
                self.observer.record(Event::PluginCompiled {
                    plugin: &plugin.meta.name,
                    seconds: plugin.meta.compile_ms / 1e3,
                });
                tracing::info!(
                    plugin = %plugin.meta.name,
                    version = %plugin.meta.version,
                    hash = %&plugin.meta.hash[..16],
                    artifact = plugin.meta.artifact,
                    compile_ms = plugin.meta.compile_ms,
                    http_allow = ?plugin.meta.grants.http_allow,
                    "plugin loaded"
                );
                Ok(Arc::new(plugin))
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "plugin skipped");
                Err(Skipped {
                    path: path.to_owned(),
                    reason: reason.to_string(),
                })
            }
        }
    }

    /// Compiles (or loads from the artifact cache) and validates one
    /// component file, with its manifest.
    pub async fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        let name = plugin_name(path)?;
        let grants = Arc::new(manifest::grants_for(path, &self.limits.defaults)?);
        let (bytes, size) = read_component(path, self.limits.max_component_bytes)?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let started = Instant::now();
        let (component, artifact) = self.compile(bytes, &hash).await?;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(LoadError::WrongWorld)?;
        let pre = ExecutorPre::new(instance_pre).map_err(LoadError::WrongWorld)?;
        let info = bounded(self.describe(&pre, &name, &grants).await?)?;
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

    /// What the plugin says about itself, from a throwaway instance under
    /// a step's limits: its memory and fuel, an instance permit, and a time
    /// limit (`Limits::describe_timeout`, at most its step timeout) on the
    /// wall clock, so that a plugin sleeping in a host call is stopped too.
    async fn describe(
        &self,
        pre: &ExecutorPre<StepCtx>,
        name: &str,
        grants: &Arc<Grants>,
    ) -> Result<PluginInfo, LoadError> {
        let timeout = self.limits.describe_timeout.min(grants.timeout());
        let mut store = self.store(name, "", "describe", grants, timeout);
        let call = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| PluginError::Instantiate(e.to_string()))?;
            let executor = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
            let called = executor.call_describe(&mut store).await;
            called.map_err(|trap| classify_trap(&trap, store.data(), grants, timeout))
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(PluginError::TimedOut(timeout)))
            .map_err(LoadError::Describe)
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
            .map(|dir| ArtifactCache::new(dir, &self.engine));
        if let Some(cache) = &cache
            && let Some(component) = cache.load(&self.engine, hash)
        {
            return Ok((component, "cached"));
        }
        let engine = self.engine.clone();
        let limit = self.limits.compile_timeout;
        let job = move || Component::new(&engine, &bytes);
        let component = bounded_blocking(&self.compile_slots, limit, job)
            .await
            .ok_or(LoadError::CompileTimeout(limit))?
            .map_err(|e| LoadError::Compile(wasmtime::Error::msg(e)))?
            .map_err(LoadError::Compile)?;
        if let Some(cache) = &cache {
            cache.store(hash, &component);
        }
        Ok((component, "compiled"))
    }
}

/// Runs `job` on a blocking thread once one of `slots` is free; `None` when
/// it did not finish within `limit`, the wait for a slot included. Compiling
/// is CPU-bound and cannot be stopped: a job given up on is left to finish
/// on its thread and keeps its slot until then, so that stuck ones cannot
/// pile up past the number of slots.
async fn bounded_blocking<T: Send + 'static>(
    slots: &Arc<Semaphore>,
    limit: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<Result<T, String>> {
    let run = async {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            job()
        })
        .await
        .map_err(|e| e.to_string())
    };
    tokio::time::timeout(limit, run).await.ok()
}

/// The `*.wasm` files in `dir`, sorted.
fn plugin_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the plugins folder");
            return Vec::new();
        }
    };
    paths.sort();
    paths
}

/// `info` if every field is within its bound, its text fields cleaned of
/// control characters (they reach logs and terminals).
fn bounded(info: PluginInfo) -> Result<PluginInfo, LoadError> {
    let schema_len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let fields = [
        ("name", info.name.len(), MAX_NAME_BYTES),
        ("version", info.version.len(), MAX_NAME_BYTES),
        ("description", info.description.len(), MAX_DESCRIPTION_BYTES),
        (
            "input schema",
            schema_len(&info.input_schema),
            MAX_SCHEMA_BYTES,
        ),
        (
            "output schema",
            schema_len(&info.output_schema),
            MAX_SCHEMA_BYTES,
        ),
    ];
    for (field, size, limit) in fields {
        if size > limit {
            return Err(LoadError::DescribeTooLarge { field, size, limit });
        }
    }
    Ok(PluginInfo {
        name: sanitize(&info.name, MAX_NAME_BYTES),
        version: sanitize(&info.version, MAX_NAME_BYTES),
        description: sanitize(&info.description, MAX_DESCRIPTION_BYTES),
        ..info
    })
}

/// The name flows use for the plugin at `path`: its file name without
/// `.wasm`, of letters, digits, '-' and '_' only.
fn plugin_name(path: &Path) -> Result<String, LoadError> {
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
    Ok(name)
}

/// The bytes of the component file at `path` and its size, if it is no
/// larger than `limit` and is a component (not a core module).
fn read_component(path: &Path, limit: u64) -> Result<(Vec<u8>, u64), LoadError> {
    let size = std::fs::metadata(path).map_err(LoadError::Io)?.len();
    if size > limit {
        return Err(LoadError::TooLarge { size, limit });
    }
    let bytes = std::fs::read(path).map_err(LoadError::Io)?;
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(LoadError::CoreModule),
        Some([0, b'a', b's', b'm', ..]) => Ok((bytes, size)),
        _ => Err(LoadError::NotWasm),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::{LoadError, MAX_DESCRIPTION_BYTES, bounded, bounded_blocking};
    use crate::bindings::PluginInfo;

    #[tokio::test]
    async fn a_compile_given_up_on_keeps_its_slot_and_the_next_times_out_waiting() {
        let slots = Arc::new(Semaphore::new(1));
        let limit = Duration::from_millis(50);
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let first = bounded_blocking(&slots, limit, move || stuck.recv().is_ok()).await;
        assert_eq!(first, None, "a job past the limit is given up on");

        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let second = bounded_blocking(&slots, limit, move || flag.store(true, Ordering::SeqCst));
        assert_eq!(
            second.await,
            None,
            "waiting for the slot counts against the limit"
        );
        assert!(!started.load(Ordering::SeqCst), "it never got the slot");

        release.send(()).unwrap();
        let third = bounded_blocking(&slots, Duration::from_secs(30), || 7).await;
        assert_eq!(
            third,
            Some(Ok(7)),
            "the slot is back once the stuck job returned"
        );
    }

    #[test]
    fn describe_fields_past_their_bounds_are_refused() {
        let info = |description: String| PluginInfo {
            name: "p".into(),
            version: "1\n".into(),
            description,
            deterministic: true,
            input_schema: None,
            output_schema: Some("{}".into()),
        };
        let ok = bounded(info("fine".into())).unwrap();
        assert_eq!(ok.version, "1 ", "control characters are replaced");
        let huge = bounded(info("x".repeat(MAX_DESCRIPTION_BYTES + 1))).unwrap_err();
        assert!(
            matches!(
                huge,
                LoadError::DescribeTooLarge {
                    field: "description",
                    size: 4097,
                    limit: 4096
                }
            ),
            "{huge}"
        );
        assert_eq!(
            huge.to_string(),
            "describe() returned a description of 4097 bytes, over the limit of 4096"
        );
    }
}
