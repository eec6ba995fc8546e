//! Plugins that attack while being loaded (`plugins/testing/describe-*`: a
//! `describe()` that sleeps, loops, answers 100 MiB or exhausts memory),
//! beside the ordinary executors, with the real binary and a real Redis: the
//! host listens at once, serves the ordinary flows while the hostile ones
//! load, skips each hostile one with its typed reason, and stays small. The
//! CLI waits for what it needs: `run` for its flow's plugins, `plugins` and
//! `flows validate` for all of them.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flowhost_tests::{
    DOCUMENT, EXECUTORS, Host, RedisServer, config_file, flowhost_command, plugins_dir, repo_root,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The two tests take turns: each loads the hostile plugins, and a host
/// starting beside another one's compiles measures the machine, not itself.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const HOSTILE: [&str; 4] = [
    "describe-sleeps",
    "describe-loops",
    "describe-huge",
    "describe-oom",
];

/// The reason each hostile plugin is skipped for, with the default limits
/// (`describe_timeout_ms` 5 s, 128 MiB of memory).
const REASONS: [(&str, &str); 4] = [
    ("describe-sleeps", "describe() failed: timed out after 5s"),
    ("describe-loops", "describe() failed: timed out after 5s"),
    (
        "describe-huge",
        "describe() returned a description of 104857600 bytes, over the limit of 4096",
    ),
    ("describe-oom", "describe() failed: out of memory"),
];

/// The executors and the hostile plugins, in one folder.
fn mixed_plugins() -> tempfile::TempDir {
    let names: Vec<&str> = EXECUTORS.iter().chain(&HOSTILE).copied().collect();
    plugins_dir(&names)
}

/// `document_analysis`, and `stalled`, a flow of the plugin whose
/// `describe()` sleeps: it waits while that plugin loads, and is an error
/// once it was skipped.
fn flows() -> tempfile::TempDir {
    let document = std::fs::read_to_string(repo_root().join("flows/document_analysis.yaml"))
        .expect("flows/document_analysis.yaml");
    flowhost_tests::flows_dir(&[
        ("document_analysis", &document),
        (
            "stalled",
            "name: stalled\nsteps:\n  - name: s\n    plugin: describe-sleeps\n",
        ),
    ])
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

async fn get(client: &reqwest::Client, host: &Host, path: &str) -> Value {
    let resp = client.get(host.url(path)).send().await.unwrap();
    resp.json().await.unwrap()
}

/// Polls `check` every 20 ms until it gives `Some`; panics after `timeout`.
async fn until<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v.as_str().or(v["name"].as_str()).unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_at_load_neither_delay_nor_take_down_the_host() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().unwrap();
    let (plugins, flows) = (mixed_plugins(), flows());
    let client = reqwest::Client::new();
    let spawned = Instant::now();
    let host = Host::spawn(&[
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
        ("FLOWHOST_REDIS_URL", &redis.url()),
    ])
    .unwrap();

    // Listening: from spawn to the first answer of /healthz.
    let first: Value = loop {
        if let Ok(resp) = client.get(host.url("/healthz")).send().await {
            break resp.json().await.unwrap();
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(30),
            "never listened; log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let listening = spawned.elapsed();
    println!("listening {listening:?} after spawn; first /healthz: {first}");
    assert!(
        listening < Duration::from_secs(1),
        "took {listening:?} to listen; log:\n{}",
        host.log()
    );
    let loading = names(&first["plugins"]["loading"]);
    assert!(loading.contains(&"describe-sleeps".to_owned()), "{first}");

    // A flow of a plugin still loading waits; it is not an error.
    let listing = get(&client, &host, "/api/v1/flows").await;
    let waiting = &listing["waiting"];
    assert!(
        waiting
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "stalled" && w["plugins"] == json!(["describe-sleeps"])),
        "{listing}"
    );
    assert!(
        listing["errors"].as_array().unwrap().is_empty(),
        "{listing}"
    );
    // Running it meanwhile is a 503 that says what it waits for, not a 404.
    let early = client
        .post(host.url("/api/v1/stalled/execute"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 503);
    assert_eq!(early.headers()["retry-after"], "1");
    let early: Value = early.json().await.unwrap();
    assert_eq!(early["code"], "flow_loading", "{early}");
    assert!(
        early["error"].as_str().unwrap().contains("describe-sleeps"),
        "{early}"
    );

    // The ordinary flow is served as soon as its plugins are loaded.
    until(
        "document_analysis served",
        Duration::from_secs(60),
        async || {
            let listing = get(&client, &host, "/api/v1/flows").await;
            names(&listing["flows"])
                .contains(&"document_analysis".to_owned())
                .then_some(())
        },
    )
    .await;
    let resp = client
        .post(host.url("/api/v1/document_analysis/execute"))
        .json(&json!({ "inputs": { "text": DOCUMENT } }))
        .send()
        .await
        .unwrap();
    let served_at = spawned.elapsed();
    let result: Value = resp.json().await.unwrap();
    assert_eq!(result["status"], "completed", "{result}");
    let during = get(&client, &host, "/healthz").await;
    println!(
        "document_analysis completed {served_at:?} after spawn; still loading then: {}",
        during["plugins"]["loading"]
    );

    // Loading ends: every hostile plugin skipped with its typed reason.
    let done = until("loading over", Duration::from_secs(60), async || {
        let health = get(&client, &host, "/healthz").await;
        names(&health["plugins"]["loading"])
            .is_empty()
            .then_some(health)
    })
    .await;
    println!("settled {:?} after spawn: {done}", spawned.elapsed());
    assert_eq!(done["plugins"]["loaded"], EXECUTORS.len(), "{done}");
    assert_eq!(done["plugins"]["skipped"], HOSTILE.len(), "{done}");

    let resp = client
        .get(host.url("/api/v1/plugins"))
        .send()
        .await
        .unwrap();
    let body = resp.bytes().await.unwrap();
    println!("/api/v1/plugins: {} bytes", body.len());
    assert!(body.len() < 1 << 20, "{} bytes", body.len());
    let listing: Value = serde_json::from_slice(&body).unwrap();
    assert!(names(&listing["loading"]).is_empty(), "{listing}");
    let mut loaded = names(&listing["plugins"]);
    loaded.sort();
    let mut executors: Vec<String> = EXECUTORS.iter().map(|s| s.to_string()).collect();
    executors.sort();
    assert_eq!(loaded, executors);
    let skipped = listing["skipped"].as_array().unwrap();
    for (file, reason) in REASONS {
        let s = skipped
            .iter()
            .find(|s| {
                s["path"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/{file}.wasm"))
            })
            .unwrap_or_else(|| panic!("{file} not skipped: {listing}"));
        assert!(
            s["reason"].as_str().unwrap().contains(reason),
            "{file}: {s}"
        );
    }

    // Once loading is over, the flow of a skipped plugin is an error.
    let listing = get(&client, &host, "/api/v1/flows").await;
    assert!(
        listing["waiting"].as_array().unwrap().is_empty(),
        "{listing}"
    );
    assert!(
        listing["errors"]
            .to_string()
            .contains("unknown plugin `describe-sleeps`"),
        "{listing}"
    );
    assert!(names(&listing["flows"]).contains(&"document_analysis".to_owned()));

    let rss = rss_kib(host.pid());
    println!("host RSS after loading: {} MiB", rss / 1024);
    assert!(rss < 300 * 1024, "RSS {rss} KiB");
    let again = client
        .post(host.url("/api/v1/document_analysis/execute"))
        .json(&json!({ "inputs": { "text": DOCUMENT } }))
        .send()
        .await
        .unwrap();
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["status"], "completed", "{again}");
}

/// Runs `cmd` to its end, or kills it after `patience` and fails.
fn finish(mut cmd: Command, patience: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            child
                .stdout
                .take()
                .unwrap()
                .read_to_end(&mut stdout)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_end(&mut stderr)
                .unwrap();
            return Output {
                status,
                stdout,
                stderr,
            };
        }
        if started.elapsed() > patience {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {patience:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_cli_waits_for_the_plugins_it_needs() {
    let _turn = ONE_AT_A_TIME.blocking_lock();
    let (plugins, flows) = (mixed_plugins(), flows());
    let command = |args: &[&str], config: Option<&std::path::Path>| {
        let mut cmd = flowhost_command();
        cmd.args(args)
            .env("FLOWHOST_PLUGINS_DIR", plugins.path())
            .env("FLOWHOST_FLOWS_DIR", flows.path());
        if let Some(config) = config {
            cmd.env("FLOWHOST_CONFIG", config);
        }
        cmd
    };

    // `run` waits for its flow's plugins only: with describe() allowed ten
    // minutes, the sleeping plugin is still loading when the run ends.
    let patient = config_file("limits: {describe_timeout_ms: 600000, step_timeout_ms: 600000}\n");
    let input = json!({ "text": DOCUMENT }).to_string();
    let out = finish(
        command(
            &["run", "document_analysis", "--input", &input],
            Some(patient.path()),
        ),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "completed", "{result}");

    // `plugins` and `flows validate` answer once every file is loaded or
    // skipped.
    let out = finish(command(&["plugins"], None), Duration::from_secs(120));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (file, reason) in REASONS {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("skipped") && l.contains(file) && l.contains(reason)),
            "{file}: {stdout}"
        );
    }
    for name in EXECUTORS {
        assert!(stdout.contains(&format!("loaded   {name}")), "{stdout}");
    }
    let out = finish(
        command(&["flows", "validate"], None),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok     document_analysis"), "{stdout}");
    assert!(
        stdout.contains("unknown plugin `describe-sleeps`"),
        "{stdout}"
    );
}
