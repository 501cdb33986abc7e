//! The compiled policy: rules parsed and indexed by name, waivers, the OSV database, and
//! the evaluation that turns [`Facts`] into a [`Decision`].
//!
//! Rules are indexed per ecosystem so that evaluation does not touch every rule: literal
//! names go in a hash map, globs are bucketed by their literal prefix (the text before the
//! first wildcard) and probed once per distinct prefix length, and rules that apply to every
//! package sit in a short list. Only the candidates found there are evaluated, in
//! configuration order.

use std::collections::HashSet;

use sluice_config::{
    Ecosystem, PolicyConfig, RuleConfig, RuleKind, RuleMode, ScriptAction, Severity,
};

use crate::fasthash::FastMap;
use crate::glob::{normalise, Glob};
use crate::osv::Db;
use crate::spdx::{Expr, License, Lists};
use crate::versions::{FactVersion, Parsed, VersionSet};
use crate::{Decision, Facts, Finding, PolicyError, Verdict};

const ECOSYSTEMS: [Ecosystem; 4] = [
    Ecosystem::Oci,
    Ecosystem::Npm,
    Ecosystem::Pypi,
    Ecosystem::Cargo,
];

fn eco_index(e: Ecosystem) -> usize {
    match e {
        Ecosystem::Oci => 0,
        Ecosystem::Npm => 1,
        Ecosystem::Pypi => 2,
        Ecosystem::Cargo => 3,
    }
}

fn eco_name(e: Ecosystem) -> &'static str {
    match e {
        Ecosystem::Oci => "oci",
        Ecosystem::Npm => "npm",
        Ecosystem::Pypi => "pypi",
        Ecosystem::Cargo => "cargo",
    }
}

/// Globs compiled once per ecosystem (PyPI patterns are normalised differently).
#[derive(Debug, Default)]
struct NameSet {
    globs: [Vec<Glob>; 4],
}

impl NameSet {
    fn new(patterns: &[String]) -> NameSet {
        let mut s = NameSet::default();
        for e in ECOSYSTEMS {
            s.globs[eco_index(e)] = patterns.iter().map(|p| Glob::new(e, p)).collect();
        }
        s
    }
    fn matches(&self, eco: Ecosystem, name: &str) -> bool {
        self.globs[eco_index(eco)].iter().any(|g| g.matches(name))
    }
}

/// A `versions` value parsed in each ecosystem it may apply to.
#[derive(Debug)]
struct Versions {
    text: Box<str>,
    sets: [Option<VersionSet>; 4],
}

impl Versions {
    fn get(&self, eco: Ecosystem) -> Option<&VersionSet> {
        self.sets[eco_index(eco)].as_ref()
    }
}

#[derive(Debug)]
enum Check {
    Deny(Option<Versions>),
    Allow(Versions),
    MinAge { age_secs: i64, exempt: NameSet },
    Namespace,
    License(Lists),
    InstallScripts { block: bool, exempt: NameSet },
}

#[derive(Debug)]
struct Rule {
    id: Box<str>,
    audit: bool,
    reason: Option<Box<str>>,
    check: Check,
}

#[derive(Debug)]
struct Waiver {
    rule: Box<str>,
    package: NameSet,
    versions: Option<Versions>,
    /// First second (UTC) at which the waiver no longer applies.
    ends_unix: i64,
    describe: Box<str>,
}

/// Rule candidates by name, for one ecosystem.
#[derive(Debug, Default)]
struct NameIndex {
    exact: FastMap<Box<str>, Vec<u32>>,
    by_prefix: FastMap<Box<str>, Vec<(Glob, u32)>>,
    /// Distinct prefix lengths present in `by_prefix`, ascending.
    prefix_lens: Vec<usize>,
    /// Rules for every name.
    always: Vec<u32>,
}

impl NameIndex {
    fn insert(&mut self, glob: Glob, rule: u32) {
        if glob.is_literal() {
            self.exact
                .entry(glob.pattern().into())
                .or_default()
                .push(rule);
        } else if glob.pattern().bytes().all(|b| b == b'*') {
            self.always.push(rule);
        } else {
            let prefix: Box<str> = glob.prefix().into();
            if !self.prefix_lens.contains(&prefix.len()) {
                self.prefix_lens.push(prefix.len());
                self.prefix_lens.sort_unstable();
            }
            self.by_prefix.entry(prefix).or_default().push((glob, rule));
        }
    }

    /// Appends the rules whose name pattern matches `name` (normalised) to `out`.
    fn candidates(&self, name: &str, out: &mut Vec<u32>) {
        out.extend_from_slice(&self.always);
        if let Some(rules) = self.exact.get(name) {
            out.extend_from_slice(rules);
        }
        for &len in &self.prefix_lens {
            if len > name.len() {
                break;
            }
            if !name.is_char_boundary(len) {
                continue;
            }
            if let Some(globs) = self.by_prefix.get(&name[..len]) {
                out.extend(
                    globs
                        .iter()
                        .filter(|(g, _)| g.matches(name))
                        .map(|(_, r)| *r),
                );
            }
        }
    }
}

/// The compiled policy. Immutable; share it in an `Arc`.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    index: [NameIndex; 4],
    waivers: Vec<Waiver>,
    osv: Db,
    osv_audit: bool,
    threshold: Option<Severity>,
}

fn rule_err(id: &str, msg: impl std::fmt::Display) -> PolicyError {
    PolicyError::new(format!("policy rule {id:?}: {msg}"))
}

impl Engine {
    /// Compiles a `[policy]` configuration: parses every range, glob, license list and
    /// date, and loads the OSV databases. Errors name the rule (or waiver, or file) and
    /// what is wrong with it.
    pub fn new(cfg: &PolicyConfig) -> Result<Engine, PolicyError> {
        let mut rules = Vec::with_capacity(cfg.rules.len());
        let mut index: [NameIndex; 4] = Default::default();
        let mut seen = HashSet::new();
        for (n, rc) in cfg.rules.iter().enumerate() {
            let id = rc.id.trim();
            if id.is_empty() {
                return Err(PolicyError::new(format!(
                    "policy rule #{}: `id` is empty",
                    n + 1
                )));
            }
            if id == "osv" {
                return Err(rule_err(id, "the id `osv` is reserved for OSV advisories"));
            }
            if !seen.insert(id) {
                return Err(rule_err(id, "duplicate rule id"));
            }
            check_keys(rc)?;
            let check = compile_check(rc)?;
            let idx = rules.len() as u32;
            for e in ECOSYSTEMS {
                if rc.format.is_some_and(|f| f != e) {
                    continue;
                }
                let ix = &mut index[eco_index(e)];
                match rc.kind {
                    RuleKind::Namespace => {
                        for p in &rc.names {
                            ix.insert(Glob::new(e, p), idx);
                        }
                    }
                    _ => ix.insert(Glob::new(e, rc.package.as_deref().unwrap_or("*")), idx),
                }
            }
            rules.push(Rule {
                id: id.into(),
                audit: rc.mode.unwrap_or(cfg.mode) == RuleMode::Audit,
                reason: rc.reason.as_deref().map(Into::into),
                check,
            });
        }
        let waivers = cfg
            .waivers
            .iter()
            .enumerate()
            .map(|(n, w)| compile_waiver(n, w))
            .collect::<Result<Vec<_>, _>>()?;
        let osv = Db::load(&cfg.osv)?;
        Ok(Engine {
            rules,
            index,
            waivers,
            osv,
            osv_audit: cfg.osv_mode.unwrap_or(cfg.mode) == RuleMode::Audit,
            threshold: cfg.vulnerability_threshold,
        })
    }

    /// No rules and no OSV data: every artifact is allowed, callers may skip the work.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.osv.advisories.is_empty()
    }

    /// (advisories, packages) loaded from the OSV databases.
    pub fn osv_stats(&self) -> (usize, usize) {
        (self.osv.advisories.len(), self.osv.packages())
    }

    /// Evaluates the policy on one artifact at time `now_unix` (seconds since the epoch).
    pub fn evaluate(&self, facts: &Facts, now_unix: i64) -> Decision {
        let eco = facts.ecosystem;
        let name = normalise(eco, facts.name);
        let mut cands = Vec::new();
        self.index[eco_index(eco)].candidates(&name, &mut cands);
        let affected = match facts.version {
            Some(_) => self.osv.lookup(eco, &name),
            None => &[],
        };
        if cands.is_empty() && affected.is_empty() {
            return Decision::allow();
        }
        cands.sort_unstable();
        cands.dedup();

        let parsed = facts.version.and_then(|v| Parsed::parse(eco, v));
        let version = FactVersion {
            raw: facts.version,
            parsed: parsed.as_ref(),
            digest: facts.digest,
        };
        let mut findings = Vec::new();
        for &r in &cands {
            let rule = &self.rules[r as usize];
            if let Some((verdict, reason)) = self.check(rule, facts, &name, &version, now_unix) {
                findings.push(self.finding(
                    &rule.id, None, rule.audit, verdict, reason, facts, &name, &version, now_unix,
                ));
            }
        }
        if !affected.is_empty() {
            if let Some(raw) = facts.version {
                let mut seen: Vec<u32> = Vec::new();
                for a in affected {
                    if seen.contains(&a.advisory) || !a.contains(raw, version.parsed) {
                        continue;
                    }
                    seen.push(a.advisory);
                    let adv = &self.osv.advisories[a.advisory as usize];
                    let blocks = adv.malicious
                        || matches!((adv.severity, self.threshold), (Some(s), Some(t)) if s >= t);
                    let verdict = if blocks {
                        Verdict::Block
                    } else {
                        Verdict::Warn
                    };
                    let what = if adv.malicious {
                        "malicious package".to_string()
                    } else {
                        match adv.severity {
                            Some(s) => format!("{s:?} vulnerability").to_lowercase(),
                            None => "vulnerability of unknown severity".to_string(),
                        }
                    };
                    let reason = if adv.summary.is_empty() {
                        format!("{} ({what})", adv.id)
                    } else {
                        format!("{} ({what}): {}", adv.id, adv.summary)
                    };
                    findings.push(self.finding(
                        "osv",
                        Some(adv),
                        self.osv_audit,
                        verdict,
                        reason,
                        facts,
                        &name,
                        &version,
                        now_unix,
                    ));
                }
            }
        }
        decide(findings)
    }

    #[allow(clippy::too_many_arguments)]
    fn finding(
        &self,
        rule: &str,
        advisory: Option<&crate::osv::Advisory>,
        audit: bool,
        verdict: Verdict,
        reason: String,
        facts: &Facts,
        name: &str,
        version: &FactVersion,
        now_unix: i64,
    ) -> Finding {
        let waived_by = if verdict == Verdict::Allow {
            None
        } else {
            self.waivers
                .iter()
                .find(|w| {
                    now_unix < w.ends_unix
                        && (*w.rule == *rule
                            || advisory.is_some_and(|a| {
                                *a.id == *w.rule || a.aliases.iter().any(|x| **x == *w.rule)
                            }))
                        && w.package.matches(facts.ecosystem, name)
                        && match &w.versions {
                            None => true,
                            Some(vs) => vs.get(facts.ecosystem).is_some_and(|set| {
                                set.applicable(version) && set.matches(version, false)
                            }),
                        }
                })
                .map(|w| w.describe.to_string())
        };
        let effective = if audit || waived_by.is_some() {
            Verdict::Allow
        } else {
            verdict
        };
        Finding {
            rule: rule.to_string(),
            verdict,
            effective,
            reason,
            audit,
            waived_by,
        }
    }

    fn check(
        &self,
        rule: &Rule,
        facts: &Facts,
        name: &str,
        v: &FactVersion,
        now: i64,
    ) -> Option<(Verdict, String)> {
        let eco = facts.ecosystem;
        let reason = |default: String| rule.reason.as_deref().map_or(default, str::to_string);
        let shown = || match facts.version.or(facts.digest) {
            Some(v) => format!("{}@{v}", facts.name),
            None => facts.name.to_string(),
        };
        match &rule.check {
            Check::Deny(None) => {
                Some((Verdict::Block, reason(format!("{} is denied", facts.name))))
            }
            Check::Deny(Some(vs)) => {
                let set = vs.get(eco)?;
                (set.applicable(v) && set.matches(v, true)).then(|| {
                    (
                        Verdict::Block,
                        reason(format!("{} is denied (versions {})", shown(), vs.text)),
                    )
                })
            }
            Check::Allow(vs) => {
                let set = vs.get(eco)?;
                (set.applicable(v) && !set.matches(v, false)).then(|| {
                    (
                        Verdict::Block,
                        reason(format!(
                            "{} is not in the allowed versions {}",
                            shown(),
                            vs.text
                        )),
                    )
                })
            }
            Check::MinAge { age_secs, exempt } => {
                if facts.version.is_none() || exempt.matches(eco, name) {
                    return None;
                }
                let Some(published) = facts.published_unix else {
                    return Some((
                        Verdict::Warn,
                        format!("{}: publish time unknown, cooldown not enforced", shown()),
                    ));
                };
                let age = now.saturating_sub(published);
                (age < *age_secs).then(|| {
                    (
                        Verdict::Block,
                        reason(format!(
                            "{} was published {} ago, less than the {} cooldown",
                            shown(),
                            human_secs(age.max(0)),
                            human_secs(*age_secs)
                        )),
                    )
                })
            }
            Check::Namespace => facts.public_upstream.then(|| {
                (
                    Verdict::Block,
                    reason(format!(
                        "{}: internal name, never fetched from a public registry ({})",
                        facts.name, facts.upstream
                    )),
                )
            }),
            // The Cargo index states no license: the rule cannot say anything about a crate.
            Check::License(_) if eco == Ecosystem::Cargo => None,
            Check::License(lists) => {
                let Some(text) = facts.license.filter(|l| !l.trim().is_empty()) else {
                    return (facts.version.is_some() && !lists.allow.is_empty()).then(|| {
                        (
                            Verdict::Warn,
                            format!(
                                "{}: no license declared; cannot check the allow list",
                                shown()
                            ),
                        )
                    });
                };
                match Expr::parse(text) {
                    Ok(expr) => (!lists.satisfiable(&expr)).then(|| {
                        (
                            Verdict::Block,
                            reason(format!("{}: license {text} is not allowed", shown())),
                        )
                    }),
                    Err(e) => Some((
                        Verdict::Warn,
                        format!("{}: {e}; license not checked", shown()),
                    )),
                }
            }
            Check::InstallScripts { block, exempt } => {
                if !facts.has_install_script || exempt.matches(eco, name) {
                    return None;
                }
                let verdict = if *block {
                    Verdict::Block
                } else {
                    Verdict::Warn
                };
                Some((verdict, reason(format!("{} runs install scripts", shown()))))
            }
        }
    }
}

fn decide(findings: Vec<Finding>) -> Decision {
    let pick = |v: Verdict| findings.iter().find(|f| f.effective == v);
    let (verdict, by) = match pick(Verdict::Block) {
        Some(f) => (Verdict::Block, Some(f)),
        None => match pick(Verdict::Warn) {
            Some(f) => (Verdict::Warn, Some(f)),
            None => (Verdict::Allow, None),
        },
    };
    let rule = by.map(|f| f.rule.clone());
    let reason = by.map(|f| f.reason.clone());
    Decision {
        verdict,
        rule,
        reason,
        findings,
    }
}

fn human_secs(s: i64) -> String {
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3_600),
        s if s >= 3_600 => format!("{}h{}m", s / 3_600, s % 3_600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Rejects keys that the rule's kind does not use, so nobody believes an ignored key is
/// enforced.
fn check_keys(rc: &RuleConfig) -> Result<(), PolicyError> {
    let kind = kind_name(rc.kind);
    let present = [
        ("package", rc.package.is_some()),
        ("versions", rc.versions.is_some()),
        ("age", rc.age.is_some()),
        ("exempt", !rc.exempt.is_empty()),
        ("names", !rc.names.is_empty()),
        ("allow", !rc.allow.is_empty()),
        ("deny", !rc.deny.is_empty()),
        ("action", rc.action.is_some()),
    ];
    let allowed: &[&str] = match rc.kind {
        RuleKind::Deny | RuleKind::Allow => &["package", "versions"],
        RuleKind::MinAge => &["package", "age", "exempt"],
        RuleKind::Namespace => &["names"],
        RuleKind::License => &["package", "allow", "deny"],
        RuleKind::InstallScripts => &["package", "exempt", "action"],
    };
    for (key, set) in present {
        if set && !allowed.contains(&key) {
            return Err(rule_err(
                &rc.id,
                format!(
                    "`{key}` does not apply to a {kind} rule (it uses {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn kind_name(k: RuleKind) -> &'static str {
    match k {
        RuleKind::Deny => "deny",
        RuleKind::Allow => "allow",
        RuleKind::MinAge => "min_age",
        RuleKind::Namespace => "namespace",
        RuleKind::License => "license",
        RuleKind::InstallScripts => "install_scripts",
    }
}

/// Parses `versions` for the rule's ecosystem, or for every ecosystem when it has none.
fn rule_versions(rc: &RuleConfig, text: &str) -> Result<Versions, PolicyError> {
    let mut sets: [Option<VersionSet>; 4] = Default::default();
    for e in ECOSYSTEMS {
        if rc.format.is_some_and(|f| f != e) {
            continue;
        }
        // Without a format, one text must mean the same versions everywhere (a bare Cargo
        // version is then exact, as in npm and PEP 440).
        let parsed = match rc.format {
            Some(_) => VersionSet::parse(e, text),
            None => VersionSet::parse_unformatted(e, text),
        };
        let set = parsed.map_err(|err| match rc.format {
            Some(_) => rule_err(&rc.id, format!("`versions`: {err}")),
            None => rule_err(
                &rc.id,
                format!(
                    "`versions` must parse for every ecosystem when `format` is not set; as {}: {err} (set `format`)",
                    eco_name(e)
                ),
            ),
        })?;
        sets[eco_index(e)] = Some(set);
    }
    Ok(Versions {
        text: text.into(),
        sets,
    })
}

fn compile_check(rc: &RuleConfig) -> Result<Check, PolicyError> {
    let id = &rc.id;
    Ok(match rc.kind {
        RuleKind::Deny => Check::Deny(match &rc.versions {
            Some(v) => Some(rule_versions(rc, v)?),
            None => None,
        }),
        RuleKind::Allow => {
            let Some(v) = &rc.versions else {
                return Err(rule_err(
                    id,
                    "an allow rule needs `versions` (the allowed range)",
                ));
            };
            Check::Allow(rule_versions(rc, v)?)
        }
        RuleKind::MinAge => {
            let Some(age) = rc.age else {
                return Err(rule_err(id, "a min_age rule needs `age` (e.g. \"7d\")"));
            };
            Check::MinAge {
                age_secs: i64::try_from(age.get().as_secs()).unwrap_or(i64::MAX),
                exempt: NameSet::new(&rc.exempt),
            }
        }
        RuleKind::Namespace => {
            if rc.names.is_empty() {
                return Err(rule_err(
                    id,
                    "a namespace rule needs `names` (globs like \"@myorg/*\")",
                ));
            }
            Check::Namespace
        }
        RuleKind::License | RuleKind::InstallScripts if rc.format == Some(Ecosystem::Cargo) => {
            return Err(rule_err(
                id,
                "the Cargo index states no license and no install scripts: this rule could never apply to crates",
            ));
        }
        RuleKind::License => {
            if rc.allow.is_empty() && rc.deny.is_empty() {
                return Err(rule_err(
                    id,
                    "a license rule needs `allow` or `deny` (SPDX ids)",
                ));
            }
            let parse = |list: &[String], key: &str| {
                list.iter()
                    .map(|s| {
                        License::parse_entry(s).map_err(|e| rule_err(id, format!("`{key}`: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            Check::License(Lists {
                allow: parse(&rc.allow, "allow")?,
                deny: parse(&rc.deny, "deny")?,
            })
        }
        RuleKind::InstallScripts => Check::InstallScripts {
            block: rc.action == Some(ScriptAction::Block),
            exempt: NameSet::new(&rc.exempt),
        },
    })
}

fn compile_waiver(n: usize, w: &sluice_config::WaiverConfig) -> Result<Waiver, PolicyError> {
    let err = |msg: String| {
        PolicyError::new(format!(
            "policy waiver #{} (rule {:?}, package {:?}): {msg}",
            n + 1,
            w.rule,
            w.package
        ))
    };
    if w.rule.trim().is_empty() {
        return Err(err("`rule` is empty".into()));
    }
    let ends_unix = parse_date(w.expires.trim())
        .map(|day| (day + 1) * 86_400)
        .ok_or_else(|| {
            err(format!(
                "`expires` {:?} is not a date YYYY-MM-DD",
                w.expires
            ))
        })?;
    // A waiver has no `format`: its range is read in every syntax that accepts it, and
    // applies to the ecosystems whose syntax did.
    let versions = match &w.versions {
        None => None,
        Some(text) => {
            let mut sets: [Option<VersionSet>; 4] = Default::default();
            let mut errors = Vec::new();
            for e in [Ecosystem::Npm, Ecosystem::Pypi, Ecosystem::Cargo] {
                match VersionSet::parse_unformatted(e, text) {
                    Ok(s) => sets[eco_index(e)] = Some(s),
                    Err(x) => errors.push(x),
                }
            }
            let range_like = text.contains(['<', '>', '=', '~', '^', '|', ',', '!', ' ']);
            if !range_like || text.trim().starts_with("sha") {
                sets[0] = VersionSet::parse(Ecosystem::Oci, text).ok();
            }
            if sets.iter().all(Option::is_none) {
                return Err(err(format!("`versions`: {}", errors.join("; "))));
            }
            Some(Versions {
                text: text.as_str().into(),
                sets,
            })
        }
    };
    Ok(Waiver {
        rule: w.rule.trim().into(),
        package: NameSet::new(std::slice::from_ref(&w.package)),
        versions,
        ends_unix,
        describe: format!(
            "waiver for {} until {}: {}",
            w.package,
            w.expires.trim(),
            w.reason
        )
        .into(),
    })
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian), if valid.
fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = &s[r];
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_to_days_since_the_epoch() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2027-13-01"), None);
        assert_eq!(parse_date("2027-1-01"), None);
        assert_eq!(parse_date("27-01-31"), None);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_secs(7 * 86_400), "7d");
        assert_eq!(human_secs(90_000), "1d1h");
        assert_eq!(human_secs(3_700), "1h1m");
        assert_eq!(human_secs(59), "59s");
    }
}
