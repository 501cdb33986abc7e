//! The index: small records about stored content, behind the [`Index`] trait so sled can
//! be replaced (redb is the maintained alternative).
//!
//! Trees: `blobs` (digest → [`BlobRecord`]), `manifests` (digest → [`ManifestRecord`]),
//! `tags` (upstream/repo:tag → [`TagRecord`]), `meta` (other documents → [`MetaRecord`]),
//! `aliases`, `files` (per-format file records), `pins` (pins added at run time) and
//! `pulls` (upstream/repo:tag → unix milliseconds of its last pull, for cleanup policies).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::digest::Digest;

/// A tree of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Tree {
    /// Every stored file.
    Blobs,
    /// Media types of stored manifests.
    Manifests,
    /// Tag → manifest digest.
    Tags,
    /// Other cached documents (tag lists, packuments, simple pages).
    Meta,
    /// `sha512:<hex>` / `sha1:<hex>` → sha256 of a verified file.
    Aliases,
    /// Per-format file records (PyPI file → origin URL, project, version).
    Files,
    /// Pins added through the admin API (`format/name/tag` → empty).
    Pins,
    /// Tag → last pull, unix milliseconds as 8 big-endian bytes (flushed in batches).
    Pulls,
    /// `upstream/repository@digest` → empty: the upstream has shown that this repository
    /// holds this manifest or blob (OCI content is served only under such a repository).
    Links,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Blobs => "blobs",
            Tree::Manifests => "manifests",
            Tree::Tags => "tags",
            Tree::Meta => "meta",
            Tree::Aliases => "aliases",
            Tree::Files => "files",
            Tree::Pins => "pins",
            Tree::Pulls => "pulls",
            Tree::Links => "links",
        }
    }
}

/// Key-value storage for index records.
pub trait Index: Send + Sync {
    /// Reads a value.
    fn get(&self, tree: Tree, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>>;
    /// Writes a value.
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> anyhow::Result<()>;
    /// Removes a value.
    fn remove(&self, tree: Tree, key: &[u8]) -> anyhow::Result<()>;
    /// All entries of a tree.
    fn scan(&self, tree: Tree) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Makes every write so far durable.
    fn flush(&self) -> anyhow::Result<()>;
    /// Counts the writes and removals in `tree` since the index was opened, bumped after
    /// each one: a copy of a record kept in memory is current while this is unchanged
    /// since before the record was read.
    fn generation(&self, tree: Tree) -> u64;
}

/// A stored file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRecord {
    /// Bytes.
    pub size: u64,
    /// Unix seconds when it was stored.
    pub created: u64,
    /// Unix seconds of the last serve (flushed in batches).
    pub last_access: u64,
}

/// A stored manifest's media type.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestRecord {
    /// `Content-Type` to serve it with.
    pub media_type: String,
    /// Bytes.
    pub size: u64,
}

/// A tag's current manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagRecord {
    /// Manifest digest.
    pub digest: Digest,
    /// Unix milliseconds of the last fetch or successful revalidation.
    pub fetched_at_ms: u64,
}

/// Another cached document, stored by digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MetaRecord {
    /// Where the bytes are.
    pub digest: Digest,
    /// `Content-Type`.
    pub content_type: String,
    /// Unix milliseconds of the last fetch or successful revalidation.
    pub fetched_at_ms: u64,
    /// The upstream's `ETag`, for conditional revalidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The upstream's `Last-Modified`, for conditional revalidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// A paginated list's next page (`n=..&last=..`), from the upstream's `Link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
}

/// Typed access on top of any [`Index`].
pub trait IndexExt {
    /// Reads and decodes a record; an undecodable record reads as absent.
    fn get_rec<T: DeserializeOwned>(&self, tree: Tree, key: &[u8]) -> anyhow::Result<Option<T>>;
    /// Encodes and writes a record.
    fn put_rec<T: Serialize>(&self, tree: Tree, key: &[u8], rec: &T) -> anyhow::Result<()>;
}

impl<I: Index + ?Sized> IndexExt for I {
    fn get_rec<T: DeserializeOwned>(&self, tree: Tree, key: &[u8]) -> anyhow::Result<Option<T>> {
        Ok(self
            .get(tree, key)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }
    fn put_rec<T: Serialize>(&self, tree: Tree, key: &[u8], rec: &T) -> anyhow::Result<()> {
        self.put(tree, key, &serde_json::to_vec(rec)?)
    }
}

/// The sled implementation.
pub struct SledIndex {
    db: sled::Db,
    /// Opened once: `open_tree` is a lookup of its own.
    trees: [sled::Tree; 9],
    /// Per tree: see [`Index::generation`].
    generations: [AtomicU64; 9],
}

/// How long opening the index waits for another holder of its lock to let go: a sluice
/// restarted while the previous one is still exiting, or (in one process) sled's I/O
/// thread finishing a write of an index just closed.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(5);

impl SledIndex {
    /// Opens (or creates) the index in `dir`, waiting up to [`LOCK_WAIT`] if it is locked.
    pub fn open(dir: &Path) -> anyhow::Result<SledIndex> {
        Self::open_waiting(dir, LOCK_WAIT)
    }

    pub(crate) fn open_waiting(dir: &Path, wait: Duration) -> anyhow::Result<SledIndex> {
        let started = Instant::now();
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .flush_every_ms(Some(500))
                .open()
            {
                Ok(db) => break db,
                Err(e) if lock_busy(&e) && started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if lock_busy(&e) => anyhow::bail!(
                    "cannot open index at {}: still locked after {:?}; is another sluice \
                     using this data dir? ({e})",
                    dir.display(),
                    wait
                ),
                Err(e) => anyhow::bail!("cannot open index at {}: {e}", dir.display()),
            }
        };
        let trees = [
            Tree::Blobs,
            Tree::Manifests,
            Tree::Tags,
            Tree::Meta,
            Tree::Aliases,
            Tree::Files,
            Tree::Pins,
            Tree::Pulls,
            Tree::Links,
        ]
        .map(|t| db.open_tree(t.name()));
        let [a, b, c, d, e, f, g, h, i] = trees;
        Ok(SledIndex {
            trees: [a?, b?, c?, d?, e?, f?, g?, h?, i?],
            generations: Default::default(),
            db,
        })
    }

    fn tree(&self, t: Tree) -> anyhow::Result<&sled::Tree> {
        Ok(&self.trees[t as usize])
    }
}

/// Whether opening failed because another holder has the index's lock (sled reports it
/// as an I/O error of kind `Other` with this text).
fn lock_busy(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock"))
}

impl Index for SledIndex {
    fn get(&self, tree: Tree, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.tree(tree)?.insert(key, value)?;
        self.generations[tree as usize].fetch_add(1, Ordering::Release);
        Ok(())
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> anyhow::Result<()> {
        self.tree(tree)?.remove(key)?;
        self.generations[tree as usize].fetch_add(1, Ordering::Release);
        Ok(())
    }
    fn scan(&self, tree: Tree) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree(tree)?
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
            .collect()
    }
    fn flush(&self) -> anyhow::Result<()> {
        self.db.flush()?;
        Ok(())
    }
    fn generation(&self, tree: Tree) -> u64 {
        self.generations[tree as usize].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_waits_for_a_lock_that_is_let_go_and_says_why_when_it_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let first = SledIndex::open(&path).unwrap();
        first.put(Tree::Meta, b"k", b"v").unwrap();
        first.flush().unwrap();

        // Still held after the wait: a clear error, no index.
        let err = SledIndex::open_waiting(&path, Duration::from_millis(200))
            .err()
            .expect("a locked index must not open twice");
        assert!(
            err.to_string().contains("another sluice"),
            "unclear error: {err}"
        );

        // Let go while a second open waits: it opens and sees the data.
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        let started = Instant::now();
        let second = SledIndex::open_waiting(&path, Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(
            second.get(Tree::Meta, b"k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
        holder.join().unwrap();
    }
}
