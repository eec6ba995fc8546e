//! The result cache in Redis: `impl ResultCache for RedisStore`. Entries are
//! strings with a TTL; the sets of the keys each plugin computed and each
//! flow stored serve invalidation by plugin or by flow. A key's lead (the
//! host computing it for the others) is a string with a TTL beside it. An
//! entry longer than the configured size is stored compressed (`codec::pack`).

use std::time::Duration;

use async_trait::async_trait;
use flowhost_core::cache::{CacheError, CachedResult, Invalidate, ResultCache};

use crate::codec::{cache_unavailable, pack, unpack};
use crate::store::RedisStore;

impl RedisStore {
    /// Deletes the entries named in an index set, then the set; returns how
    /// many entries existed.
    async fn invalidate_set(&self, set: &str) -> Result<u64, CacheError> {
        let keys: Vec<String> = redis::cmd("SMEMBERS")
            .arg(set)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(cache_unavailable)?;
        if keys.is_empty() {
            // Nothing indexed: an empty pipeline would be sent as an empty
            // command, which Redis refuses.
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for key in &keys {
            // One DEL per entry: on a cluster the entries live on many slots.
            pipe.del(self.keys.result(key));
        }
        let removed: Vec<u64> = self.conn.query(&pipe).await.map_err(cache_unavailable)?;
        let _: u64 = redis::cmd("DEL")
            .arg(set)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(cache_unavailable)?;
        Ok(removed.iter().sum())
    }
}

#[async_trait]
impl ResultCache for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, CacheError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.result(key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(cache_unavailable)?;
        let corrupt = |reason: String| CacheError::Corrupt {
            key: key.to_owned(),
            reason,
        };
        raw.map(|r| {
            let text = unpack(&r).map_err(corrupt)?;
            serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))
        })
        .transpose()
    }

    async fn put(&self, entry: &CachedResult, ttl: Duration) -> Result<(), CacheError> {
        let json = serde_json::to_string(entry).map_err(|e| CacheError::Corrupt {
            key: entry.key.clone(),
            reason: e.to_string(),
        })?;
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.result(&entry.key))
            .arg(pack(json, self.compress_min))
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        let mut sets = vec![self.keys.results_of_flow(&entry.flow)];
        if !entry.plugin.is_empty() {
            sets.push(self.keys.results_of_plugin(&entry.plugin));
        }
        for set in sets {
            pipe.sadd(&set, &entry.key).ignore();
            // NX gives a new set its TTL; GT lengthens it for a longer-lived entry.
            pipe.cmd("PEXPIRE").arg(&set).arg(ttl_ms).arg("NX").ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ttl_ms).arg("GT").ignore();
        }
        // Not a transaction: on one server one round trip, on a Cluster (the
        // sets live in other slots) command by command.
        self.conn.exec(&pipe).await.map_err(cache_unavailable)
    }

    async fn invalidate(&self, what: &Invalidate) -> Result<u64, CacheError> {
        match what {
            Invalidate::Key(key) => redis::cmd("DEL")
                .arg(self.keys.result(key))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(cache_unavailable),
            Invalidate::Plugin(p) => self.invalidate_set(&self.keys.results_of_plugin(p)).await,
            Invalidate::Flow(f) => self.invalidate_set(&self.keys.results_of_flow(f)).await,
        }
    }

    /// `SET NX` of the lead key with this host's name and a TTL; the value
    /// it held instead, if any, says whether this host led already.
    async fn lead(&self, key: &str, ttl: Duration) -> Result<bool, CacheError> {
        let holder = self
            .conn
            .set_nx_get(self.keys.result_lead(key), &self.owner, ttl)
            .await
            .map_err(cache_unavailable)?;
        Ok(holder.is_none_or(|h| h == self.owner))
    }

    async fn end_lead(&self, key: &str) -> Result<(), CacheError> {
        let _: i64 = crate::scripts::DELETE_IF
            .key(self.keys.result_lead(key))
            .arg(&self.owner)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(cache_unavailable)?;
        Ok(())
    }
}
