//! The `describe-oom` test plugin: its `describe()` allocates memory until
//! the limit stops it. The host must skip it with the reason, without
//! delaying its start. Never put it in a real plugins folder.

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct Hostile;

impl Guest for Hostile {
    fn describe() -> PluginInfo {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch every page so that the memory is really used.
            hoard.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }

    fn execute(_: StepRequest) -> Result<Json, StepError> {
        Err(StepError::Failed("never loaded".into()))
    }
}

bindings::export!(Hostile with_types_in bindings);
