//! The per-step sandbox: what a plugin's `Store` holds. A WASI context that
//! grants nothing (no files, environment, arguments or sockets), a memory
//! limiter, and the `log` import, tagged with the flow and step it serves.

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{Host, LogLevel, TypesHost};

/// A log line longer than this is cut: plugins cannot flood the host's log.
const MAX_LOG_LINE: usize = 4096;

pub struct StepCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    plugin: String,
    flow_id: String,
    step: String,
}

impl StepCtx {
    pub fn new(plugin: &str, flow_id: &str, step: &str, memory_bytes: usize) -> Self {
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        StepCtx {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .instances(64)
                .build(),
            plugin: plugin.to_owned(),
            flow_id: flow_id.to_owned(),
            step: step.to_owned(),
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
