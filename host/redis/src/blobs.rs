//! Blobs in Redis: `impl BlobStore for RedisStore`. No Redis value exceeds
//! `CHUNK`: an upload writes its bytes as chunks under its own id, with a TTL
//! until it finishes; `finish` keeps them (`KEEP_CHUNKS`) and then makes the
//! blob visible by creating its meta in the blob's slot (`FINISH_BLOB`), so a
//! blob is visible only with every byte stored. Every script and multi-key
//! command touches one slot. A host dying inside `finish` or `remove_unheld`
//! can leave chunks that nothing names (never a visible blob short of bytes).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowhost_core::blob::{
    BlobError, BlobId, BlobRef, BlobStat, BlobStore, BlobUpload, CHUNK, Hold, Tally,
};
use redis::RedisError;

use crate::scripts::{FINISH_BLOB, HOLD_BLOB, KEEP_CHUNKS, REMOVE_UNHELD};
use crate::store::RedisStore;

/// How long the chunks of an unfinished upload live: an upload cut off
/// (its host gone) leaves nothing behind for longer.
const UPLOAD_TTL: Duration = Duration::from_secs(3600);

fn unavailable(e: RedisError) -> BlobError {
    BlobError::unavailable(e)
}

/// What `FINISH_BLOB` answers: created, size, media type.
type Finished = (i64, u64, String);

struct Upload {
    store: RedisStore,
    /// The hash tag of this upload's chunks.
    id: String,
    media_type: String,
    tally: Tally,
    /// Bytes not yet written: less than a chunk.
    pending: Vec<u8>,
    /// Chunks written so far.
    chunks: u64,
    /// False once finished or aborted: nothing left for `Drop`.
    open: bool,
}

impl Upload {
    /// Writes the pending bytes as the next chunk, with the upload's TTL.
    async fn flush(&mut self) -> Result<(), BlobError> {
        let key = self.store.keys.blob_chunk(&self.id, self.chunks);
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(&self.pending)
            .arg("PX")
            .arg(UPLOAD_TTL.as_millis() as u64)
            .query_async(&mut self.store.conn.clone())
            .await
            .map_err(unavailable)?;
        self.chunks += 1;
        self.pending.clear();
        Ok(())
    }

    fn chunk_keys(&self) -> Vec<String> {
        self.store.keys.blob_chunks(&self.id, self.chunks)
    }
}

/// Deletes chunk keys (one slot: one command).
async fn delete_chunks(store: &RedisStore, keys: Vec<String>) -> Result<(), RedisError> {
    if keys.is_empty() {
        return Ok(());
    }
    let _: i64 = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut store.conn.clone())
        .await?;
    Ok(())
}

impl Drop for Upload {
    /// An upload dropped unfinished: its chunks are deleted now when a
    /// runtime can do it, and expire with their TTL otherwise.
    fn drop(&mut self) {
        if !self.open || self.chunks == 0 {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, keys) = (self.store.clone(), self.chunk_keys());
            runtime.spawn(async move { delete_chunks(&store, keys).await });
        }
    }
}

#[async_trait]
impl BlobUpload for Upload {
    async fn write(&mut self, mut bytes: &[u8]) -> Result<(), BlobError> {
        self.tally.update(bytes);
        while !bytes.is_empty() {
            let take = (CHUNK - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.tally.size()
    }

    async fn finish(mut self: Box<Self>) -> Result<BlobRef, BlobError> {
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        let chunk_keys = self.chunk_keys();
        if !chunk_keys.is_empty() {
            let kept: i64 = KEEP_CHUNKS
                .key(&chunk_keys)
                .invoke_async(&mut self.store.conn.clone())
                .await
                .map_err(unavailable)?;
            if kept == 0 {
                return Err(BlobError::Unavailable(
                    "the upload outlived its chunks' TTL before it finished".into(),
                ));
            }
        }
        // From here the chunks are this call's to delete or to hand over.
        self.open = false;
        let id = self.tally.id();
        // The index line goes in before the meta (a host dying in between
        // leaves a line without a blob, which the sweep skips, never a blob
        // the sweep cannot see) and again after it (a removal of the same
        // bytes may have taken the first one out meanwhile).
        self.store.index_line(id.hex(), "SADD").await?;
        let (created, size, media_type): Finished = FINISH_BLOB
            .key(self.store.keys.blob(id.hex()))
            .arg(&self.id)
            .arg(self.tally.size())
            .arg(self.chunks)
            .arg(&self.media_type)
            .arg(Utc::now().timestamp_millis())
            .invoke_async(&mut self.store.conn.clone())
            .await
            .map_err(unavailable)?;
        if created == 0 {
            // The same bytes were stored before, under another upload's
            // chunks, which the meta names: these are not needed.
            delete_chunks(&self.store, chunk_keys)
                .await
                .map_err(unavailable)?;
        }
        self.store.index_line(id.hex(), "SADD").await?;
        Ok(BlobRef::new(id, size, media_type))
    }

    async fn abort(mut self: Box<Self>) {
        self.open = false;
        if let Err(e) = delete_chunks(&self.store, self.chunk_keys()).await {
            tracing::warn!(error = %e, "chunks of an aborted upload left to expire");
        }
    }
}

/// The Redis score of a hold's end: `+inf` for none.
fn until_score(until: Option<DateTime<Utc>>) -> String {
    until.map_or_else(|| "+inf".to_owned(), |t| t.timestamp_millis().to_string())
}

fn from_millis(id: &BlobId, ms: i64) -> Result<DateTime<Utc>, BlobError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| BlobError::Corrupt {
        id: id.clone(),
        reason: format!("time {ms} out of range"),
    })
}

impl RedisStore {
    /// Adds (`SADD`) or removes (`SREM`) a blob's line in the index.
    async fn index_line(&self, hex: &str, command: &str) -> Result<(), BlobError> {
        let _: i64 = redis::cmd(command)
            .arg(self.keys.blobs())
            .arg(hex)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// A blob's size and the upload whose chunks hold its bytes.
    async fn blob_data(&self, id: &BlobId) -> Result<Option<(u64, String)>, BlobError> {
        let (size, data): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.blob(id.hex()))
            .arg("size")
            .arg("data")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(size.zip(data))
    }

    /// The `GETRANGE`s of bytes `start..end` of an upload's chunks.
    fn ranges(&self, upload: &str, start: u64, end: u64) -> redis::Pipeline {
        let chunk = CHUNK as u64;
        let mut pipe = redis::pipe();
        let mut at = start;
        while at < end {
            let n = at / chunk;
            let upto = end.min((n + 1) * chunk);
            pipe.cmd("GETRANGE")
                .arg(self.keys.blob_chunk(upload, n))
                .arg(at - n * chunk)
                .arg(upto - n * chunk - 1);
            at = upto;
        }
        pipe
    }
}

#[async_trait]
impl BlobStore for RedisStore {
    async fn begin(&self, media_type: &str) -> Result<Box<dyn BlobUpload>, BlobError> {
        Ok(Box::new(Upload {
            store: self.clone(),
            id: uuid::Uuid::now_v7().simple().to_string(),
            media_type: media_type.to_owned(),
            tally: Tally::default(),
            pending: Vec::new(),
            chunks: 0,
            open: true,
        }))
    }

    async fn stat(&self, id: &BlobId) -> Result<Option<BlobStat>, BlobError> {
        let (size, media_type, touched): (Option<u64>, Option<String>, Option<i64>) =
            redis::cmd("HMGET")
                .arg(self.keys.blob(id.hex()))
                .arg("size")
                .arg("media_type")
                .arg("touched_at")
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
        let (Some(size), Some(media_type), Some(touched)) = (size, media_type, touched) else {
            return Ok(None);
        };
        Ok(Some(BlobStat {
            size,
            media_type,
            touched_at: from_millis(id, touched)?,
        }))
    }

    /// Reads only the chunks the range covers; a blob removed between its
    /// meta and its chunks reads as `NotFound`.
    async fn read(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        let (size, upload) = self
            .blob_data(id)
            .await?
            .ok_or_else(|| BlobError::NotFound(id.clone()))?;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let pieces: Vec<Vec<u8>> = self
            .conn
            .query(&self.ranges(&upload, offset, end))
            .await
            .map_err(unavailable)?;
        let bytes = pieces.concat();
        if bytes.len() as u64 == end - offset {
            return Ok(bytes);
        }
        match self.blob_data(id).await? {
            Some((_, now)) if now == upload => Err(BlobError::Corrupt {
                id: id.clone(),
                reason: format!("{} of {} bytes found", bytes.len(), end - offset),
            }),
            _ => Err(BlobError::NotFound(id.clone())),
        }
    }

    async fn list(&self) -> Result<Vec<BlobId>, BlobError> {
        let hexes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.blobs())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(hexes.iter().filter_map(|h| h.parse().ok()).collect())
    }

    async fn hold(&self, id: &BlobId, hold: &Hold) -> Result<(), BlobError> {
        let held: i64 = HOLD_BLOB
            .key(self.keys.blob(id.hex()))
            .key(self.keys.blob_holds(id.hex()))
            .arg(&hold.holder)
            .arg(until_score(hold.until))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if held == 0 {
            return Err(BlobError::NotFound(id.clone()));
        }
        Ok(())
    }

    async fn holds(&self, id: &BlobId) -> Result<Vec<Hold>, BlobError> {
        let mut pipe = redis::pipe();
        pipe.exists(self.keys.blob(id.hex()));
        pipe.cmd("ZRANGE")
            .arg(self.keys.blob_holds(id.hex()))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let (exists, rows): (bool, Vec<(String, f64)>) =
            self.conn.query(&pipe).await.map_err(unavailable)?;
        if !exists {
            return Err(BlobError::NotFound(id.clone()));
        }
        rows.into_iter()
            .map(|(holder, score)| {
                let until = score
                    .is_finite()
                    .then(|| from_millis(id, score as i64))
                    .transpose()?;
                Ok(Hold { holder, until })
            })
            .collect()
    }

    async fn release(&self, id: &BlobId, holders: &[String]) -> Result<(), BlobError> {
        if holders.is_empty() {
            return Ok(());
        }
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.blob_holds(id.hex()))
            .arg(holders)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The script decides on the meta alone; the chunks and the index line
    /// go after it, when the blob is no longer visible.
    async fn remove_unheld(
        &self,
        id: &BlobId,
        touched_before: DateTime<Utc>,
    ) -> Result<bool, BlobError> {
        let meta = self.keys.blob(id.hex());
        let (removed, upload, chunks): (i64, String, u64) = REMOVE_UNHELD
            .key(&meta)
            .key(self.keys.blob_holds(id.hex()))
            .arg(touched_before.timestamp_millis())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if removed == 0 {
            return Ok(false);
        }
        delete_chunks(self, self.keys.blob_chunks(&upload, chunks))
            .await
            .map_err(unavailable)?;
        self.index_line(id.hex(), "SREM").await?;
        // The same bytes stored again meanwhile: their line stays.
        let again: bool = redis::cmd("EXISTS")
            .arg(&meta)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if again {
            self.index_line(id.hex(), "SADD").await?;
        }
        Ok(true)
    }
}
