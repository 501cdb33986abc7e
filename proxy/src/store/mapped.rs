//! Memory mappings of large store files: one per file while anyone reads it, and the most
//! recently read ones kept open a little longer.
//!
//! Every separate mapping of the same pages counts again in the process's RSS (a thousand
//! clients on one 100 MB blob would "use" 100 GB), so concurrent readers share one. Keeping
//! a mapping after its last reader is done saves the next reader of that file from mapping
//! it again and faulting each page in: on a warm 200 MB blob that was 15% of the serving
//! CPU (4.6 → 5.3 GB/s, one stream on loopback). The kept mappings are bounded by bytes
//! and by idle time; their pages are the kernel's page cache (shared, clean, reclaimable),
//! but they show in RSS while kept, which `sluice_mapped_bytes` reports.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::digest::Digest;

/// A kept mapping not read for this long is closed at the next [`Mappings::expire`].
pub const KEEP_IDLE: Duration = Duration::from_secs(30);

/// The mappings, by digest.
pub struct Mappings {
    inner: Mutex<Inner>,
    /// Kept mappings stay under this many bytes (least recently read go first).
    keep_bytes: AtomicU64,
}

#[derive(Default)]
struct Inner {
    files: HashMap<Digest, Entry>,
    kept_bytes: u64,
}

struct Entry {
    map: Weak<memmap2::Mmap>,
    /// Holds the mapping open between readers.
    kept: Option<Arc<memmap2::Mmap>>,
    read_at: Instant,
}

impl Mappings {
    /// Keeping at most `keep_bytes` of mappings with no reader.
    pub fn new(keep_bytes: u64) -> Mappings {
        Mappings {
            inner: Mutex::new(Inner::default()),
            keep_bytes: AtomicU64::new(keep_bytes),
        }
    }

    /// Changes the budget (closing the least recently read kept mappings over it).
    pub fn set_keep_bytes(&self, keep_bytes: u64) {
        self.keep_bytes.store(keep_bytes, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        let closed = inner.shrink_to(keep_bytes, None);
        inner.publish();
        drop(inner);
        drop(closed); // unmapped outside the lock: a large munmap takes a while
    }

    /// The mapping of `d` if one is open.
    pub fn get(&self, d: &Digest) -> Option<Arc<memmap2::Mmap>> {
        self.inner.lock().open(d)
    }

    /// The mapping of `d`, mapping `file` (the open store file) unless another reader did
    /// meanwhile.
    pub fn map(&self, d: &Digest, file: &File) -> Option<Arc<memmap2::Mmap>> {
        // SAFETY: store files are immutable once renamed into place (never truncated or
        // rewritten); unlinking keeps an existing mapping valid.
        let fresh = Arc::new(unsafe { memmap2::Mmap::map(file) }.ok()?);
        let mut inner = self.inner.lock();
        if let Some(existing) = inner.open(d) {
            return Some(existing);
        }
        // A file removed since this reader opened it is read, never registered: the
        // removal's `forget` may already have run (it runs again after the unlink, under
        // this lock, so a file unlinked after this check is forgotten then).
        if !file.metadata().is_ok_and(|m| m.nlink() > 0) {
            return Some(fresh);
        }
        if inner.files.len() >= 1024 {
            inner.drop_dead();
        }
        let len = fresh.len() as u64;
        let keep_bytes = self.keep_bytes.load(Ordering::Relaxed);
        let kept = (len <= keep_bytes).then(|| fresh.clone());
        let mut closed = Vec::new();
        if kept.is_some() {
            inner.kept_bytes += len;
            closed = inner.shrink_to(keep_bytes, Some(d));
        }
        let old = inner.files.insert(
            *d,
            Entry {
                map: Arc::downgrade(&fresh),
                kept,
                read_at: Instant::now(),
            },
        );
        if let Some(old) = old {
            closed.extend(inner.release(old));
        }
        inner.publish();
        drop(inner);
        drop(closed);
        Some(fresh)
    }

    /// Forgets `d` (its file is being removed): readers keep their bytes, nothing keeps
    /// the unlinked file's space in use after them.
    pub fn forget(&self, d: &Digest) {
        let mut inner = self.inner.lock();
        let Some(old) = inner.files.remove(d) else {
            return;
        };
        let closed = inner.release(old);
        inner.publish();
        drop(inner);
        drop(closed);
    }

    /// Closes kept mappings not read since `now - idle`, and forgets mappings nobody holds.
    pub fn expire(&self, now: Instant, idle: Duration) {
        let mut inner = self.inner.lock();
        let Inner { files, kept_bytes } = &mut *inner;
        let mut closed = Vec::new();
        for e in files.values_mut() {
            if now.saturating_duration_since(e.read_at) >= idle {
                if let Some(k) = e.kept.take() {
                    *kept_bytes -= k.len() as u64;
                    closed.push(k);
                }
            }
        }
        inner.drop_dead();
        inner.publish();
        drop(inner);
        drop(closed);
    }

    /// Bytes of mappings kept open.
    #[cfg(test)]
    pub fn kept_bytes(&self) -> u64 {
        self.inner.lock().kept_bytes
    }

    /// Whether a mapping of `d` is open (held by a reader or kept).
    #[cfg(test)]
    pub fn is_open(&self, d: &Digest) -> bool {
        self.inner
            .lock()
            .files
            .get(d)
            .is_some_and(|e| e.map.strong_count() > 0)
    }
}

impl Inner {
    /// The open mapping of `d`, marked read now.
    fn open(&mut self, d: &Digest) -> Option<Arc<memmap2::Mmap>> {
        let e = self.files.get_mut(d)?;
        let map = e.map.upgrade()?;
        e.read_at = Instant::now();
        Some(map)
    }

    /// Uncounts a removed entry's kept mapping and hands it back, to be unmapped after
    /// the lock is released.
    fn release(&mut self, e: Entry) -> Option<Arc<memmap2::Mmap>> {
        let k = e.kept?;
        self.kept_bytes -= k.len() as u64;
        Some(k)
    }

    fn publish(&self) {
        metrics::gauge!("sluice_mapped_bytes").set(self.kept_bytes as f64);
    }

    fn drop_dead(&mut self) {
        self.files.retain(|_, e| e.map.strong_count() > 0);
    }

    /// Stops keeping the least recently read mappings (other than `except`) until the
    /// kept bytes are at most `limit`; returns them, to be unmapped after the lock.
    fn shrink_to(&mut self, limit: u64, except: Option<&Digest>) -> Vec<Arc<memmap2::Mmap>> {
        let mut closed = Vec::new();
        while self.kept_bytes > limit {
            let oldest = self
                .files
                .iter_mut()
                .filter(|(d, e)| e.kept.is_some() && Some(*d) != except)
                .min_by_key(|(_, e)| e.read_at);
            let Some((_, e)) = oldest else { break };
            let k = e.kept.take().expect("filtered on kept");
            self.kept_bytes -= k.len() as u64;
            closed.push(k);
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A stored-like file: named (linked) while the test holds it.
    fn file_of(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; len]).unwrap();
        f
    }

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn a_mapping_is_shared_then_kept_after_its_last_reader() {
        let m = Mappings::new(1 << 20);
        let f = file_of(4096);
        let d = digest(1);
        let a = m.map(&d, f.as_file()).unwrap();
        let b = m.map(&d, f.as_file()).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one mapping for both readers");
        drop((a, b));
        let c = m.get(&d).expect("kept after the readers are done");
        assert_eq!(c.len(), 4096);
        assert_eq!(m.kept_bytes(), 4096);
        drop(c);
        m.forget(&d);
        assert!(m.get(&d).is_none());
        assert_eq!(m.kept_bytes(), 0);
    }

    #[test]
    fn kept_bytes_stay_under_the_budget_least_recently_read_first() {
        let m = Mappings::new(10_000);
        let f = file_of(4000);
        let (d1, d2, d3) = (digest(1), digest(2), digest(3));
        drop(m.map(&d1, f.as_file()));
        std::thread::sleep(Duration::from_millis(2));
        drop(m.map(&d2, f.as_file()));
        std::thread::sleep(Duration::from_millis(2));
        drop(m.get(&d1)); // d1 read again: d2 is now the least recently read
        std::thread::sleep(Duration::from_millis(2));
        drop(m.map(&d3, f.as_file()));
        assert_eq!(m.kept_bytes(), 8000);
        assert!(m.is_open(&d1) && m.is_open(&d3));
        assert!(!m.is_open(&d2));
        // Larger than the whole budget: shared while read, never kept.
        let big = file_of(20_000);
        let d4 = digest(4);
        let held = m.map(&d4, big.as_file()).unwrap();
        assert!(m.is_open(&d4));
        assert_eq!(m.kept_bytes(), 8000);
        drop(held);
        assert!(!m.is_open(&d4));
        // A smaller budget closes the least recently read at once; 0 keeps none.
        m.set_keep_bytes(4000);
        assert!(m.is_open(&d3) && !m.is_open(&d1));
        m.set_keep_bytes(0);
        assert_eq!(m.kept_bytes(), 0);
        drop(m.map(&d1, f.as_file()));
        assert!(!m.is_open(&d1));
    }

    /// A reader that opened a file just before its removal unlinked it reads it, but its
    /// mapping is not kept (nor shared): it would hold the removed file's space.
    #[test]
    fn a_file_removed_before_it_was_mapped_is_read_but_not_kept() {
        let m = Mappings::new(1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![5u8; 8192]).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let d = digest(9);
        let map = m.map(&d, &f).expect("still readable");
        assert_eq!(&map[..], &[5u8; 8192][..]);
        assert!(!m.is_open(&d), "registered though unlinked");
        assert_eq!(m.kept_bytes(), 0);
    }

    #[test]
    fn idle_mappings_are_closed_but_read_ones_stay() {
        let m = Mappings::new(1 << 20);
        let f = file_of(100);
        let (d1, d2) = (digest(1), digest(2));
        drop(m.map(&d1, f.as_file()));
        let held = m.map(&d2, f.as_file()).unwrap();
        m.expire(
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(30),
        );
        assert_eq!(m.kept_bytes(), 0);
        assert!(!m.is_open(&d1), "idle and unread: closed");
        assert!(m.is_open(&d2), "a reader still holds it");
        drop(held);
        assert!(!m.is_open(&d2));
        m.expire(Instant::now(), Duration::from_secs(30));
        assert!(m.get(&d2).is_none());
    }
}
