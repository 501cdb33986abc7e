//! sluice's dependency-firewall decision engine: artifact [`Facts`] in, a [`Decision`]
//! (`allow` / `warn` / `block`, with the deciding rule and a human reason) out (SPEC §5).
//!
//! [`Engine::new`] does all the work that can fail or cost: it parses every version range,
//! glob, SPDX list and date in the `[policy]` configuration, loads the offline OSV
//! databases, and indexes rules and advisories by package name. [`Engine::evaluate`] is
//! then pure (no I/O, no clock: the caller passes `now`) and cheap, and an `Engine` is
//! immutable, so the proxy shares one in an `Arc` and swaps it whole on reload.
//!
//! # Rules
//!
//! Every rule may be limited to one ecosystem (`format`) and, except `namespace`, to the
//! packages matching a `package` glob. Name globs use `*` (any run of characters, `/`
//! included) and `?` (one character); npm and OCI names compare case-sensitively, PyPI
//! names after PEP 503 normalisation. Version ranges use the ecosystem's own syntax: npm
//! semver ranges, PEP 440 specifiers, OCI tag globs or a `sha256:` manifest digest. A rule
//! without `format` that has `versions` must parse in every ecosystem's syntax (otherwise set
//! `format`).
//!
//! - `deny`: matching packages, and versions in `versions` (all when absent), are blocked.
//!   A deny range also catches prereleases inside it (`>=2.0.0` denies `2.1.0-beta`), even
//!   though npm's and PEP 440's own range semantics leave prereleases out unless asked: a
//!   firewall must not be side-stepped by publishing a prerelease.
//! - `allow`: for packages matching `package`, the version must be in `versions`, or it is
//!   blocked; packages not matching `package` are unaffected. Here the ecosystem's own
//!   prerelease semantics hold (a prerelease is allowed only if the range opts into it).
//!   Facts without a version (a package document, or an OCI manifest fetched by digest
//!   against a tag-glob range) are not judged by allow rules.
//! - `min_age` (cooldown): a version published less than `age` before `now` is blocked;
//!   names matching `exempt` are not checked. A version whose publish time is unknown is
//!   allowed with a **warn** finding ("publish time unknown"), so a registry that hides
//!   publish times shows up in the logs instead of silently bypassing the cooldown.
//! - `namespace`: names matching `names` are blocked when they come from a public upstream
//!   (dependency confusion); from a private upstream they are unaffected.
//! - `license`: the artifact's SPDX expression must be satisfiable with licenses not in
//!   `deny` and, if `allow` is non-empty, only with licenses in `allow` (see [`spdx`]). A
//!   missing license under an `allow` list, or an unparseable one under any list, is a
//!   **warn** finding (the rule cannot tell); a missing license with only `deny` is fine.
//! - `install_scripts`: an npm version with install scripts gets `action` (default warn),
//!   unless its name matches `exempt`.
//!
//! # OSV
//!
//! Advisories from the offline OSV databases (see [`osv`](crate::osv)) are checked after the
//! rules, under the rule id `osv`. A `MAL-` advisory (malicious package) always blocks. Other
//! advisories block when `vulnerability_threshold` is set and their severity (GHSA's
//! `database_specific.severity`, else the CVSS v3 base score) is at or above it; otherwise
//! (below the threshold, no threshold, or unknown severity) they are **warn** findings.
//! `osv_mode` (default `mode`) sets their mode.
//!
//! # Modes, waivers and the decision
//!
//! A rule in `audit` mode still reports its finding, with an effective verdict of allow. A
//! waiver (rule id, package glob, optional version range, expiry date inclusive in UTC)
//! turns the effective verdict of the findings it matches into allow until it expires; for
//! OSV findings its `rule` may be `osv` or the advisory's id or one of its aliases. The
//! decision is the first effective block in configuration order (OSV last), else the first
//! effective warn, else allow; [`Decision::findings`] lists everything that matched.

pub mod check;
mod engine;
mod fasthash;
pub mod glob;
pub mod lockfile;
mod osv;
pub mod pep440;
pub mod semver;
pub mod spdx;
mod versions;

use std::fmt;

pub use engine::Engine;
pub use sluice_config::Ecosystem;

/// Facts about one artifact, for every format.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// Which ecosystem the artifact belongs to.
    pub ecosystem: Ecosystem,
    /// The configured upstream it comes from (for logging).
    pub upstream: &'a str,
    /// The upstream is a public registry: namespace rules apply only then.
    pub public_upstream: bool,
    /// npm: `@scope/name` or `name`; PyPI: as given (normalised per PEP 503 inside); OCI:
    /// the repository (`library/alpine`).
    pub name: &'a str,
    /// npm/PyPI version; OCI tag. Absent for a package document as a whole.
    pub version: Option<&'a str>,
    /// OCI manifest digest, `sha256:...`.
    pub digest: Option<&'a str>,
    /// Publish time (npm `time[version]`, PyPI upload time), seconds since the epoch.
    pub published_unix: Option<i64>,
    /// SPDX license expression.
    pub license: Option<&'a str>,
    /// npm `hasInstallScript`.
    pub has_install_script: bool,
}

/// What a rule, or the whole policy, says about an artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Serve it.
    Allow,
    /// Serve it, and report.
    Warn,
    /// Refuse it.
    Block,
}

impl Verdict {
    /// `allow`, `warn`, `block`: the label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Warn => "warn",
            Verdict::Block => "block",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of evaluating the policy on one artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The effective verdict.
    pub verdict: Verdict,
    /// The rule that decided a block or warn (`osv` for advisories); `None` for allow.
    pub rule: Option<String>,
    /// Why, for the client and the log; `None` for allow.
    pub reason: Option<String>,
    /// Every rule and advisory that matched, in configuration order, OSV last, including
    /// those in audit mode or waived.
    pub findings: Vec<Finding>,
}

impl Decision {
    /// Allow, with nothing to report.
    pub fn allow() -> Decision {
        Decision {
            verdict: Verdict::Allow,
            rule: None,
            reason: None,
            findings: Vec::new(),
        }
    }
}

/// One rule or advisory that matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The rule id, or `osv`.
    pub rule: String,
    /// What the rule said.
    pub verdict: Verdict,
    /// What it counts for after audit mode and waivers.
    pub effective: Verdict,
    /// Why (for OSV: the advisory id and summary).
    pub reason: String,
    /// The rule is in audit mode.
    pub audit: bool,
    /// The waiver that applied: its package, expiry and reason.
    pub waived_by: Option<String>,
}

/// A policy configuration the engine cannot use, saying which rule and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError(String);

impl PolicyError {
    pub(crate) fn new(msg: impl Into<String>) -> PolicyError {
        PolicyError(msg.into())
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}
