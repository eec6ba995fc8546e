//! Blobs: bytes kept by content (the blake3 hash of the bytes is the id) and
//! carried through flows as a small JSON reference, a claim check:
//! `{"$blob": "blake3:…", "size": 5242880, "media_type": "image/png"}`.
//!
//! The `BlobStore` port (memory here, Redis and a folder in their crates),
//! the reference's JSON form (`reference`), and the retention sweep that
//! removes blobs nothing holds any more (`retention`). Invariant: a blob is
//! visible under its id only once all its bytes are stored, and the id is
//! the hash of exactly those bytes.

mod memory;
mod reference;
pub mod retention;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use memory::MemoryBlobs;
pub use reference::{BlobRef, MalformedRef, refs_in, refs_in_strict};

/// The largest piece a backend reads or writes at once: a Redis value, a
/// file read, a plugin's read; and the chunk an HTTP answer streams.
pub const CHUNK: usize = 512 * 1024;

/// A blob's id: `blake3:` and the 64 lowercase hex digits of the hash of its
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(String);

impl BlobId {
    /// The id of these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        BlobId(blake3::hash(bytes).to_hex().to_string())
    }

    fn from_hash(hash: blake3::Hash) -> Self {
        BlobId(hash.to_hex().to_string())
    }

    /// The 64 hex digits alone (for key and file names).
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.0)
    }
}

impl FromStr for BlobId {
    type Err = String;

    /// Takes `blake3:HEX` or the bare 64 hex digits.
    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("blake3:").unwrap_or(s);
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(BlobId(hex.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a blob id: expected `blake3:` and 64 lowercase hex digits"
            ))
        }
    }
}

/// What a store knows of one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobStat {
    pub size: u64,
    pub media_type: String,
    /// When the blob was last stored or stored again (an upload of the same
    /// bytes): the retention sweep leaves younger blobs alone.
    pub touched_at: DateTime<Utc>,
}

/// One holder of a blob: a run (`flow:ID`) until it is removed, or a cache
/// entry (`cache:KEY`) until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub holder: String,
    /// `None`: until the holder says otherwise or is found gone.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no blob {0}")]
    NotFound(BlobId),
    #[error("blob store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("blob {id} is corrupt: {reason}")]
    Corrupt { id: BlobId, reason: String },
}

impl BlobError {
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BlobError::Unavailable(Box::new(e))
    }
}

/// Where blobs live. Object-safe, chosen once at start. `put` is idempotent:
/// the same bytes give the same id and are stored once.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Starts storing a blob whose bytes arrive in pieces. Nothing is visible
    /// until `finish`; an upload dropped or aborted leaves no blob behind.
    async fn begin(&self, media_type: &str) -> Result<Box<dyn BlobUpload>, BlobError>;
    async fn stat(&self, id: &BlobId) -> Result<Option<BlobStat>, BlobError>;
    /// Up to `len` bytes from `offset` (fewer at the end, none past it);
    /// `NotFound` if there is no such blob.
    async fn read(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BlobError>;
    /// Every stored blob's id, for the retention sweep.
    async fn list(&self) -> Result<Vec<BlobId>, BlobError>;
    /// Records that `hold.holder` refers to the blob (again: holds are a set,
    /// the latest `until` wins). `NotFound` if there is no such blob.
    async fn hold(&self, id: &BlobId, hold: &Hold) -> Result<(), BlobError>;
    async fn holds(&self, id: &BlobId) -> Result<Vec<Hold>, BlobError>;
    async fn release(&self, id: &BlobId, holders: &[String]) -> Result<(), BlobError>;
    /// Removes the blob if no hold remains and it was last touched before
    /// `touched_before`, atomically with respect to `hold` and a new upload
    /// of the same bytes; true when it was removed.
    async fn remove_unheld(
        &self,
        id: &BlobId,
        touched_before: DateTime<Utc>,
    ) -> Result<bool, BlobError>;
}

/// A blob being stored.
#[async_trait]
pub trait BlobUpload: Send {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError>;
    /// Bytes written so far.
    fn size(&self) -> u64;
    /// Makes the blob visible under the hash of its bytes and returns its
    /// reference; the same bytes stored before give the same reference
    /// (the first media type stays) and touch the blob.
    async fn finish(self: Box<Self>) -> Result<BlobRef, BlobError>;
    /// Gives up: whatever was written is removed.
    async fn abort(self: Box<Self>);
}

/// The running hash and size of an upload, for the backends' `BlobUpload`s.
#[derive(Default)]
pub struct Tally {
    hasher: blake3::Hasher,
    size: u64,
}

impl Tally {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn id(&self) -> BlobId {
        BlobId::from_hash(self.hasher.finalize())
    }
}

/// Stores `bytes` whole.
pub async fn put(
    store: &dyn BlobStore,
    media_type: &str,
    bytes: &[u8],
) -> Result<BlobRef, BlobError> {
    let mut upload = store.begin(media_type).await?;
    for chunk in bytes.chunks(CHUNK) {
        if let Err(e) = upload.write(chunk).await {
            upload.abort().await;
            return Err(e);
        }
    }
    upload.finish().await
}

/// Reads a blob whole.
pub async fn get(store: &dyn BlobStore, id: &BlobId) -> Result<Vec<u8>, BlobError> {
    let stat = store
        .stat(id)
        .await?
        .ok_or_else(|| BlobError::NotFound(id.clone()))?;
    let mut out = Vec::with_capacity(stat.size as usize);
    while (out.len() as u64) < stat.size {
        let piece = store.read(id, out.len() as u64, CHUNK as u64).await?;
        if piece.is_empty() {
            break;
        }
        out.extend_from_slice(&piece);
    }
    if out.len() as u64 != stat.size {
        return Err(BlobError::Corrupt {
            id: id.clone(),
            reason: format!("{} bytes stored, {} recorded", out.len(), stat.size),
        });
    }
    Ok(out)
}
