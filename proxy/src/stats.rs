//! Usage figures for `GET /-/api/stats`: artifacts served per format, hit ratio, bytes
//! served from the cache (upstream bytes saved), distinct clients, policy blocks, and the
//! lighthouse figure — (packages served + images served) / distinct clients, per UTC day.
//!
//! Counters live in memory (they restart with the process): totals since start, today and
//! the previous day. Recording one response takes one uncontended lock and no allocation,
//! except the first time a client is seen that day. Distinct clients are counted by client
//! IP, exactly up to [`MAX_CLIENTS`] a day, after which the figure saturates.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use parking_lot::Mutex;
use serde::Serialize;

use crate::response::CacheStatus;
use crate::store::unix_secs;

/// Distinct client IPs remembered per day.
pub const MAX_CLIENTS: usize = 100_000;

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
}

/// Counters of one period.
#[derive(Clone, Debug, Default, Serialize)]
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
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerFormat {
    /// OCI.
    pub oci: u64,
    /// npm.
    pub npm: u64,
    /// PyPI.
    pub pypi: u64,
}

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
}

struct Inner {
    total: Counters,
    today: Day,
    previous: Option<Day>,
}

/// The figures.
pub struct Stats {
    started: u64,
    inner: Mutex<Inner>,
}

impl Default for Stats {
    fn default() -> Stats {
        let now = unix_secs();
        Stats {
            started: now,
            inner: Mutex::new(Inner {
                total: Counters::default(),
                today: Day::new(now / 86_400),
                previous: None,
            }),
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
        _ => None,
    }
}

fn client_key(client: &str) -> u64 {
    // The IP without the port: `1.2.3.4:5678`, `[::1]:5678`.
    let ip = client.rsplit_once(':').map_or(client, |(ip, _)| ip);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut h);
    h.finish()
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
        let is_format = matches!(s.format, "oci" | "npm" | "pypi");
        if !is_format {
            return;
        }
        let served = s.get && (s.status == 200 || s.status == 206);
        let artifact = if served {
            classify(s.format, s.path)
        } else {
            None
        };
        let blocked = s.status == 403;
        let key = client_key(s.client);
        let day = unix_secs() / 86_400;
        let mut g = self.inner.lock();
        if g.today.day != day {
            let old = std::mem::replace(&mut g.today, Day::new(day));
            g.previous = (old.day + 1 == day).then_some(old);
        }
        g.total.add(s, artifact, blocked);
        g.today.counters.add(s, artifact, blocked);
        if g.today.clients.len() < MAX_CLIENTS {
            g.today.clients.insert(key);
        }
    }

    /// The figures as JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        let g = self.inner.lock();
        let day = |d: &Day| {
            let clients = d.clients.len() as u64;
            let served = d.counters.packages_served + d.counters.images_served;
            serde_json::json!({
                "day": civil_date(d.day),
                "counters": with_ratio(&d.counters),
                "distinct_clients": clients,
                "lighthouse": if clients == 0 { 0.0 } else { served as f64 / clients as f64 },
            })
        };
        serde_json::json!({
            "since_unix": self.started,
            "total": with_ratio(&g.total),
            "today": day(&g.today),
            "previous_day": g.previous.as_ref().map(day),
        })
    }
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

/// `YYYY-MM-DD` of a day number since the Unix epoch (proleptic Gregorian, UTC).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
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
        s.record(&b);
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

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(20_513), "2026-03-01");
    }
}
