//! Large values and blob references in a run. What the store and the cache
//! keep is small: a flow input, step input or output whose JSON is longer
//! than `inline_max_bytes` is stored as a blob (its canonical JSON, so the
//! same value is the same blob) and replaced by an offloaded reference;
//! plugins and templates see the values, put back by `expand`. Every
//! reference a run records is held for the run first (and a cache entry's
//! for the entry's life), so retention never removes a blob a stored run or
//! a live entry refers to.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value};

use super::FlowRunner;
use crate::blob::retention::{cache_holder, flow_holder};
use crate::blob::{self, BlobError, BlobId, BlobRef, Hold};
use crate::cache::{CachedResult, canonical_json};
use crate::observe::Event;
use crate::state::FlowId;

/// The media type of an offloaded value.
const JSON: &str = "application/json";

impl FlowRunner {
    /// `value` as a run records it: its large parts offloaded, and every
    /// reference in it held for `flow`. A blob store that fails leaves the
    /// value whole (logged): the run goes on, with a larger state.
    pub(super) async fn keep(&self, flow: FlowId, value: Value) -> Value {
        let value = match self.offload(value.clone()).await {
            Ok(small) => small,
            Err(e) => {
                tracing::warn!(flow_id = %flow, error = %e, "cannot move a large value to the blob store; kept in the state");
                value
            }
        };
        self.hold_refs(&value, &flow_holder(flow), None).await;
        value
    }

    /// Replaces the largest members of `value` by offloaded references
    /// until its JSON fits `inline_max_bytes` (a value that is not an
    /// object, or a member that alone is too large, goes whole).
    async fn offload(&self, value: Value) -> Result<Value, BlobError> {
        let max = self.inner.config.inline_max_bytes;
        let total = json_len(&value);
        if total <= max {
            return Ok(value);
        }
        let Value::Object(mut members) = value else {
            return self.offload_whole(&value).await;
        };
        let mut sizes: Vec<(String, usize)> = members
            .iter()
            .filter(|(_, v)| BlobRef::parse(v).is_none())
            .map(|(k, v)| (k.clone(), json_len(v)))
            .collect();
        sizes.sort_by_key(|s| std::cmp::Reverse(s.1));
        let mut total = total;
        for (name, size) in sizes {
            if total <= max {
                break;
            }
            let member = members.remove(&name).unwrap_or(Value::Null);
            let reference = self.offload_whole(&member).await?;
            total = total + json_len(&reference) - size;
            members.insert(name, reference);
        }
        Ok(Value::Object(members))
    }

    async fn offload_whole(&self, value: &Value) -> Result<Value, BlobError> {
        let bytes = canonical_json(value).into_bytes();
        let mut r = blob::put(&*self.inner.blobs, JSON, &bytes).await?;
        r.offloaded = true;
        self.observe(Event::ValueOffloaded { bytes: bytes.len() });
        Ok(r.to_json())
    }

    /// `value` with every offloaded reference replaced by its value.
    pub(super) async fn expand(&self, value: &Value) -> Result<Value, BlobError> {
        if !has_offloaded(value) {
            return Ok(value.clone());
        }
        if let Some(Ok(r)) = BlobRef::parse(value) {
            let bytes = blob::get(&*self.inner.blobs, &r.id).await?;
            return serde_json::from_slice(&bytes).map_err(|e| BlobError::Corrupt {
                id: r.id.clone(),
                reason: format!("an offloaded value that is not JSON: {e}"),
            });
        }
        match value {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(Box::pin(self.expand(item)).await?);
                }
                Ok(Value::Array(out))
            }
            Value::Object(members) => {
                let mut out = Map::new();
                for (k, v) in members {
                    out.insert(k.clone(), Box::pin(self.expand(v)).await?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    /// The first blob `input` refers to that the store does not have, as
    /// the reason a step cannot run.
    pub(super) async fn missing_blob(&self, input: &Value) -> Option<String> {
        for r in blob::refs_in(input) {
            match self.inner.blobs.stat(&r.id).await {
                Ok(Some(_)) => {}
                Ok(None) => return Some(format!("no blob {} (referred to by the input)", r.id)),
                // Unreachable now: the plugin's own read reports it.
                Err(_) => {}
            }
        }
        None
    }

    /// References a caller wrote without size or media type, filled in from
    /// the store (left as written when the blob is missing: the step that
    /// reads it fails, naming it).
    pub(super) async fn complete_refs(&self, value: &mut Value) {
        if let Some(Ok(r)) = BlobRef::parse(value) {
            if r.size == 0
                && r.media_type.is_empty()
                && let Ok(Some(stat)) = self.inner.blobs.stat(&r.id).await
            {
                *value = BlobRef::new(r.id, stat.size, stat.media_type).to_json();
            }
            return;
        }
        match value {
            Value::Array(items) => {
                for item in items {
                    Box::pin(self.complete_refs(item)).await;
                }
            }
            Value::Object(members) => {
                for v in members.values_mut() {
                    Box::pin(self.complete_refs(v)).await;
                }
            }
            _ => {}
        }
    }

    /// Holds every blob `value` refers to for `holder` (a missing blob is
    /// skipped: whoever reads it reports it).
    pub(super) async fn hold_refs(
        &self,
        value: &Value,
        holder: &str,
        until: Option<chrono::DateTime<Utc>>,
    ) {
        let hold = Hold {
            holder: holder.to_owned(),
            until,
        };
        let mut seen: Vec<BlobId> = Vec::new();
        for r in blob::refs_in(value) {
            if seen.contains(&r.id) {
                continue;
            }
            match self.inner.blobs.hold(&r.id, &hold).await {
                Ok(()) | Err(BlobError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(blob = %r.id, holder, error = %e, "cannot record a hold on a blob; the grace period covers it")
                }
            }
            seen.push(r.id);
        }
    }

    /// Puts an entry in the result cache, its blobs held for its life first.
    pub(super) async fn put_cached(
        &self,
        entry: &CachedResult,
        ttl: Duration,
    ) -> Result<(), crate::cache::CacheError> {
        let until = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        self.hold_refs(&entry.output, &cache_holder(&entry.key), Some(until))
            .await;
        self.inner.cache.put(entry, ttl).await
    }
}

/// The length of `v`'s JSON text.
fn json_len(v: &Value) -> usize {
    serde_json::to_string(v).map_or(0, |s| s.len())
}

fn has_offloaded(v: &Value) -> bool {
    match BlobRef::parse(v) {
        Some(r) => r.is_ok_and(|r| r.offloaded),
        None => match v {
            Value::Array(items) => items.iter().any(has_offloaded),
            Value::Object(m) => m.values().any(has_offloaded),
            _ => false,
        },
    }
}
