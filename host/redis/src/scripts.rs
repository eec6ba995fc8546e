//! The Lua scripts: each write of a flow, each lease operation, and each
//! step of a blob's life that must be atomic is one script call (one round
//! trip, atomic on its slot). Their KEYS and ARGV are documented on each;
//! `all` lists them for loading at connect.

use std::sync::LazyLock;

use redis::Script;

/// Creates a flow in one round trip, unless its header exists: the header
/// and every step; a flow created `running` is leased to its creator (fence
/// token 1); on one server also its lines in the start, name and status
/// indexes, and (for a flow created `pending`) its entry in the queue.
/// KEYS: header, steps, lease, then (one server only) queue, started,
/// by-name, status, the other statuses. ARGV: id, start ms, owner ('' for no
/// lease), lease ms, 2 × header fields, header pairs, step pairs, and last
/// '1' to queue it.
pub(crate) static CREATE_FLOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
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
pub(crate) static WRITE_FLOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
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
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
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

/// Extends a lease if it is still the caller's. A lease that expired while
/// the owner could not reach Redis (an outage) is taken back if nobody took
/// the flow since: its fence is still the owner's token and it is still
/// running. KEYS: lease, header. ARGV: value, ms, token. Returns 0 when
/// lost, 2 when a cancel was requested, else 1.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif held == false and redis.call('HGET', KEYS[2], 'fence') == ARGV[3]
    and redis.call('HGET', KEYS[2], 'status') == 'running' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return 0
end
if redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then return 2 end
return 1
",
    )
});

/// Deletes a key if it still holds the caller's value: a lease its owner
/// gives up, an idempotency key its request gives back. KEYS: the key.
/// ARGV: value. Returns 1 when deleted, else 0.
pub(crate) static DELETE_IF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Keeps the chunks of a finished upload: removes their TTL, if every one
/// is still there. KEYS: the upload's chunks (one slot: the upload's tag).
/// Returns 1, or 0 (nothing changed) when a chunk expired.
pub(crate) static KEEP_CHUNKS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for k = 1, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 0 then return 0 end
end
for k = 1, #KEYS do redis.call('PERSIST', KEYS[k]) end
return 1
",
    )
});

/// Makes a blob visible: creates its meta unless it exists, else only
/// touches it (the bytes stored first stay, and their media type). KEYS:
/// meta. ARGV: upload id, size, chunk count, media type, now ms. Returns
/// {1, size, media type} when created, {0, size, media type} of the blob
/// already there otherwise.
pub(crate) static FINISH_BLOB: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'touched_at', ARGV[5])
  local m = redis.call('HMGET', KEYS[1], 'size', 'media_type')
  return {0, m[1], m[2]}
end
redis.call('HSET', KEYS[1], 'size', ARGV[2], 'media_type', ARGV[4], 'data', ARGV[1],
  'chunks', ARGV[3], 'touched_at', ARGV[5])
return {1, ARGV[2], ARGV[4]}
",
    )
});

/// Records a hold on a blob if the blob exists (atomic with its removal).
/// KEYS: meta, holds. ARGV: holder, until ms or '+inf'. Returns 1, or 0
/// when there is no such blob.
pub(crate) static HOLD_BLOB: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
",
    )
});

/// Removes a blob's meta (and so the blob) if nothing holds it and it was
/// last touched before the cutoff; the caller deletes the chunks after.
/// KEYS: meta, holds. ARGV: cutoff ms. Returns {1, upload, chunk count}
/// when removed, else {0, '', 0}.
pub(crate) static REMOVE_UNHELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'touched_at', 'data', 'chunks')
if not m[1] or redis.call('ZCARD', KEYS[2]) > 0 then return {0, '', 0} end
if tonumber(m[1]) >= tonumber(ARGV[1]) then return {0, '', 0} end
redis.call('DEL', KEYS[1], KEYS[2])
return {1, m[2], tonumber(m[3])}
",
    )
});

/// Every script, to load up front so that no request pays for sending one.
pub(crate) fn all() -> [&'static Script; 9] {
    [
        &*CREATE_FLOW,
        &*WRITE_FLOW,
        &*CLAIM,
        &*RENEW,
        &*DELETE_IF,
        &*KEEP_CHUNKS,
        &*FINISH_BLOB,
        &*HOLD_BLOB,
        &*REMOVE_UNHELD,
    ]
}
