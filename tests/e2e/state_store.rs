//! The store contracts (`flowhost_core::testing`), run over every
//! implementation: the memory store, the Redis store against a real
//! redis-server with a random key prefix and against a real three-node Redis
//! Cluster, and the fallback store over each. Plus Redis-only checks: the key
//! layout and that a step write costs the same whatever the flow's length.

use std::time::Duration;

use flowhost_core::memory::MemoryStore;
use flowhost_core::state::{FlowId, FlowPatch, FlowStatus, FlowStepState, StateStore, StepStatus};
use flowhost_core::testing::{flow, result_cache, state_store as contract};
use flowhost_redis::{FallbackStore, RedisStore, RedisStoreConfig};
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
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let server = RedisServer::start().unwrap();
    let store = RedisStore::connect(&redis_config(&server, &random_prefix()))
        .await
        .unwrap();
    contract(&store).await;
    result_cache(&store).await;
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
    let fallback = FallbackStore::redis(RedisStoreConfig {
        key_prefix: random_prefix(),
        ..config
    })
    .await;
    assert_eq!(fallback.backend(), "redis");
    contract(fallback.as_ref()).await;
}

#[tokio::test]
async fn redis_fallback_store_keeps_the_contract() {
    let server = RedisServer::start().unwrap();
    let store = FallbackStore::redis(redis_config(&server, &random_prefix())).await;
    assert_eq!(store.backend(), "redis");
    contract(store.as_ref()).await;
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
