//! The sandbox, with the real binary and real compiled plugins: every hostile
//! behaviour of `plugins/testing/hostile` fails its step with a typed error
//! while the host stays healthy; manifests set limits and grant hosts,
//! sockets and secrets; stdout and stderr are captured; outgoing HTTP is
//! allowed only to listed hosts; compiled artifacts are cached; compilation
//! and requests are time-limited; and 20 ordinary flows run beside 5 hostile
//! ones with the host's memory back at its level afterwards.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowhost_tests::{
    Host, RedisServer, config_file, fake_http_server, flows_dir, free_port, plugin_wasm,
    plugins_dir, redis_flow_ids,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A one-step flow running `plugin` with `config`, never retried.
fn one_step(name: &str, plugin: &str, config: &str) -> String {
    format!(
        "name: {name}
inputs:
  text: {{type: string, default: hello}}
steps:
  - name: s
    plugin: {plugin}
    input: {{text: '${{inputs.text}}'}}
    config: {config}
    retry: {{max_attempts: 1}}
outputs:
  out: '${{steps.s.output}}'
"
    )
}

fn add_plugin(dir: &Path, file_stem: &str, wasm: &str, manifest: Option<&str>) {
    std::fs::copy(plugin_wasm(wasm), dir.join(format!("{file_stem}.wasm"))).unwrap();
    if let Some(text) = manifest {
        std::fs::write(dir.join(format!("{file_stem}.toml")), text).unwrap();
    }
}

fn start(plugins: &Path, flows: &Path, config: &Path, extra: &[(&str, &str)]) -> Host {
    let mut env = vec![
        ("FLOWHOST_PLUGINS_DIR", plugins.to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.to_str().unwrap()),
        ("FLOWHOST_CONFIG", config.to_str().unwrap()),
    ];
    env.extend_from_slice(extra);
    Host::start(&env).unwrap()
}

async fn execute(host: &Host, flow: &str, inputs: Value) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(host.url(&format!("/api/v1/{flow}/execute")))
        .json(&json!({ "inputs": inputs }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(host: &Host, path: &str) -> Value {
    reqwest::get(host.url(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The one step of a finished run, as the status route shows it (with
/// stdout and stderr).
async fn step_state(host: &Host, flow: &str, run: &Value) -> Value {
    let id = run["flow_id"].as_str().unwrap();
    let state = get(host, &format!("/api/v1/{flow}/status/{id}")).await;
    state["steps"][0].clone()
}

/// The host's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// The hostile cases: flow name, hostile mode config, the error kind and a
/// piece of the error message each must produce.
fn hostile_cases(closed_port: u16) -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        ("h_loop", "{mode: loop}".into(), "timed_out", "timed out"),
        (
            "h_memory",
            "{mode: memory_bomb}".into(),
            "out_of_memory",
            "over the limit of 33554432",
        ),
        (
            "h_recursion",
            "{mode: recursion}".into(),
            "stack_exhausted",
            "stack exhausted",
        ),
        (
            "h_panic",
            "{mode: panic}".into(),
            "panicked",
            "hostile: panicked on purpose",
        ),
        (
            "h_huge",
            "{mode: huge_output, bytes: 4194304}".into(),
            "output_too_large",
            "over the plugin's limit of 1048576",
        ),
        (
            "h_json",
            "{mode: invalid_json}".into(),
            "invalid_output",
            "not JSON",
        ),
        (
            "h_file",
            "{mode: open_file}".into(),
            "capability_denied",
            "filesystem",
        ),
        (
            "h_env",
            "{mode: read_env}".into(),
            "capability_denied",
            "environment",
        ),
        (
            "h_socket",
            format!("{{mode: open_socket, addr: '127.0.0.1:{closed_port}'}}"),
            "capability_denied",
            "socket",
        ),
        (
            "h_http",
            format!("{{mode: http, url: 'http://127.0.0.1:{closed_port}/steal'}}"),
            "capability_denied",
            "not on the plugin's http.allow list",
        ),
    ]
}

const HOSTILE_MANIFEST: &str = "
[limits]
memory_bytes = 33554432
timeout_ms = 1500
max_output_bytes = 1048576
[http]
allow = [\"127.0.0.1:1\"]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_plugin_fails_with_its_typed_error_and_the_host_stays_healthy() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&["text-stats"]);
    add_plugin(plugins.path(), "hostile", "hostile", Some(HOSTILE_MANIFEST));
    let closed_port = free_port();
    let cases = hostile_cases(closed_port);
    let mut flows: Vec<(String, String)> = cases
        .iter()
        .map(|(name, config, ..)| (name.to_string(), one_step(name, "hostile", config)))
        .collect();
    flows.push(("ordinary".into(), one_step("ordinary", "text-stats", "{}")));
    let flow_refs: Vec<(&str, &str)> = flows
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let flows = flows_dir(&flow_refs);
    let config = config_file("");
    let host = start(
        plugins.path(),
        flows.path(),
        config.path(),
        &[("FLOWHOST_REDIS_URL", &redis.url())],
    );

    println!("{:<12} {:<18} {:>9}  error", "case", "kind", "stopped");
    for (flow, _, kind, needle) in &cases {
        let clock = Instant::now();
        let (status, run) = execute(&host, flow, json!({})).await;
        let wall = clock.elapsed();
        assert_eq!(status, StatusCode::OK, "{flow}: {run}");
        assert_eq!(run["status"], "failed", "{flow}: {run}");
        let step = &run["steps"][0];
        let error = step["error"].as_str().unwrap_or_default();
        assert_eq!(step["error_kind"], *kind, "{flow}: {error}");
        assert!(error.contains(needle), "{flow}: {error:?} lacks {needle:?}");
        let stopped = step["execution_time"].as_f64().unwrap();
        println!(
            "{flow:<12} {kind:<18} {:>7.1}ms  {error}  (request {:.0} ms)",
            stopped * 1e3,
            wall.as_secs_f64() * 1e3
        );
        // Between each hostile run the host still serves ordinary work.
        let (_, ok) = execute(&host, "ordinary", json!({"text": "still here"})).await;
        assert_eq!(ok["status"], "completed", "after {flow}: {ok}");
        assert_eq!(ok["outputs"]["out"]["words"], 2);
    }
    let health = reqwest::get(host.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = reqwest::get(host.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in [
        "out_of_memory",
        "stack_exhausted",
        "panicked",
        "capability_denied",
    ] {
        assert!(
            metrics.contains(&format!("plugin=\"hostile\",kind=\"{kind}\"")),
            "flowhost_plugin_traps_total lacks {kind}"
        );
    }
    // The step's typed error is in Redis too, where a later status read finds it.
    let mut conn = redis.connection();
    assert!(redis_flow_ids(&mut conn).len() >= cases.len() * 2);
}

/// A fake model server: answers every request with `body` (`BIG`: a 300 kB
/// answer), and keeps each request's head and body as text.
fn model_server(body: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let port = fake_http_server(move |request| {
        let text = request.head + &String::from_utf8_lossy(&request.body);
        log.lock().unwrap().push(text);
        if body == "BIG" {
            format!("{{\"response\": \"{}\"}}", "x".repeat(300_000))
        } else {
            body.to_owned()
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_are_reached_with_the_secret_and_others_are_denied() {
    let redis = RedisServer::start().unwrap();
    let (port, seen) = model_server(r#"{"choices": [{"text": "a short answer"}]}"#);
    let (big_port, _) = model_server("BIG");
    // A server slower than the manifest's request timeout.
    let slow_port = fake_http_server(|_| {
        std::thread::sleep(Duration::from_secs(4));
        "{}".to_owned()
    });
    let plugins = plugins_dir(&[]);
    let manifest = format!(
        "[http]\nallow = [\"127.0.0.1:{port}\", \"127.0.0.1:{big_port}\", \"127.0.0.1:{slow_port}\"]\n\
         max_response_bytes = 100000\ntimeout_ms = 1000\n\
         [secrets]\nLLM_API_KEY = \"MODEL_KEY\"\n"
    );
    add_plugin(
        plugins.path(),
        "llm-complete",
        "llm-complete",
        Some(&manifest),
    );
    let flow = |name: &str, port: u16| {
        format!(
            "name: {name}
inputs:
  prompt: {{type: string}}
steps:
  - name: ask
    plugin: llm-complete
    input: {{prompt: '${{inputs.prompt}}'}}
    config: {{url: 'http://127.0.0.1:{port}/v1/completions', model: tiny}}
    retry: {{max_attempts: 1}}
outputs:
  answer: '${{steps.ask.output.completion}}'
"
        )
    };
    let flows = flows_dir(&[
        ("ask", &flow("ask", port)),
        ("ask_big", &flow("ask_big", big_port)),
        ("ask_elsewhere", &flow("ask_elsewhere", free_port())),
        ("ask_slow", &flow("ask_slow", slow_port)),
    ]);
    let config = config_file("");
    let secret = "sk-test-7f3a9c2e51";
    let host = start(
        plugins.path(),
        flows.path(),
        config.path(),
        &[
            ("FLOWHOST_REDIS_URL", &redis.url()),
            ("FLOWHOST_SECRET_MODEL_KEY", secret),
        ],
    );

    let (status, run) = execute(&host, "ask", json!({"prompt": "Say hi"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["outputs"]["answer"], "a short answer");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].starts_with("POST /v1/completions"), "{}", heads[0]);
    assert!(
        heads[0].contains(&format!("authorization: Bearer {secret}")),
        "{}",
        heads[0]
    );
    assert!(heads[0].contains("\"prompt\":\"Say hi\""));

    // A response over the manifest's size limit is cut off with an error.
    let (_, run) = execute(&host, "ask_big", json!({"prompt": "ramble"})).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["steps"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("body size exceeds limit: 100000 bytes"),
        "{error}"
    );

    // A server slower than the manifest's timeout_ms: the request fails at it.
    let clock = Instant::now();
    let (_, run) = execute(&host, "ask_slow", json!({"prompt": "hi"})).await;
    let took = clock.elapsed();
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["steps"][0]["error"].as_str().unwrap();
    assert!(error.contains("Timeout"), "{error}");
    assert!(
        took < Duration::from_millis(3000),
        "the request took {took:?}"
    );
    println!("slow server: failed after {took:?}: {error}");

    // A host not on the list is refused before any connection is made.
    let (_, run) = execute(&host, "ask_elsewhere", json!({"prompt": "hi"})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["steps"][0]["error_kind"], "capability_denied", "{run}");

    // The secret is in no flow state and no log line.
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut conn).unwrap();
        assert!(
            !String::from_utf8_lossy(&dump).contains(secret),
            "{key} holds the secret"
        );
    }
    assert!(!host.log().contains(secret), "the log holds the secret");
    let plugins = get(&host, "/api/v1/plugins").await;
    assert!(!plugins.to_string().contains(secret));
    assert!(plugins.to_string().contains("LLM_API_KEY"), "{plugins}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_set_fuel_and_input_limits_and_grant_sockets() {
    let plugins = plugins_dir(&[]);
    add_plugin(
        plugins.path(),
        "fuel",
        "hostile",
        Some("[limits]\nfuel = 5000000\n"),
    );
    add_plugin(
        plugins.path(),
        "small",
        "echo",
        Some("[limits]\nmax_input_bytes = 64\n"),
    );
    // A granted socket address is reachable; the connection is real.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    add_plugin(
        plugins.path(),
        "netted",
        "hostile",
        Some(&format!("[sockets]\nallow = [\"{addr}\"]\n")),
    );
    let accepted = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = [0u8; 6];
        stream.read_exact(&mut line).unwrap();
        line
    });
    let flows = flows_dir(&[
        ("spin", &one_step("spin", "fuel", "{mode: loop}")),
        ("small", &one_step("small", "small", "{}")),
        (
            "dial",
            &one_step(
                "dial",
                "netted",
                &format!("{{mode: open_socket, addr: '{addr}'}}"),
            ),
        ),
    ]);
    let config = config_file("");
    let host = start(plugins.path(), flows.path(), config.path(), &[]);

    let (_, run) = execute(&host, "spin", json!({})).await;
    assert_eq!(run["steps"][0]["error_kind"], "fuel_exhausted", "{run}");
    let took = run["steps"][0]["execution_time"].as_f64().unwrap();
    assert!(took < 1.0, "5M fuel ran for {took} s");

    let (_, run) = execute(&host, "small", json!({"text": "short"})).await;
    assert_eq!(run["status"], "completed", "{run}");
    let (_, run) = execute(&host, "small", json!({"text": "x".repeat(100)})).await;
    assert_eq!(run["steps"][0]["error_kind"], "input_too_large", "{run}");

    let (_, run) = execute(&host, "dial", json!({})).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(&accepted.join().unwrap(), b"PING\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_are_captured_bounded_and_cleaned() {
    let plugins = plugins_dir(&[]);
    add_plugin(
        plugins.path(),
        "hostile",
        "hostile",
        Some("[limits]\nmax_stdio_bytes = 2000\n"),
    );
    let flows = flows_dir(&[
        ("print", &one_step("print", "hostile", "{mode: print}")),
        (
            "flood",
            &one_step("flood", "hostile", "{mode: print, lines: 100000}"),
        ),
    ]);
    let config = config_file("");
    let host = start(plugins.path(), flows.path(), config.path(), &[]);

    let (_, run) = execute(&host, "print", json!({})).await;
    assert_eq!(run["status"], "completed", "{run}");
    let step = step_state(&host, "print", &run).await;
    assert_eq!(
        step["stdout"], "hostile: hello on stdout, attempt 1\n",
        "{step}"
    );
    let stderr = step["stderr"].as_str().unwrap();
    assert_eq!(
        stderr, "hostile: [31mred[0m on stderr\n",
        "escape bytes stripped"
    );

    let clock = Instant::now();
    let (_, run) = execute(&host, "flood", json!({})).await;
    assert_eq!(run["status"], "completed", "{run}");
    let step = step_state(&host, "flood", &run).await;
    let stdout = step["stdout"].as_str().unwrap();
    assert!(stdout.len() < 2100, "{} bytes kept", stdout.len());
    assert!(stdout.ends_with("more bytes dropped]"), "{stdout}");
    println!(
        "100,000 printed lines: {:?}, {} bytes kept",
        clock.elapsed(),
        stdout.len()
    );
}

#[tokio::test]
async fn compiled_artifacts_are_cached_and_compilation_is_time_limited() {
    let plugins = plugins_dir(&["text-stats", "keywords", "chaos"]);
    let flows = flows_dir(&[]);
    let artifacts = tempfile::tempdir().unwrap();
    let config = config_file(&format!("artifacts_dir: {}\n", artifacts.path().display()));
    let listing = |host: &Host| {
        let host_url = host.url("/api/v1/plugins");
        async move {
            reqwest::get(host_url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let by_name = |list: &Value, name: &str| -> Value {
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {list}"))
    };

    let host = start(plugins.path(), flows.path(), config.path(), &[]);
    let first = listing(&host).await;
    drop(host);
    let cached: Vec<_> = std::fs::read_dir(artifacts.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(cached.len(), 3, "{cached:?}");
    assert!(cached.iter().all(|f| f.ends_with(".cwasm")));
    let host = start(plugins.path(), flows.path(), config.path(), &[]);
    let second = listing(&host).await;
    for name in ["text-stats", "keywords", "chaos"] {
        let (a, b) = (by_name(&first, name), by_name(&second, name));
        assert_eq!(a["artifact"], "compiled");
        assert_eq!(b["artifact"], "cached");
        println!(
            "{name}: compiled in {:.1} ms, loaded from the cache in {:.1} ms",
            a["compile_ms"].as_f64().unwrap(),
            b["compile_ms"].as_f64().unwrap()
        );
    }
    drop(host);

    // A limit no compilation can meet: every plugin is skipped, with why.
    let strict = config_file("artifacts_dir: ''\nlimits: {compile_timeout_ms: 1}\n");
    let host = start(plugins.path(), flows.path(), strict.path(), &[]);
    let list = listing(&host).await;
    assert_eq!(list["plugins"].as_array().unwrap().len(), 0, "{list}");
    let skipped = list["skipped"].to_string();
    assert!(
        skipped.contains("compiling took longer than 1ms"),
        "{skipped}"
    );
}

#[tokio::test]
async fn a_slow_request_gets_408_and_its_flow_still_completes() {
    let plugins = plugins_dir(&["chaos"]);
    let flows = flows_dir(&[(
        "slow",
        &one_step("slow", "chaos", "{mode: sleep, ms: 1500}"),
    )]);
    let config = config_file("limits: {request_timeout_ms: 300}\n");
    let host = start(plugins.path(), flows.path(), config.path(), &[]);
    let (status, body) = execute(&host, "slow", json!({})).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_eq!(body["code"], "timed_out", "{body}");
    let clock = Instant::now();
    loop {
        let list = get(&host, "/api/v1/slow/active-flows?status=completed").await;
        if list["flows"].as_array().is_some_and(|f| f.len() == 1) {
            break;
        }
        assert!(
            clock.elapsed() < Duration::from_secs(10),
            "never completed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_ordinary_and_five_hostile_flows_at_once() {
    let plugins = plugins_dir(&["text-normalize", "text-stats", "keywords"]);
    add_plugin(plugins.path(), "hostile", "hostile", Some(HOSTILE_MANIFEST));
    let ordinary = "name: ordinary
inputs:
  text: {type: string}
steps:
  - name: normalize
    plugin: text-normalize
    input: {text: '${inputs.text}'}
  - name: stats
    plugin: text-stats
    input: {text: '${steps.normalize.output.text}'}
  - name: keywords
    plugin: keywords
    input: {text: '${steps.normalize.output.text}'}
outputs:
  words: '${steps.stats.output.words}'
  keywords: '${steps.keywords.output.keywords}'
";
    let closed = free_port();
    let hostile: Vec<_> = hostile_cases(closed)
        .into_iter()
        .filter(|(name, ..)| {
            ["h_loop", "h_memory", "h_recursion", "h_panic", "h_huge"].contains(name)
        })
        .collect();
    let mut files = vec![("ordinary".to_string(), ordinary.to_string())];
    files.extend(
        hostile
            .iter()
            .map(|(n, c, ..)| (n.to_string(), one_step(n, "hostile", c))),
    );
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let flows = flows_dir(&refs);
    let config = config_file("");
    let host = start(plugins.path(), flows.path(), config.path(), &[]);
    let pid = host.pid();
    let text =
        |i: usize| format!("Document {i}: WebAssembly plugins run in a sandbox, {i} times over.");
    // The right outputs: each document run alone first.
    let mut expected = Vec::new();
    for i in 0..20 {
        let (_, run) = execute(&host, "ordinary", json!({"text": text(i)})).await;
        assert_eq!(run["status"], "completed", "{run}");
        expected.push(run["outputs"].clone());
    }

    let round = || {
        let host_url = host.url("");
        let hostile = hostile.clone();
        async move {
            let client = reqwest::Client::new();
            let mut tasks = Vec::new();
            for i in 0..20 {
                let (client, url) = (
                    client.clone(),
                    format!("{host_url}/api/v1/ordinary/execute"),
                );
                let text = text(i);
                tasks.push(tokio::spawn(async move {
                    let run: Value = client
                        .post(url)
                        .json(&json!({"inputs": {"text": text}}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    (String::from("ordinary"), run, i)
                }));
            }
            for (name, ..) in &hostile {
                let (client, url, name) = (
                    client.clone(),
                    format!("{host_url}/api/v1/{name}/execute"),
                    name.to_string(),
                );
                tasks.push(tokio::spawn(async move {
                    let run: Value = client
                        .post(url)
                        .json(&json!({"inputs": {}}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    (name, run, 0)
                }));
            }
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            results
        }
    };

    // A first round warms the allocator and the instance pool; the host's
    // memory is measured after it, and again after a second round.
    round().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let clock = Instant::now();
    let results = round().await;
    let took = clock.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    for (name, run, i) in &results {
        if name == "ordinary" {
            assert_eq!(run["status"], "completed", "{run}");
            assert_eq!(run["outputs"], expected[*i], "document {i}");
        } else {
            let (_, _, kind, _) = hostile.iter().find(|(n, ..)| n == name).unwrap();
            assert_eq!(run["status"], "failed", "{name}: {run}");
            assert_eq!(run["steps"][0]["error_kind"], *kind, "{name}: {run}");
        }
    }
    println!(
        "25 flows at once in {took:?}; host RSS {} MiB before, {} MiB after",
        before / 1024,
        after / 1024
    );
    assert!(
        after < before + 32 * 1024,
        "memory did not return: {before} KiB before, {after} KiB after"
    );
}

#[tokio::test]
async fn without_room_for_the_instance_pool_plugins_run_on_demand() {
    let plugins = plugins_dir(&["text-stats"]);
    let flows = flows_dir(&[("stats", &one_step("stats", "text-stats", "{}"))]);
    // A pool this large cannot be reserved on any machine.
    let config = config_file("limits: {max_instances: 50000000}\n");
    let host = start(plugins.path(), flows.path(), config.path(), &[]);
    let (_, run) = execute(&host, "stats", json!({"text": "on demand"})).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["outputs"]["out"]["words"], 2);
    assert!(
        host.log()
            .contains("pooling allocator unavailable, using on-demand allocation"),
        "{}",
        host.log()
    );
}
