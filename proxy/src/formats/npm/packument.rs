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

/// Where rewritten tarball URLs point: `<mount>/<name>/-/` + file name.
pub struct TarballBase<'b>(pub &'b str);

impl TarballBase<'_> {
    fn url_for(&self, origin: &str) -> Option<String> {
        let file = file_name(origin)?;
        let enc = percent_encoding::utf8_percent_encode(&file, FILE_ENCODE);
        Some(format!("{}{enc}", self.0))
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
        write_version(w.out, v, base, corgi);
    }
    w.end();
}

/// One version object with its tarball rewritten; with `corgi`, reduced to the install
/// fields (and `hasInstallScript` computed from `scripts` as the registry does).
fn write_version(out: &mut Vec<u8>, v: &RawValue, base: &TarballBase<'_>, corgi: bool) {
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
            write_dist(w.out, val, base);
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

fn write_dist(out: &mut Vec<u8>, dist: &RawValue, base: &TarballBase<'_>) {
    let Ok(obj) = RawObject::parse(dist.get()) else {
        out.extend_from_slice(dist.get().as_bytes());
        return;
    };
    let mut w = ObjWriter::new(out);
    for (k, val) in &obj.0 {
        let rewritten = (k == "tarball")
            .then(|| serde_json::from_str::<String>(val.get()).ok())
            .flatten()
            .and_then(|origin| base.url_for(&origin));
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
    let version = match versions.get(spec) {
        Some(v) => v,
        None => {
            let tags = RawObject::parse(top.get("dist-tags")?.get()).ok()?;
            let target: String = serde_json::from_str(tags.get(spec)?.get()).ok()?;
            versions.get(&target)?
        }
    };
    let mut out = Vec::with_capacity(version.get().len());
    write_version(&mut out, version, base, false);
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

/// Every tarball a packument names, by file name. Malformed versions are skipped.
pub fn tarball_index(doc: &[u8]) -> HashMap<String, TarballEntry> {
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
        let Some(file) = file_name(&url) else {
            continue;
        };
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

    const BASE: TarballBase<'static> = TarballBase("http://s:5080/npmjs/@s/p/-/");

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
        let idx = tarball_index(DOC.as_bytes());
        let e = &idx["p-1.0.0.tgz"];
        assert_eq!(e.version, "1.0.0");
        assert_eq!(e.integrity.as_deref(), Some("sha512-AAA="));
        assert_eq!(idx["p-0.9.0.tgz"].shasum.as_deref(), Some("cd"));
        assert!(tarball_index(b"[1]").is_empty());
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
        assert_eq!(
            BASE.url_for("https://x/a/-/we%20ird.tgz?x=1").unwrap(),
            "http://s:5080/npmjs/@s/p/-/we%20ird.tgz"
        );
        assert!(rewrite_full(b"[]", &BASE).is_err());
        assert!(check_object(b"{\"a\":1}").is_ok());
        assert!(check_object(b"<html>").is_err());
    }
}
