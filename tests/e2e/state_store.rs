//! The store contracts (`flowhost_core::testing`), run over every
//! implementation: the memory store, the Redis store against a real
//! redis-server with a random key prefix and against a real three-node Redis
//! Cluster, and the fallback store over each; the same for the blob store.
//! Plus Redis-only checks: the key layout, that a step write costs the same
//! whatever the flow's length, that no blob chunk is a large Redis value and
//! an unfinished upload leaves nothing that lasts, and that large state
//! values are stored compressed.

use std::time::Duration;

use flowhost_core::blob::{self, BlobId, BlobStore};
use flowhost_core::cache::{CachedResult, ResultCache};
use flowhost_core::memory::MemoryStore;
use flowhost_core::state::{
    FlowId, FlowPatch, FlowStatus, FlowStepState, ListFilter, StateStore, StepStatus,
};
use flowhost_core::testing::{blob_store, flow, pattern, result_cache, state_store as contract};
use flowhost_redis::{DEFAULT_COMPRESS_MIN_BYTES, FallbackStore, RedisStore, RedisStoreConfig};
use flowhost_tests::{RedisCluster, RedisServer};
use serde_json::json;

fn redis_config(server: &RedisServer, prefix: &str) -> RedisStoreConfig {
    redis_config_for(&server.url(), prefix)
}

fn redis_config_for(url: &str, prefix: &str) -> RedisStoreConfig {
    RedisStoreConfig {
        url: url.to_owned(),
        cluster: false,
        key_prefix: prefix.into(),
        response_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        retention: Some(Duration::from_secs(3600)),
        owner: format!("test-{prefix}"),
        lease_ttl: Duration::from_secs(10),
        compress_min_bytes: DEFAULT_COMPRESS_MIN_BYTES,
    }
}

fn random_prefix() -> String {
    format!("t{}:", &FlowId::new().to_string()[24..])
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let store = MemoryStore::new();
    contract(&store).await;
    result_cache(&store).await;
}

#[tokio::test]
async fn memory_fallback_store_keeps_the_contract() {
    contract(FallbackStore::memory().as_ref()).await;
    blob_store(FallbackStore::memory().as_ref()).await;
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let server = RedisServer::start().unwrap();
    let store = RedisStore::connect(&redis_config(&server, &random_prefix()))
        .await
        .unwrap();
    contract(&store).await;
    result_cache(&store).await;
    blob_store(&store).await;
}

#[tokio::test]
async fn redis_cluster_store_keeps_the_contract() {
    let cluster = RedisCluster::start(3).unwrap();
    let config = RedisStoreConfig {
        url: cluster.url(),
        cluster: true,
        ..redis_config_for(&cluster.url(), &random_prefix())
    };
    let store = RedisStore::connect(&config).await.unwrap();
    contract(&store).await;
    result_cache(&store).await;
    blob_store(&store).await;
    let fallback = FallbackStore::redis(RedisStoreConfig {
        key_prefix: random_prefix(),
        ..config
    })
    .await;
    assert_eq!(fallback.backend(), "redis");
    contract(fallback.as_ref()).await;
    blob_store(fallback.as_ref()).await;
}

#[tokio::test]
async fn redis_fallback_store_keeps_the_contract() {
    let server = RedisServer::start().unwrap();
    let prefix = random_prefix();
    let store = FallbackStore::redis(redis_config(&server, &prefix)).await;
    assert_eq!(store.backend(), "redis");
    contract(store.as_ref()).await;
    blob_store(store.as_ref()).await;
    // Blobs stored there went to Redis, not to the fallback's memory.
    let r = blob::put(store.as_ref(), "text/plain", b"in redis")
        .await
        .unwrap();
    let mut conn = server.connection();
    let meta: bool = redis::cmd("EXISTS")
        .arg(format!("{}blob:{{{}}}", prefix, r.id.hex()))
        .query(&mut conn)
        .unwrap();
    assert!(meta, "the blob's meta is in redis");
}

#[tokio::test]
async fn redis_keys_follow_the_documented_layout() {
    let server = RedisServer::start().unwrap();
    let prefix = random_prefix();
    let store = RedisStore::connect(&redis_config(&server, &prefix))
        .await
        .unwrap();
    let f = flow("layout", 2, 0);
    store.create_flow(&f).await.unwrap();
    let mut conn = server.connection();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap();
    keys.sort();
    let id = f.flow_id;
    // A flow created running is leased to its creator; the queue stream
    // exists from the first connection.
    assert_eq!(
        keys,
        vec![
            format!("{prefix}flow:{{{id}}}"),
            format!("{prefix}flow:{{{id}}}:lease"),
            format!("{prefix}flow:{{{id}}}:steps"),
            format!("{prefix}flows:name:layout"),
            format!("{prefix}flows:started"),
            format!("{prefix}flows:status:running"),
            format!("{prefix}queue"),
        ]
    );
    let status: String = redis::cmd("HGET")
        .arg(format!("{prefix}flow:{{{id}}}"))
        .arg("status")
        .query(&mut conn)
        .unwrap();
    assert_eq!(status, "running");
    let step: String = redis::cmd("HGET")
        .arg(format!("{prefix}flow:{{{id}}}:steps"))
        .arg("s1")
        .query(&mut conn)
        .unwrap();
    let step: serde_json::Value = serde_json::from_str(&step).unwrap();
    assert_eq!(step["status"], "pending");
}

#[tokio::test]
async fn finished_flows_expire_in_redis_and_resumed_ones_do_not() {
    let server = RedisServer::start().unwrap();
    let prefix = random_prefix();
    let store = RedisStore::connect(&redis_config(&server, &prefix))
        .await
        .unwrap();
    let f = flow("ttl", 1, 0);
    store.create_flow(&f).await.unwrap();
    let header = format!("{prefix}flow:{{{}}}", f.flow_id);
    let mut conn = server.connection();
    let pttl = |conn: &mut redis::Connection| -> i64 {
        redis::cmd("PTTL").arg(&header).query(conn).unwrap()
    };
    assert_eq!(pttl(&mut conn), -1, "a running flow does not expire");
    let done = FlowPatch {
        status: Some(FlowStatus::Failed),
        ..FlowPatch::default()
    };
    store.update_flow(f.flow_id, &done).await.unwrap();
    let left = pttl(&mut conn);
    assert!(left > 3_500_000 && left <= 3_600_000, "PTTL {left}");
    let again = FlowPatch {
        status: Some(FlowStatus::Running),
        clear_result: true,
        ..FlowPatch::default()
    };
    store.update_flow(f.flow_id, &again).await.unwrap();
    assert_eq!(pttl(&mut conn), -1, "a resumed flow keeps its keys");
}

/// Bytes Redis received for one `save_step`, read from Redis's own INFO.
async fn bytes_for_one_step_write(server: &RedisServer, store: &RedisStore, steps: usize) -> u64 {
    let f = flow("cost", steps, 0);
    store.create_flow(&f).await.unwrap();
    let mut conn = server.connection();
    let read = |conn: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_input_bytes:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = read(&mut conn);
    let mut s = FlowStepState::pending(format!("s{}", steps - 1));
    s.status = StepStatus::Completed;
    s.outputs = Some(json!({"n": 1}));
    store
        .save_step(f.flow_id, &s, &FlowPatch::default())
        .await
        .unwrap();
    let after = read(&mut conn);
    // The INFO command itself is counted too; it is the same size each time.
    after - before
}

#[tokio::test]
async fn a_step_write_costs_the_same_for_short_and_long_flows() {
    let server = RedisServer::start().unwrap();
    let store = RedisStore::connect(&redis_config(&server, &random_prefix()))
        .await
        .unwrap();
    let short = bytes_for_one_step_write(&server, &store, 1).await;
    let long = bytes_for_one_step_write(&server, &store, 64).await;
    // Step names s0 and s63 differ by one byte (and its length prefix).
    assert!(
        long.abs_diff(short) <= 4,
        "1 step: {short} bytes, 64 steps: {long} bytes"
    );
}

/// Every key under `prefix`, by SCAN.
fn keys_under(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}*"))
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(conn)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn blobs_are_stored_in_chunks_and_unfinished_uploads_do_not_last() {
    const MIB: usize = 1024 * 1024;
    let server = RedisServer::start().unwrap();
    let prefix = random_prefix();
    let store = RedisStore::connect(&redis_config(&server, &prefix))
        .await
        .unwrap();
    let bytes = pattern(3 * MIB + 17, 5);
    let r = blob::put(&store, "application/octet-stream", &bytes)
        .await
        .unwrap();
    assert_eq!(blob::get(&store, &r.id).await.unwrap(), bytes);
    let mut conn = server.connection();
    let keys = keys_under(&mut conn, &prefix);
    let chunks: Vec<&String> = keys.iter().filter(|k| k.contains("blobdata:")).collect();
    assert_eq!(
        chunks.len(),
        7,
        "3 MiB + 17 bytes in 512 KiB chunks: {keys:?}"
    );
    for key in &keys {
        let usage: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query(&mut conn)
            .unwrap();
        assert!(usage <= MIB as u64, "{key} uses {usage} bytes");
        let kind: String = redis::cmd("TYPE").arg(key).query(&mut conn).unwrap();
        if kind == "string" {
            let len: u64 = redis::cmd("STRLEN").arg(key).query(&mut conn).unwrap();
            assert!(len <= 512 * 1024, "{key} is {len} bytes");
        }
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
        assert_eq!(pttl, -1, "{key} of a finished blob expires");
    }

    // An upload whose host dies halfway (no drop, no abort): no meta, no
    // index line, and its chunks expire.
    let half = pattern(3 * MIB / 2, 6);
    let mut up = store.begin("image/png").await.unwrap();
    up.write(&half).await.unwrap();
    std::mem::forget(up);
    let after = keys_under(&mut conn, &prefix);
    let left: Vec<&String> = after.iter().filter(|k| !keys.contains(k)).collect();
    assert_eq!(left.len(), 3, "three full chunks written: {after:?}");
    for key in &left {
        assert!(key.contains("blobdata:"), "{key}: only chunks, no meta");
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
        assert!(pttl > 0 && pttl <= 3_600_000, "{key}: PTTL {pttl}");
    }
    assert_eq!(store.list().await.unwrap(), vec![r.id.clone()]);

    // One dropped: its chunks are deleted without waiting for the TTL.
    let mut up = store.begin("image/png").await.unwrap();
    up.write(&pattern(MIB, 7)).await.unwrap();
    assert_eq!(keys_under(&mut conn, &prefix).len(), after.len() + 2);
    drop(up);
    let mut now = Vec::new();
    for _ in 0..100 {
        now = keys_under(&mut conn, &prefix);
        if now == after {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(now, after, "a dropped upload's chunks are deleted");

    // The same bytes stored twice: one set of chunks, the first upload's.
    let data: String = redis::cmd("HGET")
        .arg(format!("{prefix}blob:{{{}}}", r.id.hex()))
        .arg("data")
        .query(&mut conn)
        .unwrap();
    blob::put(&store, "application/octet-stream", &bytes)
        .await
        .unwrap();
    assert_eq!(keys_under(&mut conn, &prefix), after);
    assert!(
        chunks.iter().all(|k| k.contains(&data)),
        "{chunks:?} of {data}"
    );
    assert_eq!(blob::get(&store, &r.id).await.unwrap(), bytes);
    assert_eq!(BlobId::of(&bytes), r.id);
}

#[tokio::test]
async fn large_state_values_and_cache_entries_are_stored_compressed() {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    let server = RedisServer::start().unwrap();
    let prefix = random_prefix();
    let store = RedisStore::connect(&redis_config(&server, &prefix))
        .await
        .unwrap();
    let text = "a word and another word, again and again. ".repeat(500);
    let mut f = flow("big", 2, 0);
    f.inputs = json!({"text": text});
    store.create_flow(&f).await.unwrap();
    let mut s = FlowStepState::pending("s1");
    s.status = StepStatus::Completed;
    s.outputs = Some(json!({"echo": text}));
    let done = FlowPatch {
        outputs: Some(json!({"short": 1})),
        ..FlowPatch::default()
    };
    store.save_step(f.flow_id, &s, &done).await.unwrap();

    let mut conn = server.connection();
    let raw = |conn: &mut redis::Connection, key: String, field: &str| -> Vec<u8> {
        redis::cmd("HGET").arg(key).arg(field).query(conn).unwrap()
    };
    let header = format!("{prefix}flow:{{{}}}", f.flow_id);
    let inputs = raw(&mut conn, header.clone(), "inputs");
    assert!(inputs.starts_with(&ZSTD_MAGIC), "inputs stored plain");
    assert!(
        inputs.len() < text.len() / 4,
        "{} bytes for {}",
        inputs.len(),
        text.len()
    );
    let step = raw(&mut conn, format!("{header}:steps"), "s1");
    assert!(step.starts_with(&ZSTD_MAGIC), "the step stored plain");
    // Small values stay readable JSON.
    assert_eq!(raw(&mut conn, header.clone(), "outputs"), br#"{"short":1}"#);
    assert!(raw(&mut conn, format!("{header}:steps"), "s0").starts_with(b"{"));
    assert_eq!(raw(&mut conn, header, "status"), b"running");

    let back = store.get_flow(f.flow_id).await.unwrap().unwrap();
    assert_eq!(back.inputs, f.inputs);
    assert_eq!(back.steps["s1"], s);
    assert_eq!(back.outputs, Some(json!({"short": 1})));
    let all = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    let listed = store.list_flows(&all).await.unwrap();
    assert_eq!(listed[0].flow_id, f.flow_id);

    let entry = CachedResult {
        key: "k".repeat(64),
        plugin: "p".into(),
        flow: "big".into(),
        step: "s1".into(),
        output: json!({"echo": text}),
        stored_at: chrono::Utc::now(),
    };
    store.put(&entry, Duration::from_secs(60)).await.unwrap();
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(format!("{prefix}cache:{{{}}}", entry.key))
        .query(&mut conn)
        .unwrap();
    assert!(
        stored.starts_with(&ZSTD_MAGIC),
        "the cache entry stored plain"
    );
    assert_eq!(
        ResultCache::get(&store, &entry.key).await.unwrap(),
        Some(entry)
    );
}
