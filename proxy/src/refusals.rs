//! What the dependency firewall refused lately, for security teams: `GET /-/api/blocks`
//! and the dashboard's "Recent refusals".
//!
//! One entry per format, upstream, name, version, rule and outcome, counting how often a
//! request met it and when first and last: a CI job retrying a blocked package is one line
//! with a count, not a flood. The outcome is `block` (the request was refused) or `audit`
//! (a rule in audit mode would have refused it; it was served). Only requests for content
//! are recorded ([`crate::policy::Policy::check`]), never the versions dropped from a
//! rendered packument or simple page.
//!
//! At most [`MAX_KEPT`] entries, most recently seen first: a new one replaces the entry
//! seen longest ago. Persisted
//! in the index's `meta` tree with the usage figures (when changed, every
//! [`crate::stats::PERSIST_EVERY`] and at shutdown), so a restart keeps them.

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::store::index::{Index, IndexExt, Tree};
use crate::store::unix_secs;

/// Most entries kept.
pub const MAX_KEPT: usize = 1000;

/// `meta` key of the persisted entries.
const KEY: &str = "refusals/recent";

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
    /// Version or tag; absent for a request for the package as a whole.
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
    /// Order of the last (ties within a second); persisted as the entries' order.
    #[serde(skip)]
    seq: u64,
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

#[derive(Serialize, Deserialize)]
struct Persisted {
    since_unix: u64,
    entries: Vec<Refusal>,
}

#[derive(Default)]
struct Inner {
    since: u64,
    entries: HashMap<String, Refusal>,
    /// Last [`Refusal::seq`] given.
    seq: u64,
    dirty: bool,
}

impl Inner {
    /// The entries, most recently seen first.
    fn newest_first(&self) -> Vec<Refusal> {
        let mut v: Vec<Refusal> = self.entries.values().cloned().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.seq));
        v
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

impl Refusals {
    /// The entries persisted in `index` (none: empty, starting now).
    pub fn load(index: &dyn Index) -> anyhow::Result<Refusals> {
        let r = Refusals::default();
        if let Some(p) = index.get_rec::<Persisted>(Tree::Meta, KEY.as_bytes())? {
            let mut g = r.inner.lock();
            g.since = p.since_unix.min(g.since);
            // Persisted newest first.
            for mut e in p.entries.into_iter().take(MAX_KEPT).rev() {
                g.seq += 1;
                e.seq = g.seq;
                let k = key(
                    &e.format,
                    &e.upstream,
                    &e.name,
                    e.version.as_deref(),
                    &e.rule,
                    &e.outcome,
                );
                g.entries.insert(k, e);
            }
        }
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
        let mut g = self.inner.lock();
        g.dirty = true;
        g.seq += 1;
        let seq = g.seq;
        if let Some(e) = g.entries.get_mut(&k) {
            e.seq = seq;
            e.count += 1;
            e.last_unix = e.last_unix.max(now);
            if e.reason != s.reason {
                e.reason = cut(s.reason);
            }
            return;
        }
        if g.entries.len() >= MAX_KEPT {
            let oldest = g
                .entries
                .iter()
                .min_by_key(|(_, e)| e.seq)
                .map(|(k, _)| k.clone());
            if let Some(o) = oldest {
                g.entries.remove(&o);
            }
        }
        g.entries.insert(
            k,
            Refusal {
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
                seq,
            },
        );
    }

    /// Unix seconds since when refusals are recorded, and the `limit` last seen, most
    /// recent first.
    pub fn recent(&self, limit: usize) -> (u64, Vec<Refusal>) {
        let g = self.inner.lock();
        let mut v = g.newest_first();
        v.truncate(limit);
        (g.since, v)
    }

    /// Writes the entries to `index` when they changed; returns whether it wrote.
    pub fn persist(&self, index: &dyn Index) -> anyhow::Result<bool> {
        let _one = self.persisting.lock();
        let mut g = self.inner.lock();
        if !g.dirty {
            return Ok(false);
        }
        g.dirty = false;
        let p = Persisted {
            since_unix: g.since,
            entries: g.newest_first(),
        };
        drop(g);
        if let Err(e) = index.put_rec(Tree::Meta, KEY.as_bytes(), &p) {
            self.inner.lock().dirty = true;
            return Err(e);
        }
        Ok(true)
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
