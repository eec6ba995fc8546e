//! Idempotency keys over HTTP, with the real binary and a real redis-server:
//! a request refused with 429 (the shared queue full) or 409 (its `flow_id`
//! taken by another run) leaves its `Idempotency-Key` free, so the client's
//! retry starts the run; a sync `execute` replayed while its run is running
//! answers the run's end, waiting for it, and a 408 once the request's time
//! limit passes.

use std::time::{Duration, Instant};

use flowhost_tests::{Host, RedisServer, config_file, flows_dir, plugins_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `ms` of sleep between two quick steps.
fn slow_flow(name: &str, ms: u64) -> String {
    format!(
        "name: {name}
inputs:
  n: {{type: integer}}
steps:
  - name: first
    plugin: chaos
    input: {{n: '${{inputs.n}}'}}
  - name: wait
    plugin: chaos
    input: '${{steps.first.output.input}}'
    config: {{mode: sleep, ms: {ms}}}
outputs:
  n: '${{steps.wait.output.input.n}}'
"
    )
}

/// A host on `redis` serving `slow` (3 s), `brief` (1.5 s) and `quick`
/// (no sleep), with `config`.
struct Setup {
    host: Host,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _config: tempfile::NamedTempFile,
}

fn start(redis: &RedisServer, config: &str) -> Setup {
    let plugins = plugins_dir(&["chaos"]);
    let flows = flows_dir(&[
        ("slow", &slow_flow("slow", 3000)),
        ("brief", &slow_flow("brief", 1500)),
        ("quick", &slow_flow("quick", 0)),
    ]);
    let config = config_file(config);
    let host = Host::start(&[
        ("FLOWHOST_REDIS_URL", redis.url().as_str()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
    ])
    .unwrap();
    Setup {
        host,
        _dirs: (plugins, flows),
        _config: config,
    }
}

async fn post(host: &Host, path: &str, body: Value, key: Option<&str>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().post(host.url(path)).json(&body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(host: &Host, path: &str) -> (StatusCode, Value) {
    let resp = reqwest::get(host.url(path)).await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Follows a status URL until the run finished; its final state.
async fn finished(host: &Host, status_url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(host, status_url).await;
        assert_eq!(status, StatusCode::OK, "{status_url}: {body}");
        if ["completed", "failed", "cancelled"].contains(&body["status"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{status_url} did not finish: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_refused_429_is_free_for_the_retry_after_retry_after() {
    let redis = RedisServer::start().unwrap();
    let setup = start(&redis, "submit: {max_in_flight: 2}\n");
    let host = &setup.host;
    // Two slow runs fill the shared queue.
    let mut filling = Vec::new();
    for n in 0..2 {
        let (status, body) = post(
            host,
            "/api/v1/slow/execute-async",
            json!({"inputs": {"n": n}}),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        filling.push(body["status_url"].as_str().unwrap().to_owned());
    }
    let resp = reqwest::Client::new()
        .post(host.url("/api/v1/quick/execute-async"))
        .header("Idempotency-Key", "order-429")
        .json(&json!({"inputs": {"n": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    // The client waits Retry-After, and as long as the queue stays full.
    for url in &filling {
        finished(host, url).await;
    }
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, body) = post(
        host,
        "/api/v1/quick/execute-async",
        json!({"inputs": {"n": 7}}),
        Some("order-429"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the retry of a request refused with 429: {body}"
    );
    let url = body["status_url"].as_str().unwrap().to_owned();
    let end = finished(host, &url).await;
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(end["outputs"]["n"], 7);

    // The key names that run now.
    let (status, again) = post(
        host,
        "/api/v1/quick/execute-async",
        json!({"inputs": {"n": 7}}),
        Some("order-429"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["flow_id"], body["flow_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_refused_409_for_another_runs_id_is_free_for_the_resend() {
    let redis = RedisServer::start().unwrap();
    let setup = start(&redis, "");
    let host = &setup.host;
    // A run of another flow, whose id the request then names by mistake.
    let (status, other) = post(
        host,
        "/api/v1/brief/execute",
        json!({"inputs": {"n": 1}}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{other}");
    let taken = other["flow_id"].as_str().unwrap().to_owned();

    let (status, body) = post(
        host,
        "/api/v1/quick/execute-async",
        json!({"inputs": {"n": 2}, "flow_id": taken}),
        Some("order-409"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Resent without the flow id: a run of its own, whose status URL works.
    let (status, body) = post(
        host,
        "/api/v1/quick/execute-async",
        json!({"inputs": {"n": 2}}),
        Some("order-409"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_ne!(body["flow_id"], taken, "the key names the other flow's run");
    let url = body["status_url"].as_str().unwrap().to_owned();
    let end = finished(host, &url).await;
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(end["outputs"]["n"], 2);
    // The run whose id was named is untouched.
    let (status, brief) = get(host, &format!("/api/v1/brief/status/{taken}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(brief["status"], "completed");
    assert_eq!(brief["outputs"]["n"], 1);
}

/// Waits until the run an idempotency key names is recorded running.
async fn wait_running(host: &Host, flow: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = get(host, &format!("/api/v1/{flow}/active-flows?status=running")).await;
        if let Some(id) = list["flows"]
            .as_array()
            .and_then(|f| f.first())
            .and_then(|f| f["flow_id"].as_str())
        {
            return id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {flow} run is running: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_replay_while_the_run_runs_answers_its_end() {
    let redis = RedisServer::start().unwrap();
    let setup = start(&redis, "");
    let host = &setup.host;
    let url = host.url("/api/v1/slow/execute");
    let first = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(url)
            .header("Idempotency-Key", "order-sync")
            .json(&json!({"inputs": {"n": 5}}))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json::<Value>().await.unwrap())
    });
    let id = wait_running(host, "slow").await;

    let (status, replay) = post(
        host,
        "/api/v1/slow/execute",
        json!({"inputs": {"n": 5}}),
        Some("order-sync"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replay}");
    assert_eq!(replay["flow_id"], id.as_str());
    assert_eq!(
        replay["status"], "completed",
        "the replay answered before its run ended: {replay}"
    );
    assert_eq!(replay["outputs"]["n"], 5);
    let (status, original) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(original["outputs"], replay["outputs"]);
    assert_eq!(original["flow_id"], replay["flow_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_replay_waits_no_longer_than_the_request_time_limit() {
    let redis = RedisServer::start().unwrap();
    let setup = start(&redis, "limits: {request_timeout_ms: 1000}\n");
    let host = &setup.host;
    let (status, accepted) = post(
        host,
        "/api/v1/slow/execute-async",
        json!({"inputs": {"n": 3}}),
        Some("order-408"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    wait_running(host, "slow").await;

    let (status, body) = post(
        host,
        "/api/v1/slow/execute",
        json!({"inputs": {"n": 3}}),
        Some("order-408"),
    )
    .await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");

    // Once the run ended, the replay answers it at once.
    let url = accepted["status_url"].as_str().unwrap().to_owned();
    finished(host, &url).await;
    let (status, body) = post(
        host,
        "/api/v1/slow/execute",
        json!({"inputs": {"n": 3}}),
        Some("order-408"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["flow_id"], accepted["flow_id"]);
    assert_eq!(body["status"], "completed");
    assert_eq!(body["outputs"]["n"], 3);
}
