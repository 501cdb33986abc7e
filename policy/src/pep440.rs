//! Python versions and version specifiers (PEP 440), with the semantics of `packaging`,
//! which pip uses: the same normalisation (`1.0-1` is `1.0.post1`, `1.0ALPHA1` is
//! `1.0a1`), the same ordering (dev < pre < final < post, epochs first, local versions
//! after their public version) and the same specifier rules, including the exclusive
//! ordered comparisons (`<1.0` does not admit `1.0rc1`, `>1.0` does not admit
//! `1.0.post1`).

use std::cmp::Ordering;

/// Pre-release kind, in PEP 440 order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PreKind {
    A,
    B,
    Rc,
}

/// One segment of a local version label (`+ubuntu.1`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Local {
    // Alphanumeric segments sort before numeric ones: variant order.
    Str(Box<str>),
    Num(u64),
}

/// A parsed, normalised PEP 440 version.
#[derive(Clone, Debug)]
pub struct Version {
    epoch: u64,
    release: Vec<u64>,
    pre: Option<(PreKind, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Vec<Local>,
}

impl Version {
    /// Parses any spelling PEP 440 accepts and normalises it.
    pub fn parse(s: &str) -> Result<Version, String> {
        let lower = s.trim().to_ascii_lowercase();
        let mut c = Cursor {
            b: lower.as_bytes(),
            i: 0,
        };
        let v = c
            .version()
            .ok_or_else(|| format!("invalid PEP 440 version {s:?}"))?;
        if c.i != c.b.len() {
            return Err(format!("invalid PEP 440 version {s:?}"));
        }
        Ok(v)
    }

    /// A pre-release or a development release.
    pub fn is_prerelease(&self) -> bool {
        self.pre.is_some() || self.dev.is_some()
    }

    fn is_postrelease(&self) -> bool {
        self.post.is_some()
    }

    fn cmp_public(&self, other: &Version) -> Ordering {
        self.cmp_key(other, false)
    }

    /// Same epoch and release (`base_version` in `packaging`).
    fn same_base(&self, other: &Version) -> bool {
        self.epoch == other.epoch && cmp_release(&self.release, &other.release).is_eq()
    }

    fn cmp_key(&self, other: &Version, with_local: bool) -> Ordering {
        // `packaging`'s _cmpkey: a dev release with no pre or post sorts before every
        // pre-release of the same release; a missing pre sorts after every pre-release.
        fn pre_key(v: &Version) -> (u8, Option<(PreKind, u64)>) {
            match (v.pre, v.post, v.dev) {
                (None, None, Some(_)) => (0, None),
                (Some(p), _, _) => (1, Some(p)),
                (None, _, _) => (2, None),
            }
        }
        // A missing dev sorts after every dev release.
        fn dev_key(v: &Version) -> (u8, u64) {
            match v.dev {
                Some(n) => (0, n),
                None => (1, 0),
            }
        }
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| cmp_release(&self.release, &other.release))
            .then_with(|| pre_key(self).cmp(&pre_key(other)))
            .then_with(|| self.post.cmp(&other.post))
            .then_with(|| dev_key(self).cmp(&dev_key(other)))
            .then_with(|| {
                if !with_local {
                    return Ordering::Equal;
                }
                match (self.local.is_empty(), other.local.is_empty()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => self.local.cmp(&other.local),
                }
            })
    }
}

/// Compares release segments as if the shorter were padded with zeros.
fn cmp_release(a: &[u64], b: &[u64]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        match x.cmp(&y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    Ordering::Equal
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_key(other, true)
    }
}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Version {}

/// A hand-written version of `packaging`'s VERSION_PATTERN over lower-cased input; each
/// optional part backtracks to where it started when it does not match.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, s: &str) -> bool {
        if self.b[self.i..].starts_with(s.as_bytes()) {
            self.i += s.len();
            true
        } else {
            false
        }
    }
    fn sep(&mut self) {
        if matches!(self.peek(), Some(b'-' | b'_' | b'.')) {
            self.i += 1;
        }
    }
    fn num(&mut self) -> Option<u64> {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        if start == self.i {
            return None;
        }
        std::str::from_utf8(&self.b[start..self.i])
            .ok()?
            .parse()
            .ok()
    }

    fn version(&mut self) -> Option<Version> {
        self.eat("v");
        let start = self.i;
        let mut epoch = 0;
        if let Some(n) = self.num() {
            if self.eat("!") {
                epoch = n;
            } else {
                self.i = start;
            }
        }
        let mut release = vec![self.num()?];
        loop {
            let save = self.i;
            if self.eat(".") {
                if let Some(n) = self.num() {
                    release.push(n);
                    continue;
                }
            }
            self.i = save;
            break;
        }
        let pre = self.pre();
        let post = self.post();
        let dev = self.dev();
        let mut local = Vec::new();
        if self.eat("+") {
            loop {
                let start = self.i;
                while matches!(self.peek(), Some(b'a'..=b'z' | b'0'..=b'9')) {
                    self.i += 1;
                }
                if start == self.i {
                    return None;
                }
                let seg = std::str::from_utf8(&self.b[start..self.i]).ok()?;
                local.push(match seg.parse::<u64>() {
                    Ok(n) if seg.bytes().all(|b| b.is_ascii_digit()) => Local::Num(n),
                    _ => Local::Str(seg.into()),
                });
                if matches!(self.peek(), Some(b'-' | b'_' | b'.')) {
                    self.i += 1;
                } else {
                    break;
                }
            }
        }
        Some(Version {
            epoch,
            release,
            pre,
            post,
            dev,
            local,
        })
    }

    fn pre(&mut self) -> Option<(PreKind, u64)> {
        let save = self.i;
        self.sep();
        // Longest spellings first, as the regex alternation orders them.
        let kind = if self.eat("alpha") || self.eat("a") {
            PreKind::A
        } else if self.eat("beta") || self.eat("b") {
            PreKind::B
        } else if self.eat("preview") || self.eat("pre") || self.eat("c") || self.eat("rc") {
            PreKind::Rc
        } else {
            self.i = save;
            return None;
        };
        let after = self.i;
        self.sep();
        let n = match self.num() {
            Some(n) => n,
            None => {
                self.i = after;
                0
            }
        };
        Some((kind, n))
    }

    fn post(&mut self) -> Option<u64> {
        let save = self.i;
        if self.eat("-") {
            if let Some(n) = self.num() {
                return Some(n);
            }
        }
        self.i = save;
        self.sep();
        if !(self.eat("post") || self.eat("rev") || self.eat("r")) {
            self.i = save;
            return None;
        }
        let after = self.i;
        self.sep();
        match self.num() {
            Some(n) => Some(n),
            None => {
                self.i = after;
                Some(0)
            }
        }
    }

    fn dev(&mut self) -> Option<u64> {
        let save = self.i;
        self.sep();
        if !self.eat("dev") {
            self.i = save;
            return None;
        }
        let after = self.i;
        self.sep();
        match self.num() {
            Some(n) => Some(n),
            None => {
                self.i = after;
                Some(0)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Compatible,
    Eq,
    Ne,
    Le,
    Ge,
    Lt,
    Gt,
    Arbitrary,
}

#[derive(Clone, Debug)]
struct Specifier {
    op: Op,
    /// `==1.*` / `!=1.*`: compare as a release prefix.
    wildcard: bool,
    version: Option<Version>,
    /// The text after the operator, for `===`.
    raw: Box<str>,
}

/// A comma-separated set of PEP 440 specifiers (`>=1.0,!=1.3.*,<2`); all must match.
#[derive(Clone, Debug)]
pub struct Specifiers {
    specs: Vec<Specifier>,
    /// Some specifier names a pre-release, which opts pre-releases in.
    mentions_prerelease: bool,
}

impl Specifiers {
    /// Parses a specifier set; an empty string matches every version.
    pub fn parse(s: &str) -> Result<Specifiers, String> {
        let mut specs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(format!("invalid PEP 440 specifier {s:?}: empty clause"));
            }
            specs.push(
                parse_specifier(part)
                    .map_err(|e| format!("invalid PEP 440 specifier {s:?}: {e}"))?,
            );
        }
        let mentions_prerelease = specs.iter().any(|sp| {
            sp.op != Op::Ne
                && sp.op != Op::Arbitrary
                && sp.version.as_ref().is_some_and(Version::is_prerelease)
        });
        Ok(Specifiers {
            specs,
            mentions_prerelease,
        })
    }

    /// Whether a version satisfies every specifier. `raw` is the version as published
    /// (for `===`); `v` is its parse, absent when it is not a PEP 440 version (then only
    /// `===` can match). Pre-releases are admitted only when `include_prerelease` is set
    /// or a specifier itself names a pre-release (PEP 440's default for installers).
    pub fn matches(&self, raw: &str, v: Option<&Version>, include_prerelease: bool) -> bool {
        if let Some(v) = v {
            if v.is_prerelease() && !include_prerelease && !self.mentions_prerelease {
                return false;
            }
        }
        self.specs.iter().all(|s| s.matches(raw, v))
    }
}

fn parse_specifier(part: &str) -> Result<Specifier, String> {
    const OPS: [(&str, Op); 8] = [
        ("===", Op::Arbitrary),
        ("~=", Op::Compatible),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];
    let (op, rest) = OPS
        .iter()
        .find_map(|(t, op)| part.strip_prefix(t).map(|r| (*op, r.trim())))
        .ok_or_else(|| format!("{part:?} does not start with an operator (==, >=, ~=, ...)"))?;
    if rest.is_empty() {
        return Err(format!("{part:?} has no version"));
    }
    if op == Op::Arbitrary {
        return Ok(Specifier {
            op,
            wildcard: false,
            version: None,
            raw: rest.into(),
        });
    }
    let (text, wildcard) = match rest.strip_suffix(".*") {
        Some(t) if matches!(op, Op::Eq | Op::Ne) => (t, true),
        Some(_) => return Err(format!("{part:?}: `.*` is only allowed with == and !=")),
        None => (rest, false),
    };
    let version = Version::parse(text)?;
    if wildcard && (version.pre.is_some() || version.post.is_some() || version.dev.is_some()) {
        return Err(format!("{part:?}: `.*` must follow a release number"));
    }
    if !version.local.is_empty() && (wildcard || !matches!(op, Op::Eq | Op::Ne)) {
        return Err(format!(
            "{part:?}: a local version label is only allowed with == and !="
        ));
    }
    if op == Op::Compatible && version.release.len() < 2 {
        return Err(format!("{part:?}: ~= needs at least two release segments"));
    }
    Ok(Specifier {
        op,
        wildcard,
        version: Some(version),
        raw: rest.into(),
    })
}

impl Specifier {
    fn matches(&self, raw: &str, v: Option<&Version>) -> bool {
        let Some(spec) = &self.version else {
            // `===`: string identity, case-insensitively.
            return raw.trim().eq_ignore_ascii_case(&self.raw);
        };
        let Some(v) = v else {
            return false;
        };
        match self.op {
            Op::Eq => self.equal(spec, v),
            Op::Ne => !self.equal(spec, v),
            Op::Le => v.cmp_public(spec) != Ordering::Greater,
            Op::Ge => v.cmp_public(spec) != Ordering::Less,
            Op::Lt => {
                // `<1.0` must not admit `1.0rc1` unless the bound is itself a pre-release.
                let pre_of_bound = v.is_prerelease() && v.same_base(spec);
                v.cmp_public(spec) == Ordering::Less && (spec.is_prerelease() || !pre_of_bound)
            }
            Op::Gt => {
                // `>1.0` must not admit `1.0.post1` (unless the bound is a post-release) nor
                // `1.0+local`.
                let post_of_bound = v.is_postrelease() && v.same_base(spec);
                let local_of_bound = !v.local.is_empty() && v.same_base(spec);
                v.cmp_public(spec) == Ordering::Greater
                    && (spec.is_postrelease() || !post_of_bound)
                    && !local_of_bound
            }
            Op::Compatible => {
                // `~=2.2.1` is `>=2.2.1, ==2.2.*`.
                let prefix = &spec.release[..spec.release.len() - 1];
                v.cmp_public(spec) != Ordering::Less && prefix_match(spec.epoch, prefix, v)
            }
            Op::Arbitrary => false,
        }
    }

    fn equal(&self, spec: &Version, v: &Version) -> bool {
        if self.wildcard {
            return prefix_match(spec.epoch, &spec.release, v);
        }
        if spec.local.is_empty() {
            v.cmp_key(spec, false).is_eq()
        } else {
            v.cmp_key(spec, true).is_eq()
        }
    }
}

fn prefix_match(epoch: u64, prefix: &[u64], v: &Version) -> bool {
    v.epoch == epoch
        && prefix
            .iter()
            .enumerate()
            .all(|(i, p)| v.release.get(i).copied().unwrap_or(0) == *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }
    fn sat(ver: &str, spec: &str) -> bool {
        Specifiers::parse(spec)
            .unwrap()
            .matches(ver, Some(&v(ver)), false)
    }
    fn sat_pre(ver: &str, spec: &str) -> bool {
        Specifiers::parse(spec)
            .unwrap()
            .matches(ver, Some(&v(ver)), true)
    }

    #[test]
    fn versions_order_dev_pre_final_post() {
        let order = [
            "1.0.dev0",
            "1.0.dev1",
            "1.0a1.dev0",
            "1.0a1",
            "1.0a2",
            "1.0b1",
            "1.0rc1",
            "1.0",
            "1.0+abc",
            "1.0+5",
            "1.0.post1.dev0",
            "1.0.post1",
            "1.0.post2",
            "1.1.dev0",
            "1.1",
            "2.0",
            "1!0.1",
        ];
        for w in order.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
    }

    #[test]
    fn epoch_outranks_release() {
        assert!(v("1!0.1") > v("2.0"));
        assert!(v("0!2.0") == v("2.0"));
    }

    #[test]
    fn spellings_normalise() {
        assert_eq!(v("1.0-1"), v("1.0.post1"));
        assert_eq!(v("1.0ALPHA1"), v("1.0a1"));
        assert_eq!(v("1.0-alpha.1"), v("1.0a1"));
        assert_eq!(v("1.0beta2"), v("1.0b2"));
        assert_eq!(v("1.0c1"), v("1.0rc1"));
        assert_eq!(v("1.0pre1"), v("1.0rc1"));
        assert_eq!(v("1.0preview1"), v("1.0rc1"));
        assert_eq!(v("1.0.rev3"), v("1.0.post3"));
        assert_eq!(v("1.0r3"), v("1.0.post3"));
        assert_eq!(v("1.0-r"), v("1.0.post0"));
        assert_eq!(v("1.0a"), v("1.0a0"));
        assert_eq!(v("1.0.dev"), v("1.0.dev0"));
        assert_eq!(v("v1.0"), v("1.0"));
        assert_eq!(v("1.0"), v("1.0.0"));
        assert_eq!(v("1.0+Ubuntu-1"), v("1.0+ubuntu.1"));
        assert_eq!(v(" 1.0 "), v("1.0"));
    }

    #[test]
    fn invalid_versions_are_rejected() {
        for bad in [
            "", "a", "1.0.x", "1.0+", "1..0", "1.0-", "1.0++a", "1.0 a", "!1.0",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn local_versions_sort_after_public_and_by_segment() {
        assert!(v("1.0+1") > v("1.0"));
        assert!(v("1.0+a") < v("1.0+1"));
        assert!(v("1.0+1.1") > v("1.0+1"));
        assert!(v("1.0+10") > v("1.0+9"));
    }

    #[test]
    fn compatible_release() {
        assert!(sat("2.2", "~=2.2"));
        assert!(sat("2.9", "~=2.2"));
        assert!(!sat("3.0", "~=2.2"));
        assert!(!sat("2.1", "~=2.2"));
        assert!(sat("1.4.9", "~=1.4.5"));
        assert!(!sat("1.5.0", "~=1.4.5"));
        assert!(sat("2.2.post3", "~=2.2"));
        assert!(Specifiers::parse("~=1").is_err());
    }

    #[test]
    fn wildcard_equality() {
        assert!(sat("1.5", "==1.*"));
        assert!(sat("1", "==1.*"));
        assert!(!sat("2.0", "==1.*"));
        assert!(sat("1.0.post1", "==1.0.*"));
        assert!(!sat("1.1", "==1.0.*"));
        assert!(!sat("1.5", "!=1.*"));
        assert!(sat("2.0", "!=1.*"));
        assert!(sat_pre("1.0rc1", "==1.0.*"));
        assert!(!sat("1!1.0", "==1.*"));
        assert!(Specifiers::parse(">=1.*").is_err());
    }

    #[test]
    fn exact_equality_ignores_local_unless_specified() {
        assert!(sat("1.0+local.1", "==1.0"));
        assert!(sat("1.0", "==1.0.0"));
        assert!(!sat("1.0+local.1", "==1.0+other"));
        assert!(sat("1.0+local.1", "==1.0+local.1"));
        assert!(!sat("1.0", "==1.0+local.1"));
        assert!(!sat("1.0+local.1", "!=1.0"));
        assert!(Specifiers::parse(">=1.0+local").is_err());
    }

    #[test]
    fn exclusive_less_than_excludes_prereleases_of_that_version() {
        assert!(!sat_pre("1.0rc1", "<1.0"));
        assert!(!sat_pre("1.0.dev0", "<1.0"));
        assert!(sat_pre("0.9rc1", "<1.0"));
        assert!(sat_pre("1.0a1", "<1.0rc1"));
        assert!(sat("0.9", "<1.0"));
        // `<=` has no such exclusion.
        assert!(sat_pre("1.0rc1", "<=1.0"));
    }

    #[test]
    fn exclusive_greater_than_excludes_postreleases_and_locals_of_that_version() {
        assert!(!sat("1.0.post1", ">1.0"));
        assert!(sat("1.0.post2", ">1.0.post1"));
        assert!(!sat("1.0+local", ">1.0"));
        assert!(sat("1.1", ">1.0"));
        assert!(sat("1.0.post1", ">=1.0"));
    }

    #[test]
    fn prereleases_are_excluded_unless_asked_for_or_named() {
        assert!(!sat("2.0rc1", ">=1.0"));
        assert!(sat_pre("2.0rc1", ">=1.0"));
        assert!(sat("2.0rc1", ">=2.0b1"));
        assert!(sat("1.0.dev0", "==1.0.dev0"));
    }

    #[test]
    fn comma_separated_clauses_all_apply() {
        let s = ">=1.0, !=1.3.*, <2";
        assert!(sat("1.2", s));
        assert!(!sat("1.3.1", s));
        assert!(sat("1.4", s));
        assert!(!sat("2.0", s));
        assert!(!sat("0.9", s));
        assert!(sat("5.0", ""));
        assert!(Specifiers::parse(">=1.0,,<2").is_err());
        assert!(Specifiers::parse("1.0").is_err());
    }

    #[test]
    fn arbitrary_equality_compares_strings() {
        let s = Specifiers::parse("===1.0-foo").unwrap();
        assert!(s.matches("1.0-FOO", None, false));
        assert!(!s.matches("1.0", Some(&v("1.0")), false));
        assert!(!Specifiers::parse(">=1.0")
            .unwrap()
            .matches("junk", None, true));
    }
}
