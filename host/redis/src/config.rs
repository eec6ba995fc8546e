//! How to reach Redis and how this host appears there: URL (one server or a
//! Cluster's seed nodes), key prefix, time limits, retention, lease owner,
//! and from what size state values are stored compressed.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RedisStoreConfig {
    /// A `redis://` URL; with `cluster`, one or more (comma-separated) seed
    /// nodes of a Redis Cluster.
    pub url: String,
    pub cluster: bool,
    /// Prepended to every key; must not contain `{` or `}`.
    pub key_prefix: String,
    /// How long one command may take before it counts as a failure.
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    /// A finished flow's keys expire this long after it finished.
    pub retention: Option<Duration>,
    /// This host's name in leases and in the consumer group.
    pub owner: String,
    /// How long a lease lives unless renewed.
    pub lease_ttl: Duration,
    /// State values (inputs, outputs, metadata, steps, cache entries) whose
    /// JSON is longer than this many bytes are stored zstd-compressed; 0
    /// stores every value as plain JSON. Readers take either, whatever the
    /// setting of the host that wrote them.
    pub compress_min_bytes: usize,
}

/// The default of `compress_min_bytes`: below a few KiB, compression saves
/// little and costs a frame header.
pub const DEFAULT_COMPRESS_MIN_BYTES: usize = 4096;
