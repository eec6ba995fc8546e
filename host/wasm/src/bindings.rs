//! The host side of the WIT contract in `wit/`: the one `bindgen!` of flowhost.
//! Exports are called asynchronously so that epoch ticks can yield a long step
//! back to the runtime; the `log` import is synchronous.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "executor",
    exports: { default: async },
});

pub use self::flowhost::executor::host::{Host, LogLevel};
pub use self::flowhost::executor::types::Host as TypesHost;

/// The contract version a plugin was built against; part of every cache key.
pub const CONTRACT_VERSION: &str = "flowhost:executor@0.1.0";
