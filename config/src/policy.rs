//! `[policy]`: the dependency-firewall configuration (SPEC §5, §8). The engine that
//! evaluates it lives in the `sluice-policy` crate; this is only its schema.

use std::path::PathBuf;

use serde::Deserialize;

use crate::units::Duration;

/// `[policy]`.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Default mode of every rule.
    #[serde(default)]
    pub mode: RuleMode,
    /// OSV databases: directories of OSV JSON files or an ecosystem's `all.zip`.
    #[serde(default)]
    pub osv: Vec<PathBuf>,
    /// Block known vulnerabilities at or above this severity (`MAL-` entries always block).
    /// Absent: vulnerabilities are not blocked.
    #[serde(default)]
    pub vulnerability_threshold: Option<Severity>,
    /// Mode of the OSV checks (default: `mode`).
    #[serde(default)]
    pub osv_mode: Option<RuleMode>,
    /// `[[policy.rule]]`.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// `[[policy.waiver]]`.
    #[serde(default, rename = "waiver")]
    pub waivers: Vec<WaiverConfig>,
}

/// Whether a rule blocks or only reports.
#[derive(Clone, Copy, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    /// Block (or warn) as the rule says.
    #[default]
    Enforce,
    /// Log and count what would have happened; allow.
    Audit,
}

/// Vulnerability severity (OSV / GHSA levels).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Low.
    Low,
    /// Moderate / medium.
    #[serde(alias = "medium")]
    Moderate,
    /// High.
    High,
    /// Critical.
    Critical,
}

/// The kind of a rule.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Block matching packages/versions.
    Deny,
    /// Packages matching `package` must have a version in `versions`.
    Allow,
    /// Block releases younger than `age`.
    MinAge,
    /// Names in `names` never come from a public upstream.
    Namespace,
    /// License allow/deny lists on SPDX expressions.
    License,
    /// npm packages with install scripts.
    InstallScripts,
}

/// Which ecosystem a rule applies to.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Ecosystem {
    /// OCI images (repository names, tags, digests).
    Oci,
    /// npm packages.
    Npm,
    /// Python packages.
    Pypi,
    /// Rust crates (Cargo registries).
    Cargo,
}

/// What an `install_scripts` rule does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScriptAction {
    /// Allow, but report.
    Warn,
    /// Block.
    Block,
}

/// `[[policy.rule]]`: one rule; which keys apply depends on `kind`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique id, named in every block.
    pub id: String,
    /// What the rule checks.
    pub kind: RuleKind,
    /// Restrict to one ecosystem (default: all).
    #[serde(default)]
    pub format: Option<Ecosystem>,
    /// Name glob (`*`, `?`); for OCI a repository glob. Default: every package.
    #[serde(default)]
    pub package: Option<String>,
    /// Version range in the ecosystem's own syntax (npm semver range, PEP 440 specifier,
    /// OCI tag glob or `sha256:` digest). Absent: all versions.
    #[serde(default)]
    pub versions: Option<String>,
    /// Human reason shown to clients.
    #[serde(default)]
    pub reason: Option<String>,
    /// Overrides `[policy] mode`.
    #[serde(default)]
    pub mode: Option<RuleMode>,
    /// `min_age`: minimum release age.
    #[serde(default)]
    pub age: Option<Duration>,
    /// `min_age`, `install_scripts`: names exempt (globs; `@scope/*`).
    #[serde(default)]
    pub exempt: Vec<String>,
    /// `namespace`: protected names (globs).
    #[serde(default)]
    pub names: Vec<String>,
    /// `license`: allowed SPDX ids (an expression must be satisfiable with these).
    #[serde(default)]
    pub allow: Vec<String>,
    /// `license`: denied SPDX ids.
    #[serde(default)]
    pub deny: Vec<String>,
    /// `install_scripts`: warn or block (default warn).
    #[serde(default)]
    pub action: Option<ScriptAction>,
}

/// `[[policy.waiver]]`: an exception to one rule, with a reason and an expiry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaiverConfig {
    /// The rule id waived (`osv` for OSV findings, or an advisory id like `GHSA-...`).
    pub rule: String,
    /// Name glob.
    pub package: String,
    /// Version range (ecosystem syntax); absent: all versions.
    #[serde(default)]
    pub versions: Option<String>,
    /// Why.
    pub reason: String,
    /// Last day it applies, `YYYY-MM-DD` (UTC, inclusive).
    pub expires: String,
}
