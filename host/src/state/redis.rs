//! Redis `StateStore`: the only module that knows flowhost's Redis key names.
//!
//! Layout, with `P` the configured prefix (default `fh:`); every key of one flow
//! carries the flow id as its hash tag so a Redis Cluster keeps them together:
//! - `P flow:{ID}`        hash, the flow header, one field per header field
//! - `P flow:{ID}:steps`  hash, step name → that step's state as JSON
//! - `P flows:started`    sorted set of flow ids by start time (ms)
//! - `P flows:name:NAME`  sorted set of one definition's runs by start time (ms)
//! - `P flows:status:S`   sorted set of the flows in status S, by the time
//!   they entered it (ms)
//! - `P idem:{KEY}`       string, the flow id an idempotency key names (TTL)
//! - `P cache:{KEY}`      string, one cached result as JSON, with a TTL (PX)
//! - `P cache:plugin:NAME`, `P cache:flow:NAME`  sets of the cache keys each
//!   plugin computed and each flow stored, for invalidation; they expire with
//!   their longest-lived entry
//!
//! One multiplexed connection (`ConnectionManager`) is shared by all requests;
//! each write is one pipeline, so recording a step costs one round trip.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, RedisError};

use serde_json::{Map, Value};

use crate::cache::{CacheError, CachedResult, Invalidate, ResultCache};

use super::{
    FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, FlowSummary, ListFilter, StateStore,
    StoreError,
};

const ALL_STATUSES: [FlowStatus; 6] = [
    FlowStatus::Pending,
    FlowStatus::Running,
    FlowStatus::Completed,
    FlowStatus::Failed,
    FlowStatus::Paused,
    FlowStatus::Cancelled,
];

const SUMMARY_FIELDS: [&str; 6] = [
    "flow_name",
    "status",
    "current_step",
    "started_at",
    "completed_at",
    "total_execution_time",
];

/// Creates a flow in one round trip, unless its header exists: the header,
/// every step, and its lines in the start, name and status indexes.
/// KEYS: header, steps, started, by-name, status, then the other statuses.
/// ARGV: id, start ms, 2 × header fields, header pairs, step pairs.
static CREATE_FLOW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + n))
local chunk = {}
for j = 4 + n, #ARGV do
  chunk[#chunk + 1] = ARGV[j]
  if #chunk == 500 then
    redis.call('HSET', KEYS[2], unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then redis.call('HSET', KEYS[2], unpack(chunk)) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
for k = 6, #KEYS do redis.call('ZREM', KEYS[k], ARGV[1]) end
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
return 1
",
    )
});

#[derive(Clone, Debug)]
pub struct RedisStoreConfig {
    pub url: String,
    /// Prepended to every key; must not contain `{` or `}`.
    pub key_prefix: String,
    /// How long one command may take before it counts as a failure.
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    /// A finished flow's keys expire this long after it finished.
    pub retention: Option<Duration>,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    retention: Option<Duration>,
}

#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn flow(&self, id: FlowId) -> String {
        format!("{}flow:{{{id}}}", self.prefix)
    }
    fn steps(&self, id: FlowId) -> String {
        format!("{}flow:{{{id}}}:steps", self.prefix)
    }
    fn started(&self) -> String {
        format!("{}flows:started", self.prefix)
    }
    fn by_name(&self, name: &str) -> String {
        format!("{}flows:name:{name}", self.prefix)
    }
    fn by_status(&self, status: FlowStatus) -> String {
        format!("{}flows:status:{status}", self.prefix)
    }
    fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{{{key}}}", self.prefix)
    }
    fn result(&self, key: &str) -> String {
        format!("{}cache:{{{key}}}", self.prefix)
    }
    fn results_of_plugin(&self, plugin: &str) -> String {
        format!("{}cache:plugin:{plugin}", self.prefix)
    }
    fn results_of_flow(&self, flow: &str) -> String {
        format!("{}cache:flow:{flow}", self.prefix)
    }
}

impl RedisStore {
    /// Connects once and fails when Redis cannot be reached now; afterwards
    /// the connection manager reconnects by itself.
    pub async fn connect(config: &RedisStoreConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(unavailable)?;
        let store = RedisStore {
            conn,
            keys: Keys {
                prefix: config.key_prefix.clone(),
            },
            retention: config.retention,
        };
        store.ping().await?;
        Ok(store)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Runs a pipeline as one MULTI/EXEC: a header field and its status index
    /// never disagree, and it is still one round trip.
    async fn run(&self, pipe: &Pipeline) -> Result<(), StoreError> {
        pipe.exec_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    fn push_patch(&self, pipe: &mut Pipeline, id: FlowId, patch: &FlowPatch) {
        if patch.clear_result {
            pipe.hdel(
                self.keys.flow(id),
                &["completed_at", "total_execution_time", "outputs", "error"][..],
            )
            .ignore();
        }
        let fields = patch_fields(patch);
        if !fields.is_empty() {
            pipe.hset_multiple(self.keys.flow(id), &fields).ignore();
        }
        if let Some(status) = patch.status {
            self.push_status_index(pipe, id, status, Utc::now().timestamp_millis());
            // A finished flow expires after the retention period; one that
            // runs again (resumed) keeps its keys.
            for key in [self.keys.flow(id), self.keys.steps(id)] {
                match self.retention {
                    Some(keep) if status.is_finished() => {
                        pipe.pexpire(key, keep.as_millis() as i64).ignore();
                    }
                    _ => {
                        pipe.persist(key).ignore();
                    }
                }
            }
        }
    }

    fn push_status_index(&self, pipe: &mut Pipeline, id: FlowId, status: FlowStatus, at_ms: i64) {
        let member = id.to_string();
        for other in ALL_STATUSES.iter().filter(|s| **s != status) {
            pipe.zrem(self.keys.by_status(*other), &member).ignore();
        }
        pipe.zadd(self.keys.by_status(status), &member, at_ms)
            .ignore();
    }
}

fn patch_fields(patch: &FlowPatch) -> Vec<(&'static str, String)> {
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

#[async_trait]
impl StateStore for RedisStore {
    async fn create_flow(&self, flow: &FlowState) -> Result<(), StoreError> {
        let id = flow.flow_id;
        let mut header = vec![
            ("flow_id", id.to_string()),
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
        let mut invocation = CREATE_FLOW.prepare_invoke();
        invocation
            .key(self.keys.flow(id))
            .key(self.keys.steps(id))
            .key(self.keys.started())
            .key(self.keys.by_name(&flow.flow_name))
            .key(self.keys.by_status(flow.status));
        for other in ALL_STATUSES.iter().filter(|s| **s != flow.status) {
            invocation.key(self.keys.by_status(*other));
        }
        invocation
            .arg(id.to_string())
            .arg(flow.started_at.timestamp_millis())
            .arg(header.len() * 2);
        for (field, value) in &header {
            invocation.arg(*field).arg(value);
        }
        for step in flow.steps.values() {
            invocation.arg(&step.step_name).arg(encode_step(step)?);
        }
        let created: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if created == 0 {
            return Err(StoreError::AlreadyExists(id));
        }
        Ok(())
    }

    async fn save_steps(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !steps.is_empty() {
            let fields = steps
                .iter()
                .map(|s| Ok((s.step_name.as_str(), encode_step(s)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            pipe.hset_multiple(self.keys.steps(id), &fields).ignore();
        }
        self.push_patch(&mut pipe, id, patch);
        self.run(&pipe).await
    }

    async fn update_flow(&self, id: FlowId, patch: &FlowPatch) -> Result<(), StoreError> {
        if patch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.push_patch(&mut pipe, id, patch);
        self.run(&pipe).await
    }

    async fn get_flow(&self, id: FlowId) -> Result<Option<FlowState>, StoreError> {
        let (header, steps): (BTreeMap<String, String>, BTreeMap<String, String>) = redis::pipe()
            .hgetall(self.keys.flow(id))
            .hgetall(self.keys.steps(id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if header.is_empty() {
            return Ok(None);
        }
        decode_flow(id, header, steps).map(Some)
    }

    async fn list_flows(&self, filter: &ListFilter) -> Result<Vec<FlowSummary>, StoreError> {
        let index = match (&filter.status, &filter.flow_name) {
            (Some(status), _) => self.keys.by_status(*status),
            (None, Some(name)) => self.keys.by_name(name),
            (None, None) => self.keys.started(),
        };
        // The name and start indexes are scored by start time, so a time
        // range is read from Redis directly; the status index is scored by
        // the time of the change, so there the range is checked per line.
        let by_score = filter.status.is_none();
        let max = filter
            .started_before
            .map_or("+inf".to_owned(), |t| format!("({}", t.timestamp_millis()));
        let min = filter
            .started_after
            .map_or("-inf".to_owned(), |t| t.timestamp_millis().to_string());
        let mut out = Vec::new();
        let mut offset = 0isize;
        let page = filter.limit.clamp(1, 1000) as isize;
        while out.len() < filter.limit {
            let cmd = if by_score {
                let mut c = redis::cmd("ZREVRANGEBYSCORE");
                c.arg(&index)
                    .arg(&max)
                    .arg(&min)
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(page);
                c
            } else {
                let mut c = redis::cmd("ZREVRANGE");
                c.arg(&index).arg(offset).arg(offset + page - 1);
                c
            };
            let ids: Vec<String> = cmd
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            if ids.is_empty() {
                break;
            }
            offset += ids.len() as isize;
            let mut pipe = redis::pipe();
            let mut parsed = Vec::with_capacity(ids.len());
            for raw in &ids {
                let id: FlowId = raw.parse().map_err(|_| StoreError::Corrupt {
                    flow_id: raw.clone(),
                    reason: "index member is not a flow id".into(),
                })?;
                pipe.cmd("HMGET")
                    .arg(self.keys.flow(id))
                    .arg(&SUMMARY_FIELDS[..]);
                parsed.push(id);
            }
            let rows: Vec<Vec<Option<String>>> = pipe
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            for (id, row) in parsed.into_iter().zip(rows) {
                // An index line whose header expired or was deleted is skipped.
                let Some(summary) = decode_summary(id, row)? else {
                    continue;
                };
                if !filter.matches(&summary) {
                    continue;
                }
                out.push(summary);
                if out.len() == filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn delete_flow(&self, id: FlowId) -> Result<bool, StoreError> {
        let name: Option<String> = redis::cmd("HGET")
            .arg(self.keys.flow(id))
            .arg("flow_name")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let Some(name) = name else {
            return Ok(false);
        };
        let member = id.to_string();
        let mut pipe = redis::pipe();
        pipe.del(self.keys.flow(id)).ignore();
        pipe.del(self.keys.steps(id)).ignore();
        pipe.zrem(self.keys.started(), &member).ignore();
        pipe.zrem(self.keys.by_name(&name), &member).ignore();
        for status in ALL_STATUSES {
            pipe.zrem(self.keys.by_status(status), &member).ignore();
        }
        self.run(&pipe).await?;
        Ok(true)
    }

    async fn prune(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut removed = 0;
        for status in [
            FlowStatus::Completed,
            FlowStatus::Failed,
            FlowStatus::Cancelled,
        ] {
            // The status index is scored by when a flow entered the status:
            // for these, when it finished.
            let index = self.keys.by_status(status);
            let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(format!("({}", cutoff.timestamp_millis()))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            for raw in ids {
                let Ok(id) = raw.parse::<FlowId>() else {
                    continue;
                };
                if self.delete_flow(id).await? {
                    removed += 1;
                } else {
                    // Its keys expired already: drop the index lines.
                    let mut pipe = redis::pipe();
                    pipe.zrem(&index, &raw).ignore();
                    pipe.zrem(self.keys.started(), &raw).ignore();
                    self.run(&pipe).await?;
                }
            }
        }
        Ok(removed)
    }

    async fn remember_key(
        &self,
        key: &str,
        id: FlowId,
        ttl: Duration,
    ) -> Result<Option<FlowId>, StoreError> {
        // SET NX GET: one round trip, the earlier value when there is one.
        let earlier: Option<String> = redis::cmd("SET")
            .arg(self.keys.idempotency(key))
            .arg(id.to_string())
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        earlier
            .map(|raw| {
                raw.parse().map_err(|_| StoreError::Corrupt {
                    flow_id: raw.clone(),
                    reason: "idempotency key names no flow id".into(),
                })
            })
            .transpose()
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

fn encode_step(step: &FlowStepState) -> Result<String, StoreError> {
    serde_json::to_string(step).map_err(|e| StoreError::Corrupt {
        flow_id: String::new(),
        reason: format!("step {} cannot be encoded: {e}", step.step_name),
    })
}

fn corrupt(id: FlowId, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        flow_id: id.to_string(),
        reason: reason.into(),
    }
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

fn decode_flow(
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

fn decode_summary(id: FlowId, row: Vec<Option<String>>) -> Result<Option<FlowSummary>, StoreError> {
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

fn cache_unavailable(e: RedisError) -> CacheError {
    CacheError::Unavailable(Box::new(e))
}

impl RedisStore {
    /// Deletes the entries named in an index set, then the set; returns how
    /// many entries existed.
    async fn invalidate_set(&self, set: &str) -> Result<u64, CacheError> {
        let keys: Vec<String> = redis::cmd("SMEMBERS")
            .arg(set)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(cache_unavailable)?;
        let mut pipe = redis::pipe();
        for key in &keys {
            // One DEL per entry: on a cluster the entries live on many slots.
            pipe.del(self.keys.result(key));
        }
        pipe.del(set).ignore();
        let removed: Vec<u64> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(cache_unavailable)?;
        Ok(removed.iter().sum())
    }
}

#[async_trait]
impl ResultCache for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, CacheError> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.keys.result(key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(cache_unavailable)?;
        raw.map(|r| {
            serde_json::from_str(&r).map_err(|e| CacheError::Corrupt {
                key: key.to_owned(),
                reason: e.to_string(),
            })
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
            .arg(json)
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
        pipe.exec_async(&mut self.conn.clone())
            .await
            .map_err(cache_unavailable)
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
}
