//! Observability with the real tools: a real Prometheus server scrapes a
//! running flowhost and answers a PromQL query with the number of runs;
//! `promtool check metrics` accepts /metrics; the Grafana dashboard uses only
//! exported metrics; `docker-compose config` parses the compose file, whose
//! mounts all exist; the OpenAPI document lists every route; analytics and
//! JSON logs.

use std::process::{Command, Stdio};
use std::time::Duration;

use flowhost::metrics::Metrics;
use flowhost_tests::{
    DOCUMENT, EXECUTORS, Host, RedisServer, config_file, free_port, plugins_dir, repo_root,
};
use serde_json::{Value, json};

async fn run(host: &Host, flow: &str, inputs: Value) -> Value {
    reqwest::Client::new()
        .post(host.url(&format!("/api/v1/{flow}/execute")))
        .body(json!({ "inputs": inputs }).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A Prometheus server of its own, killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target_port: u16) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: flowhost\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (scripts/setup.sh installs it)");
    Prometheus {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_flowhost_and_counts_the_runs() {
    let plugins = plugins_dir(&EXECUTORS);
    let host = Host::start(&[("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap())]).unwrap();
    for i in 0..5 {
        let r = run(
            &host,
            "document_analysis",
            json!({"text": format!("Run {i}. {DOCUMENT}")}),
        )
        .await;
        assert_eq!(r["status"], "completed");
    }
    for _ in 0..2 {
        let r = run(
            &host,
            "keyword_extraction",
            json!({"text": "counted twice"}),
        )
        .await;
        assert_eq!(r["status"], "completed");
    }

    // promtool accepts the exposition as it is.
    let text = reqwest::get(host.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes it; PromQL counts the runs.
    let prometheus = start_prometheus(host.port);
    let query = format!("http://127.0.0.1:{}/api/v1/query", prometheus.port);
    let client = reqwest::Client::new();
    let mut answer = Value::Null;
    for _ in 0..150 {
        if let Ok(resp) = client
            .get(&query)
            .query(&[(
                "query",
                "sum by (flow) (flowhost_flow_runs_total{outcome=\"completed\"})",
            )])
            .send()
            .await
            && let Ok(body) = resp.json::<Value>().await
            && body["data"]["result"]
                .as_array()
                .is_some_and(|r| r.len() == 2)
        {
            answer = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut counts: Vec<(String, String)> = answer["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("no answer from Prometheus: {answer}"))
        .iter()
        .map(|r| {
            (
                r["metric"]["flow"].as_str().unwrap().to_owned(),
                r["value"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    counts.sort();
    println!(
        "PromQL sum by (flow) (flowhost_flow_runs_total{{outcome=\"completed\"}}) = {counts:?}"
    );
    assert_eq!(
        counts,
        [
            ("document_analysis".to_owned(), "5".to_owned()),
            ("keyword_extraction".to_owned(), "2".to_owned())
        ]
    );
}

/// Whether a sample or family name belongs to a metric in the catalog.
fn exported(name: &str, catalog: &[(String, String)]) -> bool {
    catalog.iter().any(|(family, kind)| {
        name == family
            || (kind == "histogram"
                && ["_bucket", "_count", "_sum"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family)))
    })
}

#[tokio::test]
async fn the_dashboard_and_the_exposition_use_only_catalogued_metrics() {
    let catalog = Metrics::catalog();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/dashboards/flowhost.json"))
            .unwrap(),
    )
    .unwrap();
    let mut used = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("flowhost_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                used.push(name);
            }
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(
            exported(name, &catalog),
            "dashboard uses {name}, which flowhost does not export"
        );
    }
    // The panels the issue asks for are there.
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Flow rate",
        "Failure rate",
        "p95 step latency by plugin",
        "Cache hit rate",
        "Flows in flight",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(want)),
            "{want}: {titles:?}"
        );
    }

    // Everything a live host exposes is in the catalog too.
    let plugins = plugins_dir(&EXECUTORS);
    let host = Host::start(&[("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap())]).unwrap();
    run(&host, "document_analysis", json!({"text": DOCUMENT})).await;
    let text = reqwest::get(host.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name: String = line
            .chars()
            .take_while(|c| *c != '{' && *c != ' ')
            .collect();
        assert!(exported(&name, &catalog), "{name} is not catalogued");
    }
    // No unbounded label: flow ids never appear.
    let id_like = text.lines().any(|l| l.contains("flow_id"));
    assert!(!id_like);
}

#[test]
fn the_compose_file_parses_and_everything_it_mounts_exists() {
    let root = repo_root();
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(&root)
        .output()
        .expect("docker-compose (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compose: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).unwrap())
            .unwrap();
    let services = compose["services"].as_object().unwrap();
    for want in [
        "flowhost",
        "redis",
        "redis-commander",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(want), "no service {want}");
    }
    assert_eq!(services["flowhost"]["build"], ".");
    assert!(root.join("Dockerfile").is_file());
    let redis_cmd = services["redis"]["command"].to_string();
    assert!(redis_cmd.contains("appendonly"), "{redis_cmd}");
    assert!(services["redis"]["healthcheck"].is_object());
    let mut mounts = 0;
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                mounts += 1;
                assert!(
                    root.join(source).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            }
        }
    }
    assert!(mounts >= 4, "{mounts}");
    // Prometheus's own checker accepts its config.
    let out = Command::new("promtool")
        .args(["check", "config", "deploy/prometheus.yml"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_each_is_served() {
    let plugins = plugins_dir(&EXECUTORS);
    let host = Host::start(&[("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap())]).unwrap();
    let doc: Value = reqwest::get(host.url("/api/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/{flow}/execute", "post"),
        ("/api/v1/{flow}/status/{flow_id}", "get"),
        ("/api/v1/{flow}/resume/{flow_id}", "post"),
        ("/api/v1/{flow}/retry/{flow_id}/{step}", "post"),
        ("/api/v1/{flow}/flows/{flow_id}", "delete"),
        ("/api/v1/{flow}/analytics", "get"),
        ("/api/v1/flows", "get"),
        ("/api/v1/plugins", "get"),
        ("/api/v1/cache", "delete"),
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/api/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    // Every documented operation is served (no `no_route` answer).
    let client = reqwest::Client::new();
    for (path, ops) in paths {
        let concrete = path
            .replace("{flow}", "document_analysis")
            .replace("{flow_id}", "0193a7c4-5e1b-7cc0-9f3a-2d4e5f607182")
            .replace("{step}", "stats");
        for method in ops.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = client.request(m, host.url(&concrete)).send().await.unwrap();
            let body = resp.text().await.unwrap();
            assert!(!body.contains("no_route"), "{method} {concrete}: {body}");
        }
    }
}

#[tokio::test]
async fn analytics_summarise_the_stored_runs() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&[
        "text-normalize",
        "text-stats",
        "keywords",
        "summarize",
        "chaos",
    ]);
    let flows = tempfile::tempdir().unwrap();
    let f = "document_analysis.yaml";
    std::fs::copy(repo_root().join("flows").join(f), flows.path().join(f)).unwrap();
    std::fs::write(
        flows.path().join("flaky.yaml"),
        "name: flaky\ninputs:\n  mode: {type: string}\nsteps:\n  - name: s\n    plugin: chaos\n    input: '${inputs.mode}'\n    config: {mode: fail}\n",
    )
    .unwrap();
    let host = Host::start(&[
        ("FLOWHOST_REDIS_URL", &redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
    ])
    .unwrap();
    for _ in 0..3 {
        run(&host, "document_analysis", json!({"text": DOCUMENT})).await;
    }
    for _ in 0..2 {
        assert_eq!(
            run(&host, "flaky", json!({"mode": "x"})).await["status"],
            "failed"
        );
    }
    let get = |q: &str| reqwest::get(host.url(&format!("/api/v1/{q}")));
    let doc: Value = get("document_analysis/analytics?window=1h")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["runs"], 3);
    assert_eq!(doc["runs_by_status"], json!({"completed": 3}));
    assert!(doc["duration_seconds"]["p50"].as_f64().unwrap() > 0.0);
    assert!(
        doc["duration_seconds"]["p95"].as_f64().unwrap()
            >= doc["duration_seconds"]["p50"].as_f64().unwrap()
    );
    // The first run missed the cache on 4 steps; the next two hit all 4.
    assert_eq!(doc["cache"]["cacheable_steps"], 12);
    assert_eq!(doc["cache"]["hits"], 8);
    assert!((doc["cache"]["hit_rate"].as_f64().unwrap() - 8.0 / 12.0).abs() < 1e-9);
    assert_eq!(doc["steps"][0]["step"], "normalize");
    assert_eq!(doc["steps"][0]["cached"], 2);
    let flaky: Value = get("flaky/analytics?window=15m")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(flaky["runs_by_status"], json!({"failed": 2}));
    assert_eq!(
        flaky["steps"][0]["failure_reasons"],
        json!([{"reason": "failed: chaos: failed on purpose", "count": 2}])
    );
    let resp = get("flaky/analytics?window=1w").await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn json_logs_carry_the_flow_id_and_step_on_every_line_of_a_flow() {
    let plugins = plugins_dir(&["chaos"]);
    let flows = tempfile::tempdir().unwrap();
    std::fs::write(
        flows.path().join("noisy.yaml"),
        "name: noisy\nsteps:\n  - name: boom\n    plugin: chaos\n    config: {mode: fail}\n",
    )
    .unwrap();
    let config = config_file("log: {format: json, filter: \"info,flowhost=debug\"}\n");
    let mut host = Host::start(&[
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
        ("RUST_LOG", ""),
    ])
    .unwrap();
    let r = run(&host, "noisy", json!({})).await;
    let id = r["flow_id"].as_str().unwrap().to_owned();
    host.kill();
    let log = host.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let of_flow: Vec<&Value> = lines
        .iter()
        .filter(|l| l["spans"].to_string().contains(&id))
        .collect();
    // The plugin's own log line (debug), the failed attempt and the end.
    let messages: Vec<&str> = of_flow
        .iter()
        .map(|l| l["fields"]["message"].as_str().unwrap_or(""))
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("step attempt failed")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("flow finished")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("chaos")),
        "plugin log line: {messages:?}"
    );
    for line in &of_flow {
        assert_eq!(line["spans"][0]["flow"], "noisy");
        if line["fields"]["message"] != "flow finished" {
            assert_eq!(line["span"]["step"], "boom", "{line}");
        }
    }
}
