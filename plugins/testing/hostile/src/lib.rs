//! The `hostile` test plugin: misbehaves in the way its config's `mode` asks,
//! so that tests can check that the host contains each kind of misbehaviour
//! and reports it with a typed error. Never put it in a real plugins folder.
//!
//! Modes: `loop`, `memory_bomb`, `recursion`, `panic`, `huge_output`,
//! `invalid_json`, `open_file`, `read_env`, `open_socket`, `http` (config
//! `url`: a host that is not on the plugin's allow-list), and `print` (writes
//! to stdout and stderr, then succeeds).

use std::io::{Read, Write};

use serde_json::{Value, json};

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct Hostile;

fn failed(message: impl Into<String>) -> StepError {
    StepError::Failed(message.into())
}

/// Recurses without end; `black_box` keeps the compiler from turning it
/// into a loop.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let next = std::hint::black_box(depth + 1);
    recurse(next).wrapping_add(std::hint::black_box(depth))
}

impl Guest for Hostile {
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
        let config: Value = serde_json::from_str(&request.config).unwrap_or(Value::Null);
        let mode = config.get("mode").and_then(Value::as_str).unwrap_or("");
        match mode {
            "loop" => {
                let mut turns = 0u64;
                loop {
                    turns = std::hint::black_box(turns.wrapping_add(1));
                }
            }
            "memory_bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page so that the memory is really used.
                    hoard.push(vec![0xA5; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => Ok(recurse(0).to_string()),
            "panic" => panic!("hostile: panicked on purpose"),
            "huge_output" => {
                let bytes = config
                    .get("bytes")
                    .and_then(Value::as_u64)
                    .unwrap_or(16 << 20) as usize;
                let mut out = String::with_capacity(bytes + 2);
                out.push('"');
                out.extend(std::iter::repeat_n('x', bytes));
                out.push('"');
                Ok(out)
            }
            "invalid_json" => Ok("{\"unterminated\": ".to_string()),
            "open_file" => {
                let path = config
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("/etc/passwd");
                let mut text = String::new();
                std::fs::File::open(path)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .map_err(|e| failed(format!("hostile: cannot read {path}: {e}")))?;
                Ok(json!({ "stolen": text }).to_string())
            }
            "read_env" => {
                let vars: Vec<(String, String)> = std::env::vars().collect();
                if vars.is_empty() {
                    return Err(failed("hostile: the environment is empty"));
                }
                Ok(json!({ "stolen": vars }).to_string())
            }
            "open_socket" => {
                let addr = config
                    .get("addr")
                    .and_then(Value::as_str)
                    .unwrap_or("127.0.0.1:6379");
                let mut stream = std::net::TcpStream::connect(addr)
                    .map_err(|e| failed(format!("hostile: cannot connect to {addr}: {e}")))?;
                stream
                    .write_all(b"PING\r\n")
                    .map_err(|e| failed(format!("hostile: cannot write to {addr}: {e}")))?;
                Ok(json!({ "connected": addr }).to_string())
            }
            "http" => {
                let url = config
                    .get("url")
                    .and_then(Value::as_str)
                    .unwrap_or("http://example.com/");
                let response = httpkit::request("GET", url, &[], None)
                    .map_err(|e| failed(format!("hostile: GET {url}: {e}")))?;
                Ok(json!({ "status": response.status, "bytes": response.body.len() }).to_string())
            }
            "print" => {
                println!("hostile: hello on stdout, attempt {}", request.attempt);
                eprintln!("hostile: \x1b[31mred\x1b[0m on stderr");
                let lines = config.get("lines").and_then(Value::as_u64).unwrap_or(0);
                for i in 0..lines {
                    println!("hostile: line {i} of a flood");
                }
                Ok(json!({ "printed": true }).to_string())
            }
            other => Err(StepError::InvalidInput(format!(
                "hostile: unknown mode {other:?}"
            ))),
        }
    }
}

bindings::export!(Hostile with_types_in bindings);
