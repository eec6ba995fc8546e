//! The `StateStore` contract, run over every implementation: the memory
//! store, and the Redis store against a real redis-server with a random key
//! prefix. Plus Redis-only checks: the key layout and that a step write costs
//! the same whatever the flow's length.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use flowhost_core::memory::MemoryStore;
use flowhost_core::state::{
    FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, ListFilter, StateStore, StepStatus,
    StoreError,
};
use flowhost_redis::{FallbackStore, RedisStore, RedisStoreConfig};
use flowhost_tests::RedisServer;
use serde_json::json;

fn flow(name: &str, steps: usize, started_secs: i64) -> FlowState {
    FlowState {
        flow_id: FlowId::new(),
        flow_name: name.into(),
        status: FlowStatus::Running,
        inputs: json!({"text": "hello"}),
        steps: (0..steps)
            .map(|i| (format!("s{i}"), FlowStepState::pending(format!("s{i}"))))
            .collect::<BTreeMap<_, _>>(),
        current_step: None,
        started_at: Utc.timestamp_opt(1_700_000_000 + started_secs, 0).unwrap(),
        completed_at: None,
        total_execution_time: None,
        metadata: json!({"who": "test"}).as_object().unwrap().clone(),
        outputs: None,
        error: None,
    }
}

async fn contract(store: &dyn StateStore) {
    // create, read back whole
    let mut a = flow("alpha", 3, 0);
    store.create_flow(&a).await.unwrap();
    assert_eq!(store.get_flow(a.flow_id).await.unwrap(), Some(a.clone()));
    assert!(matches!(
        store.create_flow(&a).await,
        Err(StoreError::AlreadyExists(id)) if id == a.flow_id
    ));
    assert_eq!(store.get_flow(FlowId::new()).await.unwrap(), None);

    // one step and the patch are written together; other steps untouched
    let mut s1 = FlowStepState::pending("s1");
    s1.status = StepStatus::Completed;
    s1.started_at = Some(Utc.timestamp_opt(1_700_000_001, 5_000_000).unwrap());
    s1.completed_at = Some(Utc.timestamp_opt(1_700_000_002, 0).unwrap());
    s1.inputs = Some(json!({"text": "x"}));
    s1.outputs = Some(json!({"n": 1.5, "list": [1, "two", null]}));
    s1.execution_time = Some(0.25);
    s1.attempt = 2;
    s1.cached = true;
    s1.cache_key = Some("k".into());
    let patch = FlowPatch {
        current_step: Some("s1".into()),
        ..FlowPatch::default()
    };
    store.save_step(a.flow_id, &s1, &patch).await.unwrap();
    a.steps.insert("s1".into(), s1.clone());
    a.current_step = Some("s1".into());
    assert_eq!(store.get_flow(a.flow_id).await.unwrap(), Some(a.clone()));

    // header patch
    let done = FlowPatch {
        status: Some(FlowStatus::Completed),
        completed_at: Some(Utc.timestamp_opt(1_700_000_003, 0).unwrap()),
        total_execution_time: Some(3.0),
        outputs: Some(json!({"answer": 42})),
        metadata: Some(
            json!({"who": "test", "more": true})
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..FlowPatch::default()
    };
    store.update_flow(a.flow_id, &done).await.unwrap();
    done.apply(&mut a);
    assert_eq!(store.get_flow(a.flow_id).await.unwrap(), Some(a.clone()));

    // listing: newest first, filters, limit
    let b = flow("beta", 1, 10);
    let c = flow("alpha", 1, 20);
    store.create_flow(&b).await.unwrap();
    store.create_flow(&c).await.unwrap();
    let ids =
        |v: Vec<flowhost_core::state::FlowSummary>| v.into_iter().map(|s| s.flow_id).collect::<Vec<_>>();
    let all = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(
        ids(store.list_flows(&all).await.unwrap()),
        vec![c.flow_id, b.flow_id, a.flow_id]
    );
    let alpha = ListFilter {
        flow_name: Some("alpha".into()),
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(
        ids(store.list_flows(&alpha).await.unwrap()),
        vec![c.flow_id, a.flow_id]
    );
    let running = ListFilter {
        status: Some(FlowStatus::Running),
        limit: 10,
        ..ListFilter::default()
    };
    let mut got = ids(store.list_flows(&running).await.unwrap());
    got.sort();
    let mut want = vec![b.flow_id, c.flow_id];
    want.sort();
    assert_eq!(got, want);
    let completed = ListFilter {
        status: Some(FlowStatus::Completed),
        limit: 10,
        ..ListFilter::default()
    };
    let summaries = store.list_flows(&completed).await.unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].flow_id, a.flow_id);
    assert_eq!(summaries[0].total_execution_time, Some(3.0));
    let one = ListFilter {
        limit: 1,
        ..ListFilter::default()
    };
    assert_eq!(ids(store.list_flows(&one).await.unwrap()), vec![c.flow_id]);

    // delete
    assert!(store.delete_flow(b.flow_id).await.unwrap());
    assert!(!store.delete_flow(b.flow_id).await.unwrap());
    assert_eq!(store.get_flow(b.flow_id).await.unwrap(), None);
    assert_eq!(
        ids(store.list_flows(&all).await.unwrap()),
        vec![c.flow_id, a.flow_id]
    );

    // Prune removes finished flows only: a completed, c still running.
    let later = Utc::now() + chrono::Duration::minutes(1);
    assert_eq!(
        store
            .prune(Utc.timestamp_opt(1_600_000_000, 0).unwrap())
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.prune(later).await.unwrap(), 1);
    assert_eq!(store.get_flow(a.flow_id).await.unwrap(), None);
    assert!(store.get_flow(c.flow_id).await.unwrap().is_some());
}

fn redis_config(server: &RedisServer, prefix: &str) -> RedisStoreConfig {
    RedisStoreConfig {
        url: server.url(),
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
    contract(&MemoryStore::new()).await;
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
