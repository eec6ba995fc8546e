//! The composition root: builds the adapters from a validated `Config`
//! (plugins on wasmtime, the Redis or memory store, Prometheus metrics) and
//! hands them to the core's runner as ports. The CLI and the tests build an
//! `App` the same way, then serve it or run a flow with it.
//!
//! Plugins load in the background: the flow catalog is validated again each
//! time one finishes, and swapped in whole, so a flow is served as soon as
//! every plugin it uses is loaded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flowhost_core::blob::{BlobStore, MemoryBlobs, retention};
use flowhost_core::flow::{FlowCatalog, FlowDefinition, FlowSet};
use flowhost_core::observe::Observer;
use flowhost_core::queue::WorkQueue;
use flowhost_core::runner::worker::QueueSettings;
use flowhost_core::runner::{CacheSettings, FlowRunner, Ports, RetryPolicy, RunnerConfig};
use flowhost_core::state::StateStore;
use flowhost_files::FsBlobStore;
use flowhost_redis::{FallbackStore, RedisHealth, RedisStoreConfig};
use flowhost_wasm::manifest::Defaults;
use flowhost_wasm::{Limits, PluginHost, PluginSet};
use tokio::sync::watch;

use crate::config::{BlobBackend, Config};
use crate::metrics::Metrics;

pub struct App {
    pub config: Config,
    pub plugins: Arc<PluginHost>,
    pub flows: Arc<FlowCatalog>,
    /// The state store, as the port the handlers read it through.
    pub store: Arc<dyn StateStore>,
    /// Where blobs live (`blobs.backend`).
    pub blobs: Arc<dyn BlobStore>,
    pub metrics: Arc<Metrics>,
    pub runner: FlowRunner,
    /// The same store, for what only the Redis adapter knows: its health.
    fallback: Arc<FallbackStore>,
    /// The plugin set the flows were last validated against; it changes
    /// after the flow catalog does, so the two never disagree.
    validated: watch::Receiver<Arc<PluginSet>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot start the thread that loads plugins: {0}")]
    Loader(#[source] std::io::Error),
    #[error("blobs.backend is redis, but no redis.url is configured")]
    BlobsWithoutRedis,
    #[error("cannot open the blob folder {dir}: {source}")]
    BlobDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl App {
    /// Where the API looks up who holds a blob: runs and cache entries.
    pub fn holders(&self) -> retention::Holders<'_> {
        retention::Holders {
            flows: &*self.fallback,
            cache: &*self.fallback,
        }
    }

    /// [`App::start`], then waits until every plugin file was loaded or
    /// skipped and the flows were checked against them.
    pub async fn build(config: Config) -> Result<Arc<App>, BuildError> {
        let app = Self::start(config).await?;
        app.plugins_settled().await;
        Ok(app)
    }

    /// Starts loading plugins in the background, reads the flows and
    /// connects the state store; returns without waiting for plugins (a flow
    /// is served once every plugin it uses is loaded). Bad plugins and flows
    /// are reported and left out; an unreachable Redis starts the host
    /// degraded. Only an engine that cannot start is an error.
    pub async fn start(config: Config) -> Result<Arc<App>, BuildError> {
        let metrics = Arc::new(Metrics::new());
        // This host's name in leases and in the queue's consumer group.
        let host_id = config.host_id();
        tracing::info!(host_id, "starting");
        let store = match config.redis_url() {
            Some(_) => {
                let redis = redis_config(&config, host_id.clone());
                let observer: Arc<dyn Observer> = metrics.clone();
                let store = FallbackStore::redis_with_observer(redis, observer).await;
                tokio::spawn(
                    store
                        .clone()
                        .monitor(Duration::from_millis(config.redis.health_interval_ms)),
                );
                store
            }
            None => {
                tracing::info!("no redis.url configured: flow state is kept in memory only");
                FallbackStore::memory()
            }
        };
        metrics.degraded.set(i64::from(store.is_degraded()));
        tokio::spawn(prune_periodically(
            store.clone(),
            Duration::from_secs(config.retention.finished_seconds),
            Duration::from_secs(config.retention.prune_interval_seconds.max(1)),
        ));

        let blobs = blob_store(&config, &store)?;
        tokio::spawn(sweep_blobs_periodically(
            blobs.clone(),
            store.clone(),
            Duration::from_secs(config.blobs.grace_seconds),
            Duration::from_secs(config.blobs.sweep_interval_seconds.max(1)),
        ));

        let plugins = Arc::new(
            PluginHost::new(plugin_limits(&config))
                .map_err(|e| BuildError::Engine(format!("{e:#}")))?
                .with_observer(metrics.clone())
                .with_blobs(blobs.clone()),
        );
        // Every file is marked loading before the first request can ask.
        plugins
            .load_dir_in_background(&config.plugins_dir)
            .map_err(BuildError::Loader)?;
        let now = plugins.snapshot();
        let flows = Arc::new(FlowCatalog::load_dir(&config.flows_dir, &|name| {
            now.availability(name)
        }));
        let (validated_tx, validated) = watch::channel(now);
        tokio::spawn(follow_plugins(
            plugins.clone(),
            flows.clone(),
            config.flows_dir.clone(),
            metrics.clone(),
            validated_tx,
        ));

        let ports = Ports {
            executor: plugins.clone(),
            flows: flows.clone(),
            store: store.clone(),
            cache: store.clone(),
            blobs: blobs.clone(),
            queue: Some(store.clone() as Arc<dyn WorkQueue>),
            observer: metrics.clone(),
        };
        let runner = FlowRunner::new(ports, runner_config(&config));
        Ok(Arc::new(App {
            config,
            plugins,
            flows,
            store: store.clone(),
            blobs,
            metrics,
            runner,
            fallback: store,
            validated,
        }))
    }

    /// The plugins as the served flows were checked against: what
    /// `/healthz` and the plugin listing show, so that no flow is still
    /// waiting once they say nothing is loading.
    pub fn plugins_now(&self) -> Arc<PluginSet> {
        self.validated.borrow().clone()
    }

    /// Returns once no plugin file is loading and the flows were checked
    /// against the plugins as they ended up.
    pub async fn plugins_settled(&self) {
        let mut validated = self.validated.clone();
        let _ = validated.wait_for(|set| set.is_settled()).await;
    }

    /// The flow `name` once every plugin it uses is loaded; `None` when there
    /// is no such flow, or it can never be served (a plugin it uses was
    /// skipped or is absent).
    pub async fn flow_when_ready(&self, name: &str) -> Option<Arc<FlowDefinition>> {
        let mut changes = self.validated.clone();
        loop {
            changes.borrow_and_update();
            let flows = self.flows.snapshot();
            if let Some(def) = flows.get(name) {
                return Some(def.clone());
            }
            if !flows.is_waiting(name) || changes.changed().await.is_err() {
                return None;
            }
        }
    }

    /// What `/healthz` says of Redis.
    pub fn redis_health(&self) -> RedisHealth {
        self.fallback.health()
    }

    /// Starts the host's background work once it serves. Sharing a Redis:
    /// the queue's take and renew loops, and (with `recovery.resume_on_start`)
    /// the loop that takes over flows left without a host, this host's
    /// earlier run included. Alone on memory: with `resume_on_start`, resumes
    /// the flows left paused or running.
    pub async fn resume_on_start(&self) {
        if self.runner.is_shared() {
            let q = &self.config.queue;
            flowhost_core::runner::worker::spawn(
                self.runner.clone(),
                self.fallback.clone(),
                self.fallback.clone(),
                QueueSettings {
                    max_running: q.max_running,
                    lease_ttl: Duration::from_millis(q.lease_ttl_ms),
                    poll: Duration::from_millis(q.poll_ms.max(1)),
                    reclaim: self.config.recovery.resume_on_start,
                },
            );
            return;
        }
        if !self.config.recovery.resume_on_start {
            return;
        }
        match self.runner.resume_interrupted().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(flows = n, "resuming flows left paused or running"),
            Err(e) => tracing::error!(error = %e, "cannot list flows to resume"),
        }
    }

    /// The plugins folder alone, every file loaded or skipped, for
    /// `flowhost plugins` and validation.
    pub async fn load_plugins(config: &Config) -> Result<Arc<PluginHost>, BuildError> {
        let plugins = Arc::new(
            PluginHost::new(plugin_limits(config))
                .map_err(|e| BuildError::Engine(format!("{e:#}")))?,
        );
        plugins.load_dir(&config.plugins_dir).await;
        Ok(plugins)
    }

    /// The flows folder, checked against the plugins as they are now.
    pub fn load_flows(config: &Config, plugins: &PluginHost) -> FlowSet {
        let now = plugins.snapshot();
        FlowSet::load_dir(&config.flows_dir, &|name| now.availability(name))
    }
}

/// Validates the flows again each time the plugin set changes, and swaps
/// them in, then publishes the set they were validated against; keeps the
/// plugin gauges up to date, and logs each flow as it becomes served, and
/// the flows left out once loading is over. The same loop serves any later
/// change of the set (a plugin reloaded).
async fn follow_plugins(
    plugins: Arc<PluginHost>,
    flows: Arc<FlowCatalog>,
    flows_dir: PathBuf,
    metrics: Arc<Metrics>,
    validated: watch::Sender<Arc<PluginSet>>,
) {
    let mut changes = plugins.subscribe();
    let (mut served, mut reported) = (BTreeSet::new(), false);
    loop {
        changes.borrow_and_update();
        let now = plugins.snapshot();
        flows.reload(&flows_dir, &|name| now.availability(name));
        metrics.plugins_loaded.set(now.plugins().count() as i64);
        metrics.plugins_skipped.set(now.skipped().count() as i64);
        let set = flows.snapshot();
        for flow in set.flows() {
            if served.insert(flow.name.clone()) {
                tracing::info!(flow = %flow.name, steps = flow.steps.len(), "flow loaded");
            }
        }
        if now.is_settled() && !reported {
            reported = true;
            for error in set.errors() {
                tracing::error!(%error, "flow not loaded");
            }
            tracing::info!(
                plugins = now.plugins().count(),
                skipped = now.skipped().count(),
                flows = set.flows().count(),
                "plugins loaded"
            );
        }
        validated.send_replace(now);
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The runner's settings, from the configuration.
fn runner_config(config: &Config) -> RunnerConfig {
    let retry = &config.retry;
    RunnerConfig {
        retry: RetryPolicy {
            max_attempts: retry.max_attempts,
            initial_delay: Duration::from_millis(retry.initial_delay_ms),
            factor: retry.factor,
            max_delay: Duration::from_millis(retry.max_delay_ms),
            jitter: retry.jitter,
        },
        max_async_in_flight: config.submit.max_in_flight,
        idempotency_ttl: Duration::from_secs(config.submit.idempotency_ttl_seconds),
        inline_max_bytes: config.state.inline_max_bytes,
        cache: CacheSettings {
            enabled: config.cache.enabled,
            ttl: Duration::from_secs(config.cache.ttl_seconds),
            single_flight_wait: Duration::from_millis(config.cache.single_flight_wait_ms),
        },
    }
}

/// The Redis store of the configuration, whose leases are held as `owner`.
pub fn redis_config(config: &Config, owner: String) -> RedisStoreConfig {
    RedisStoreConfig {
        url: config.redis_url().unwrap_or_default().to_owned(),
        cluster: config.redis.cluster,
        owner,
        lease_ttl: Duration::from_millis(config.queue.lease_ttl_ms),
        key_prefix: config.redis.key_prefix.clone(),
        response_timeout: Duration::from_millis(config.redis.response_timeout_ms),
        connect_timeout: Duration::from_millis(config.redis.connect_timeout_ms),
        retention: Some(Duration::from_secs(config.retention.finished_seconds)),
        compress_min_bytes: config.state.compress_min_bytes,
    }
}

/// How plugins are loaded and run, from the configuration.
pub fn plugin_limits(config: &Config) -> Limits {
    let l = &config.limits;
    Limits {
        defaults: Defaults {
            memory_bytes: l.plugin_memory_bytes,
            max_memory_bytes: l.max_plugin_memory_bytes,
            timeout: config.step_timeout(),
            max_input_bytes: l.max_input_bytes,
            max_output_bytes: l.max_output_bytes,
            fuel: l.fuel,
            max_stdio_bytes: l.max_stdio_bytes,
            http_timeout: Duration::from_millis(l.http_timeout_ms),
            http_max_response_bytes: l.http_max_response_bytes,
            secrets: config.secrets.0.clone(),
        },
        max_instances: l.max_instances,
        max_component_bytes: l.max_component_bytes,
        compile_timeout: Duration::from_millis(l.compile_timeout_ms),
        max_compiles: match l.max_concurrent_compiles {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        describe_timeout: Duration::from_millis(l.describe_timeout_ms),
        artifacts_dir: config.artifacts_dir().map(Path::to_owned),
    }
}

/// The blob store `blobs.backend` names: `auto` is Redis (through the
/// fallback store, so memory while Redis is away) when `redis.url` is set,
/// else memory; `files` is a folder the hosts may share.
fn blob_store(
    config: &Config,
    store: &Arc<FallbackStore>,
) -> Result<Arc<dyn BlobStore>, BuildError> {
    let redis = config.redis_url().is_some();
    Ok(match config.blobs.backend {
        BlobBackend::Auto | BlobBackend::Redis if redis => store.clone(),
        BlobBackend::Redis => return Err(BuildError::BlobsWithoutRedis),
        BlobBackend::Auto | BlobBackend::Memory => Arc::new(MemoryBlobs::new()),
        BlobBackend::Files => {
            let dir = &config.blobs.dir;
            let files = FsBlobStore::open(dir).map_err(|source| BuildError::BlobDir {
                dir: dir.clone(),
                source,
            })?;
            tracing::info!(dir = %dir.display(), "blobs are kept in a folder");
            Arc::new(files)
        }
    })
}

/// Removes the blobs nothing holds any more, every `every`
/// (`blob::retention`). Hosts sharing a store may sweep at once: each
/// removal is checked against holds and uploads atomically.
async fn sweep_blobs_periodically(
    blobs: Arc<dyn BlobStore>,
    store: Arc<FallbackStore>,
    grace: Duration,
    every: Duration,
) {
    let holders = retention::Holders {
        flows: &*store,
        cache: &*store,
    };
    loop {
        tokio::time::sleep(every).await;
        match retention::sweep(&*blobs, holders, grace, Utc::now()).await {
            Ok(swept) if swept.removed == 0 && swept.released == 0 => {}
            Ok(swept) => tracing::info!(
                examined = swept.examined,
                removed = swept.removed,
                released = swept.released,
                "swept blobs nothing holds"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot sweep blobs"),
        }
    }
}

/// Removes finished flows past their retention, every `every`. In Redis
/// their keys expire by themselves; this also keeps the memory store and the
/// indexes from growing.
async fn prune_periodically(store: Arc<dyn StateStore>, retention: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match store.prune_older_than(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned finished flows past their retention"),
            Err(e) => tracing::warn!(error = %e, "cannot prune finished flows"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_go_where_the_backend_says() {
        let store = FallbackStore::memory();
        let mut config = Config::default();
        config.blobs.backend = BlobBackend::Redis;
        assert!(matches!(
            blob_store(&config, &store),
            Err(BuildError::BlobsWithoutRedis)
        ));

        let dir = tempfile::tempdir().unwrap();
        config.blobs.backend = BlobBackend::Files;
        config.blobs.dir = dir.path().join("blobs");
        let blobs = blob_store(&config, &store).unwrap();
        let r = flowhost_core::blob::put(&*blobs, "text/plain", b"on disk")
            .await
            .unwrap();
        let hex = r.id.hex();
        let data = config.blobs.dir.join("data").join(&hex[..2]).join(hex);
        assert_eq!(std::fs::read(data).unwrap(), b"on disk");

        // Without Redis, `auto` keeps them in memory: not in that folder.
        config.blobs.backend = BlobBackend::Auto;
        let blobs = blob_store(&config, &store).unwrap();
        let r = flowhost_core::blob::put(&*blobs, "text/plain", b"in memory")
            .await
            .unwrap();
        assert!(blobs.stat(&r.id).await.unwrap().is_some());
        let hex = r.id.hex();
        assert!(
            !config
                .blobs
                .dir
                .join("data")
                .join(&hex[..2])
                .join(hex)
                .exists()
        );
    }
}
