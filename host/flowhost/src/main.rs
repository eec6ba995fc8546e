//! The `flowhost` command: parses the command line, loads the configuration
//! and hands over to `flowhost::cli`. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flowhost::cli::{self, Command};
use flowhost::config::{Config, Overrides};

// A host runs many small allocations per step (JSON values, state records);
// mimalloc serves them with less contention than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flowhost",
    version,
    about = "Runs flows of sandboxed WebAssembly steps"
)]
struct Cli {
    /// Configuration file [default: ./config.yaml when present]
    #[arg(long, global = true, env = "FLOWHOST_CONFIG")]
    config: Option<PathBuf>,
    /// Address:port to listen on
    #[arg(long, global = true, env = "FLOWHOST_LISTEN")]
    listen: Option<String>,
    /// Redis URL; empty keeps flow state in memory
    #[arg(long, global = true, env = "FLOWHOST_REDIS_URL")]
    redis_url: Option<String>,
    /// Folder of plugin components (*.wasm)
    #[arg(long, global = true, env = "FLOWHOST_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// Folder of flow definitions (*.yaml)
    #[arg(long, global = true, env = "FLOWHOST_FLOWS_DIR")]
    flows_dir: Option<PathBuf>,
    /// Comma-separated bearer tokens the API accepts
    #[arg(
        long,
        global = true,
        env = "FLOWHOST_AUTH_TOKENS",
        hide_env_values = true
    )]
    auth_tokens: Option<String>,
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen.clone(),
        redis_url: cli.redis_url.clone(),
        plugins_dir: cli.plugins_dir.clone(),
        flows_dir: cli.flows_dir.clone(),
        auth_tokens: cli.auth_tokens.clone(),
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flowhost: {e}");
            return ExitCode::from(2);
        }
    };
    cli::init_logging(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowhost: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flowhost: {e:#}");
            ExitCode::FAILURE
        }
    }
}
