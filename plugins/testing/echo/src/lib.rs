//! The `echo` test plugin: returns `{"input": <input>, "config": <config>}`
//! without parsing either, to measure the host's own overhead per step.

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct Echo;

/// The JSON text as given, or `null` when it is empty.
fn or_null(json: &str) -> &str {
    let json = json.trim();
    if json.is_empty() { "null" } else { json }
}

impl Guest for Echo {
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
        let input = or_null(&request.input);
        let config = or_null(&request.config);
        let mut out = String::with_capacity(input.len() + config.len() + 22);
        out.push_str("{\"input\":");
        out.push_str(input);
        out.push_str(",\"config\":");
        out.push_str(config);
        out.push('}');
        Ok(out)
    }
}

bindings::export!(Echo with_types_in bindings);
