//! The submission stream and its consumer group: the `WorkQueue` that hosts
//! sharing this Redis read from (take, reclaim from a host gone quiet, done),
//! its backlog, and the orphaned flows left by a host that is gone.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use flowhost_core::queue::{Delivery, WorkQueue};
use flowhost_core::state::{FlowId, FlowStatus, StoreError};
use redis::RedisError;

use crate::codec::unavailable;
use crate::keys::GROUP;
use crate::store::RedisStore;

impl RedisStore {
    /// Creates the consumer group (and the stream) unless it exists.
    pub(crate) async fn ensure_group(&self) -> Result<(), StoreError> {
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.queue())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(unavailable),
        }
    }

    /// Submits a run of a flow (on a Cluster; on one server the creating
    /// script does).
    pub(crate) async fn enqueue(&self, id: FlowId) -> Result<(), StoreError> {
        let _: String = redis::cmd("XADD")
            .arg(self.keys.queue())
            .arg("*")
            .arg("flow")
            .arg(id.to_string())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl WorkQueue for RedisStore {
    fn shared(&self) -> bool {
        true
    }

    /// Runs submitted and not yet finished: waiting, or running somewhere.
    async fn backlog(&self) -> Result<u64, StoreError> {
        redis::cmd("XLEN")
            .arg(self.keys.queue())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    /// Up to `max` submissions no host has been given yet, given to this one.
    async fn take(&self, max: usize) -> Result<Vec<Delivery>, StoreError> {
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.owner)
            .arg("COUNT")
            .arg(max.max(1))
            .arg("STREAMS")
            .arg(self.keys.queue())
            .arg(">")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        // [[stream, [[entry, [field, value, ...]], ...]]], or nil.
        let entries = match reply {
            redis::Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    redis::Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(entries.into_iter().flat_map(parse_entries).collect())
    }

    /// Submissions given to some host that has not finished them for
    /// `min_idle` (it died, or it is slow), given to this host instead.
    async fn reclaim_deliveries(
        &self,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let reply: redis::Value = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.queue())
            .arg(GROUP)
            .arg(&self.owner)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max.max(1))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        // [cursor, [[entry, [field, value]], ...], [deleted ids]]
        Ok(match reply {
            redis::Value::Array(mut parts) if parts.len() >= 2 => {
                parse_entries(parts.swap_remove(1))
            }
            _ => Vec::new(),
        })
    }

    /// Takes a finished (or refused) submission off the stream.
    async fn done(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(self.keys.queue())
            .arg(GROUP)
            .arg(&delivery.entry)
            .ignore();
        pipe.cmd("XDEL")
            .arg(self.keys.queue())
            .arg(&delivery.entry)
            .ignore();
        pipe.exec_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    /// Flows left running or paused for longer than `idle` whose lease is
    /// gone (their host died or shut down) or is held in this host's name
    /// (by an earlier run of this host, or by this one: the caller skips the
    /// flows it runs). At most `max`.
    async fn orphans(&self, idle: Duration, max: usize) -> Result<Vec<FlowId>, StoreError> {
        let cutoff = Utc::now().timestamp_millis() - idle.as_millis() as i64;
        let mut candidates = Vec::new();
        for status in [FlowStatus::Running, FlowStatus::Paused] {
            let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.by_status(status))
                .arg("-inf")
                .arg(cutoff)
                .arg("LIMIT")
                .arg(0)
                .arg(max)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            candidates.extend(ids.iter().filter_map(|raw| raw.parse::<FlowId>().ok()));
        }
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let mut pipe = redis::pipe();
        for id in &candidates {
            pipe.get(self.keys.lease(*id));
        }
        let leases: Vec<Option<String>> = self.conn.query(&pipe).await.map_err(unavailable)?;
        let mine = format!("{} ", self.owner);
        Ok(candidates
            .into_iter()
            .zip(leases)
            .filter(|(_, lease)| lease.as_ref().is_none_or(|l| l.starts_with(&mine)))
            .map(|(id, _)| id)
            .take(max)
            .collect())
    }
}

/// Stream entries (`[[entry, [field, value, ...]], ...]`) as deliveries; an
/// entry without a flow id is skipped.
fn parse_entries(entries: redis::Value) -> Vec<Delivery> {
    let redis::Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let redis::Value::Array(parts) = entry else {
                return None;
            };
            let entry: String = redis::from_redis_value(parts.first()?.clone()).ok()?;
            let fields: Vec<String> = redis::from_redis_value(parts.get(1)?.clone()).ok()?;
            let flow = fields
                .chunks(2)
                .find(|kv| kv[0] == "flow")
                .and_then(|kv| kv.get(1))?;
            Some(Delivery {
                entry,
                flow_id: flow.parse().ok()?,
            })
        })
        .collect()
}
