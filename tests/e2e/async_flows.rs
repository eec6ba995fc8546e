//! Background runs over HTTP with the real binary and a real redis-server:
//! `execute-async` answers 202 and the status route shows the run step by
//! step; `active-flows` lists runs by status and start time, a page at a
//! time; an `Idempotency-Key` gives the same run; a full host answers 429 and
//! an unreachable Redis 503.

use std::time::Duration;

use flowhost_tests::{Host, RedisServer, config_file, flows_dir, plugins_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SLOW: &str = "name: slow
inputs:
  text: {type: string}
steps:
  - name: first
    plugin: text-normalize
    input: {text: '${inputs.text}'}
  - name: wait
    plugin: chaos
    input: '${steps.first.output}'
    config: {mode: sleep, ms: 700}
  - name: count
    plugin: text-stats
    input: {text: '${steps.first.output.text}'}
    depends_on: [wait]
outputs:
  words: '${steps.count.output.words}'
";

async fn submit(
    host: &Host,
    text: &str,
    key: Option<&str>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new()
        .post(host.url("/api/v1/slow/execute-async"))
        .body(json!({"inputs": {"text": text}}).to_string());
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, resp.json().await.unwrap(), headers)
}

async fn get(host: &Host, path: &str) -> (StatusCode, Value) {
    let resp = reqwest::get(host.url(path)).await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

fn host_with(
    redis_url: &str,
    config: &tempfile::NamedTempFile,
) -> (Host, tempfile::TempDir, tempfile::TempDir) {
    let plugins = plugins_dir(&["text-normalize", "text-stats", "chaos"]);
    let long =
        "name: long\nsteps:\n  - {name: wait, plugin: chaos, config: {mode: sleep, ms: 20000}}\n";
    let flows = flows_dir(&[("slow", SLOW), ("long", long)]);
    let host = Host::start(&[
        ("FLOWHOST_REDIS_URL", redis_url),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
    ])
    .unwrap();
    (host, plugins, flows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_async_answers_202_and_status_shows_the_progress() {
    let redis = RedisServer::start().unwrap();
    let config = config_file("");
    let (host, _p, _f) = host_with(&redis.url(), &config);
    let (status, body, _) = submit(&host, "three words here", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["flow_id"].as_str().unwrap().to_owned();
    assert_eq!(body["status_url"], format!("/api/v1/slow/status/{id}"));
    // Polling shows the run step by step, then its outputs.
    let mut seen_running = false;
    let mut last = Value::Null;
    for _ in 0..200 {
        let (code, run) = get(&host, &format!("/api/v1/slow/status/{id}")).await;
        assert_eq!(code, StatusCode::OK, "{run}");
        if run["status"] == "running" && run["steps"][1]["status"] == "running" {
            assert_eq!(run["steps"][0]["status"], "completed");
            assert_eq!(run["steps"][2]["status"], "pending");
            seen_running = true;
        }
        last = run;
        if last["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen_running, "never saw the middle step running");
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(last["outputs"]["words"], 3);
    let mut conn = redis.connection();
    assert_eq!(
        flowhost_tests::redis_flow_field(&mut conn, &id, "status").as_deref(),
        Some("completed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_flows_lists_by_status_and_time_a_page_at_a_time() {
    let redis = RedisServer::start().unwrap();
    let config = config_file("");
    let (host, _p, _f) = host_with(&redis.url(), &config);
    let before = chrono::Utc::now();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, body, _) = submit(&host, &format!("run {i}"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.push(body["flow_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let listed = |page: &Value| -> Vec<String> {
        page["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["flow_id"].as_str().unwrap().to_owned())
            .collect()
    };
    // While they run: the default lists unfinished runs, newest first.
    let (_, page) = get(&host, "/api/v1/slow/active-flows").await;
    assert_eq!(listed(&page), newest_first, "{page}");
    // Two pages.
    let (_, first) = get(&host, "/api/v1/slow/active-flows?limit=2").await;
    assert_eq!(listed(&first), newest_first[..2]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = get(
        &host,
        &format!("/api/v1/slow/active-flows?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(listed(&second), newest_first[2..]);
    assert!(second["next_cursor"].is_null());
    // After they complete: by status, and by start time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, running) = get(&host, "/api/v1/slow/active-flows?status=running").await;
    assert!(listed(&running).is_empty(), "{running}");
    let (_, done) = get(&host, "/api/v1/slow/active-flows?status=completed,failed").await;
    assert_eq!(listed(&done), newest_first);
    let after =
        (before + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, none) = get(
        &host,
        &format!("/api/v1/slow/active-flows?status=all&started_after={after}"),
    )
    .await;
    assert!(listed(&none).is_empty());
    let since = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (_, all) = get(
        &host,
        &format!("/api/v1/slow/active-flows?status=all&started_after={since}"),
    )
    .await;
    assert_eq!(listed(&all), newest_first);
    let (code, bad) = get(&host, "/api/v1/slow/active-flows?status=sleeping").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");

    // Cleanup: finished runs older than 1 s go, from the CLI and the API.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A long run, still going while the prunes run.
    let resp = reqwest::Client::new()
        .post(host.url("/api/v1/long/execute-async"))
        .body(r#"{"inputs": {}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let out = flowhost_tests::flowhost_command()
        .args(["flows", "prune", "--older-than", "1s"])
        .env("FLOWHOST_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "removed 3 finished flow(s)"
    );
    let resp = reqwest::Client::new()
        .delete(host.url("/api/v1/admin/flows?older_than=1s"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["removed"], 0);
    let (_, left) = get(&host, "/api/v1/slow/active-flows?status=all").await;
    assert!(listed(&left).is_empty(), "{left}");
    let (_, long) = get(&host, "/api/v1/long/active-flows?status=all").await;
    assert_eq!(
        long["flows"][0]["status"], "running",
        "the running one stays: {long}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_gives_the_same_run() {
    let redis = RedisServer::start().unwrap();
    let config = config_file("");
    let (host, _p, _f) = host_with(&redis.url(), &config);
    let (_, a, _) = submit(&host, "once only", Some("order-42")).await;
    let (status, b, _) = submit(&host, "once only", Some("order-42")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(a["flow_id"], b["flow_id"]);
    let (_, c, _) = submit(&host, "once only", Some("order-43")).await;
    assert_ne!(a["flow_id"], c["flow_id"]);
    // The sync route honours the key too.
    let sync = reqwest::Client::new()
        .post(host.url("/api/v1/slow/execute"))
        .header("Idempotency-Key", "order-42")
        .body(r#"{"inputs": {"text": "once only"}}"#)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(sync["flow_id"], a["flow_id"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = reqwest::get(host.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"flowhost_flows_started_total{flow="slow"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_answers_429_and_an_unreachable_redis_503() {
    let redis = RedisServer::start().unwrap();
    let config = config_file("submit: {max_in_flight: 2}\n");
    let (host, _p, _f) = host_with(&redis.url(), &config);
    for i in 0..2 {
        let (status, _, _) = submit(&host, &format!("fill {i}"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, body, headers) = submit(&host, "one too many", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["code"], "busy");

    let port = flowhost_tests::free_port();
    let config = config_file("");
    let (down, _p2, _f2) = host_with(&format!("redis://127.0.0.1:{port}/"), &config);
    let (status, body, _) = submit(&down, "not durable", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("redis is unreachable"),
        "{body}"
    );
}
