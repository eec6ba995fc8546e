//! Several hosts sharing one Redis, with real processes: 300 background runs
//! submitted round-robin to three hosts; one host is killed with SIGKILL and
//! another frozen (SIGSTOP) past its leases, then thawed. Every flow
//! completes, no step starts again after it completed, and the frozen host's
//! late writes are refused by the fencing check and counted.
//!
//! Every execution of a step is reported by the `chaos` plugin to a ledger
//! server in this test, over wasi:http, before the plugin does its work.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowhost_tests::{
    Host, RedisServer, chaos_plugins, config_file, flows_dir, ledger, redis_flow_field, redis_step,
};
use serde_json::{Value, json};

fn flow(name: &str, slow_ms: u64, report: &str) -> String {
    format!(
        "name: {name}
inputs:
  n: {{type: integer}}
steps:
  - name: a
    plugin: chaos
    input: {{n: '${{inputs.n}}'}}
    config: {{mode: ok, report_url: '{report}'}}
  - name: b
    plugin: chaos
    input: '${{steps.a.output.input}}'
    config: {{mode: sleep, ms: {slow_ms}, report_url: '{report}'}}
  - name: c
    plugin: chaos
    input: '${{steps.b.output.input}}'
    config: {{mode: ok, report_url: '{report}'}}
outputs:
  n: '${{steps.c.output.input.n}}'
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_300_flows_through_a_kill_and_a_freeze() {
    let redis = RedisServer::start().unwrap();
    let (ledger_port, reports) = ledger();
    let report_url = format!("http://127.0.0.1:{ledger_port}/report");
    let plugins = chaos_plugins(ledger_port);
    let flows = flows_dir(&[
        ("fast", &flow("fast", 20, &report_url)),
        ("slow", &flow("slow", 1500, &report_url)),
    ]);
    let config = config_file("queue: {lease_ttl_ms: 2000}\nsubmit: {max_in_flight: 10000}\n");
    let env = [
        ("FLOWHOST_REDIS_URL", redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().display().to_string()),
        ("FLOWHOST_FLOWS_DIR", flows.path().display().to_string()),
        ("FLOWHOST_CONFIG", config.path().display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut hosts: Vec<Host> = (0..3).map(|_| Host::start(&env).unwrap()).collect();

    let client = reqwest::Client::new();
    let clock = Instant::now();
    let mut ids = Vec::new();
    for n in 0..300 {
        let host = &hosts[n % 3];
        let name = if n % 2 == 0 { "fast" } else { "slow" };
        let resp = client
            .post(host.url(&format!("/api/v1/{name}/execute-async")))
            .json(&json!({"inputs": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        ids.push((body["flow_id"].as_str().unwrap().to_owned(), n));
    }
    let submitted = clock.elapsed();

    // Mid-run: host 0 dies, host 1 freezes for twice its lease's life.
    tokio::time::sleep(Duration::from_millis(700)).await;
    hosts[0].kill();
    hosts[1].signal("STOP");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    hosts[1].signal("CONT");

    let mut conn = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: usize = redis::cmd("ZCARD")
            .arg("fh:flows:status:completed")
            .query(&mut conn)
            .unwrap();
        if done == 300 {
            break;
        }
        if Instant::now() > deadline {
            let mut by_status: HashMap<String, usize> = HashMap::new();
            for (id, _) in &ids {
                let s = redis_flow_field(&mut conn, id, "status").unwrap_or_default();
                *by_status.entry(s).or_default() += 1;
            }
            panic!("{done} of 300 completed after 120 s: {by_status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_done = clock.elapsed();

    // Every flow completed with its own output.
    for (id, n) in &ids {
        assert_eq!(
            redis_flow_field(&mut conn, id, "status").as_deref(),
            Some("completed")
        );
        let outputs: Value =
            serde_json::from_str(&redis_flow_field(&mut conn, id, "outputs").unwrap()).unwrap();
        assert_eq!(outputs["n"], *n, "flow {id}");
    }

    // No step started after its completion was recorded.
    let reports = reports.lock().unwrap().clone();
    let mut runs: HashMap<(String, String), Vec<DateTime<Utc>>> = HashMap::new();
    for report in &reports {
        // The time the plugin read, not the report's arrival: a host frozen
        // in the middle of sending a report delivers it late.
        let at = report["started_ms"]
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .expect("started_ms in the report");
        let flow = report["flow_id"].as_str().unwrap_or_default().to_owned();
        let step = report["step"].as_str().unwrap_or_default().to_owned();
        runs.entry((flow, step)).or_default().push(at);
    }
    let mut rerun_in_flight = 0;
    for (id, _) in &ids {
        for step in ["a", "b", "c"] {
            let state = redis_step(&mut conn, id, step).unwrap();
            let completed: DateTime<Utc> = state["completed_at"].as_str().unwrap().parse().unwrap();
            let starts = runs
                .get(&(id.clone(), step.to_owned()))
                .cloned()
                .unwrap_or_default();
            assert!(!starts.is_empty(), "{id}.{step} never reported");
            for start in &starts {
                assert!(
                    *start <= completed,
                    "{id}.{step} started at {start} after it completed at {completed}"
                );
            }
            if starts.len() > 1 {
                rerun_in_flight += 1;
            }
        }
    }

    // The frozen host came back, found its leases taken, and its late writes
    // were refused and counted.
    let fenced = hosts[1].metric("flowhost_state_fenced_writes_total");
    let lost = hosts[1].metric("flowhost_leases_lost_total");
    assert!(fenced >= 1.0, "no fenced write counted on the frozen host");
    let reclaimed = hosts[2].metric("flowhost_flows_reclaimed_total")
        + hosts[1].metric("flowhost_flows_reclaimed_total");
    assert!(reclaimed >= 1.0, "no flow was taken over");
    println!(
        "300 flows: submitted in {submitted:?}, all completed in {all_done:?}; \
         {reclaimed} taken over, {rerun_in_flight} in-flight steps ran again, \
         frozen host: {fenced} fenced writes, {lost} leases lost; {} step executions reported",
        reports.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_host_stops_the_flow_where_it_runs() {
    let redis = RedisServer::start().unwrap();
    let plugins = flowhost_tests::plugins_dir(&["chaos"]);
    let flows = flows_dir(&[(
        "long",
        "name: long
steps:
  - name: wait
    plugin: chaos
    input: {}
    config: {mode: sleep, ms: 20000}
",
    )]);
    let config = config_file("queue: {lease_ttl_ms: 1500}\n");
    let env = [
        ("FLOWHOST_REDIS_URL", redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().display().to_string()),
        ("FLOWHOST_FLOWS_DIR", flows.path().display().to_string()),
        ("FLOWHOST_CONFIG", config.path().display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let hosts: Vec<Host> = (0..2).map(|_| Host::start(&env).unwrap()).collect();
    let client = reqwest::Client::new();
    let accepted: Value = client
        .post(hosts[0].url("/api/v1/long/execute-async"))
        .json(&json!({"inputs": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["flow_id"].as_str().unwrap().to_owned();
    // Which host took it: its lease names the host, `HOSTNAME:PORT`.
    let mut conn = redis.connection();
    let lease = flowhost_tests::eventually("the flow is leased", Duration::from_secs(10), || {
        redis::cmd("GET")
            .arg(format!("fh:flow:{{{id}}}:lease"))
            .query::<Option<String>>(&mut conn)
            .unwrap()
    });
    let runner = hosts
        .iter()
        .position(|h| {
            lease
                .split(' ')
                .next()
                .unwrap()
                .ends_with(&format!(":{}", h.port))
        })
        .unwrap();
    let other = &hosts[1 - runner];
    let clock = Instant::now();
    let resp = client
        .delete(other.url(&format!("/api/v1/long/flows/{id}")))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    let took = clock.elapsed();
    assert!(took < Duration::from_secs(5), "the cancel took {took:?}");
    assert_eq!(
        redis_flow_field(&mut conn, &id, "status").as_deref(),
        Some("cancelled")
    );
    assert_eq!(
        redis_step(&mut conn, &id, "wait").unwrap()["status"],
        "cancelled"
    );
    println!("cancel through the other host took {took:?}");
}
