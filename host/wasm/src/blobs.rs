//! The host side of the `blobs` interface: what one step may read and create.
//! A step reads only the blobs referenced in its input and those it created
//! itself (anything else is refused and recorded as a denial), and its reads
//! and writes are counted against its manifest's budgets; a call that would
//! cross one is refused and remembered, and the step then fails.

use std::collections::HashSet;
use std::sync::Arc;

use flowhost_core::blob::{self, BlobError, BlobId, BlobRef, BlobStore, CHUNK};
use flowhost_core::executor::PluginError;
use serde_json::Value;
use wasmtime::component::{HasData, Resource, ResourceTable};

use crate::bindings::{BlobApiError, BlobInfo, BlobsHost, HostWriter, Writer};
use crate::denials::Denials;
use crate::manifest::Grants;

/// A media type longer than this is refused.
const MAX_MEDIA_TYPE: usize = 255;
/// The media type of a blob created without one.
const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";

/// A step's two blob budgets.
#[derive(Clone, Copy, Debug)]
enum Budget {
    Read,
    Write,
}

impl Budget {
    fn what(self) -> &'static str {
        match self {
            Budget::Read => "read",
            Budget::Write => "written",
        }
    }

    fn setting(self) -> &'static str {
        match self {
            Budget::Read => "max_blob_read_bytes",
            Budget::Write => "max_blob_write_bytes",
        }
    }
}

/// The blob budget a step crossed (or tried to).
#[derive(Clone, Copy, Debug)]
struct Overrun {
    budget: Budget,
    size: u64,
    limit: u64,
}

/// One step's access to blobs. Without a store (the host has none, or the
/// call is `describe`) every call answers `unavailable`.
#[derive(Default)]
pub struct StepBlobs {
    store: Option<Arc<dyn BlobStore>>,
    readable: HashSet<BlobId>,
    read: u64,
    written: u64,
    max_read: u64,
    max_write: u64,
    denials: Denials,
    overrun: Option<Overrun>,
}

impl StepBlobs {
    /// Access for a step whose input is `input`: the blobs it references,
    /// under `grants`' budgets.
    pub fn for_step(
        store: Arc<dyn BlobStore>,
        input: &Value,
        grants: &Grants,
        denials: Denials,
    ) -> Self {
        StepBlobs {
            store: Some(store),
            readable: blob::refs_in(input).into_iter().map(|r| r.id).collect(),
            read: 0,
            written: 0,
            max_read: grants.max_blob_read_bytes,
            max_write: grants.max_blob_write_bytes,
            denials,
            overrun: None,
        }
    }

    /// The budget the step crossed, if it did: the step fails with it
    /// whatever the plugin returned.
    pub fn overrun(&self) -> Option<PluginError> {
        self.overrun.map(|o| PluginError::BlobTooLarge {
            what: o.budget.what(),
            size: o.size,
            limit: o.limit,
        })
    }

    fn store(&self) -> Result<Arc<dyn BlobStore>, BlobApiError> {
        self.store
            .clone()
            .ok_or_else(|| BlobApiError::Unavailable("this host has no blob store".into()))
    }

    /// `id` parsed, if this step may read it; a refusal is recorded.
    fn readable(&self, id: &str) -> Result<BlobId, BlobApiError> {
        let id: BlobId = id.parse().map_err(BlobApiError::Invalid)?;
        if self.readable.contains(&id) {
            return Ok(id);
        }
        let detail =
            format!("read blob {id}, which is neither in the step's input nor created by it");
        self.denials.record("blobs", detail.clone());
        Err(BlobApiError::Denied(detail))
    }

    /// Counts `n` more bytes against a budget, or refuses and remembers.
    fn spend(&mut self, budget: Budget, n: u64) -> Result<(), BlobApiError> {
        let (used, limit) = match budget {
            Budget::Read => (&mut self.read, self.max_read),
            Budget::Write => (&mut self.written, self.max_write),
        };
        let size = used.saturating_add(n);
        if size > limit {
            self.overrun.get_or_insert(Overrun {
                budget,
                size,
                limit,
            });
            return Err(BlobApiError::TooLarge(format!(
                "blob bytes {} would reach {size}, over this plugin's limit of {limit} \
                 (limits.{} in its manifest)",
                budget.what(),
                budget.setting()
            )));
        }
        *used = size;
        Ok(())
    }

    /// The step may read what it created; the reference as JSON text.
    fn created(&mut self, r: &BlobRef) -> String {
        self.readable.insert(r.id.clone());
        r.to_json().to_string()
    }
}

/// The blobs interface's view of a step's context: its blob access and the
/// resource table its writers live in.
pub struct BlobsView<'a> {
    pub blobs: &'a mut StepBlobs,
    pub table: &'a mut ResourceTable,
}

/// Links the `blobs` interface through a [`BlobsView`].
pub struct HasBlobs;

impl HasData for HasBlobs {
    type Data<'a> = BlobsView<'a>;
}

fn media_type(given: &str) -> Result<&str, BlobApiError> {
    if given.is_empty() {
        return Ok(DEFAULT_MEDIA_TYPE);
    }
    let well_formed = given.len() <= MAX_MEDIA_TYPE
        && given.contains('/')
        && given.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if well_formed {
        Ok(given)
    } else {
        // Debug formatting escapes whatever control characters it holds.
        let shown: String = given.chars().take(64).collect();
        Err(BlobApiError::Invalid(format!(
            "media type {shown:?} is not one: `type/subtype`, printable ASCII, \
             at most {MAX_MEDIA_TYPE} bytes"
        )))
    }
}

fn store_error(e: BlobError) -> BlobApiError {
    match e {
        BlobError::NotFound(id) => BlobApiError::NotFound(format!("no blob {id}")),
        other => BlobApiError::Unavailable(other.to_string()),
    }
}

/// Writes `bytes` to `upload` in pieces no larger than a backend takes.
async fn write_all(upload: &mut Writer, bytes: &[u8]) -> Result<(), BlobApiError> {
    for piece in bytes.chunks(CHUNK) {
        upload.upload.write(piece).await.map_err(store_error)?;
    }
    Ok(())
}

impl BlobsHost for BlobsView<'_> {
    async fn stat(&mut self, id: String) -> Result<BlobInfo, BlobApiError> {
        let store = self.blobs.store()?;
        let id = self.blobs.readable(&id)?;
        match store.stat(&id).await.map_err(store_error)? {
            Some(stat) => Ok(BlobInfo {
                id: id.to_string(),
                size: stat.size,
                media_type: stat.media_type,
            }),
            None => Err(BlobApiError::NotFound(format!("no blob {id}"))),
        }
    }

    async fn read(&mut self, id: String, offset: u64, len: u32) -> Result<Vec<u8>, BlobApiError> {
        let store = self.blobs.store()?;
        let id = self.blobs.readable(&id)?;
        let len = (len as usize).min(CHUNK) as u64;
        let bytes = store.read(&id, offset, len).await.map_err(store_error)?;
        self.blobs.spend(Budget::Read, bytes.len() as u64)?;
        Ok(bytes)
    }

    async fn create(&mut self, media: String, bytes: Vec<u8>) -> Result<String, BlobApiError> {
        let store = self.blobs.store()?;
        let media = media_type(&media)?;
        self.blobs.spend(Budget::Write, bytes.len() as u64)?;
        let r = blob::put(store.as_ref(), media, &bytes)
            .await
            .map_err(store_error)?;
        Ok(self.blobs.created(&r))
    }

    async fn begin(&mut self, media: String) -> Result<Resource<Writer>, BlobApiError> {
        let store = self.blobs.store()?;
        let media = media_type(&media)?;
        let upload = store.begin(media).await.map_err(store_error)?;
        self.table
            .push(Writer { upload })
            .map_err(|e| BlobApiError::Unavailable(e.to_string()))
    }
}

impl HostWriter for BlobsView<'_> {
    async fn write(
        &mut self,
        writer: Resource<Writer>,
        bytes: Vec<u8>,
    ) -> Result<(), BlobApiError> {
        self.blobs.spend(Budget::Write, bytes.len() as u64)?;
        let writer = self
            .table
            .get_mut(&writer)
            .map_err(|e| BlobApiError::Invalid(e.to_string()))?;
        write_all(writer, &bytes).await
    }

    async fn finish(&mut self, writer: Resource<Writer>) -> Result<String, BlobApiError> {
        let writer = self
            .table
            .delete(writer)
            .map_err(|e| BlobApiError::Invalid(e.to_string()))?;
        let r = writer.upload.finish().await.map_err(store_error)?;
        Ok(self.blobs.created(&r))
    }

    async fn drop(&mut self, writer: Resource<Writer>) -> wasmtime::Result<()> {
        // An upload dropped unfinished leaves no blob behind (the port's
        // promise), so there is nothing to abort.
        self.table.delete(writer)?;
        Ok(())
    }
}
