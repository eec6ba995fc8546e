//! A first measurement: one step through flowhost's plugin layer (fresh
//! instance + call of the trivial `echo` plugin), and a three-step flow over
//! HTTP with its state in a real redis-server. Prints percentiles.
//!
//! `cargo bench -p flowhost --bench first` (after `plugins/build.sh`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowhost::config::{Config, Overrides};
use flowhost::plugin::{Call, Limits, PluginHost};
use flowhost_tests::{RedisServer, plugin_wasm, plugins_dir};
use serde_json::json;

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    format!(
        "p50 {:>8.1} µs   p99 {:>8.1} µs   (n={})",
        at(0.5),
        at(0.99),
        samples.len()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One step: fresh Store + instantiate + call, echo plugin.
    let host = PluginHost::new(Limits {
        memory_bytes: 64 << 20,
        max_instances: 64,
        max_component_bytes: 32 << 20,
    })
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let plugin = host.load_file(&plugin_wasm("echo")).await?;
    let (config, input) = (json!({}), json!({"text": "hello"}));
    let stop = tokio_util::sync::CancellationToken::new();
    let call = Call {
        flow_id: "0193a7c4-5e1b-7cc0-9f3a-2d4e5f607182",
        step: "echo",
        attempt: 1,
        config: &config,
        input: &input,
        timeout: Duration::from_secs(5),
        stop: &stop,
    };
    for _ in 0..200 {
        host.execute(&plugin, &call).await?;
    }
    let mut samples = Vec::new();
    for _ in 0..5000 {
        let t = Instant::now();
        host.execute(&plugin, &call).await?;
        samples.push(t.elapsed());
    }
    println!(
        "one step (fresh instance + call, echo)   {}",
        percentiles(samples)
    );

    // A three-step flow over HTTP, state in Redis.
    let redis = RedisServer::start()?;
    let plugins = plugins_dir(&["echo"]);
    let flows = tempfile::tempdir()?;
    std::fs::write(
        flows.path().join("three.yaml"),
        "name: three\ninputs:\n  text: {type: string}\nsteps:\n  - {name: a, plugin: echo, input: {text: '${inputs.text}'}}\n  - {name: b, plugin: echo, input: '${steps.a.output.input}'}\n  - {name: c, plugin: echo, input: '${steps.b.output.input}'}\noutputs:\n  text: '${steps.c.output.input.text}'\n",
    )?;
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        redis_url: Some(redis.url()),
        plugins_dir: Some(plugins.path().to_owned()),
        flows_dir: Some(flows.path().to_owned()),
    };
    let mut config = Config::load(
        Some(&flowhost_tests::repo_root().join("config.yaml")),
        &overrides,
    )?;
    config.log.filter = "warn".into();
    let app = flowhost::App::build(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(flowhost::serve(
        listener,
        Arc::clone(&app),
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/three/execute");
    let body = json!({"inputs": {"text": "hello"}}).to_string();
    let mut samples = Vec::new();
    for i in 0..2200 {
        let t = Instant::now();
        let resp = client.post(&url).body(body.clone()).send().await?;
        let run: serde_json::Value = resp.json().await?;
        if i >= 200 {
            samples.push(t.elapsed());
        }
        anyhow::ensure!(run["status"] == "completed", "{run}");
    }
    println!(
        "three-step flow over HTTP, Redis state   {}",
        percentiles(samples)
    );
    Ok(())
}
