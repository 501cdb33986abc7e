//! Packument JSON: rewriting `dist.tarball` to sluice's URL, deriving the abbreviated
//! ("corgi") form, and indexing tarballs by file name.
//!
//! Packuments can be many megabytes, and everything but `dist.tarball` must reach the
//! client unchanged (`dist.integrity`, `dist.signatures`, unknown fields, key order). So
//! documents are never parsed into a tree: each level is split into `(key, raw value)`
//! pairs that borrow from the input, only the path `versions.*.dist.tarball` is descended
//! into, and the output is the input's raw slices with the one string replaced.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The media type of the abbreviated form.
pub const CORGI: &str = "application/vnd.npm.install-v1+json";

/// Per-version fields the abbreviated form keeps (what the npm registry's corgi documents
/// carry, and what npm, pnpm and yarn read from them).
const CORGI_VERSION_FIELDS: &[&str] = &[
    "name",
    "version",
    "deprecated",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "acceptDependencies",
    "bin",
    "directories",
    "dist",
    "engines",
    "os",
    "cpu",
    "libc",
    "funding",
    "_hasShrinkwrap",
    "hasInstallScript",
];

/// A JSON object as `(key, raw value)` pairs in document order, borrowing from the input.
pub struct RawObject<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawObject<'a> {
    /// Parses `s`, which must be a JSON object.
    pub fn parse(s: &'a str) -> Result<RawObject<'a>, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// The value of `key` (the last one, as JavaScript reads duplicates).
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// The version `spec` names in a packument (`top`, its `versions` object): that version,
/// else the one its dist-tag `spec` points at; with the version string.
pub fn resolve_version<'a>(
    top: &RawObject<'a>,
    versions: &RawObject<'a>,
    spec: &str,
) -> Option<(String, &'a RawValue)> {
    match versions.get(spec) {
        Some(v) => Some((spec.to_string(), v)),
        None => {
            let tags = RawObject::parse(top.get("dist-tags")?.get()).ok()?;
            let target: String = serde_json::from_str(tags.get(spec)?.get()).ok()?;
            let v = versions.get(&target)?;
            Some((target, v))
        }
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<RawObject<'a>, M::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(16));
                while let Some((k, val)) = m.next_entry::<Key<'a>, &'a RawValue>()? {
                    v.push((k.0, val));
                }
                Ok(RawObject(v))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// Checks that an upstream document is a JSON object (what every npm document is).
pub fn check_object(bytes: &[u8]) -> Result<(), String> {
    let s = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    RawObject::parse(s)
        .map(|_| ())
        .map_err(|e| format!("not a JSON object: {e}"))
}

/// Writes `{"k":raw,...}`.
struct ObjWriter<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> ObjWriter<'o> {
    fn new(out: &'o mut Vec<u8>) -> ObjWriter<'o> {
        out.push(b'{');
        ObjWriter { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        // Serialising a str cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, k);
        self.out.push(b':');
    }

    fn raw(&mut self, k: &str, v: &RawValue) {
        self.key(k);
        self.out.extend_from_slice(v.get().as_bytes());
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// Where rewritten URLs point: tarballs at `<mount>/<name>/-/` + file name, attestations
/// (`dist.attestations.url`) that point at the upstream at
/// `<mount>/-/npm/v1/attestations/<name>@<version>`.
pub struct TarballBase<'b> {
    /// `<mount>/<name>/-/`.
    pub tarballs: &'b str,
    /// The package name.
    pub name: &'b str,
    /// The upstream's origin (`scheme://host[:port]`, as [`url::Origin`] writes it).
    pub upstream_origin: &'b str,
}

impl TarballBase<'_> {
    fn url_for(&self, origin: &str, version: &str) -> String {
        let file = served_file(origin, self.name, version);
        let enc = percent_encoding::utf8_percent_encode(&file, FILE_ENCODE);
        format!("{}{enc}", self.tarballs)
    }

    /// `<mount>`, from the tarball base.
    fn mount(&self) -> Option<&str> {
        self.tarballs
            .strip_suffix("/-/")?
            .strip_suffix(self.name)?
            .strip_suffix('/')
    }

    /// Sluice's URL for an attestations URL on the upstream (pacote fetches the URL's
    /// path from the registry it is configured with, so it must be below the mount).
    fn attestations_url(&self, url: &str) -> Option<String> {
        const API: &str = "/-/npm/v1/attestations/";
        let u = url::Url::parse(url).ok()?;
        if u.origin().ascii_serialization() != self.upstream_origin {
            return None;
        }
        let path = u.path();
        let spec = &path[path.find(API)? + API.len()..];
        if spec.is_empty() {
            return None;
        }
        Some(format!("{}{API}{spec}", self.mount()?))
    }
}

/// The file name sluice serves a version's tarball under: the last segment of its origin
/// URL when that is a `.tgz` name the tarball route accepts, else `<name>-<version>.tgz`
/// (GitHub Packages-style URLs end in a digest, not a file name). The origin URL itself is
/// looked up from the packument by this name ([`tarball_index`]).
pub fn served_file(origin: &str, name: &str, version: &str) -> String {
    match file_name(origin) {
        Some(f) if super::name::valid_file(&f) => f,
        _ => format!("{}-{version}.tgz", name.rsplit('/').next().unwrap_or(name)),
    }
}

/// Characters escaped in a file name put into a URL path.
const FILE_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'+')
    .remove(b'!');

/// The last path segment of a tarball URL, percent-decoded.
pub fn file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let last = path.rsplit('/').next()?;
    let d = percent_encoding::percent_decode_str(last)
        .decode_utf8()
        .ok()?;
    (!d.is_empty()).then(|| d.into_owned())
}

/// The full packument with every `versions.*.dist.tarball` pointing at sluice.
pub fn rewrite_full(doc: &[u8], base: &TarballBase<'_>) -> Result<Vec<u8>, String> {
    let s = std::str::from_utf8(doc).map_err(|e| format!("packument is not UTF-8: {e}"))?;
    let top = RawObject::parse(s).map_err(|e| format!("packument is not a JSON object: {e}"))?;
    let mut out = Vec::with_capacity(doc.len() + doc.len() / 16);
    let mut w = ObjWriter::new(&mut out);
    for (k, v) in &top.0 {
        if k == "versions" {
            w.key(k);
            write_versions(w.out, v, base, false);
        } else {
            w.raw(k, v);
        }
    }
    w.end();
    Ok(out)
}

/// The abbreviated form of a full packument, with tarballs pointing at sluice: `name`,
/// `modified`, `dist-tags`, `versions` with the install fields only.
pub fn abbreviate(doc: &[u8], base: &TarballBase<'_>) -> Result<Vec<u8>, String> {
    let s = std::str::from_utf8(doc).map_err(|e| format!("packument is not UTF-8: {e}"))?;
    let top = RawObject::parse(s).map_err(|e| format!("packument is not a JSON object: {e}"))?;
    let mut out = Vec::with_capacity(doc.len() / 2);
    let mut w = ObjWriter::new(&mut out);
    if let Some(n) = top.get("name") {
        w.raw("name", n);
    }
    let modified = top.get("modified").or_else(|| {
        top.get("time")
            .and_then(|t| RawObject::parse(t.get()).ok())
            .and_then(|t| t.get("modified"))
    });
    if let Some(m) = modified {
        w.raw("modified", m);
    }
    if let Some(t) = top.get("dist-tags") {
        w.raw("dist-tags", t);
    }
    if let Some(v) = top.get("versions") {
        w.key("versions");
        write_versions(w.out, v, base, true);
    }
    w.end();
    Ok(out)
}

fn write_versions(out: &mut Vec<u8>, versions: &RawValue, base: &TarballBase<'_>, corgi: bool) {
    let Ok(vs) = RawObject::parse(versions.get()) else {
        out.extend_from_slice(versions.get().as_bytes());
        return;
    };
    let mut w = ObjWriter::new(out);
    for (ver, v) in &vs.0 {
        w.key(ver);
        write_version(w.out, ver, v, base, corgi);
    }
    w.end();
}

/// One version object with its tarball rewritten; with `corgi`, reduced to the install
/// fields (and `hasInstallScript` computed from `scripts` as the registry does).
fn write_version(
    out: &mut Vec<u8>,
    version: &str,
    v: &RawValue,
    base: &TarballBase<'_>,
    corgi: bool,
) {
    let Ok(obj) = RawObject::parse(v.get()) else {
        out.extend_from_slice(v.get().as_bytes());
        return;
    };
    let mut w = ObjWriter::new(out);
    for (k, val) in &obj.0 {
        if corgi && !CORGI_VERSION_FIELDS.contains(&k.as_ref()) {
            continue;
        }
        if k == "dist" {
            w.key(k);
            write_dist(w.out, version, val, base);
        } else {
            w.raw(k, val);
        }
    }
    if corgi && obj.get("hasInstallScript").is_none() && has_install_script(&obj) {
        w.key("hasInstallScript");
        w.out.extend_from_slice(b"true");
    }
    w.end();
}

fn has_install_script(version: &RawObject<'_>) -> bool {
    let Some(scripts) = version.get("scripts") else {
        return false;
    };
    let Ok(s) = RawObject::parse(scripts.get()) else {
        return false;
    };
    ["preinstall", "install", "postinstall"]
        .iter()
        .any(|k| s.get(k).is_some())
}

fn write_dist(out: &mut Vec<u8>, version: &str, dist: &RawValue, base: &TarballBase<'_>) {
    let Ok(obj) = RawObject::parse(dist.get()) else {
        out.extend_from_slice(dist.get().as_bytes());
        return;
    };
    let mut w = ObjWriter::new(out);
    for (k, val) in &obj.0 {
        if k == "attestations" {
            w.key(k);
            write_attestations(w.out, val, base);
            continue;
        }
        let rewritten = (k == "tarball")
            .then(|| serde_json::from_str::<String>(val.get()).ok())
            .flatten()
            .map(|origin| base.url_for(&origin, version));
        match rewritten {
            Some(url) => {
                w.key(k);
                let _ = serde_json::to_writer(&mut *w.out, &url);
            }
            None => w.raw(k, val),
        }
    }
    w.end();
}

/// `dist.attestations` with its `url` pointing at sluice when it pointed at the upstream.
fn write_attestations(out: &mut Vec<u8>, att: &RawValue, base: &TarballBase<'_>) {
    let Ok(obj) = RawObject::parse(att.get()) else {
        out.extend_from_slice(att.get().as_bytes());
        return;
    };
    let mut w = ObjWriter::new(out);
    for (k, val) in &obj.0 {
        let rewritten = (k == "url")
            .then(|| serde_json::from_str::<String>(val.get()).ok())
            .flatten()
            .and_then(|url| base.attestations_url(&url));
        match rewritten {
            Some(url) => {
                w.key(k);
                let _ = serde_json::to_writer(&mut *w.out, &url);
            }
            None => w.raw(k, val),
        }
    }
    w.end();
}

/// One version's object (`spec` a version or a dist-tag) with its tarball rewritten.
pub fn version_doc(doc: &[u8], spec: &str, base: &TarballBase<'_>) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(doc).ok()?;
    let top = RawObject::parse(s).ok()?;
    let versions = RawObject::parse(top.get("versions")?.get()).ok()?;
    let (ver, version) = resolve_version(&top, &versions, spec)?;
    let mut out = Vec::with_capacity(version.get().len());
    write_version(&mut out, &ver, version, base, false);
    Some(out)
}

/// The `dist-tags` object of a packument.
pub fn dist_tags(doc: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(doc).ok()?;
    let top = RawObject::parse(s).ok()?;
    Some(top.get("dist-tags")?.get().as_bytes().to_vec())
}

/// Where a tarball comes from and what it must hash to, per the packument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarballEntry {
    /// The version it belongs to.
    pub version: String,
    /// `dist.tarball` as the upstream wrote it.
    pub url: String,
    /// `dist.integrity` (SRI).
    pub integrity: Option<String>,
    /// `dist.shasum` (sha1 hex).
    pub shasum: Option<String>,
    /// `license` (SPDX expression), for the policy.
    pub license: Option<String>,
    /// Has `preinstall`/`install`/`postinstall` scripts, for the policy.
    pub has_install_script: bool,
    /// Publish time from the packument's `time` map (Unix seconds), for the policy.
    pub published: Option<i64>,
}

#[derive(serde::Deserialize)]
struct VersionDist {
    dist: Option<Dist>,
    #[serde(default)]
    license: Option<serde_json::Value>,
    #[serde(default, rename = "hasInstallScript")]
    has_install_script: Option<bool>,
    #[serde(default)]
    scripts: Option<HashMap<String, serde_json::Value>>,
}

#[derive(serde::Deserialize)]
struct Dist {
    tarball: Option<String>,
    integrity: Option<String>,
    shasum: Option<String>,
}

/// Every tarball the packument of `name` names, by the file name sluice serves it under
/// ([`served_file`]). Malformed versions are skipped.
pub fn tarball_index(doc: &[u8], name: &str) -> HashMap<String, TarballEntry> {
    let mut map = HashMap::new();
    let Ok(s) = std::str::from_utf8(doc) else {
        return map;
    };
    let Ok(top) = RawObject::parse(s) else {
        return map;
    };
    let Some(versions) = top
        .get("versions")
        .and_then(|v| RawObject::parse(v.get()).ok())
    else {
        return map;
    };
    let times: HashMap<String, String> = top
        .get("time")
        .and_then(|t| serde_json::from_str(t.get()).ok())
        .unwrap_or_default();
    for (ver, v) in versions.0 {
        let Ok(vd) = serde_json::from_str::<VersionDist>(v.get()) else {
            continue;
        };
        let Some(d) = vd.dist else { continue };
        let license = vd.license.as_ref().and_then(|l| {
            l.as_str()
                .or_else(|| l.get("type").and_then(|t| t.as_str()))
                .map(str::to_string)
        });
        let has_install_script = vd.has_install_script == Some(true)
            || vd.scripts.as_ref().is_some_and(|s| {
                ["preinstall", "install", "postinstall"]
                    .iter()
                    .any(|k| s.contains_key(*k))
            });
        let published = times
            .get(ver.as_ref())
            .and_then(|t| crate::timefmt::parse_rfc3339(t));
        let Some(url) = d.tarball else { continue };
        let file = served_file(&url, name, &ver);
        map.insert(
            file,
            TarballEntry {
                version: ver.into_owned(),
                url,
                integrity: d.integrity,
                shasum: d.shasum,
                license,
                has_install_script,
                published,
            },
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"_id":"@s/p","name":"@s/p","dist-tags":{"latest":"1.0.0"},
      "versions":{
        "1.0.0":{"name":"@s/p","version":"1.0.0","readme":"long \"text\"","scripts":{"postinstall":"x"},
          "dependencies":{"a":"^1"},"dist":{"shasum":"ab","tarball":"https://up.example/@s/p/-/p-1.0.0.tgz",
          "integrity":"sha512-AAA=","signatures":[{"keyid":"k","sig":"s"}]}},
        "0.9.0":{"name":"@s/p","version":"0.9.0","dist":{"tarball":"https://up.example/@s/p/-/p-0.9.0.tgz","shasum":"cd"}}},
      "time":{"modified":"2024-01-01T00:00:00Z","1.0.0":"2023-01-01T00:00:00Z"},
      "readme":"top","unknown":{"k":[1,2,{"\u00e9":null}]}}"#;

    const BASE: TarballBase<'static> = TarballBase {
        tarballs: "http://s:5080/npmjs/@s/p/-/",
        name: "@s/p",
        upstream_origin: "https://up.example",
    };

    fn parse(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn full_rewrite_changes_only_tarball_urls() {
        let out = rewrite_full(DOC.as_bytes(), &BASE).unwrap();
        let (mut a, b) = (parse(DOC.as_bytes()), parse(&out));
        assert_eq!(
            b["versions"]["1.0.0"]["dist"]["tarball"],
            "http://s:5080/npmjs/@s/p/-/p-1.0.0.tgz"
        );
        assert_eq!(
            b["versions"]["0.9.0"]["dist"]["tarball"],
            "http://s:5080/npmjs/@s/p/-/p-0.9.0.tgz"
        );
        for v in ["1.0.0", "0.9.0"] {
            a["versions"][v]["dist"]["tarball"] = b["versions"][v]["dist"]["tarball"].clone();
        }
        assert_eq!(a, b, "everything but dist.tarball is kept");
        // Key order is kept too.
        let s = String::from_utf8(out).unwrap();
        assert!(s.find("\"_id\"").unwrap() < s.find("\"unknown\"").unwrap());
        assert!(s.find("\"1.0.0\":{").unwrap() < s.find("\"0.9.0\":{").unwrap());
    }

    #[test]
    fn abbreviated_form_keeps_install_fields() {
        let out = abbreviate(DOC.as_bytes(), &BASE).unwrap();
        let b = parse(&out);
        let keys: Vec<_> = b.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(b["modified"], "2024-01-01T00:00:00Z");
        let v = &b["versions"]["1.0.0"];
        assert!(v.get("readme").is_none() && v.get("scripts").is_none());
        assert_eq!(v["hasInstallScript"], true);
        assert_eq!(v["dependencies"]["a"], "^1");
        assert_eq!(v["dist"]["signatures"][0]["sig"], "s");
        assert_eq!(
            v["dist"]["tarball"],
            "http://s:5080/npmjs/@s/p/-/p-1.0.0.tgz"
        );
        assert!(b["versions"]["0.9.0"].get("hasInstallScript").is_none());
    }

    #[test]
    fn tarballs_are_indexed_by_file_name() {
        let idx = tarball_index(DOC.as_bytes(), "@s/p");
        let e = &idx["p-1.0.0.tgz"];
        assert_eq!(e.version, "1.0.0");
        assert_eq!(e.integrity.as_deref(), Some("sha512-AAA="));
        assert_eq!(idx["p-0.9.0.tgz"].shasum.as_deref(), Some("cd"));
        assert!(tarball_index(b"[1]", "@s/p").is_empty());
    }

    #[test]
    fn version_documents_and_dist_tags() {
        let v = parse(&version_doc(DOC.as_bytes(), "latest", &BASE).unwrap());
        assert_eq!(v["version"], "1.0.0");
        assert_eq!(
            v["dist"]["tarball"],
            "http://s:5080/npmjs/@s/p/-/p-1.0.0.tgz"
        );
        assert!(version_doc(DOC.as_bytes(), "2.0.0", &BASE).is_none());
        assert_eq!(
            parse(&dist_tags(DOC.as_bytes()).unwrap()),
            serde_json::json!({"latest": "1.0.0"})
        );
    }

    #[test]
    fn odd_file_names_are_escaped_and_not_objects_are_errors() {
        // A name the tarball route would not accept: served under `<name>-<version>.tgz`.
        assert_eq!(
            BASE.url_for("https://x/a/-/we%20ird.tgz?x=1", "1.0.0"),
            "http://s:5080/npmjs/@s/p/-/p-1.0.0.tgz"
        );
        assert_eq!(
            BASE.url_for("https://x/a/-/p+x-1.0.0.tgz?x=1", "1.0.0"),
            "http://s:5080/npmjs/@s/p/-/p+x-1.0.0.tgz"
        );
        assert!(rewrite_full(b"[]", &BASE).is_err());
        assert!(check_object(b"{\"a\":1}").is_ok());
        assert!(check_object(b"<html>").is_err());
    }

    #[test]
    fn tarball_urls_without_a_file_name_get_one_from_the_version() {
        // GitHub Packages style: `/download/@o/pkg/1.0.0/<sha>`.
        let doc = r#"{"name":"@s/p","versions":{"1.0.0":{"dist":{
          "tarball":"https://up.example/download/@s/p/1.0.0/0123abcd","shasum":"ab"}}}}"#;
        let out = parse(&rewrite_full(doc.as_bytes(), &BASE).unwrap());
        let url = out["versions"]["1.0.0"]["dist"]["tarball"]
            .as_str()
            .unwrap();
        assert_eq!(url, "http://s:5080/npmjs/@s/p/-/p-1.0.0.tgz");
        let idx = tarball_index(doc.as_bytes(), "@s/p");
        assert_eq!(
            idx["p-1.0.0.tgz"].url, "https://up.example/download/@s/p/1.0.0/0123abcd",
            "the origin URL is found under the name sluice serves"
        );
        let v = parse(&version_doc(doc.as_bytes(), "1.0.0", &BASE).unwrap());
        assert_eq!(v["dist"]["tarball"], url);
    }

    #[test]
    fn attestation_urls_on_the_upstream_point_at_sluice() {
        let doc = r#"{"name":"@s/p","versions":{
          "1.0.0":{"dist":{"tarball":"https://up.example/@s/p/-/p-1.0.0.tgz",
            "attestations":{"url":"https://up.example/-/npm/v1/attestations/@s%2fp@1.0.0",
              "provenance":{"predicateType":"https://slsa.dev/provenance/v1"}}}},
          "2.0.0":{"dist":{"tarball":"https://up.example/@s/p/-/p-2.0.0.tgz",
            "attestations":{"url":"https://elsewhere.example/-/npm/v1/attestations/@s%2fp@2.0.0"}}}}}"#;
        for out in [
            rewrite_full(doc.as_bytes(), &BASE).unwrap(),
            abbreviate(doc.as_bytes(), &BASE).unwrap(),
        ] {
            let out = parse(&out);
            let a = &out["versions"]["1.0.0"]["dist"]["attestations"];
            assert_eq!(
                a["url"],
                "http://s:5080/npmjs/-/npm/v1/attestations/@s%2fp@1.0.0"
            );
            assert_eq!(
                a["provenance"]["predicateType"],
                "https://slsa.dev/provenance/v1"
            );
            assert_eq!(
                out["versions"]["2.0.0"]["dist"]["attestations"]["url"],
                "https://elsewhere.example/-/npm/v1/attestations/@s%2fp@2.0.0",
                "another host's URL is left alone"
            );
        }
    }
}
