//! The `llm-complete` executor: sends the `prompt` of its input to an
//! OpenAI-compatible completions endpoint and returns the completion.
//!
//! Config: `url` (the endpoint, required), `model`, `max_tokens`. The API key
//! is read from the `LLM_API_KEY` environment variable, which the host fills
//! from its secrets when the plugin's manifest grants it. The endpoint's host
//! must be on the manifest's `[http] allow` list.

use serde_json::{Value, json};

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::flowhost::executor::host::{LogLevel, log};
use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

const INPUT_SCHEMA: &str =
    r#"{"type":"object","required":["prompt"],"properties":{"prompt":{"type":"string"}}}"#;
const OUTPUT_SCHEMA: &str =
    r#"{"type":"object","properties":{"completion":{"type":"string"},"model":{"type":"string"}}}"#;

struct LlmComplete;

fn invalid(message: impl Into<String>) -> StepError {
    StepError::InvalidInput(message.into())
}

/// The completion text of an OpenAI-style (`choices[0].text` or
/// `choices[0].message.content`) or Ollama-style (`response`) answer.
fn completion_of(answer: &Value) -> Option<&str> {
    let choice = answer.get("choices").and_then(|c| c.get(0));
    choice
        .and_then(|c| c.get("text"))
        .or_else(|| choice.and_then(|c| c.pointer("/message/content")))
        .or_else(|| answer.get("response"))
        .and_then(Value::as_str)
}

impl Guest for LlmComplete {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: env!("CARGO_PKG_DESCRIPTION").to_string(),
            deterministic: false,
            input_schema: Some(INPUT_SCHEMA.to_string()),
            output_schema: Some(OUTPUT_SCHEMA.to_string()),
        }
    }

    fn execute(request: StepRequest) -> Result<Json, StepError> {
        let config: Value = serde_json::from_str(&request.config)
            .map_err(|e| invalid(format!("llm-complete: config is not JSON ({e})")))?;
        let input: Value = serde_json::from_str(&request.input)
            .map_err(|e| invalid(format!("llm-complete: input is not JSON ({e})")))?;
        let url = config.get("url").and_then(Value::as_str).ok_or_else(|| {
            invalid("llm-complete: config needs \"url\", the completions endpoint")
        })?;
        let prompt = input
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("llm-complete: input needs a string \"prompt\""))?;
        let model = config
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let max_tokens = config
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(256);
        let body =
            json!({ "model": model, "prompt": prompt, "max_tokens": max_tokens }).to_string();
        let key = std::env::var("LLM_API_KEY").ok();
        let bearer = key.map(|k| format!("Bearer {k}"));
        let mut headers = vec![
            ("content-type", "application/json"),
            ("idempotency-key", request.idempotency_key.as_str()),
        ];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer.as_str()));
        }
        log(
            LogLevel::Debug,
            &format!("llm-complete: POST {url}, model {model}"),
        );
        let response = httpkit::request("POST", url, &headers, Some(body.as_bytes()))
            .map_err(|e| StepError::Retryable(format!("llm-complete: POST {url}: {e}")))?;
        let text = String::from_utf8_lossy(&response.body);
        match response.status {
            200..=299 => {}
            429 | 500..=599 => {
                return Err(StepError::Retryable(format!(
                    "llm-complete: the server answered {}",
                    response.status
                )));
            }
            status => {
                return Err(StepError::Failed(format!(
                    "llm-complete: the server answered {status}: {}",
                    text.chars().take(200).collect::<String>()
                )));
            }
        }
        let answer: Value = serde_json::from_str(&text).map_err(|e| {
            StepError::Failed(format!("llm-complete: the answer is not JSON ({e})"))
        })?;
        let completion = completion_of(&answer).ok_or_else(|| {
            StepError::Failed("llm-complete: the answer has no completion text".into())
        })?;
        Ok(json!({ "completion": completion, "model": model }).to_string())
    }
}

bindings::export!(LlmComplete with_types_in bindings);
