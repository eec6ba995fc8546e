//! A Redis outage in the middle of running flows, with real processes: a
//! redis-server with AOF (`appendfsync always`) is killed with SIGKILL while
//! a host runs background flows, and started again on the same port and
//! data after a while. A host that cannot record a step's start holds the
//! flow instead of starting it, so every run completes and no step runs
//! twice. And the lease of such a flow: one that expired during the outage
//! is taken back by its owner, unless another host took the flow meanwhile.
//!
//! Every execution of a step is reported by the `chaos` plugin to a ledger
//! server in this test, over wasi:http, before the plugin does its work.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flowhost_tests::{Host, chaos_plugins, config_file, flows_dir, free_port, ledger};
use serde_json::{Value, json};

/// A redis-server whose data survives a SIGKILL: AOF, every write synced
/// before its reply. Killed on drop.
struct DurableRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl DurableRedis {
    fn start() -> DurableRedis {
        let mut redis = DurableRedis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// SIGKILL, as in a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DurableRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Executions of each step, by (flow id, step), from the ledger's reports.
fn executions(reports: &Mutex<Vec<Value>>) -> HashMap<(String, String), usize> {
    let mut runs = HashMap::new();
    for report in reports.lock().unwrap().iter() {
        let key = (
            report["flow_id"].as_str().unwrap_or_default().to_owned(),
            report["step"].as_str().unwrap_or_default().to_owned(),
        );
        *runs.entry(key).or_insert(0) += 1;
    }
    runs
}

/// Four steps, the middle two slow, each reporting its executions.
fn flow(report: &str) -> String {
    let step = |name: &str, input: &str, mode: &str| {
        format!(
            "  - name: {name}\n    plugin: chaos\n    input: {input}\n    \
             config: {{{mode}report_url: '{report}'}}\n"
        )
    };
    format!(
        "name: four\ninputs:\n  n: {{type: integer}}\nsteps:\n{}{}{}{}outputs:\n  n: '${{steps.d.output.input.n}}'\n",
        step("a", "{n: '${inputs.n}'}", ""),
        step("b", "'${steps.a.output.input}'", "mode: sleep, ms: 800, "),
        step("c", "'${steps.b.output.input}'", "mode: sleep, ms: 800, "),
        step("d", "'${steps.c.output.input}'", ""),
    )
}

fn completed(conn: &mut redis::Connection) -> usize {
    redis::cmd("ZCARD")
        .arg("fh:flows:status:completed")
        .query(conn)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_step_starts_while_redis_is_down_and_none_runs_twice() {
    const RUNS: usize = 30;
    let mut redis = DurableRedis::start();
    let (ledger_port, runs) = ledger();
    let report_url = format!("http://127.0.0.1:{ledger_port}/report");
    let plugins = chaos_plugins(ledger_port);
    let flows = flows_dir(&[("four", &flow(&report_url))]);
    let config = config_file(
        "queue: {lease_ttl_ms: 10000}\n\
         redis: {health_interval_ms: 200, response_timeout_ms: 500}\n",
    );
    let host = Host::start(&[
        ("FLOWHOST_REDIS_URL", redis.url().as_str()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
    ])
    .unwrap();

    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for n in 0..RUNS {
        let resp = client
            .post(host.url("/api/v1/four/execute-async"))
            .json(&json!({"inputs": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        ids.push((body["flow_id"].as_str().unwrap().to_owned(), n));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Mid-run: every run started, most are in a slow step.
    let deadline = Instant::now() + Duration::from_secs(30);
    while executions(&runs).keys().filter(|(_, s)| s == "a").count() < RUNS {
        assert!(Instant::now() < deadline, "the runs did not all start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = completed(&mut redis.connection());
    redis.kill();
    // The outage: longer than a slow step, shorter than a lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = runs.lock().unwrap().len();
    redis.launch();

    let mut conn = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(90);
    while completed(&mut conn) < RUNS {
        assert!(
            Instant::now() < deadline,
            "{} of {RUNS} runs completed 90 s after redis came back; log:\n{}",
            completed(&mut conn),
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, n) in &ids {
        let outputs: Option<String> = redis::cmd("HGET")
            .arg(format!("fh:flow:{{{id}}}"))
            .arg("outputs")
            .query(&mut conn)
            .unwrap();
        let outputs: Value = serde_json::from_str(&outputs.unwrap()).unwrap();
        assert_eq!(outputs["n"], *n, "run {id}");
    }
    let runs = executions(&runs);
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "steps executed more than once: {twice:?}");
    assert_eq!(runs.len(), RUNS * 4, "every step executed");
    let failed_writes = host.metric("flowhost_state_write_errors_total");
    assert!(
        failed_writes >= 1.0,
        "no state write failed: the outage missed the runs"
    );
    println!(
        "{RUNS} runs: {before} completed before the outage, {during} step executions by its \
         end, {failed_writes} state writes failed and were held; every step executed once"
    );
}

fn store_config(url: &str, prefix: &str, owner: &str) -> flowhost_redis::RedisStoreConfig {
    flowhost_redis::RedisStoreConfig {
        url: url.to_owned(),
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
async fn a_lease_that_expired_in_an_outage_is_taken_back_unless_the_flow_was_taken() {
    use flowhost_core::state::{Claim, FlowId, StateStore};
    let redis = DurableRedis::start();
    let prefix = format!("t{}:", &FlowId::new().to_string()[24..]);
    let (here, there) = (
        flowhost_redis::RedisStore::connect(&store_config(&redis.url(), &prefix, "here"))
            .await
            .unwrap(),
        flowhost_redis::RedisStore::connect(&store_config(&redis.url(), &prefix, "there"))
            .await
            .unwrap(),
    );
    let mut conn = redis.connection();
    let lease = |id: FlowId| format!("{prefix}flow:{{{id}}}:lease");

    // Created running, leased here; the lease runs out while this host
    // cannot reach Redis, and nobody takes the flow meanwhile.
    let kept = flowhost_core::testing::flow("lease", 1, 0);
    here.create_flow(&kept).await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(lease(kept.flow_id))
        .query(&mut conn)
        .unwrap();
    let renewal = here.renew_claims().await.unwrap();
    assert!(renewal.lost.is_empty(), "{renewal:?}");
    let value: Option<String> = redis::cmd("GET")
        .arg(lease(kept.flow_id))
        .query(&mut conn)
        .unwrap();
    assert_eq!(value.as_deref(), Some("here 1"));
    assert_eq!(
        there.claim(kept.flow_id).await.unwrap(),
        Claim::HeldElsewhere("here".into())
    );

    // The same, but another host took the flow before this one came back.
    let taken = flowhost_core::testing::flow("lease", 1, 1);
    here.create_flow(&taken).await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(lease(taken.flow_id))
        .query(&mut conn)
        .unwrap();
    assert_eq!(there.claim(taken.flow_id).await.unwrap(), Claim::Granted);
    let _: i64 = redis::cmd("DEL")
        .arg(lease(taken.flow_id))
        .query(&mut conn)
        .unwrap();
    let renewal = here.renew_claims().await.unwrap();
    assert_eq!(renewal.lost, [taken.flow_id]);
}
