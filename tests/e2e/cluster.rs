//! flowhost on a three-node Redis Cluster (`redis-server --cluster-enabled
//! yes`, joined with `redis-cli --cluster create`): every key of a flow is in
//! one slot, sync and background runs complete, listing works, and a flow
//! cut by a kill -9 is taken back by the restarted host and completes
//! without rerunning its completed step.

use std::time::Duration;

use flowhost_tests::{
    Host, RedisCluster, config_file, eventually, flows_dir, plugins_dir, redis_flow_field,
    redis_step,
};
use serde_json::{Value, json};

const FLOW: &str = "name: three
inputs:
  text: {type: string}
  ms: {type: integer, default: 0}
steps:
  - name: a
    plugin: text-normalize
    input: {text: '${inputs.text}'}
  - name: slow
    plugin: chaos
    input: '${steps.a.output}'
    config: {mode: sleep, ms: 1500}
  - name: c
    plugin: text-stats
    input: {text: '${steps.a.output.text}'}
    depends_on: [slow]
outputs:
  words: '${steps.c.output.words}'
";

async fn post_json(url: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    resp.json().await.unwrap()
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_run_on_a_redis_cluster_and_resume_after_a_restart() {
    let cluster = RedisCluster::start(3).unwrap();
    let plugins = plugins_dir(&["text-normalize", "text-stats", "chaos"]);
    let flows = flows_dir(&[("three", FLOW)]);
    let config =
        config_file("redis: {cluster: true}\nqueue: {host_id: cluster-host, lease_ttl_ms: 2000}\n");
    let url = cluster.url();
    let env = [
        ("FLOWHOST_REDIS_URL", url.as_str()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
    ];
    let mut host = Host::start(&env).unwrap();
    let health = get_json(&host.url("/healthz")).await;
    assert_eq!(health["status"], "ok", "{health}");

    // A sync run, its keys together in one slot.
    let run = post_json(
        &host.url("/api/v1/three/execute"),
        json!({"inputs": {"text": "One two three four."}}),
    )
    .await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["outputs"]["words"], 4);
    let id = run["flow_id"].as_str().unwrap().to_owned();
    let mut conn = cluster.connection();
    let slots: Vec<i64> = [
        format!("fh:flow:{{{id}}}"),
        format!("fh:flow:{{{id}}}:steps"),
        format!("fh:flow:{{{id}}}:lease"),
    ]
    .iter()
    .map(|k| {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(&mut conn)
            .unwrap()
    })
    .collect();
    assert!(slots.iter().all(|s| *s == slots[0]), "{slots:?}");
    assert_eq!(
        redis_flow_field(&mut conn, &id, "status").as_deref(),
        Some("completed"),
        "{}",
        host.log()
    );

    // Background runs through the queue stream, then listed.
    let mut ids = Vec::new();
    for i in 0..6 {
        let accepted = post_json(
            &host.url("/api/v1/three/execute-async"),
            json!({"inputs": {"text": format!("Run number {i} here.")}}),
        )
        .await;
        ids.push(accepted["flow_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        eventually(
            "a background run completes",
            Duration::from_secs(30),
            || {
                (redis_flow_field(&mut conn, id, "status").as_deref() == Some("completed"))
                    .then_some(())
            },
        );
    }
    let listed = get_json(&host.url("/api/v1/three/active-flows?status=completed&limit=100")).await;
    assert_eq!(listed["flows"].as_array().unwrap().len(), 7, "{listed}");

    // kill -9 mid-flow; the restarted host (same host_id) takes it back.
    let accepted = post_json(
        &host.url("/api/v1/three/execute-async"),
        json!({"inputs": {"text": "Cut short, then resumed."}}),
    )
    .await;
    let cut = accepted["flow_id"].as_str().unwrap().to_owned();
    eventually("the slow step runs", Duration::from_secs(20), || {
        redis_step(&mut conn, &cut, "slow")
            .filter(|s| s["status"] == "running")
            .map(|_| ())
    });
    let a_before = redis_step(&mut conn, &cut, "a").unwrap();
    host.kill();
    let host = Host::start(&env).unwrap();
    eventually("the cut flow completes", Duration::from_secs(30), || {
        (redis_flow_field(&mut conn, &cut, "status").as_deref() == Some("completed")).then_some(())
    });
    assert_eq!(
        redis_step(&mut conn, &cut, "a").unwrap(),
        a_before,
        "a ran again"
    );
    let metrics = reqwest::get(host.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flowhost_flows_reclaimed_total 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"step="a",plugin="text-normalize",outcome="completed""#));
}
