//! flowhost's Redis adapter: flow state (`RedisStore`, a `StateStore`), the
//! leases that let hosts share it, the shared work queue (`WorkQueue`), the
//! result cache (`ResultCache`), blobs (`BlobStore`), and `FallbackStore`,
//! which runs on memory while Redis is away. Key names live in `keys` alone,
//! Lua in `scripts`.
//!
//! Layout, with `P` the configured prefix (default `fh:`); every key of one flow
//! carries the flow id as its hash tag so a Redis Cluster keeps them together:
//! - `P flow:{ID}`        hash, the flow header, one field per header field
//! - `P flow:{ID}:steps`  hash, step name → that step's state as JSON
//! - `P flows:started`    sorted set of flow ids by start time (ms)
//! - `P flows:name:NAME`  sorted set of one definition's runs by start time (ms)
//! - `P flows:status:S`   sorted set of the flows in status S, by the time
//!   they entered it (ms)
//! - `P flow:{ID}:lease`  string, `OWNER TOKEN` of the host running the flow,
//!   with a TTL the owner renews; the header's `fence` field holds the
//!   latest token, and every write of the owner checks it (in Lua)
//! - `P queue`            stream of submitted runs (`flow` = id), read by the
//!   consumer group `flowhost`, one consumer per host
//! - `P idem:{KEY}`       string, the flow id an idempotency key names (TTL)
//! - `P cache:{KEY}`      string, one cached result as JSON, with a TTL (PX)
//! - `P cache:{KEY}:lead` string, the host computing that result for the
//!   hosts sharing the cache, with a TTL (`cache.single_flight_wait_ms`)
//! - `P cache:plugin:NAME`, `P cache:flow:NAME`  sets of the cache keys each
//!   plugin computed and each flow stored, for invalidation; they expire with
//!   their longest-lived entry
//! - `P blob:{HEX}`       hash, a stored blob (`RedisStore` is a `BlobStore`):
//!   size, media_type, data (the upload whose chunks hold the bytes), chunks,
//!   touched_at (ms); HEX is the blake3 hash of the bytes
//! - `P blob:{HEX}:holds` sorted set, holder → until (ms, `+inf` for none)
//! - `P blobdata:{UPLOAD}:N` string, chunk N (512 KiB, the last shorter) of an
//!   upload's bytes, with a TTL until the upload finishes
//! - `P blobs`            set of every stored blob's HEX, for the sweep
//!
//! Inputs, outputs, metadata, steps and cache entries longer than
//! `compress_min_bytes` are stored zstd-compressed (see `codec`).
//!
//! One multiplexed connection (a `ConnectionManager`, or a cluster connection)
//! is shared by all requests; each write is one script call, so recording a
//! step costs one round trip. On one server the index lines change in the
//! same script; on a Cluster, where they live in other slots, in a pipeline
//! right after it.

mod blobs;
mod cache;
mod codec;
mod config;
mod conn;
mod fallback;
mod fencing;
mod index;
mod keys;
mod leases;
mod queue;
mod scripts;
mod store;
mod write;

pub use config::{DEFAULT_COMPRESS_MIN_BYTES, RedisStoreConfig};
pub use fallback::{FallbackStore, RedisHealth};
pub use store::RedisStore;
