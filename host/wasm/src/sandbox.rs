//! The per-step sandbox: what a plugin's `Store` holds. A WASI context that
//! grants only what the manifest lists (by default no files, environment,
//! arguments, sockets or HTTP hosts), captured stdio, a memory limiter that
//! remembers a refusal, the gated `wasi:http` context, the step's blob access
//! and the `log` import. Every refused capability is recorded in the step's
//! [`Denials`].

use std::sync::Arc;

use flowhost_core::blob::BlobStore;
use serde_json::Value;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::cli::environment;
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::Descriptor;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::{Host, LogLevel, TypesHost};
use crate::blobs::{BlobsView, StepBlobs};
use crate::capture::Capture;
use crate::denials::Denials;
use crate::http::HttpGate;
use crate::manifest::Grants;

/// A log line longer than this is cut: plugins cannot flood the host's log.
const MAX_LOG_LINE: usize = 4096;
/// Table elements an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Limits linear memory to the plugin's grant, and remembers a refusal so
/// that the trap which follows is reported as out of memory.
pub struct MemoryGuard {
    limit: usize,
    /// The size a refused growth asked for.
    pub refused: Option<usize>,
}

impl ResourceLimiter for MemoryGuard {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        64
    }
}

pub struct StepCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    gate: HttpGate,
    pub(crate) memory: MemoryGuard,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
    pub(crate) denials: Denials,
    /// Unavailable until [`StepCtx::open_blobs`] (never, for `describe`).
    pub(crate) blobs: StepBlobs,
    grants: Arc<Grants>,
    plugin: String,
    flow_id: String,
    step: String,
}

impl StepCtx {
    pub fn new(plugin: &str, flow_id: &str, step: &str, grants: &Arc<Grants>) -> Self {
        let denials = Denials::default();
        let stdout = Capture::new(grants.max_stdio_bytes);
        let stderr = Capture::new(grants.max_stdio_bytes);
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .envs(&grants.env)
            .allow_ip_name_lookup(false)
            // Sockets may be created; every address is checked on connect,
            // bind and send, against the manifest's `[sockets] allow`.
            .allow_tcp(true)
            .allow_udp(true);
        let check = (grants.clone(), denials.clone());
        builder.socket_addr_check(move |addr, usage| {
            let (grants, denials) = check.clone();
            Box::pin(async move {
                // A connect first binds the socket to the wildcard address;
                // that is allowed to a plugin granted some address.
                let implicit_bind =
                    matches!(usage, SocketAddrUse::TcpBind | SocketAddrUse::UdpBind)
                        && addr.ip().is_unspecified()
                        && addr.port() == 0;
                let allowed =
                    grants.sockets.contains(&addr) || (implicit_bind && !grants.sockets.is_empty());
                if !allowed {
                    let what = match usage {
                        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind if implicit_bind => {
                            "open a socket (no address is granted)".to_owned()
                        }
                        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => format!("bind {addr}"),
                        SocketAddrUse::TcpListen => format!("listen on {addr}"),
                        SocketAddrUse::TcpAccept => format!("accept on {addr}"),
                        SocketAddrUse::TcpConnect => format!("connect to {addr}"),
                        SocketAddrUse::UdpSend => format!("send to {addr}"),
                        SocketAddrUse::UdpReceive => format!("receive from {addr}"),
                    };
                    denials.record("socket", what);
                }
                allowed
            })
        });
        for (guest, host) in &grants.files {
            if let Err(e) = builder.preopened_dir(host, guest, FsPerms::ReadOnly) {
                tracing::warn!(plugin, folder = %host.display(), error = %e, "cannot open a granted folder");
            }
        }
        StepCtx {
            wasi: builder.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            gate: HttpGate {
                grants: grants.clone(),
                denials: denials.clone(),
            },
            memory: MemoryGuard {
                limit: grants.memory_bytes,
                refused: None,
            },
            stdout,
            stderr,
            denials,
            blobs: StepBlobs::default(),
            grants: grants.clone(),
            plugin: plugin.to_owned(),
            flow_id: flow_id.to_owned(),
            step: step.to_owned(),
        }
    }

    /// Gives the step access to `store`: the blobs its `input` refers to,
    /// and those it creates, within its grants' budgets.
    pub fn open_blobs(&mut self, store: Arc<dyn BlobStore>, input: &Value) {
        self.blobs = StepBlobs::for_step(store, input, &self.grants, self.denials.clone());
    }

    pub fn blobs_view(&mut self) -> BlobsView<'_> {
        BlobsView {
            blobs: &mut self.blobs,
            table: &mut self.table,
        }
    }
}

impl WasiView for StepCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StepCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.gate,
        }
    }
}

/// Replaces wasmtime-wasi's `get-directories`: the same folders, but a
/// plugin granted none that asks is recorded as reaching for files.
impl preopens::Host for StepCtx {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        if self.grants.files.is_empty() {
            self.denials.record(
                "filesystem",
                "looked for files; no folder is granted".into(),
            );
        }
        preopens::Host::get_directories(&mut self.filesystem())
    }
}

/// Replaces wasmtime-wasi's environment: only the granted secrets, no
/// arguments, no working directory; a plugin granted none that reads the
/// environment is recorded.
impl environment::Host for StepCtx {
    fn get_environment(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        if self.grants.secret_names.is_empty() {
            self.denials.record(
                "environment",
                "read the environment; no variable is granted".into(),
            );
        }
        Ok(self.grants.env.clone())
    }

    fn get_arguments(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn initial_cwd(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(None)
    }
}

impl TypesHost for StepCtx {}

impl Host for StepCtx {
    fn log(&mut self, level: LogLevel, message: String) {
        let message = sanitize(&message, MAX_LOG_LINE);
        let (plugin, flow_id, step) = (&self.plugin, &self.flow_id, &self.step);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, flow_id, step, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, flow_id, step, "{message}"),
            LogLevel::Info => tracing::info!(plugin, flow_id, step, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, flow_id, step, "{message}"),
            LogLevel::Error => tracing::error!(plugin, flow_id, step, "{message}"),
        }
    }
}

/// Keeps at most `max` bytes and replaces control characters, so that text
/// from a plugin cannot forge log lines or terminal escapes.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn sanitize_strips_control_characters_and_bounds_length() {
        assert_eq!(sanitize("a\nb\x1b[31mc", 100), "a b [31mc");
        assert_eq!(sanitize("abcdef", 3), "abc…");
        assert_eq!(sanitize("ééé", 4), "éé…");
    }
}
