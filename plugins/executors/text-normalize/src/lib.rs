//! The `text-normalize` executor: lowercases, strips punctuation, collapses
//! whitespace and trims the `text` of its input, as its config asks.

mod normalize;

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::flowhost::executor::host::{LogLevel, log};
use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct TextNormalize;

impl Guest for TextNormalize {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: env!("CARGO_PKG_DESCRIPTION").to_string(),
            deterministic: true,
            input_schema: Some(normalize::INPUT_SCHEMA.to_string()),
            output_schema: Some(normalize::OUTPUT_SCHEMA.to_string()),
        }
    }

    fn execute(request: StepRequest) -> Result<Json, StepError> {
        match normalize::run(&request.config, &request.input) {
            Ok((output, note)) => {
                log(LogLevel::Debug, &note);
                Ok(output)
            }
            Err(message) => {
                log(
                    LogLevel::Debug,
                    &format!("text-normalize: rejected: {message}"),
                );
                Err(StepError::InvalidInput(message))
            }
        }
    }
}

bindings::export!(TextNormalize with_types_in bindings);
