//! The `chaos` test plugin: succeeds, fails, panics, sleeps, spins, loops or
//! returns bad or big output as its config's `mode` asks, so that tests can
//! drive every path of the host. With `report_url` in its config it first
//! POSTs `{"flow_id", "step", "attempt", "started_ms"}` there (the host must
//! allow that host in the plugin's manifest), so a test can see every
//! execution and when it began.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::flowhost::executor::host::{LogLevel, log};
use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

const MODES: &str = "ok, fail, invalid, retryable, panic, sleep, spin, loop, bad_json, big";

struct Chaos;

fn invalid(message: impl Into<String>) -> StepError {
    StepError::InvalidInput(message.into())
}

/// A whole-number setting of the config; `default` when absent, required when
/// there is none.
fn number(config: &Value, key: &str, default: Option<u64>) -> Result<u64, StepError> {
    match (config.get(key), default) {
        (Some(value), _) => value.as_u64().ok_or_else(|| {
            invalid(format!(
                "chaos: config \"{key}\" must be a whole number, got {value}"
            ))
        }),
        (None, Some(default)) => Ok(default),
        (None, None) => Err(invalid(format!("chaos: this mode needs config \"{key}\""))),
    }
}

/// The output of a step that succeeds.
fn ok(request: &StepRequest) -> Result<Json, StepError> {
    let input: Value = serde_json::from_str(&request.input)
        .map_err(|e| invalid(format!("chaos: input is not valid JSON ({e})")))?;
    let output = json!({
        "input": input,
        "attempt": request.attempt,
        "idempotency_key": request.idempotency_key,
    });
    Ok(output.to_string())
}

impl Guest for Chaos {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: env!("CARGO_PKG_DESCRIPTION").to_string(),
            deterministic: false,
            input_schema: None,
            output_schema: None,
        }
    }

    fn execute(request: StepRequest) -> Result<Json, StepError> {
        let config: Value = match request.config.trim() {
            "" => Value::Null,
            text => serde_json::from_str(text)
                .map_err(|e| invalid(format!("chaos: config is not valid JSON ({e})")))?,
        };
        let mode = match config.get("mode") {
            None | Some(Value::Null) => "ok",
            Some(Value::String(mode)) => mode.as_str(),
            Some(other) => {
                return Err(invalid(format!(
                    "chaos: config \"mode\" must be a string, got {other}"
                )));
            }
        };
        log(
            LogLevel::Debug,
            &format!("chaos: mode {mode}, attempt {}", request.attempt),
        );
        if let Some(url) = config.get("report_url").and_then(Value::as_str) {
            // When this execution began, by the host's wall clock: the
            // report itself may arrive late (its host frozen mid-request).
            let started_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let report = json!({
                "flow_id": request.flow_id,
                "step": request.step,
                "attempt": request.attempt,
                "started_ms": started_ms,
            })
            .to_string();
            httpkit::request(
                "POST",
                url,
                &[("content-type", "application/json")],
                Some(report.as_bytes()),
            )
            .map_err(|e| StepError::Retryable(format!("chaos: cannot report to {url}: {e}")))?;
        }
        match mode {
            "ok" => ok(&request),
            "fail" => Err(StepError::Failed("chaos: failed on purpose".to_string())),
            "invalid" => Err(invalid("chaos: invalid on purpose")),
            "retryable" => {
                let fail_times = number(&config, "fail_times", Some(1))?;
                if u64::from(request.attempt) <= fail_times {
                    Err(StepError::Retryable(format!(
                        "chaos: attempt {} of {fail_times} fails",
                        request.attempt
                    )))
                } else {
                    ok(&request)
                }
            }
            "panic" => panic!("chaos: panicked on purpose"),
            "sleep" => {
                let ms = number(&config, "ms", None)?;
                std::thread::sleep(Duration::from_millis(ms));
                ok(&request)
            }
            "spin" => {
                let duration = Duration::from_millis(number(&config, "ms", None)?);
                let start = Instant::now();
                while start.elapsed() < duration {
                    std::hint::spin_loop();
                }
                ok(&request)
            }
            "loop" => {
                let mut turns = 0u64;
                loop {
                    turns = std::hint::black_box(turns.wrapping_add(1));
                }
            }
            "bad_json" => Ok("not json {".to_string()),
            "big" => {
                let bytes = number(&config, "bytes", None)?;
                let bytes = usize::try_from(bytes)
                    .ok()
                    .filter(|&b| b >= 2)
                    .ok_or_else(|| invalid("chaos: config \"bytes\" must be at least 2"))?;
                let mut out = String::with_capacity(bytes);
                out.push('"');
                out.extend(std::iter::repeat_n('x', bytes - 2));
                out.push('"');
                Ok(out)
            }
            other => Err(invalid(format!(
                "chaos: unknown mode \"{other}\"; expected one of: {MODES}"
            ))),
        }
    }
}

bindings::export!(Chaos with_types_in bindings);
