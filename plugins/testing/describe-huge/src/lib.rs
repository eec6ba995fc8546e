//! The `describe-huge` test plugin: its `describe()` returns a 100 MiB
//! description. The host must skip it with the reason, without delaying its
//! start. Never put it in a real plugins folder.

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct Hostile;

impl Guest for Hostile {
    fn describe() -> PluginInfo {
        // 100 MiB of description, within the default memory limit.
        PluginInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "x".repeat(100 << 20),
            deterministic: true,
            input_schema: None,
            output_schema: None,
        }
    }

    fn execute(_: StepRequest) -> Result<Json, StepError> {
        Err(StepError::Failed("never loaded".into()))
    }
}

bindings::export!(Hostile with_types_in bindings);
