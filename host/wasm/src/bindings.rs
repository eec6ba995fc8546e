//! The host side of the WIT contract in `wit/`: the one `bindgen!` of flowhost.
//! Exports are called asynchronously so that epoch ticks can yield a long step
//! back to the runtime; the `log` import is synchronous, the `blobs` imports
//! are async because the blob store is. A plugin built against an earlier
//! 0.1 contract links too: the linker matches semver-compatible imports.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "executor",
    exports: { default: async },
    imports: { "flowhost:executor/blobs": async },
    with: { "flowhost:executor/blobs.writer": crate::bindings::Writer },
});

/// What a plugin's `writer` resource stands for: a blob being stored.
pub struct Writer {
    pub(crate) upload: Box<dyn flowhost_core::blob::BlobUpload>,
}

pub use self::flowhost::executor::blobs::{
    self as blobs_api, BlobError as BlobApiError, BlobInfo, Host as BlobsHost, HostWriter,
};
pub use self::flowhost::executor::host::{Host, LogLevel};
pub use self::flowhost::executor::types::Host as TypesHost;
pub use self::flowhost::executor::{host as host_api, types as types_api};

/// The contract version a plugin is built against today; part of every
/// cache key.
pub const CONTRACT_VERSION: &str = "flowhost:executor@0.1.1";
