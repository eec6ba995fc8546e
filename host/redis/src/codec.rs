//! How flows live in Redis hashes: header fields and steps (as JSON) encoded
//! for a write, headers and summaries decoded from a read, the parse helpers
//! they share, and the mapping of Redis errors to the ports' errors.
//! State values (inputs, outputs, metadata, steps, cache entries) longer than
//! the configured size are stored zstd-compressed (`pack`); a compressed value
//! starts with zstd's magic bytes, which no JSON text (no UTF-8 text) starts
//! with, so `unpack` tells the two apart without a flag. Header fields a
//! script or a listing reads (status, fence, names, times) stay plain text.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use flowhost_core::cache::CacheError;
use flowhost_core::state::{FlowId, FlowPatch, FlowState, FlowStepState, FlowSummary, StoreError};
use redis::RedisError;
use serde_json::{Map, Value};

pub(crate) fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

pub(crate) fn cache_unavailable(e: RedisError) -> CacheError {
    CacheError::Unavailable(Box::new(e))
}

fn corrupt(id: FlowId, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        flow_id: id.to_string(),
        reason: reason.into(),
    }
}

/// A flow id read from Redis (an index member, an idempotency key's value);
/// `reason` says what was wrong when it is none.
pub(crate) fn parse_flow_id(raw: &str, reason: &str) -> Result<FlowId, StoreError> {
    raw.parse().map_err(|_| StoreError::Corrupt {
        flow_id: raw.to_owned(),
        reason: reason.into(),
    })
}

/// The first bytes of every zstd frame.
pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// The zstd level: fast, and most of the gain on JSON.
const LEVEL: i32 = 3;

/// A state value as stored: zstd-compressed when it is longer than `min`
/// bytes (`min` 0: never) and compression makes it shorter, else as is.
pub(crate) fn pack(text: String, min: usize) -> Vec<u8> {
    if min == 0 || text.len() <= min {
        return text.into_bytes();
    }
    match zstd::bulk::compress(text.as_bytes(), LEVEL) {
        Ok(packed) if packed.len() < text.len() => packed,
        // Incompressible (or, in theory, refused): plain is always readable.
        _ => text.into_bytes(),
    }
}

/// A stored state value's text bytes, decompressed when it was packed.
pub(crate) fn unpack(raw: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if !raw.starts_with(&ZSTD_MAGIC) {
        return Ok(Cow::Borrowed(raw));
    }
    zstd::stream::decode_all(raw)
        .map(Cow::Owned)
        .map_err(|e| format!("compressed value cannot be read: {e}"))
}

/// A hash as read from Redis: field names are text, values may be packed.
pub(crate) type Fields = BTreeMap<String, Vec<u8>>;

pub(crate) fn encode_step(step: &FlowStepState, min: usize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_string(step)
        .map(|json| pack(json, min))
        .map_err(|e| StoreError::Corrupt {
            flow_id: String::new(),
            reason: format!("step {} cannot be encoded: {e}", step.step_name),
        })
}

/// The header fields a patch writes, as (field, value) pairs; the JSON ones
/// packed past `min` bytes.
pub(crate) fn patch_fields(patch: &FlowPatch, min: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut plain = |field, value: String| fields.push((field, value.into_bytes()));
    if let Some(status) = patch.status {
        plain("status", status.to_string());
    }
    if let Some(step) = &patch.current_step {
        plain("current_step", step.clone());
    }
    if let Some(at) = patch.completed_at {
        plain("completed_at", at.to_rfc3339());
    }
    if let Some(t) = patch.total_execution_time {
        plain("total_execution_time", t.to_string());
    }
    if let Some(error) = &patch.error {
        plain("error", error.clone());
    }
    if let Some(outputs) = &patch.outputs {
        fields.push(("outputs", pack(outputs.to_string(), min)));
    }
    if let Some(metadata) = &patch.metadata {
        let json = Value::Object(metadata.clone()).to_string();
        fields.push(("metadata", pack(json, min)));
    }
    fields
}

/// A new flow's whole header, as (field, value) pairs.
pub(crate) fn header_fields(flow: &FlowState, min: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut header = vec![
        ("flow_id", flow.flow_id.to_string().into_bytes()),
        ("flow_name", flow.flow_name.clone().into_bytes()),
        ("inputs", pack(flow.inputs.to_string(), min)),
        ("started_at", flow.started_at.to_rfc3339().into_bytes()),
    ];
    header.extend(patch_fields(
        &FlowPatch {
            status: Some(flow.status),
            current_step: flow.current_step.clone(),
            completed_at: flow.completed_at,
            total_execution_time: flow.total_execution_time,
            outputs: flow.outputs.clone(),
            error: flow.error.clone(),
            metadata: Some(flow.metadata.clone()),
            clear_result: false,
        },
        min,
    ));
    header
}

fn parse_time(id: FlowId, field: &str, s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(id, format!("{field}: {e}")))
}

/// A JSON state value, packed or not.
fn parse_json<T: serde::de::DeserializeOwned>(
    id: FlowId,
    field: &str,
    raw: &[u8],
) -> Result<T, StoreError> {
    let text = unpack(raw).map_err(|e| corrupt(id, format!("{field}: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| corrupt(id, format!("{field}: {e}")))
}

/// A plain text header field.
fn text(id: FlowId, field: &str, raw: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(raw).map_err(|e| corrupt(id, format!("{field}: {e}")))
}

fn parse_f64(id: FlowId, field: &str, s: &str) -> Result<f64, StoreError> {
    s.parse().map_err(|e| corrupt(id, format!("{field}: {e}")))
}

/// A flow from its header hash and its steps hash.
pub(crate) fn decode_flow(
    id: FlowId,
    mut h: Fields,
    steps: Fields,
) -> Result<FlowState, StoreError> {
    let mut take_raw = |f: &str| h.remove(f);
    let inputs = match take_raw("inputs") {
        Some(raw) => parse_json(id, "inputs", &raw)?,
        None => Value::Object(Map::new()),
    };
    let metadata = match take_raw("metadata") {
        Some(raw) => match parse_json(id, "metadata", &raw)? {
            Value::Object(m) => m,
            _ => return Err(corrupt(id, "metadata is not an object")),
        },
        None => Map::new(),
    };
    let outputs = take_raw("outputs")
        .map(|raw| parse_json(id, "outputs", &raw))
        .transpose()?;
    let mut take = |f: &str| h.remove(f).map(|raw| text(id, f, raw)).transpose();
    let flow_name = take("flow_name")?.ok_or_else(|| corrupt(id, "no flow_name"))?;
    let status = take("status")?
        .ok_or_else(|| corrupt(id, "no status"))?
        .parse()
        .map_err(|e: String| corrupt(id, e))?;
    let started_at = parse_time(
        id,
        "started_at",
        &take("started_at")?.ok_or_else(|| corrupt(id, "no started_at"))?,
    )?;
    let steps = steps
        .into_iter()
        .map(|(name, raw)| {
            parse_json::<FlowStepState>(id, &format!("step {name}"), &raw).map(|s| (name, s))
        })
        .collect::<Result<_, _>>()?;
    Ok(FlowState {
        flow_id: id,
        flow_name,
        status,
        inputs,
        steps,
        current_step: take("current_step")?,
        started_at,
        completed_at: take("completed_at")?
            .map(|s| parse_time(id, "completed_at", &s))
            .transpose()?,
        total_execution_time: take("total_execution_time")?
            .map(|s| parse_f64(id, "total_execution_time", &s))
            .transpose()?,
        metadata,
        outputs,
        error: take("error")?,
    })
}

/// A summary from the `SUMMARY_FIELDS` of a header; `None` when the header
/// is gone (expired or deleted).
pub(crate) fn decode_summary(
    id: FlowId,
    row: Vec<Option<String>>,
) -> Result<Option<FlowSummary>, StoreError> {
    let mut it = row.into_iter();
    let mut next = || it.next().flatten();
    let (Some(flow_name), Some(status), current_step, Some(started_at), completed_at, total) =
        (next(), next(), next(), next(), next(), next())
    else {
        return Ok(None);
    };
    Ok(Some(FlowSummary {
        flow_id: id,
        flow_name,
        status: status.parse().map_err(|e: String| corrupt(id, e))?,
        current_step,
        started_at: parse_time(id, "started_at", &started_at)?,
        completed_at: completed_at
            .map(|s| parse_time(id, "completed_at", &s))
            .transpose()?,
        total_execution_time: total
            .map(|s| parse_f64(id, "total_execution_time", &s))
            .transpose()?,
    }))
}

#[cfg(test)]
mod tests {
    use flowhost_core::state::StepStatus;
    use serde_json::json;

    use super::*;

    fn flow_with(inputs: Value, step_output: Value) -> FlowState {
        let mut step = FlowStepState::pending("s1".to_owned());
        step.status = StepStatus::Completed;
        step.outputs = Some(step_output.clone());
        FlowState {
            flow_id: FlowId::new(),
            flow_name: "f".into(),
            status: flowhost_core::state::FlowStatus::Completed,
            inputs,
            steps: [("s1".to_owned(), step)].into(),
            current_step: None,
            started_at: Utc::now(),
            completed_at: Some(Utc::now()),
            total_execution_time: Some(1.5),
            metadata: Map::new(),
            outputs: Some(step_output),
            error: None,
        }
    }

    /// A flow written and read back through the encoders, as Redis would
    /// hand the hashes back.
    fn round_trip(flow: &FlowState, min: usize) -> (Fields, FlowState) {
        let header: Fields = header_fields(flow, min)
            .into_iter()
            .map(|(f, v)| (f.to_owned(), v))
            .collect();
        let steps: Fields = flow
            .steps
            .values()
            .map(|s| (s.step_name.clone(), encode_step(s, min).unwrap()))
            .collect();
        let back = decode_flow(flow.flow_id, header.clone(), steps).unwrap();
        (header, back)
    }

    #[test]
    fn small_values_stay_plain_and_large_ones_are_compressed_and_read_back() {
        let small = flow_with(json!({"text": "short"}), json!({"n": 1}));
        let (header, back) = round_trip(&small, 4096);
        assert_eq!(header["inputs"], br#"{"text":"short"}"#);
        assert_eq!(back, small);

        let long_text = "the same words again and again ".repeat(1000);
        let large = flow_with(json!({"text": long_text}), json!({"echo": long_text}));
        let (header, back) = round_trip(&large, 4096);
        for field in ["inputs", "outputs"] {
            assert!(
                header[field].starts_with(&ZSTD_MAGIC),
                "{field} not compressed"
            );
            assert!(
                header[field].len() < long_text.len() / 10,
                "{field} barely compressed"
            );
        }
        // Fields a script or a listing reads stay text.
        assert_eq!(header["status"], b"completed");
        assert_eq!(back, large);

        // 0: never compressed, and read back the same.
        let (header, back) = round_trip(&large, 0);
        assert!(header["inputs"].starts_with(b"{"));
        assert_eq!(back, large);
    }

    #[test]
    fn the_threshold_is_exclusive_and_a_broken_frame_is_an_error() {
        let at = "a".repeat(100);
        assert_eq!(pack(at.clone(), 100), at.as_bytes());
        let over = "a".repeat(101);
        let packed = pack(over.clone(), 100);
        assert!(packed.starts_with(&ZSTD_MAGIC));
        assert_eq!(unpack(&packed).unwrap().as_ref(), over.as_bytes());
        assert!(unpack(&packed[..packed.len() - 2]).is_err());
    }
}
