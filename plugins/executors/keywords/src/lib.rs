//! The `keywords` executor: lists the most frequent words of the `text` of
//! its input, leaving out English stopwords and those the config adds.

mod extract;

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::flowhost::executor::host::{LogLevel, log};
use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct Keywords;

impl Guest for Keywords {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: env!("CARGO_PKG_DESCRIPTION").to_string(),
            deterministic: true,
            input_schema: Some(extract::INPUT_SCHEMA.to_string()),
            output_schema: Some(extract::OUTPUT_SCHEMA.to_string()),
        }
    }

    fn execute(request: StepRequest) -> Result<Json, StepError> {
        match extract::run(&request.config, &request.input) {
            Ok((output, note)) => {
                log(LogLevel::Debug, &note);
                Ok(output)
            }
            Err(message) => {
                log(LogLevel::Debug, &format!("keywords: rejected: {message}"));
                Err(StepError::InvalidInput(message))
            }
        }
    }
}

bindings::export!(Keywords with_types_in bindings);
