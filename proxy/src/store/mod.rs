//! The content-addressed store: immutable files under `blobs/sha256/<2 hex>/<hex>`, fills
//! in progress under `tmp/`, and the index that describes them.
//!
//! A file only ever appears under `blobs/` by an atomic rename after its digest was checked
//! and its bytes fsynced, and it is never rewritten in place: that is what makes memory
//! mapping a hit safe even if the file is removed while a client still reads it.

pub mod cleanup;
pub mod evict;
pub mod index;
mod mapped;
pub mod pins;
pub mod pulls;
pub mod shared;
pub mod sigv4;
pub mod verify;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::digest::Digest;
use crate::error::ProxyError;
use crate::hashes::Expect;
use index::{BlobRecord, Index, IndexExt, SledIndex, Tree};

/// Files at most this large are kept in memory after first use (manifests, configs).
const SMALL_FILE: u64 = 256 * 1024;

/// The store: files plus index.
pub struct Store {
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    index: Arc<dyn Index>,
    small: moka::sync::Cache<Digest, Bytes>,
    /// The mappings of large files: shared by concurrent readers, recent ones kept.
    mapped: mapped::Mappings,
    /// Last-access times not yet written to the index (flushed in batches so a hit does
    /// not write).
    pending_access: Mutex<HashMap<Digest, u64>>,
    /// Tag pull times not yet written to the index (cleanup policies rank tags by them).
    pulls: pulls::PullLog,
    /// The last evaluation of each cleanup policy.
    cleanup_reports: Mutex<Vec<cleanup::PolicyReport>>,
    /// Files found corrupt while opening (see `reconcile`), for `sluice verify`'s report.
    quarantined_at_open: Mutex<Vec<verify::Quarantined>>,
    total_bytes: AtomicU64,
    /// Held while a file is renamed into place or removed, with its index record and the
    /// byte count: files, index and `total_bytes` change together.
    mutate: Mutex<()>,
    /// Held by an eviction or garbage-collection run: one at a time.
    evicting: Mutex<()>,
    /// Above this many bytes a commit wakes the eviction task (`u64::MAX`: no limit).
    high_bytes: AtomicU64,
    /// Woken when a commit takes the store over `high_bytes`.
    over_high: tokio::sync::Notify,
}

/// A temp file for a fill in progress; removed on drop unless committed.
pub struct TempFile {
    path: PathBuf,
    file: Arc<File>,
    committed: bool,
}

impl TempFile {
    /// The open file (read + write), shared with readers of the fill.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// One file mapping shared by every reader of a blob (the owner of their `Bytes`).
struct SharedMap(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Store {
    /// Opens the store under `data_dir`: creates directories, takes the index (and its
    /// lock), empties `tmp/`, drops index entries whose file is gone and indexes files the
    /// index lost.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        Store::open_waiting(data_dir, index::LOCK_WAIT)
    }

    /// [`Store::open`], waiting up to `lock_wait` for another holder of the index.
    fn open_waiting(data_dir: &Path, lock_wait: std::time::Duration) -> anyhow::Result<Store> {
        let blobs_dir = data_dir.join("blobs").join("sha256");
        let tmp_dir = data_dir.join("tmp");
        fs::create_dir_all(&blobs_dir)?;
        fs::create_dir_all(&tmp_dir)?;
        // The lock first: `tmp/` of a data dir another sluice is using holds its fills in
        // progress (a `gc` or `verify` run against a live server must refuse, not delete
        // them).
        let index: Arc<dyn Index> =
            Arc::new(SledIndex::open_waiting(&data_dir.join("index"), lock_wait)?);
        let mut removed = 0;
        for e in fs::read_dir(&tmp_dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                fs::remove_dir_all(e.path())?;
            } else {
                fs::remove_file(e.path())?;
            }
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, "removed unfinished temp files from a previous run");
        }
        let store = Store {
            blobs_dir,
            tmp_dir,
            index,
            small: moka::sync::Cache::builder()
                .weigher(|_k: &Digest, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
                .max_capacity(64 << 20)
                .build(),
            mapped: mapped::Mappings::new(0),
            pending_access: Mutex::new(HashMap::new()),
            pulls: pulls::PullLog::default(),
            cleanup_reports: Mutex::new(Vec::new()),
            quarantined_at_open: Mutex::new(Vec::new()),
            total_bytes: AtomicU64::new(0),
            mutate: Mutex::new(()),
            evicting: Mutex::new(()),
            high_bytes: AtomicU64::new(u64::MAX),
            over_high: tokio::sync::Notify::new(),
        };
        store.reconcile()?;
        Ok(store)
    }

    /// Whether the stored file of `d` (of `size` bytes) hashes to `d`; if not, it is moved
    /// to `quarantine/` and its index records dropped, and `false` is returned.
    fn sound_or_quarantined(&self, d: &Digest, size: u64) -> anyhow::Result<bool> {
        let path = self.path_of(d);
        let actual = verify::hash_file(&path, &mut vec![0u8; 1 << 20])
            .ok()
            .map(|(h, _)| h);
        if actual.as_deref() == Some(d.hex().as_str()) {
            return Ok(true);
        }
        let data_dir = self.tmp_dir.parent().expect("tmp/ is in the data dir");
        // A disk too full to quarantine must not keep sluice from starting: the file is
        // then deleted. One that can be neither moved nor deleted (a read-only disk) fails
        // the open: it would be served.
        match verify::quarantine(data_dir, &path, d) {
            Ok(dest) => {
                tracing::warn!(digest = %d, size, actual = ?actual, to = %dest.display(),
                    "stored file does not match its digest; quarantined");
                self.quarantined_at_open.lock().push(verify::Quarantined {
                    expected: *d,
                    actual,
                    path: dest,
                });
            }
            Err(e) => {
                tracing::warn!(digest = %d, size, actual = ?actual, error = %e,
                    "stored file does not match its digest and could not be quarantined; deleting it");
                match fs::remove_file(&path) {
                    // Gone already: moved before an fsync of the move failed.
                    Err(e2) if e2.kind() != std::io::ErrorKind::NotFound => anyhow::bail!(
                        "{} does not match its digest and can be neither quarantined ({e}) \
                         nor deleted ({e2})",
                        path.display()
                    ),
                    _ => {}
                }
            }
        }
        evict::count_removal("quarantine", size);
        // The file is gone from blobs/: its index records go too.
        self.index.remove(Tree::Blobs, d.as_bytes())?;
        self.index.remove(Tree::Manifests, d.as_bytes())?;
        Ok(false)
    }

    /// Files found corrupt and quarantined when the store was opened.
    pub fn take_quarantined_at_open(&self) -> Vec<verify::Quarantined> {
        std::mem::take(&mut *self.quarantined_at_open.lock())
    }

    /// Makes the index and the files agree, and computes the stored size.
    fn reconcile(&self) -> anyhow::Result<()> {
        let mut indexed = HashMap::new();
        for (k, v) in self.index.scan(Tree::Blobs)? {
            let Some(d) = Digest::from_bytes(&k) else {
                self.index.remove(Tree::Blobs, &k)?;
                continue;
            };
            let rec: Option<BlobRecord> = serde_json::from_slice(&v).ok();
            indexed.insert(d, rec);
        }
        let mut on_disk = HashMap::new();
        for shard in fs::read_dir(&self.blobs_dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(shard.path())? {
                let f = f?;
                let name = f.file_name();
                let Some(d) = name
                    .to_str()
                    .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
                else {
                    tracing::warn!(path = %f.path().display(), "removing stray file in blob store");
                    let _ = fs::remove_file(f.path());
                    continue;
                };
                on_disk.insert(d, f.metadata()?.len());
            }
        }
        let mut total = 0;
        let now = unix_secs();
        for (d, size) in &on_disk {
            match indexed.get(d) {
                Some(Some(rec)) if rec.size == *size => {}
                // Content decides size: a file whose size is not the one it was stored
                // with is corrupt (truncated, or written over) unless its record is the
                // wrong one. Hashing tells; a corrupt file is never served.
                Some(Some(rec)) => {
                    if !self.sound_or_quarantined(d, *size)? {
                        continue;
                    }
                    // Sound: the record was wrong. Its times stay (eviction uses them).
                    self.index.put_rec(
                        Tree::Blobs,
                        d.as_bytes(),
                        &BlobRecord {
                            size: *size,
                            ..rec.clone()
                        },
                    )?;
                }
                _ => {
                    // A file is only renamed into place after verification, so one the index
                    // lost (crash between rename and index write) is re-indexed; `sluice
                    // verify` re-hashes when in doubt.
                    self.index.put_rec(
                        Tree::Blobs,
                        d.as_bytes(),
                        &BlobRecord {
                            size: *size,
                            created: now,
                            last_access: now,
                        },
                    )?;
                }
            }
            total += size;
        }
        for d in indexed.keys() {
            if !on_disk.contains_key(d) {
                self.index.remove(Tree::Blobs, d.as_bytes())?;
            }
        }
        self.total_bytes.store(total, Ordering::Relaxed);
        metrics::gauge!("sluice_storage_bytes").set(total as f64);
        self.index.flush()?;
        Ok(())
    }

    /// The index.
    pub fn index(&self) -> &Arc<dyn Index> {
        &self.index
    }

    /// Total bytes of stored files.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn path_of(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.blobs_dir.join(&hex[..2]).join(hex)
    }

    /// The stored size of `d`, if it is stored.
    pub fn size_of(&self, d: &Digest) -> Option<u64> {
        if let Some(b) = self.small.get(d) {
            return Some(b.len() as u64);
        }
        let rec: BlobRecord = self.index.get_rec(Tree::Blobs, d.as_bytes()).ok()??;
        Some(rec.size)
    }

    /// The content of `d` as one `Bytes` (memory-mapped for large files), or `None` if it
    /// is not stored.
    pub fn read(&self, d: &Digest) -> Option<Bytes> {
        if let Some(b) = self.small.get(d) {
            self.touch(d);
            return Some(b);
        }
        if let Some(map) = self.mapped.get(d) {
            self.touch(d);
            return Some(Bytes::from_owner(SharedMap(map)));
        }
        let file = File::open(self.path_of(d)).ok()?;
        let len = file.metadata().ok()?.len();
        let bytes = if len == 0 {
            Bytes::new()
        } else if len <= SMALL_FILE {
            // From the open handle: the path may be unlinked (evicted) since the open.
            let mut v = Vec::with_capacity(len as usize);
            std::io::Read::read_to_end(&mut &file, &mut v).ok()?;
            let b = Bytes::from(v);
            self.small.insert(*d, b.clone());
            b
        } else {
            Bytes::from_owner(SharedMap(self.mapped.map(d, &file)?))
        };
        self.touch(d);
        Some(bytes)
    }

    /// Keeps at most `bytes` of recently served large files mapped for their next reader
    /// (`storage.keep_mapped`; none until set).
    pub fn set_keep_mapped(&self, bytes: u64) {
        self.mapped.set_keep_bytes(bytes);
    }

    /// Closes the kept mappings of large files not read for [`mapped::KEEP_IDLE`] before
    /// `now`.
    pub fn expire_mappings(&self, now: Instant) {
        self.mapped.expire(now, mapped::KEEP_IDLE);
    }

    /// Records an access, written to the index at the next [`Store::flush_access`].
    pub fn touch(&self, d: &Digest) {
        self.pending_access.lock().insert(*d, unix_secs());
    }

    /// Writes batched last-access times (and tag pull times) to the index.
    pub fn flush_access(&self) -> anyhow::Result<()> {
        self.write_pulls()?;
        let batch = std::mem::take(&mut *self.pending_access.lock());
        for (d, t) in batch {
            if let Some(mut rec) = self
                .index
                .get_rec::<BlobRecord>(Tree::Blobs, d.as_bytes())?
            {
                rec.last_access = t;
                self.index.put_rec(Tree::Blobs, d.as_bytes(), &rec)?;
            }
        }
        self.index.flush()
    }

    /// Removes the stored content `d` (file, index records, in-memory copy) and returns
    /// the bytes freed, `None` if it was not stored. Readers that already hold it keep a
    /// valid copy: small files are shared `Bytes`, large ones a mapping of the unlinked
    /// file. Blocking.
    ///
    /// The index records go first, the file last: a request that finds no record fetches
    /// the content again, and one that found the record but then cannot open the file finds
    /// no record when it goes to fetch it (never "indexed but missing", which would fail
    /// it). A crash in between leaves a verified file without a record, which the next
    /// start re-indexes.
    pub fn remove(&self, d: &Digest) -> anyhow::Result<Option<u64>> {
        let path = self.path_of(d);
        let _g = self.mutate.lock();
        let size = match fs::metadata(&path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        self.index.remove(Tree::Blobs, d.as_bytes())?;
        self.index.remove(Tree::Manifests, d.as_bytes())?;
        self.small.invalidate(d);
        self.mapped.forget(d);
        self.pending_access.lock().remove(d);
        if size.is_some() {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Again after the unlink: a reader that opened the file before it may have
        // registered its mapping since the first `forget` (one mapping after it sees the
        // unlink and is not registered).
        self.mapped.forget(d);
        if let Some(n) = size {
            let prev = self
                .total_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    Some(t.saturating_sub(n))
                })
                .unwrap_or_else(|t| t);
            let total = prev.saturating_sub(n);
            metrics::gauge!("sluice_storage_bytes").set(total as f64);
        }
        Ok(size)
    }

    /// Every stored file's record, with access times not yet flushed merged in.
    pub fn records(&self) -> anyhow::Result<Vec<(Digest, BlobRecord)>> {
        let pending = self.pending_access.lock().clone();
        let mut out = Vec::new();
        for (k, v) in self.index.scan(Tree::Blobs)? {
            let (Some(d), Ok(mut rec)) = (
                Digest::from_bytes(&k),
                serde_json::from_slice::<BlobRecord>(&v),
            ) else {
                continue;
            };
            if let Some(t) = pending.get(&d) {
                rec.last_access = rec.last_access.max(*t);
            }
            out.push((d, rec));
        }
        Ok(out)
    }

    /// Sets the size above which a commit wakes [`Store::over_high_watermark`] waiters.
    pub fn set_high_watermark(&self, bytes: Option<u64>) {
        self.high_bytes
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Resolves when a commit has taken the store over its high watermark.
    pub async fn over_high_watermark(&self) {
        self.over_high.notified().await
    }

    /// The last access of `d` recorded since the last flush, if any.
    pub fn pending_access_of(&self, d: &Digest) -> Option<u64> {
        self.pending_access.lock().get(d).copied()
    }

    /// The content of `d` read from disk without counting as an access (eviction's own
    /// look at manifests and packuments must not keep them alive).
    pub fn read_untracked(&self, d: &Digest) -> Option<Bytes> {
        if let Some(b) = self.small.get(d) {
            return Some(b);
        }
        fs::read(self.path_of(d)).ok().map(Bytes::from)
    }

    /// Whether `d` is stored (index record present).
    pub fn contains(&self, d: &Digest) -> bool {
        self.index
            .get(Tree::Blobs, d.as_bytes())
            .ok()
            .flatten()
            .is_some()
    }

    /// A new temp file for a fill.
    pub fn temp_file(&self) -> Result<TempFile, ProxyError> {
        let name: u128 = rand::random();
        let path = self.tmp_dir.join(format!("{name:032x}"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ProxyError::internal(format!("cannot create temp file: {e}")))?;
        Ok(TempFile {
            path,
            file: Arc::new(file),
            committed: false,
        })
    }

    /// Makes a fully written and verified temp file the stored content of `d`: fsync,
    /// rename into place, fsync the directory, index. Blocking: call off the async path.
    pub fn commit(&self, mut tmp: TempFile, d: &Digest, size: u64) -> Result<(), ProxyError> {
        let io = |e: std::io::Error| ProxyError::internal(format!("storing {d}: {e}"));
        tmp.file.sync_all().map_err(io)?;
        let dest = self.path_of(d);
        let shard = dest.parent().expect("blob path has a shard directory");
        fs::create_dir_all(shard).map_err(io)?;
        {
            let _g = self.mutate.lock();
            let existed = dest.exists();
            fs::rename(&tmp.path, &dest).map_err(io)?;
            tmp.committed = true;
            if existed {
                // A kept mapping of the replaced file would hold its space.
                self.mapped.forget(d);
            }
            let now = unix_secs();
            self.index
                .put_rec(
                    Tree::Blobs,
                    d.as_bytes(),
                    &BlobRecord {
                        size,
                        created: now,
                        last_access: now,
                    },
                )
                .map_err(ProxyError::internal)?;
            if !existed {
                let total = self.total_bytes.fetch_add(size, Ordering::Relaxed) + size;
                metrics::gauge!("sluice_storage_bytes").set(total as f64);
                if total > self.high_bytes.load(Ordering::Relaxed) {
                    self.over_high.notify_one();
                }
            }
        }
        File::open(shard).and_then(|f| f.sync_all()).map_err(io)?;
        Ok(())
    }

    /// Holds back every commit until the guard drops (tests of what happens meanwhile).
    #[cfg(test)]
    pub(crate) fn hold_commits(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.mutate.lock()
    }

    /// Stores a small document whose bytes are in memory (manifests, tag lists). The digest
    /// is computed here, so what is stored always matches its name.
    pub fn put_bytes(&self, bytes: &Bytes) -> Result<Digest, ProxyError> {
        let d = Digest::of(bytes);
        if self.size_of(&d).is_some() && self.path_of(&d).exists() {
            return Ok(d);
        }
        let tmp = self.temp_file()?;
        (&*tmp.file)
            .write_all(bytes)
            .map_err(|e| ProxyError::internal(format!("writing temp file: {e}")))?;
        self.commit(tmp, &d, bytes.len() as u64)?;
        if bytes.len() as u64 <= SMALL_FILE {
            self.small.insert(d, bytes.clone());
        }
        Ok(d)
    }

    /// The stored sha256 for what `expect` names, if that content is stored.
    pub fn resolve(&self, expect: &Expect) -> Option<Digest> {
        let d = match expect.alias_key() {
            None => match expect {
                Expect::Sha256(d) => *d,
                _ => return None,
            },
            Some(key) => {
                let v = self.index.get(Tree::Aliases, key.as_bytes()).ok()??;
                Digest::from_bytes(&v)?
            }
        };
        self.size_of(&d).map(|_| d)
    }

    /// Records that the content `expect` names is stored as `d` (no-op for sha256).
    pub fn put_alias(&self, expect: &Expect, d: &Digest) -> Result<(), ProxyError> {
        if let Some(key) = expect.alias_key() {
            self.index
                .put(Tree::Aliases, key.as_bytes(), d.as_bytes())
                .map_err(ProxyError::internal)?;
        }
        Ok(())
    }

    /// Whether the store can be written (readiness).
    pub fn writable(&self) -> bool {
        let p = self.tmp_dir.join(".ready-probe");
        let ok = fs::write(&p, b"ok").is_ok();
        let _ = fs::remove_file(&p);
        ok
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_open_returns_the_same_bytes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let big = Bytes::from(vec![7u8; 300 * 1024]);
        let d = {
            let s = Store::open(dir.path()).unwrap();
            let d = s.put_bytes(&big).unwrap();
            assert_eq!(s.read(&d).unwrap(), big);
            assert_eq!(s.total_bytes(), big.len() as u64);
            s.flush_access().unwrap();
            d
        };
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.read(&d).unwrap(), big);
        assert_eq!(s.size_of(&d), Some(big.len() as u64));
        assert_eq!(s.total_bytes(), big.len() as u64);
    }

    /// `gc`/`verify` (or a second sluice) opening a data dir a running sluice holds is
    /// refused without touching that sluice's fills in progress in `tmp/`.
    #[test]
    fn opening_a_held_store_leaves_its_temp_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let held = Store::open(dir.path()).unwrap();
        let body = b"a fill in progress";
        let tmp = held.temp_file().unwrap();
        (&**tmp.file()).write_all(body).unwrap();
        let err = Store::open_waiting(dir.path(), std::time::Duration::from_millis(200))
            .err()
            .expect("the index is held");
        assert!(err.to_string().contains("still locked"), "{err}");
        assert!(
            tmp.path.exists(),
            "the refused open removed a fill's temp file"
        );
        let d = Digest::of(body);
        held.commit(tmp, &d, body.len() as u64).unwrap();
        assert_eq!(held.read(&d).unwrap(), &body[..]);
    }

    #[test]
    fn open_cleans_tmp_and_reconciles_index_with_files() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, lost) = {
            let s = Store::open(dir.path()).unwrap();
            let kept = s.put_bytes(&Bytes::from_static(b"kept")).unwrap();
            let lost = s.put_bytes(&Bytes::from_static(b"lost")).unwrap();
            s.index.flush().unwrap();
            (kept, lost)
        };
        std::fs::remove_file(
            dir.path()
                .join("blobs/sha256")
                .join(&lost.hex()[..2])
                .join(lost.hex()),
        )
        .unwrap();
        std::fs::write(dir.path().join("tmp/half-written"), b"partial").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
        assert!(s.read(&kept).is_some());
        assert!(s.read(&lost).is_none());
        assert_eq!(s.size_of(&lost), None);
        assert_eq!(s.total_bytes(), 4);
    }

    /// A stored file whose size changed is hashed at open: corrupt, it is quarantined and
    /// forgotten (never served); sound (its record was what was wrong), it is re-indexed.
    #[test]
    fn open_quarantines_a_file_whose_size_changed_and_fixes_a_record_that_was_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (cut, other, recorded) = {
            let s = Store::open(dir.path()).unwrap();
            let cut = s.put_bytes(&Bytes::from(vec![1u8; 5000])).unwrap();
            let other = s.put_bytes(&Bytes::from(vec![2u8; 3000])).unwrap();
            let recorded = s.put_bytes(&Bytes::from(vec![3u8; 1000])).unwrap();
            // A record whose size is wrong, for a file that is right.
            s.index
                .put_rec(
                    Tree::Blobs,
                    recorded.as_bytes(),
                    &BlobRecord {
                        size: 999,
                        created: 1,
                        last_access: 1,
                    },
                )
                .unwrap();
            s.index.flush().unwrap();
            (cut, other, recorded)
        };
        let path = |d: &Digest| {
            dir.path()
                .join("blobs/sha256")
                .join(&d.hex()[..2])
                .join(d.hex())
        };
        // Truncated, as a disk repair or a full disk may leave it.
        std::fs::write(path(&cut), vec![1u8; 4096]).unwrap();

        let s = Store::open(dir.path()).unwrap();
        assert!(s.read(&cut).is_none(), "a truncated file was served");
        assert_eq!(s.size_of(&cut), None);
        assert!(!path(&cut).exists());
        let q = dir.path().join("quarantine").join(cut.hex());
        assert_eq!(std::fs::read(&q).unwrap(), vec![1u8; 4096]);
        assert_eq!(s.size_of(&recorded), Some(1000), "the record is fixed");
        let rec: BlobRecord = s
            .index
            .get_rec(Tree::Blobs, recorded.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!((rec.created, rec.last_access), (1, 1), "its times are kept");
        assert_eq!(s.read(&recorded).unwrap(), vec![3u8; 1000]);
        assert_eq!(s.read(&other).unwrap(), vec![2u8; 3000]);
        assert_eq!(s.total_bytes(), 4000, "the quarantined file is not counted");
        let found = s.take_quarantined_at_open();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].expected, cut);
        assert_eq!(found[0].path, q);
        drop(s);
        // Nothing left to find the next time.
        let s = Store::open(dir.path()).unwrap();
        assert!(s.take_quarantined_at_open().is_empty());
        assert_eq!(s.total_bytes(), 4000);
        drop(s);

        // No room for quarantine/ (here: a file in its place): the corrupt file is deleted
        // and sluice still starts, serving it never.
        std::fs::rename(dir.path().join("quarantine"), dir.path().join("q-old")).unwrap();
        std::fs::write(dir.path().join("quarantine"), b"not a directory").unwrap();
        std::fs::write(path(&other), vec![2u8; 10]).unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.read(&other).is_none());
        assert!(
            !path(&other).exists(),
            "deleted when it could not be quarantined"
        );
        assert!(s.take_quarantined_at_open().is_empty());
        assert_eq!(s.total_bytes(), 1000);
    }

    #[test]
    fn concurrent_readers_of_a_large_file_share_one_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let big = Bytes::from(vec![9u8; 2 * SMALL_FILE as usize]);
        let d = s.put_bytes(&big).unwrap();
        s.set_keep_mapped(1 << 30);
        let a = s.read(&d).unwrap();
        let b = s.read(&d).unwrap();
        assert_eq!(a, big);
        assert_eq!(a.as_ptr(), b.as_ptr(), "one mapping for both readers");
        let ptr = a.as_ptr();
        // Once every reader is gone the mapping is kept for the next reader, until idle.
        drop((a, b));
        let c = s.read(&d).unwrap();
        assert_eq!(c.as_ptr(), ptr, "the kept mapping");
        drop(c);
        s.expire_mappings(Instant::now() + mapped::KEEP_IDLE);
        assert!(!s.mapped.is_open(&d));
        let c = s.read(&d).unwrap();
        assert_eq!(c, big);
        // Removal forgets the mapping: a reader holding it keeps valid bytes.
        s.remove(&d).unwrap();
        assert!(!s.mapped.is_open(&d));
        assert_eq!(s.mapped.kept_bytes(), 0);
        assert!(s.read(&d).is_none());
        assert_eq!(c, big);
    }

    #[test]
    fn uncommitted_temp_file_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = s.temp_file().unwrap();
        (&**t.file()).write_all(b"abc").unwrap();
        drop(t);
        assert!(std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
    }
}
