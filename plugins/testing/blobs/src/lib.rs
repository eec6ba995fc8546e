//! The `blobs` test plugin: exercises the `blobs` import as its config's
//! `mode` asks. Never put it in a real plugins folder.
//!
//! - `digest`: reads every blob referenced in its input, `len` bytes a call
//!   (default 1 MiB), and returns each one's size, FNV-1a hash, first bytes
//!   and the number of reads it took; and likewise each `{"base64": …}`
//!   object, decoded (the same bytes inlined, for the benchmark that
//!   compares the two).
//! - `reverse`: reads the first referenced blob, creates a blob of its bytes
//!   reversed, reads that back, and returns `{"reversed": <reference>}`.
//! - `guess`: reads the blob `id` (from its config, or a plain string in its
//!   input), which its input does not reference.
//! - `write`: creates a blob of `bytes` bytes (with a writer in 64 KiB pieces
//!   when `chunked`); `ignore_errors` returns the error as output instead.

use serde_json::{Value, json};

mod bindings {
    //! Rust bindings generated from the `executor` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "executor", path: "../../../wit" });
}

use bindings::flowhost::executor::blobs::{self, BlobError, Writer};
use bindings::{Guest, Json, PluginInfo, StepError, StepRequest};

struct Blobs;

fn failed(message: impl Into<String>) -> StepError {
    StepError::Failed(message.into())
}

fn blob_failed(e: BlobError) -> StepError {
    failed(format!("{e:?}"))
}

/// The ids of every `$blob` reference in `v`, depth first.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => match m.get("$blob").and_then(Value::as_str) {
            Some(id) => out.push(id.to_owned()),
            None => m.values().for_each(|v| refs(v, out)),
        },
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// FNV-1a, 64 bits: enough to tell the bytes apart in a test.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// A whole blob, `len` bytes a call, and how many calls it took.
fn read_all(id: &str, len: u32) -> Result<(Vec<u8>, u32), StepError> {
    let size = blobs::stat(id).map_err(blob_failed)?.size;
    let (mut bytes, mut reads) = (Vec::new(), 0);
    while (bytes.len() as u64) < size {
        let piece = blobs::read(id, bytes.len() as u64, len).map_err(blob_failed)?;
        reads += 1;
        if piece.is_empty() {
            return Err(failed(format!(
                "{id} ended at {} of {size} bytes",
                bytes.len()
            )));
        }
        bytes.extend_from_slice(&piece);
    }
    Ok((bytes, reads))
}

fn digest(input: &Value, len: u32) -> Result<Value, StepError> {
    let mut ids = Vec::new();
    refs(input, &mut ids);
    let mut out = Vec::new();
    for id in ids {
        let info = blobs::stat(&id).map_err(blob_failed)?;
        let (bytes, reads) = read_all(&id, len)?;
        out.push(json!({
            "id": info.id,
            "size": bytes.len(),
            "media_type": info.media_type,
            "fnv1a": format!("{:016x}", fnv1a(FNV_OFFSET, &bytes)),
            "first_bytes": bytes.iter().take(8).collect::<Vec<_>>(),
            "reads": reads,
        }));
    }
    let mut inline = Vec::new();
    inlined(input, &mut inline);
    for text in inline {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| StepError::InvalidInput(format!("base64: {e}")))?;
        out.push(json!({
            "size": bytes.len(),
            "fnv1a": format!("{:016x}", fnv1a(FNV_OFFSET, &bytes)),
            "first_bytes": bytes.iter().take(8).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({ "blobs": out }))
}

/// The text of every `{"base64": …}` object in `v`.
fn inlined<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => match m.get("base64").and_then(Value::as_str) {
            Some(text) => out.push(text),
            None => m.values().for_each(|v| inlined(v, out)),
        },
        Value::Array(items) => items.iter().for_each(|v| inlined(v, out)),
        _ => {}
    }
}

fn reverse(input: &Value) -> Result<Value, StepError> {
    let mut ids = Vec::new();
    refs(input, &mut ids);
    let id = ids
        .first()
        .ok_or_else(|| StepError::InvalidInput("no blob in the input".into()))?;
    let media_type = blobs::stat(id).map_err(blob_failed)?.media_type;
    let (mut bytes, _) = read_all(id, 1 << 20)?;
    bytes.reverse();
    let reference = blobs::create(&media_type, &bytes).map_err(blob_failed)?;
    let reference: Value = serde_json::from_str(&reference).map_err(|e| failed(e.to_string()))?;
    let new_id = reference["$blob"]
        .as_str()
        .ok_or_else(|| failed("no $blob in the reference"))?;
    let (back, _) = read_all(new_id, 1 << 20)?;
    if back != bytes {
        return Err(failed("the created blob reads back different bytes"));
    }
    Ok(json!({ "reversed": reference }))
}

fn write(size: usize, chunked: bool) -> Result<String, BlobError> {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    if !chunked {
        return blobs::create("application/octet-stream", &bytes);
    }
    let writer = blobs::begin("application/octet-stream")?;
    for piece in bytes.chunks(64 << 10) {
        writer.write(piece)?;
    }
    Writer::finish(writer)
}

impl Guest for Blobs {
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
        let input: Value = serde_json::from_str(&request.input).unwrap_or(Value::Null);
        let flag = |name: &str| config.get(name).and_then(Value::as_bool).unwrap_or(false);
        let out = match config.get("mode").and_then(Value::as_str).unwrap_or("") {
            "digest" => {
                let len = config.get("len").and_then(Value::as_u64).unwrap_or(1 << 20);
                digest(&input, len as u32)?
            }
            "reverse" => reverse(&input)?,
            "guess" => {
                // A plain string, not a reference: the step is not given it.
                let id = config
                    .get("id")
                    .or_else(|| input.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let bytes = blobs::read(id, 0, 16).map_err(blob_failed)?;
                json!({ "read": bytes.len() })
            }
            "write" => {
                let size = config.get("bytes").and_then(Value::as_u64).unwrap_or(0) as usize;
                match write(size, flag("chunked")) {
                    Ok(reference) => {
                        json!({ "created": serde_json::from_str::<Value>(&reference).unwrap_or(Value::Null) })
                    }
                    Err(e) if flag("ignore_errors") => json!({ "error": format!("{e:?}") }),
                    Err(e) => return Err(blob_failed(e)),
                }
            }
            other => return Err(StepError::InvalidInput(format!("unknown mode {other:?}"))),
        };
        Ok(out.to_string())
    }
}

bindings::export!(Blobs with_types_in bindings);
