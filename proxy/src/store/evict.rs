//! Eviction and garbage collection, online while serving.
//!
//! - **Size**: when the store holds more than `high_watermark × max_size`, the least
//!   recently served files are removed until it holds at most `low_watermark × max_size`.
//! - **Idle expiry**: files not served for `idle_expiry` are removed.
//! - **Cleanup policies** ([`super::cleanup`]) run first in a full collection.
//! - **Index GC**: tag, document, alias and pull records whose content is gone are dropped (the
//!   next request refetches it); per-file records (PyPI origins) are kept, they are what
//!   lets a file be fetched again.
//!
//! Safety while serving: a file is never rewritten, so a reader that opened it keeps a
//! valid copy after it is unlinked (memory maps and shared in-memory bytes); fills in
//! progress live in `tmp/` and are not in the index until committed; and nothing stored
//! or served within `eviction_grace` is removed, so a request that has looked a file up
//! but not opened it yet does not lose it. Pinned content is never removed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sluice_config::StorageConfig;

use super::index::{MetaRecord, TagRecord, Tree};
use super::{unix_secs, Store};
use crate::digest::Digest;

/// The smallest `eviction_grace` honoured.
const MIN_GRACE: Duration = Duration::from_secs(1);

/// How often the "over `max_size`" warning repeats while the store stays over.
const OVER_LIMIT_WARN_EVERY: u64 = 600;

/// Unix seconds of the last "over `max_size`" warning; 0 while the store is not over (the
/// next time it is, the warning comes at once).
static OVER_LIMIT_WARNED: AtomicU64 = AtomicU64::new(0);

/// Whether to warn now that the store is (`over`) or is not over `max_size`: once when it
/// becomes over, then at most every [`OVER_LIMIT_WARN_EVERY`] seconds while it stays over.
fn over_limit_warning(warned: &AtomicU64, over: bool, now: u64) -> bool {
    if !over {
        warned.store(0, Ordering::Relaxed);
        return false;
    }
    let last = warned.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < OVER_LIMIT_WARN_EVERY {
        return false;
    }
    warned.store(now.max(1), Ordering::Relaxed);
    true
}

/// The limits eviction enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes; `None`: no size limit.
    pub max_size: Option<u64>,
    /// Fraction of `max_size` that starts an eviction.
    pub high: f64,
    /// Fraction of `max_size` an eviction brings the store down to.
    pub low: f64,
    /// Remove what was not served for this long.
    pub idle_expiry: Option<Duration>,
    /// Never remove what was stored or served this recently.
    pub grace: Duration,
}

impl Limits {
    /// From `[storage]`, checking the watermarks.
    pub fn from_config(c: &StorageConfig) -> anyhow::Result<Limits> {
        let (high, low) = (c.high_watermark, c.low_watermark);
        if !(low > 0.0 && low <= high && high <= 1.0) {
            anyhow::bail!(
                "[storage]: watermarks must satisfy 0 < low_watermark <= high_watermark <= 1 \
                 (got low_watermark = {low}, high_watermark = {high})"
            );
        }
        Ok(Limits {
            max_size: c.max_size.map(|b| b.0),
            high,
            low,
            idle_expiry: c.idle_expiry.map(|d| d.get()),
            // A request looks a file up, then opens it: a zero grace would let a file be
            // removed in between (seen in the soak as "stored blob vanished").
            grace: c.eviction_grace.get().max(MIN_GRACE),
        })
    }

    /// `high_watermark × max_size` in bytes.
    pub fn high_bytes(&self) -> Option<u64> {
        self.max_size.map(|m| (m as f64 * self.high) as u64)
    }

    fn low_bytes(&self) -> Option<u64> {
        self.max_size.map(|m| (m as f64 * self.low) as u64)
    }

    /// Whether a store of `total` bytes is above the high watermark.
    pub fn over_high(&self, total: u64) -> bool {
        self.high_bytes().is_some_and(|h| total > h)
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Files removed because the store was over its size limit.
    pub evicted_lru: u64,
    /// Files removed because they were not served for `idle_expiry`.
    pub evicted_idle: u64,
    /// Bytes those files held.
    pub freed_bytes: u64,
    /// Candidates kept because they were pinned.
    pub kept_pinned: u64,
    /// Index records dropped because their content is gone.
    pub index_records_dropped: u64,
    /// Tags and versions enforced cleanup policies removed.
    pub cleanup_removed: u64,
    /// Bytes their files held.
    pub cleanup_freed_bytes: u64,
    /// Stored bytes after the run.
    pub stored_bytes: u64,
    /// Bytes of stored files the pins protect.
    pub pinned_bytes: u64,
    /// The store is still over `max_size` after the run: nothing more could be removed
    /// (pinned, or stored or served within `eviction_grace`).
    pub over_limit: bool,
    /// What each cleanup policy did in this run (empty without policies or in a run that
    /// does not evaluate them).
    pub cleanup: Vec<super::cleanup::PolicyReport>,
}

/// Why a file was removed (the `reason` label of `sluice_evictions_total`).
#[derive(Clone, Copy)]
enum Reason {
    Lru,
    Idle,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Lru => "lru",
            Reason::Idle => "idle",
        }
    }
}

/// One full collection as the background task, `POST /-/api/gc` and `sluice gc` run it:
/// with `gc_index` (a full run), first the cleanup policies; then computes what the pins
/// protect, evicts (idle expiry, size limit) and, with `gc_index`, drops index records of
/// content that is gone. Blocking.
pub fn collect(
    store: &Store,
    cfg: &StorageConfig,
    limits: &Limits,
    gc_index: bool,
) -> anyhow::Result<Report> {
    let mut cleaned = (0, 0);
    let mut policies = Vec::new();
    if gc_index && !cfg.cleanup.is_empty() {
        policies = super::cleanup::run(store, &cfg.cleanup, &cfg.pins, limits.grace)?;
        for r in &policies {
            if r.mode == "enforce" {
                cleaned.0 += r.items as u64;
                cleaned.1 += r.bytes;
            }
        }
    }
    let protected = store.protected(&cfg.pins)?;
    let mut report = store.evict(limits, &protected, gc_index)?;
    (report.cleanup_removed, report.cleanup_freed_bytes) = cleaned;
    report.cleanup = policies;
    Ok(report)
}

/// Opens the store of `cfg` (sluice must not be running on it: the index is locked) and
/// runs one full collection. With no server running there is no reader between a lookup
/// and an open, so the configured `eviction_grace` applies as written (even `0s`).
pub fn collect_offline(cfg: &StorageConfig) -> anyhow::Result<Report> {
    let mut limits = Limits::from_config(cfg)?;
    limits.grace = cfg.eviction_grace.get();
    let store = Store::open(&cfg.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n(is sluice running on {}? Stop it, or ask it to collect with POST /-/api/gc)",
            cfg.data_dir.display()
        )
    })?;
    collect(&store, cfg, &limits, true)
}

/// Counts removals outside eviction (`purge` from the admin API).
pub fn count_removal(reason: &'static str, bytes: u64) {
    metrics::counter!("sluice_evictions_total", "reason" => reason).increment(1);
    metrics::counter!("sluice_evicted_bytes_total", "reason" => reason).increment(bytes);
}

impl Store {
    /// One eviction run: idle expiry, then the size limit; with `gc_index`, also drops
    /// index records whose content is gone. `protected` is never removed. Blocking; runs
    /// are serialised.
    pub fn evict(
        &self,
        limits: &Limits,
        protected: &HashSet<Digest>,
        gc_index: bool,
    ) -> anyhow::Result<Report> {
        let _run = self.evicting.lock();
        // Access times in the index must be current for LRU order.
        self.flush_access()?;
        let now = unix_secs();
        let grace = limits.grace.as_secs();
        let mut report = Report::default();
        let mut candidates = Vec::new();
        for (d, rec) in self.records()? {
            if protected.contains(&d) {
                report.pinned_bytes += rec.size;
            }
            // Whole seconds: `<=` keeps a file for at least `grace` full seconds.
            if grace > 0 && now.saturating_sub(rec.last_access.max(rec.created)) <= grace {
                continue;
            }
            if protected.contains(&d) {
                report.kept_pinned += 1;
                continue;
            }
            candidates.push((d, rec));
        }
        // Oldest access first; ties broken by age, then digest (a stable order).
        candidates.sort_by_key(|(d, r)| (r.last_access, r.created, *d));

        let remove = |d: &Digest, reason: Reason, report: &mut Report| -> anyhow::Result<()> {
            // Served since the scan: keep it.
            if self
                .pending_access_of(d)
                .is_some_and(|t| now.saturating_sub(t) <= grace.max(1))
            {
                return Ok(());
            }
            if let Some(n) = self.remove(d)? {
                metrics::counter!("sluice_evictions_total", "reason" => reason.label())
                    .increment(1);
                metrics::counter!("sluice_evicted_bytes_total", "reason" => reason.label())
                    .increment(n);
                report.freed_bytes += n;
                match reason {
                    Reason::Lru => report.evicted_lru += 1,
                    Reason::Idle => report.evicted_idle += 1,
                }
            }
            Ok(())
        };

        let mut rest = Vec::with_capacity(candidates.len());
        for (d, rec) in candidates {
            let idle = limits
                .idle_expiry
                .is_some_and(|e| now.saturating_sub(rec.last_access) >= e.as_secs());
            if idle {
                remove(&d, Reason::Idle, &mut report)?;
            } else {
                rest.push(d);
            }
        }
        if limits.over_high(self.total_bytes()) {
            let low = limits.low_bytes().unwrap_or(u64::MAX);
            for d in rest {
                if self.total_bytes() <= low {
                    break;
                }
                remove(&d, Reason::Lru, &mut report)?;
            }
        }
        if gc_index {
            report.index_records_dropped = self.gc_index()?;
        }
        self.index.flush()?;
        report.stored_bytes = self.total_bytes();
        report.over_limit = limits.max_size.is_some_and(|m| report.stored_bytes > m);
        metrics::gauge!("sluice_storage_over_limit").set(f64::from(u8::from(report.over_limit)));
        metrics::gauge!("sluice_storage_pinned_bytes").set(report.pinned_bytes as f64);
        if over_limit_warning(&OVER_LIMIT_WARNED, report.over_limit, now) {
            tracing::warn!(
                stored_bytes = report.stored_bytes,
                max_size = limits.max_size.unwrap_or(0),
                pinned_bytes = report.pinned_bytes,
                pinned_over_max_size = limits.max_size.is_some_and(|m| report.pinned_bytes > m),
                "store is over max_size and nothing more can be evicted (pinned, or in use \
                 within eviction_grace): unpin something or raise max_size"
            );
        }
        if report.evicted_lru + report.evicted_idle > 0 {
            tracing::info!(
                evicted_lru = report.evicted_lru,
                evicted_idle = report.evicted_idle,
                freed_bytes = report.freed_bytes,
                stored_bytes = report.stored_bytes,
                "eviction"
            );
        }
        Ok(report)
    }

    /// Drops tag, document, manifest, alias and repository-link records whose content is
    /// not stored.
    fn gc_index(&self) -> anyhow::Result<u64> {
        let mut dropped = 0;
        let mut drop_if = |tree: Tree, k: &[u8], d: Option<Digest>| -> anyhow::Result<()> {
            if let Some(d) = d {
                if !self.contains(&d) {
                    self.index.remove(tree, k)?;
                    dropped += 1;
                }
            }
            Ok(())
        };
        for (k, v) in self.index.scan(Tree::Tags)? {
            let d = serde_json::from_slice::<TagRecord>(&v)
                .ok()
                .map(|r| r.digest);
            drop_if(Tree::Tags, &k, d)?;
        }
        for (k, v) in self.index.scan(Tree::Meta)? {
            let d = serde_json::from_slice::<MetaRecord>(&v)
                .ok()
                .map(|r| r.digest);
            drop_if(Tree::Meta, &k, d)?;
        }
        for (k, v) in self.index.scan(Tree::Aliases)? {
            drop_if(Tree::Aliases, &k, Digest::from_bytes(&v))?;
        }
        for (k, _) in self.index.scan(Tree::Manifests)? {
            drop_if(Tree::Manifests, &k, Digest::from_bytes(&k))?;
        }
        // Repository links: `upstream/repository@digest`.
        for (k, _) in self.index.scan(Tree::Links)? {
            let d = std::str::from_utf8(&k)
                .ok()
                .and_then(|k| k.rsplit_once('@'))
                .and_then(|(_, d)| d.parse().ok());
            drop_if(Tree::Links, &k, d)?;
        }
        Ok(dropped + super::pulls::gc_pulls(&*self.index)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn limits(max: u64) -> Limits {
        Limits {
            max_size: Some(max),
            high: 0.9,
            low: 0.5,
            idle_expiry: None,
            grace: Duration::ZERO,
        }
    }

    fn age(s: &Store, d: &Digest, secs_ago: u64) {
        let mut rec: super::super::index::BlobRecord = s
            .index
            .get(Tree::Blobs, d.as_bytes())
            .unwrap()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap();
        rec.last_access = unix_secs() - secs_ago;
        rec.created = rec.last_access;
        s.index
            .put(
                Tree::Blobs,
                d.as_bytes(),
                &serde_json::to_vec(&rec).unwrap(),
            )
            .unwrap();
    }

    #[test]
    fn lru_eviction_removes_oldest_down_to_low_watermark_and_keeps_protected() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ds: Vec<Digest> = (0..10u8)
            .map(|i| s.put_bytes(&Bytes::from(vec![i; 100])).unwrap())
            .collect();
        for (i, d) in ds.iter().enumerate() {
            age(&s, d, 1000 - i as u64 * 10);
        }
        assert_eq!(s.total_bytes(), 1000);
        let protected: HashSet<Digest> = [ds[0]].into();
        let r = s.evict(&limits(1000), &protected, false).unwrap();
        // 1000 > 900: down to <= 500, oldest first, the pinned oldest kept.
        assert_eq!(r.evicted_lru, 5);
        assert_eq!(r.freed_bytes, 500);
        assert_eq!(s.total_bytes(), 500);
        assert!(s.contains(&ds[0]));
        for d in &ds[1..6] {
            assert!(!s.contains(d) && s.read(d).is_none());
        }
        for d in &ds[6..] {
            assert!(s.contains(d));
        }
        // Under the high watermark: nothing more.
        let r = s.evict(&limits(1000), &protected, false).unwrap();
        assert_eq!(r.evicted_lru, 0);
    }

    #[test]
    fn pinned_content_over_max_size_is_reported_and_warned_once_per_state_change() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ds: Vec<Digest> = (0..4u8)
            .map(|i| s.put_bytes(&Bytes::from(vec![i; 100])).unwrap())
            .collect();
        for d in &ds {
            age(&s, d, 1000);
        }
        // 300 pinned bytes against a 250-byte limit: the unpinned file goes, still over.
        let protected: HashSet<Digest> = ds[..3].iter().copied().collect();
        let r = s.evict(&limits(250), &protected, false).unwrap();
        assert_eq!((r.evicted_lru, r.kept_pinned), (1, 3));
        assert_eq!((r.pinned_bytes, r.stored_bytes), (300, 300));
        assert!(r.over_limit);
        // Under the limit once a pin is dropped.
        let r = s.evict(&limits(250), &[ds[0]].into(), false).unwrap();
        assert_eq!((r.pinned_bytes, r.stored_bytes), (100, 100));
        assert!(!r.over_limit);

        let w = AtomicU64::new(0);
        assert!(over_limit_warning(&w, true, 1_000));
        assert!(!over_limit_warning(&w, true, 1_001));
        assert!(!over_limit_warning(
            &w,
            true,
            1_000 + OVER_LIMIT_WARN_EVERY - 1
        ));
        assert!(over_limit_warning(&w, true, 1_000 + OVER_LIMIT_WARN_EVERY));
        assert!(!over_limit_warning(&w, false, 1_700));
        assert!(
            over_limit_warning(&w, true, 1_701),
            "over again: warned at once"
        );
    }

    #[test]
    fn grace_and_recent_access_protect_and_idle_expiry_removes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let old = s.put_bytes(&Bytes::from_static(b"old")).unwrap();
        let fresh = s.put_bytes(&Bytes::from_static(b"fresh")).unwrap();
        let served = s.put_bytes(&Bytes::from_static(b"served")).unwrap();
        age(&s, &old, 3600);
        age(&s, &served, 3600);
        s.touch(&served);
        let l = Limits {
            max_size: None,
            idle_expiry: Some(Duration::from_secs(600)),
            grace: Duration::from_secs(10),
            ..limits(0)
        };
        let r = s.evict(&l, &HashSet::new(), false).unwrap();
        assert_eq!(r.evicted_idle, 1);
        assert!(!s.contains(&old));
        assert!(s.contains(&fresh) && s.contains(&served));
        assert_eq!(s.total_bytes(), 11);
    }

    #[test]
    fn a_mapped_reader_keeps_its_bytes_after_eviction_and_reopen_accounting_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let big = Bytes::from(vec![9u8; 400 * 1024]);
        let s = Store::open(dir.path()).unwrap();
        let d = s.put_bytes(&big).unwrap();
        let keep = s.put_bytes(&Bytes::from_static(b"keep")).unwrap();
        age(&s, &d, 100);
        age(&s, &keep, 10);
        let held = s.read(&d).unwrap();
        // read() counted as an access; make it old again for the test.
        s.flush_access().unwrap();
        age(&s, &d, 100);
        let r = s.evict(&limits(1000), &HashSet::new(), false).unwrap();
        assert_eq!(r.evicted_lru, 1);
        assert_eq!(held, big);
        assert_eq!(s.total_bytes(), 4);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.total_bytes(), 4);
        assert!(s.contains(&keep) && !s.contains(&d));
    }

    #[test]
    fn index_gc_drops_records_of_missing_content() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let d = s.put_bytes(&Bytes::from_static(b"manifest")).unwrap();
        let rec = TagRecord {
            digest: d,
            fetched_at_ms: 0,
        };
        s.index
            .put(Tree::Tags, b"up/repo:1", &serde_json::to_vec(&rec).unwrap())
            .unwrap();
        s.index
            .put(Tree::Aliases, b"sha512:x", d.as_bytes())
            .unwrap();
        s.index
            .put(Tree::Links, format!("up/team/app@{d}").as_bytes(), b"")
            .unwrap();
        assert_eq!(s.gc_index().unwrap(), 0);
        s.remove(&d).unwrap();
        assert_eq!(s.gc_index().unwrap(), 3);
        assert!(s.index.scan(Tree::Tags).unwrap().is_empty());
        assert!(s.index.scan(Tree::Links).unwrap().is_empty());
    }
}
