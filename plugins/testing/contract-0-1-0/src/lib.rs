//! The `contract-0-1-0` test plugin: built from its own frozen copy of the
//! 0.1.0 contract (`wit/`), so that a host of any later 0.1 contract must
//! still load and run it. It logs through `host@0.1.0` and returns
//! `{"contract": "0.1.0", "input": <input>}`.

mod bindings {
    //! Rust bindings generated from the frozen 0.1.0 `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "wit" });
}

use bindings::flowhost::executor::host::{LogLevel, log};
use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct Contract010;

impl Guest for Contract010 {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: env!("CARGO_PKG_DESCRIPTION").to_string(),
            deterministic: true,
            input_schema: None,
            output_schema: None,
        }
    }

    fn execute(request: StepRequest) -> Result<Json, StepError> {
        log(
            LogLevel::Info,
            &format!("step {} of the 0.1.0 contract", request.step),
        );
        let input = request.input.trim();
        let input = if input.is_empty() { "null" } else { input };
        Ok(format!("{{\"contract\":\"0.1.0\",\"input\":{input}}}"))
    }
}

bindings::export!(Contract010 with_types_in bindings);
