//! `FsBlobStore`: the `BlobStore` port over a folder (`folder.rs` has the
//! layout). Every blocking call runs on tokio's blocking pool; an upload
//! streams into a file of its own under `tmp/`, hashed as it goes, and only
//! `finish` (after an fsync) renames it into place. An upload dropped
//! unfinished removes its file.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowhost_core::blob::{
    BlobError, BlobId, BlobRef, BlobStat, BlobStore, BlobUpload, Hold, Tally,
};
use tokio::io::AsyncWriteExt;

use crate::folder::{Folder, TempFile};

/// Files under `tmp/` left this long without a write belong to a process
/// that died; `list` (so every retention sweep) removes them.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

/// Blobs kept in a folder, which several hosts may share.
#[derive(Clone)]
pub struct FsBlobStore {
    folder: Arc<Folder>,
}

impl FsBlobStore {
    /// The store in `dir`, whose folders are created where missing.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Self> {
        Ok(FsBlobStore {
            folder: Arc::new(Folder::open(dir.as_ref())?),
        })
    }

    /// Runs `f` on the folder in tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, BlobError>
    where
        T: Send + 'static,
        F: FnOnce(&Folder) -> Result<T, BlobError> + Send + 'static,
    {
        let folder = self.folder.clone();
        tokio::task::spawn_blocking(move || f(&folder))
            .await
            .map_err(BlobError::unavailable)?
    }
}

struct Upload {
    folder: Arc<Folder>,
    media_type: String,
    file: tokio::fs::File,
    /// Removes the file when the upload is dropped or aborted.
    temp: TempFile,
    tally: Tally,
}

#[async_trait]
impl BlobUpload for Upload {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.file
            .write_all(bytes)
            .await
            .map_err(BlobError::unavailable)?;
        self.tally.update(bytes);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.tally.size()
    }

    async fn finish(self: Box<Self>) -> Result<BlobRef, BlobError> {
        let Upload {
            folder,
            media_type,
            file,
            temp,
            tally,
        } = *self;
        // `sync_all` waits for the writes still in flight first.
        file.sync_all().await.map_err(BlobError::unavailable)?;
        drop(file);
        let (id, size) = (tally.id(), tally.size());
        // Once started the commit runs to its end even if this future is
        // dropped; `temp` is removed then unless it was renamed into place.
        tokio::task::spawn_blocking(move || folder.commit(temp, &id, size, &media_type))
            .await
            .map_err(BlobError::unavailable)?
    }

    async fn abort(self: Box<Self>) {
        // Dropping removes the file, a blocking call.
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn begin(&self, media_type: &str) -> Result<Box<dyn BlobUpload>, BlobError> {
        let (file, temp) = self
            .blocking(|f| f.temp_file(".part").map_err(BlobError::unavailable))
            .await?;
        Ok(Box::new(Upload {
            folder: self.folder.clone(),
            media_type: media_type.to_owned(),
            file: tokio::fs::File::from_std(file),
            temp,
            tally: Tally::default(),
        }))
    }

    async fn stat(&self, id: &BlobId) -> Result<Option<BlobStat>, BlobError> {
        let id = id.clone();
        self.blocking(move |f| f.stat(&id)).await
    }

    async fn read(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        let id = id.clone();
        self.blocking(move |f| f.read(&id, offset, len)).await
    }

    async fn list(&self) -> Result<Vec<BlobId>, BlobError> {
        self.blocking(|f| {
            match f.clean_tmp(STALE_TMP) {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "removed stale temporary blob files"),
                Err(e) => tracing::warn!(error = %e, "cannot clean the blob folder's tmp/"),
            }
            f.list().map_err(BlobError::unavailable)
        })
        .await
    }

    async fn hold(&self, id: &BlobId, hold: &Hold) -> Result<(), BlobError> {
        let (id, hold) = (id.clone(), hold.clone());
        self.blocking(move |f| f.hold(&id, &hold)).await
    }

    async fn holds(&self, id: &BlobId) -> Result<Vec<Hold>, BlobError> {
        let id = id.clone();
        self.blocking(move |f| f.holds(&id)).await
    }

    async fn release(&self, id: &BlobId, holders: &[String]) -> Result<(), BlobError> {
        let (id, holders) = (id.clone(), holders.to_vec());
        self.blocking(move |f| f.release(&id, &holders)).await
    }

    async fn remove_unheld(
        &self,
        id: &BlobId,
        touched_before: DateTime<Utc>,
    ) -> Result<bool, BlobError> {
        let id = id.clone();
        self.blocking(move |f| f.remove_unheld(&id, touched_before))
            .await
    }
}
