//! flowhost, the binary crate: configuration, the wiring of the core to its
//! adapters (`app`), the HTTP API, the Prometheus metrics, and the commands
//! of the `flowhost` CLI. `main.rs` only parses the command line.
//!
//! The core (`flowhost-core`) names no adapter; this crate is the one place
//! that names them all (`flowhost-wasm`, `flowhost-redis`, axum, prometheus).

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod metrics;

pub use api::serve;
pub use app::App;
