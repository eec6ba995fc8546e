//! flowhost's folder adapter: `FsBlobStore`, the `BlobStore` port over a
//! folder (a local disk, or a volume several hosts mount). Blobs are files
//! named by their hash, each with a JSON sidecar for its media type, the time
//! it was last stored and its holds; an advisory lock per blob orders the
//! writes of every host. The layout is in `folder`, the port in `blobs`.

mod blobs;
mod folder;

pub use blobs::FsBlobStore;
