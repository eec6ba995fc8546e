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
//! - `P flow:{ID}:lease`  string, `OWNER TOKEN` of the host running the flow,
//!   with a TTL the owner renews; the header's `fence` field holds the
//!   latest token, and every write of the owner checks it (in Lua)
//! - `P queue`            stream of submitted runs (`flow` = id), read by the
//!   consumer group `flowhost`, one consumer per host
//! - `P idem:{KEY}`       string, the flow id an idempotency key names (TTL)
//! - `P cache:{KEY}`      string, one cached result as JSON, with a TTL (PX)
//! - `P cache:plugin:NAME`, `P cache:flow:NAME`  sets of the cache keys each
//!   plugin computed and each flow stored, for invalidation; they expire with
//!   their longest-lived entry
//!
//! One multiplexed connection (a `ConnectionManager`, or a cluster connection)
//! is shared by all requests; each write is one script call, so recording a
//! step costs one round trip. On one server the index lines change in the
//! same script; on a Cluster, where they live in other slots, in a pipeline
//! right after it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture};

use serde_json::{Map, Value};

use crate::cache::{CacheError, CachedResult, Invalidate, ResultCache};

use super::{
    Claim, FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, FlowSummary, ListFilter,
    Renewal, StateStore, StoreError,
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

/// Creates a flow in one round trip, unless its header exists: the header
/// and every step; a flow created `running` is leased to its creator (fence
/// token 1); on one server also its lines in the start, name and status
/// indexes, and (for a flow created `pending`) its entry in the queue.
/// KEYS: header, steps, lease, then (one server only) queue, started,
/// by-name, status, the other statuses. ARGV: id, start ms, owner ('' for no
/// lease), lease ms, 2 × header fields, header pairs, step pairs, and last
/// '1' to queue it.
static CREATE_FLOW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + n))
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'fence', 1)
  redis.call('SET', KEYS[3], ARGV[3] .. ' 1', 'PX', ARGV[4])
end
local chunk = {}
for j = 6 + n, #ARGV - 1 do
  chunk[#chunk + 1] = ARGV[j]
  if #chunk == 500 then
    redis.call('HSET', KEYS[2], unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then redis.call('HSET', KEYS[2], unpack(chunk)) end
if #KEYS > 3 then
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
  for k = 8, #KEYS do redis.call('ZREM', KEYS[k], ARGV[1]) end
  redis.call('ZADD', KEYS[7], ARGV[2], ARGV[1])
  if ARGV[#ARGV] == '1' then redis.call('XADD', KEYS[4], '*', 'flow', ARGV[1]) end
end
return 1
",
    )
});

/// Writes steps and header fields of one flow, if the writer's fencing token
/// is still the flow's (or the write is not fenced), and gives up the lease
/// when asked (a finished or paused flow). Returns 1, or 0 when fenced.
/// KEYS: header, steps, lease, then (inline indexes only) the new status's
/// index and the other statuses'. ARGV: token ('' unfenced), lease value to
/// release ('' none), clear result ('1'), expiry ('' none, 'persist', or ms),
/// 2 × header fields, header pairs, 2 × steps, step pairs, then (inline
/// indexes only) member and score.
static WRITE_FLOW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[1], 'completed_at', 'total_execution_time', 'outputs', 'error')
end
local n = tonumber(ARGV[5])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + n)) end
local m = tonumber(ARGV[6 + n])
local first, last = 7 + n, 6 + n + m
while first <= last do
  local upto = math.min(first + 499, last)
  redis.call('HSET', KEYS[2], unpack(ARGV, first, upto))
  first = upto + 1
end
if ARGV[4] == 'persist' then
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
elseif ARGV[4] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
if #KEYS > 3 then
  local member, score = ARGV[7 + n + m], ARGV[8 + n + m]
  for k = 5, #KEYS do redis.call('ZREM', KEYS[k], member) end
  redis.call('ZADD', KEYS[4], score, member)
end
return 1
",
    )
});

/// Takes a flow's lease for OWNER unless another owner holds it: bumps the
/// fence token and sets the lease. KEYS: header, lease, steps. ARGV: owner,
/// lease ms. Returns {token, '', header, steps} (the flow as claimed), or
/// {-1, holder, {}, {}} when another owner holds it, {-2, ...} when the flow
/// does not exist.
static CLAIM: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local held = redis.call('GET', KEYS[2])
if held and string.sub(held, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return {-1, held, {}, {}} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, '', {}, {}} end
local token = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return {token, '', redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[3])}
",
    )
});

/// Extends a lease if it is still the caller's. KEYS: lease, header. ARGV:
/// value, ms. Returns 0 when lost, 2 when a cancel was requested, else 1.
static RENEW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then return 2 end
return 1
",
    )
});

/// Deletes a lease if it is still the caller's. KEYS: lease. ARGV: value.
static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// The consumer group of the submission stream.
const GROUP: &str = "flowhost";

#[derive(Clone, Debug)]
pub struct RedisStoreConfig {
    /// A `redis://` URL; with `cluster`, one or more (comma-separated) seed
    /// nodes of a Redis Cluster.
    pub url: String,
    pub cluster: bool,
    /// Prepended to every key; must not contain `{` or `}`.
    pub key_prefix: String,
    /// How long one command may take before it counts as a failure.
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    /// A finished flow's keys expire this long after it finished.
    pub retention: Option<Duration>,
    /// This host's name in leases and in the consumer group.
    pub owner: String,
    /// How long a lease lives unless renewed.
    pub lease_ttl: Duration,
}

/// A connection to one server or to a Cluster; both multiplexed.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Held {
    token: u64,
    lost: bool,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    keys: Keys,
    retention: Option<Duration>,
    owner: String,
    lease_ttl: Duration,
    /// The fencing token of every lease this host holds or lost, by flow.
    /// A lost lease stays here, so that this host's later writes to the flow
    /// still carry its (old) token and are refused, until it lets go.
    held: Arc<Mutex<HashMap<FlowId, Held>>>,
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
    fn lease(&self, id: FlowId) -> String {
        format!("{}flow:{{{id}}}:lease", self.prefix)
    }
    fn queue(&self) -> String {
        format!("{}queue", self.prefix)
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
        let conn = if config.cluster {
            let seeds: Vec<&str> = config.url.split(',').map(str::trim).collect();
            let client = redis::cluster::ClusterClientBuilder::new(seeds)
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout)
                .retries(1)
                .build()
                .map_err(unavailable)?;
            Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
        } else {
            let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
            let manager_config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(config.response_timeout))
                .set_connection_timeout(Some(config.connect_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(
                client
                    .get_connection_manager_with_config(manager_config)
                    .await
                    .map_err(unavailable)?,
            )
        };
        let store = RedisStore {
            conn,
            keys: Keys {
                prefix: config.key_prefix.clone(),
            },
            retention: config.retention,
            owner: config.owner.clone(),
            lease_ttl: config.lease_ttl,
            held: Arc::default(),
        };
        store.ping().await?;
        store.ensure_group().await?;
        // Loaded up front, so that no request pays for sending a script.
        for script in [&*CREATE_FLOW, &*WRITE_FLOW, &*CLAIM, &*RENEW, &*RELEASE] {
            script
                .load_async(&mut store.conn.clone())
                .await
                .map_err(unavailable)?;
        }
        Ok(store)
    }

    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<FlowId, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lease_value(&self, token: u64) -> String {
        format!("{} {token}", self.owner)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Runs a pipeline: as one MULTI/EXEC on one server (a header field and
    /// its status index never disagree); on a Cluster, whose keys live in
    /// many slots, command by command.
    async fn run(&self, mut pipe: Pipeline) -> Result<(), StoreError> {
        if self.is_cluster() {
            return self.each(&pipe).await.map(drop).map_err(unavailable);
        }
        pipe.atomic();
        pipe.exec_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    /// A pipeline's replies: one round trip on one server; on a Cluster,
    /// where a pipeline may not cross slots, one command at a time. (Replies
    /// of commands marked `ignore` are kept on a Cluster: callers that query
    /// do not mark any.)
    async fn query<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, RedisError> {
        if self.is_cluster() {
            return Ok(redis::from_redis_value(redis::Value::Array(
                self.each(pipe).await?,
            ))?);
        }
        pipe.query_async(&mut self.conn.clone()).await
    }

    async fn each(&self, pipe: &Pipeline) -> Result<Vec<redis::Value>, RedisError> {
        let mut replies = Vec::new();
        for cmd in pipe.cmd_iter() {
            replies.push(cmd.query_async(&mut self.conn.clone()).await?);
        }
        Ok(replies)
    }

    /// The index lines of a flow in `status` since `at_ms`, for a pipeline.
    fn push_status_index(&self, pipe: &mut Pipeline, id: FlowId, status: FlowStatus, at_ms: i64) {
        let member = id.to_string();
        for other in ALL_STATUSES.iter().filter(|s| **s != status) {
            pipe.zrem(self.keys.by_status(*other), &member).ignore();
        }
        pipe.zadd(self.keys.by_status(status), &member, at_ms)
            .ignore();
    }

    /// One fenced write of a flow's steps and header (see `WRITE_FLOW`).
    async fn write(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        let token = self.held().get(&id).map(|h| h.token);
        // A flow left finished or paused is given up by its owner.
        let release = token.filter(|_| {
            patch
                .status
                .is_some_and(|s| !matches!(s, FlowStatus::Running | FlowStatus::Pending))
        });
        let expiry = match (patch.status, self.retention) {
            (Some(s), Some(keep)) if s.is_finished() => keep.as_millis().to_string(),
            (Some(_), _) => "persist".to_owned(),
            (None, _) => String::new(),
        };
        let inline_index = patch.status.filter(|_| !self.is_cluster());
        let mut invocation = WRITE_FLOW.prepare_invoke();
        invocation
            .key(self.keys.flow(id))
            .key(self.keys.steps(id))
            .key(self.keys.lease(id));
        if let Some(status) = inline_index {
            invocation.key(self.keys.by_status(status));
            for other in ALL_STATUSES.iter().filter(|s| **s != status) {
                invocation.key(self.keys.by_status(*other));
            }
        }
        let fields = patch_fields(patch);
        invocation
            .arg(token.map(|t| t.to_string()).unwrap_or_default())
            .arg(release.map(|t| self.lease_value(t)).unwrap_or_default())
            .arg(if patch.clear_result { "1" } else { "0" })
            .arg(expiry)
            .arg(fields.len() * 2);
        for (field, value) in &fields {
            invocation.arg(*field).arg(value);
        }
        invocation.arg(steps.len() * 2);
        for step in steps {
            invocation.arg(&step.step_name).arg(encode_step(step)?);
        }
        let now = Utc::now().timestamp_millis();
        if inline_index.is_some() {
            invocation.arg(id.to_string()).arg(now);
        }
        let written: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if written == 0 {
            if let Some(held) = self.held().get_mut(&id) {
                held.lost = true;
            }
            return Err(StoreError::Fenced(id));
        }
        if release.is_some() {
            self.held().remove(&id);
        }
        if let (Some(status), None) = (patch.status, inline_index) {
            let mut pipe = redis::pipe();
            self.push_status_index(&mut pipe, id, status, now);
            self.run(pipe).await?;
        }
        Ok(())
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
        // A flow created running is its creator's; a pending one waits for
        // a host to claim it.
        let leased = flow.status == FlowStatus::Running;
        let inline_index = !self.is_cluster();
        let mut invocation = CREATE_FLOW.prepare_invoke();
        invocation
            .key(self.keys.flow(id))
            .key(self.keys.steps(id))
            .key(self.keys.lease(id));
        if inline_index {
            invocation
                .key(self.keys.queue())
                .key(self.keys.started())
                .key(self.keys.by_name(&flow.flow_name))
                .key(self.keys.by_status(flow.status));
            for other in ALL_STATUSES.iter().filter(|s| **s != flow.status) {
                invocation.key(self.keys.by_status(*other));
            }
        }
        invocation
            .arg(id.to_string())
            .arg(flow.started_at.timestamp_millis())
            .arg(if leased { self.owner.as_str() } else { "" })
            .arg(self.lease_ttl.as_millis() as u64)
            .arg(header.len() * 2);
        for (field, value) in &header {
            invocation.arg(*field).arg(value);
        }
        for step in flow.steps.values() {
            invocation.arg(&step.step_name).arg(encode_step(step)?);
        }
        // A flow created pending waits in the queue for a host to run it.
        let queued = flow.status == FlowStatus::Pending;
        invocation.arg(if queued { "1" } else { "0" });
        let created: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if created == 0 {
            return Err(StoreError::AlreadyExists(id));
        }
        if leased {
            self.held().insert(
                id,
                Held {
                    token: 1,
                    lost: false,
                },
            );
        }
        if !inline_index {
            let member = id.to_string();
            let at = flow.started_at.timestamp_millis();
            let mut pipe = redis::pipe();
            pipe.zadd(self.keys.started(), &member, at).ignore();
            pipe.zadd(self.keys.by_name(&flow.flow_name), &member, at)
                .ignore();
            self.push_status_index(&mut pipe, id, flow.status, at);
            self.run(pipe).await?;
            if queued {
                self.enqueue(id).await?;
            }
        }
        Ok(())
    }

    async fn save_steps(
        &self,
        id: FlowId,
        steps: &[&FlowStepState],
        patch: &FlowPatch,
    ) -> Result<(), StoreError> {
        self.write(id, steps, patch).await
    }

    async fn update_flow(&self, id: FlowId, patch: &FlowPatch) -> Result<(), StoreError> {
        if patch.is_empty() {
            return Ok(());
        }
        self.write(id, &[], patch).await
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
            let rows: Vec<Vec<Option<String>>> = self.query(&pipe).await.map_err(unavailable)?;
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
        pipe.del(self.keys.lease(id)).ignore();
        pipe.zrem(self.keys.started(), &member).ignore();
        pipe.zrem(self.keys.by_name(&name), &member).ignore();
        for status in ALL_STATUSES {
            pipe.zrem(self.keys.by_status(status), &member).ignore();
        }
        self.run(pipe).await?;
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
                    self.run(pipe).await?;
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

    async fn claim(&self, id: FlowId) -> Result<Claim, StoreError> {
        self.claim_and_load(id).await.map(|(claim, _)| claim)
    }

    async fn claim_and_load(&self, id: FlowId) -> Result<(Claim, Option<FlowState>), StoreError> {
        type Reply = (
            i64,
            String,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
        );
        let (token, holder, header, steps): Reply = CLAIM
            .key(self.keys.flow(id))
            .key(self.keys.lease(id))
            .key(self.keys.steps(id))
            .arg(&self.owner)
            .arg(self.lease_ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let state = if token > 0 {
            Some(decode_flow(id, header, steps)?)
        } else {
            None
        };
        let claim = match token {
            -1 => Claim::HeldElsewhere(holder.split(' ').next().unwrap_or_default().to_owned()),
            -2 => Claim::Missing,
            token => {
                self.held().insert(
                    id,
                    Held {
                        token: token as u64,
                        lost: false,
                    },
                );
                Claim::Granted
            }
        };
        Ok((claim, state))
    }

    async fn request_cancel(&self, id: FlowId) -> Result<(), StoreError> {
        let _: i64 = redis::cmd("HSET")
            .arg(self.keys.flow(id))
            .arg("cancel_requested")
            .arg("1")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn renew_claims(&self) -> Result<Renewal, StoreError> {
        let held: Vec<(FlowId, u64)> = self
            .held()
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(id, h)| (*id, h.token))
            .collect();
        let mut renewal = Renewal::default();
        for (id, token) in held {
            let renewed: i64 = RENEW
                .key(self.keys.lease(id))
                .key(self.keys.flow(id))
                .arg(self.lease_value(token))
                .arg(self.lease_ttl.as_millis() as u64)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            if renewed == 0 {
                let mut held = self.held();
                // Only if it was not given up or claimed anew meanwhile.
                if let Some(h) = held.get_mut(&id).filter(|h| h.token == token && !h.lost) {
                    h.lost = true;
                    renewal.lost.push(id);
                }
            } else if renewed == 2 {
                renewal.cancel.push(id);
            }
        }
        Ok(renewal)
    }

    async fn release(&self, id: FlowId) -> Result<(), StoreError> {
        let Some(held) = self.held().remove(&id) else {
            return Ok(());
        };
        if held.lost {
            return Ok(());
        }
        let _: i64 = RELEASE
            .key(self.keys.lease(id))
            .arg(self.lease_value(held.token))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// The submission stream and its consumer group: the work queue that hosts
/// sharing this Redis read from.
impl RedisStore {
    /// Creates the consumer group (and the stream) unless it exists.
    async fn ensure_group(&self) -> Result<(), StoreError> {
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

    async fn enqueue(&self, id: FlowId) -> Result<(), StoreError> {
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

    /// Runs submitted and not yet finished: waiting, or running somewhere.
    pub async fn backlog(&self) -> Result<u64, StoreError> {
        redis::cmd("XLEN")
            .arg(self.keys.queue())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    /// Up to `max` submissions no host has been given yet, given to this one.
    pub async fn take(&self, max: usize) -> Result<Vec<Delivery>, StoreError> {
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
    pub async fn reclaim_deliveries(
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
    pub async fn done(&self, delivery: &Delivery) -> Result<(), StoreError> {
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
    pub async fn orphans(&self, idle: Duration, max: usize) -> Result<Vec<FlowId>, StoreError> {
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
        let leases: Vec<Option<String>> = self.query(&pipe).await.map_err(unavailable)?;
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
        let removed: Vec<u64> = self.query(&pipe).await.map_err(cache_unavailable)?;
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
        if self.is_cluster() {
            return self.each(&pipe).await.map(drop).map_err(cache_unavailable);
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
