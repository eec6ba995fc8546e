//! The commands of the `flowhost` CLI, one function each: serve, run one
//! flow (its file inputs stored as blobs first), list plugins, validate and
//! prune flows, invalidate the cache. The command line itself is parsed in
//! `main.rs`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use flowhost_core::analytics::parse_window;
use flowhost_core::blob::{BlobRef, BlobStore, CHUNK};
use flowhost_core::cache::{Invalidate, ResultCache};
use flowhost_core::runner::FlowContext;
use flowhost_core::state::{FlowStatus, StateStore};
use flowhost_redis::RedisStore;
use serde_json::{Map, Value};

use crate::App;
use crate::config::{Config, LogFormat};

#[derive(Subcommand)]
pub enum Command {
    /// Serve the HTTP API
    Serve,
    /// Run one flow and print its result as JSON; exits 0 when it completed
    Run {
        /// The flow's name
        flow: String,
        /// The inputs, as a JSON object, or @FILE to read them from a file
        #[arg(long, short, default_value = "{}")]
        input: String,
        /// An input that is a file: stored as a blob, the input NAME is its
        /// reference; the media type comes from the extension. Repeatable
        #[arg(long = "input-file", value_name = "NAME=PATH")]
        input_file: Vec<String>,
    },
    /// List the plugins found in the plugins folder, and the files skipped
    Plugins,
    /// Flow definitions
    Flows {
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// The result cache in Redis
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Remove cached results: by plugin, by flow, or one key
    Invalidate {
        #[arg(long, group = "what")]
        plugin: Option<String>,
        #[arg(long, group = "what")]
        flow: Option<String>,
        #[arg(long, group = "what")]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum FlowsCommand {
    /// Check every flow file against the loaded plugins; exits 1 on errors
    Validate,
    /// Remove finished flows (completed, failed, cancelled) older than an age
    Prune {
        /// e.g. 30m, 12h, 7d
        #[arg(long)]
        older_than: String,
    },
}

/// Runs one command to its end; the exit code says how it went.
pub async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => serve(config).await,
        Command::Run {
            flow,
            input,
            input_file,
        } => run_flow(config, &flow, input, &input_file).await,
        Command::Plugins => list_plugins(&config).await,
        Command::Cache {
            command: CacheCommand::Invalidate { plugin, flow, key },
        } => invalidate_cache(&config, plugin, flow, key).await,
        Command::Flows {
            command: FlowsCommand::Prune { older_than },
        } => prune(&config, &older_than).await,
        Command::Flows {
            command: FlowsCommand::Validate,
        } => validate(&config).await,
    }
}

/// Serves the API until SIGTERM or SIGINT, then drains: new work is
/// refused, running flows get the grace period and are left paused.
///
/// The host listens first, then serves while plugins load; it takes work
/// from the shared queue and resumes flows only once they all have, so that
/// no flow is refused for a plugin that is about to be there.
async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let listen = config.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let app = App::start(config).await?;
    tracing::info!(address = %listener.local_addr()?, "flowhost serving");
    let background = app.clone();
    tokio::spawn(async move {
        background.plugins_settled().await;
        background.resume_on_start().await;
    });
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve(listener, app.clone(), async {
        let _ = server_stopped.await;
    }));
    shutdown_signal().await;
    // New work is refused from here on; running flows finish their
    // steps (or are interrupted at the end of the grace period) and
    // are left paused, which also answers their waiting requests.
    let grace = Duration::from_millis(app.config.shutdown.grace_period_ms);
    let interrupted = app.runner.shutdown(grace).await;
    tracing::info!(interrupted, "flows paused; stopping the server");
    let _ = stop_server.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error while stopping"),
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("connections still open after 5 s; exiting"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one flow in this process and prints its final state.
async fn run_flow(
    config: Config,
    flow: &str,
    input: String,
    input_files: &[String],
) -> anyhow::Result<ExitCode> {
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read inputs from {path}"))?,
        None => input,
    };
    let mut inputs: Map<String, Value> = match serde_json::from_str(&text) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("flowhost: --input must be a JSON object: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let files = match input_files_of(input_files, &inputs, config.blobs.max_bytes) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("flowhost: --input-file {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // A one-off run holds its flow's lease under a name of its own,
    // never the name of a server on this machine.
    let mut config = config;
    config.queue.host_id = format!("{}:run-{}", config.host_id(), std::process::id());
    // Only the plugins this flow uses are waited for.
    let app = App::start(config).await?;
    let Some(def) = app.flow_when_ready(flow).await else {
        app.plugins_settled().await;
        let flows = app.flows.snapshot();
        let known: Vec<&str> = flows.flows().map(|f| f.name.as_str()).collect();
        eprintln!(
            "flowhost: no flow named `{flow}`; loaded flows: [{}]",
            known.join(", ")
        );
        return Ok(ExitCode::from(2));
    };
    for (name, path) in files {
        let stored = store_file(app.blobs.as_ref(), &path)
            .await
            .with_context(|| format!("cannot store {} as a blob", path.display()))?;
        inputs.insert(name, stored.to_json());
    }
    if app.runner.is_shared() {
        // Its lease renewed for as long as it runs, so that no server sharing
        // the Redis takes the run over; it takes no queued work.
        let ttl = Duration::from_millis(app.config.queue.lease_ttl_ms);
        flowhost_core::runner::worker::spawn_renewal(app.runner.clone(), app.store.clone(), ttl);
    }
    let state = match app.runner.execute(def, inputs, FlowContext::new()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flowhost: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(if state.status == FlowStatus::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The `--input-file NAME=PATH` arguments, checked before anything starts:
/// each names a new input and a readable file within `blobs.max_bytes`.
fn input_files_of(
    args: &[String],
    inputs: &Map<String, Value>,
    max_bytes: u64,
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for arg in args {
        let Some((name, path)) = arg
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        else {
            return Err(format!("`{arg}`: expected NAME=PATH"));
        };
        if inputs.contains_key(name) || files.iter().any(|(n, _)| n == name) {
            return Err(format!("`{arg}`: input `{name}` is given twice"));
        }
        let size = std::fs::metadata(path)
            .map_err(|e| format!("`{arg}`: cannot read {path}: {e}"))?
            .len();
        if size > max_bytes {
            return Err(format!(
                "`{arg}`: {path} has {size} bytes, over blobs.max_bytes ({max_bytes})"
            ));
        }
        files.push((name.to_owned(), PathBuf::from(path)));
    }
    Ok(files)
}

/// Stores a file as a blob, a `CHUNK` at a time, its media type guessed
/// from its extension.
async fn store_file(blobs: &dyn BlobStore, path: &Path) -> anyhow::Result<BlobRef> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut file = std::fs::File::open(path)?;
    let mut upload = blobs.begin(crate::api::media_type_for(&name)).await?;
    let mut buffer = vec![0u8; CHUNK];
    loop {
        // A file read blocks the runtime's thread briefly; this process runs
        // one flow and serves nothing.
        let n = match file.read(&mut buffer) {
            Ok(n) => n,
            Err(e) => {
                upload.abort().await;
                return Err(e.into());
            }
        };
        if n == 0 {
            break;
        }
        if let Err(e) = upload.write(&buffer[..n]).await {
            upload.abort().await;
            return Err(e.into());
        }
    }
    Ok(upload.finish().await?)
}

async fn list_plugins(config: &Config) -> anyhow::Result<ExitCode> {
    let plugins = App::load_plugins(config).await?.snapshot();
    let mut out = std::io::stdout().lock();
    writeln!(out, "plugins folder: {}", config.plugins_dir.display())?;
    for p in plugins.plugins() {
        let m = &p.meta;
        writeln!(
            out,
            "  loaded   {:<20} {:<8} {}  {}",
            m.name,
            m.version,
            &m.hash[..12],
            m.description
        )?;
    }
    for s in plugins.skipped() {
        writeln!(out, "  skipped  {}: {}", s.path.display(), s.reason)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn invalidate_cache(
    config: &Config,
    plugin: Option<String>,
    flow: Option<String>,
    key: Option<String>,
) -> anyhow::Result<ExitCode> {
    let what = match (plugin, flow, key) {
        (Some(p), None, None) => Invalidate::Plugin(p),
        (None, Some(f), None) => Invalidate::Flow(f),
        (None, None, Some(k)) => Invalidate::Key(k),
        _ => {
            eprintln!("flowhost: give one of --plugin, --flow or --key");
            return Ok(ExitCode::from(2));
        }
    };
    if config.redis_url().is_none() {
        eprintln!(
            "flowhost: no redis.url configured: the in-memory cache lives inside the \
             serving process; use DELETE /api/v1/cache there"
        );
        return Ok(ExitCode::from(2));
    }
    let store = redis_store(config).await?;
    let removed = store.invalidate(&what).await?;
    println!("removed {removed} cached result(s)");
    Ok(ExitCode::SUCCESS)
}

async fn prune(config: &Config, older_than: &str) -> anyhow::Result<ExitCode> {
    let age = match parse_window(older_than) {
        Ok(age) => age,
        Err(e) => {
            eprintln!("flowhost: --older-than: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if config.redis_url().is_none() {
        eprintln!(
            "flowhost: no redis.url configured: in-memory flows live inside the serving \
             process; use DELETE /api/v1/admin/flows there"
        );
        return Ok(ExitCode::from(2));
    }
    let store = redis_store(config).await?;
    let removed = StateStore::prune_older_than(&store, age).await?;
    println!("removed {removed} finished flow(s)");
    Ok(ExitCode::SUCCESS)
}

async fn validate(config: &Config) -> anyhow::Result<ExitCode> {
    let plugins = App::load_plugins(config).await?;
    let catalog = App::load_flows(config, &plugins);
    for f in catalog.flows() {
        println!(
            "ok     {} ({} steps) {}",
            f.name,
            f.steps.len(),
            f.file.display()
        );
    }
    for e in catalog.errors() {
        println!("error  {e}");
    }
    Ok(if catalog.errors().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The Redis store of the configuration, for commands that work on it
/// directly (no plugins or flows needed).
async fn redis_store(config: &Config) -> anyhow::Result<RedisStore> {
    let owner = format!("{}:cli-{}", config.host_id(), std::process::id());
    let mut redis = crate::app::redis_config(config, owner);
    redis.retention = None;
    Ok(RedisStore::connect(&redis).await?)
}

/// Logs to stderr, filtered by RUST_LOG when set, else by `log.filter`.
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins when set and not empty; then log.filter from config.
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| config.log.filter.clone());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("flowhost: log filter {directives:?}: {e}; using \"info\"");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested: taking no new work");
}
