//! Cleanup policies (`[[storage.cleanup]]`): per repository or package, keep the N most
//! recently pulled tags (versions) and/or expire those not pulled for a while; evaluated
//! online at every full collection and on `POST /-/api/cleanup`, in `dry-run` (report) or
//! `enforce` (remove) mode.
//!
//! - **Last pull**: OCI tags from the batched pull log ([`super::pulls`]; a tag with no
//!   pull record yet falls back to its manifest's last access); npm and PyPI versions from
//!   the last access of their release files (tarball, wheels and sdists of the version).
//! - **Reachability**: a selected tag's files are removed only when nothing kept reaches
//!   them: every other tag, version and document of any repository or format, and
//!   everything pinned. Pins win: a pinned tag is never removed.
//! - **Safety while serving**: the tag record goes first (a new request refetches), then
//!   the files through [`Store::remove`], under the eviction lock, so byte accounting stays
//!   exact; a tag whose files were stored or served within `eviction_grace`, or that was
//!   pulled since the evaluation began, is left for the next run.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_config::{CleanupConfig, CleanupMode, Format, PinConfig};
use sluice_policy::glob::{normalise, Glob};

use super::index::{BlobRecord, Tree};
use super::pins::{ecosystem, Item, ItemKind};
use super::{unix_ms, unix_secs, Store};
use crate::digest::Digest;

/// One tag or version a policy selected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Selected {
    /// `oci`, `npm` or `pypi`.
    pub format: &'static str,
    /// The upstream it came from.
    pub upstream: String,
    /// Repository (without the upstream), package or project.
    pub name: String,
    /// Tag or version.
    pub tag: String,
    /// The manifest (OCI) or the first release file.
    pub digest: Digest,
    /// Files only this tag reaches (removed with it).
    pub files: usize,
    /// Bytes those files hold.
    pub bytes: u64,
    /// Unix milliseconds of its last pull (0: never recorded).
    pub last_pulled_ms: u64,
    /// `removed`, `would-remove` (dry-run), `pinned` (kept: pins win) or `in-use` (kept:
    /// served within `eviction_grace` or pulled during the run; retried next run).
    pub status: &'static str,
}

/// The last evaluation of one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyReport {
    /// The policy's `id`.
    pub policy: String,
    /// `dry-run` or `enforce`.
    pub mode: &'static str,
    /// Unix milliseconds of the evaluation.
    pub evaluated_at_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// Tags / versions the policy's filters matched.
    pub considered: usize,
    /// Of those, selected for removal and not pinned: removed (enforce) or that would be
    /// (dry-run).
    pub items: usize,
    /// Bytes of their exclusive files.
    pub bytes: u64,
    /// Selected but pinned.
    pub kept_pinned: usize,
    /// Selected but in use (enforce only).
    pub deferred: usize,
    /// What was selected, least recently pulled first.
    pub selected: Vec<Selected>,
}

/// A policy's filters, compiled.
struct Filter<'a> {
    cfg: &'a CleanupConfig,
    names: HashMap<Format, Glob>,
    tag: Option<Glob>,
}

impl<'a> Filter<'a> {
    fn new(cfg: &'a CleanupConfig) -> Filter<'a> {
        let names = Format::ALL
            .into_iter()
            .map(|f| (f, Glob::new(ecosystem(f), &cfg.name)))
            .collect();
        Filter {
            cfg,
            names,
            tag: cfg
                .tag
                .as_deref()
                .map(|t| Glob::new(sluice_policy::Ecosystem::Oci, t)),
        }
    }

    fn matches(&self, item: &Item) -> bool {
        if !matches!(item.kind, ItemKind::Tag | ItemKind::Version)
            || self.cfg.format.is_some_and(|f| f != item.format)
            || self
                .cfg
                .upstream
                .as_deref()
                .is_some_and(|u| u != item.upstream)
        {
            return false;
        }
        let Some(glob) = self.names.get(&item.format) else {
            return false;
        };
        let eco = ecosystem(item.format);
        let short = display_name(item);
        if !(glob.matches(&normalise(eco, &item.name)) || glob.matches(&normalise(eco, short))) {
            return false;
        }
        match (&self.tag, item.tag.as_deref()) {
            (None, _) => true,
            (Some(g), Some(t)) => g.matches(t),
            (Some(_), None) => false,
        }
    }
}

/// OCI names are `upstream/repo`: the repository part.
fn display_name(item: &Item) -> &str {
    match item.format {
        Format::Oci => item.name.split_once('/').map_or(&*item.name, |(_, r)| r),
        _ => &item.name,
    }
}

/// A tag or version of one name, as the selection sees it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Unix milliseconds of its last pull.
    pub last_pulled_ms: u64,
    /// Tag or version (breaks ties, higher first, so the order is stable).
    pub tag: String,
}

/// Which of one name's `entries` the rules select for removal: those not among the
/// `keep_last` most recently pulled, and not pulled within `expire_after`; with both rules,
/// both must select an entry. Returned least recently pulled first.
pub fn select(
    keep_last: Option<u32>,
    expire_after: Option<Duration>,
    now_ms: u64,
    entries: &[Entry],
) -> Vec<usize> {
    if keep_last.is_none() && expire_after.is_none() {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&entries[a], &entries[b]);
        b.last_pulled_ms
            .cmp(&a.last_pulled_ms)
            .then_with(|| b.tag.cmp(&a.tag))
    });
    let mut out: Vec<usize> = order
        .into_iter()
        .enumerate()
        .filter(|&(rank, i)| {
            let beyond = keep_last.is_none_or(|n| rank >= n as usize);
            let expired = expire_after.is_none_or(|d| {
                u128::from(now_ms.saturating_sub(entries[i].last_pulled_ms)) >= d.as_millis()
            });
            beyond && expired
        })
        .map(|(_, i)| i)
        .collect();
    out.reverse();
    out
}

/// A tag (or version, with all its files) a policy may remove.
struct Candidate {
    format: Format,
    upstream: String,
    name: String,
    tag: String,
    /// OCI: the `tags` key; versions: empty.
    key: String,
    /// Indices into the item list.
    items: Vec<usize>,
    digests: Vec<Digest>,
    last_pulled_ms: u64,
}

/// Runs every policy once: `enforce` ones first (each on the store as the previous one
/// left it), then `dry-run` ones. Keeps the reports for [`Store::cleanup_reports`].
/// Blocking; serialised with eviction.
pub fn run(
    store: &Store,
    policies: &[CleanupConfig],
    pins: &[PinConfig],
    grace: Duration,
) -> anyhow::Result<Vec<PolicyReport>> {
    let _run = store.evicting.lock();
    store.flush_access()?;
    let mut order: Vec<usize> = (0..policies.len()).collect();
    order.sort_by_key(|&i| policies[i].mode != CleanupMode::Enforce);
    let mut reports: Vec<Option<PolicyReport>> = vec![None; policies.len()];
    for i in order {
        let r = evaluate(store, &policies[i], pins, grace)?;
        let mode = r.mode;
        metrics::counter!("sluice_cleanup_items_total", "policy" => r.policy.clone(), "mode" => mode)
            .increment(r.items as u64);
        metrics::counter!("sluice_cleanup_bytes_total", "policy" => r.policy.clone(), "mode" => mode)
            .increment(r.bytes);
        metrics::gauge!("sluice_cleanup_last_items", "policy" => r.policy.clone(), "mode" => mode)
            .set(r.items as f64);
        metrics::gauge!("sluice_cleanup_last_bytes", "policy" => r.policy.clone(), "mode" => mode)
            .set(r.bytes as f64);
        tracing::info!(
            policy = %r.policy,
            mode,
            considered = r.considered,
            items = r.items,
            bytes = r.bytes,
            kept_pinned = r.kept_pinned,
            deferred = r.deferred,
            duration_ms = r.duration_ms,
            stored_bytes = store.total_bytes(),
            "cleanup"
        );
        reports[i] = Some(r);
    }
    let reports: Vec<PolicyReport> = reports.into_iter().flatten().collect();
    *store.cleanup_reports.lock() = reports.clone();
    Ok(reports)
}

/// One policy against the store as it is now.
fn evaluate(
    store: &Store,
    policy: &CleanupConfig,
    pins: &[PinConfig],
    grace: Duration,
) -> anyhow::Result<PolicyReport> {
    let started = Instant::now();
    let enforce = policy.mode == CleanupMode::Enforce;
    let items = store.items(&|_| true)?;
    let records: HashMap<Digest, BlobRecord> = store.records()?.into_iter().collect();
    let pulls = store.last_pulls()?;
    let pins = store.pins(pins)?;
    let filter = Filter::new(policy);

    // Candidates: a PyPI version is several files, an npm version appears once per cached
    // packument (full and abbreviated): one candidate each.
    let mut cands: Vec<Candidate> = Vec::new();
    let mut by_id: HashMap<(Format, &str, &str, &str), usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if !filter.matches(item) {
            continue;
        }
        let tag = item.tag.as_deref().unwrap_or("");
        let c = *by_id
            .entry((item.format, &item.upstream, &item.name, tag))
            .or_insert_with(|| {
                cands.push(Candidate {
                    format: item.format,
                    upstream: item.upstream.clone(),
                    name: display_name(item).to_string(),
                    tag: tag.to_string(),
                    key: item.key.clone(),
                    items: Vec::new(),
                    digests: Vec::new(),
                    last_pulled_ms: 0,
                });
                cands.len() - 1
            });
        let c = &mut cands[c];
        c.items.push(i);
        for d in &item.digests {
            if !c.digests.contains(d) {
                c.digests.push(*d);
            }
        }
    }
    for c in &mut cands {
        let accessed = |d: &Digest| records.get(d).map_or(0, |r| r.last_access * 1000);
        c.last_pulled_ms = match c.format {
            // The manifest (first in the closure) was served with every pull of the tag.
            Format::Oci => pulls
                .get(&c.key)
                .copied()
                .unwrap_or_else(|| c.digests.first().map_or(0, accessed)),
            _ => c.digests.iter().map(accessed).max().unwrap_or(0),
        };
    }

    // The rules, per name.
    let mut groups: HashMap<(Format, &str, &str), Vec<usize>> = HashMap::new();
    for (i, c) in cands.iter().enumerate() {
        groups
            .entry((c.format, &c.upstream, &c.name))
            .or_default()
            .push(i);
    }
    let now_ms = unix_ms();
    let mut chosen = Vec::new();
    for members in groups.values() {
        let entries: Vec<Entry> = members
            .iter()
            .map(|&i| Entry {
                last_pulled_ms: cands[i].last_pulled_ms,
                tag: cands[i].tag.clone(),
            })
            .collect();
        let expire = policy.expire_after.map(|d| d.get());
        chosen.extend(
            select(policy.keep_last, expire, now_ms, &entries)
                .into_iter()
                .map(|j| members[j]),
        );
    }
    chosen.sort_by_key(|&i| (cands[i].last_pulled_ms, i));

    // Pins win.
    let covered = |i: usize| pins.iter().any(|p| p.covers(&items[i]));
    let protected: HashSet<Digest> = (0..items.len())
        .filter(|&i| covered(i))
        .flat_map(|i| items[i].digests.iter().copied())
        .collect();
    let mut status: HashMap<usize, &'static str> = HashMap::new();
    let mut removing: Vec<usize> = Vec::new();
    for &c in &chosen {
        if cands[c].items.iter().any(|&i| covered(i)) {
            status.insert(c, "pinned");
        } else {
            removing.push(c);
        }
    }

    // What only the removed tags reach; a tag in use is kept, which can make more shared.
    let now = unix_secs();
    let grace_s = grace.as_secs();
    let recent = |d: &Digest| {
        store
            .pending_access_of(d)
            .is_some_and(|t| now.saturating_sub(t) <= grace_s.max(1))
            || records
                .get(d)
                .is_some_and(|r| now.saturating_sub(r.last_access.max(r.created)) <= grace_s)
    };
    let exclusive = loop {
        let gone: HashSet<usize> = removing
            .iter()
            .flat_map(|&c| cands[c].items.iter().copied())
            .collect();
        let mut kept = protected.clone();
        for (i, item) in items.iter().enumerate() {
            if !gone.contains(&i) {
                kept.extend(item.digests.iter().copied());
            }
        }
        let mut seen = HashSet::new();
        let exclusive: HashMap<usize, Vec<Digest>> = removing
            .iter()
            .map(|&c| {
                let files = cands[c]
                    .digests
                    .iter()
                    .filter(|d| records.contains_key(d) && !kept.contains(d) && seen.insert(**d))
                    .copied()
                    .collect();
                (c, files)
            })
            .collect();
        if !enforce {
            break exclusive;
        }
        let before = removing.len();
        removing.retain(|c| {
            let cand = &cands[*c];
            let pulled_since = cand.format == Format::Oci
                && store
                    .pending_pull_of(&cand.key)
                    .is_some_and(|t| t > cand.last_pulled_ms);
            let busy = pulled_since || exclusive[c].iter().any(recent);
            if busy {
                status.insert(*c, "in-use");
            }
            !busy
        });
        if removing.len() == before {
            break exclusive;
        }
    };

    let mut report = PolicyReport {
        policy: policy.id.clone(),
        mode: policy.mode.as_str(),
        evaluated_at_ms: now_ms,
        duration_ms: 0,
        considered: cands.len(),
        items: 0,
        bytes: 0,
        kept_pinned: 0,
        deferred: 0,
        selected: Vec::new(),
    };
    for &c in &chosen {
        let cand = &cands[c];
        let files = exclusive.get(&c).map_or(&[][..], Vec::as_slice);
        let mut bytes: u64 = files
            .iter()
            .filter_map(|d| records.get(d))
            .map(|r| r.size)
            .sum();
        let st = match status.get(&c) {
            Some(s) => *s,
            None if !enforce => "would-remove",
            None => {
                bytes = remove(store, cand, files, grace_s)?;
                "removed"
            }
        };
        match st {
            "pinned" => report.kept_pinned += 1,
            "in-use" => report.deferred += 1,
            _ => {
                report.items += 1;
                report.bytes += bytes;
            }
        }
        report.selected.push(Selected {
            format: cand.format.as_str(),
            upstream: cand.upstream.clone(),
            name: cand.name.clone(),
            tag: cand.tag.clone(),
            digest: cand.digests[0],
            files: files.len(),
            bytes,
            last_pulled_ms: cand.last_pulled_ms,
            status: st,
        });
    }
    if enforce {
        store.index.flush()?;
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Removes a tag's record, then its exclusive files; returns the bytes freed.
fn remove(store: &Store, cand: &Candidate, files: &[Digest], grace_s: u64) -> anyhow::Result<u64> {
    if !cand.key.is_empty() {
        store.index.remove(Tree::Tags, cand.key.as_bytes())?;
        store.forget_pull(&cand.key)?;
    }
    let now = unix_secs();
    let mut freed = 0;
    for d in files {
        // Served since the scan (another name began to use it): keep it.
        if store
            .pending_access_of(d)
            .is_some_and(|t| now.saturating_sub(t) <= grace_s.max(1))
        {
            continue;
        }
        if let Some(n) = store.remove(d)? {
            super::evict::count_removal("cleanup", n);
            freed += n;
        }
    }
    Ok(freed)
}

impl Store {
    /// The last evaluation of every cleanup policy (empty before the first run).
    pub fn cleanup_reports(&self) -> Vec<PolicyReport> {
        self.cleanup_reports.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_config::Duration as CfgDuration;

    fn entries(ts: &[(u64, &str)]) -> Vec<Entry> {
        ts.iter()
            .map(|&(t, tag)| Entry {
                last_pulled_ms: t,
                tag: tag.into(),
            })
            .collect()
    }

    #[test]
    fn keep_last_selects_all_but_the_most_recently_pulled_oldest_first() {
        let e = entries(&[(300, "a"), (100, "b"), (400, "c"), (200, "d")]);
        assert_eq!(select(Some(2), None, 1000, &e), vec![1, 3]);
        assert_eq!(select(Some(0), None, 1000, &e), vec![1, 3, 0, 2]);
        assert!(select(Some(4), None, 1000, &e).is_empty());
        assert!(select(None, None, 1000, &e).is_empty());
        // Ties: the higher tag counts as more recent, every time.
        let t = entries(&[(5, "1.0"), (5, "2.0"), (5, "1.5")]);
        assert_eq!(select(Some(1), None, 10, &t), vec![0, 2]);
    }

    #[test]
    fn expire_after_selects_what_was_not_pulled_for_that_long_and_both_rules_must_agree() {
        let e = entries(&[(9_000, "new"), (5_000, "mid"), (1_000, "old"), (0, "never")]);
        let d = |s| Some(Duration::from_secs(s));
        assert_eq!(select(None, d(5), 10_000, &e), vec![3, 2, 1]);
        assert_eq!(select(None, d(9), 10_000, &e), vec![3, 2]);
        // keep_last = 3 keeps "old" although it expired; "never" goes.
        assert_eq!(select(Some(3), d(5), 10_000, &e), vec![3]);
        // keep_last = 1 would drop "mid" but it is not old enough.
        assert_eq!(select(Some(1), d(6), 10_000, &e), vec![3, 2]);
    }

    fn policy(mode: CleanupMode, keep_last: u32) -> CleanupConfig {
        CleanupConfig {
            id: "p".into(),
            format: Some(Format::Oci),
            upstream: None,
            name: "app".into(),
            tag: None,
            keep_last: Some(keep_last),
            expire_after: None,
            mode,
        }
    }

    /// A tag `up/<repo>:<tag>` whose manifest references `blobs`, pulled at `pulled_ms`.
    fn tag(s: &Store, repo: &str, tag: &str, blobs: &[&Digest], pulled_ms: u64) -> Digest {
        let layers: Vec<_> = blobs
            .iter()
            .map(|d| serde_json::json!({ "digest": d.to_string() }))
            .collect();
        let m = serde_json::to_vec(&serde_json::json!({ "layers": layers, "t": tag })).unwrap();
        let d = s.put_bytes(&Bytes::from(m)).unwrap();
        let key = super::super::pulls::tag_key("up", repo, tag);
        let rec = super::super::index::TagRecord {
            digest: d,
            fetched_at_ms: 0,
        };
        s.index
            .put(
                Tree::Tags,
                key.as_bytes(),
                &serde_json::to_vec(&rec).unwrap(),
            )
            .unwrap();
        s.pulls.record(key, pulled_ms);
        d
    }

    fn age_all(s: &Store) {
        for (d, mut r) in s.records().unwrap() {
            r.last_access = 1;
            r.created = 1;
            s.index
                .put(Tree::Blobs, d.as_bytes(), &serde_json::to_vec(&r).unwrap())
                .unwrap();
        }
    }

    #[test]
    fn enforce_removes_unshared_files_keeps_shared_and_pinned_and_dry_run_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let blob = |b: &[u8]| s.put_bytes(&Bytes::copy_from_slice(b)).unwrap();
        let (shared, only1, only2, other_repo) =
            (blob(b"shared"), blob(b"one"), blob(b"two"), blob(b"x"));
        let m1 = tag(&s, "app", "1", &[&shared, &only1], 1_000);
        let m2 = tag(&s, "app", "2", &[&shared, &only2, &other_repo], 2_000);
        tag(&s, "app", "3", &[&shared], 3_000);
        tag(&s, "lib", "1", &[&other_repo], 500);
        age_all(&s);
        let before = s.total_bytes();

        let dry = run(&s, &[policy(CleanupMode::DryRun, 1)], &[], Duration::ZERO).unwrap();
        let r = &dry[0];
        let tags: Vec<&str> = r.selected.iter().map(|x| x.tag.as_str()).collect();
        assert_eq!(tags, ["1", "2"]);
        assert_eq!((r.items, r.considered), (2, 3));
        assert!(r.selected.iter().all(|x| x.status == "would-remove"));
        // tag 1: its manifest and `one`; tag 2: its manifest and `two` (`x` is lib's too).
        assert_eq!(
            r.bytes,
            s.size_of(&m1).unwrap() + 3 + s.size_of(&m2).unwrap() + 3
        );
        assert_eq!(s.total_bytes(), before);

        // Pin tag 2: only tag 1 goes.
        let pin = PinConfig {
            format: Format::Oci,
            name: "app".into(),
            tag: Some("2".into()),
        };
        let done = run(
            &s,
            &[policy(CleanupMode::Enforce, 1)],
            &[pin],
            Duration::ZERO,
        )
        .unwrap();
        let r = &done[0];
        assert_eq!((r.items, r.kept_pinned), (1, 1));
        assert_eq!(r.selected[0].status, "removed");
        assert!(!s.contains(&m1) && !s.contains(&only1));
        assert!(s.contains(&shared) && s.contains(&m2) && s.contains(&only2));
        assert_eq!(s.total_bytes(), before - r.bytes);
        assert!(s.index.get(Tree::Tags, b"up/app:1").unwrap().is_none());
        assert!(!s.last_pulls().unwrap().contains_key("up/app:1"));
        assert_eq!(s.cleanup_reports()[0].items, 1);
    }

    #[test]
    fn a_recently_served_file_defers_its_tag_to_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let only = s.put_bytes(&Bytes::from_static(b"only")).unwrap();
        tag(&s, "app", "1", &[&only], 1_000);
        tag(&s, "app", "2", &[], 2_000);
        age_all(&s);
        s.touch(&only);
        let mut p = policy(CleanupMode::Enforce, 1);
        p.expire_after = Some(CfgDuration::from_secs(0));
        let r = &run(&s, &[p], &[], Duration::from_secs(10)).unwrap()[0];
        assert_eq!((r.items, r.deferred), (0, 1));
        assert_eq!(r.selected[0].status, "in-use");
        assert!(s.contains(&only));
        assert!(s.index.get(Tree::Tags, b"up/app:1").unwrap().is_some());
    }

    #[test]
    fn a_pypi_version_is_all_its_files_and_counts_from_the_most_recently_served() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let file = |b: &'static [u8], version: &str, accessed: u64| {
            let d = s.put_bytes(&Bytes::from_static(b)).unwrap();
            let key = format!("pypi/pypi/sha256/{}", d.hex());
            let facts = serde_json::json!({ "project": "demo", "version": version });
            s.index
                .put(
                    Tree::Files,
                    key.as_bytes(),
                    &serde_json::to_vec(&facts).unwrap(),
                )
                .unwrap();
            let mut r: BlobRecord = s
                .index
                .get(Tree::Blobs, d.as_bytes())
                .unwrap()
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap();
            (r.last_access, r.created) = (accessed, 1);
            s.index
                .put(Tree::Blobs, d.as_bytes(), &serde_json::to_vec(&r).unwrap())
                .unwrap();
            d
        };
        let old_wheel = file(b"1.0 wheel", "1.0", 100);
        let new_sdist = file(b"1.0 sdist", "1.0", 300);
        let mid = file(b"2.0 wheel", "2.0", 200);
        let p = CleanupConfig {
            format: Some(Format::Pypi),
            name: "Demo".into(),
            ..policy(CleanupMode::Enforce, 1)
        };
        let r = &run(&s, &[p], &[], Duration::ZERO).unwrap()[0];
        assert_eq!(r.considered, 2);
        assert_eq!(r.selected.len(), 1);
        let x = &r.selected[0];
        assert_eq!(
            (x.tag.as_str(), x.status, x.last_pulled_ms),
            ("2.0", "removed", 200_000)
        );
        assert!(!s.contains(&mid) && s.contains(&old_wheel) && s.contains(&new_sdist));
    }
}
