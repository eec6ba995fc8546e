//! flowhost's core: flow definitions, run state, the runner that drives a
//! flow's steps, and the ports its adapters implement (store, cache, queue,
//! executor, observer, blobs).
//!
//! Invariant: this crate names no adapter. No wasmtime, redis, axum, hyper or
//! prometheus type appears here; the binary wires the adapters in.

pub mod analytics;
pub mod blob;
pub mod cache;
pub mod executor;
pub mod flow;
pub mod memory;
pub mod observe;
pub mod queue;
pub mod runner;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
