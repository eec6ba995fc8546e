//! The `text-stats` executor: counts the characters, words, sentences,
//! paragraphs and lines of the `text` of its input, and its reading time.

mod stats;

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::flowhost::executor::host::{LogLevel, log};
use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct TextStats;

impl Guest for TextStats {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: env!("CARGO_PKG_DESCRIPTION").to_string(),
            deterministic: true,
            input_schema: Some(stats::INPUT_SCHEMA.to_string()),
            output_schema: Some(stats::OUTPUT_SCHEMA.to_string()),
        }
    }

    fn execute(request: StepRequest) -> Result<Json, StepError> {
        match stats::run(&request.config, &request.input) {
            Ok((output, note)) => {
                log(LogLevel::Debug, &note);
                Ok(output)
            }
            Err(message) => {
                log(LogLevel::Debug, &format!("text-stats: rejected: {message}"));
                Err(StepError::InvalidInput(message))
            }
        }
    }
}

bindings::export!(TextStats with_types_in bindings);
