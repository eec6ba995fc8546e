//! A plugin's manifest, `NAME.toml` beside `NAME.wasm`: the limits that
//! override the host's defaults and the capabilities granted to that plugin
//! (hosts it may call over HTTP, socket addresses, read-only folders, secrets).
//! Anything a manifest does not grant is denied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Blob bytes a step may read unless its manifest says otherwise.
pub const DEFAULT_MAX_BLOB_READ_BYTES: u64 = 256 << 20;
/// Blob bytes a step may create unless its manifest says otherwise.
pub const DEFAULT_MAX_BLOB_WRITE_BYTES: u64 = 64 << 20;

/// The host's defaults for every plugin, from `config.yaml`.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub memory_bytes: usize,
    /// The largest `memory_bytes` a manifest may ask for: the size of a
    /// memory slot in the pooling allocator.
    pub max_memory_bytes: usize,
    pub timeout: Duration,
    pub max_input_bytes: usize,
    pub max_output_bytes: usize,
    /// `None`: no fuel metering limit (the epoch deadline still applies).
    pub fuel: Option<u64>,
    pub max_stdio_bytes: usize,
    pub http_timeout: Duration,
    pub http_max_response_bytes: u64,
    /// Secret values by name, from config and `FLOWHOST_SECRET_*`.
    pub secrets: BTreeMap<String, String>,
}

/// What one plugin may use: the defaults with its manifest applied.
#[derive(Clone, Debug, Serialize)]
pub struct Grants {
    pub memory_bytes: usize,
    pub timeout_ms: u64,
    pub max_input_bytes: usize,
    pub max_output_bytes: usize,
    pub fuel: Option<u64>,
    pub max_stdio_bytes: usize,
    /// Blob bytes one step may read, and create, through the `blobs` import.
    pub max_blob_read_bytes: u64,
    pub max_blob_write_bytes: u64,
    /// Hosts (`host` or `host:port`) reachable over wasi:http.
    pub http_allow: Vec<String>,
    pub http_timeout_ms: u64,
    pub http_max_response_bytes: u64,
    /// Socket addresses the plugin may connect to or bind.
    pub sockets: Vec<SocketAddr>,
    /// Read-only folders: guest path → host path.
    pub files: BTreeMap<String, PathBuf>,
    /// Environment variable names filled from secrets (never the values).
    pub secret_names: Vec<String>,
    /// The manifest these came from, if any.
    pub manifest: Option<PathBuf>,
    #[serde(skip)]
    pub env: Vec<(String, String)>,
}

impl Grants {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Whether `authority` (`host` or `host:port` of a request) is on the
    /// allow-list. An entry without a port allows every port of that host.
    pub fn allows_http(&self, authority: &str) -> bool {
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(authority, |(host, _)| host);
        self.http_allow.iter().any(|entry| {
            entry.eq_ignore_ascii_case(authority)
                || (!entry.contains(':') && entry.eq_ignore_ascii_case(host))
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    sockets: SocketsSection,
    /// Guest path → host folder, mounted read-only.
    #[serde(default)]
    files: BTreeMap<String, PathBuf>,
    /// Environment variable the plugin sees → name of the host secret.
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    memory_bytes: Option<usize>,
    timeout_ms: Option<u64>,
    max_input_bytes: Option<usize>,
    max_output_bytes: Option<usize>,
    fuel: Option<u64>,
    max_stdio_bytes: Option<usize>,
    max_blob_read_bytes: Option<u64>,
    max_blob_write_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    #[serde(default)]
    allow: Vec<String>,
    timeout_ms: Option<u64>,
    max_response_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketsSection {
    #[serde(default)]
    allow: Vec<SocketAddr>,
}

/// Why a manifest cannot be used; the plugin is then skipped.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The grants of the plugin at `wasm`: its manifest (`NAME.toml` beside it)
/// applied to `defaults`, or the defaults alone when there is no manifest.
pub fn grants_for(wasm: &Path, defaults: &Defaults) -> Result<Grants, ManifestError> {
    let path = wasm.with_extension("toml");
    let (manifest, manifest_path) = read(&path)?;
    let invalid = |message: String| ManifestError::Invalid {
        path: path.clone(),
        message,
    };
    let l = &manifest.limits;
    let memory_bytes = l.memory_bytes.unwrap_or(defaults.memory_bytes);
    if memory_bytes > defaults.max_memory_bytes {
        return Err(invalid(format!(
            "limits.memory_bytes {memory_bytes} is above the host's ceiling of {} \
             (raise limits.max_plugin_memory_bytes in config.yaml)",
            defaults.max_memory_bytes
        )));
    }
    if l.timeout_ms == Some(0) || manifest.http.timeout_ms == Some(0) {
        return Err(invalid("a timeout_ms must be above 0".into()));
    }
    for host in &manifest.http.allow {
        if host.is_empty() || host.contains('/') || host.contains('*') {
            return Err(invalid(format!(
                "http.allow entry {host:?} must be a host or host:port (no scheme, path or wildcard)"
            )));
        }
    }
    for (guest, host) in &manifest.files {
        if !guest.starts_with('/') {
            return Err(invalid(format!(
                "files: guest path {guest:?} must be absolute"
            )));
        }
        if !host.is_dir() {
            return Err(invalid(format!(
                "files: {} is not a folder",
                host.display()
            )));
        }
    }
    let env = secret_env(&manifest, defaults, &path);
    Ok(Grants {
        memory_bytes,
        timeout_ms: l.timeout_ms.unwrap_or(defaults.timeout.as_millis() as u64),
        max_input_bytes: l.max_input_bytes.unwrap_or(defaults.max_input_bytes),
        max_output_bytes: l.max_output_bytes.unwrap_or(defaults.max_output_bytes),
        fuel: l.fuel.or(defaults.fuel),
        max_stdio_bytes: l.max_stdio_bytes.unwrap_or(defaults.max_stdio_bytes),
        max_blob_read_bytes: l.max_blob_read_bytes.unwrap_or(DEFAULT_MAX_BLOB_READ_BYTES),
        max_blob_write_bytes: l
            .max_blob_write_bytes
            .unwrap_or(DEFAULT_MAX_BLOB_WRITE_BYTES),
        http_allow: manifest.http.allow.clone(),
        http_timeout_ms: manifest
            .http
            .timeout_ms
            .unwrap_or(defaults.http_timeout.as_millis() as u64),
        http_max_response_bytes: manifest
            .http
            .max_response_bytes
            .unwrap_or(defaults.http_max_response_bytes),
        sockets: manifest.sockets.allow.clone(),
        files: manifest.files.clone(),
        secret_names: manifest.secrets.keys().cloned().collect(),
        manifest: manifest_path,
        env,
    })
}

/// The manifest at `path` and its path, or the empty manifest and `None`
/// when there is no file.
fn read(path: &Path) -> Result<(Manifest, Option<PathBuf>), ManifestError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((
            toml::from_str::<Manifest>(&text).map_err(|e| ManifestError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?,
            Some(path.to_owned()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Manifest::default(), None)),
        Err(source) => Err(ManifestError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The environment the manifest's secrets give the plugin. A secret that is
/// not set leaves its variable unset: the plugin decides whether it can work
/// without (a local model server needs no key).
fn secret_env(manifest: &Manifest, defaults: &Defaults, path: &Path) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (var, secret) in &manifest.secrets {
        match defaults.secrets.get(secret) {
            Some(value) => env.push((var.clone(), value.clone())),
            None => tracing::warn!(
                manifest = %path.display(),
                "secret {secret} (for {var}) is not set: set FLOWHOST_SECRET_{secret} or secrets.{secret} in config.yaml"
            ),
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            memory_bytes: 64 << 20,
            max_memory_bytes: 256 << 20,
            timeout: Duration::from_secs(30),
            max_input_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
            fuel: None,
            max_stdio_bytes: 4096,
            http_timeout: Duration::from_secs(10),
            http_max_response_bytes: 1 << 20,
            secrets: BTreeMap::from([("KEY".to_owned(), "s3cret".to_owned())]),
        }
    }

    fn write(dir: &Path, manifest: &str) -> PathBuf {
        let wasm = dir.join("p.wasm");
        std::fs::write(dir.join("p.toml"), manifest).unwrap();
        wasm
    }

    #[test]
    fn no_manifest_means_the_defaults_and_no_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        let g = grants_for(&dir.path().join("p.wasm"), &defaults()).unwrap();
        assert_eq!(g.memory_bytes, 64 << 20);
        assert_eq!(g.timeout_ms, 30_000);
        assert_eq!(
            (g.max_blob_read_bytes, g.max_blob_write_bytes),
            (DEFAULT_MAX_BLOB_READ_BYTES, DEFAULT_MAX_BLOB_WRITE_BYTES)
        );
        assert!(g.http_allow.is_empty() && g.sockets.is_empty() && g.files.is_empty());
        assert!(g.env.is_empty() && g.manifest.is_none());
        assert!(!g.allows_http("example.com"));
    }

    #[test]
    fn a_manifest_overrides_limits_and_grants_hosts_and_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = write(
            dir.path(),
            r#"
            [limits]
            memory_bytes = 1048576
            fuel = 1000
            max_blob_write_bytes = 4096
            [http]
            allow = ["api.example.com", "127.0.0.1:8080"]
            [secrets]
            API_KEY = "KEY"
            "#,
        );
        let g = grants_for(&wasm, &defaults()).unwrap();
        assert_eq!((g.memory_bytes, g.fuel), (1 << 20, Some(1000)));
        assert_eq!(
            (g.max_blob_read_bytes, g.max_blob_write_bytes),
            (DEFAULT_MAX_BLOB_READ_BYTES, 4096)
        );
        assert!(g.allows_http("api.example.com"));
        assert!(g.allows_http("API.example.com:443"));
        assert!(g.allows_http("127.0.0.1:8080"));
        assert!(!g.allows_http("127.0.0.1:8081"));
        assert!(!g.allows_http("127.0.0.1"));
        assert!(!g.allows_http("evil.example.com"));
        assert_eq!(g.env, vec![("API_KEY".to_owned(), "s3cret".to_owned())]);
        assert_eq!(g.secret_names, vec!["API_KEY".to_owned()]);
    }

    #[test]
    fn a_secret_that_is_not_set_leaves_its_variable_unset() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = write(dir.path(), "[secrets]\nAPI_KEY = \"MISSING\"");
        let g = grants_for(&wasm, &defaults()).unwrap();
        assert!(g.env.is_empty());
        assert_eq!(g.secret_names, vec!["API_KEY".to_owned()]);
    }

    #[test]
    fn bad_manifests_are_rejected_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        for (text, needle) in [
            ("[limits]\nmemory_bytes = 1073741824", "ceiling"),
            ("[limits]\nmemroy_bytes = 1", "unknown field"),
            ("[http]\nallow = [\"https://x.com\"]", "host or host:port"),
            ("[files]\n\"/data\" = \"/no/such/folder\"", "not a folder"),
            ("not toml at all [", "manifest"),
        ] {
            let wasm = write(dir.path(), text);
            let err = grants_for(&wasm, &defaults()).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
