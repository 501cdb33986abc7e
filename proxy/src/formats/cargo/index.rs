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

/// A crate name as the request spelled it: 1 to 128 ASCII letters, digits, `-` or `_`
/// (the public registry allows 64; others more), so that it is safe in paths and keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrateName(String);

impl CrateName {
    /// Validates `s`.
    pub fn parse(s: &str) -> Option<CrateName> {
        let ok = !s.is_empty()
            && s.len() <= 128
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
    pub name: CrateName,
    /// Its sha256: what the `.crate` file must hash to.
    pub cksum: Digest,
    /// Publish time (`pubtime`, Unix seconds), when the registry records it.
    pub published: Option<i64>,
}

/// An index file's versions, by version string.
pub type Releases = Arc<HashMap<String, Release>>;

/// Checks what an upstream sent as the index file of `crate_name`: UTF-8 lines, each empty
/// or a JSON object with a `name` that is this crate's (in any case), a string `vers` and a
/// 64-hex-digit `cksum`.
pub fn check(bytes: &[u8], crate_name: &CrateName) -> Result<(), String> {
    let want = crate_name.as_str().to_ascii_lowercase();
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
        let named = field("name").and_then(CrateName::parse);
        if named.is_none_or(|n| n.as_str().to_ascii_lowercase() != want) {
            return Err(format!(
                "index file line {} is not about crate {crate_name}",
                i + 1
            ));
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
pub(crate) fn releases_of(bytes: &[u8]) -> HashMap<String, Release> {
    let text = std::str::from_utf8(bytes).unwrap_or("");
    text.lines()
        .filter_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            let s = |k: &str| v.get(k).and_then(Value::as_str);
            Some((
                s("vers")?.to_string(),
                Release {
                    name: CrateName::parse(s("name")?)?,
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
///
/// Each line is evaluated quietly ([`Policy::what_if`]): a listing is not a request for
/// the versions it lists, and most index lines have no `pubtime`, so a cooldown would log
/// a warning per version per render. The download's own check is logged and counted.
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
        let d = policy.what_if(&facts(up, name, Some(vers), published));
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
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(CrateName::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn withhold_yanks_newly_blocked_lines_and_keeps_the_others_byte_for_byte() {
        let cfg = sluice_config::load_str(
            "[formats]\ncargo = true\n[[upstream]]\nname = \"crates\"\nformat = \"cargo\"\nurl = \"http://127.0.0.1:9/\"\n\
             [[policy.rule]]\nid = \"d\"\nkind = \"deny\"\nformat = \"cargo\"\npackage = \"x\"\nversions = \">=1.1.0\"\n",
            "test.toml",
            |_| None,
        )
        .unwrap();
        let engine = sluice_policy::Engine::new(&cfg.policy).unwrap();
        let policy = Policy::new(engine, &cfg.policy, None, Default::default());
        let up = Upstream::new(cfg.upstreams[0].clone(), false).unwrap();
        let ck = "a".repeat(64);
        let line = |v: &str, yanked: bool| {
            format!("{{\"name\":\"x\",\"vers\":\"{v}\",\"deps\":[],\"cksum\":\"{ck}\",\"features\":{{}},\"yanked\":{yanked}}}")
        };
        let text = format!(
            "{}\r\n{}\n{}\nnot json\n",
            line("1.0.0", false),
            line("1.1.0", false),
            line("1.2.0", true)
        );
        let (out, n) = withhold(text.as_bytes(), &policy, &up).unwrap();
        assert_eq!(n, 1, "1.2.0 was yanked already");
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], line("1.0.0", false));
        let yanked: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(
            (&yanked["vers"], &yanked["yanked"]),
            (&Value::from("1.1.0"), &Value::Bool(true))
        );
        assert_eq!(yanked["cksum"], Value::from(ck.clone()));
        assert_eq!(lines[2], line("1.2.0", true));
        assert_eq!(lines[3], "not json");
        // Nothing blocked: the upstream's bytes are served as they are.
        assert!(withhold(line("1.0.0", false).as_bytes(), &policy, &up).is_none());
    }

    #[test]
    fn index_files_are_checked_line_by_line() {
        let ck = "a".repeat(64);
        let good = format!(
            "{{\"name\":\"x\",\"vers\":\"1.0.0\",\"cksum\":\"{ck}\"}}\n\n{{\"name\":\"x\",\"vers\":\"1.0.1\",\"cksum\":\"{ck}\",\"pubtime\":\"2025-01-02T03:04:05Z\"}}\n"
        );
        let x = CrateName::parse("x").unwrap();
        check(good.as_bytes(), &x).unwrap();
        // Another crate's line, or a name that is not a crate name, in x's file.
        let other = format!("{{\"name\":\"y\",\"vers\":\"1.0.0\",\"cksum\":\"{ck}\"}}");
        assert!(check(other.as_bytes(), &x).is_err());
        let odd = format!("{{\"name\":\"\",\"vers\":\"1.0.0\",\"cksum\":\"{ck}\"}}");
        assert!(check(odd.as_bytes(), &x).is_err());
        let upper = format!("{{\"name\":\"X\",\"vers\":\"1.0.0\",\"cksum\":\"{ck}\"}}");
        check(upper.as_bytes(), &x).unwrap();
        let r = releases_of(good.as_bytes());
        assert_eq!(r.len(), 2);
        assert_eq!(r["1.0.1"].published, Some(1_735_787_045));
        assert_eq!(r["1.0.0"].published, None);
        assert!(check(b"<html>", &x).is_err());
        assert!(check(b"{\"name\":\"x\",\"vers\":\"1.0.0\",\"cksum\":\"abc\"}", &x).is_err());
        assert!(check(b"{\"name\":\"x\",\"cksum\":\"abc\"}", &x).is_err());
        assert!(check(&[0xff, 0xfe], &x).is_err());
    }
}
