//! Single-flight across hosts sharing one Redis, with real processes: the
//! same slow cached step started on two hosts at once runs its plugin once;
//! the other host waits for the result through Redis. And the leads behind
//! it, as the cache contract states them, on two Redis stores of different
//! hosts.
//!
//! Every execution of the step is reported by the `chaos` plugin to a ledger
//! server in this test, over wasi:http, before the plugin does its work.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flowhost_core::state::FlowId;
use flowhost_core::testing::shared_leads;
use flowhost_redis::{RedisStore, RedisStoreConfig};
use flowhost_tests::{Host, RedisServer, chaos_plugins, config_file, fake_http_server, flows_dir};
use serde_json::{Value, json};

fn store_config(server: &RedisServer, prefix: &str, owner: &str) -> RedisStoreConfig {
    RedisStoreConfig {
        url: server.url(),
        cluster: false,
        key_prefix: prefix.into(),
        response_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        retention: None,
        owner: owner.into(),
        lease_ttl: Duration::from_secs(10),
        compress_min_bytes: flowhost_redis::DEFAULT_COMPRESS_MIN_BYTES,
    }
}

#[tokio::test]
async fn two_hosts_redis_stores_share_leads() {
    let server = RedisServer::start().unwrap();
    let prefix = format!("t{}:", &FlowId::new().to_string()[24..]);
    let a = RedisStore::connect(&store_config(&server, &prefix, "host-a"))
        .await
        .unwrap();
    let b = RedisStore::connect(&store_config(&server, &prefix, "host-b"))
        .await
        .unwrap();
    shared_leads(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_slow_step_on_two_hosts_runs_once() {
    let redis = RedisServer::start().unwrap();
    let executions = Arc::new(AtomicUsize::new(0));
    let count = executions.clone();
    let ledger_port = fake_http_server(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        "{}".to_owned()
    });
    let report = format!("http://127.0.0.1:{ledger_port}/report");
    let plugins = chaos_plugins(ledger_port);
    // `chaos` says it is not deterministic: the step forces its caching.
    let flow = format!(
        "name: shared
inputs:
  n: {{type: integer}}
steps:
  - name: slow
    plugin: chaos
    input: {{n: '${{inputs.n}}'}}
    config: {{mode: sleep, ms: 3000, report_url: '{report}'}}
    cache: {{force: true}}
outputs:
  n: '${{steps.slow.output.input.n}}'
"
    );
    let flows = flows_dir(&[("shared", &flow)]);
    let config = config_file("");
    let env = [
        ("FLOWHOST_REDIS_URL", redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().display().to_string()),
        ("FLOWHOST_FLOWS_DIR", flows.path().display().to_string()),
        ("FLOWHOST_CONFIG", config.path().display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let hosts = [Host::start(&env).unwrap(), Host::start(&env).unwrap()];

    let runs: Vec<_> = hosts
        .iter()
        .map(|host| {
            let url = host.url("/api/v1/shared/execute");
            tokio::spawn(async move {
                let resp = reqwest::Client::new()
                    .post(url)
                    .json(&json!({"inputs": {"n": 42}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                resp.json::<Value>().await.unwrap()
            })
        })
        .collect();
    let mut cached = Vec::new();
    for run in runs {
        let end = run.await.unwrap();
        assert_eq!(end["status"], "completed", "{end}");
        assert_eq!(end["outputs"]["n"], 42);
        cached.push(end["steps"][0]["cached"].as_bool().unwrap_or(false));
    }
    assert_eq!(
        executions.load(Ordering::SeqCst),
        1,
        "the plugin ran on both hosts"
    );
    cached.sort();
    assert_eq!(cached, [false, true], "one host computed, one waited");
    let mut conn = redis.connection();
    let leads: Vec<String> = redis::cmd("KEYS")
        .arg("fh:cache:*:lead")
        .query(&mut conn)
        .unwrap();
    assert!(leads.is_empty(), "leads left behind: {leads:?}");
}
