//! Durable execution with real processes: kill -9 mid-flow and resume; SIGTERM
//! pauses and a new host resumes on start; timeouts; cancel while a step runs;
//! retry of a failed step; parallel branches. Plugin invocations are counted
//! through the new host's own metrics.

use std::time::{Duration, Instant};

use flowhost_tests::{
    Host, RedisServer, config_file, eventually, flows_dir, plugins_dir, redis_flow_field,
    redis_flow_ids, redis_step,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLUGINS: [&str; 3] = ["text-normalize", "text-stats", "chaos"];

/// a → slow (chaos, `mode`) → c; the outputs come from a and c only, so an
/// interrupted run and an uninterrupted one must agree.
fn three_step_flow(name: &str, slow_config: &str, extra: &str) -> String {
    format!(
        "name: {name}
inputs:
  text: {{type: string}}
steps:
  - name: a
    plugin: text-normalize
    input: {{text: '${{inputs.text}}'}}
  - name: slow
    plugin: chaos
    input: '${{steps.a.output}}'
    config: {slow_config}
{extra}
  - name: c
    plugin: text-stats
    input: {{text: '${{steps.a.output.text}}'}}
    depends_on: [slow]
outputs:
  text: '${{steps.a.output.text}}'
  words: '${{steps.c.output.words}}'
"
    )
}

fn start_host(
    redis: &RedisServer,
    plugins: &tempfile::TempDir,
    flows: &tempfile::TempDir,
    config: &tempfile::NamedTempFile,
) -> Host {
    Host::start(&[
        ("FLOWHOST_REDIS_URL", &redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
    ])
    .unwrap()
}

/// Starts an execute request in the background; returns the join handle of
/// its response body (an error if the host died first).
fn execute_in_background(
    host: &Host,
    flow: &str,
    text: &str,
) -> tokio::task::JoinHandle<Result<Value, reqwest::Error>> {
    let url = host.url(&format!("/api/v1/{flow}/execute"));
    let body = json!({"inputs": {"text": text}}).to_string();
    tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .body(body)
            .send()
            .await?
            .json()
            .await
    })
}

/// Waits until Redis shows `step` of some run of `flow` as running; returns
/// the flow id.
fn wait_for_running_step(redis: &RedisServer, flow: &str, step: &str) -> String {
    let mut conn = redis.connection();
    eventually(
        &format!("{flow}.{step} running"),
        Duration::from_secs(20),
        || {
            redis_flow_ids(&mut conn).into_iter().find(|id| {
                redis_flow_field(&mut conn, id, "flow_name").as_deref() == Some(flow)
                    && redis_step(&mut conn, id, step).is_some_and(|s| s["status"] == "running")
            })
        },
    )
}

async fn metrics(host: &Host) -> String {
    reqwest::get(host.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn post(url: String) -> (StatusCode, Value) {
    let resp = reqwest::Client::new().post(url).send().await.unwrap();
    (resp.status(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flow_then_resume_never_reruns_completed_steps() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&PLUGINS);
    let flows = flows_dir(&[(
        "slow",
        &three_step_flow("slow", "{mode: sleep, ms: 1500}", ""),
    )]);
    // The restarted host keeps its name, so it may take back at once the
    // lease its killed run held on the flow.
    let config = config_file("recovery: {resume_on_start: false}\nqueue: {host_id: one-host}\n");
    let text = "Durable   flows survive a crash. Completed steps never run twice.";

    let mut host = start_host(&redis, &plugins, &flows, &config);
    let pending = execute_in_background(&host, "slow", text);
    let id = wait_for_running_step(&redis, "slow", "slow");
    let mut conn = redis.connection();
    let a_before = redis_step(&mut conn, &id, "a").unwrap();
    assert_eq!(a_before["status"], "completed");
    host.kill();
    assert!(
        pending.await.unwrap().is_err(),
        "the request died with the host"
    );
    assert_eq!(
        redis_flow_field(&mut conn, &id, "status").as_deref(),
        Some("running")
    );
    assert_eq!(
        redis_step(&mut conn, &id, "slow").unwrap()["status"],
        "running"
    );

    let host = start_host(&redis, &plugins, &flows, &config);
    let (status, resumed) = post(host.url(&format!("/api/v1/slow/resume/{id}"))).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["status"], "completed", "{resumed}");

    // a kept its original state: same start time, one attempt, not run here.
    let a_after = redis_step(&mut conn, &id, "a").unwrap();
    assert_eq!(a_after, a_before);
    let m = metrics(&host).await;
    assert!(!m.contains(r#"step="a""#), "a ran again:\n{m}");
    assert!(m.contains(r#"flowhost_step_runs_total{flow="slow",step="slow",plugin="chaos",outcome="completed"} 1"#), "{m}");
    // The interrupted attempt ran again under the same attempt number, so the
    // plugin saw the same idempotency key.
    let slow = redis_step(&mut conn, &id, "slow").unwrap();
    assert_eq!(slow["attempt"], 1);
    assert_eq!(slow["outputs"]["idempotency_key"], format!("{id}:slow:1"));
    assert_eq!(
        redis_flow_field(&mut conn, &id, "status").as_deref(),
        Some("completed")
    );

    // The outputs equal those of an uninterrupted run.
    let fresh = execute_in_background(&host, "slow", text)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh["status"], "completed");
    assert_eq!(fresh["outputs"], resumed["outputs"]);

    // A completed flow cannot be resumed; an unknown one is not found.
    let (status, body) = post(host.url(&format!("/api/v1/slow/resume/{id}"))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap().contains("is completed"),
        "{body}"
    );
    let (status, _) =
        post(host.url("/api/v1/slow/resume/0193a7c4-5e1b-7cc0-9f3a-2d4e5f607182")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_pauses_flows_and_the_next_host_resumes_them() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&PLUGINS);
    // `quick`'s slow step ends within the grace period; `stubborn`'s does not.
    let flows = flows_dir(&[
        (
            "quick",
            &three_step_flow("quick", "{mode: sleep, ms: 1500}", ""),
        ),
        (
            "stubborn",
            &three_step_flow("stubborn", "{mode: sleep, ms: 6000}", ""),
        ),
    ]);
    let config = config_file("shutdown: {grace_period_ms: 3000}\n");
    let mut host = start_host(&redis, &plugins, &flows, &config);
    let quick = execute_in_background(&host, "quick", "One two three.");
    let stubborn = execute_in_background(&host, "stubborn", "Four five six.");
    let quick_id = wait_for_running_step(&redis, "quick", "slow");
    let stubborn_id = wait_for_running_step(&redis, "stubborn", "slow");

    host.signal("TERM");
    let status = host
        .wait_exit(Duration::from_secs(10))
        .expect("host exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", host.log());
    // The waiting requests were answered with the paused state.
    assert_eq!(
        quick.await.unwrap().unwrap()["status"],
        "paused",
        "log:\n{}",
        host.log()
    );
    assert_eq!(stubborn.await.unwrap().unwrap()["status"], "paused");

    let mut conn = redis.connection();
    assert_eq!(
        redis_flow_field(&mut conn, &quick_id, "status").as_deref(),
        Some("paused")
    );
    assert_eq!(
        redis_step(&mut conn, &quick_id, "slow").unwrap()["status"],
        "completed"
    );
    assert_eq!(
        redis_step(&mut conn, &quick_id, "c").unwrap()["status"],
        "pending"
    );
    assert_eq!(
        redis_flow_field(&mut conn, &stubborn_id, "status").as_deref(),
        Some("paused")
    );
    let interrupted = redis_step(&mut conn, &stubborn_id, "slow").unwrap();
    assert_eq!(interrupted["status"], "pending", "{interrupted}");
    assert_eq!(interrupted["error"], "interrupted by shutdown");
    let quick_slow_before = redis_step(&mut conn, &quick_id, "slow").unwrap();

    // A new host (resume_on_start is on by default) finishes both.
    let host = start_host(&redis, &plugins, &flows, &config);
    for id in [&quick_id, &stubborn_id] {
        eventually("resumed flow completes", Duration::from_secs(20), || {
            (redis_flow_field(&mut conn, id, "status").as_deref() == Some("completed"))
                .then_some(())
        });
    }
    assert_eq!(
        redis_step(&mut conn, &quick_id, "slow").unwrap(),
        quick_slow_before
    );
    let m = metrics(&host).await;
    assert!(
        !m.contains(r#"flow="quick",step="a""#) && !m.contains(r#"flow="quick",step="slow""#),
        "{m}"
    );
    assert!(m.contains(r#"flowhost_step_runs_total{flow="quick",step="c",plugin="text-stats",outcome="completed"} 1"#), "{m}");
    assert!(m.contains(r#"flowhost_step_runs_total{flow="stubborn",step="slow",plugin="chaos",outcome="completed"} 1"#), "{m}");
    assert!(!m.contains(r#"flow="stubborn",step="a""#), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_plugin_times_out_without_blocking_others() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&PLUGINS);
    let once = "    timeout_ms: 300\n    retry: {max_attempts: 1}";
    let flows = flows_dir(&[
        (
            "spinning",
            &three_step_flow("spinning", "{mode: loop}", once),
        ),
        (
            "sleeping",
            &three_step_flow("sleeping", "{mode: sleep, ms: 60000}", once),
        ),
        ("fine", &three_step_flow("fine", "{mode: ok}", "")),
    ]);
    let config = config_file("");
    let host = start_host(&redis, &plugins, &flows, &config);
    let spinning = execute_in_background(&host, "spinning", "x");
    let sleeping = execute_in_background(&host, "sleeping", "x");
    // While two plugins run away, another flow completes.
    let fine = execute_in_background(&host, "fine", "x")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fine["status"], "completed");
    for run in [
        spinning.await.unwrap().unwrap(),
        sleeping.await.unwrap().unwrap(),
    ] {
        assert_eq!(run["status"], "failed", "{run}");
        let slow = &run["steps"][1];
        assert_eq!(slow["error"], "timed out after 300ms", "{run}");
        let took = slow["execution_time"].as_f64().unwrap();
        assert!((0.3..1.0).contains(&took), "stopped after {took} s");
    }
    let health: Value = reqwest::get(host.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_a_running_step_promptly() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&PLUGINS);
    let flows = flows_dir(&[
        (
            "blocked",
            &three_step_flow("blocked", "{mode: sleep, ms: 60000}", ""),
        ),
        ("spinning", &three_step_flow("spinning", "{mode: loop}", "")),
    ]);
    let config = config_file("");
    let host = start_host(&redis, &plugins, &flows, &config);
    let client = reqwest::Client::new();
    for flow in ["blocked", "spinning"] {
        let pending = execute_in_background(&host, flow, "x");
        let id = wait_for_running_step(&redis, flow, "slow");
        let sent = chrono::Utc::now();
        let clock = Instant::now();
        let resp = client
            .delete(host.url(&format!("/api/v1/{flow}/flows/{id}")))
            .send()
            .await
            .unwrap();
        let answered = clock.elapsed();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "cancelled", "{body}");
        assert_eq!(body["steps"][0]["status"], "completed");
        assert_eq!(body["steps"][1]["status"], "cancelled");
        assert_eq!(body["steps"][2]["status"], "pending");
        let stopped: chrono::DateTime<chrono::Utc> = body["steps"][1]["completed_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let to_stop = (stopped - sent).num_milliseconds();
        println!(
            "{flow}: DELETE answered in {answered:?}; running step stopped {to_stop} ms after the DELETE was sent"
        );
        assert!(to_stop < 100, "step stopped {to_stop} ms after DELETE");
        assert_eq!(pending.await.unwrap().unwrap()["status"], "cancelled");

        // Cancelling again says what state it is in; resuming is refused.
        let again = client
            .delete(host.url(&format!("/api/v1/{flow}/flows/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::OK);
        let (status, body) = post(host.url(&format!("/api/v1/{flow}/resume/{id}"))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_resets_a_failed_step_and_continues() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&PLUGINS);
    let policy = "    retry: {max_attempts: 2, initial_delay_ms: 10, jitter: 0}";
    let flows = flows_dir(&[(
        "flaky",
        &three_step_flow("flaky", "{mode: retryable, fail_times: 2}", policy),
    )]);
    let config = config_file("");
    let host = start_host(&redis, &plugins, &flows, &config);
    let run = execute_in_background(&host, "flaky", "a b c")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["steps"][1]["attempt"], 2);
    assert_eq!(
        run["steps"][1]["error"],
        "failed (retryable): chaos: attempt 2 of 2 fails"
    );
    assert_eq!(run["steps"][2]["status"], "pending");
    let id = run["flow_id"].as_str().unwrap();

    let client = reqwest::Client::new();
    let (status, body) = post(host.url(&format!("/api/v1/flaky/retry/{id}/a"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("only a failed step can be retried")
    );
    let (status, _) = post(host.url(&format!("/api/v1/flaky/retry/{id}/nope"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, retried) = post(host.url(&format!("/api/v1/flaky/retry/{id}/slow"))).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["status"], "completed", "{retried}");
    assert_eq!(retried["steps"][1]["attempt"], 3);
    assert_eq!(retried["outputs"]["words"], 3);
    let m = metrics(&host).await;
    assert!(m.contains(r#"flowhost_step_runs_total{flow="flaky",step="slow",plugin="chaos",outcome="failed"} 2"#), "{m}");
    assert!(
        m.contains(r#"flowhost_step_retries_total{flow="flaky",step="slow",plugin="chaos"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"flowhost_step_runs_total{flow="flaky",step="a",plugin="text-normalize",outcome="completed"} 1"#), "{m}");
    // A completed flow cannot be cancelled.
    let resp = client
        .delete(host.url(&format!("/api/v1/flaky/flows/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_steps_run_at_the_same_time() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&PLUGINS);
    let flow = "name: fan
inputs:
  text: {type: string}
steps:
  - {name: a, plugin: chaos, config: {mode: ok}}
  - {name: left, plugin: chaos, config: {mode: sleep, ms: 500}, depends_on: [a]}
  - {name: right, plugin: chaos, config: {mode: sleep, ms: 500}, depends_on: [a]}
  - {name: join, plugin: chaos, depends_on: [left, right]}
";
    let flows = flows_dir(&[("fan", flow)]);
    let config = config_file("");
    let host = start_host(&redis, &plugins, &flows, &config);
    let run = execute_in_background(&host, "fan", "x")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run["status"], "completed", "{run}");
    let at = |i: usize, field: &str| -> chrono::DateTime<chrono::Utc> {
        run["steps"][i][field].as_str().unwrap().parse().unwrap()
    };
    // left and right overlap: each started before the other finished.
    assert!(
        at(1, "started_at") < at(2, "completed_at") && at(2, "started_at") < at(1, "completed_at"),
        "{run}"
    );
    assert!(
        at(3, "started_at") >= at(1, "completed_at")
            && at(3, "started_at") >= at(2, "completed_at")
    );
    let total = run["total_execution_time"].as_f64().unwrap();
    assert!(total < 0.95, "two 500 ms steps in parallel took {total} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_does_not_stop_its_flow() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&PLUGINS);
    let flows = flows_dir(&[(
        "slow",
        &three_step_flow("slow", "{mode: sleep, ms: 800}", ""),
    )]);
    let config = config_file("recovery: {resume_on_start: false}\n");
    let host = start_host(&redis, &plugins, &flows, &config);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = client
        .post(host.url("/api/v1/slow/execute"))
        .body(r#"{"inputs": {"text": "still here"}}"#)
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up before the flow ended");
    let mut conn = redis.connection();
    let id = redis_flow_ids(&mut conn)
        .pop()
        .expect("the flow was recorded");
    eventually(
        "the flow completes without its client",
        Duration::from_secs(10),
        || {
            (redis_flow_field(&mut conn, &id, "status").as_deref() == Some("completed"))
                .then_some(())
        },
    );
    assert!(metrics(&host).await.contains("flowhost_flows_in_flight 0"));
}
