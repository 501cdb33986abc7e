//! `sluice policy check`: evaluates the entries of lockfiles and image lists offline with
//! the same engine the proxy uses, and reports every finding.

use std::fmt::Write as _;

use crate::lockfile::Entry;
use crate::{Engine, Facts, Verdict};

/// The outcome for one lockfile entry.
#[derive(Debug)]
pub struct Checked {
    /// What was checked.
    pub entry: Entry,
    /// The engine's decision.
    pub decision: crate::Decision,
}

/// Evaluates every entry at `now_unix`. Publish times are not known offline, so `min_age`
/// rules cannot fire here (the proxy enforces them at fetch time).
pub fn check(engine: &Engine, entries: Vec<Entry>, now_unix: i64) -> Vec<Checked> {
    entries
        .into_iter()
        .map(|entry| {
            let public = true;
            let facts = Facts {
                ecosystem: entry.ecosystem,
                upstream: entry.registry.as_deref().unwrap_or(""),
                public_upstream: public,
                name: &entry.name,
                version: entry.version.as_deref(),
                digest: entry.digest.as_deref(),
                published_unix: None,
                license: entry.license.as_deref(),
                has_install_script: entry.has_install_script,
            };
            let decision = engine.evaluate(&facts, now_unix);
            Checked { entry, decision }
        })
        .collect()
}

/// A human report: one line per entry with a finding, then a summary line. Returns the
/// text and whether anything is blocked.
pub fn report(file: &str, checked: &[Checked]) -> (String, bool) {
    let mut out = String::new();
    let (mut blocked, mut warned) = (0, 0);
    for c in checked {
        let e = &c.entry;
        let what = match (&e.version, &e.digest) {
            (Some(v), Some(d)) => format!("{}:{v}@{d}", e.name),
            (Some(v), None) => format!("{}@{v}", e.name),
            (None, Some(d)) => format!("{}@{d}", e.name),
            (None, None) => e.name.clone(),
        };
        match c.decision.verdict {
            Verdict::Block => blocked += 1,
            Verdict::Warn => warned += 1,
            Verdict::Allow => {}
        }
        for f in &c.decision.findings {
            let mut tag = match f.effective {
                Verdict::Block => "BLOCK",
                Verdict::Warn => "WARN",
                Verdict::Allow => "allow",
            }
            .to_string();
            if f.audit {
                tag.push_str(" (audit)");
            }
            if let Some(w) = &f.waived_by {
                let _ = write!(tag, " (waived: {w})");
            }
            let _ = writeln!(
                out,
                "{file}: {}: {tag} {what} [{}] {}",
                e.location, f.rule, f.reason
            );
        }
    }
    let _ = writeln!(
        out,
        "{file}: {} checked, {blocked} blocked, {warned} warned",
        checked.len()
    );
    (out, blocked > 0)
}
