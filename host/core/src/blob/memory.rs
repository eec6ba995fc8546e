//! `MemoryBlobs`: the in-process `BlobStore`, beside the memory state store
//! (the default without Redis, and the store of the runner's tests). An
//! upload is buffered until it finishes; nothing survives a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{BlobError, BlobId, BlobRef, BlobStat, BlobStore, BlobUpload, Hold, Tally};

struct Entry {
    bytes: Arc<Vec<u8>>,
    media_type: String,
    touched_at: DateTime<Utc>,
    holds: HashMap<String, Option<DateTime<Utc>>>,
}

#[derive(Default, Clone)]
pub struct MemoryBlobs {
    blobs: Arc<Mutex<HashMap<BlobId, Entry>>>,
}

impl MemoryBlobs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<BlobId, Entry>> {
        // Every mutation under the lock is one insert, remove or assignment.
        self.blobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Upload {
    blobs: MemoryBlobs,
    media_type: String,
    bytes: Vec<u8>,
    tally: Tally,
}

#[async_trait]
impl BlobUpload for Upload {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.tally.update(bytes);
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.tally.size()
    }

    async fn finish(self: Box<Self>) -> Result<BlobRef, BlobError> {
        let id = self.tally.id();
        let Upload {
            blobs,
            media_type,
            bytes,
            ..
        } = *self;
        let mut blobs = blobs.lock();
        let entry = blobs.entry(id.clone()).or_insert_with(|| Entry {
            bytes: Arc::new(bytes),
            media_type,
            touched_at: Utc::now(),
            holds: HashMap::new(),
        });
        entry.touched_at = Utc::now();
        Ok(BlobRef::new(
            id,
            entry.bytes.len() as u64,
            entry.media_type.clone(),
        ))
    }

    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl BlobStore for MemoryBlobs {
    async fn begin(&self, media_type: &str) -> Result<Box<dyn BlobUpload>, BlobError> {
        Ok(Box::new(Upload {
            blobs: self.clone(),
            media_type: media_type.to_owned(),
            bytes: Vec::new(),
            tally: Tally::default(),
        }))
    }

    async fn stat(&self, id: &BlobId) -> Result<Option<BlobStat>, BlobError> {
        Ok(self.lock().get(id).map(|e| BlobStat {
            size: e.bytes.len() as u64,
            media_type: e.media_type.clone(),
            touched_at: e.touched_at,
        }))
    }

    async fn read(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        let bytes = self
            .lock()
            .get(id)
            .map(|e| e.bytes.clone())
            .ok_or_else(|| BlobError::NotFound(id.clone()))?;
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(len as usize).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    async fn list(&self) -> Result<Vec<BlobId>, BlobError> {
        Ok(self.lock().keys().cloned().collect())
    }

    async fn hold(&self, id: &BlobId, hold: &Hold) -> Result<(), BlobError> {
        let mut blobs = self.lock();
        let entry = blobs
            .get_mut(id)
            .ok_or_else(|| BlobError::NotFound(id.clone()))?;
        entry.holds.insert(hold.holder.clone(), hold.until);
        Ok(())
    }

    async fn holds(&self, id: &BlobId) -> Result<Vec<Hold>, BlobError> {
        let blobs = self.lock();
        let entry = blobs
            .get(id)
            .ok_or_else(|| BlobError::NotFound(id.clone()))?;
        let mut holds: Vec<Hold> = entry
            .holds
            .iter()
            .map(|(holder, until)| Hold {
                holder: holder.clone(),
                until: *until,
            })
            .collect();
        holds.sort_by(|a, b| a.holder.cmp(&b.holder));
        Ok(holds)
    }

    async fn release(&self, id: &BlobId, holders: &[String]) -> Result<(), BlobError> {
        if let Some(entry) = self.lock().get_mut(id) {
            for h in holders {
                entry.holds.remove(h);
            }
        }
        Ok(())
    }

    async fn remove_unheld(
        &self,
        id: &BlobId,
        touched_before: DateTime<Utc>,
    ) -> Result<bool, BlobError> {
        let mut blobs = self.lock();
        let removable = blobs
            .get(id)
            .is_some_and(|e| e.holds.is_empty() && e.touched_at < touched_before);
        if removable {
            blobs.remove(id);
        }
        Ok(removable)
    }
}
