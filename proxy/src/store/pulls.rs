//! Last-pull times of OCI tags, for cleanup policies ("keep the N most recently pulled",
//! "expire what was not pulled for D days").
//!
//! A manifest-by-tag request records its time in memory, in one of a few independently
//! locked shards (no index write, no global lock on the request path); upkeep writes the
//! batch to the index's `pulls` tree with the blob access times, so the order survives a
//! restart (a crash loses at most one flush interval).

use std::collections::HashMap;

use parking_lot::Mutex;

use super::index::{Index, Tree};
use super::{unix_ms, Store};
use crate::sharded::Sharded;

/// Pull times not yet written to the index: tag key → unix milliseconds.
#[derive(Default)]
pub struct PullLog {
    shards: Sharded<Mutex<HashMap<String, u64>>>,
}

impl PullLog {
    fn shard(&self, key: &str) -> &Mutex<HashMap<String, u64>> {
        self.shards.shard(key)
    }

    /// Records a pull of `key` at `ms`.
    pub fn record(&self, key: String, ms: u64) {
        let mut m = self.shard(&key).lock();
        let t = m.entry(key).or_insert(ms);
        *t = (*t).max(ms);
    }

    /// The pending pull time of `key`, if any.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.shard(key).lock().get(key).copied()
    }

    /// Forgets `key` (its tag was removed).
    pub fn forget(&self, key: &str) {
        self.shard(key).lock().remove(key);
    }

    /// Takes every pending entry.
    fn take(&self) -> Vec<(String, u64)> {
        self.shards
            .iter()
            .flat_map(|s| std::mem::take(&mut *s.lock()))
            .collect()
    }

    /// A copy of every pending entry.
    fn snapshot(&self) -> Vec<(String, u64)> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The index key of an OCI tag: `upstream/repo:tag` (as the `tags` tree keys it).
pub fn tag_key(upstream: &str, repo: &str, tag: &str) -> String {
    let mut k = String::with_capacity(upstream.len() + repo.len() + tag.len() + 2);
    k.push_str(upstream);
    k.push('/');
    k.push_str(repo);
    k.push(':');
    k.push_str(tag);
    k
}

fn decode(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

impl Store {
    /// Records that the tag with index key `key` ([`tag_key`]) was pulled now (a manifest
    /// requested by tag). Cheap: one shard lock, no index write.
    pub fn tag_pulled(&self, key: String) {
        self.pulls.record(key, unix_ms());
    }

    /// Writes pending pull times to the index (not flushed to disk: the caller does).
    pub(super) fn write_pulls(&self) -> anyhow::Result<()> {
        for (k, t) in self.pulls.take() {
            let stored = self.index.get(Tree::Pulls, k.as_bytes())?;
            if stored.as_deref().and_then(decode).is_none_or(|s| s < t) {
                self.index
                    .put(Tree::Pulls, k.as_bytes(), &t.to_be_bytes())?;
            }
        }
        Ok(())
    }

    /// Last pull of every tag that has one, pending times merged in.
    pub fn last_pulls(&self) -> anyhow::Result<HashMap<String, u64>> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for (k, v) in self.index.scan(Tree::Pulls)? {
            if let (Ok(k), Some(t)) = (String::from_utf8(k), decode(&v)) {
                out.insert(k, t);
            }
        }
        for (k, t) in self.pulls.snapshot() {
            let e = out.entry(k).or_insert(t);
            *e = (*e).max(t);
        }
        Ok(out)
    }

    /// The pending (not yet flushed) pull time of a tag key.
    pub fn pending_pull_of(&self, key: &str) -> Option<u64> {
        self.pulls.get(key)
    }

    /// Forgets the pull record of a removed tag.
    pub(super) fn forget_pull(&self, key: &str) -> anyhow::Result<()> {
        self.pulls.forget(key);
        self.index.remove(Tree::Pulls, key.as_bytes())
    }
}

/// Drops pull records of tags the index no longer has.
pub(super) fn gc_pulls(index: &dyn Index) -> anyhow::Result<u64> {
    let mut dropped = 0;
    for (k, _) in index.scan(Tree::Pulls)? {
        if index.get(Tree::Tags, &k)?.is_none() {
            index.remove(Tree::Pulls, &k)?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_are_batched_then_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.pulls.record(tag_key("up", "a/b", "1"), 100);
            s.pulls.record(tag_key("up", "a/b", "1"), 50);
            s.pulls.record(tag_key("up", "a/b", "2"), 200);
            assert!(s.index.scan(Tree::Pulls).unwrap().is_empty());
            assert_eq!(s.last_pulls().unwrap()["up/a/b:1"], 100);
            s.flush_access().unwrap();
            assert_eq!(s.pending_pull_of("up/a/b:1"), None);
            // An older time never overwrites a newer one.
            s.pulls.record(tag_key("up", "a/b", "2"), 150);
            s.flush_access().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let p = s.last_pulls().unwrap();
        assert_eq!((p["up/a/b:1"], p["up/a/b:2"]), (100, 200));
        // No tag records: both are garbage.
        assert_eq!(gc_pulls(&**s.index()).unwrap(), 2);
    }
}
