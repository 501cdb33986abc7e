//! What the dependency firewall refused lately, for security teams: `GET /-/api/blocks`,
//! `sluice blocks` and the dashboard's "Policy refusals".
//!
//! One entry per format, upstream, name, version, rule and outcome, counting how often a
//! request met it and when first and last: a CI job retrying a blocked package is one line
//! with a count, not a flood. The outcome is `block` (the request was refused) or `audit`
//! (a rule in audit mode would have refused it, and no waiver covers it; it was served).
//! Recorded by [`crate::policy::Policy`]'s checks of requests, never for the versions
//! dropped from a rendered packument, simple page or tag list.
//!
//! At most [`MAX_KEPT`] entries, most recently seen first. When full, a new entry replaces
//! the one seen longest ago among those seen once, else the one seen longest ago: a stream
//! of made-up names that a rule refuses replaces itself, not the entries seen again and
//! again. Each entry is its own record in the index's `meta` tree, written when it changed
//! (with the usage figures, every [`crate::stats::PERSIST_EVERY`], and at shutdown), so a
//! restart keeps them and a steady stream of refusals writes only the entries it touches.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::store::index::{Index, IndexExt, Tree};
use crate::store::unix_secs;

/// Most entries kept.
pub const MAX_KEPT: usize = 1000;

tokio::task_local! {
    /// The id (`X-Request-Id`) of the request being answered, set by the server around its
    /// routing: an entry names its last request, to find in the access log (client, path).
    pub static REQUEST_ID: crate::server::RequestId;
}

/// `meta` key prefix of the persisted entries (`<prefix><sha256 of the entry's key>`).
const PREFIX: &str = "refusals/e/";

/// `meta` key of when recording began.
const KEY_SINCE: &str = "refusals/since";

/// Longest name, version or reason kept (longer ones are cut, on a character boundary).
const MAX_FIELD: usize = 512;

/// One kind of refusal and how often it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// `oci`, `npm` or `pypi`.
    pub format: String,
    /// The configured upstream.
    pub upstream: String,
    /// Package or repository.
    pub name: String,
    /// Version or tag; absent for a request for the package as a whole (an OCI blob, a
    /// packument, a simple page).
    pub version: Option<String>,
    /// Rule id (`osv` for advisories).
    pub rule: String,
    /// `block` (refused) or `audit` (would have been refused; served).
    pub outcome: String,
    /// The rule's reason, as last given.
    pub reason: String,
    /// Requests that met it.
    pub count: u64,
    /// Unix seconds of the first and the last.
    pub first_unix: u64,
    pub last_unix: u64,
    /// `X-Request-Id` of the last, when a client's request met it (the access log has its
    /// client and path).
    #[serde(default)]
    pub last_request_id: Option<String>,
}

/// What [`Refusals::record`] is told.
pub struct Seen<'a> {
    pub format: &'static str,
    pub upstream: &'a str,
    pub name: &'a str,
    pub version: Option<&'a str>,
    pub rule: &'a str,
    pub outcome: &'static str,
    pub reason: &'a str,
}

/// An entry as persisted: with its place in the order of last sightings.
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    seq: u64,
    #[serde(flatten)]
    entry: Refusal,
}

#[derive(Default)]
struct Inner {
    since: u64,
    /// By [`key`].
    entries: HashMap<String, Stored>,
    /// Last [`Stored::seq`] given.
    seq: u64,
    /// Keys changed or added since the last persist.
    changed: HashSet<String>,
    /// Keys with a record in the index (as far as the last persist knows).
    on_disk: HashSet<String>,
    /// Keys replaced whose record is to be removed from the index (at most those of
    /// `on_disk`, so bounded like it).
    removed: HashSet<String>,
    since_stored: bool,
}

impl Inner {
    /// The entries, most recently seen first.
    fn newest_first(&self) -> Vec<&Stored> {
        let mut v: Vec<&Stored> = self.entries.values().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.seq));
        v
    }

    /// The entry a new one replaces when the list is full.
    fn victim(&self) -> Option<String> {
        self.entries
            .iter()
            .min_by_key(|(_, e)| (e.entry.count > 1, e.seq))
            .map(|(k, _)| k.clone())
    }
}

/// The recent refusals.
pub struct Refusals {
    inner: Mutex<Inner>,
    /// One persist at a time (upkeep and shutdown may overlap).
    persisting: Mutex<()>,
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals {
            inner: Mutex::new(Inner {
                since: unix_secs(),
                ..Inner::default()
            }),
            persisting: Mutex::new(()),
        }
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn key(
    format: &str,
    upstream: &str,
    name: &str,
    version: Option<&str>,
    rule: &str,
    outcome: &str,
) -> String {
    let v = version.unwrap_or("\u{1}");
    format!("{format}\0{upstream}\0{name}\0{v}\0{rule}\0{outcome}")
}

fn key_of(e: &Refusal) -> String {
    key(
        &e.format,
        &e.upstream,
        &e.name,
        e.version.as_deref(),
        &e.rule,
        &e.outcome,
    )
}

/// The `meta` key of the entry with [`key`] `k`.
fn record_key(k: &str) -> Vec<u8> {
    let h = sha2::Sha256::digest(k.as_bytes());
    let mut out = PREFIX.as_bytes().to_vec();
    for b in h {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    out
}

impl Refusals {
    /// The entries persisted in `index` (none: empty, starting now).
    pub fn load(index: &dyn Index) -> anyhow::Result<Refusals> {
        let r = Refusals::default();
        let mut stored: Vec<Stored> = Vec::new();
        for (k, v) in index.scan(Tree::Meta)? {
            if !k.starts_with(PREFIX.as_bytes()) {
                continue;
            }
            match serde_json::from_slice::<Stored>(&v) {
                // A record under the wrong key (written by hand, say) is removed below.
                Ok(e) if record_key(&key_of(&e.entry)) == k => stored.push(e),
                _ => index.remove(Tree::Meta, &k)?,
            }
        }
        stored.sort_by_key(|e| std::cmp::Reverse(e.seq));
        let mut g = r.inner.lock();
        if let Some(since) = index.get_rec::<u64>(Tree::Meta, KEY_SINCE.as_bytes())? {
            g.since = since.min(g.since);
            g.since_stored = true;
        }
        for (i, e) in stored.into_iter().enumerate() {
            let k = key_of(&e.entry);
            if i >= MAX_KEPT {
                g.removed.insert(k);
                continue;
            }
            g.seq = g.seq.max(e.seq);
            g.on_disk.insert(k.clone());
            g.entries.insert(k, e);
        }
        drop(g);
        Ok(r)
    }

    /// Counts one refusal (or audit finding) now.
    pub fn record(&self, s: &Seen<'_>) {
        self.record_at(s, unix_secs());
    }

    fn record_at(&self, s: &Seen<'_>, now: u64) {
        let name = cut(s.name);
        let version = s.version.map(cut);
        let k = key(
            s.format,
            s.upstream,
            &name,
            version.as_deref(),
            s.rule,
            s.outcome,
        );
        let request_id = REQUEST_ID.try_with(|r| r.as_str().to_string()).ok();
        let mut g = self.inner.lock();
        g.seq += 1;
        let seq = g.seq;
        if let Some(e) = g.entries.get_mut(&k) {
            e.seq = seq;
            e.entry.count += 1;
            e.entry.last_unix = e.entry.last_unix.max(now);
            e.entry.last_request_id = request_id;
            if e.entry.reason != s.reason {
                e.entry.reason = cut(s.reason);
            }
            g.changed.insert(k);
            return;
        }
        if g.entries.len() >= MAX_KEPT {
            if let Some(v) = g.victim() {
                g.entries.remove(&v);
                g.changed.remove(&v);
                if g.on_disk.remove(&v) {
                    g.removed.insert(v);
                }
            }
        }
        let entry = Refusal {
            format: s.format.to_string(),
            upstream: s.upstream.to_string(),
            name,
            version,
            rule: s.rule.to_string(),
            outcome: s.outcome.to_string(),
            reason: cut(s.reason),
            count: 1,
            first_unix: now,
            last_unix: now,
            last_request_id: request_id,
        };
        g.removed.remove(&k);
        g.changed.insert(k.clone());
        g.entries.insert(k, Stored { seq, entry });
    }

    /// Unix seconds since when refusals are recorded, and the `limit` last seen, most
    /// recent first.
    pub fn recent(&self, limit: usize) -> (u64, Vec<Refusal>) {
        let g = self.inner.lock();
        let v = g
            .newest_first()
            .into_iter()
            .take(limit)
            .map(|e| e.entry.clone())
            .collect();
        (g.since, v)
    }

    /// Writes the entries that changed to `index`, and removes those replaced; returns
    /// whether it wrote anything. What failed to be written is tried again next time.
    pub fn persist(&self, index: &dyn Index) -> anyhow::Result<bool> {
        let _one = self.persisting.lock();
        let mut g = self.inner.lock();
        if g.changed.is_empty() && g.removed.is_empty() && g.since_stored {
            return Ok(false);
        }
        let changed = std::mem::take(&mut g.changed);
        let removed = std::mem::take(&mut g.removed);
        let writes: Vec<(String, Stored)> = changed
            .into_iter()
            .filter_map(|k| g.entries.get(&k).cloned().map(|e| (k, e)))
            .collect();
        let since = (!g.since_stored).then_some(g.since);
        g.since_stored = true;
        drop(g);
        let mut failed = None;
        if let Some(since) = since {
            if let Err(e) = index.put_rec(Tree::Meta, KEY_SINCE.as_bytes(), &since) {
                self.inner.lock().since_stored = false;
                failed = Some(e);
            }
        }
        // Removals first: a key replaced and then seen again is written after.
        for k in removed {
            if let Err(err) = index.remove(Tree::Meta, &record_key(&k)) {
                let mut g = self.inner.lock();
                if !g.entries.contains_key(&k) {
                    g.removed.insert(k);
                }
                failed = Some(err);
            }
        }
        for (k, e) in writes {
            match index.put_rec(Tree::Meta, &record_key(&k), &e) {
                Ok(()) => {
                    let mut g = self.inner.lock();
                    if g.entries.contains_key(&k) {
                        g.on_disk.insert(k);
                    } else {
                        // Replaced while it was being written.
                        g.removed.insert(k);
                    }
                }
                Err(err) => {
                    let mut g = self.inner.lock();
                    if g.entries.contains_key(&k) {
                        g.changed.insert(k);
                    }
                    failed = Some(err);
                }
            }
        }
        failed.map_or(Ok(true), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(name: &'a str, version: Option<&'a str>, outcome: &'static str) -> Seen<'a> {
        Seen {
            format: "npm",
            upstream: "npmjs",
            name,
            version,
            rule: "no-bad",
            outcome,
            reason: "compromised",
        }
    }

    #[test]
    fn repeats_are_counted_on_one_entry_and_the_newest_come_first() {
        let r = Refusals::default();
        r.record_at(&seen("event-stream", Some("3.3.6"), "block"), 100);
        r.record_at(&seen("event-stream", Some("3.3.6"), "audit"), 101);
        r.record_at(&seen("left-pad", None, "block"), 102);
        r.record_at(&seen("event-stream", Some("3.3.6"), "block"), 102);
        let (_, v) = r.recent(10);
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].name.as_str(), v[0].count), ("event-stream", 2));
        assert_eq!((v[0].first_unix, v[0].last_unix), (100, 102));
        assert_eq!(
            (v[1].name.as_str(), v[1].version.as_deref()),
            ("left-pad", None)
        );
        assert_eq!((v[2].outcome.as_str(), v[2].count), ("audit", 1));
        assert_eq!(r.recent(1).1.len(), 1);
    }

    #[test]
    fn a_full_list_drops_the_entry_seen_longest_ago() {
        let r = Refusals::default();
        for i in 0..MAX_KEPT {
            let name = format!("p{i}");
            r.record_at(&seen(&name, None, "block"), 1000 + i as u64);
        }
        // p0 is seen again: p1 is now the oldest.
        r.record_at(&seen("p0", None, "block"), 5000);
        r.record_at(&seen("new", None, "block"), 5001);
        let (_, v) = r.recent(usize::MAX);
        assert_eq!(v.len(), MAX_KEPT);
        let names: Vec<&str> = v.iter().map(|e| e.name.as_str()).collect();
        assert!(names.contains(&"p0") && names.contains(&"new"));
        assert!(!names.contains(&"p1"));
    }

    #[test]
    fn a_stream_of_new_names_replaces_itself_not_the_repeated_entries() {
        let r = Refusals::default();
        for i in 0..10 {
            let name = format!("known{i}");
            r.record_at(&seen(&name, None, "block"), 1);
            r.record_at(&seen(&name, None, "block"), 2);
        }
        for i in 0..3 * MAX_KEPT {
            let name = format!("made-up{i}");
            r.record_at(&seen(&name, None, "block"), 3);
        }
        let (_, v) = r.recent(usize::MAX);
        assert_eq!(v.len(), MAX_KEPT);
        assert_eq!(v.iter().filter(|e| e.name.starts_with("known")).count(), 10);
        assert_eq!(v[0].name, format!("made-up{}", 3 * MAX_KEPT - 1));
    }

    #[test]
    fn persisted_entries_come_back_in_order_and_replaced_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let index = crate::store::index::SledIndex::open(dir.path()).unwrap();
        let r = Refusals::default();
        for i in 0..MAX_KEPT {
            let name = format!("p{i}");
            r.record_at(&seen(&name, None, "block"), 10);
        }
        assert!(r.persist(&index).unwrap());
        assert!(!r.persist(&index).unwrap(), "nothing changed since");
        r.record_at(&seen("p0", None, "block"), 11);
        r.record_at(&seen("new", Some("1.0"), "audit"), 12);
        assert!(r.persist(&index).unwrap());
        let back = Refusals::load(&index).unwrap();
        assert_eq!(back.recent(usize::MAX), r.recent(usize::MAX));
        let (_, v) = back.recent(3);
        assert_eq!(v[0].name, "new");
        assert_eq!((v[1].name.as_str(), v[1].count), ("p0", 2));
        assert!(!back.recent(usize::MAX).1.iter().any(|e| e.name == "p1"));
        // Recording goes on after the last sighting loaded.
        back.record_at(&seen("p5", None, "block"), 13);
        assert_eq!(back.recent(1).1[0].name, "p5");
    }

    #[test]
    fn only_records_on_disk_are_ever_removed_and_a_flood_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let index = crate::store::index::SledIndex::open(dir.path()).unwrap();
        let r = Refusals::default();
        for i in 0..MAX_KEPT {
            r.record_at(&seen(&format!("old{i}"), None, "block"), 1);
        }
        r.persist(&index).unwrap();
        for i in 0..5 * MAX_KEPT {
            r.record_at(&seen(&format!("flood{i}"), None, "block"), 2);
        }
        {
            let g = r.inner.lock();
            assert_eq!(g.removed.len(), MAX_KEPT, "the on-disk ones, not the flood");
            assert!(g.changed.len() <= MAX_KEPT);
        }
        r.persist(&index).unwrap();
        let on_disk = index
            .scan(Tree::Meta)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX.as_bytes()))
            .count();
        assert_eq!(on_disk, MAX_KEPT);
        let back = Refusals::load(&index).unwrap();
        assert_eq!(back.recent(usize::MAX), r.recent(usize::MAX));
        // A record that is not what its key says is dropped at load.
        index.put(Tree::Meta, b"refusals/e/00", b"{}").unwrap();
        Refusals::load(&index).unwrap();
        assert_eq!(index.get(Tree::Meta, b"refusals/e/00").unwrap(), None);
    }

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        let r = Refusals::default();
        let long = "é".repeat(MAX_FIELD);
        r.record_at(&seen(&long, Some(&long), "block"), 1);
        let (_, v) = r.recent(1);
        assert!(v[0].name.len() <= MAX_FIELD + "…".len());
        assert!(v[0].name.ends_with('…'));
        // The same long name again is the same entry.
        r.record_at(&seen(&long, Some(&long), "block"), 2);
        assert_eq!(r.recent(5).1.len(), 1);
    }
}
