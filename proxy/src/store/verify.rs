//! `sluice verify`: the deep check of the store (SPEC §6). Every file under
//! `blobs/sha256/` is re-hashed; one whose sha256 is not its name (bit rot, a disk error,
//! someone editing the cache by hand) is moved to `data_dir/quarantine/` for inspection and
//! its index records are dropped, so the next request fetches a good copy from upstream.
//!
//! Run it while sluice is stopped: it opens the store (and its index lock) itself.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::store::Store;

/// What a verification run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Files re-hashed.
    pub checked: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Files whose content did not match their name, and where they went.
    pub quarantined: Vec<Quarantined>,
}

/// One file moved to quarantine.
#[derive(Debug)]
pub struct Quarantined {
    /// The digest its name claimed.
    pub expected: Digest,
    /// The sha256 of its content (`None` if it could not be read).
    pub actual: Option<String>,
    /// Its path under `quarantine/`.
    pub path: PathBuf,
}

impl Report {
    /// True when nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.quarantined.is_empty()
    }

    /// The lines `sluice verify` prints: one per quarantined file, then a summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for q in &self.quarantined {
            s.push_str(&format!(
                "quarantined {}: content has sha256 {}; moved to {}\n",
                q.expected,
                q.actual.as_deref().unwrap_or("<unreadable>"),
                q.path.display()
            ));
        }
        s.push_str(&format!(
            "verified {} files ({} bytes): {} ok, {} quarantined\n",
            self.checked,
            self.bytes,
            self.checked - self.quarantined.len() as u64,
            self.quarantined.len()
        ));
        s
    }
}

/// Re-hashes the store under `data_dir`, quarantining every file whose content does not
/// match its name. Blocking; reads each file once with a 1 MiB buffer.
pub fn verify(data_dir: &Path) -> anyhow::Result<Report> {
    // Opening the store also empties tmp/ and reconciles index and files.
    let store = Store::open(data_dir)?;
    let blobs = data_dir.join("blobs").join("sha256");
    // Files opening the store found corrupt (a size that is not theirs) are already
    // quarantined.
    let mut report = Report::default();
    for q in store.take_quarantined_at_open() {
        report.checked += 1;
        report.quarantined.push(q);
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut shards: Vec<PathBuf> = fs::read_dir(&blobs)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    shards.sort();
    for shard in shards {
        let mut files: Vec<PathBuf> = fs::read_dir(&shard)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        files.sort();
        for path in files {
            let Some(expected) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
            else {
                // Store::open removed strays; anything left appeared since.
                continue;
            };
            let actual = hash_file(&path, &mut buf);
            report.checked += 1;
            if let Ok((_, n)) = &actual {
                report.bytes += n;
            }
            let actual = actual.ok().map(|(h, _)| h);
            if actual.as_deref() == Some(expected.hex().as_str()) {
                continue;
            }
            let dest = quarantine(data_dir, &path, &expected)?;
            // The file is gone from blobs/: this drops its index records and cached copy.
            store.remove(&expected)?;
            tracing::warn!(expected = %expected, actual = ?actual, to = %dest.display(),
                "stored file does not match its digest; quarantined");
            report.quarantined.push(Quarantined {
                expected,
                actual,
                path: dest,
            });
        }
    }
    store.index().flush()?;
    Ok(report)
}

/// Moves the stored file at `path`, which does not match `expected`, to
/// `data_dir/quarantine/`, durably (both directories are fsynced: the move must not be
/// undone by a power loss once its index records are dropped). Returns where it went.
pub(crate) fn quarantine(
    data_dir: &Path,
    path: &Path,
    expected: &Digest,
) -> std::io::Result<PathBuf> {
    let dir = data_dir.join("quarantine");
    fs::create_dir_all(&dir)?;
    let dest = free_name(&dir, &expected.hex());
    fs::rename(path, &dest)?;
    File::open(&dir)?.sync_all()?;
    if let Some(from) = path.parent() {
        File::open(from)?.sync_all()?;
    }
    Ok(dest)
}

/// The sha256 (hex) and length of the file at `path`, read with `buf`.
pub(crate) fn hash_file(path: &Path, buf: &mut [u8]) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    loop {
        let k = f.read(buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// `dir/<hex>`, or `dir/<hex>.<n>` if an earlier run quarantined the same name.
fn free_name(dir: &Path, hex: &str) -> PathBuf {
    let first = dir.join(hex);
    if !first.exists() {
        return first;
    }
    (1u32..)
        .map(|i| dir.join(format!("{hex}.{i}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(data: &Path, content: &[u8]) -> Digest {
        let store = Store::open(data).expect("open");
        let d = store
            .put_bytes(&bytes::Bytes::copy_from_slice(content))
            .expect("put");
        store.index().flush().expect("flush");
        d
    }

    #[test]
    fn a_corrupted_file_is_quarantined_and_a_second_run_is_clean() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = put(dir.path(), b"good content");
        let bad = put(dir.path(), b"soon to be corrupted");
        let bad_path = dir
            .path()
            .join("blobs/sha256")
            .join(&bad.hex()[..2])
            .join(bad.hex());
        fs::write(&bad_path, b"bit rot").expect("corrupt");

        let r = verify(dir.path()).expect("verify");
        assert_eq!(r.checked, 2);
        assert_eq!(r.quarantined.len(), 1);
        assert_eq!(r.quarantined[0].expected, bad);
        assert!(!bad_path.exists());
        assert_eq!(
            fs::read(dir.path().join("quarantine").join(bad.hex())).expect("quarantined"),
            b"bit rot"
        );
        let store = Store::open(dir.path()).expect("reopen");
        assert!(!store.contains(&bad), "index entry of the bad file dropped");
        assert!(store.contains(&good));
        drop(store);

        let r = verify(dir.path()).expect("second run");
        assert!(r.is_clean());
        assert_eq!(r.checked, 1);
    }
}
