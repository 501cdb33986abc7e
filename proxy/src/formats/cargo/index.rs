//! Cargo sparse index files: crate names, where a crate's file lives in the index
//! (`1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…`), reading a file's lines (one JSON object per
//! published version) and withdrawing the versions a rule blocks.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use sluice_policy::{Facts, Verdict};

use crate::digest::Digest;
use crate::docs::Doc;
use crate::policy::Policy;
use crate::upstream::Upstream;

/// A crate name as the request spelled it: 1 to 64 ASCII letters, digits, `-` or `_`
/// (what crates.io accepts), so that it is safe in paths and keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrateName(String);

impl CrateName {
    /// Validates `s`.
    pub fn parse(s: &str) -> Option<CrateName> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| CrateName(s.to_string()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's index file below the index root, lower case, as cargo asks for it.
    pub fn index_path(&self) -> String {
        let n = self.0.to_ascii_lowercase();
        match n.len() {
            1 => format!("1/{n}"),
            2 => format!("2/{n}"),
            3 => format!("3/{}/{n}", &n[..1]),
            _ => format!("{}/{}/{n}", &n[..2], &n[2..4]),
        }
    }

    /// The crate whose index file `path` is (`None` when the path is not one).
    pub fn from_index_path(path: &str) -> Option<CrateName> {
        let name = CrateName::parse(path.rsplit('/').next()?)?;
        (name.index_path() == path.to_ascii_lowercase()).then_some(name)
    }
}

impl fmt::Display for CrateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One published version, as its index line states it.
#[derive(Clone, Debug)]
pub struct Release {
    /// The crate's name as published (its case may differ from the request's).
    pub name: String,
    /// Its sha256: what the `.crate` file must hash to.
    pub cksum: Digest,
    /// Publish time (`pubtime`, Unix seconds), when the registry records it.
    pub published: Option<i64>,
}

/// An index file's versions, by version string.
pub type Releases = Arc<HashMap<String, Release>>;

/// Checks what an upstream sent as an index file: UTF-8 lines, each empty or a JSON object
/// with a string `name` and `vers` and a 64-hex-digit `cksum`.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "index file is not UTF-8".to_string())?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("index file line {} is not JSON: {e}", i + 1))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        if field("name").is_none() || field("vers").is_none() {
            return Err(format!("index file line {} has no name or vers", i + 1));
        }
        if field("cksum").and_then(parse_cksum).is_none() {
            return Err(format!(
                "index file line {} has no sha256 cksum (64 hex digits)",
                i + 1
            ));
        }
    }
    Ok(())
}

fn parse_cksum(hex: &str) -> Option<Digest> {
    format!("sha256:{}", hex.to_ascii_lowercase()).parse().ok()
}

/// The versions of a (checked) index file.
fn releases_of(bytes: &[u8]) -> HashMap<String, Release> {
    let text = std::str::from_utf8(bytes).unwrap_or("");
    text.lines()
        .filter_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            let s = |k: &str| v.get(k).and_then(Value::as_str);
            Some((
                s("vers")?.to_string(),
                Release {
                    name: s("name")?.to_string(),
                    cksum: parse_cksum(s("cksum")?)?,
                    published: s("pubtime").and_then(crate::timefmt::parse_rfc3339),
                },
            ))
        })
        .collect()
}

/// The versions of index file `doc`, parsed once per document digest: a download of one
/// crate of a hundred versions does not re-read the hundred lines.
pub fn releases(doc: &Doc) -> Releases {
    static CACHE: OnceLock<moka::sync::Cache<Digest, Releases>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        moka::sync::Cache::builder()
            .weigher(|_k: &Digest, v: &Releases| v.len().try_into().unwrap_or(u32::MAX))
            .max_capacity(1_000_000)
            .build()
    });
    if let Some(r) = cache.get(&doc.digest) {
        return r;
    }
    let r = Arc::new(releases_of(&doc.bytes));
    cache.insert(doc.digest, r.clone());
    r
}

/// What the policy engine knows about `version` of crate `name`.
pub fn facts<'a>(
    up: &'a Upstream,
    name: &'a str,
    version: Option<&'a str>,
    published: Option<i64>,
) -> Facts<'a> {
    Facts {
        ecosystem: sluice_policy::Ecosystem::Cargo,
        upstream: up.name(),
        public_upstream: up.cfg.public,
        name,
        version,
        digest: None,
        published_unix: published,
        license: None,
        has_install_script: false,
    }
}

/// The index file with every version a rule blocks marked `"yanked": true`, and how many
/// were; `None` when nothing is blocked (the upstream's bytes are served unchanged).
///
/// Yanked rather than removed: cargo never picks a yanked version for a new resolution, so
/// a cooldown or a denied release resolves to the newest allowed one, while a `Cargo.lock`
/// that pins a blocked version still finds it, asks for the `.crate`, and gets the `403`
/// that names the rule (a removed line would fail with "failed to select a version",
/// naming nothing).
pub fn withhold(bytes: &[u8], policy: &Policy, up: &Upstream) -> Option<(Vec<u8>, usize)> {
    if policy.engine().is_empty() {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let mut out = String::with_capacity(text.len() + 64);
    let mut blocked = 0;
    for line in text.lines() {
        let mut v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        let s = |k: &str| v.get(k).and_then(Value::as_str);
        let (Some(name), Some(vers)) = (s("name"), s("vers")) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let published = s("pubtime").and_then(crate::timefmt::parse_rfc3339);
        let d = policy.decide(&facts(up, name, Some(vers), published));
        if d.verdict == Verdict::Block && v.get("yanked") != Some(&Value::Bool(true)) {
            blocked += 1;
            v["yanked"] = Value::Bool(true);
            out.push_str(&v.to_string());
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    (blocked > 0).then(|| (out.into_bytes(), blocked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_paths_follow_the_sparse_layout() {
        let p = |n: &str| CrateName::parse(n).unwrap().index_path();
        assert_eq!(p("a"), "1/a");
        assert_eq!(p("ab"), "2/ab");
        assert_eq!(p("abc"), "3/a/abc");
        assert_eq!(p("Serde_JSON"), "se/rd/serde_json");
        let from = |s: &str| CrateName::from_index_path(s).map(|n| n.0);
        assert_eq!(from("se/rd/serde_json").as_deref(), Some("serde_json"));
        assert_eq!(from("3/a/abc").as_deref(), Some("abc"));
        assert_eq!(from("3/b/abc"), None);
        assert_eq!(from("se/re/serde"), None);
        assert_eq!(from("1/ab"), None);
        assert_eq!(from("../../etc/passwd"), None);
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(CrateName::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn index_files_are_checked_line_by_line() {
        let ck = "a".repeat(64);
        let good = format!(
            "{{\"name\":\"x\",\"vers\":\"1.0.0\",\"cksum\":\"{ck}\"}}\n\n{{\"name\":\"x\",\"vers\":\"1.0.1\",\"cksum\":\"{ck}\",\"pubtime\":\"2025-01-02T03:04:05Z\"}}\n"
        );
        check(good.as_bytes()).unwrap();
        let r = releases_of(good.as_bytes());
        assert_eq!(r.len(), 2);
        assert_eq!(r["1.0.1"].published, Some(1_735_787_045));
        assert_eq!(r["1.0.0"].published, None);
        assert!(check(b"<html>").is_err());
        assert!(check(b"{\"name\":\"x\",\"vers\":\"1.0.0\",\"cksum\":\"abc\"}").is_err());
        assert!(check(b"{\"name\":\"x\",\"cksum\":\"abc\"}").is_err());
        assert!(check(&[0xff, 0xfe]).is_err());
    }
}
