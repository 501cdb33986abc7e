//! npm versions and ranges, with node-semver's semantics (the `semver` package npm itself
//! uses): the same desugaring of tilde, caret, x- and hyphen ranges, and the same
//! prerelease rule, so a range in a rule means exactly what it means in `package.json`.
//!
//! Versions are parsed the way npm parses what a registry lists: `major.minor.patch`, an
//! optional `-prerelease` and `+build` (ignored for ordering and matching), with a leading
//! `v` or `=` tolerated.

use std::cmp::Ordering;
use std::fmt;

/// One dot-separated prerelease identifier.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ident {
    // Numeric identifiers sort before alphanumeric ones (SemVer §11.4.3): variant order.
    Num(u64),
    Alpha(Box<str>),
}

/// A semantic version as npm understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Ident>,
}

impl Version {
    /// Parses `1.2.3`, `1.2.3-beta.1`, `v1.2.3+build.5` (build metadata is dropped).
    pub fn parse(s: &str) -> Result<Version, String> {
        let t = s.trim();
        let t = t.strip_prefix('=').unwrap_or(t).trim_start();
        let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
        let p = parse_partial(t).map_err(|e| format!("invalid npm version {s:?}: {e}"))?;
        match (p.major, p.minor, p.patch) {
            (Some(major), Some(minor), Some(patch)) => Ok(Version {
                major,
                minor,
                patch,
                pre: p.pre,
            }),
            _ => Err(format!(
                "invalid npm version {s:?}: expected major.minor.patch"
            )),
        }
    }

    fn new(major: u64, minor: u64, patch: u64) -> Version {
        Version {
            major,
            minor,
            patch,
            pre: Vec::new(),
        }
    }

    /// `major.minor.patch-0`: the lowest version of that tuple, used as an exclusive bound.
    fn floor(major: u64, minor: u64, patch: u64) -> Version {
        Version {
            major,
            minor,
            patch,
            pre: vec![Ident::Num(0)],
        }
    }

    /// Whether this is a prerelease (`1.0.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    fn same_tuple(&self, other: &Version) -> bool {
        (self.major, self.minor, self.patch) == (other.major, other.minor, other.patch)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                // A prerelease sorts before its release.
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        for (i, id) in self.pre.iter().enumerate() {
            f.write_str(if i == 0 { "-" } else { "." })?;
            match id {
                Ident::Num(n) => write!(f, "{n}")?,
                Ident::Alpha(s) => f.write_str(s)?,
            }
        }
        Ok(())
    }
}

/// A possibly partial version from a range: `1`, `1.2`, `1.x`, `*`, `1.2.3-rc.1`.
#[derive(Debug)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: Vec<Ident>,
}

fn parse_partial(s: &str) -> Result<Partial, String> {
    let (s, _build) = match s.split_once('+') {
        Some((v, b)) => {
            if b.is_empty() || !b.split('.').all(valid_ident) {
                return Err("invalid build metadata".into());
            }
            (v, Some(b))
        }
        None => (s, None),
    };
    let (core, pre) = match s.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (s, None),
    };
    let mut parts = core.split('.');
    let mut nums = [None; 3];
    let mut count = 0;
    for (i, slot) in nums.iter_mut().enumerate() {
        match parts.next() {
            None => break,
            Some(p) => {
                count = i + 1;
                *slot = parse_component(p)?;
            }
        }
    }
    if parts.next().is_some() {
        return Err("more than three version components".into());
    }
    if count == 0 || core.is_empty() {
        return Err("empty version".into());
    }
    // Once a component is a wildcard, everything after it is too (`1.x.3` means `1.x`).
    let mut wild = false;
    for n in nums.iter_mut() {
        if wild {
            *n = None;
        }
        if n.is_none() {
            wild = true;
        }
    }
    let pre = match pre {
        None => Vec::new(),
        Some(p) => {
            if count < 3 || nums[2].is_none() {
                return Err("a prerelease needs a full major.minor.patch".into());
            }
            if p.is_empty() {
                return Err("empty prerelease".into());
            }
            p.split('.').map(parse_ident).collect::<Result<_, _>>()?
        }
    };
    Ok(Partial {
        major: nums[0],
        minor: nums[1],
        patch: nums[2],
        pre,
    })
}

fn parse_component(p: &str) -> Result<Option<u64>, String> {
    if matches!(p, "x" | "X" | "*") {
        return Ok(None);
    }
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{p:?} is not a number or x"));
    }
    p.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("{p:?} is too large"))
}

fn valid_ident(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn parse_ident(p: &str) -> Result<Ident, String> {
    if !valid_ident(p) {
        return Err(format!("invalid prerelease identifier {p:?}"));
    }
    if p.bytes().all(|b| b.is_ascii_digit()) {
        // Leading zeros are invalid in SemVer; registries have published such versions
        // anyway, so keep them as text rather than refuse to order them.
        if p.len() > 1 && p.starts_with('0') {
            return Ok(Ident::Alpha(p.into()));
        }
        if let Ok(n) = p.parse() {
            return Ok(Ident::Num(n));
        }
    }
    Ok(Ident::Alpha(p.into()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

#[derive(Clone, Debug)]
enum Comparator {
    /// `*`: every release (but no prerelease, by the prerelease rule).
    Any,
    Cmp(Op, Version),
}

impl Comparator {
    fn test(&self, v: &Version) -> bool {
        match self {
            Comparator::Any => true,
            Comparator::Cmp(op, c) => {
                let o = v.cmp(c);
                match op {
                    Op::Lt => o == Ordering::Less,
                    Op::Le => o != Ordering::Greater,
                    Op::Gt => o == Ordering::Greater,
                    Op::Ge => o != Ordering::Less,
                    Op::Eq => o == Ordering::Equal,
                }
            }
        }
    }
}

/// An npm range: `||`-separated sets of whitespace-separated comparators.
#[derive(Clone, Debug)]
pub struct Range {
    sets: Vec<Vec<Comparator>>,
}

impl Range {
    /// Parses a range as `semver.Range` does (`^1.2.3 || >=2.0.0 <3`, `1.2.x`, `1 - 2`, `~1`).
    pub fn parse(s: &str) -> Result<Range, String> {
        let sets = s
            .split("||")
            .map(|set| parse_set(set).map_err(|e| format!("invalid npm range {s:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Range { sets })
    }

    /// Parses a Cargo version requirement (`1.2`, `^1.2.3`, `>=1.0, <1.4`, `~0.3`, `=1.0.1`,
    /// `1.2.*`): comma-separated comparators that must all hold, a bare version meaning
    /// `^version` (unlike npm, where it means exactly that version). Read as the npm range
    /// with the same meaning.
    pub fn parse_cargo(s: &str) -> Result<Range, String> {
        Range::cargo(s, "^")
    }

    /// [`Range::parse_cargo`] with a bare version meaning exactly that version (`=`), as in
    /// npm and PEP 440: for a rule or waiver that names no format, whose one `versions`
    /// text must mean the same versions in every ecosystem.
    pub fn parse_cargo_exact(s: &str) -> Result<Range, String> {
        Range::cargo(s, "=")
    }

    fn cargo(s: &str, bare: &str) -> Result<Range, String> {
        // `1.2.*`, `1.x`: a wildcard in the numbers (not an `x` of a prerelease or build).
        let is_wildcard = |p: &str| {
            p.split(['-', '+'])
                .next()
                .unwrap_or(p)
                .contains(['*', 'x', 'X'])
        };
        let bad = |m: &str| Err(format!("invalid Cargo version requirement {s:?}: {m}"));
        if s.contains("||") {
            return bad("`||` is not Cargo syntax; write one rule per range");
        }
        let mut npm = Vec::new();
        for part in s.split(',') {
            let p = part.trim();
            // One comparator: an operator and a version, nothing else.
            let words: Vec<&str> = p.split_whitespace().collect();
            if words.len() > 2 || (words.len() == 2 && !OPS.contains(&words[0])) {
                return bad("comparators are separated by commas");
            }
            if p.starts_with("~>") {
                return bad("`~>` is not Cargo syntax (use `~`)");
            }
            match p.bytes().next() {
                None => return bad("empty comparator"),
                // A wildcard (`1.2.*`) is its own range: `1.2.*` is `>=1.2.0, <1.3.0`.
                Some(b'0'..=b'9') if is_wildcard(p) => npm.push(p.to_string()),
                Some(b'0'..=b'9') => npm.push(format!("{bare}{p}")),
                Some(_) => npm.push(p.to_string()),
            }
        }
        let set = parse_set(&npm.join(" "))
            .map_err(|e| format!("invalid Cargo version requirement {s:?}: {e}"))?;
        Ok(Range { sets: vec![set] })
    }

    /// Whether `v` satisfies the range. Without `include_prerelease`, a prerelease only
    /// satisfies a comparator set in which some comparator names a prerelease of the same
    /// `major.minor.patch` (node-semver's rule: opting into `1.2.3-beta` does not opt into
    /// every prerelease of every later version).
    pub fn matches(&self, v: &Version, include_prerelease: bool) -> bool {
        self.sets.iter().any(|set| {
            if !set.iter().all(|c| c.test(v)) {
                return false;
            }
            if !v.is_prerelease() || include_prerelease {
                return true;
            }
            set.iter().any(|c| match c {
                Comparator::Cmp(_, cv) => cv.is_prerelease() && cv.same_tuple(v),
                Comparator::Any => false,
            })
        })
    }
}

const OPS: [&str; 8] = ["<=", ">=", "~>", "<", ">", "=", "~", "^"];

fn parse_set(set: &str) -> Result<Vec<Comparator>, String> {
    let words: Vec<&str> = set.split_whitespace().collect();
    if words.len() == 3 && words[1] == "-" {
        return hyphen(words[0], words[2]);
    }
    // node-semver glues an operator to the version after it: `>= 1.2.3` is `>=1.2.3`.
    let mut tokens: Vec<String> = Vec::new();
    let mut pending = String::new();
    for w in words {
        if OPS.contains(&w) {
            if !pending.is_empty() {
                return Err(format!("operator {pending:?} without a version"));
            }
            pending = w.to_string();
        } else {
            tokens.push(std::mem::take(&mut pending) + w);
        }
    }
    if !pending.is_empty() {
        return Err(format!("operator {pending:?} without a version"));
    }
    let mut out = Vec::new();
    for t in &tokens {
        expand(t, &mut out)?;
    }
    if out.is_empty() {
        // An empty set is `*`.
        out.push(Comparator::Any);
    }
    Ok(out)
}

fn strip_v(s: &str) -> &str {
    let s = s.trim_start_matches('=');
    s.strip_prefix(['v', 'V']).unwrap_or(s)
}

fn ge(v: Version) -> Comparator {
    Comparator::Cmp(Op::Ge, v)
}
fn lt(v: Version) -> Comparator {
    Comparator::Cmp(Op::Lt, v)
}

fn hyphen(from: &str, to: &str) -> Result<Vec<Comparator>, String> {
    let f = parse_partial(strip_v(from))?;
    let t = parse_partial(strip_v(to))?;
    let mut out = Vec::new();
    match (f.major, f.minor, f.patch) {
        (None, _, _) => {}
        (Some(m), None, _) => out.push(ge(Version::new(m, 0, 0))),
        (Some(m), Some(n), None) => out.push(ge(Version::new(m, n, 0))),
        (Some(m), Some(n), Some(p)) => out.push(ge(Version {
            major: m,
            minor: n,
            patch: p,
            pre: f.pre,
        })),
    }
    match (t.major, t.minor, t.patch) {
        (None, _, _) => {}
        (Some(m), None, _) => out.push(lt(Version::floor(m + 1, 0, 0))),
        (Some(m), Some(n), None) => out.push(lt(Version::floor(m, n + 1, 0))),
        (Some(m), Some(n), Some(p)) => out.push(Comparator::Cmp(
            Op::Le,
            Version {
                major: m,
                minor: n,
                patch: p,
                pre: t.pre,
            },
        )),
    }
    if out.is_empty() {
        out.push(Comparator::Any);
    }
    Ok(out)
}

/// Desugars one comparator token into primitive comparators, following node-semver's
/// `replaceTilde`, `replaceCaret` and `replaceXRange`.
fn expand(tok: &str, out: &mut Vec<Comparator>) -> Result<(), String> {
    let (op, rest) = OPS
        .iter()
        .find_map(|op| tok.strip_prefix(op).map(|r| (*op, r)))
        .unwrap_or(("", tok));
    let rest = rest.strip_prefix(['v', 'V']).unwrap_or(rest);
    let p = parse_partial(rest)?;
    match op {
        "~" | "~>" => {
            match (p.major, p.minor, p.patch) {
                (None, _, _) => out.push(Comparator::Any),
                (Some(m), None, _) => {
                    out.push(ge(Version::new(m, 0, 0)));
                    out.push(lt(Version::floor(m + 1, 0, 0)));
                }
                (Some(m), Some(n), None) => {
                    out.push(ge(Version::new(m, n, 0)));
                    out.push(lt(Version::floor(m, n + 1, 0)));
                }
                (Some(m), Some(n), Some(pt)) => {
                    out.push(ge(Version {
                        major: m,
                        minor: n,
                        patch: pt,
                        pre: p.pre,
                    }));
                    out.push(lt(Version::floor(m, n + 1, 0)));
                }
            }
            Ok(())
        }
        "^" => {
            match (p.major, p.minor, p.patch) {
                (None, _, _) => out.push(Comparator::Any),
                (Some(m), None, _) => {
                    out.push(ge(Version::new(m, 0, 0)));
                    out.push(lt(Version::floor(m + 1, 0, 0)));
                }
                (Some(m), Some(n), None) => {
                    out.push(ge(Version::new(m, n, 0)));
                    out.push(lt(if m == 0 {
                        Version::floor(0, n + 1, 0)
                    } else {
                        Version::floor(m + 1, 0, 0)
                    }));
                }
                (Some(m), Some(n), Some(pt)) => {
                    out.push(ge(Version {
                        major: m,
                        minor: n,
                        patch: pt,
                        pre: p.pre,
                    }));
                    out.push(lt(match (m, n) {
                        (0, 0) => Version::floor(0, 0, pt + 1),
                        (0, _) => Version::floor(0, n + 1, 0),
                        _ => Version::floor(m + 1, 0, 0),
                    }));
                }
            }
            Ok(())
        }
        _ => {
            let op = match op {
                "<" => Some(Op::Lt),
                "<=" => Some(Op::Le),
                ">" => Some(Op::Gt),
                ">=" => Some(Op::Ge),
                _ => None, // "" and "=": exact or x-range
            };
            xrange(op, p, out);
            Ok(())
        }
    }
}

fn xrange(op: Option<Op>, p: Partial, out: &mut Vec<Comparator>) {
    let (m, n) = match (p.major, p.minor, p.patch) {
        (Some(m), Some(n), Some(pt)) => {
            let v = Version {
                major: m,
                minor: n,
                patch: pt,
                pre: p.pre,
            };
            out.push(Comparator::Cmp(op.unwrap_or(Op::Eq), v));
            return;
        }
        (m, n, _) => (m, n),
    };
    let Some(m) = m else {
        // `*`, `x`; `>*` and `<*` match nothing.
        match op {
            Some(Op::Gt) | Some(Op::Lt) => out.push(lt(Version::floor(0, 0, 0))),
            _ => out.push(Comparator::Any),
        }
        return;
    };
    match op {
        None => match n {
            None => {
                out.push(ge(Version::new(m, 0, 0)));
                out.push(lt(Version::floor(m + 1, 0, 0)));
            }
            Some(n) => {
                out.push(ge(Version::new(m, n, 0)));
                out.push(lt(Version::floor(m, n + 1, 0)));
            }
        },
        Some(Op::Gt) => out.push(ge(match n {
            None => Version::new(m + 1, 0, 0),
            Some(n) => Version::new(m, n + 1, 0),
        })),
        Some(Op::Ge) => out.push(ge(Version::new(m, n.unwrap_or(0), 0))),
        Some(Op::Le) => out.push(lt(match n {
            None => Version::floor(m + 1, 0, 0),
            Some(n) => Version::floor(m, n + 1, 0),
        })),
        Some(Op::Lt) => out.push(lt(Version::floor(m, n.unwrap_or(0), 0))),
        // `=` was mapped to None above.
        Some(Op::Eq) => out.push(Comparator::Any),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }
    fn sat(ver: &str, range: &str) -> bool {
        Range::parse(range).unwrap().matches(&v(ver), false)
    }
    fn sat_pre(ver: &str, range: &str) -> bool {
        Range::parse(range).unwrap().matches(&v(ver), true)
    }

    #[test]
    fn cargo_requirements_read_as_cargo_means_them() {
        let sat = |ver: &str, req: &str| Range::parse_cargo(req).unwrap().matches(&v(ver), false);
        // A bare version is a caret requirement in Cargo (exact in npm).
        assert!(sat("1.2.9", "1.2.3"));
        assert!(!sat("2.0.0", "1.2.3"));
        assert!(!sat("1.2.2", "1.2.3"));
        assert!(sat("0.3.9", "0.3"));
        assert!(!sat("0.4.0", "0.3"));
        assert!(sat("1.2.3", "=1.2.3"));
        assert!(!sat("1.2.4", "=1.2.3"));
        // Commas join comparators that must all hold.
        assert!(sat("1.3.0", ">=1.0, <1.4"));
        assert!(!sat("1.4.0", ">=1.0, <1.4"));
        assert!(sat("1.4.0", ">= 1.4.0"));
        assert!(sat("0.3.5", "~0.3"));
        assert!(sat("1.7.0", "1.*"));
        assert!(!sat("2.0.0", "1.*"));
        assert!(sat("1.2.9", "1.2.*"));
        assert!(!sat("1.3.0", "1.2.*"));
        assert!(!sat("1.3.0", "1.2.x"));
        // An `x` in a prerelease is no wildcard: still a caret requirement.
        assert!(sat("1.2.0", "1.0.0-next.1"));
        assert!(!sat("2.0.0", "1.0.0-next.1"));
        // Without a format, a bare version is that version.
        let exact = |ver: &str, req: &str| {
            Range::parse_cargo_exact(req)
                .unwrap()
                .matches(&v(ver), false)
        };
        assert!(exact("1.2.3", "1.2.3"));
        assert!(!exact("1.2.4", "1.2.3"));
        assert!(exact("1.2.4", "^1.2.3"));
        assert!(!exact("1.3.0", "1.2.*"));
        for bad in ["1.0 || 2.0", "", "1.0,", ">=1.0 <2.0", "banana", "~>1.0"] {
            assert!(Range::parse_cargo(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions_order_by_numbers_then_prerelease() {
        let order = [
            "0.0.1",
            "0.1.0",
            "1.0.0-0",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.2.0",
            "1.10.0",
            "2.0.0",
        ];
        for w in order.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
    }

    #[test]
    fn build_metadata_is_ignored_and_loose_prefixes_accepted() {
        assert_eq!(v("1.2.3+build.5"), v("1.2.3"));
        assert_eq!(v("v1.2.3"), v("1.2.3"));
        assert_eq!(v("=1.2.3"), v("1.2.3"));
        assert!(sat("1.2.3+abc", "1.2.3"));
        assert!(sat("1.2.3", "v1.2.3"));
        assert!(sat("1.2.3", "=1.2.3"));
    }

    #[test]
    fn invalid_versions_are_rejected() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.x",
            "a.b.c",
            "1.2.3.4",
            "1.2.3-",
            "1.2.3-a..b",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["1.2.3.4", ">=a", "^", "1.2.3 - ", ">= ", "~1.2-beta"] {
            assert!(Range::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn primitive_comparators() {
        assert!(sat("1.2.3", ">1.2.2"));
        assert!(!sat("1.2.2", ">1.2.2"));
        assert!(sat("1.2.2", ">=1.2.2"));
        assert!(sat("1.2.1", "<1.2.2"));
        assert!(sat("1.2.2", "<=1.2.2"));
        assert!(!sat("1.2.3", "<=1.2.2"));
        assert!(sat("1.5.0", ">= 1.2.3 < 2"));
        assert!(!sat("2.0.0", ">=1.2.3 <2"));
    }

    #[test]
    fn prerelease_needs_a_comparator_with_the_same_tuple() {
        assert!(sat("1.2.3-alpha.1", "^1.2.3-alpha.0"));
        assert!(!sat("1.2.4-alpha.1", "^1.2.3-alpha.0"));
        assert!(sat("1.2.4", "^1.2.3-alpha.0"));
        assert!(!sat("1.2.3-beta", ">1.2.2"));
        assert!(sat_pre("1.2.3-beta", ">1.2.2"));
        assert!(!sat("1.0.0-beta", "*"));
        assert!(sat_pre("1.0.0-beta", "*"));
        assert!(sat("1.2.3-beta.2", ">=1.2.3-beta.1 <1.3.0"));
        assert!(!sat("1.2.3-alpha", ">=1.2.3-beta.1"));
    }

    #[test]
    fn prerelease_of_the_next_major_is_outside_a_caret_even_when_included() {
        assert!(!sat_pre("2.0.0-alpha", "^1.2.3"));
        assert!(sat_pre("1.9.0-alpha", "^1.2.3"));
        assert!(!sat_pre("1.3.0-0", "~1.2.3"));
    }

    #[test]
    fn caret_ranges() {
        assert!(sat("1.9.9", "^1.2.3"));
        assert!(!sat("2.0.0", "^1.2.3"));
        assert!(!sat("1.2.2", "^1.2.3"));
        // ^0.x pins the minor, ^0.0.x pins the patch.
        assert!(sat("0.2.9", "^0.2.3"));
        assert!(!sat("0.3.0", "^0.2.3"));
        assert!(sat("0.0.3", "^0.0.3"));
        assert!(!sat("0.0.4", "^0.0.3"));
        assert!(sat("0.0.9", "^0.0"));
        assert!(!sat("0.1.0", "^0.0"));
        assert!(sat("0.0.9", "^0.0.x"));
        assert!(sat("0.9.9", "^0.x"));
        assert!(!sat("1.0.0", "^0.x"));
        assert!(sat("1.9.0", "^1.2.x"));
        assert!(!sat("0.2.0", "^0.1"));
        assert!(sat("0.1.5", "^0.1"));
        assert!(sat("1.0.0", "^1"));
        assert!(sat("0.0.3-beta", "^0.0.3-beta"));
        assert!(!sat("0.0.4", "^0.0.3-beta"));
    }

    #[test]
    fn tilde_ranges() {
        assert!(sat("1.2.9", "~1.2.3"));
        assert!(!sat("1.3.0", "~1.2.3"));
        assert!(sat("1.2.0", "~1.2"));
        assert!(sat("1.9.0", "~1"));
        assert!(!sat("2.0.0", "~1"));
        assert!(sat("0.2.5", "~0.2"));
        assert!(sat("1.2.5", "~> 1.2.3"));
        assert!(sat("1.2.3-beta.4", "~1.2.3-beta.2"));
        assert!(!sat("1.2.4-beta.4", "~1.2.3-beta.2"));
    }

    #[test]
    fn x_ranges() {
        assert!(sat("1.5.0", "1.x"));
        assert!(sat("1.5.0", "1"));
        assert!(!sat("2.0.0", "1.x"));
        assert!(sat("1.2.7", "1.2.*"));
        assert!(!sat("1.3.0", "1.2.X"));
        assert!(sat("3.0.0", "*"));
        assert!(sat("3.0.0", ""));
        assert!(sat("3.0.0", "x"));
        assert!(sat("2.0.0", ">1"));
        assert!(!sat("1.9.9", ">1"));
        assert!(sat("1.3.0", ">1.2"));
        assert!(!sat("1.2.9", ">1.2"));
        assert!(sat("1.9.9", "<=1"));
        assert!(!sat("2.0.0", "<=1"));
        assert!(!sat("1.0.0", "<1"));
        assert!(sat("0.9.0", "<1"));
        assert!(!sat("1.2.0", "<1.2"));
        assert!(sat("1.2.0", ">=1.2"));
        assert!(!sat("0.0.0", ">*"));
        assert!(sat("1.2.0", "=1.2"));
    }

    #[test]
    fn hyphen_ranges() {
        assert!(sat("1.2.3", "1.2.3 - 2.3.4"));
        assert!(sat("2.3.4", "1.2.3 - 2.3.4"));
        assert!(!sat("2.3.5", "1.2.3 - 2.3.4"));
        // A partial upper bound includes the whole partial range.
        assert!(sat("2.3.9", "1.2 - 2.3"));
        assert!(!sat("2.4.0", "1.2 - 2.3"));
        assert!(sat("2.9.9", "1.2.3 - 2"));
        assert!(!sat("3.0.0", "1.2.3 - 2"));
        assert!(sat("1.2.0", "1.2 - 2.3.4"));
        assert!(!sat("1.1.9", "1.2 - 2.3.4"));
    }

    #[test]
    fn unions_and_intersections() {
        let r = "1.2.7 || >=1.2.9 <2.0.0";
        assert!(sat("1.2.7", r));
        assert!(!sat("1.2.8", r));
        assert!(sat("1.4.6", r));
        assert!(!sat("2.0.0", r));
        assert!(sat("3.3.6", "3.3.6"));
        assert!(!sat("3.3.5", "3.3.6"));
        assert!(sat("0.1.0", "<0.2.0 || >3"));
        assert!(sat("4.0.0", "<0.2.0 || >3"));
    }
}
