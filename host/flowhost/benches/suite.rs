//! The benchmark suite: `cargo bench -p flowhost --bench suite` prints one
//! table. Each comparison is measured in the same run, interleaved, and
//! reported as a ratio, because these machines are noisy. See BENCHMARKS.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowhost::App;
use flowhost::app::plugin_limits;
use flowhost::config::{Config, Overrides};
use flowhost_core::runner::FlowContext;
use flowhost_tests::{RedisServer, flows_dir, plugin_wasm, plugins_dir, repo_root};
use flowhost_wasm::{Call, PluginHost};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use wasmtime::Store;
use wasmtime::component::{Linker, ResourceTable, Val};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

#[path = "suite/blobs.rs"]
mod blobs;

type Result<T> = anyhow::Result<T>;

// The same allocator as the `flowhost` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

struct Table(Vec<(String, String)>);

impl Table {
    fn row(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let (what, value) = (what.into(), value.into());
        println!("{what:<58} {value}");
        self.0.push((what, value));
    }
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    (pct(&samples, 0.5), pct(&samples, 0.99))
}

/// What a bare embedding needs: a WASI context that grants nothing.
struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Item 1, one step through flowhost's plugin layer against the bare floor:
/// the same component on the same engine, instantiated and called directly.
async fn per_step(t: &mut Table) -> Result<()> {
    let mut limits = plugin_limits(&Config::default());
    limits.artifacts_dir = None;
    let host = PluginHost::new(limits).map_err(wasm_err)?;
    let plugin = host.load_file(&plugin_wasm("echo")).await?;
    let engine = host.engine().clone();
    let mut linker = Linker::<Bare>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm_err)?;
    let pre = linker
        .instantiate_pre(plugin.component())
        .map_err(wasm_err)?;

    let (config, input) = (json!({}), json!({"text": "hello"}));
    let stop = CancellationToken::new();
    let call = Call {
        flow_id: "0193a7c4-5e1b-7cc0-9f3a-2d4e5f607182",
        step: "echo",
        attempt: 1,
        config: &config,
        input: &input,
        timeout: Some(Duration::from_secs(5)),
        stop: &stop,
    };
    let request = || {
        Val::Record(vec![
            ("flow-id".into(), Val::String(call.flow_id.into())),
            ("step".into(), Val::String("echo".into())),
            ("attempt".into(), Val::U32(1)),
            (
                "idempotency-key".into(),
                Val::String(format!("{}:echo:1", call.flow_id)),
            ),
            ("config".into(), Val::String(config.to_string())),
            ("input".into(), Val::String(input.to_string())),
        ])
    };
    let bare = || async {
        let mut store = Store::new(
            &engine,
            Bare {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(1_000_000);
        // The engine meters fuel for every store; flowhost's is bottomless.
        store.set_fuel(u64::MAX).map_err(wasm_err)?;
        let instance = pre.instantiate_async(&mut store).await.map_err(wasm_err)?;
        let func = instance
            .get_func(&mut store, "execute")
            .ok_or_else(|| anyhow::anyhow!("no execute export"))?;
        let mut results = [Val::Bool(false)];
        func.call_async(&mut store, &[request()], &mut results)
            .await
            .map_err(wasm_err)?;
        anyhow::ensure!(matches!(results[0], Val::Result(Ok(_))), "echo failed");
        Result::Ok(())
    };
    for _ in 0..300 {
        bare().await?;
        host.execute_plugin(&plugin, &call).await.result?;
    }
    let (mut floor, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..5000 {
        let c = Instant::now();
        bare().await?;
        floor.push(c.elapsed());
        let c = Instant::now();
        host.execute_plugin(&plugin, &call).await.result?;
        ours.push(c.elapsed());
    }
    let (f50, f99) = summary(floor);
    let (o50, o99) = summary(ours);
    t.row(
        "1. step, bare wasmtime floor (instantiate + call)",
        format!("p50 {f50:.1} µs   p99 {f99:.1} µs"),
    );
    t.row(
        "1. step, flowhost plugin layer (fresh sandbox + call)",
        format!("p50 {o50:.1} µs   p99 {o99:.1} µs"),
    );
    t.row(
        "1. step overhead ratio, flowhost / floor (p50)",
        format!("{:.2}x   (target <= 1.5x)", o50 / f50),
    );
    Ok(())
}

/// A chain of `n` echo steps, each on the previous output, cache off.
fn chain_flow(name: &str, n: usize) -> String {
    let mut f = format!("name: {name}\ninputs:\n  text: {{type: string}}\nsteps:\n");
    for i in 0..n {
        let input = if i == 0 {
            "{text: '${inputs.text}'}".to_owned()
        } else {
            format!("'${{steps.s{}.output.input}}'", i - 1)
        };
        f.push_str(&format!(
            "  - {{name: s{i}, plugin: echo, input: {input}, cache: false}}\n"
        ));
    }
    f
}

async fn build_app(
    redis: Option<&RedisServer>,
    plugins: &std::path::Path,
    flows: &std::path::Path,
) -> Result<Arc<App>> {
    build_app_with(redis, plugins, flows, |_| {}).await
}

/// `build_app`, with the configuration changed by `tweak` first.
async fn build_app_with(
    redis: Option<&RedisServer>,
    plugins: &std::path::Path,
    flows: &std::path::Path,
    tweak: impl FnOnce(&mut Config),
) -> Result<Arc<App>> {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        redis_url: Some(redis.map(RedisServer::url).unwrap_or_default()),
        plugins_dir: Some(plugins.to_owned()),
        flows_dir: Some(flows.to_owned()),
        auth_tokens: None,
    };
    let mut config = Config::load(Some(&repo_root().join("config.yaml")), &overrides)?;
    config.log.filter = "error".into();
    config.limits.step_timeout_ms = 120_000;
    tweak(&mut config);
    Ok(App::build(config).await?)
}

async fn serve(app: &Arc<App>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(flowhost::serve(
        listener,
        app.clone(),
        std::future::pending(),
    ));
    Ok(format!("http://{addr}"))
}

/// Runs `flow` on each server in turn, `warm + kept` rounds, and returns the
/// latencies of the last `kept` rounds by server name: interleaved, so that
/// the machine's noise falls on every server alike.
async fn interleaved<'a>(
    client: &reqwest::Client,
    servers: &[(&'a str, &str)],
    flow: &str,
    warm: usize,
    kept: usize,
) -> Result<HashMap<&'a str, Vec<Duration>>> {
    let body = json!({"inputs": {"text": "hello"}}).to_string();
    let mut samples: HashMap<&str, Vec<Duration>> = HashMap::new();
    for i in 0..warm + kept {
        for (name, base) in servers {
            let c = Instant::now();
            let run: Value = client
                .post(format!("{base}/api/v1/{flow}/execute"))
                .body(body.clone())
                .send()
                .await?
                .json()
                .await?;
            let took = c.elapsed();
            anyhow::ensure!(run["status"] == "completed", "{run}");
            if i >= warm {
                samples.entry(name).or_default().push(took);
            }
        }
    }
    Ok(samples)
}

/// Item 2, sync flows of 1, 3 and 10 steps over HTTP, memory store against
/// Redis, beside the HTTP floor (a GET of /healthz on the same server).
async fn sync_latency(t: &mut Table, redis: &RedisServer) -> Result<()> {
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[
        ("c1", &chain_flow("c1", 1)),
        ("c3", &chain_flow("c3", 3)),
        ("c10", &chain_flow("c10", 10)),
    ]);
    let memory = serve(&build_app(None, plugins.path(), flows.path()).await?).await?;
    let with_redis = serve(&build_app(Some(redis), plugins.path(), flows.path()).await?).await?;
    let client = reqwest::Client::new();
    let mut floor = Vec::new();
    for i in 0..2200 {
        let c = Instant::now();
        let health: Value = client
            .get(format!("{with_redis}/healthz"))
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(health["status"] == "ok");
        if i >= 200 {
            floor.push(c.elapsed());
        }
    }
    let (p50, p99) = summary(floor);
    t.row(
        "2. HTTP floor: GET /healthz, same client and server",
        format!("p50 {p50:.0} µs   p99 {p99:.0} µs"),
    );
    for flow in ["c1", "c3", "c10"] {
        let servers = [("memory", memory.as_str()), ("redis", with_redis.as_str())];
        let mut samples = interleaved(&client, &servers, flow, 200, 2000).await?;
        for store in ["memory", "redis"] {
            let (p50, p99) = summary(samples.remove(store).unwrap_or_default());
            let steps = &flow[1..];
            let target = if flow == "c3" && store == "redis" {
                "   (target p50 < 1000 µs)"
            } else {
                ""
            };
            t.row(
                format!("2. sync flow, {steps} step(s), HTTP, {store} store"),
                format!("p50 {p50:.0} µs   p99 {p99:.0} µs{target}"),
            );
        }
    }
    Ok(())
}

/// Item 2b, what durability costs: the 3-step sync flow over HTTP on Redis
/// with AOF and `appendfsync everysec` (docker-compose's setting: an OS
/// crash can lose up to a second of acknowledged runs) against `always`
/// (every write on disk before Redis answers), interleaved.
async fn fsync_cost(t: &mut Table) -> Result<()> {
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[("c3", &chain_flow("c3", 3))]);
    let mut servers = Vec::new();
    for policy in ["everysec", "always"] {
        let redis = RedisServer::start_with(
            flowhost_tests::free_port(),
            &["--appendonly", "yes", "--appendfsync", policy],
        )?;
        let app = build_app(Some(&redis), plugins.path(), flows.path()).await?;
        servers.push((policy, serve(&app).await?, redis));
    }
    let client = reqwest::Client::new();
    let bases: Vec<(&str, &str)> = servers.iter().map(|(p, b, _)| (*p, b.as_str())).collect();
    let mut samples = interleaved(&client, &bases, "c3", 100, 1000).await?;
    let (base50, _) = summary(samples["everysec"].clone());
    for policy in ["everysec", "always"] {
        let (p50, p99) = summary(samples.remove(policy).unwrap_or_default());
        t.row(
            format!("2b. sync flow, 3 steps, Redis AOF appendfsync {policy}"),
            format!("p50 {p50:.0} µs   p99 {p99:.0} µs   ({:.2}x)", p50 / base50),
        );
    }
    Ok(())
}

/// The same chains run in process (no HTTP), to tell the runner's cost
/// from the HTTP layer's.
async fn in_process(t: &mut Table, redis: &RedisServer) -> Result<()> {
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[("c1", &chain_flow("c1", 1)), ("c3", &chain_flow("c3", 3))]);
    let memory = build_app(None, plugins.path(), flows.path()).await?;
    let with_redis = build_app(Some(redis), plugins.path(), flows.path()).await?;
    for flow in ["c3", "c1", "c3"] {
        for (store, app) in [("memory", &memory), ("redis", &with_redis)] {
            let def = app.flows.get(flow).unwrap().clone();
            let mut samples = Vec::new();
            for i in 0..2200 {
                let mut inputs = Map::new();
                inputs.insert("text".into(), "hello".into());
                let c = Instant::now();
                let s = app
                    .runner
                    .execute(def.clone(), inputs, FlowContext::new())
                    .await?;
                if i >= 200 {
                    samples.push(c.elapsed());
                }
                anyhow::ensure!(s.status == flowhost_core::state::FlowStatus::Completed);
            }
            let (p50, p99) = summary(samples);
            t.row(
                format!(
                    "2. in process (no HTTP), {} step(s), {store} store",
                    &flow[1..]
                ),
                format!("p50 {p50:.0} µs   p99 {p99:.0} µs"),
            );
        }
    }
    Ok(())
}

/// Item 3, background runs per second on one host with Redis: three-step
/// echo flows submitted over HTTP by 32 concurrent clients, until all ended.
async fn async_throughput(t: &mut Table, redis: &RedisServer) -> Result<()> {
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[("a3", &chain_flow("a3", 3))]);
    let app = build_app(Some(redis), plugins.path(), flows.path()).await?;
    // The queue's take loop: background runs go through the Redis stream.
    app.resume_on_start().await;
    let base = serve(&app).await?;
    let total = 4000usize;
    let clients = 32usize;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (base, client) = (base.clone(), reqwest::Client::new());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < total {
                let body = json!({"inputs": {"text": format!("flow {i}")}}).to_string();
                loop {
                    let resp = client
                        .post(format!("{base}/api/v1/a3/execute-async"))
                        .body(body.clone())
                        .send()
                        .await?;
                    match resp.status().as_u16() {
                        202 => break,
                        429 => tokio::time::sleep(Duration::from_millis(5)).await,
                        other => anyhow::bail!("execute-async answered {other}"),
                    }
                }
                i += clients;
            }
            Result::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let submitted = started.elapsed();
    let mut conn = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: usize = redis::cmd("ZCARD")
            .arg("fh:flows:status:completed")
            .query(&mut conn)?;
        if done >= total {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{done} of {total} completed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    // Stops the queue loops, which would poll Redis during later items.
    app.runner.shutdown(Duration::ZERO).await;
    t.row(
        "3. async throughput, 1 host in-process, Redis, 3-step flows",
        format!(
            "{:.0} flows/s   ({total} submitted in {:.2} s, all completed in {:.2} s)   (target >= 2000)",
            total as f64 / took.as_secs_f64(),
            submitted.as_secs_f64(),
            took.as_secs_f64()
        ),
    );
    for hosts in [1, 3] {
        let (rate, submitted, took) = async_processes(redis, hosts, total).await?;
        t.row(
            format!("3. async throughput, {hosts} host process(es) sharing one Redis"),
            format!(
                "{rate:.0} flows/s   ({total} submitted in {submitted:.2} s, all completed in {took:.2} s)"
            ),
        );
    }
    Ok(())
}

/// `hosts` flowhost processes on one Redis (a key prefix of their own), fed
/// `total` 3-step background runs round-robin by 32 clients; the rate is
/// flows completed per second, from the first submission to the last
/// completion.
async fn async_processes(
    redis: &RedisServer,
    hosts: usize,
    total: usize,
) -> Result<(f64, f64, f64)> {
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[("a3", &chain_flow("a3", 3))]);
    let prefix = format!("bench{hosts}:");
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        format!(
            "redis: {{key_prefix: '{prefix}'}}\nsubmit: {{max_in_flight: 100000}}\nlog: {{filter: error}}\n"
        ),
    )?;
    let mut children = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..hosts {
        let port = flowhost_tests::free_port();
        children.push(
            std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
                .arg("serve")
                .current_dir(repo_root())
                .env("FLOWHOST_CONFIG", config.path())
                .env("FLOWHOST_LISTEN", format!("127.0.0.1:{port}"))
                .env("FLOWHOST_PLUGINS_DIR", plugins.path())
                .env("FLOWHOST_FLOWS_DIR", flows.path())
                .env("FLOWHOST_REDIS_URL", redis.url())
                .env("RUST_LOG", "error")
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "no start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let clients = 32usize;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (bases, client) = (bases.clone(), reqwest::Client::new());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < total {
                let body = json!({"inputs": {"text": format!("flow {i}")}}).to_string();
                let base = &bases[i % bases.len()];
                let resp = client
                    .post(format!("{base}/api/v1/a3/execute-async"))
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status() == 202,
                    "execute-async answered {}",
                    resp.status()
                );
                i += clients;
            }
            Result::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let submitted = started.elapsed().as_secs_f64();
    let mut conn = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done: usize = redis::cmd("ZCARD")
            .arg(format!("{prefix}flows:status:completed"))
            .query(&mut conn)?;
        if done >= total {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{done} of {total} completed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed().as_secs_f64();
    for mut child in children {
        child.kill()?;
        child.wait()?;
    }
    Ok((total as f64 / took, submitted, took))
}

fn redis_counters(conn: &mut redis::Connection) -> Result<(u64, u64)> {
    let stats: String = redis::cmd("INFO").arg("stats").query(conn)?;
    let bytes = stats
        .lines()
        .find_map(|l| l.strip_prefix("total_net_input_bytes:"))
        .ok_or_else(|| anyhow::anyhow!("no total_net_input_bytes"))?
        .trim()
        .parse()?;
    let cmds: String = redis::cmd("INFO").arg("commandstats").query(conn)?;
    let calls = cmds
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    Ok((calls, bytes))
}

/// Item 4, commands and bytes Redis receives per step, read from Redis itself.
async fn redis_cost(t: &mut Table, redis: &RedisServer) -> Result<()> {
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[
        ("r1", &chain_flow("r1", 1)),
        ("r8", &chain_flow("r8", 8)),
        ("r64", &chain_flow("r64", 64)),
    ]);
    let app = build_app(Some(redis), plugins.path(), flows.path()).await?;
    let mut conn = redis.connection();
    let runs = 50u64;
    let mut per_flow = Vec::new();
    for (flow, steps) in [("r1", 1u64), ("r8", 8), ("r64", 64)] {
        let def = app.flows.get(flow).unwrap().clone();
        let (c0, b0) = redis_counters(&mut conn)?;
        for _ in 0..runs {
            let mut inputs = Map::new();
            inputs.insert("text".into(), "hello".into());
            let s = app
                .runner
                .execute(def.clone(), inputs, FlowContext::new())
                .await?;
            anyhow::ensure!(s.status == flowhost_core::state::FlowStatus::Completed);
        }
        let (c1, b1) = redis_counters(&mut conn)?;
        let (calls, bytes) = (
            (c1 - c0) as f64 / runs as f64,
            (b1 - b0) as f64 / runs as f64,
        );
        per_flow.push((steps, calls, bytes));
        t.row(
            format!("4. Redis per flow of {steps} step(s)"),
            format!(
                "{calls:.1} commands, {bytes:.0} bytes   ({:.2} commands, {:.0} bytes per step)",
                calls / steps as f64,
                bytes / steps as f64
            ),
        );
    }
    let marginal = |a: (u64, f64, f64), b: (u64, f64, f64)| {
        let n = (b.0 - a.0) as f64;
        ((b.1 - a.1) / n, (b.2 - a.2) / n)
    };
    let (c18, b18) = marginal(per_flow[0], per_flow[1]);
    let (c864, b864) = marginal(per_flow[1], per_flow[2]);
    t.row(
        "4. Redis cost of one more step, 1→8 steps",
        format!("{c18:.2} commands, {b18:.0} bytes"),
    );
    t.row(
        "4. Redis cost of one more step, 8→64 steps",
        format!("{c864:.2} commands, {b864:.0} bytes   (flat: same as 1→8)"),
    );
    Ok(())
}

/// Item 5, one cached step: a hit against a miss, in process, Redis store.
async fn cache(t: &mut Table, redis: &RedisServer) -> Result<()> {
    let plugins = plugins_dir(&["echo"]);
    let flow = "name: cached\ninputs:\n  text: {type: string}\nsteps:\n  - {name: s, plugin: echo, input: {text: '${inputs.text}'}}\n";
    let flows = flows_dir(&[("cached", flow)]);
    let app = build_app(Some(redis), plugins.path(), flows.path()).await?;
    let def = app.flows.get("cached").unwrap().clone();
    let (mut hits, mut misses) = (Vec::new(), Vec::new());
    for i in 0..2000 {
        for (kind, text) in [
            ("miss", format!("fresh {i}")),
            ("hit", "always the same".to_owned()),
        ] {
            let mut inputs = Map::new();
            inputs.insert("text".into(), text.into());
            let s = app
                .runner
                .execute(def.clone(), inputs, FlowContext::new())
                .await?;
            let step = &s.steps["s"];
            let took = Duration::from_secs_f64(step.execution_time.unwrap_or(0.0));
            if i >= 100 {
                match kind {
                    "hit" if step.cached => hits.push(took),
                    "miss" if !step.cached => misses.push(took),
                    _ => {}
                }
            }
        }
    }
    let (h50, h99) = summary(hits);
    let (m50, m99) = summary(misses);
    t.row(
        "5. cached step, miss (plugin runs; lookup + run + store)",
        format!("p50 {m50:.0} µs   p99 {m99:.0} µs"),
    );
    t.row(
        "5. cached step, hit (lookup only)",
        format!(
            "p50 {h50:.0} µs   p99 {h99:.0} µs   ({:.1}x faster)",
            m50 / h50
        ),
    );
    Ok(())
}

/// Item 6, from process start to accepting connections with 10 plugins.
fn cold_start(t: &mut Table) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut n = 0;
    for name in [
        "text-normalize",
        "text-stats",
        "keywords",
        "summarize",
        "echo",
        "chaos",
    ] {
        std::fs::copy(plugin_wasm(name), dir.path().join(format!("{name}.wasm")))?;
        n += 1;
    }
    for i in 0..(10 - n) {
        std::fs::copy(
            plugin_wasm("keywords"),
            dir.path().join(format!("copy{i}.wasm")),
        )?;
    }
    let artifacts = tempfile::tempdir()?;
    let no_cache = dir.path().join("no-cache.yaml");
    std::fs::write(&no_cache, "artifacts_dir: ''\n")?;
    let with_cache = dir.path().join("cache.yaml");
    std::fs::write(
        &with_cache,
        format!("artifacts_dir: {}\n", artifacts.path().display()),
    )?;
    let start = |config: &std::path::Path| -> Result<(Duration, Duration)> {
        let port = flowhost_tests::free_port();
        let started = Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
            .arg("serve")
            .current_dir(repo_root())
            .env("FLOWHOST_CONFIG", config)
            .env("FLOWHOST_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLOWHOST_PLUGINS_DIR", dir.path())
            .env("FLOWHOST_REDIS_URL", "")
            .env("RUST_LOG", "error")
            .stderr(std::process::Stdio::null())
            .spawn()?;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(2));
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "no start");
        }
        let listening = started.elapsed();
        // Plugins load in the background: the host serves before they are
        // all in. The second figure is the time until none is loading.
        while !flowhost_tests::plugins_settled(port, None) {
            std::thread::sleep(Duration::from_millis(2));
            anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "no load");
        }
        let all_loaded = started.elapsed();
        child.kill()?;
        child.wait()?;
        Ok((listening, all_loaded))
    };
    let median = |config: &std::path::Path| -> Result<String> {
        let samples = (0..5).map(|_| start(config)).collect::<Result<Vec<_>>>()?;
        let pick = |f: fn(&(Duration, Duration)) -> Duration| {
            let mut v: Vec<Duration> = samples.iter().map(f).collect();
            v.sort();
            v[2].as_secs_f64() * 1e3
        };
        Ok(format!(
            "listening: median {:.0} ms   every plugin loaded: median {:.0} ms",
            pick(|s| s.0),
            pick(|s| s.1)
        ))
    };
    t.row(
        "6. cold start, 10 plugins, no artifact cache",
        median(&no_cache)?,
    );
    // The first start fills the cache; the samples are the starts after it.
    start(&with_cache)?;
    t.row(
        "6. start with the compiled-artifact cache filled",
        median(&with_cache)?,
    );
    Ok(())
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Item 7, resident memory with many flows in flight on a slow step.
async fn memory(t: &mut Table) -> Result<()> {
    let plugins = plugins_dir(&["chaos"]);
    let flow = "name: slow\ninputs:\n  text: {type: string}\nsteps:\n  - {name: s, plugin: chaos, input: '${inputs.text}', config: {mode: sleep, ms: 60000}}\n";
    let flows = flows_dir(&[("slow", flow)]);
    for count in [1_000usize, 10_000] {
        let app = build_app(None, plugins.path(), flows.path()).await?;
        let def = app.flows.get("slow").unwrap().clone();
        let before = rss_bytes();
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let (runner, def) = (app.runner.clone(), def.clone());
            tasks.push(tokio::spawn(async move {
                let mut inputs = Map::new();
                inputs.insert("text".into(), format!("flow {i}").into());
                runner.execute(def, inputs, FlowContext::new()).await
            }));
        }
        // Wait until every flow is recorded running.
        let started = Instant::now();
        while app.runner.active_count() < count && started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let in_flight = app.runner.active_count();
        let peak = rss_bytes();
        t.row(
            format!("7. resident memory, {count} flows in flight"),
            format!(
                "{:.0} MiB over {:.0} MiB idle ({in_flight} in flight; {:.1} KiB per flow)",
                (peak - before) as f64 / 1048576.0,
                before as f64 / 1048576.0,
                (peak - before) as f64 / 1024.0 / count as f64
            ),
        );
        app.runner.shutdown(Duration::ZERO).await;
        for task in tasks {
            let _ = task.await;
        }
    }
    Ok(())
}

/// `cargo bench -p flowhost --bench suite [-- ITEM...]` runs every item, or
/// the ones named: step, sync, fsync, runner, async, redis, cache, start,
/// memory, blobs (8a image, 8b upload, 8c compression; or `image`, `upload`,
/// `compression` alone).
#[tokio::main]
async fn main() -> Result<()> {
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |item: &str| chosen.is_empty() || chosen.iter().any(|c| c == item);
    let mut t = Table(Vec::new());
    println!(
        "flowhost benchmark suite ({} cores)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let redis = RedisServer::start()?;
    if run("step") {
        per_step(&mut t).await?;
    }
    if run("sync") {
        sync_latency(&mut t, &redis).await?;
    }
    if run("fsync") {
        fsync_cost(&mut t).await?;
    }
    if run("runner") {
        in_process(&mut t, &redis).await?;
    }
    if run("async") {
        async_throughput(&mut t, &redis).await?;
    }
    if run("redis") {
        redis_cost(&mut t, &redis).await?;
    }
    if run("cache") {
        cache(&mut t, &redis).await?;
    }
    if run("start") {
        cold_start(&mut t)?;
    }
    if run("memory") {
        memory(&mut t).await?;
    }
    if run("blobs") || run("image") {
        blobs::image(&mut t).await?;
    }
    if run("blobs") || run("upload") {
        blobs::upload(&mut t).await?;
    }
    if run("blobs") || run("compression") {
        blobs::compression(&mut t).await?;
    }
    Ok(())
}
