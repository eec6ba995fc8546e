//! The content-addressed result cache: the `ResultCache` port and its entry
//! type, what goes into a key (`key`), and single-flight within one host
//! (across hosts, the port's leads). Adapters: the memory store, and the
//! Redis crate (which alone knows Redis key names).

mod key;
mod single_flight;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use key::{canonical_json, flow_key, step_key};
pub use single_flight::{Flight, Leader, SingleFlight, wait};

/// One cached result: a step's output, or a whole flow's outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedResult {
    /// The hex blake3 key.
    pub key: String,
    /// The plugin that computed it; empty for a whole-flow result.
    pub plugin: String,
    /// The flow whose run stored it.
    pub flow: String,
    /// The step that stored it; empty for a whole-flow result.
    pub step: String,
    pub output: Value,
    pub stored_at: DateTime<Utc>,
}

/// Which entries to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidate {
    Key(String),
    /// Every entry computed by the plugin of this name.
    Plugin(String),
    /// Every entry stored by runs of this flow, whole-flow results included.
    Flow(String),
}

impl Invalidate {
    pub fn label(&self) -> &'static str {
        match self {
            Invalidate::Key(_) => "key",
            Invalidate::Plugin(_) => "plugin",
            Invalidate::Flow(_) => "flow",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cache entry {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Where results are kept, each with a time to live enforced by the store
/// itself (Redis `PX`, or expiry times in memory).
#[async_trait]
pub trait ResultCache: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, CacheError>;
    async fn put(&self, entry: &CachedResult, ttl: Duration) -> Result<(), CacheError>;
    /// Removes entries; returns how many existed.
    async fn invalidate(&self, what: &Invalidate) -> Result<u64, CacheError>;
    /// Takes the lead on computing `key` among the hosts sharing this cache,
    /// for at most `ttl` (so that a host that dies never blocks the others
    /// longer): true when this host leads now, or led already; false while
    /// another host does. A cache that serves one host leads always (its
    /// steps wait for one another within the host).
    async fn lead(&self, key: &str, ttl: Duration) -> Result<bool, CacheError> {
        let _ = (key, ttl);
        Ok(true)
    }
    /// Gives up this host's lead on `key`, if it holds it.
    async fn end_lead(&self, key: &str) -> Result<(), CacheError> {
        let _ = key;
        Ok(())
    }
}
