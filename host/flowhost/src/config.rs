//! Configuration: `config.yaml`, then `FLOWHOST_*` environment variables, then
//! command-line flags, each overriding the one before; validated once here.
//! Every other module receives typed values and never reads the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: String,
    /// Folder of executor plugins (`*.wasm` components).
    pub plugins_dir: PathBuf,
    /// Folder of flow definitions (`*.yaml`).
    pub flows_dir: PathBuf,
    /// Host-owned folder for compiled plugin artifacts, so that a restart
    /// skips compilation; empty turns the cache off. Must not be inside
    /// `plugins_dir`.
    pub artifacts_dir: PathBuf,
    /// Values that plugin manifests hand to plugins as environment variables
    /// (`[secrets]`). `FLOWHOST_SECRET_NAME` sets `NAME` too, and wins.
    /// Never written to flow state or the log.
    pub secrets: Secrets,
    pub redis: RedisConfig,
    pub limits: LimitsConfig,
    /// Default retry policy of every step; a step's `retry` overrides it.
    pub retry: RetryConfig,
    pub recovery: RecoveryConfig,
    pub shutdown: ShutdownConfig,
    pub cache: CacheConfig,
    pub submit: SubmitConfig,
    pub queue: QueueConfig,
    pub retention: RetentionConfig,
    pub state: StateConfig,
    pub blobs: BlobsConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

/// Secret values by name; `Debug` shows the names only.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens accepted on the API; empty leaves the API open.
    /// `FLOWHOST_AUTH_TOKENS` (comma-separated) adds to them.
    pub tokens: Vec<String>,
    /// Whether `/metrics` needs a token too (when tokens are set).
    pub protect_metrics: bool,
    /// Whether `/healthz` needs a token too (when tokens are set).
    pub protect_health: bool,
}

/// Hosts sharing one Redis share the work: see the README's "Several hosts".
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// This host's name in leases and in the queue's consumer group: unique
    /// among the hosts sharing a Redis, and the same across restarts (so a
    /// restarted host takes its flows back at once). Empty: the machine's
    /// hostname and the listen port.
    pub host_id: String,
    /// Flows this host runs at once from the shared queue.
    pub max_running: usize,
    /// A host's lease on a flow lasts this long unless renewed (every third
    /// of it); a dead host's flows are taken over about this long after.
    pub lease_ttl_ms: u64,
    /// Pause between two looks at an empty queue.
    pub poll_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            host_id: String::new(),
            max_running: 256,
            lease_ttl_ms: 15_000,
            poll_ms: 5,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// A finished flow (completed, failed, cancelled) is removed this long
    /// after it finished; in Redis its keys expire by themselves.
    pub finished_seconds: u64,
    /// How often the host prunes finished flows past their retention.
    pub prune_interval_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            finished_seconds: 7 * 86_400,
            prune_interval_seconds: 3600,
        }
    }
}

/// How large values of a flow's state are kept.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// A flow input or step output whose JSON is longer is stored as a blob
    /// and referred to, so that no value of a flow's state is larger.
    pub inline_max_bytes: usize,
    /// State values longer than this are compressed (zstd) in Redis.
    pub compress_min_bytes: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            inline_max_bytes: 64 * 1024,
            compress_min_bytes: 4 * 1024,
        }
    }
}

/// Where blobs are kept and for how long.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobsConfig {
    /// `auto` (Redis when `redis.url` is set, else memory), `memory`,
    /// `redis` or `files`.
    pub backend: BlobBackend,
    /// The folder of the `files` backend (a volume the hosts share).
    pub dir: PathBuf,
    /// The largest blob an upload may store; larger ones are answered 413.
    pub max_bytes: u64,
    /// A blob that nothing holds is removed this long after it was last
    /// stored: the time an upload has to be used by a run.
    pub grace_seconds: u64,
    /// How often the host sweeps blobs that nothing holds.
    pub sweep_interval_seconds: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    #[default]
    Auto,
    Memory,
    Redis,
    Files,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        BlobsConfig {
            backend: BlobBackend::Auto,
            dir: PathBuf::from(".flowhost/blobs"),
            max_bytes: 256 * 1024 * 1024,
            grace_seconds: 3600,
            sweep_interval_seconds: 600,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitConfig {
    /// Flows in flight on this host at most when one is submitted to run in
    /// the background (`execute-async`); more are answered 429.
    pub max_in_flight: usize,
    /// How long an `Idempotency-Key` names its run.
    pub idempotency_ttl_seconds: u64,
}

impl Default for SubmitConfig {
    fn default() -> Self {
        SubmitConfig {
            max_in_flight: 1000,
            idempotency_ttl_seconds: 86_400,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `false` turns the step and flow result cache off everywhere.
    pub enabled: bool,
    /// Time to live of a cached result, unless the flow or step sets one.
    pub ttl_seconds: u64,
    /// How long a step waits for another flow computing the same key before
    /// it runs the plugin itself.
    pub single_flight_wait_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl_seconds: 86_400,
            single_flight_wait_ms: 30_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 never retries.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_delay_ms: u64,
    /// Each further delay is the previous one times this.
    pub factor: f64,
    pub max_delay_ms: u64,
    /// Each delay is multiplied by a random number in [1 - jitter, 1 + jitter].
    pub jitter: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// At start, resume flows left paused or running by a host that is gone.
    pub resume_on_start: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT, how long running steps may take to finish before
    /// they are interrupted; their flows are left paused either way.
    pub grace_period_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`; empty runs on the in-memory store. With
    /// `cluster`, one or more comma-separated seed nodes of a Redis Cluster.
    pub url: String,
    /// Whether `url` names a Redis Cluster.
    pub cluster: bool,
    /// Prepended to every key flowhost writes.
    pub key_prefix: String,
    /// A Redis command slower than this counts as failed.
    pub response_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// How often Redis is pinged, and reconnection tried while it is away.
    pub health_interval_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Default time a step may run; a plugin's manifest and then a flow
    /// file's `timeout_ms` override it.
    pub step_timeout_ms: u64,
    /// Default largest linear memory of a plugin instance.
    pub plugin_memory_bytes: usize,
    /// The most any manifest may grant: the pooling allocator's slot size.
    pub max_plugin_memory_bytes: usize,
    /// Default largest step input (JSON) handed to a plugin.
    pub max_input_bytes: usize,
    /// Default largest step output a plugin may return.
    pub max_output_bytes: usize,
    /// Default fuel (roughly, wasm instructions) per step; none: unlimited.
    pub fuel: Option<u64>,
    /// Bytes of a plugin's stdout, and of its stderr, kept per step.
    pub max_stdio_bytes: usize,
    /// Default timeout of a plugin's outgoing HTTP request.
    pub http_timeout_ms: u64,
    /// Default largest response body of a plugin's outgoing HTTP request.
    pub http_max_response_bytes: u64,
    /// Plugin instances alive at once; further steps wait for a slot.
    pub max_instances: u32,
    /// Component files larger than this are skipped.
    pub max_component_bytes: u64,
    /// Compiling one component may take this long (waiting for a compile
    /// slot included), else it is skipped.
    pub compile_timeout_ms: u64,
    /// Compilations at once; 0: one per core. A compile past its time limit
    /// keeps its slot until its thread is done.
    pub max_concurrent_compiles: usize,
    /// A plugin's `describe` at load may take this long (at most its step
    /// timeout), else it is skipped.
    pub describe_timeout_ms: u64,
    /// Largest HTTP request body.
    pub max_request_bytes: usize,
    /// An API request taking longer is answered 408 (a flow it started
    /// keeps running; poll its status).
    pub request_timeout_ms: u64,
    /// A request body must arrive whole within this time once its head has,
    /// else 408: a client announcing a body it does not send holds a
    /// connection this long, not `request_timeout_ms`.
    pub body_timeout_ms: u64,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Longest request URI (path and query); longer ones are answered 414.
    pub max_uri_bytes: usize,
    /// Largest request head (request line and header fields); larger ones
    /// are answered 431.
    pub max_header_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; `RUST_LOG` overrides it.
    pub filter: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            plugins_dir: "plugins/dist".into(),
            flows_dir: "flows".into(),
            artifacts_dir: ".flowhost/artifacts".into(),
            secrets: Secrets::default(),
            redis: RedisConfig::default(),
            limits: LimitsConfig::default(),
            retry: RetryConfig::default(),
            recovery: RecoveryConfig::default(),
            shutdown: ShutdownConfig::default(),
            cache: CacheConfig::default(),
            submit: SubmitConfig::default(),
            queue: QueueConfig::default(),
            retention: RetentionConfig::default(),
            state: StateConfig::default(),
            blobs: BlobsConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            cluster: false,
            key_prefix: "fh:".into(),
            response_timeout_ms: 2000,
            connect_timeout_ms: 1000,
            health_interval_ms: 2000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            step_timeout_ms: 30_000,
            plugin_memory_bytes: 128 << 20,
            max_plugin_memory_bytes: 512 << 20,
            max_input_bytes: 8 << 20,
            max_output_bytes: 8 << 20,
            fuel: None,
            max_stdio_bytes: 16 << 10,
            http_timeout_ms: 30_000,
            http_max_response_bytes: 16 << 20,
            max_instances: 256,
            max_component_bytes: 32 << 20,
            compile_timeout_ms: 60_000,
            max_concurrent_compiles: 0,
            describe_timeout_ms: 5_000,
            max_request_bytes: 8 << 20,
            request_timeout_ms: 300_000,
            body_timeout_ms: 5_000,
            max_connections: 1024,
            max_uri_bytes: 8 << 10,
            max_header_bytes: 64 << 10,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_delay_ms: 200,
            factor: 2.0,
            max_delay_ms: 10_000,
            jitter: 0.1,
        }
    }
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            resume_on_start: true,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period_ms: 10_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Values given on the command line or in the environment; `None` keeps what
/// the file says.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub redis_url: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    pub flows_dir: Option<PathBuf>,
    /// Comma-separated bearer tokens, added to `auth.tokens`.
    pub auth_tokens: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path` when given (it must exist), else `./config.yaml` when it
    /// exists, else the defaults; then applies `overrides` and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new("config.yaml").is_file() => {
                Self::from_file(Path::new("config.yaml"))?
            }
            None => Config::default(),
        };
        if let Some(v) = &overrides.listen {
            config.listen = v.clone();
        }
        if let Some(v) = &overrides.redis_url {
            config.redis.url = v.clone();
        }
        if let Some(v) = &overrides.plugins_dir {
            config.plugins_dir = v.clone();
        }
        if let Some(v) = &overrides.flows_dir {
            config.flows_dir = v.clone();
        }
        if let Some(v) = &overrides.auth_tokens {
            config.auth.tokens.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            );
        }
        for (key, value) in std::env::vars() {
            if let Some(name) = key.strip_prefix("FLOWHOST_SECRET_")
                && !name.is_empty()
            {
                config.secrets.0.insert(name.to_owned(), value);
            }
        }
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.parse::<SocketAddr>().is_err() {
            return invalid(format!("listen {:?} is not an address:port", self.listen));
        }
        let url = self.redis.url.trim();
        let schemes = ["redis://", "rediss://", "unix://"];
        if !url.is_empty() && !schemes.iter().any(|s| url.starts_with(s)) {
            return invalid(format!(
                "redis.url {url:?} must start with redis://, rediss:// or unix:// (or be empty for memory)"
            ));
        }
        if self.queue.host_id.contains(char::is_whitespace) {
            return invalid("queue.host_id must not contain spaces".into());
        }
        if self.queue.lease_ttl_ms < 300 || self.queue.max_running == 0 {
            return invalid(
                "queue.lease_ttl_ms must be at least 300 and queue.max_running above 0".into(),
            );
        }
        if self.redis.key_prefix.contains(['{', '}']) {
            return invalid("redis.key_prefix must not contain { or }".into());
        }
        let l = &self.limits;
        if [
            l.step_timeout_ms,
            l.compile_timeout_ms,
            l.describe_timeout_ms,
            l.http_timeout_ms,
            l.request_timeout_ms,
            l.body_timeout_ms,
        ]
        .contains(&0)
            || l.max_instances == 0
            || l.max_connections == 0
        {
            return invalid(
                "limits: every *_timeout_ms, max_instances and max_connections must be above 0"
                    .into(),
            );
        }
        if l.max_uri_bytes < 256 || l.max_header_bytes < 1024 {
            return invalid(
                "limits: max_uri_bytes must be at least 256 and max_header_bytes at least 1024"
                    .into(),
            );
        }
        if l.plugin_memory_bytes > l.max_plugin_memory_bytes {
            return invalid(format!(
                "limits.plugin_memory_bytes ({}) is above limits.max_plugin_memory_bytes ({})",
                l.plugin_memory_bytes, l.max_plugin_memory_bytes
            ));
        }
        if let Some(dir) = self.artifacts_dir() {
            let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
            if abs(dir).starts_with(abs(&self.plugins_dir)) {
                return invalid(format!(
                    "artifacts_dir {} must not be inside plugins_dir: precompiled code is never read from the plugins folder",
                    dir.display()
                ));
            }
        }
        let r = &self.retry;
        if r.max_attempts == 0 || r.factor < 1.0 || !(0.0..=1.0).contains(&r.jitter) {
            return invalid(
                "retry: max_attempts must be at least 1, factor at least 1.0, jitter in [0, 1]"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn redis_url(&self) -> Option<&str> {
        Some(self.redis.url.trim()).filter(|u| !u.is_empty())
    }

    pub fn step_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.step_timeout_ms)
    }

    /// This host's name among the hosts sharing a Redis (`queue.host_id`).
    pub fn host_id(&self) -> String {
        let id = self.queue.host_id.trim();
        if !id.is_empty() {
            return id.to_owned();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "flowhost".to_owned());
        let port = self.listen.rsplit(':').next().unwrap_or("0");
        format!("{host}:{port}")
    }

    pub fn artifacts_dir(&self) -> Option<&Path> {
        Some(self.artifacts_dir.as_path()).filter(|p| !p.as_os_str().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses_and_matches_the_defaults() {
        let text = include_str!("../../../config.yaml");
        let parsed = Config::from_yaml(text).unwrap();
        let default = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn overrides_win_and_bad_values_are_named() {
        let o = Overrides {
            listen: Some("0.0.0.0:9000".into()),
            redis_url: Some("redis://127.0.0.1:1/".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(Path::new("../../config.yaml")), &o).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.redis_url(), Some("redis://127.0.0.1:1/"));
        let err = Config::from_yaml("listen: 1\nnope: 2\n").unwrap_err();
        assert!(err.contains("nope"), "{err}");
        let bad = Overrides {
            redis_url: Some("localhost:6379".into()),
            ..Overrides::default()
        };
        let err = Config::load(Some(Path::new("../../config.yaml")), &bad).unwrap_err();
        assert!(
            err.to_string().contains("must start with redis://"),
            "{err}"
        );
    }
}
