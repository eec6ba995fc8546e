//! The blob folder on disk, in blocking calls (the port runs them on tokio's
//! blocking pool). Layout under the root: `data/ab/HEX` the bytes, `meta/ab/
//! HEX.json` the sidecar (media type, last stored, holds), `locks/ab/HEX` the
//! blob's advisory lock, `tmp/` uploads and sidecars being written. Every
//! file appears whole, by rename; a blob exists while its data file does.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use flowhost_core::blob::{BlobError, BlobId, BlobRef, BlobStat, Hold};
use serde::{Deserialize, Serialize};

/// The media type of a data file found without its sidecar (copied in by
/// hand, say).
const UNKNOWN_MEDIA_TYPE: &str = "application/octet-stream";

/// A blob's sidecar.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    media_type: String,
    touched_at: DateTime<Utc>,
    /// Holder → until (`None`: until released).
    #[serde(default)]
    holds: BTreeMap<String, Option<DateTime<Utc>>>,
}

impl Meta {
    fn new(media_type: &str, touched_at: DateTime<Utc>) -> Self {
        Meta {
            media_type: media_type.to_owned(),
            touched_at,
            holds: BTreeMap::new(),
        }
    }
}

/// A file under `tmp/`, removed when dropped unless it was moved into place.
/// Dropping an upload, finished or not, cannot leave its bytes behind.
pub(crate) struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = remove_if_there(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a blob upload's temporary file");
        }
    }
}

/// A blob's lock, held until dropped.
struct Locked<'a> {
    _file: File,
    _stripe: MutexGuard<'a, ()>,
    path: PathBuf,
}

impl Locked<'_> {
    /// Removes the lock file while still holding it: whoever waits on it then
    /// finds it gone and locks a new one (see `Folder::lock`).
    fn remove(self) -> io::Result<()> {
        if cfg!(unix) {
            remove_if_there(&self.path)?;
        }
        Ok(())
    }
}

pub(crate) struct Folder {
    root: PathBuf,
    /// In-process locks, by the first byte of the hash, taken before the
    /// file lock: where file locks are per process (`flock` emulated over
    /// NFS), two threads of one host would otherwise both get the lock.
    stripes: Vec<Mutex<()>>,
}

impl Folder {
    /// Creates the folder's layout where it is missing.
    pub(crate) fn open(root: &Path) -> io::Result<Folder> {
        let folder = Folder {
            root: root.to_owned(),
            stripes: (0..256).map(|_| Mutex::new(())).collect(),
        };
        for sub in ["data", "meta", "locks", "tmp"] {
            fs::create_dir_all(folder.root.join(sub))?;
        }
        Ok(folder)
    }

    fn fanned(&self, kind: &str, id: &BlobId, suffix: &str) -> PathBuf {
        let hex = id.hex();
        self.root
            .join(kind)
            .join(&hex[..2])
            .join(format!("{hex}{suffix}"))
    }

    fn data(&self, id: &BlobId) -> PathBuf {
        self.fanned("data", id, "")
    }

    fn meta(&self, id: &BlobId) -> PathBuf {
        self.fanned("meta", id, ".json")
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A new, empty file under `tmp/` whose name no other host can pick.
    pub(crate) fn temp_file(&self, suffix: &str) -> io::Result<(File, TempFile)> {
        loop {
            let name = format!(
                "{:016x}{:016x}{suffix}",
                fastrand::u64(..),
                fastrand::u64(..)
            );
            let path = self.tmp().join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((file, TempFile { path, armed: true })),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Locks `id` against every other process and host using the folder.
    /// The lock file goes away with its blob, so a lock taken on a file that
    /// was removed (or replaced) meanwhile is dropped and taken again.
    fn lock(&self, id: &BlobId) -> io::Result<Locked<'_>> {
        let path = self.fanned("locks", id, "");
        let stripe = usize::from_str_radix(&id.hex()[..2], 16).expect("a blob id is hex");
        // Nothing is left half-done under this mutex, so a poisoned one is fine.
        let stripe = self.stripes[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
            {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(parent(&path))?;
                    continue;
                }
                file => file?,
            };
            file.lock()?;
            match fs::metadata(&path) {
                Ok(now) if same_file(&now, &file.metadata()?) => {
                    return Ok(Locked {
                        _file: file,
                        _stripe: stripe,
                        path,
                    });
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The size of `id`'s bytes, `None` when it is not stored.
    fn data_len(&self, id: &BlobId) -> io::Result<Option<(u64, SystemTime)>> {
        match fs::metadata(self.data(id)) {
            Ok(m) => Ok(Some((m.len(), m.modified()?))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Locks `id` and loads its sidecar; `None`, and no lock file left
    /// behind, when it is not stored.
    fn lock_stored(&self, id: &BlobId) -> Result<Option<(Locked<'_>, Meta)>, BlobError> {
        let lock = self.lock(id).map_err(BlobError::unavailable)?;
        match self.load(id)? {
            Some((meta, _)) => Ok(Some((lock, meta))),
            None => {
                lock.remove().map_err(BlobError::unavailable)?;
                Ok(None)
            }
        }
    }

    /// `id`'s sidecar and size, `None` when it is not stored. A data file
    /// without a sidecar counts as stored when it was last written.
    fn load(&self, id: &BlobId) -> Result<Option<(Meta, u64)>, BlobError> {
        let Some((size, modified)) = self.data_len(id).map_err(BlobError::unavailable)? else {
            return Ok(None);
        };
        let meta = match fs::read(self.meta(id)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| BlobError::Corrupt {
                id: id.clone(),
                reason: format!("its metadata is not valid: {e}"),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Meta::new(UNKNOWN_MEDIA_TYPE, modified.into())
            }
            Err(e) => return Err(BlobError::unavailable(e)),
        };
        Ok(Some((meta, size)))
    }

    /// Replaces `id`'s sidecar whole (written aside, then renamed).
    fn save(&self, id: &BlobId, meta: &Meta) -> io::Result<()> {
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        let (mut file, mut temp) = self.temp_file(".json")?;
        file.write_all(&json)?;
        file.sync_all()?;
        drop(file);
        let target = self.meta(id);
        fs::create_dir_all(parent(&target))?;
        fs::rename(&temp.path, &target)?;
        temp.armed = false;
        sync_dir(parent(&target));
        Ok(())
    }

    /// Makes the upload in `temp` (synced, `size` bytes hashing to `id`)
    /// the blob `id`; when the same bytes are stored already, drops `temp`
    /// and touches them. The sidecar is written before the data appears, so
    /// a visible blob always has its own.
    pub(crate) fn commit(
        &self,
        mut temp: TempFile,
        id: &BlobId,
        size: u64,
        media_type: &str,
    ) -> Result<BlobRef, BlobError> {
        let _lock = self.lock(id).map_err(BlobError::unavailable)?;
        // Another host's clock may be behind: touching never goes back.
        let now = Utc::now();
        if let Some((mut meta, size)) = self.load(id)? {
            meta.touched_at = meta.touched_at.max(now);
            self.save(id, &meta).map_err(BlobError::unavailable)?;
            return Ok(BlobRef::new(id.clone(), size, meta.media_type));
        }
        let target = self.data(id);
        let placed = (|| {
            self.save(id, &Meta::new(media_type, now))?;
            fs::create_dir_all(parent(&target))?;
            fs::rename(&temp.path, &target)
        })();
        placed.map_err(BlobError::unavailable)?;
        temp.armed = false;
        sync_dir(parent(&target));
        Ok(BlobRef::new(id.clone(), size, media_type))
    }

    pub(crate) fn stat(&self, id: &BlobId) -> Result<Option<BlobStat>, BlobError> {
        Ok(self.load(id)?.map(|(meta, size)| BlobStat {
            size,
            media_type: meta.media_type,
            touched_at: meta.touched_at,
        }))
    }

    /// Up to `len` bytes from `offset`, read from that place alone.
    pub(crate) fn read(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        let mut file = match File::open(self.data(id)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(id.clone()));
            }
            Err(e) => return Err(BlobError::unavailable(e)),
        };
        let size = file.metadata().map_err(BlobError::unavailable)?.len();
        let want = len.min(size.saturating_sub(offset));
        let mut out = Vec::with_capacity(want as usize);
        if want > 0 {
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.take(want).read_to_end(&mut out))
                .map_err(BlobError::unavailable)?;
        }
        Ok(out)
    }

    /// Every blob under `data/`.
    pub(crate) fn list(&self) -> io::Result<Vec<BlobId>> {
        let mut ids = Vec::new();
        for fan in fs::read_dir(self.root.join("data"))? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(fan.path())? {
                let name = file?.file_name();
                // Anything else in the folder (an editor's backup, say) is
                // not a blob.
                if let Some(id) = name.to_str().and_then(|n| n.parse::<BlobId>().ok()) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes the files under `tmp/` not written for `age`: uploads and
    /// sidecars of a process that died before it could remove them.
    pub(crate) fn clean_tmp(&self, age: Duration) -> io::Result<usize> {
        let Some(cutoff) = SystemTime::now().checked_sub(age) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in fs::read_dir(self.tmp())? {
            let entry = entry?;
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified < cutoff);
            if stale && remove_if_there(&entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub(crate) fn hold(&self, id: &BlobId, hold: &Hold) -> Result<(), BlobError> {
        let Some((_lock, mut meta)) = self.lock_stored(id)? else {
            return Err(BlobError::NotFound(id.clone()));
        };
        meta.holds.insert(hold.holder.clone(), hold.until);
        self.save(id, &meta).map_err(BlobError::unavailable)
    }

    pub(crate) fn holds(&self, id: &BlobId) -> Result<Vec<Hold>, BlobError> {
        let (meta, _) = self
            .load(id)?
            .ok_or_else(|| BlobError::NotFound(id.clone()))?;
        Ok(meta
            .holds
            .into_iter()
            .map(|(holder, until)| Hold { holder, until })
            .collect())
    }

    pub(crate) fn release(&self, id: &BlobId, holders: &[String]) -> Result<(), BlobError> {
        let Some((_lock, mut meta)) = self.lock_stored(id)? else {
            return Ok(());
        };
        let before = meta.holds.len();
        meta.holds.retain(|holder, _| !holders.contains(holder));
        if meta.holds.len() != before {
            self.save(id, &meta).map_err(BlobError::unavailable)?;
        }
        Ok(())
    }

    /// Removes `id` when nothing holds it and it was last stored before
    /// `touched_before`, under its lock: a hold or an upload of the same
    /// bytes on any host comes either before (and keeps it) or after (and
    /// finds it gone). The data goes first, so a blob is never seen without
    /// its sidecar.
    pub(crate) fn remove_unheld(
        &self,
        id: &BlobId,
        touched_before: DateTime<Utc>,
    ) -> Result<bool, BlobError> {
        let Some((lock, meta)) = self.lock_stored(id)? else {
            return Ok(false);
        };
        let removable = meta.holds.is_empty() && meta.touched_at < touched_before;
        if removable {
            remove_if_there(&self.data(id))
                .and_then(|()| remove_if_there(&self.meta(id)))
                .and_then(|()| lock.remove())
                .map_err(BlobError::unavailable)?;
        }
        Ok(removable)
    }
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .expect("every path in the folder has a parent")
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a rename in `dir` durable. Best effort: not every file system can
/// sync a folder, and the rename itself has happened.
fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

#[cfg(unix)]
fn same_file(a: &Metadata, b: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Without inode numbers lock files are never removed (`Locked::remove`),
/// so the one found is the one locked.
#[cfg(not(unix))]
fn same_file(_: &Metadata, _: &Metadata) -> bool {
    true
}
