//! `flowhost run` beside `flowhost serve` on one Redis, with real processes:
//! the CLI run holds its flow's lease for as long as it runs (it renews it),
//! so a server that takes over flows left without a live lease never takes
//! a CLI run that outlives a lease. A 30 s CLI run, leases of 2 s.
//!
//! Every execution of a step is reported by the `chaos` plugin to a ledger
//! server in this test, over wasi:http, before the plugin does its work.

use std::collections::HashMap;

use flowhost_tests::{
    Host, RedisServer, chaos_plugins, config_file, flowhost_command, flows_dir, ledger,
};
use serde_json::Value;

/// Five steps, three of them 9 s long: about 30 s in all.
fn flow(report: &str) -> String {
    let step = |name: &str, after: &str, mode: &str| {
        format!(
            "  - name: {name}\n    plugin: chaos\n    input: {{}}\n    depends_on: [{after}]\n    \
             config: {{{mode}report_url: '{report}'}}\n"
        )
    };
    format!(
        "name: long\nsteps:\n{}{}{}{}{}",
        step("a", "", ""),
        step("b", "a", "mode: sleep, ms: 9000, "),
        step("c", "b", "mode: sleep, ms: 9000, "),
        step("d", "c", "mode: sleep, ms: 9000, "),
        step("e", "d", ""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_s_cli_run_keeps_its_lease_beside_a_server() {
    let redis = RedisServer::start().unwrap();
    let (ledger_port, runs_reported) = ledger();
    let report_url = format!("http://127.0.0.1:{ledger_port}/report");
    let plugins = chaos_plugins(ledger_port);
    let flows = flows_dir(&[("long", &flow(&report_url))]);
    // Short leases, and the server takes over flows left without one.
    let config = config_file("queue: {lease_ttl_ms: 2000}\nrecovery: {resume_on_start: true}\n");
    let env = [
        ("FLOWHOST_REDIS_URL", redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().display().to_string()),
        ("FLOWHOST_FLOWS_DIR", flows.path().display().to_string()),
        ("FLOWHOST_CONFIG", config.path().display().to_string()),
    ];
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Host::start(&env_refs).unwrap();

    let mut cli = flowhost_command();
    cli.args(["run", "long"]);
    for (k, v) in &env {
        cli.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cli.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "the CLI run: {stderr}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "completed", "{result}");
    assert!(
        result["total_execution_time"].as_f64().unwrap() > 27.0,
        "{result}"
    );

    // Executions by step.
    let mut runs: HashMap<String, usize> = HashMap::new();
    for report in runs_reported.lock().unwrap().iter() {
        let step = report["step"].as_str().unwrap_or_default().to_owned();
        *runs.entry(step).or_insert(0) += 1;
    }
    for step in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            runs.get(step).copied(),
            Some(1),
            "step {step} executions: {runs:?}"
        );
    }
    let reclaimed = server.metric("flowhost_flows_reclaimed_total");
    assert_eq!(reclaimed, 0.0, "the server took the CLI run over");
    let mut conn = redis.connection();
    let id = result["flow_id"].as_str().unwrap();
    let status: Option<String> = redis::cmd("HGET")
        .arg(format!("fh:flow:{{{id}}}"))
        .arg("status")
        .query(&mut conn)
        .unwrap();
    assert_eq!(status.as_deref(), Some("completed"));
}
