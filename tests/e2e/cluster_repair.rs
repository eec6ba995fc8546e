//! Status index lines on a real three-node Redis Cluster, where they are
//! written after the flow's script, command by command: lines put out of
//! step by hand (as a host dying between the two leaves them) are fixed by
//! the retention prune, which repairs the indexes first.

use std::time::Duration;

use chrono::Utc;
use flowhost_core::state::{FlowId, FlowPatch, FlowStatus, ListFilter, StateStore, StoreError};
use flowhost_core::testing::flow;
use flowhost_redis::{RedisStore, RedisStoreConfig};
use flowhost_tests::RedisCluster;

fn members(conn: &mut impl redis::ConnectionLike, prefix: &str, status: &str) -> Vec<String> {
    let mut ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}flows:status:{status}"))
        .arg(0)
        .arg(-1)
        .query(conn)
        .unwrap();
    ids.sort();
    ids
}

async fn listed(store: &RedisStore, status: FlowStatus) -> Result<Vec<FlowId>, StoreError> {
    let filter = ListFilter {
        status: Some(status),
        limit: 100,
        ..ListFilter::default()
    };
    let mut ids: Vec<FlowId> = store
        .list_flows(&filter)
        .await?
        .into_iter()
        .map(|s| s.flow_id)
        .collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test]
async fn the_retention_prune_repairs_status_index_lines_out_of_step() {
    let cluster = RedisCluster::start(3).unwrap();
    let prefix = format!("t{}:", &FlowId::new().to_string()[24..]);
    let store = RedisStore::connect(&RedisStoreConfig {
        url: cluster.url(),
        cluster: true,
        key_prefix: prefix.clone(),
        response_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        retention: Some(Duration::from_secs(3600)),
        owner: "repair-test".into(),
        lease_ttl: Duration::from_secs(10),
        compress_min_bytes: flowhost_redis::DEFAULT_COMPRESS_MIN_BYTES,
    })
    .await
    .unwrap();
    // `done` completed, `busy` running, `gone` a line whose flow is no more.
    let done = flow("repair", 1, 0);
    let busy = flow("repair", 1, 1);
    let gone = flow("repair", 1, 2);
    for f in [&done, &busy, &gone] {
        store.create_flow(f).await.unwrap();
    }
    let finished = FlowPatch {
        status: Some(FlowStatus::Completed),
        completed_at: Some(Utc::now()),
        ..FlowPatch::default()
    };
    store.update_flow(done.flow_id, &finished).await.unwrap();
    let mut conn = cluster.connection();
    let [done_id, busy_id, gone_id] = [&done, &busy, &gone].map(|f| f.flow_id.to_string());
    assert_eq!(members(&mut conn, &prefix, "completed"), [done_id.as_str()]);

    // Out of step, as a host dying between a flow's script and its index
    // lines leaves them: `done` still in the running index only, `busy` in
    // the paused index as well as the running one, and `gone` deleted
    // but for its failed line.
    let index = |status: &str| format!("{prefix}flows:status:{status}");
    store.delete_flow(gone.flow_id).await.unwrap();
    for (op, status, id) in [
        ("ZREM", "completed", &done_id),
        ("ZADD", "running", &done_id),
        ("ZADD", "paused", &busy_id),
        ("ZADD", "failed", &gone_id),
    ] {
        let mut cmd = redis::cmd(op);
        cmd.arg(index(status));
        if op == "ZADD" {
            cmd.arg(1);
        }
        let changed: i64 = cmd.arg(id).query(&mut conn).unwrap();
        assert_eq!(changed, 1, "{op} {status} {id}");
    }
    let mut running = vec![done_id.clone(), busy_id.clone()];
    running.sort();
    assert_eq!(members(&mut conn, &prefix, "running"), running);

    // The retention prune (nothing is old enough to go) repairs first.
    let removed = store
        .prune(Utc::now() - chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert_eq!(members(&mut conn, &prefix, "running"), [busy_id.as_str()]);
    assert_eq!(members(&mut conn, &prefix, "completed"), [done_id.as_str()]);
    assert!(members(&mut conn, &prefix, "paused").is_empty());
    assert!(members(&mut conn, &prefix, "failed").is_empty());
    // Scored by when it finished, so a later prune removes it on time.
    let score: f64 = redis::cmd("ZSCORE")
        .arg(index("completed"))
        .arg(&done_id)
        .query(&mut conn)
        .unwrap();
    assert!(score > 1.0);
    assert_eq!(
        listed(&store, FlowStatus::Running).await.unwrap(),
        [busy.flow_id]
    );
    assert_eq!(
        listed(&store, FlowStatus::Completed).await.unwrap(),
        [done.flow_id]
    );
    // In step now: nothing more to fix.
    assert_eq!(store.repair_indexes().await.unwrap(), 0);
    let removed = store
        .prune(Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(removed, 1, "the completed flow is pruned by its index line");
}
