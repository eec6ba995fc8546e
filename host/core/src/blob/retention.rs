//! The retention sweep: removes the blobs that nothing holds any more.
//!
//! It is mark-and-sweep over holds recorded on the blobs themselves: a run
//! holds the blobs its inputs and outputs refer to (`flow:ID`, recorded
//! before the state that refers to them), a cache entry until it expires
//! (`cache:KEY`). The sweep drops holds whose holder is gone (an entry
//! expired or invalidated, a run deleted or pruned) and removes a blob left without holds
//! once it is older than the grace period, which covers an upload not yet
//! used by a run and a blob a plugin created for a step not yet recorded.
//! Counting references instead would need every store's deletes and the
//! cache's expiries to report back, and one lost decrement would remove a
//! blob a run still needs; holds checked against the state store and the
//! cache cannot.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{BlobError, BlobId, BlobStore, Hold};
use crate::cache::ResultCache;
use crate::state::{FlowId, StateStore};

/// Where the holders of blobs are looked up: runs, and cache entries.
#[derive(Clone, Copy)]
pub struct Holders<'a> {
    pub flows: &'a dyn StateStore,
    pub cache: &'a dyn ResultCache,
}

/// The holder name of a run.
pub fn flow_holder(id: FlowId) -> String {
    format!("flow:{id}")
}

/// The holder name of a cache entry.
pub fn cache_holder(key: &str) -> String {
    format!("cache:{key}")
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub examined: u64,
    pub removed: u64,
    /// Holds dropped because their holder is gone.
    pub released: u64,
}

/// Whether a hold still counts at `now`. A holder that cannot be looked up
/// (the store away) counts: a blob is never removed on a doubt.
async fn alive(hold: &Hold, holders: Holders<'_>, now: DateTime<Utc>) -> bool {
    if hold.until.is_some_and(|until| until <= now) {
        return false;
    }
    if let Some(key) = hold.holder.strip_prefix("cache:") {
        return !matches!(holders.cache.get(key).await, Ok(None));
    }
    match hold.holder.strip_prefix("flow:").map(str::parse::<FlowId>) {
        Some(Ok(id)) => !matches!(holders.flows.get_flow(id).await, Ok(None)),
        _ => true,
    }
}

/// The holds on `id` that still count, after dropping the others.
pub async fn live_holds(
    blobs: &dyn BlobStore,
    holders: Holders<'_>,
    id: &BlobId,
    now: DateTime<Utc>,
) -> Result<(Vec<Hold>, u64), BlobError> {
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for hold in blobs.holds(id).await? {
        if alive(&hold, holders, now).await {
            live.push(hold);
        } else {
            dead.push(hold.holder);
        }
    }
    if !dead.is_empty() {
        blobs.release(id, &dead).await?;
    }
    Ok((live, dead.len() as u64))
}

/// One pass over every blob: drops dead holds, removes the blobs left
/// without any that were last touched more than `grace` before `now`.
pub async fn sweep(
    blobs: &dyn BlobStore,
    holders: Holders<'_>,
    grace: Duration,
    now: DateTime<Utc>,
) -> Result<Swept, BlobError> {
    let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut swept = Swept::default();
    for id in blobs.list().await? {
        swept.examined += 1;
        let Some(stat) = blobs.stat(&id).await? else {
            continue;
        };
        if stat.touched_at >= cutoff {
            continue;
        }
        let (live, released) = live_holds(blobs, holders, &id, now).await?;
        swept.released += released;
        if live.is_empty() && blobs.remove_unheld(&id, cutoff).await? {
            swept.removed += 1;
        }
    }
    Ok(swept)
}
