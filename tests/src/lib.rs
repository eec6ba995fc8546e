//! Test harness: a real `redis-server` on a free port in a temp dir, the real
//! `flowhost` binary on a free port, and folders of real compiled plugins.
//! Every process is killed when its handle drops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A compiled plugin by file name: the real executors in `plugins/dist`, the
/// test plugins in `plugins/testing/dist`. Both come from `plugins/build.sh`.
pub fn plugin_wasm(name: &str) -> PathBuf {
    let root = repo_root();
    for dir in ["plugins/dist", "plugins/testing/dist"] {
        let p = root.join(dir).join(format!("{name}.wasm"));
        if p.is_file() {
            return p;
        }
    }
    panic!("plugin {name}.wasm not built: run plugins/build.sh (scripts/test.sh does)");
}

/// The real executors shipped in `plugins/dist`.
pub const EXECUTORS: [&str; 4] = ["text-normalize", "text-stats", "keywords", "summarize"];

/// A fresh plugins folder holding copies of the named plugins.
pub fn plugins_dir(names: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in names {
        std::fs::copy(plugin_wasm(name), dir.path().join(format!("{name}.wasm")))
            .expect("copy plugin");
    }
    dir
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} not ready after {timeout:?}")
}

/// One request a [`fake_http_server`] received.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// The request line and headers, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

/// A small HTTP/1.1 server on a free loopback port, for plugins to call over
/// wasi:http: each request (read by its `content-length`) goes to `answer`,
/// in a thread of its own, and its return value is sent back as a 200 JSON
/// body. Returns the port.
pub fn fake_http_server(answer: impl Fn(ReceivedRequest) -> String + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || serve_one(stream, &*answer));
        }
    });
    port
}

fn serve_one(mut stream: std::net::TcpStream, answer: &dyn Fn(ReceivedRequest) -> String) {
    use std::io::{BufRead, Read, Write};
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = std::io::BufReader::new(clone);
    let (mut head, mut length) = (String::new(), 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let reply = answer(ReceivedRequest { head, body });
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

/// A `redis-server` of its own, killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Result<RedisServer> {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Result<RedisServer> {
        Self::start_with(port, &[])
    }

    /// On `port`, with more `redis-server` arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server: install it (scripts/test.sh does)")?;
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let url = server.url();
        wait_until("redis-server", Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        })?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `redis-server`s of its own (no replicas), made with
/// `redis-cli --cluster create`; killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(nodes: usize) -> Result<RedisCluster> {
        let mut servers = Vec::new();
        while servers.len() < nodes {
            // The cluster bus listens on the port + 10000.
            let port = free_port();
            if port > 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            servers.push(RedisServer::start_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ],
            )?);
        }
        let addresses: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("redis-cli")?;
        if !created.success() {
            bail!("redis-cli --cluster create failed");
        }
        let cluster = RedisCluster { nodes: servers };
        wait_until("redis cluster", Duration::from_secs(20), || {
            cluster.nodes.iter().all(|n| {
                let info: redis::RedisResult<String> =
                    redis::cmd("CLUSTER").arg("INFO").query(&mut n.connection());
                info.is_ok_and(|i| i.contains("cluster_state:ok"))
            })
        })?;
        Ok(cluster)
    }

    /// The seed nodes, as `redis.url` takes them with `redis.cluster`.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A connection that follows the cluster's slots.
    pub fn connection(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::new(
            self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>(),
        )
        .and_then(|c| c.get_connection())
        .expect("cluster connection")
    }
}

/// The `flowhost` binary that cargo builds for the integration tests of the
/// `flowhost` package (which these suites are), or `$FLOWHOST_BIN`.
pub fn flowhost_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOWHOST_BIN") {
        return p.into();
    }
    // Test executables live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(format!("flowhost{}", std::env::consts::EXE_SUFFIX)))
        .expect("target dir");
    assert!(
        bin.is_file(),
        "{} not found: run the tests with `cargo test -p flowhost` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A `flowhost` command with a clean environment: only what the test sets.
pub fn flowhost_command() -> Command {
    let mut cmd = Command::new(flowhost_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FLOWHOST_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(repo_root()).env("RUST_LOG", "info");
    cmd
}

/// A running `flowhost serve`, killed on drop; its log is kept in a file.
pub struct Host {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _log_dir: TempDir,
}

impl Host {
    /// Starts `flowhost serve` with `env` on a free port and waits until it
    /// listens and `/healthz` says no plugin file is still loading.
    pub fn start(env: &[(&str, &str)]) -> Result<Host> {
        let mut host = Self::spawn(env)?;
        let token = env
            .iter()
            .find(|(k, _)| *k == "FLOWHOST_AUTH_TOKENS")
            .and_then(|(_, v)| v.split(',').next())
            .map(str::to_owned);
        let port = host.port;
        let ready = wait_until("flowhost", Duration::from_secs(60), || {
            plugins_settled(port, token.as_deref())
        });
        if let Err(e) = ready {
            let log = host.log();
            host.kill();
            bail!("{e} ({}); log:\n{log}", host.url("/healthz"));
        }
        Ok(host)
    }

    /// Starts `flowhost serve` with `env` on a free port, without waiting
    /// for anything.
    pub fn spawn(env: &[(&str, &str)]) -> Result<Host> {
        let port = free_port();
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join("flowhost.log");
        let mut cmd = flowhost_command();
        cmd.arg("serve")
            .env("FLOWHOST_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawn flowhost")?;
        Ok(Host {
            child,
            port,
            log,
            _log_dir: log_dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The value of one sample in `/metrics` (0 when absent), e.g.
    /// `flowhost_flows_reclaimed_total`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = http_get(self.port, "/metrics", None).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The process id, to read its memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`TERM`, `INT`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of `GET path` on the host on `port` (HTTP/1.1, one request, no
/// client library): `None` when it cannot be reached.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}connection: close\r\n\r\n");
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).ok()?;
    stream.read_to_string(&mut answer).ok()?;
    Some(
        answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned(),
    )
}

/// Whether the host on `port` answers `/healthz` with no plugin file left
/// loading (plugins load in the background once it listens).
pub fn plugins_settled(port: u16, token: Option<&str>) -> bool {
    http_get(port, "/healthz", token).is_some_and(|body| {
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|health| {
            health["plugins"]["loading"]
                .as_array()
                .is_none_or(|loading| loading.is_empty())
        })
    })
}

/// An HTTP server that keeps every report the `chaos` plugin posts (its
/// `report_url` config): one JSON object per execution of a step, with
/// `flow_id`, `step`, `attempt` and `started_ms`. Returns the port.
pub fn ledger() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = reports.clone();
    let port = fake_http_server(move |request| {
        if let Ok(report) = serde_json::from_slice(&request.body) {
            log.lock().unwrap().push(report);
        }
        "{}".to_owned()
    });
    (port, reports)
}

/// A fresh plugins folder with the `chaos` plugin, allowed to call the
/// [`ledger`] on `ledger_port`.
pub fn chaos_plugins(ledger_port: u16) -> TempDir {
    let dir = plugins_dir(&["chaos"]);
    std::fs::write(
        dir.path().join("chaos.toml"),
        format!("[http]\nallow = [\"127.0.0.1:{ledger_port}\"]\n"),
    )
    .expect("write chaos.toml");
    dir
}

/// A sample document for the example flows.
pub const DOCUMENT: &str = "WebAssembly runs sandboxed code at near native speed.  \
Flowhost runs WebAssembly plugins as the steps of a flow. Every step of a flow \
is recorded in Redis, so a flow survives a crash.\n\nPlugins are sandboxed: a \
plugin gets no files, no network and no environment.";

/// A folder of flow files, each given as (file stem, YAML text).
pub fn flows_dir(flows: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in flows {
        std::fs::write(dir.path().join(format!("{name}.yaml")), text).expect("write flow");
    }
    dir
}

/// A config file with `text` as its content.
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write config");
    file
}

/// A step's state read straight from Redis (default key prefix).
pub fn redis_step(
    conn: &mut impl redis::ConnectionLike,
    flow_id: &str,
    step: &str,
) -> Option<serde_json::Value> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(format!("fh:flow:{{{flow_id}}}:steps"))
        .arg(step)
        .query(conn)
        .expect("HGET");
    raw.map(|r| serde_json::from_str(&r).expect("step JSON"))
}

/// A flow header field read straight from Redis (default key prefix).
pub fn redis_flow_field(
    conn: &mut impl redis::ConnectionLike,
    flow_id: &str,
    field: &str,
) -> Option<String> {
    redis::cmd("HGET")
        .arg(format!("fh:flow:{{{flow_id}}}"))
        .arg(field)
        .query(conn)
        .expect("HGET")
}

/// The ids of the flows stored in Redis (default key prefix).
pub fn redis_flow_ids(conn: &mut impl redis::ConnectionLike) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg("fh:flows:started")
        .arg(0)
        .arg(-1)
        .query(conn)
        .expect("ZRANGE")
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
