//! Loading plugins: the plugins folder scan, and one file's checks (name,
//! manifest, size, component header), compilation (or the artifact cache),
//! linking against the `executor` world and `describe`. A file that cannot be
//! a plugin is skipped with its [`LoadError`]; it never stops the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowhost_core::observe::Event;
use serde::Serialize;
use wasmtime::component::Component;

use crate::PluginHost;
use crate::artifacts::ArtifactCache;
use crate::bindings::{ExecutorPre, PluginInfo};
use crate::manifest::{self, Grants, ManifestError};
use crate::meta::{Plugin, PluginMeta};
use crate::sandbox::StepCtx;

/// How long `describe` may take while loading.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

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

impl PluginHost {
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
        let info = self.describe(&pre, &name, &grants).await?;
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

    /// What the plugin says about itself, from a throwaway instance.
    async fn describe(
        &self,
        pre: &ExecutorPre<StepCtx>,
        name: &str,
        grants: &Arc<Grants>,
    ) -> Result<PluginInfo, LoadError> {
        let mut store = self.store(name, "", "", grants, DESCRIBE_TIMEOUT);
        async {
            let executor = pre.instantiate_async(&mut store).await?;
            executor.call_describe(&mut store).await
        }
        .await
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
