//! The offline OSV database: advisories loaded once from directories of OSV JSON files or
//! from an ecosystem's `all.zip` export (as osv.dev publishes them), indexed by
//! (ecosystem, normalised package name) so a lookup is one hash probe.
//!
//! Only the npm and PyPI ecosystems are kept. Withdrawn advisories are dropped. Ranges of
//! type `SEMVER` and `ECOSYSTEM` are evaluated with the ecosystem's own ordering (semver
//! for npm, PEP 440 for PyPI) following the OSV specification's algorithm: events sorted by
//! version, `introduced` ("0" = from the start) opens, `fixed` closes exclusively,
//! `last_affected` closes inclusively, `limit` bounds the whole range; `GIT` ranges are
//! ignored. A range whose event versions do not parse is dropped (its `versions` list, which
//! osv.dev fills in for these ecosystems, still applies).

use std::cmp::Ordering;
use std::fs;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sluice_config::{Ecosystem, Severity};

use crate::fasthash::FastMap;
use crate::glob::normalise;
use crate::versions::Parsed;
use crate::PolicyError;

/// One advisory's identity and weight.
#[derive(Debug)]
pub(crate) struct Advisory {
    pub(crate) id: Box<str>,
    pub(crate) aliases: Box<[Box<str>]>,
    pub(crate) summary: Box<str>,
    /// `MAL-` (malicious package) advisories.
    pub(crate) malicious: bool,
    pub(crate) severity: Option<Severity>,
}

#[derive(Debug)]
enum Bound {
    /// `introduced: "0"`.
    Zero,
    At(Parsed),
    /// `limit: "*"`.
    Infinity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    Introduced,
    Fixed,
    LastAffected,
    Limit,
}

#[derive(Debug)]
struct Event {
    kind: EventKind,
    at: Bound,
}

/// One `affected[]` entry, for one package.
#[derive(Debug)]
pub(crate) struct Affected {
    pub(crate) advisory: u32,
    /// Each range's events, sorted by version.
    ranges: Vec<Vec<Event>>,
    versions: Vec<ListedVersion>,
}

#[derive(Debug)]
enum ListedVersion {
    Parsed(Parsed),
    Raw(Box<str>),
}

/// All loaded advisories.
#[derive(Debug, Default)]
pub(crate) struct Db {
    pub(crate) advisories: Vec<Advisory>,
    npm: FastMap<Box<str>, Vec<Affected>>,
    pypi: FastMap<Box<str>, Vec<Affected>>,
    cargo: FastMap<Box<str>, Vec<Affected>>,
}

impl Db {
    /// Loads every path: a directory (recursively, `*.json`), a `.zip`, or one `.json` file.
    pub(crate) fn load(paths: &[impl AsRef<Path>]) -> Result<Db, PolicyError> {
        let mut db = Db::default();
        for p in paths {
            db.load_path(p.as_ref())?;
        }
        Ok(db)
    }

    pub(crate) fn packages(&self) -> usize {
        self.npm.len() + self.pypi.len() + self.cargo.len()
    }

    /// The affected entries of `name` (already normalised) in `eco`.
    pub(crate) fn lookup(&self, eco: Ecosystem, name: &str) -> &[Affected] {
        let map = match eco {
            Ecosystem::Npm => &self.npm,
            Ecosystem::Pypi => &self.pypi,
            Ecosystem::Cargo => &self.cargo,
            Ecosystem::Oci => return &[],
        };
        map.get(name).map_or(&[], Vec::as_slice)
    }

    fn load_path(&mut self, path: &Path) -> Result<(), PolicyError> {
        let meta = fs::metadata(path)
            .map_err(|e| PolicyError::new(format!("OSV database {}: {e}", path.display())))?;
        if meta.is_dir() {
            return self.load_dir(path);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("zip") => self.load_zip(path),
            Some("json") => {
                let bytes = fs::read(path).map_err(|e| {
                    PolicyError::new(format!("OSV database {}: {e}", path.display()))
                })?;
                self.add_json(&bytes)
                    .map_err(|e| PolicyError::new(format!("OSV file {}: {e}", path.display())))
            }
            _ => Err(PolicyError::new(format!(
                "OSV database {}: expected a directory, a .zip or a .json file",
                path.display()
            ))),
        }
    }

    fn load_dir(&mut self, dir: &Path) -> Result<(), PolicyError> {
        let io =
            |e: std::io::Error| PolicyError::new(format!("OSV database {}: {e}", dir.display()));
        let mut entries = fs::read_dir(dir)
            .map_err(io)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        // A stable order keeps advisory numbering (and so finding order) reproducible.
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let ft = e.file_type().map_err(io)?;
            if ft.is_dir() {
                self.load_dir(&p)?;
            } else if p
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("json"))
            {
                let bytes = fs::read(&p)
                    .map_err(|e| PolicyError::new(format!("OSV file {}: {e}", p.display())))?;
                self.add_json(&bytes)
                    .map_err(|e| PolicyError::new(format!("OSV file {}: {e}", p.display())))?;
            }
        }
        Ok(())
    }

    fn load_zip(&mut self, path: &Path) -> Result<(), PolicyError> {
        let err = |e: &dyn std::fmt::Display| {
            PolicyError::new(format!("OSV archive {}: {e}", path.display()))
        };
        let file = fs::File::open(path).map_err(|e| err(&e))?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| err(&e))?;
        let mut buf = Vec::new();
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| err(&e))?;
            if !entry.is_file() || !entry.name().to_ascii_lowercase().ends_with(".json") {
                continue;
            }
            buf.clear();
            entry.read_to_end(&mut buf).map_err(|e| err(&e))?;
            let name = entry.name().to_string();
            self.add_json(&buf).map_err(|e| {
                PolicyError::new(format!("OSV archive {}: entry {name}: {e}", path.display()))
            })?;
        }
        Ok(())
    }

    /// Adds one OSV document.
    pub(crate) fn add_json(&mut self, bytes: &[u8]) -> Result<(), String> {
        let raw: RawAdvisory = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        self.add(raw);
        Ok(())
    }

    fn add(&mut self, raw: RawAdvisory) {
        if raw.withdrawn.as_ref().is_some_and(|w| !w.is_null()) {
            return;
        }
        let index = self.advisories.len() as u32;
        let mut kept = false;
        for a in raw.affected {
            let Some(pkg) = a.package else { continue };
            let eco = match pkg.ecosystem.as_str() {
                "npm" => Ecosystem::Npm,
                "PyPI" => Ecosystem::Pypi,
                "crates.io" => Ecosystem::Cargo,
                _ => continue,
            };
            let ranges = a
                .ranges
                .iter()
                .filter(|r| r.kind == "SEMVER" || r.kind == "ECOSYSTEM")
                .filter_map(|r| compile_range(eco, &r.events))
                .collect();
            let versions = a
                .versions
                .into_iter()
                .map(|v| match Parsed::parse(eco, &v) {
                    Some(p) => ListedVersion::Parsed(p),
                    None => ListedVersion::Raw(v.into()),
                })
                .collect();
            let map = match eco {
                Ecosystem::Npm => &mut self.npm,
                Ecosystem::Cargo => &mut self.cargo,
                _ => &mut self.pypi,
            };
            let name: Box<str> = normalise(eco, &pkg.name).into();
            map.entry(name).or_default().push(Affected {
                advisory: index,
                ranges,
                versions,
            });
            kept = true;
        }
        if !kept {
            return;
        }
        let malicious =
            raw.id.starts_with("MAL-") || raw.aliases.iter().any(|a| a.starts_with("MAL-"));
        let severity = severity_of(raw.database_specific.as_ref(), &raw.severity);
        self.advisories.push(Advisory {
            id: raw.id.into(),
            aliases: raw.aliases.into_iter().map(Into::into).collect(),
            summary: raw.summary.unwrap_or_default().into(),
            malicious,
            severity,
        });
    }
}

fn compile_range(eco: Ecosystem, events: &[RawEvent]) -> Option<Vec<Event>> {
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let (kind, v) = if let Some(v) = &e.introduced {
            (EventKind::Introduced, v)
        } else if let Some(v) = &e.fixed {
            (EventKind::Fixed, v)
        } else if let Some(v) = &e.last_affected {
            (EventKind::LastAffected, v)
        } else if let Some(v) = &e.limit {
            (EventKind::Limit, v)
        } else {
            continue;
        };
        let at = match (kind, v.as_str()) {
            (EventKind::Introduced, "0") => Bound::Zero,
            (EventKind::Limit, "*") => Bound::Infinity,
            _ => Bound::At(Parsed::parse(eco, v)?),
        };
        out.push(Event { kind, at });
    }
    out.sort_by(|a, b| cmp_bound(&a.at, &b.at));
    Some(out)
}

fn cmp_bound(a: &Bound, b: &Bound) -> Ordering {
    match (a, b) {
        (Bound::Zero, Bound::Zero) | (Bound::Infinity, Bound::Infinity) => Ordering::Equal,
        (Bound::Zero, _) | (_, Bound::Infinity) => Ordering::Less,
        (_, Bound::Zero) | (Bound::Infinity, _) => Ordering::Greater,
        (Bound::At(x), Bound::At(y)) => x.compare(y).unwrap_or(Ordering::Equal),
    }
}

/// `v` compared with a bound: `Greater` when `v` is above it.
fn cmp_to(v: &Parsed, b: &Bound) -> Ordering {
    match b {
        Bound::Zero => Ordering::Greater,
        Bound::Infinity => Ordering::Less,
        Bound::At(x) => v.compare(x).unwrap_or(Ordering::Less),
    }
}

impl Affected {
    /// Whether the version (as published, and parsed if it parses) is affected.
    pub(crate) fn contains(&self, raw: &str, v: Option<&Parsed>) -> bool {
        for listed in &self.versions {
            let hit = match (listed, v) {
                (ListedVersion::Parsed(l), Some(v)) => l.compare(v) == Some(Ordering::Equal),
                (ListedVersion::Raw(l), _) => **l == *raw,
                (ListedVersion::Parsed(_), None) => false,
            };
            if hit {
                return true;
            }
        }
        let Some(v) = v else { return false };
        self.ranges.iter().any(|events| in_range(v, events))
    }
}

fn in_range(v: &Parsed, events: &[Event]) -> bool {
    let mut affected = false;
    let mut limited = false;
    let mut below_limit = false;
    for e in events {
        let o = cmp_to(v, &e.at);
        match e.kind {
            EventKind::Introduced if o != Ordering::Less => affected = true,
            EventKind::Fixed if o != Ordering::Less => affected = false,
            EventKind::LastAffected if o == Ordering::Greater => affected = false,
            EventKind::Limit => {
                limited = true;
                below_limit |= o == Ordering::Less;
            }
            _ => {}
        }
    }
    affected && (!limited || below_limit)
}

fn severity_of(db: Option<&serde_json::Value>, scores: &[RawSeverity]) -> Option<Severity> {
    let named = db
        .and_then(|d| d.get("severity"))
        .and_then(|s| s.as_str())
        .and_then(|s| match s.to_ascii_uppercase().as_str() {
            "LOW" => Some(Severity::Low),
            "MODERATE" | "MEDIUM" => Some(Severity::Moderate),
            "HIGH" => Some(Severity::High),
            "CRITICAL" => Some(Severity::Critical),
            _ => None,
        });
    if named.is_some() {
        return named;
    }
    scores
        .iter()
        .filter(|s| s.kind == "CVSS_V3")
        .filter_map(|s| cvss3_base_score(&s.score))
        .map(|score| {
            if score >= 9.0 {
                Severity::Critical
            } else if score >= 7.0 {
                Severity::High
            } else if score >= 4.0 {
                Severity::Moderate
            } else {
                Severity::Low
            }
        })
        .max()
}

/// The CVSS v3.x base score of a vector (`CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H`),
/// per the v3.1 specification §7.1; `None` for an incomplete vector or a score of 0.
pub(crate) fn cvss3_base_score(vector: &str) -> Option<f64> {
    let mut parts = vector.split('/');
    if !parts.next()?.starts_with("CVSS:3") {
        return None;
    }
    let (mut av, mut ac, mut pr, mut ui, mut s, mut c, mut i, mut a) =
        (None, None, None, None, None, None, None, None);
    for p in parts {
        let (k, v) = p.split_once(':')?;
        match k {
            "AV" => av = Some(v),
            "AC" => ac = Some(v),
            "PR" => pr = Some(v),
            "UI" => ui = Some(v),
            "S" => s = Some(v),
            "C" => c = Some(v),
            "I" => i = Some(v),
            "A" => a = Some(v),
            _ => {}
        }
    }
    let changed = match s? {
        "U" => false,
        "C" => true,
        _ => return None,
    };
    let av = match av? {
        "N" => 0.85,
        "A" => 0.62,
        "L" => 0.55,
        "P" => 0.2,
        _ => return None,
    };
    let ac = match ac? {
        "L" => 0.77,
        "H" => 0.44,
        _ => return None,
    };
    let pr = match (pr?, changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let ui = match ui? {
        "N" => 0.85,
        "R" => 0.62,
        _ => return None,
    };
    let cia = |x: Option<&str>| match x? {
        "H" => Some(0.56),
        "L" => Some(0.22),
        "N" => Some(0.0),
        _ => None,
    };
    let iss = 1.0 - (1.0 - cia(c)?) * (1.0 - cia(i)?) * (1.0 - cia(a)?);
    let impact = if changed {
        7.52 * (iss - 0.029) - 3.25 * (iss - 0.02f64).powi(15)
    } else {
        6.42 * iss
    };
    if impact <= 0.0 {
        return None;
    }
    let exploitability = 8.22 * av * ac * pr * ui;
    let base = if changed {
        roundup((1.08 * (impact + exploitability)).min(10.0))
    } else {
        roundup((impact + exploitability).min(10.0))
    };
    Some(base)
}

/// CVSS v3.1 Roundup: the smallest one-decimal number ≥ x, robust to float noise.
fn roundup(x: f64) -> f64 {
    let int = (x * 100_000.0).round() as i64;
    if int % 10_000 == 0 {
        int as f64 / 100_000.0
    } else {
        (int / 10_000 + 1) as f64 / 10.0
    }
}

#[derive(Deserialize)]
struct RawAdvisory {
    id: String,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    withdrawn: Option<serde_json::Value>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    affected: Vec<RawAffected>,
    #[serde(default)]
    severity: Vec<RawSeverity>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawAffected {
    #[serde(default)]
    package: Option<RawPackage>,
    #[serde(default)]
    ranges: Vec<RawRange>,
    #[serde(default)]
    versions: Vec<String>,
}

#[derive(Deserialize)]
struct RawPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    introduced: Option<String>,
    fixed: Option<String>,
    last_affected: Option<String>,
    limit: Option<String>,
}

#[derive(Deserialize)]
struct RawSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvss3_scores_match_the_specification_examples() {
        let s = |v| cvss3_base_score(v);
        assert_eq!(s("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"), Some(9.8));
        assert_eq!(
            s("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"),
            Some(10.0)
        );
        assert_eq!(s("CVSS:3.0/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N"), Some(6.1));
        assert_eq!(s("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:N/A:N"), Some(5.5));
        assert_eq!(s("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:L/I:N/A:N"), Some(3.7));
        assert_eq!(s("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N"), None);
        assert_eq!(s("CVSS:3.1/AV:N"), None);
        assert_eq!(s("CVSS:4.0/AV:N/AC:L"), None);
    }

    #[test]
    fn ghsa_severity_names_win_over_scores() {
        let db = serde_json::json!({"severity": "MODERATE"});
        let scores = [RawSeverity {
            kind: "CVSS_V3".into(),
            score: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H".into(),
        }];
        assert_eq!(severity_of(Some(&db), &scores), Some(Severity::Moderate));
        assert_eq!(severity_of(None, &scores), Some(Severity::Critical));
        assert_eq!(severity_of(None, &[]), None);
    }
}
