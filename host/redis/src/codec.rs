//! How flows live in Redis hashes: header fields and steps (as JSON) encoded
//! for a write, headers and summaries decoded from a read, the parse helpers
//! they share, and the mapping of Redis errors to the ports' errors.

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

pub(crate) fn encode_step(step: &FlowStepState) -> Result<String, StoreError> {
    serde_json::to_string(step).map_err(|e| StoreError::Corrupt {
        flow_id: String::new(),
        reason: format!("step {} cannot be encoded: {e}", step.step_name),
    })
}

/// The header fields a patch writes, as (field, value) pairs.
pub(crate) fn patch_fields(patch: &FlowPatch) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    if let Some(status) = patch.status {
        fields.push(("status", status.to_string()));
    }
    if let Some(step) = &patch.current_step {
        fields.push(("current_step", step.clone()));
    }
    if let Some(at) = patch.completed_at {
        fields.push(("completed_at", at.to_rfc3339()));
    }
    if let Some(t) = patch.total_execution_time {
        fields.push(("total_execution_time", t.to_string()));
    }
    if let Some(outputs) = &patch.outputs {
        fields.push(("outputs", outputs.to_string()));
    }
    if let Some(error) = &patch.error {
        fields.push(("error", error.clone()));
    }
    if let Some(metadata) = &patch.metadata {
        fields.push(("metadata", Value::Object(metadata.clone()).to_string()));
    }
    fields
}

/// A new flow's whole header, as (field, value) pairs.
pub(crate) fn header_fields(flow: &FlowState) -> Vec<(&'static str, String)> {
    let mut header = vec![
        ("flow_id", flow.flow_id.to_string()),
        ("flow_name", flow.flow_name.clone()),
        ("inputs", flow.inputs.to_string()),
        ("started_at", flow.started_at.to_rfc3339()),
    ];
    header.extend(patch_fields(&FlowPatch {
        status: Some(flow.status),
        current_step: flow.current_step.clone(),
        completed_at: flow.completed_at,
        total_execution_time: flow.total_execution_time,
        outputs: flow.outputs.clone(),
        error: flow.error.clone(),
        metadata: Some(flow.metadata.clone()),
        clear_result: false,
    }));
    header
}

fn parse_time(id: FlowId, field: &str, s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(id, format!("{field}: {e}")))
}

fn parse_json(id: FlowId, field: &str, s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(id, format!("{field}: {e}")))
}

fn parse_f64(id: FlowId, field: &str, s: &str) -> Result<f64, StoreError> {
    s.parse().map_err(|e| corrupt(id, format!("{field}: {e}")))
}

/// A flow from its header hash and its steps hash.
pub(crate) fn decode_flow(
    id: FlowId,
    mut h: BTreeMap<String, String>,
    steps: BTreeMap<String, String>,
) -> Result<FlowState, StoreError> {
    let mut take = |f: &str| h.remove(f);
    let flow_name = take("flow_name").ok_or_else(|| corrupt(id, "no flow_name"))?;
    let status = take("status")
        .ok_or_else(|| corrupt(id, "no status"))?
        .parse()
        .map_err(|e: String| corrupt(id, e))?;
    let started_at = parse_time(
        id,
        "started_at",
        &take("started_at").ok_or_else(|| corrupt(id, "no started_at"))?,
    )?;
    let inputs = match take("inputs") {
        Some(s) => parse_json(id, "inputs", &s)?,
        None => Value::Object(Map::new()),
    };
    let metadata = match take("metadata") {
        Some(s) => match parse_json(id, "metadata", &s)? {
            Value::Object(m) => m,
            _ => return Err(corrupt(id, "metadata is not an object")),
        },
        None => Map::new(),
    };
    let steps = steps
        .into_iter()
        .map(|(name, raw)| {
            serde_json::from_str::<FlowStepState>(&raw)
                .map(|s| (name.clone(), s))
                .map_err(|e| corrupt(id, format!("step {name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(FlowState {
        flow_id: id,
        flow_name,
        status,
        inputs,
        steps,
        current_step: take("current_step"),
        started_at,
        completed_at: take("completed_at")
            .map(|s| parse_time(id, "completed_at", &s))
            .transpose()?,
        total_execution_time: take("total_execution_time")
            .map(|s| parse_f64(id, "total_execution_time", &s))
            .transpose()?,
        metadata,
        outputs: take("outputs")
            .map(|s| parse_json(id, "outputs", &s))
            .transpose()?,
        error: take("error"),
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
