//! The `describe-loops` test plugin: its `describe()` spins forever. The host
//! must skip it with the reason, without delaying its start. Never put it in
//! a real plugins folder.

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct Hostile;

impl Guest for Hostile {
    fn describe() -> PluginInfo {
        let mut turns = 0u64;
        loop {
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }

    fn execute(_: StepRequest) -> Result<Json, StepError> {
        Err(StepError::Failed("never loaded".into()))
    }
}

bindings::export!(Hostile with_types_in bindings);
