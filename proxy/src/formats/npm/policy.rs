//! The dependency firewall on npm metadata: blocked versions are removed from packuments
//! and dist-tags that pointed at them are repointed to the highest allowed version, so
//! `npm install pkg` resolves to something allowed instead of failing.
//!
//! Applied to the rendered packument only when the policy blocks something in it; the
//! common case (nothing blocked) keeps the upstream's bytes and key order untouched.

use serde_json::{Map, Value};
use sluice_policy::semver::Version;
use sluice_policy::{Facts, Verdict};

use super::packument::RawObject;
use crate::error::ProxyError;
use crate::policy::Policy;
use crate::upstream::Upstream;

/// What the policy engine knows about `version` of `name`, from its version object and the
/// packument's `time` map.
pub fn facts<'a>(
    up: &'a Upstream,
    name: &'a str,
    version: Option<&'a str>,
    obj: Option<&'a Value>,
    published: Option<i64>,
) -> Facts<'a> {
    let license = obj.and_then(|o| o.get("license")).and_then(|l| {
        l.as_str()
            .or_else(|| l.get("type").and_then(|t| t.as_str()))
    });
    let has_install_script = obj.is_some_and(|o| {
        o.get("hasInstallScript").and_then(|h| h.as_bool()) == Some(true)
            || o.get("scripts")
                .and_then(|s| s.as_object())
                .is_some_and(|s| {
                    ["preinstall", "install", "postinstall"]
                        .iter()
                        .any(|k| s.contains_key(*k))
                })
    });
    Facts {
        ecosystem: sluice_policy::Ecosystem::Npm,
        upstream: up.name(),
        public_upstream: up.cfg.public,
        name,
        version,
        digest: None,
        published_unix: published,
        license,
        has_install_script,
    }
}

/// The publish time of `version` from a packument's `time` map.
pub fn published(doc: &Value, version: &str) -> Option<i64> {
    doc.get("time")
        .and_then(|t| t.get(version))
        .and_then(|t| t.as_str())
        .and_then(crate::timefmt::parse_rfc3339)
}

/// The policy's refusal (`403` naming the rule, or the namespace rule's `404`) of the
/// version `spec` (a version, or a dist-tag resolved in the unfiltered packument `doc`)
/// when the packument lists it and a rule blocks it, with the version `spec` resolved to;
/// `None` when it is not listed or allowed. Decided on the version's own facts: publish
/// time, license, install scripts.
pub fn blocked_version(
    doc: &[u8],
    policy: &Policy,
    up: &Upstream,
    name: &str,
    spec: &str,
) -> Option<(String, ProxyError)> {
    if policy.engine().is_empty() {
        return None;
    }
    let top = RawObject::parse(std::str::from_utf8(doc).ok()?).ok()?;
    let versions = RawObject::parse(top.get("versions")?.get()).ok()?;
    let (version, raw) = super::packument::resolve_version(&top, &versions, spec)?;
    let obj: Value = serde_json::from_str(raw.get()).ok()?;
    let published = top
        .get("time")
        .and_then(|t| RawObject::parse(t.get()).ok())
        .and_then(|t| t.get(&version))
        .and_then(|t| serde_json::from_str::<String>(t.get()).ok())
        .and_then(|t| crate::timefmt::parse_rfc3339(&t));
    let refusal = policy
        .check(&facts(up, name, Some(&version), Some(&obj), published))
        .err()?;
    Some((version, refusal))
}

/// `doc` without the versions `policy` blocks, and a one-line notice naming them (npm
/// prints a response's `npm-notice` header, so a user whose install then fails with
/// ETARGET sees why); `Ok(None)` when nothing is blocked.
pub fn filter(
    doc: &[u8],
    policy: &Policy,
    up: &Upstream,
    name: &str,
) -> Result<Option<(Vec<u8>, String)>, String> {
    if policy.engine().is_empty() {
        return Ok(None);
    }
    let mut v: Value =
        serde_json::from_slice(doc).map_err(|e| format!("packument is not JSON: {e}"))?;
    let Some(versions) = v.get("versions").and_then(|x| x.as_object()) else {
        return Ok(None);
    };
    let mut blocked = Vec::new();
    let mut why: Vec<String> = Vec::new();
    for (ver, obj) in versions {
        let f = facts(up, name, Some(ver), Some(obj), published(&v, ver));
        let d = policy.decide(&f);
        if d.verdict == Verdict::Block {
            let rule = d.rule.unwrap_or_default();
            let reason = d.reason.unwrap_or_default();
            if why.len() < 5 {
                why.push(format!(
                    "{name}@{ver} blocked by policy rule {rule}: {reason}"
                ));
            }
            blocked.push(ver.clone());
        }
    }
    if blocked.is_empty() {
        return Ok(None);
    }
    let more = blocked.len().saturating_sub(why.len());
    let mut notice = format!("sluice: {}", why.join("; "));
    if more > 0 {
        notice.push_str(&format!("; and {more} more blocked versions"));
    }
    if let Some(Value::Object(versions)) = v.get_mut("versions") {
        for b in &blocked {
            versions.remove(b);
        }
    }
    if let Some(Value::Object(time)) = v.get_mut("time") {
        for b in &blocked {
            time.remove(b);
        }
    }
    let allowed: Vec<Version> = v
        .get("versions")
        .and_then(|x| x.as_object())
        .map(|m| m.keys().filter_map(|k| Version::parse(k).ok()).collect())
        .unwrap_or_default();
    if let Some(Value::Object(tags)) = v.get_mut("dist-tags") {
        repoint(tags, &blocked, &allowed);
    }
    serde_json::to_vec(&v)
        .map(|b| Some((b, notice)))
        .map_err(|e| e.to_string())
}

/// Repoints every tag whose version is blocked to the highest allowed version (a stable
/// one unless the tag pointed at a prerelease); drops it when nothing is allowed.
fn repoint(tags: &mut Map<String, Value>, blocked: &[String], allowed: &[Version]) {
    let names: Vec<String> = tags.keys().cloned().collect();
    for tag in names {
        let Some(cur) = tags.get(&tag).and_then(|t| t.as_str()).map(str::to_string) else {
            continue;
        };
        if !blocked.contains(&cur) {
            continue;
        }
        let pre_ok = Version::parse(&cur).is_ok_and(|c| c.is_prerelease());
        let best = allowed
            .iter()
            .filter(|a| pre_ok || !a.is_prerelease())
            .max()
            .or_else(|| allowed.iter().max());
        match best {
            Some(b) => {
                tags.insert(tag, Value::String(b.to_string()));
            }
            None => {
                tags.remove(&tag);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_tags_move_to_the_highest_allowed_stable_version() {
        let mut tags = serde_json::json!({"latest": "2.0.0", "next": "3.0.0-rc.1", "old": "1.0.0"})
            .as_object()
            .cloned()
            .unwrap();
        let allowed: Vec<Version> = ["1.0.0", "1.5.0", "3.0.0-rc.0"]
            .iter()
            .map(|v| Version::parse(v).unwrap())
            .collect();
        repoint(&mut tags, &["2.0.0".into(), "3.0.0-rc.1".into()], &allowed);
        assert_eq!(tags["latest"], "1.5.0");
        assert_eq!(tags["next"], "3.0.0-rc.0");
        assert_eq!(tags["old"], "1.0.0");
        repoint(
            &mut tags,
            &["1.5.0".into(), "3.0.0-rc.0".into(), "1.0.0".into()],
            &[],
        );
        assert!(tags.is_empty());
    }
}
