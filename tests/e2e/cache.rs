//! The result cache against a real redis-server and the real binary: hit and
//! miss, key-order independence, TTL expiry in Redis, a rebuilt plugin never
//! sharing a key, single-flight, non-deterministic plugins, the whole-flow
//! cache, and invalidation over HTTP and the CLI.

use std::time::{Duration, Instant};

use flowhost_tests::{
    DOCUMENT, EXECUTORS, Host, RedisServer, flowhost_command, flows_dir, plugin_wasm, plugins_dir,
    repo_root,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn host(redis: &RedisServer, plugins: &tempfile::TempDir, flows: &std::path::Path) -> Host {
    Host::start(&[
        ("FLOWHOST_REDIS_URL", &redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.to_str().unwrap()),
    ])
    .unwrap()
}

async fn run(host: &Host, flow: &str, inputs: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(host.url(&format!("/api/v1/{flow}/execute")))
        .body(json!({ "inputs": inputs }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    body
}

async fn metrics(host: &Host) -> String {
    reqwest::get(host.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn cached(run: &Value) -> Vec<bool> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cached"].as_bool().unwrap())
        .collect()
}

async fn invalidate(host: &Host, query: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .delete(host.url(&format!("/api/v1/cache?{query}")))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

#[tokio::test]
async fn repeated_steps_are_served_from_the_cache_until_invalidated() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&EXECUTORS);
    let host = host(&redis, &plugins, &repo_root().join("flows"));
    let inputs = json!({"text": DOCUMENT});

    let first = run(&host, "document_analysis", inputs.clone()).await;
    assert_eq!(cached(&first), [false, false, false, false]);
    let second = run(&host, "document_analysis", inputs.clone()).await;
    assert_eq!(cached(&second), [true, true, true, true]);
    assert_eq!(second["outputs"], first["outputs"]);
    assert_eq!(second["cached"], false, "step hits, not a whole-flow hit");
    let m = metrics(&host).await;
    for plugin in EXECUTORS {
        assert!(
            m.contains(&format!(
                r#"flowhost_cache_hits_total{{plugin="{plugin}"}} 1"#
            )),
            "{plugin}: {m}"
        );
        assert!(
            m.contains(&format!(
                r#"flowhost_cache_misses_total{{plugin="{plugin}"}} 1"#
            )),
            "{plugin}"
        );
        assert!(
            m.contains(&format!(
                r#"flowhost_cache_stores_total{{plugin="{plugin}"}} 1"#
            )),
            "{plugin}"
        );
    }
    // Each plugin ran once: the hits never instantiated it.
    assert!(m.contains(r#"flowhost_step_runs_total{flow="document_analysis",step="keywords",plugin="keywords",outcome="completed"} 1"#), "{m}");

    // The entry lives in Redis, with its TTL set in Redis.
    let key = second["steps"][2]["cache_key"].as_str().unwrap().to_owned();
    assert_eq!(key, first["steps"][2]["cache_key"].as_str().unwrap());
    let mut conn = redis.connection();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("fh:cache:{{{key}}}"))
        .query(&mut conn)
        .unwrap();
    assert!(pttl > 86_000_000 && pttl <= 86_400_000, "PTTL {pttl}");

    // Step latency: a hit against a miss, as the runs recorded them.
    let latency = |run: &Value| run["steps"][2]["execution_time"].as_f64().unwrap() * 1e6;
    println!(
        "keywords step: miss {:.0} µs, hit {:.0} µs",
        latency(&first),
        latency(&second)
    );

    // Invalidate one plugin's results: only that step runs again.
    let (status, body) = invalidate(&host, "plugin=keywords").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["removed"], 1);
    let third = run(&host, "document_analysis", inputs.clone()).await;
    assert_eq!(cached(&third), [true, true, false, true]);
    // By key, then by flow.
    let (_, body) = invalidate(&host, &format!("key={key}")).await;
    assert_eq!(body["removed"], 1);
    let (_, body) = invalidate(&host, "flow=document_analysis").await;
    assert_eq!(body["removed"], 3);
    let fourth = run(&host, "document_analysis", inputs.clone()).await;
    assert_eq!(cached(&fourth), [false, false, false, false]);
    let (status, body) = invalidate(&host, "plugin=a&flow=b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("exactly one of"),
        "{body}"
    );

    // The CLI removes entries in the same Redis.
    let out = flowhost_command()
        .args(["cache", "invalidate", "--plugin", "text-stats"])
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
        "removed 1 cached result(s)"
    );
    let fifth = run(&host, "document_analysis", inputs).await;
    assert_eq!(cached(&fifth), [true, false, true, true]);
}

const ECHO_FLOW: &str = "name: objects
inputs:
  doc: {type: object}
steps:
  - name: echo
    plugin: echo
    input: '${inputs.doc}'
    cache: {ttl_seconds: 1}
outputs:
  doc: '${steps.echo.output.input}'
";

#[tokio::test]
async fn keys_ignore_key_order_and_expire_with_their_ttl() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[("objects", ECHO_FLOW)]);
    let host = host(&redis, &plugins, flows.path());
    let a = run(&host, "objects", json!({"doc": {"a": 1, "b": [1, 2]}})).await;
    let b = run(&host, "objects", json!({"doc": {"b": [1.0, 2], "a": 1.0}})).await;
    assert_eq!((cached(&a), cached(&b)), (vec![false], vec![true]));
    assert_eq!(a["steps"][0]["cache_key"], b["steps"][0]["cache_key"]);
    let c = run(&host, "objects", json!({"doc": {"a": 1, "b": [2, 1]}})).await;
    assert_eq!(cached(&c), [false]);
    // ttl_seconds: 1, enforced by Redis itself.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let d = run(&host, "objects", json!({"doc": {"a": 1, "b": [1, 2]}})).await;
    assert_eq!(cached(&d), [false], "expired entries miss");
}

/// `echo.wasm` with a custom section appended: the same behaviour, other bytes.
fn rebuilt_echo(dir: &std::path::Path) {
    let mut bytes = std::fs::read(plugin_wasm("echo")).unwrap();
    let name = b"rebuilt";
    let payload = b"2";
    bytes.push(0); // custom section id
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    std::fs::write(dir.join("echo.wasm"), bytes).unwrap();
}

#[tokio::test]
async fn a_rebuilt_plugin_never_gets_a_stale_result() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[(
        "objects",
        &ECHO_FLOW.replace("ttl_seconds: 1", "ttl_seconds: 600"),
    )]);
    let doc = json!({"doc": {"x": 1}});
    let mut first_host = host(&redis, &plugins, flows.path());
    let a = run(&first_host, "objects", doc.clone()).await;
    let b = run(&first_host, "objects", doc.clone()).await;
    assert_eq!((cached(&a), cached(&b)), (vec![false], vec![true]));
    first_host.kill();

    rebuilt_echo(plugins.path());
    let second_host = host(&redis, &plugins, flows.path());
    let c = run(&second_host, "objects", doc).await;
    assert_eq!(cached(&c), [false], "a plugin with other bytes misses");
    assert_ne!(c["steps"][0]["cache_key"], a["steps"][0]["cache_key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flows_needing_one_key_run_the_plugin_once() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&["chaos"]);
    let flow = "name: shared
inputs:
  text: {type: string}
steps:
  - name: slow
    plugin: chaos
    input: {text: '${inputs.text}'}
    config: {mode: sleep, ms: 600}
    cache: {force: true}
outputs:
  text: '${steps.slow.output.input.text}'
";
    let flows = flows_dir(&[("shared", flow)]);
    let host = host(&redis, &plugins, flows.path());
    let started = Instant::now();
    let runs: Vec<_> = (0..5)
        .map(|_| {
            let url = host.url("/api/v1/shared/execute");
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(url)
                    .body(r#"{"inputs": {"text": "same"}}"#)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut hits = 0;
    for r in runs {
        let r = r.await.unwrap();
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["outputs"]["text"], "same");
        hits += usize::from(r["steps"][0]["cached"] == true);
    }
    assert_eq!(hits, 4);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let m = metrics(&host).await;
    assert!(m.contains(r#"flowhost_step_runs_total{flow="shared",step="slow",plugin="chaos",outcome="completed"} 1"#), "{m}");
    assert!(
        m.contains(r#"flowhost_cache_single_flight_waits_total{plugin="chaos"} 4"#),
        "{m}"
    );
}

#[tokio::test]
async fn non_deterministic_plugins_are_cached_only_when_forced() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&["chaos"]);
    let flow = "name: nd
inputs:
  text: {type: string}
steps:
  - {name: plain, plugin: chaos, input: '${inputs.text}'}
  - {name: forced, plugin: chaos, input: '${inputs.text}', cache: {force: true}}
  - {name: off, plugin: chaos, input: '${inputs.text}', cache: false}
";
    let flows = flows_dir(&[("nd", flow)]);
    let host = host(&redis, &plugins, flows.path());
    let a = run(&host, "nd", json!({"text": "t"})).await;
    let b = run(&host, "nd", json!({"text": "t"})).await;
    assert_eq!(cached(&a), [false, false, false]);
    assert_eq!(cached(&b), [false, true, false]);
    assert!(b["steps"][0]["cache_key"].is_null() && b["steps"][2]["cache_key"].is_null());
    let m = metrics(&host).await;
    assert!(m.contains(r#"flowhost_step_runs_total{flow="nd",step="plain",plugin="chaos",outcome="completed"} 2"#), "{m}");
    assert!(m.contains(r#"flowhost_step_runs_total{flow="nd",step="forced",plugin="chaos",outcome="completed"} 1"#), "{m}");
}

#[tokio::test]
async fn a_whole_flow_result_is_returned_without_running_a_step() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&EXECUTORS);
    let text = std::fs::read_to_string(repo_root().join("flows/keyword_extraction.yaml")).unwrap();
    let flows = flows_dir(&[(
        "keyword_extraction",
        &text.replace("steps:\n", "cache:\n  flow_result: true\n\nsteps:\n"),
    )]);
    let host = host(&redis, &plugins, flows.path());
    let inputs = json!({"text": "Caching caching, all the way down: caching!"});
    let first = run(&host, "keyword_extraction", inputs.clone()).await;
    assert_eq!(first["cached"], false);
    let before = metrics(&host).await;
    let second = run(&host, "keyword_extraction", inputs).await;
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(second["metadata"]["flow_cache"], "hit");
    assert_eq!(second["outputs"], first["outputs"]);
    assert_ne!(second["flow_id"], first["flow_id"]);
    let after = metrics(&host).await;
    let step_lines = |m: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("flowhost_step_runs_total")
                    || l.starts_with("flowhost_cache_hits_total")
            })
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        step_lines(&before),
        step_lines(&after),
        "no step ran or hit"
    );
    assert!(after.contains(r#"flowhost_flow_cache_hits_total{flow="keyword_extraction"} 1"#));
    // The cached run is recorded and can be looked up like any other.
    let id = second["flow_id"].as_str().unwrap();
    let shown: Value = reqwest::get(host.url(&format!("/api/v1/keyword_extraction/status/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "completed");
    assert_eq!(
        shown["steps"][1]["outputs"]["keywords"],
        first["outputs"]["keywords"]
    );
    let other = run(
        &host,
        "keyword_extraction",
        json!({"text": "something else entirely"}),
    )
    .await;
    assert_eq!(other["cached"], false);
}
