//! Running one step: a fresh `Store` (memory limiter, fuel, epoch deadline)
//! and instance per call, under the host's instance permits, and the mapping
//! of every way it can end to an [`Execution`]. A call never outlives its
//! timeout or its `stop` token; its instance is dropped with its future.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowhost_core::executor::{Call, Execution, PluginError};
use flowhost_core::observe::Event;
use serde_json::Value;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::PluginHost;
use crate::bindings::{StepError, StepRequest};
use crate::denials::Denial;
use crate::engine::EPOCH_TICK;
use crate::manifest::Grants;
use crate::meta::Plugin;
use crate::sandbox::{StepCtx, sanitize};

/// The longest message the host keeps from a plugin's error or trap.
const MAX_MESSAGE: usize = 4096;

impl PluginHost {
    /// Runs one step: a fresh instance in a fresh sandbox, stopped at the
    /// call's timeout (else the plugin's) or when `call.stop` is cancelled.
    ///
    /// A plugin spinning in wasm is interrupted by the epoch deadline; one
    /// blocked in a host call (a sleep, say) yields, and the call's future is
    /// dropped here, which drops its instance with it.
    pub async fn execute_plugin(&self, plugin: &Plugin, call: &Call<'_>) -> Execution {
        let grants = &plugin.meta.grants;
        let timeout = call.timeout.unwrap_or_else(|| grants.timeout());
        let mut store = self.store(&plugin.meta.name, call.flow_id, call.step, grants, timeout);
        if let Some(blobs) = &self.blobs {
            store.data_mut().open_blobs(blobs.clone(), call.input);
        }
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

    /// Instantiates the plugin in `store` and calls its `execute`.
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
        self.observer.record(Event::PluginInstantiated {
            plugin: &plugin.meta.name,
            seconds: clock.elapsed().as_secs_f64(),
        });
        let called = executor.call_execute(&mut *store, &request).await;
        let ctx = store.data();
        let result = match called {
            Err(trap) => Err(classify_trap(&trap, ctx, grants, timeout)),
            Ok(returned) => output(returned, grants),
        };
        // A blob budget crossed fails the step even if the plugin went on
        // without the refused bytes: its output would not be the one asked for.
        let result = match (result, ctx.blobs.overrun()) {
            (Ok(_), Some(over)) => Err(over),
            (Err(e), Some(over)) if is_plugins_verdict(&e) => Err(over),
            (result, _) => result,
        };
        let denials = ctx.denials.list();
        match (result, denials.first()) {
            (Err(e), Some(denial)) if is_plugins_verdict(&e) => Err(denied(denial, &e)),
            (result, _) => {
                for d in &denials {
                    tracing::info!(plugin = %plugin.meta.name, flow_id = call.flow_id, step = call.step, capability = d.capability, detail = %d.detail, "capability denied");
                }
                result
            }
        }
    }

    /// A store for one call of `plugin`: its memory limit, its fuel, and an
    /// epoch deadline `timeout` from now.
    pub(crate) fn store(
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

/// What a plugin's `execute` returned, checked against its output limit and
/// parsed as JSON.
fn output(returned: Result<String, StepError>, grants: &Grants) -> Result<Value, PluginError> {
    match returned {
        Ok(text) if text.len() > grants.max_output_bytes => Err(PluginError::OutputTooLarge {
            size: text.len(),
            limit: grants.max_output_bytes,
        }),
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            PluginError::InvalidOutput(format!("{e} (output began {:?})", sanitize(&text, 64)))
        }),
        Err(StepError::InvalidInput(m)) => {
            Err(PluginError::InvalidInput(sanitize(&m, MAX_MESSAGE)))
        }
        Err(StepError::Failed(m)) => Err(PluginError::Failed(sanitize(&m, MAX_MESSAGE))),
        Err(StepError::Retryable(m)) => Err(PluginError::Retryable(sanitize(&m, MAX_MESSAGE))),
    }
}

/// A plugin that reports a failure (or traps for no reason the host can name)
/// after being refused a capability failed because of it. Limits the host
/// enforced (time, memory, stack, fuel, a panic) are reported as themselves:
/// a panic reads the environment, for one.
fn is_plugins_verdict(e: &PluginError) -> bool {
    matches!(
        e,
        PluginError::Failed(_)
            | PluginError::Retryable(_)
            | PluginError::InvalidInput(_)
            | PluginError::Trapped { .. }
    )
}

fn denied(denial: &Denial, plugin_said: &PluginError) -> PluginError {
    PluginError::CapabilityDenied {
        capability: denial.capability,
        detail: denial.detail.clone(),
        plugin_said: plugin_said.to_string(),
    }
}

/// Names what stopped a call that did not return: the deadline, fuel, the
/// stack, the memory limit, a panic (its message read from stderr), or
/// another trap.
pub(crate) fn classify_trap(
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
        return PluginError::Panicked(sanitize(&message, MAX_MESSAGE));
    }
    PluginError::Trapped {
        kind: trap.map_or_else(
            || "host_error".to_owned(),
            |t| snake_case(&format!("{t:?}")),
        ),
        message: sanitize(&format!("{e:#}"), MAX_MESSAGE),
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
