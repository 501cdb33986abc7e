//! Pins: names (and tags or versions) whose content eviction and garbage collection never
//! remove, from `[[storage.pin]]` and from the admin API (kept in the index's `pins` tree).
//!
//! What a pin protects is computed when eviction runs, from the index as it is then:
//! - OCI: every tag record `upstream/repo:tag` whose repository and tag match → the
//!   manifest, and everything it references (config, layers, child manifests of an index);
//! - npm: the cached packuments of matching packages, and the tarballs of matching
//!   versions (found through their `dist.integrity` / `dist.shasum` aliases);
//! - PyPI: the cached simple pages (and JSON API documents) of matching projects, and their
//!   files of matching versions (the `files` records the pages left).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sluice_config::{Ecosystem, Format, PinConfig};
use sluice_policy::glob::Glob;

use super::index::{MetaRecord, TagRecord, Tree};
use super::Store;
use crate::digest::Digest;
use crate::hashes::Expect;

/// A pin with its globs compiled.
pub struct Pin {
    format: Format,
    name: Glob,
    tag: Option<Glob>,
}

pub(super) fn ecosystem(f: Format) -> Ecosystem {
    f.ecosystem()
}

impl Pin {
    /// Compiles a configured pin.
    pub fn new(c: &PinConfig) -> Pin {
        let eco = ecosystem(c.format);
        Pin {
            format: c.format,
            name: Glob::new(eco, &c.name),
            // Tags and versions compare as written.
            tag: c.tag.as_deref().map(|t| Glob::new(Ecosystem::Oci, t)),
        }
    }

    fn name_matches(&self, name: &str) -> bool {
        let n = sluice_policy::glob::normalise(ecosystem(self.format), name);
        self.name.matches(&n)
    }

    fn tag_matches(&self, tag: Option<&str>) -> bool {
        match (&self.tag, tag) {
            (None, _) => true,
            (Some(g), Some(t)) => g.matches(t),
            (Some(_), None) => false,
        }
    }
}

/// The index key of a pin added through the admin API.
fn pin_key(c: &PinConfig) -> String {
    format!(
        "{}\u{0}{}\u{0}{}",
        c.format.as_str(),
        c.name,
        c.tag.as_deref().unwrap_or("")
    )
}

/// A pin as the admin API stores and lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredPin {
    /// `oci`, `npm` or `pypi`.
    #[serde(serialize_with = "format_name")]
    pub format: Format,
    /// Name glob.
    pub name: String,
    /// Tag / version glob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

fn format_name<S: serde::Serializer>(f: &Format, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.as_str())
}

impl From<&StoredPin> for PinConfig {
    fn from(p: &StoredPin) -> PinConfig {
        PinConfig {
            format: p.format,
            name: p.name.clone(),
            tag: p.tag.clone(),
        }
    }
}

impl Store {
    /// Adds a run-time pin (kept across restarts).
    pub fn add_pin(&self, p: &StoredPin) -> anyhow::Result<()> {
        let c = PinConfig::from(p);
        self.index
            .put(Tree::Pins, pin_key(&c).as_bytes(), &serde_json::to_vec(p)?)?;
        self.index.flush()
    }

    /// Removes a run-time pin; returns whether it existed.
    pub fn remove_pin(&self, p: &StoredPin) -> anyhow::Result<bool> {
        let key = pin_key(&PinConfig::from(p));
        let existed = self.index.get(Tree::Pins, key.as_bytes())?.is_some();
        self.index.remove(Tree::Pins, key.as_bytes())?;
        self.index.flush()?;
        Ok(existed)
    }

    /// Run-time pins.
    pub fn stored_pins(&self) -> anyhow::Result<Vec<StoredPin>> {
        Ok(self
            .index
            .scan(Tree::Pins)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// The configured pins plus the run-time pins, compiled.
    pub fn pins(&self, configured: &[PinConfig]) -> anyhow::Result<Vec<Pin>> {
        let mut pins: Vec<Pin> = configured.iter().map(Pin::new).collect();
        pins.extend(
            self.stored_pins()?
                .iter()
                .map(|p| Pin::new(&PinConfig::from(p))),
        );
        Ok(pins)
    }

    /// Every digest the configured pins plus the run-time pins protect.
    pub fn protected(&self, configured: &[PinConfig]) -> anyhow::Result<HashSet<Digest>> {
        let pins = self.pins(configured)?;
        let mut out = HashSet::new();
        if pins.is_empty() {
            return Ok(out);
        }
        let formats: Vec<Format> = pins.iter().map(|p| p.format).collect();
        for item in self.items(&|f| formats.contains(&f))? {
            if pins.iter().any(|p| p.covers(&item)) {
                out.extend(item.digests);
            }
        }
        Ok(out)
    }

    /// Every named thing the index knows of in the formats `want` selects.
    pub fn items(&self, want: &dyn Fn(Format) -> bool) -> anyhow::Result<Vec<Item>> {
        let mut out = Vec::new();
        if want(Format::Oci) {
            for (k, v) in self.index.scan(Tree::Tags)? {
                let (Ok(key), Ok(rec)) = (
                    std::str::from_utf8(&k),
                    serde_json::from_slice::<TagRecord>(&v),
                ) else {
                    continue;
                };
                let Some((name, tag)) = key.rsplit_once(':') else {
                    continue;
                };
                let mut closure = HashSet::new();
                self.manifest_closure(rec.digest, &mut closure, 0);
                // The tagged manifest first.
                let mut digests = vec![rec.digest];
                digests.extend(closure.into_iter().filter(|d| *d != rec.digest));
                out.push(Item {
                    format: Format::Oci,
                    upstream: name.split_once('/').map_or("", |(u, _)| u).to_string(),
                    kind: ItemKind::Tag,
                    name: name.to_string(),
                    tag: Some(tag.to_string()),
                    key: key.to_string(),
                    digests,
                });
            }
        }
        let (npm, pypi, cargo) = (want(Format::Npm), want(Format::Pypi), want(Format::Cargo));
        if npm || pypi || cargo {
            for (k, v) in self.index.scan(Tree::Meta)? {
                let (Ok(key), Ok(rec)) = (
                    std::str::from_utf8(&k),
                    serde_json::from_slice::<MetaRecord>(&v),
                ) else {
                    continue;
                };
                if let Some(rest) = key.strip_prefix("npm/").filter(|_| npm) {
                    // npm/<upstream>/<name>/<full|abbrev>; names may hold one `/` (scopes).
                    let Some((upstream, rest)) = rest.split_once('/') else {
                        continue;
                    };
                    let Some((name, "full" | "abbrev")) = rest.rsplit_once('/') else {
                        continue;
                    };
                    out.push(Item {
                        format: Format::Npm,
                        upstream: upstream.to_string(),
                        kind: ItemKind::Document,
                        name: name.to_string(),
                        tag: None,
                        key: key.to_string(),
                        digests: vec![rec.digest],
                    });
                    if let Some(doc) = self.read_untracked(&rec.digest) {
                        for (version, expect) in npm_tarballs(&doc) {
                            if let Some(d) = self.resolve(&expect) {
                                out.push(Item {
                                    format: Format::Npm,
                                    upstream: upstream.to_string(),
                                    kind: ItemKind::Version,
                                    name: name.to_string(),
                                    tag: Some(version),
                                    key: String::new(),
                                    digests: vec![d],
                                });
                            }
                        }
                    }
                } else if let Some(rest) = key.strip_prefix("cargo/").filter(|_| cargo) {
                    // cargo/<upstream>/<index path>: the index file of the crate it ends in.
                    let Some((upstream, path)) = rest.split_once('/') else {
                        continue;
                    };
                    if path == "config.json" {
                        continue;
                    }
                    let name = path.rsplit('/').next().unwrap_or(path);
                    out.push(Item {
                        format: Format::Cargo,
                        upstream: upstream.to_string(),
                        kind: ItemKind::Document,
                        name: name.to_string(),
                        tag: None,
                        key: key.to_string(),
                        digests: vec![rec.digest],
                    });
                    if let Some(doc) = self.read_untracked(&rec.digest) {
                        for (version, d) in crate::formats::cargo::versions_of(&doc) {
                            if self.contains(&d) {
                                out.push(Item {
                                    format: Format::Cargo,
                                    upstream: upstream.to_string(),
                                    kind: ItemKind::Version,
                                    name: name.to_string(),
                                    tag: Some(version),
                                    key: String::new(),
                                    digests: vec![d],
                                });
                            }
                        }
                    }
                } else if let Some(rest) = key.strip_prefix("pypi/").filter(|_| pypi) {
                    // pypi/<upstream>/simple/<project>, and the JSON API's
                    // pypi/<upstream>/json/<project>[/<version>]/json.
                    let Some((upstream, rest)) = rest.split_once('/') else {
                        continue;
                    };
                    let project = if let Some(p) = rest.strip_prefix("simple/") {
                        p
                    } else if let Some(t) = rest.strip_prefix("json/") {
                        t.split('/').next().unwrap_or("")
                    } else {
                        continue;
                    };
                    if project.is_empty() {
                        continue;
                    }
                    out.push(Item {
                        format: Format::Pypi,
                        upstream: upstream.to_string(),
                        kind: ItemKind::Document,
                        name: project.to_string(),
                        tag: None,
                        key: key.to_string(),
                        digests: vec![rec.digest],
                    });
                }
            }
        }
        if pypi {
            #[derive(Deserialize)]
            struct FileFacts {
                project: String,
                #[serde(default)]
                version: Option<String>,
            }
            for (k, v) in self.index.scan(Tree::Files)? {
                let Ok(key) = std::str::from_utf8(&k) else {
                    continue;
                };
                // pypi/<upstream>/sha256/<hex>: the file's own digest.
                let Some((upstream, hex)) = key
                    .strip_prefix("pypi/")
                    .and_then(|r| r.split_once('/'))
                    .and_then(|(u, r)| Some((u, r.strip_prefix("sha256/")?)))
                else {
                    continue;
                };
                let Ok(d) = format!("sha256:{hex}").parse::<Digest>() else {
                    continue;
                };
                if !self.contains(&d) {
                    continue;
                }
                let Ok(f) = serde_json::from_slice::<FileFacts>(&v) else {
                    continue;
                };
                out.push(Item {
                    format: Format::Pypi,
                    upstream: upstream.to_string(),
                    kind: ItemKind::Version,
                    name: f.project,
                    tag: f.version,
                    key: String::new(),
                    digests: vec![d],
                });
            }
        }
        Ok(out)
    }

    /// Adds manifest `d` and everything it references to `out`.
    fn manifest_closure(&self, d: Digest, out: &mut HashSet<Digest>, depth: u8) {
        if !out.insert(d) {
            return;
        }
        let Some(bytes) = self.read_untracked(&d) else {
            return;
        };
        for r in manifest_references(&bytes) {
            if depth < 3 {
                self.manifest_closure(r, out, depth + 1);
            } else {
                out.insert(r);
            }
        }
    }
}

/// What [`Store::purge`] removes.
#[derive(Clone, Debug)]
pub enum PurgeTarget {
    /// One stored file.
    Digest(Digest),
    /// The items a name (and tag or version) glob selects, as a pin would, except that a
    /// tag or version selects only tags and release files, never documents.
    Name(StoredPin),
}

/// What a purge did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PurgeReport {
    /// Tags, versions and documents the name selected (0 for a digest).
    pub matched_items: usize,
    /// Files removed.
    pub removed_files: u64,
    /// Bytes they held.
    pub removed_bytes: u64,
    /// Tag and document records removed.
    pub removed_records: usize,
    /// Stored files of the purged items kept because another cached item or a pin still
    /// references them.
    pub kept_files: u64,
    /// Matched items left alone because a pin covers them.
    pub kept_pinned: usize,
    /// Index keys and digests of the documents whose records were removed (for the
    /// in-memory document cache to drop).
    #[serde(skip)]
    pub documents: Vec<(String, Digest)>,
}

impl Store {
    /// Removes what `target` names, serialised with eviction and cleanup. By name, pinned
    /// items are left alone and a file another cached item still references is kept; by
    /// digest, the file is removed whoever references it (an operator distrusts that file),
    /// unless it is pinned. Records go first, then the files through
    /// [`Store::remove`], so a reader that has the file open keeps its bytes and one that
    /// finds no record fetches again. Blocking.
    pub fn purge(
        &self,
        target: &PurgeTarget,
        configured: &[PinConfig],
    ) -> anyhow::Result<PurgeReport> {
        let _run = self.evicting.lock();
        let pins = self.pins(configured)?;
        let items = self.items(&|_| true)?;
        let pinned: Vec<bool> = items
            .iter()
            .map(|it| pins.iter().any(|p| p.covers(it)))
            .collect();
        let mut kept: HashSet<Digest> = items
            .iter()
            .zip(&pinned)
            .filter(|(_, &p)| p)
            .flat_map(|(it, _)| it.digests.iter().copied())
            .collect();
        let mut report = PurgeReport::default();
        let mut files: Vec<Digest> = Vec::new();
        let mut records: Vec<(Tree, &str)> = Vec::new();
        match target {
            PurgeTarget::Digest(d) => {
                if kept.contains(d) {
                    report.kept_files += u64::from(self.contains(d));
                } else {
                    files.push(*d);
                }
            }
            PurgeTarget::Name(p) => {
                let sel = Pin::new(&p.into());
                let mut chosen = vec![false; items.len()];
                let mut matched = HashSet::new();
                let mut pinned_matched = HashSet::new();
                for (i, it) in items.iter().enumerate() {
                    if !sel.purges(it) {
                        continue;
                    }
                    // An npm version is listed once per cached packument: count it once.
                    let id = (it.format, &it.upstream, &it.name, &it.tag, it.kind);
                    matched.insert(id);
                    if pinned[i] {
                        pinned_matched.insert(id);
                    } else {
                        chosen[i] = true;
                    }
                }
                report.matched_items = matched.len();
                report.kept_pinned = pinned_matched.len();
                for (it, _) in items.iter().zip(&chosen).filter(|(_, &c)| !c) {
                    kept.extend(it.digests.iter().copied());
                }
                let mut still_used = HashSet::new();
                for (it, _) in items.iter().zip(&chosen).filter(|(_, &c)| c) {
                    if !it.key.is_empty() {
                        let tree = match it.format {
                            Format::Oci => Tree::Tags,
                            _ => Tree::Meta,
                        };
                        records.push((tree, &it.key));
                        if it.kind == ItemKind::Document {
                            if let Some(d) = it.digests.first() {
                                report.documents.push((it.key.clone(), *d));
                            }
                        }
                    }
                    for d in &it.digests {
                        if kept.contains(d) {
                            if self.contains(d) {
                                still_used.insert(*d);
                            }
                        } else {
                            files.push(*d);
                        }
                    }
                }
                report.kept_files = still_used.len() as u64;
            }
        }
        records.sort_by(|a, b| a.1.cmp(b.1));
        records.dedup();
        for (tree, k) in &records {
            self.index.remove(*tree, k.as_bytes())?;
            if *tree == Tree::Tags {
                self.forget_pull(k)?;
            }
        }
        report.removed_records = records.len();
        files.sort();
        files.dedup();
        for d in &files {
            if let Some(n) = self.remove(d)? {
                super::evict::count_removal("purge", n);
                report.removed_files += 1;
                report.removed_bytes += n;
            }
        }
        self.index.flush()?;
        Ok(report)
    }
}

/// What an [`Item`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// An OCI tag: its manifest and everything that references.
    Tag,
    /// An npm or PyPI release file.
    Version,
    /// A metadata document (packument, simple page).
    Document,
}

/// A named thing in the store and the digests it consists of.
#[derive(Clone, Debug)]
pub struct Item {
    /// Its format.
    pub format: Format,
    /// The upstream it came from.
    pub upstream: String,
    /// What it is.
    pub kind: ItemKind,
    /// OCI: `upstream/repo`; npm: package; PyPI: project (normalised).
    pub name: String,
    /// OCI tag or package version.
    pub tag: Option<String>,
    /// Its index key (tags, documents), empty for release files.
    pub key: String,
    /// Stored or referenced content (manifest closures may name blobs not yet stored); for
    /// a tag, its manifest comes first.
    pub digests: Vec<Digest>,
}

impl Pin {
    /// Whether the pin covers `item`: its name matches (for OCI with or without the
    /// upstream prefix) and, for tags and versions, its tag glob. A pin covers the
    /// documents of every name it matches, whatever its tag glob.
    pub fn covers(&self, item: &Item) -> bool {
        if item.format != self.format {
            return false;
        }
        let repo = match item.format {
            Format::Oci => item.name.split_once('/').map_or(&*item.name, |(_, r)| r),
            _ => &item.name,
        };
        if !(self.name_matches(&item.name) || self.name_matches(repo)) {
            return false;
        }
        item.kind == ItemKind::Document || self.tag_matches(item.tag.as_deref())
    }

    /// Whether a purge by this name (and tag or version) removes `item`: as [`Pin::covers`],
    /// except that with a tag or version only tags and release files match (a purge of one
    /// version keeps the package's documents).
    pub fn purges(&self, item: &Item) -> bool {
        self.covers(item) && !(self.tag.is_some() && item.kind == ItemKind::Document)
    }
}

/// The digests a manifest or index references: `config`, `layers`, `manifests`, `blobs`.
pub fn manifest_references(bytes: &[u8]) -> Vec<Digest> {
    #[derive(Deserialize)]
    struct Desc {
        digest: String,
    }
    #[derive(Deserialize)]
    struct M {
        #[serde(default)]
        config: Option<Desc>,
        #[serde(default)]
        layers: Vec<Desc>,
        #[serde(default)]
        manifests: Vec<Desc>,
        #[serde(default)]
        blobs: Vec<Desc>,
    }
    let Ok(m) = serde_json::from_slice::<M>(bytes) else {
        return Vec::new();
    };
    m.config
        .into_iter()
        .chain(m.layers)
        .chain(m.manifests)
        .chain(m.blobs)
        .filter_map(|d| d.digest.parse().ok())
        .collect()
}

/// `(version, expected hash)` of every tarball a packument lists.
fn npm_tarballs(doc: &[u8]) -> Vec<(String, Expect)> {
    #[derive(Deserialize)]
    struct Dist {
        #[serde(default)]
        integrity: Option<String>,
        #[serde(default)]
        shasum: Option<String>,
    }
    #[derive(Deserialize)]
    struct V {
        #[serde(default)]
        dist: Option<Dist>,
    }
    #[derive(Deserialize)]
    struct P {
        #[serde(default)]
        versions: std::collections::HashMap<String, V>,
    }
    let Ok(p) = serde_json::from_slice::<P>(doc) else {
        return Vec::new();
    };
    p.versions
        .into_iter()
        .filter_map(|(v, e)| {
            let dist = e.dist?;
            let expect = dist
                .integrity
                .as_deref()
                .and_then(Expect::from_sri)
                .or_else(|| dist.shasum.as_deref().and_then(Expect::from_sha1_hex))?;
            Some((v, expect))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_references_cover_config_layers_and_children() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        let m = format!(
            r#"{{"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}},{{"digest":"bogus"}}]}}"#
        );
        let refs = manifest_references(m.as_bytes());
        assert_eq!(refs.len(), 2);
        let i = format!(r#"{{"manifests":[{{"digest":"{c}"}}]}}"#);
        assert_eq!(manifest_references(i.as_bytes()), vec![c.parse().unwrap()]);
        assert!(manifest_references(b"not json").is_empty());
    }

    /// A tag `up/<repo>:<tag>` whose manifest references `blobs`.
    fn tag(s: &Store, repo: &str, tag: &str, blobs: &[Digest]) -> Digest {
        let layers: Vec<_> = blobs
            .iter()
            .map(|d| serde_json::json!({ "digest": d.to_string() }))
            .collect();
        let m = serde_json::json!({ "layers": layers, "t": format!("{repo}:{tag}") });
        let d = s
            .put_bytes(&bytes::Bytes::from(serde_json::to_vec(&m).unwrap()))
            .unwrap();
        let rec = TagRecord {
            digest: d,
            fetched_at_ms: 0,
        };
        let key = format!("up/{repo}:{tag}");
        s.index
            .put(
                Tree::Tags,
                key.as_bytes(),
                &serde_json::to_vec(&rec).unwrap(),
            )
            .unwrap();
        d
    }

    fn by_name(format: Format, name: &str, tag: Option<&str>) -> PurgeTarget {
        PurgeTarget::Name(StoredPin {
            format,
            name: name.into(),
            tag: tag.map(str::to_string),
        })
    }

    #[test]
    fn purge_keeps_files_other_items_or_pins_use_and_leaves_pinned_items_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let blob = |b: &'static [u8]| s.put_bytes(&bytes::Bytes::from_static(b)).unwrap();
        let (shared, only_a, with_pinned, only_c) =
            (blob(b"shared"), blob(b"a"), blob(b"pinned too"), blob(b"c"));
        let ma = tag(&s, "team/a", "1", &[shared, only_a, with_pinned]);
        tag(&s, "team/b", "1", &[shared]);
        let mc = tag(&s, "team/c", "1", &[with_pinned, only_c]);
        let pins = [PinConfig {
            format: Format::Oci,
            name: "team/c".into(),
            tag: None,
        }];

        let r = s
            .purge(&by_name(Format::Oci, "team/a", Some("1")), &pins)
            .unwrap();
        assert_eq!(
            (r.matched_items, r.removed_files, r.removed_records),
            (1, 2, 1)
        );
        assert_eq!((r.kept_files, r.kept_pinned), (2, 0));
        assert!(!s.contains(&ma) && !s.contains(&only_a));
        assert!(s.contains(&shared) && s.contains(&with_pinned));
        assert!(s.index.get(Tree::Tags, b"up/team/a:1").unwrap().is_none());

        // A pinned item is left alone, by name or by one of its files.
        let r = s
            .purge(&by_name(Format::Oci, "team/c", None), &pins)
            .unwrap();
        assert_eq!((r.matched_items, r.kept_pinned, r.removed_files), (1, 1, 0));
        let r = s.purge(&PurgeTarget::Digest(only_c), &pins).unwrap();
        assert_eq!((r.removed_files, r.kept_files), (0, 1));
        assert!(s.contains(&mc) && s.contains(&only_c));
        assert!(s.index.get(Tree::Tags, b"up/team/c:1").unwrap().is_some());

        // Nothing matches: nothing removed.
        let r = s
            .purge(&by_name(Format::Oci, "team/zzz", None), &pins)
            .unwrap();
        assert_eq!(r, PurgeReport::default());
    }

    #[test]
    fn purging_an_npm_version_removes_only_its_tarball_and_a_missing_one_nothing() {
        use sha1::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let tgz = |b: &'static [u8]| {
            let d = s.put_bytes(&bytes::Bytes::from_static(b)).unwrap();
            let sha1 = hex::encode(sha1::Sha1::digest(b));
            s.put_alias(&Expect::from_sha1_hex(&sha1).unwrap(), &d)
                .unwrap();
            (d, sha1)
        };
        let ((t1, sha1), (t2, sha2)) = (tgz(b"tarball 1"), tgz(b"tarball 2"));
        let doc = serde_json::json!({ "versions": {
            "1.0.0": { "dist": { "shasum": sha1 } },
            "2.0.0": { "dist": { "shasum": sha2 } },
        }});
        let doc = s
            .put_bytes(&bytes::Bytes::from(serde_json::to_vec(&doc).unwrap()))
            .unwrap();
        // As the documents cache writes it (a JSON record naming the stored document).
        let rec = serde_json::json!({
            "digest": doc.to_string(), "content_type": "application/json", "fetched_at_ms": 0,
        });
        for form in ["full", "abbrev"] {
            s.index
                .put(
                    Tree::Meta,
                    format!("npm/up/leftish/{form}").as_bytes(),
                    &serde_json::to_vec(&rec).unwrap(),
                )
                .unwrap();
        }
        let r = s
            .purge(&by_name(Format::Npm, "leftish", Some("9.9.9")), &[])
            .unwrap();
        assert_eq!(r, PurgeReport::default());
        assert!(s.contains(&doc) && s.contains(&t1) && s.contains(&t2));

        let r = s
            .purge(&by_name(Format::Npm, "leftish", Some("1.0.0")), &[])
            .unwrap();
        assert_eq!(
            (r.matched_items, r.removed_files, r.removed_records),
            (1, 1, 0)
        );
        assert!(r.documents.is_empty());
        assert!(!s.contains(&t1) && s.contains(&t2) && s.contains(&doc));

        // The whole package: both documents (one stored file) and the other tarball.
        let r = s
            .purge(&by_name(Format::Npm, "leftish", None), &[])
            .unwrap();
        assert_eq!((r.removed_files, r.removed_records), (2, 2));
        assert_eq!(r.documents.len(), 2);
        assert!(!s.contains(&doc) && !s.contains(&t2));
        assert!(s.index.scan(Tree::Meta).unwrap().is_empty());
    }

    #[test]
    fn pin_globs_match_names_and_tags() {
        let p = Pin::new(&PinConfig {
            format: Format::Pypi,
            name: "Foo_Bar*".into(),
            tag: Some("1.*".into()),
        });
        assert!(p.name_matches("foo-bar-baz"));
        assert!(p.tag_matches(Some("1.2")));
        assert!(!p.tag_matches(Some("2.0")));
        assert!(!p.tag_matches(None));
    }
}
