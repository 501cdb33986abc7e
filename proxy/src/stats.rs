//! Usage figures for `GET /-/api/stats`: artifacts served per format, hit ratio, bytes
//! served from the cache (upstream bytes saved), distinct clients, policy blocks, and the
//! lighthouse figure — (packages served + images served) / distinct clients, per UTC day.
//!
//! Counters live in memory and are persisted in the index's `meta` tree ([`Stats::persist`],
//! called by upkeep every [`PERSIST_EVERY`] when anything changed, and on graceful shutdown)
//! and loaded at start ([`Stats::load`]), so they survive restarts: a crash loses at most
//! the figures of the last persist interval. Kept: totals since the figures began, and per
//! UTC day for the last [`KEEP_DAYS`] days the counters, the distinct-client count and the
//! clients' hashed ids (a stable 64-bit hash of the IP, never the IP itself).
//!
//! Recording one response takes one uncontended lock and no allocation, except the first
//! time a client is seen that day. Distinct clients are counted by client IP, exactly up to
//! [`MAX_CLIENTS`] a day, after which the figure saturates.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::response::CacheStatus;
use crate::store::index::{Index, IndexExt, Tree};
use crate::store::unix_secs;

/// Distinct client IPs remembered per day.
pub const MAX_CLIENTS: usize = 100_000;

/// Days of per-day figures (and hashed client ids) kept, today included.
pub const KEEP_DAYS: u64 = 30;

/// How often upkeep persists the figures when they changed.
pub const PERSIST_EVERY: Duration = Duration::from_secs(2);

/// `meta` key of the totals ([`TotalRecord`]).
const KEY_TOTAL: &str = "stats/total";

/// `meta` key of one day's figures ([`DayRecord`]).
fn day_key(day: u64) -> String {
    format!("stats/day/{day}")
}

/// `meta` key of one day's hashed client ids (little-endian `u64`s, sorted).
fn clients_key(day: u64) -> String {
    format!("stats/clients/{day}")
}

/// The persisted totals.
#[derive(Serialize, Deserialize)]
struct TotalRecord {
    /// Unix seconds when the figures began.
    since_unix: u64,
    counters: Counters,
    /// Days (since the epoch) with a [`DayRecord`].
    days: Vec<u64>,
}

/// One persisted day.
#[derive(Serialize, Deserialize)]
struct DayRecord {
    counters: Counters,
    distinct_clients: u64,
}

/// What one response was, as far as the figures care.
pub struct Served<'a> {
    /// `oci`, `npm`, `pypi`, or anything else (not counted as an artifact).
    pub format: &'static str,
    /// Request method is GET (HEADs serve no artifact).
    pub get: bool,
    /// Request path.
    pub path: &'a str,
    /// Response status.
    pub status: u16,
    /// How it was served.
    pub cache: CacheStatus,
    /// Body bytes sent from the store.
    pub cached_bytes: u64,
    /// Client address (`IP:port`).
    pub client: &'a str,
    /// `Content-Type` of the response (tells an OCI image manifest from an index).
    pub content_type: Option<&'a str>,
    /// The policy blocked it (whatever the status: a hidden block is a 404, and a 403 may
    /// be the upstream's refusal).
    pub blocked: bool,
}

/// Counters of one period.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Artifacts (OCI manifests and blobs, npm tarballs, PyPI files) served, per format.
    pub artifacts_served: PerFormat,
    /// npm tarballs and PyPI files served.
    pub packages_served: u64,
    /// OCI images served: image manifests (not indexes) served.
    pub images_served: u64,
    /// Artifact responses served from the store.
    pub hits: u64,
    /// Artifact responses fetched from an upstream.
    pub misses: u64,
    /// Body bytes served from the store: what clients did not have to fetch upstream.
    pub upstream_bytes_saved: u64,
    /// Requests the dependency firewall refused (`403` on a format route).
    pub blocks: u64,
}

/// A count per format.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PerFormat {
    /// OCI.
    pub oci: u64,
    /// npm.
    pub npm: u64,
    /// PyPI.
    pub pypi: u64,
    /// Cargo.
    pub cargo: u64,
}

/// Today: counters and the set of hashed client ids.
struct Day {
    day: u64,
    counters: Counters,
    clients: HashSet<u64>,
}

impl Day {
    fn new(day: u64) -> Day {
        Day {
            day,
            counters: Counters::default(),
            clients: HashSet::new(),
        }
    }

    fn past(&self) -> PastDay {
        PastDay {
            counters: self.counters.clone(),
            distinct_clients: self.clients.len() as u64,
        }
    }
}

/// A finished day.
#[derive(Clone)]
struct PastDay {
    counters: Counters,
    distinct_clients: u64,
}

struct Inner {
    since: u64,
    total: Counters,
    today: Day,
    /// The previous [`KEEP_DAYS`] - 1 days with figures.
    past: BTreeMap<u64, PastDay>,
    /// Anything changed since the last persist.
    dirty: bool,
    /// Today's client set changed since the last persist.
    clients_dirty: bool,
    /// Days that ended and are not persisted in their final form yet, with their clients.
    finished: Vec<(u64, PastDay, Vec<u64>)>,
    /// Days with records in the index.
    stored_days: BTreeSet<u64>,
}

/// The figures.
pub struct Stats {
    started: u64,
    inner: Mutex<Inner>,
    /// One persist at a time (an older snapshot must not overwrite a newer one).
    persisting: Mutex<()>,
}

impl Default for Stats {
    fn default() -> Stats {
        let now = unix_secs();
        Stats {
            started: now,
            inner: Mutex::new(Inner {
                since: now,
                total: Counters::default(),
                today: Day::new(now / 86_400),
                past: BTreeMap::new(),
                dirty: false,
                clients_dirty: false,
                finished: Vec::new(),
                stored_days: BTreeSet::new(),
            }),
            persisting: Mutex::new(()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Artifact {
    Blob,
    Manifest,
    Package,
}

fn classify(format: &str, path: &str) -> Option<Artifact> {
    match format {
        "oci" if path.contains("/blobs/") => Some(Artifact::Blob),
        "oci" if path.contains("/manifests/") => Some(Artifact::Manifest),
        "npm" if path.contains("/-/") && path.ends_with(".tgz") => Some(Artifact::Package),
        "pypi" if path.contains("/files/") && !path.ends_with(".metadata") => {
            Some(Artifact::Package)
        }
        "cargo" if path.ends_with("/download") => Some(Artifact::Package),
        _ => None,
    }
}

/// A stable hash (FNV-1a, 64 bits) of the client's IP without the port (`1.2.3.4:5678`,
/// `[::1]:5678`): the same across restarts and Rust versions, as persisted ids must be.
fn client_key(client: &str) -> u64 {
    let ip = client.rsplit_once(':').map_or(client, |(ip, _)| ip);
    ip.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Counters {
    fn add(&mut self, s: &Served<'_>, artifact: Option<Artifact>, blocked: bool) {
        self.upstream_bytes_saved += s.cached_bytes;
        if blocked {
            self.blocks += 1;
        }
        let Some(a) = artifact else {
            return;
        };
        match s.format {
            "oci" => self.artifacts_served.oci += 1,
            "npm" => self.artifacts_served.npm += 1,
            "cargo" => self.artifacts_served.cargo += 1,
            _ => self.artifacts_served.pypi += 1,
        }
        match a {
            Artifact::Package => self.packages_served += 1,
            Artifact::Manifest => {
                let index = s
                    .content_type
                    .is_some_and(|t| t.contains("index") || t.contains("manifest.list"));
                if !index {
                    self.images_served += 1;
                }
            }
            Artifact::Blob => {}
        }
        match s.cache {
            CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Revalidated => self.hits += 1,
            CacheStatus::Miss => self.misses += 1,
            CacheStatus::Bypass => {}
        }
    }
}

impl Stats {
    /// Counts one response.
    pub fn record(&self, s: &Served<'_>) {
        let is_format = matches!(s.format, "oci" | "npm" | "pypi" | "cargo");
        if !is_format {
            return;
        }
        let served = s.get && (s.status == 200 || s.status == 206);
        let artifact = if served {
            classify(s.format, s.path)
        } else {
            None
        };
        let blocked = s.blocked;
        let key = client_key(s.client);
        let day = unix_secs() / 86_400;
        let mut g = self.inner.lock();
        if g.today.day < day {
            g.roll_to(day);
        }
        g.total.add(s, artifact, blocked);
        g.today.counters.add(s, artifact, blocked);
        g.dirty = true;
        if g.today.clients.len() < MAX_CLIENTS && g.today.clients.insert(key) {
            g.clients_dirty = true;
        }
    }

    /// The figures persisted in `index`, or fresh ones when there are none. Records older
    /// than [`KEEP_DAYS`] are dropped from the index.
    pub fn load(index: &dyn Index) -> anyhow::Result<Stats> {
        let stats = Stats::default();
        let Some(total) = index.get_rec::<TotalRecord>(Tree::Meta, KEY_TOTAL.as_bytes())? else {
            return Ok(stats);
        };
        let today = stats.started / 86_400;
        let mut g = stats.inner.lock();
        g.since = total.since_unix.min(stats.started);
        g.total = total.counters;
        for day in total.days {
            let rec = index.get_rec::<DayRecord>(Tree::Meta, day_key(day).as_bytes())?;
            // A day after today (the clock was stepped back) is kept as a past day: its
            // figures were real.
            if day + KEEP_DAYS <= today {
                index.remove(Tree::Meta, day_key(day).as_bytes())?;
                index.remove(Tree::Meta, clients_key(day).as_bytes())?;
                g.dirty = true;
                continue;
            }
            let Some(rec) = rec else { continue };
            g.stored_days.insert(day);
            if day == today {
                let ids = index
                    .get(Tree::Meta, clients_key(day).as_bytes())?
                    .unwrap_or_default();
                g.today.counters = rec.counters;
                g.today.clients = ids
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect();
            } else {
                g.past.insert(
                    day,
                    PastDay {
                        counters: rec.counters,
                        distinct_clients: rec.distinct_clients,
                    },
                );
            }
        }
        drop(g);
        Ok(stats)
    }

    /// Writes the figures to `index` if they changed since the last call; returns whether
    /// it wrote. Blocking (index writes; sled makes them durable within its flush interval,
    /// [`Index::flush`] at once).
    pub fn persist(&self, index: &dyn Index) -> anyhow::Result<bool> {
        let _one = self.persisting.lock();
        let mut g = self.inner.lock();
        if !g.dirty && g.finished.is_empty() {
            return Ok(false);
        }
        let today = g.today.day;
        let finished = std::mem::take(&mut g.finished);
        let clients = g.clients_dirty.then(|| sorted_ids(&g.today.clients));
        let day = DayRecord {
            counters: g.today.counters.clone(),
            distinct_clients: g.today.clients.len() as u64,
        };
        let mut days: BTreeSet<u64> = g.past.keys().copied().collect();
        days.insert(today);
        let gone: Vec<u64> = g.stored_days.difference(&days).copied().collect();
        let total = TotalRecord {
            since_unix: g.since,
            counters: g.total.clone(),
            days: days.iter().copied().collect(),
        };
        g.dirty = false;
        g.clients_dirty = false;
        drop(g);
        let r = (|| -> anyhow::Result<()> {
            for (d, past, ids) in &finished {
                let rec = DayRecord {
                    counters: past.counters.clone(),
                    distinct_clients: past.distinct_clients,
                };
                index.put_rec(Tree::Meta, day_key(*d).as_bytes(), &rec)?;
                index.put(Tree::Meta, clients_key(*d).as_bytes(), &ids_bytes(ids))?;
            }
            index.put_rec(Tree::Meta, day_key(today).as_bytes(), &day)?;
            if let Some(ids) = &clients {
                index.put(Tree::Meta, clients_key(today).as_bytes(), &ids_bytes(ids))?;
            }
            index.put_rec(Tree::Meta, KEY_TOTAL.as_bytes(), &total)?;
            for d in &gone {
                index.remove(Tree::Meta, day_key(*d).as_bytes())?;
                index.remove(Tree::Meta, clients_key(*d).as_bytes())?;
            }
            Ok(())
        })();
        let mut g = self.inner.lock();
        match r {
            Ok(()) => {
                metrics::counter!("sluice_stats_persists_total", "result" => "ok").increment(1);
                g.stored_days.extend(days);
                for d in gone {
                    g.stored_days.remove(&d);
                }
                Ok(true)
            }
            Err(e) => {
                metrics::counter!("sluice_stats_persists_total", "result" => "error").increment(1);
                // Try again next time.
                g.dirty = true;
                g.clients_dirty |= clients.is_some();
                let mut finished = finished;
                finished.append(&mut g.finished);
                g.finished = finished;
                Err(e)
            }
        }
    }

    /// The figures as JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut g = self.inner.lock();
        let now = unix_secs() / 86_400;
        if g.today.day < now {
            g.roll_to(now);
        }
        let day = |d: u64, p: &PastDay| {
            let clients = p.distinct_clients;
            let served = p.counters.packages_served + p.counters.images_served;
            serde_json::json!({
                "day": crate::timefmt::date(d),
                "counters": with_ratio(&p.counters),
                "distinct_clients": clients,
                "lighthouse": if clients == 0 { 0.0 } else { served as f64 / clients as f64 },
            })
        };
        let today = g.today.day;
        let days: Vec<_> = g
            .past
            .iter()
            .map(|(d, p)| day(*d, p))
            .chain(std::iter::once(day(today, &g.today.past())))
            .collect();
        serde_json::json!({
            "since_unix": g.since,
            "started_unix": self.started,
            "total": with_ratio(&g.total),
            "today": day(today, &g.today.past()),
            "previous_day": g.past.get(&(today - 1)).map(|p| day(today - 1, p)),
            "days": days,
        })
    }
}

impl Inner {
    /// Ends today and starts `day`, keeping [`KEEP_DAYS`] days.
    fn roll_to(&mut self, day: u64) {
        let old = std::mem::replace(&mut self.today, Day::new(day));
        let past = old.past();
        self.finished
            .push((old.day, past.clone(), sorted_ids(&old.clients)));
        self.past.insert(old.day, past);
        let keep_from = day.saturating_sub(KEEP_DAYS - 1);
        self.past = self.past.split_off(&keep_from);
        self.finished.retain(|(d, _, _)| *d >= keep_from);
        self.dirty = true;
        self.clients_dirty = false;
    }
}

fn sorted_ids(set: &HashSet<u64>) -> Vec<u64> {
    let mut v: Vec<u64> = set.iter().copied().collect();
    v.sort_unstable();
    v
}

fn ids_bytes(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_le_bytes()).collect()
}

fn with_ratio(c: &Counters) -> serde_json::Value {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    let n = c.hits + c.misses;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "hit_ratio".into(),
            serde_json::json!(if n == 0 {
                0.0
            } else {
                c.hits as f64 / n as f64
            }),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served<'a>(format: &'static str, path: &'a str, client: &'a str) -> Served<'a> {
        Served {
            format,
            get: true,
            path,
            status: 200,
            cache: CacheStatus::Hit,
            cached_bytes: 10,
            client,
            content_type: None,
            blocked: false,
        }
    }

    #[test]
    fn figures_count_artifacts_clients_and_the_lighthouse() {
        let s = Stats::default();
        s.record(&served("npm", "/npmjs/a/-/a-1.0.0.tgz", "10.0.0.1:1000"));
        s.record(&served("npm", "/npmjs/a", "10.0.0.1:1001"));
        s.record(&served("pypi", "/pypi/files/sha256/ab/x.whl", "10.0.0.2:5"));
        let mut m = served("oci", "/v2/r/manifests/1", "[::1]:7");
        m.cache = CacheStatus::Miss;
        s.record(&m);
        let mut i = served("oci", "/v2/r/manifests/2", "[::1]:8");
        i.content_type = Some("application/vnd.oci.image.index.v1+json");
        s.record(&i);
        let mut b = served("oci", "/v2/r/blobs/sha256:x", "[::1]:8");
        b.status = 403;
        b.blocked = true;
        s.record(&b);
        // An upstream's refusal is a 403 too, but not a block.
        let mut refused = served("oci", "/v2/r/blobs/sha256:y", "[::1]:8");
        refused.status = 403;
        refused.cache = CacheStatus::Bypass;
        refused.cached_bytes = 0;
        s.record(&refused);
        let v = s.snapshot();
        let t = &v["today"];
        assert_eq!(t["distinct_clients"], 3);
        assert_eq!(t["counters"]["packages_served"], 2);
        assert_eq!(t["counters"]["images_served"], 1);
        assert_eq!(t["counters"]["artifacts_served"]["oci"], 2);
        assert_eq!(t["counters"]["blocks"], 1);
        assert_eq!(t["counters"]["hits"], 3);
        assert_eq!(t["counters"]["misses"], 1);
        assert_eq!(t["lighthouse"], 1.0);
        assert_eq!(v["total"]["upstream_bytes_saved"], 60);
    }

    fn index() -> (tempfile::TempDir, crate::store::index::SledIndex) {
        let dir = tempfile::tempdir().unwrap();
        let idx = crate::store::index::SledIndex::open(&dir.path().join("index")).unwrap();
        (dir, idx)
    }

    #[test]
    fn figures_survive_a_persist_and_load() {
        let (_dir, idx) = index();
        let s = Stats::default();
        assert!(!s.persist(&idx).unwrap(), "nothing to write yet");
        s.record(&served("npm", "/npmjs/a/-/a-1.0.0.tgz", "10.0.0.1:1000"));
        s.record(&served("pypi", "/pypi/files/sha256/ab/x.whl", "10.0.0.2:5"));
        assert!(s.persist(&idx).unwrap());
        assert!(
            !s.persist(&idx).unwrap(),
            "unchanged figures are not rewritten"
        );
        let before = s.snapshot();

        let t = Stats::load(&idx).unwrap();
        let after = t.snapshot();
        assert_eq!(after["total"], before["total"]);
        assert_eq!(after["today"], before["today"]);
        assert_eq!(after["since_unix"], before["since_unix"]);
        assert_eq!(after["today"]["distinct_clients"], 2);
        // A known client is not counted twice after the restart; a new one is.
        t.record(&served("npm", "/npmjs/a/-/a-1.0.0.tgz", "10.0.0.1:2000"));
        assert_eq!(t.snapshot()["today"]["distinct_clients"], 2);
        t.record(&served("npm", "/npmjs/a/-/a-1.0.0.tgz", "10.0.0.3:1"));
        let v = t.snapshot();
        assert_eq!(v["today"]["distinct_clients"], 3);
        assert_eq!(v["total"]["packages_served"], 4);
        assert_eq!(v["days"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_full_collection_keeps_the_persisted_figures() {
        // The `stats/…` records share the meta tree with cached documents, whose records
        // index GC drops when their content is gone: it must leave these alone.
        let dir = tempfile::tempdir().unwrap();
        let cfg = sluice_config::StorageConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let store = crate::store::Store::open(dir.path()).unwrap();
        let s = Stats::default();
        s.record(&served("npm", "/npmjs/a/-/a-1.0.0.tgz", "10.0.0.1:1000"));
        s.record(&served("oci", "/v2/r/manifests/1", "[::1]:7"));
        assert!(s.persist(store.index().as_ref()).unwrap());
        let limits = crate::store::evict::Limits::from_config(&cfg).unwrap();
        crate::store::evict::collect(&store, &cfg, &limits, true).unwrap();
        let t = Stats::load(store.index().as_ref()).unwrap();
        assert_eq!(t.snapshot()["total"], s.snapshot()["total"]);
        assert_eq!(t.snapshot()["today"]["distinct_clients"], 2);
    }

    #[test]
    fn days_roll_over_and_old_days_leave_the_index() {
        let (_dir, idx) = index();
        let today = unix_secs() / 86_400;
        let s = Stats::default();
        {
            let mut g = s.inner.lock();
            g.today = Day::new(today - KEEP_DAYS - 1);
            g.today.counters.packages_served = 7;
            g.today.clients.insert(1);
            g.dirty = true;
        }
        s.persist(&idx).unwrap();
        assert!(idx
            .get(Tree::Meta, day_key(today - KEEP_DAYS - 1).as_bytes())
            .unwrap()
            .is_some());
        {
            let mut g = s.inner.lock();
            g.roll_to(today - 1);
            g.today.counters.images_served = 3;
            g.today.clients.extend([5, 6, 7]);
            g.clients_dirty = true;
            g.roll_to(today);
        }
        s.persist(&idx).unwrap();
        for k in [
            day_key(today - KEEP_DAYS - 1),
            clients_key(today - KEEP_DAYS - 1),
        ] {
            assert!(idx.get(Tree::Meta, k.as_bytes()).unwrap().is_none(), "{k}");
        }
        let ids = idx
            .get(Tree::Meta, clients_key(today - 1).as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(ids.len(), 24);
        let v = Stats::load(&idx).unwrap().snapshot();
        assert_eq!(v["previous_day"]["distinct_clients"], 3, "{v}");
        assert_eq!(v["previous_day"]["counters"]["images_served"], 3, "{v}");
        assert_eq!(v["today"]["distinct_clients"], 0, "{v}");
        assert_eq!(v["days"].as_array().unwrap().len(), 2, "{v}");
    }

    #[test]
    fn figures_dated_after_today_survive_a_clock_stepped_back() {
        let (_dir, idx) = index();
        let today = unix_secs() / 86_400;
        let s = Stats::default();
        {
            let mut g = s.inner.lock();
            g.today = Day::new(today + 1);
            g.today.counters.packages_served = 5;
            g.dirty = true;
        }
        s.persist(&idx).unwrap();
        let v = Stats::load(&idx).unwrap().snapshot();
        let days = v["days"].as_array().unwrap();
        assert!(
            days.iter().any(|d| d["counters"]["packages_served"] == 5),
            "{v}"
        );
        assert!(idx
            .get(Tree::Meta, day_key(today + 1).as_bytes())
            .unwrap()
            .is_some());
    }

    #[test]
    fn client_ids_are_stable_and_ignore_the_port() {
        assert_eq!(client_key("10.0.0.1:1"), client_key("10.0.0.1:2"));
        assert_eq!(client_key("[::1]:7"), client_key("[::1]:8"));
        // FNV-1a of "a" (a published test vector): the hash never changes.
        assert_eq!(client_key("a:1"), 0xaf63_dc4c_8601_ec8c);
    }
}
