//! What the host knows of a plugin once loaded ([`PluginMeta`], [`Plugin`]),
//! and the host-wide [`Limits`] it was loaded under. A `Plugin` is immutable
//! after loading: its grants are fixed, and every step instantiates its
//! pre-linked component afresh.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use wasmtime::component::Component;

use crate::bindings::ExecutorPre;
use crate::manifest::{Defaults, Grants};
use crate::sandbox::StepCtx;

/// How the host loads and runs plugins.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Every plugin's limits unless its manifest says otherwise.
    pub defaults: Defaults,
    /// Components instantiated at once, across all flows; more steps wait.
    pub max_instances: u32,
    /// A component file larger than this is not loaded.
    pub max_component_bytes: u64,
    /// Compiling one component may take this long, waiting for a compile
    /// slot included; past it, it is skipped.
    pub compile_timeout: Duration,
    /// Compilations running at once; a compile given up on keeps its slot
    /// until its thread returns, so stuck ones cannot pile up.
    pub max_compiles: usize,
    /// The longest `describe` may take at load, instantiation included (and
    /// never longer than the plugin's step timeout).
    pub describe_timeout: Duration,
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
    pub(crate) pre: ExecutorPre<StepCtx>,
    pub(crate) component: Component,
}

impl Plugin {
    /// The compiled component, for benchmarks that call it without flowhost.
    pub fn component(&self) -> &Component {
        &self.component
    }
}

fn serialize_arc<S: serde::Serializer, T: Serialize>(
    value: &Arc<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    T::serialize(value, s)
}
