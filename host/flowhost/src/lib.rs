//! flowhost: runs flows of sandboxed WebAssembly executor steps, records every
//! step's state in Redis (or memory), and serves them over HTTP.
//!
//! The core (`flow`, `runner`, `state` types) names no adapter; `plugin` alone
//! touches wasmtime, `state::redis` alone knows Redis keys, `api` alone HTTP.

pub mod analytics;
pub mod api;
pub mod app;
pub mod cache;
pub mod config;
pub mod flow;
pub mod metrics;
pub mod plugin;
pub mod queue;
pub mod runner;
pub mod state;

pub use api::serve;
pub use app::App;
