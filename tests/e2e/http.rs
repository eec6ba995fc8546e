//! End to end over HTTP: the real binary, a real redis-server, the real
//! plugins. Runs the example flows, reads every step's state back from Redis,
//! checks /metrics, and sends each kind of bad request.

use std::time::Duration;

use flowhost_tests::{DOCUMENT, EXECUTORS, Host, RedisServer, plugins_dir, repo_root};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(url: &str, body: &str) -> (StatusCode, Value) {
    // No Content-Type, as `curl -d` would send it (form-encoded), on purpose.
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn get(url: &str) -> (StatusCode, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

fn hgetall(conn: &mut redis::Connection, key: &str) -> std::collections::HashMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(conn).unwrap()
}

#[tokio::test]
async fn document_analysis_runs_over_http_and_every_step_is_in_redis() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&EXECUTORS);
    let host = Host::start(&[
        ("FLOWHOST_REDIS_URL", &redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
    ])
    .unwrap();

    let body = json!({"inputs": {"text": DOCUMENT}}).to_string();
    let (status, run) = post(&host.url("/api/v1/document_analysis/execute"), &body).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["metadata"]["state_store"], "redis");
    let outputs = &run["outputs"];
    assert_eq!(outputs["statistics"]["sentences"], 4, "{outputs}");
    assert_eq!(outputs["statistics"]["words"], 46, "{outputs}");
    let keywords: Vec<&str> = outputs["keywords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["word"].as_str().unwrap())
        .collect();
    assert!(keywords.contains(&"flow"), "{keywords:?}");
    assert!(keywords.contains(&"webassembly"), "{keywords:?}");
    let summary = outputs["summary"].as_str().unwrap();
    assert!(
        !summary.is_empty() && summary.len() < DOCUMENT.len(),
        "{summary}"
    );
    let steps = run["steps"].as_array().unwrap();
    let names: Vec<&str> = steps
        .iter()
        .map(|s| s["step_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["normalize", "stats", "keywords", "summary"]);
    for s in steps {
        assert_eq!(s["status"], "completed", "{s}");
        assert!(s["execution_time"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(s["attempt"], 1);
    }

    // The state in Redis, read directly.
    let id = run["flow_id"].as_str().unwrap();
    let mut conn = redis.connection();
    let header = hgetall(&mut conn, &format!("fh:flow:{{{id}}}"));
    assert_eq!(header["status"], "completed");
    assert_eq!(header["flow_name"], "document_analysis");
    let header_outputs: Value = serde_json::from_str(&header["outputs"]).unwrap();
    assert_eq!(&header_outputs, outputs);
    let stored_steps = hgetall(&mut conn, &format!("fh:flow:{{{id}}}:steps"));
    assert_eq!(stored_steps.len(), 4);
    for (name, raw) in &stored_steps {
        let s: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(s["status"], "completed", "{name}: {s}");
        let started =
            chrono::DateTime::parse_from_rfc3339(s["started_at"].as_str().unwrap()).unwrap();
        let completed =
            chrono::DateTime::parse_from_rfc3339(s["completed_at"].as_str().unwrap()).unwrap();
        assert!(completed >= started);
        assert!(s["execution_time"].as_f64().unwrap() > 0.0);
        assert!(s["inputs"].is_object() && s["outputs"].is_object(), "{s}");
    }
    // keywords and stats ran on normalize's output, summary on keywords'.
    let summary_step: Value = serde_json::from_str(&stored_steps["summary"]).unwrap();
    assert_eq!(summary_step["inputs"]["keywords"], outputs["keywords"]);

    // The status route shows the same run, with step data.
    let (status, shown) = get(&host.url(&format!("/api/v1/document_analysis/status/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["outputs"], *outputs);
    assert_eq!(
        shown["steps"][0]["outputs"]["text"].as_str().unwrap().len(),
        260
    );
    assert_eq!(shown["steps"][0]["inputs"]["text"], DOCUMENT);

    // /metrics counts the run and its steps.
    let metrics = reqwest::get(host.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"flowhost_flow_runs_total{flow="document_analysis",outcome="completed"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"flowhost_step_runs_total{flow="document_analysis",step="keywords",plugin="keywords",outcome="completed"} 1"#
    ));
    assert!(
        metrics.contains(r#"flowhost_flow_duration_seconds_count{flow="document_analysis"} 1"#)
    );
    assert!(metrics.contains(r#"flowhost_degraded 0"#));
    assert!(metrics.contains(r#"flowhost_flows_started_total{flow="document_analysis"} 1"#));

    // The second example flow, and the listings.
    let (status, run) = post(
        &host.url("/api/v1/keyword_extraction/execute"),
        &json!({"inputs": {"text": "Rust, rust and RUST! Redis; redis. Flows."}}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(
        run["outputs"]["keywords"][0],
        json!({"word": "rust", "count": 3, "score": 0.5})
    );
    let (_, flows) = get(&host.url("/api/v1/flows")).await;
    let names: Vec<&str> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["document_analysis", "keyword_extraction"]);
    let (_, plugins_listed) = get(&host.url("/api/v1/plugins")).await;
    assert_eq!(plugins_listed["plugins"].as_array().unwrap().len(), 4);
    let (_, health) = get(&host.url("/healthz")).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["redis"]["redis"], "connected");
}

#[tokio::test]
async fn bad_requests_get_a_4xx_that_says_what_to_fix() {
    let plugins = plugins_dir(&EXECUTORS);
    let host = Host::start(&[("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap())]).unwrap();
    let execute = host.url("/api/v1/document_analysis/execute");

    let (status, body) = post(&host.url("/api/v1/nope/execute"), "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"],
        "no flow named `nope`; loaded flows: [document_analysis, keyword_extraction]"
    );

    let (status, body) = post(&execute, r#"{"inputs": {"text": "unterminated}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("EOF while parsing"),
        "{body}"
    );

    let (status, body) = post(&execute, r#"{"text": "no wrapper"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(r#"send a JSON object such as {"inputs""#),
        "{body}"
    );

    let (status, body) = post(&execute, r#"{"inputs": {}}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["details"], json!(["missing required input `text`"]));

    let (status, body) = post(&execute, r#"{"inputs": {"text": 42, "lang": "en"}}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["details"],
        json!([
            "unknown input `lang`: flow `document_analysis` takes [text]",
            "input `text` must be of type string, got integer"
        ])
    );

    let (status, body) = get(&host.url("/api/v1/document_analysis/status/not-a-uuid")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("is not a flow id"));
    let unknown = "0193a7c4-5e1b-7cc0-9f3a-2d4e5f607182";
    let (status, _) = get(&host.url(&format!("/api/v1/document_analysis/status/{unknown}"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(&host.url("/api/v1/nothing/here/at/all")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"],
        "no route for GET /api/v1/nothing/here/at/all"
    );

    // Nothing of that hurt the host: a good request still completes, and
    // without Redis configured it ran on memory.
    let (status, run) = post(&execute, &json!({"inputs": {"text": DOCUMENT}}).to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["status"], "completed");
    assert_eq!(run["metadata"]["state_store"], "memory");
    let id = run["flow_id"].as_str().unwrap();
    let (status, shown) = get(&host.url(&format!("/api/v1/document_analysis/status/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["flow_id"], id);
    // A run of one flow is not visible under another flow's name.
    let (status, _) = get(&host.url(&format!("/api/v1/keyword_extraction/status/{id}"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, health) = get(&host.url("/healthz")).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["redis"]["redis"], "not_configured");
}

/// A flows folder with one flow that uses the `chaos` test plugin.
fn chaos_flows(mode: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chaotic.yaml"),
        format!(
            "name: chaotic\ninputs:\n  text: {{type: string}}\nsteps:\n  - name: first\n    plugin: text-normalize\n    input: {{text: '${{inputs.text}}'}}\n  - name: boom\n    plugin: chaos\n    input: '${{steps.first.output}}'\n    config: {{mode: {mode}}}\n  - name: after\n    plugin: text-stats\n    input: {{text: '${{steps.first.output.text}}'}}\n    depends_on: [boom]\n"
        ),
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn a_failing_plugin_fails_its_flow_not_the_request() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&["text-normalize", "text-stats", "chaos"]);
    for mode in ["fail", "invalid", "panic", "bad_json"] {
        let flows = chaos_flows(mode);
        let host = Host::start(&[
            ("FLOWHOST_REDIS_URL", &redis.url()),
            ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
            ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
        ])
        .unwrap();
        let (status, run) = post(
            &host.url("/api/v1/chaotic/execute"),
            r#"{"inputs": {"text": "Hello"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{mode}: {run}");
        assert_eq!(run["status"], "failed", "{mode}: {run}");
        let want = match mode {
            "fail" => "failed: chaos: failed on purpose",
            "invalid" => "invalid input: chaos: invalid on purpose",
            "panic" => "panicked: chaos: panicked on purpose (at testing/chaos/src/lib.rs:",
            _ => "returned output that is not JSON",
        };
        let error = run["error"].as_str().unwrap();
        assert!(
            error.starts_with("step `boom` failed: ") && error.contains(want),
            "{mode}: {error}"
        );
        assert_eq!(run["steps"][0]["status"], "completed");
        assert_eq!(run["steps"][1]["status"], "failed");
        let kind = match mode {
            "fail" => "failed",
            "invalid" => "invalid_input",
            "panic" => "panicked",
            _ => "invalid_output",
        };
        assert_eq!(run["steps"][1]["error_kind"], kind, "{mode}: {run}");
        // A trap is retried (3 attempts by default); the plugin's own
        // verdicts are not.
        let attempts = if mode == "panic" { 3 } else { 1 };
        assert_eq!(run["steps"][1]["attempt"], attempts, "{mode}: {run}");
        // The step after the failure never started.
        assert_eq!(run["steps"][2]["status"], "pending");
        assert!(run["steps"][2]["started_at"].is_null());
        let id = run["flow_id"].as_str().unwrap();
        let mut conn = redis.connection();
        let raw: String = redis::cmd("HGET")
            .arg(format!("fh:flow:{{{id}}}:steps"))
            .arg("boom")
            .query(&mut conn)
            .unwrap();
        let boom: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(boom["status"], "failed");
        assert!(boom["error"].as_str().unwrap().contains(want), "{boom}");
        let (_, health) = get(&host.url("/healthz")).await;
        assert_eq!(health["status"], "ok", "{mode}");
        if mode == "panic" {
            assert!(host.log().contains("step attempt failed"), "{}", host.log());
        }
    }
}

#[tokio::test]
async fn an_unreachable_redis_degrades_loudly_then_reconnects() {
    let plugins = plugins_dir(&EXECUTORS);
    let port = flowhost_tests::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let flows_dir = repo_root().join("flows");
    let host = Host::start(&[
        ("FLOWHOST_REDIS_URL", &url),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows_dir.to_str().unwrap()),
        (
            "FLOWHOST_CONFIG",
            repo_root().join("config.yaml").to_str().unwrap(),
        ),
    ])
    .unwrap();
    let (_, health) = get(&host.url("/healthz")).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["redis"]["redis"], "unreachable");
    assert!(host.log().contains("running DEGRADED"), "{}", host.log());
    let metrics = reqwest::get(host.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("flowhost_degraded 1"));

    let execute = host.url("/api/v1/keyword_extraction/execute");
    let (status, run) = post(&execute, r#"{"inputs": {"text": "degraded but working"}}"#).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "completed");
    assert_eq!(run["metadata"]["state_store"], "memory");
    assert_eq!(run["metadata"]["degraded"], true);
    let memory_id = run["flow_id"].as_str().unwrap().to_owned();

    // Redis comes up on that port: the host reconnects without a restart.
    let redis = RedisServer::start_on(port).unwrap();
    let mut healthy = false;
    for _ in 0..100 {
        let (_, health) = get(&host.url("/healthz")).await;
        if health["status"] == "ok" {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "no reconnect; log:\n{}", host.log());
    let (_, run) = post(&execute, r#"{"inputs": {"text": "persisted again"}}"#).await;
    assert_eq!(run["metadata"]["state_store"], "redis");
    let id = run["flow_id"].as_str().unwrap();
    let mut conn = redis.connection();
    let status: String = redis::cmd("HGET")
        .arg(format!("fh:flow:{{{id}}}"))
        .arg("status")
        .query(&mut conn)
        .unwrap();
    assert_eq!(status, "completed");
    // The run kept in memory during the outage is still readable.
    let (status, shown) =
        get(&host.url(&format!("/api/v1/keyword_extraction/status/{memory_id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["status"], "completed");
}

#[tokio::test]
async fn bearer_tokens_guard_the_api_but_not_metrics_and_health() {
    let plugins = plugins_dir(&EXECUTORS);
    let host = Host::start(&[
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_AUTH_TOKENS", "first-token, second-token"),
    ])
    .unwrap();
    let client = reqwest::Client::new();
    let call = |path: &str, token: Option<&str>| {
        let mut req = client.get(host.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let resp = call("/api/v1/flows", None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"],
        "missing or unknown bearer token: send Authorization: Bearer TOKEN"
    );
    assert_eq!(
        call("/api/v1/flows", Some("second-tokeN"))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call("/api/v1/flows", Some("second-token"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        call("/api/v1/flows", Some("first-token"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Unknown routes do not tell an anonymous caller what exists.
    assert_eq!(
        call("/nowhere", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call("/metrics", None).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        call("/healthz", None).await.unwrap().status(),
        StatusCode::OK
    );

    let config =
        flowhost_tests::config_file("auth: {protect_metrics: true, protect_health: true}\n");
    let guarded = Host::start(&[
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_AUTH_TOKENS", "only"),
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
    ])
    .unwrap();
    for path in ["/metrics", "/healthz"] {
        let resp = client.get(guarded.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        let resp = client
            .get(guarded.url(path))
            .bearer_auth("only")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}
