//! Versions and version sets in each ecosystem's own syntax: npm versions and semver
//! ranges, PEP 440 versions and specifiers, OCI tags (globs) and manifest digests.

use std::cmp::Ordering;

use sluice_config::Ecosystem;

use crate::glob::Glob;
use crate::{pep440, semver};

/// A version parsed under its ecosystem's rules.
#[derive(Clone, Debug)]
pub(crate) enum Parsed {
    Npm(semver::Version),
    Pypi(pep440::Version),
}

impl Parsed {
    /// Parses `s` as a version of `eco`; OCI tags have no order, so they never parse.
    pub(crate) fn parse(eco: Ecosystem, s: &str) -> Option<Parsed> {
        match eco {
            // Cargo versions are SemVer 2.0, ordered as npm's.
            Ecosystem::Npm | Ecosystem::Cargo => semver::Version::parse(s).ok().map(Parsed::Npm),
            Ecosystem::Pypi => pep440::Version::parse(s).ok().map(Parsed::Pypi),
            Ecosystem::Oci => None,
        }
    }

    /// Orders two versions of the same ecosystem; `None` across ecosystems.
    pub(crate) fn compare(&self, other: &Parsed) -> Option<Ordering> {
        match (self, other) {
            (Parsed::Npm(a), Parsed::Npm(b)) => Some(a.cmp(b)),
            (Parsed::Pypi(a), Parsed::Pypi(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

/// A set of versions, as a rule or waiver writes it (`versions = "..."`).
#[derive(Clone, Debug)]
pub(crate) enum VersionSet {
    Npm(semver::Range),
    Pypi(pep440::Specifiers),
    /// An OCI tag glob.
    OciTag(Glob),
    /// An OCI manifest digest, `sha256:<64 hex>`, lower case.
    OciDigest(Box<str>),
}

/// The version facts of one artifact, parsed at most once per evaluation.
pub(crate) struct FactVersion<'a> {
    pub(crate) raw: Option<&'a str>,
    pub(crate) parsed: Option<&'a Parsed>,
    pub(crate) digest: Option<&'a str>,
}

impl VersionSet {
    pub(crate) fn parse(eco: Ecosystem, s: &str) -> Result<VersionSet, String> {
        match eco {
            Ecosystem::Npm => semver::Range::parse(s).map(VersionSet::Npm),
            Ecosystem::Cargo => semver::Range::parse_cargo(s).map(VersionSet::Npm),
            Ecosystem::Pypi => pep440::Specifiers::parse(s).map(VersionSet::Pypi),
            Ecosystem::Oci => {
                let t = s.trim();
                if let Some((alg, hex)) = t.split_once(':') {
                    let want = match alg {
                        "sha256" => 64,
                        "sha512" => 128,
                        _ => return Err(format!("invalid OCI digest {t:?}: unknown algorithm")),
                    };
                    if hex.len() != want || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!(
                            "invalid OCI digest {t:?}: expected {alg}: and {want} hex digits"
                        ));
                    }
                    return Ok(VersionSet::OciDigest(t.to_ascii_lowercase().into()));
                }
                if t.is_empty() {
                    return Err("empty OCI tag pattern".into());
                }
                Ok(VersionSet::OciTag(Glob::new(Ecosystem::Oci, t)))
            }
        }
    }

    /// Parses `s` for `eco` in a rule or waiver that names no format: its one text must mean
    /// the same versions in every ecosystem, so a bare Cargo version is that version
    /// (`=1.2.3`, as in npm and PEP 440), not Cargo's `^1.2.3`.
    pub(crate) fn parse_unformatted(eco: Ecosystem, s: &str) -> Result<VersionSet, String> {
        match eco {
            Ecosystem::Cargo => semver::Range::parse_cargo_exact(s).map(VersionSet::Npm),
            _ => VersionSet::parse(eco, s),
        }
    }

    /// Whether this set can say anything about `v` (an OCI digest set needs the digest,
    /// everything else needs a version or tag).
    pub(crate) fn applicable(&self, v: &FactVersion) -> bool {
        match self {
            VersionSet::OciDigest(_) => v.digest.is_some(),
            _ => v.raw.is_some(),
        }
    }

    /// Whether `v` is in the set. `include_prerelease` admits prereleases that the
    /// ecosystem's range semantics would otherwise leave out.
    pub(crate) fn matches(&self, v: &FactVersion, include_prerelease: bool) -> bool {
        match self {
            VersionSet::Npm(r) => match v.parsed {
                Some(Parsed::Npm(pv)) => r.matches(pv, include_prerelease),
                _ => false,
            },
            VersionSet::Pypi(s) => {
                let Some(raw) = v.raw else { return false };
                let pv = match v.parsed {
                    Some(Parsed::Pypi(pv)) => Some(pv),
                    _ => None,
                };
                s.matches(raw, pv, include_prerelease)
            }
            VersionSet::OciTag(g) => v.raw.is_some_and(|t| g.matches(t)),
            VersionSet::OciDigest(d) => v.digest.is_some_and(|x| x.eq_ignore_ascii_case(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fv(
        eco: Ecosystem,
        raw: Option<&'static str>,
        digest: Option<&'static str>,
    ) -> FactVersion<'static> {
        let parsed = raw
            .and_then(|r| Parsed::parse(eco, r))
            .map(|p| &*Box::leak(Box::new(p)));
        FactVersion {
            raw,
            parsed,
            digest,
        }
    }

    #[test]
    fn oci_sets_are_tag_globs_or_digests() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let tag = VersionSet::parse(Ecosystem::Oci, "3.*").unwrap();
        assert!(tag.matches(&fv(Ecosystem::Oci, Some("3.19"), None), false));
        assert!(!tag.matches(&fv(Ecosystem::Oci, Some("latest"), None), false));
        let dig = VersionSet::parse(Ecosystem::Oci, &d).unwrap();
        let leaked: &'static str = Box::leak(d.clone().into_boxed_str());
        assert!(dig.matches(&fv(Ecosystem::Oci, Some("3.19"), Some(leaked)), false));
        assert!(!dig.matches(&fv(Ecosystem::Oci, Some("3.19"), None), false));
        assert!(!dig.applicable(&fv(Ecosystem::Oci, Some("3.19"), None)));
        assert!(VersionSet::parse(Ecosystem::Oci, "sha256:abc").is_err());
        assert!(VersionSet::parse(Ecosystem::Oci, "md5:abc").is_err());
    }

    #[test]
    fn unparseable_versions_match_no_range() {
        let r = VersionSet::parse(Ecosystem::Npm, "*").unwrap();
        assert!(!r.matches(&fv(Ecosystem::Npm, Some("not-a-version"), None), true));
        let s = VersionSet::parse(Ecosystem::Pypi, ">=0").unwrap();
        assert!(!s.matches(&fv(Ecosystem::Pypi, Some("junk"), None), true));
    }
}
