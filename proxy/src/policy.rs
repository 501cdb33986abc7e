//! Policy at serve time: the current [`sluice_policy::Engine`] (swapped atomically on
//! reload), one call per artifact, every decision counted and every finding logged.
//!
//! Reloads (SIGHUP) build a new engine off the request path from the config file and swap
//! it in; the generation number changes so rendered metadata (which drops blocked
//! versions) is re-rendered. A config that fails to load keeps the old engine.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_policy::{Decision, Engine, Facts, Verdict};

use crate::error::ProxyError;
use crate::refusals::{Refusals, Seen};
use crate::store::unix_secs;

/// An engine and what the proxy needs to know about its rules.
struct Live {
    engine: Arc<Engine>,
    /// Ids of `namespace` rules: their blocks answer 404 (the name does not exist here).
    namespace_ids: HashSet<String>,
}

impl Live {
    fn new(engine: Engine, cfg: &sluice_config::PolicyConfig) -> Live {
        Live {
            engine: Arc::new(engine),
            namespace_ids: cfg
                .rules
                .iter()
                .filter(|r| r.kind == sluice_config::RuleKind::Namespace)
                .map(|r| r.id.clone())
                .collect(),
        }
    }
}

/// The live policy.
pub struct Policy {
    live: ArcSwap<Live>,
    generation: AtomicU64,
    config_path: Option<PathBuf>,
    /// What [`Policy::check`] refused (or would have, in audit mode) lately.
    pub refusals: Refusals,
}

impl Policy {
    /// Starts with `engine` built from `cfg`; `config_path` is re-read on reload (none:
    /// embedded default); `refusals` as persisted.
    pub fn new(
        engine: Engine,
        cfg: &sluice_config::PolicyConfig,
        config_path: Option<PathBuf>,
        refusals: Refusals,
    ) -> Policy {
        // Present from the start, so that the first failed reload is an increase.
        for result in ["ok", "error"] {
            metrics::counter!("sluice_policy_reloads_total", "result" => result).increment(0);
        }
        Policy {
            live: ArcSwap::from_pointee(Live::new(engine, cfg)),
            generation: AtomicU64::new(1),
            config_path,
            refusals,
        }
    }

    /// Changes whenever the engine is replaced (keys rendered metadata).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current engine.
    pub fn engine(&self) -> Arc<Engine> {
        self.live.load().engine.clone()
    }

    /// Evaluates `facts`, counts and logs the outcome.
    pub fn decide(&self, facts: &Facts) -> Decision {
        let live = self.live.load();
        let engine = &live.engine;
        if engine.is_empty() {
            return Decision::allow();
        }
        let d = engine.evaluate(facts, unix_secs() as i64);
        for f in &d.findings {
            metrics::counter!(
                "sluice_policy_decisions_total",
                "rule" => f.rule.clone(),
                "decision" => f.effective.as_str()
            )
            .increment(1);
            tracing::info!(
                target: "policy",
                format = facts.ecosystem_label(),
                upstream = facts.upstream,
                name = facts.name,
                version = facts.version.unwrap_or(""),
                digest = facts.digest.unwrap_or(""),
                rule = %f.rule,
                verdict = f.verdict.as_str(),
                effective = f.effective.as_str(),
                audit = f.audit,
                waived_by = f.waived_by.as_deref().unwrap_or(""),
                reason = %f.reason,
            );
        }
        if d.findings.is_empty() {
            metrics::counter!("sluice_policy_decisions_total", "rule" => "", "decision" => "allow")
                .increment(1);
        }
        d
    }

    /// What the policy would decide for `facts`, neither counted, logged nor recorded: a
    /// question (`/-/api/policy/check`, the dashboard), not a request.
    pub fn what_if(&self, facts: &Facts) -> Decision {
        let live = self.live.load();
        if live.engine.is_empty() {
            return Decision::allow();
        }
        live.engine.evaluate(facts, unix_secs() as i64)
    }

    /// `Err(Blocked)` when `facts` (of a client's request) are blocked. The block, and each
    /// audit-mode rule that would have blocked (unless waived), is recorded in
    /// [`Policy::refusals`].
    pub fn check(&self, facts: &Facts) -> Result<Decision, ProxyError> {
        self.check_recording(facts, Audits::Record(None))
    }

    /// [`Policy::check`] of the same request with more facts (an OCI tag's digest, once
    /// known): the audit findings of the `earlier` decision are not recorded twice.
    pub fn check_again(&self, facts: &Facts, earlier: &Decision) -> Result<Decision, ProxyError> {
        self.check_recording(facts, Audits::Record(Some(earlier)))
    }

    /// [`Policy::check`] of a package as a whole when the same request is checked again
    /// with its version (npm tarballs, PyPI files and JSON API versions): a block is
    /// recorded, audit findings are left to the versioned check, so a request is one entry
    /// per rule.
    pub fn check_package(&self, facts: &Facts) -> Result<Decision, ProxyError> {
        self.check_recording(facts, Audits::Skip)
    }

    fn check_recording(&self, facts: &Facts, audits: Audits<'_>) -> Result<Decision, ProxyError> {
        let d = self.decide(facts);
        let seen = |rule: &str, outcome: &'static str, reason: &str| {
            self.refusals.record(&Seen {
                format: facts.ecosystem_label(),
                upstream: facts.upstream,
                name: facts.name,
                version: facts.version,
                rule,
                outcome,
                reason,
            })
        };
        if let Audits::Record(earlier) = audits {
            let known =
                |rule: &str| earlier.is_some_and(|e| e.findings.iter().any(|f| f.rule == rule));
            let would: Vec<&sluice_policy::Finding> = d
                .findings
                .iter()
                .filter(|f| {
                    f.audit
                        && f.verdict == Verdict::Block
                        && f.waived_by.is_none()
                        && !known(&f.rule)
                })
                .collect();
            // Once per rule: OSV's findings are one per advisory, all under rule `osv`.
            for (i, f) in would.iter().enumerate() {
                if would[..i].iter().any(|g| g.rule == f.rule) {
                    continue;
                }
                let more = would[i + 1..].iter().filter(|g| g.rule == f.rule).count();
                if more == 0 {
                    seen(&f.rule, "audit", &f.reason);
                } else {
                    seen(&f.rule, "audit", &format!("{} (and {more} more)", f.reason));
                }
            }
        }
        if d.verdict == Verdict::Block {
            seen(
                d.rule.as_deref().unwrap_or_default(),
                "block",
                d.reason.as_deref().unwrap_or_default(),
            );
            let rule = d.rule.clone().unwrap_or_default();
            let hidden = self.live.load().namespace_ids.contains(&rule);
            return Err(ProxyError::Blocked {
                hidden,
                rule,
                reason: d.reason.clone().unwrap_or_default(),
            });
        }
        Ok(d)
    }

    /// A block decided earlier and remembered by the caller, repeated for another request:
    /// counted, logged and recorded like the decision it repeats.
    pub fn repeat_block(&self, seen: &Seen<'_>) {
        metrics::counter!("sluice_policy_decisions_total", "rule" => seen.rule.to_string(), "decision" => "block")
            .increment(1);
        tracing::info!(target: "policy", format = seen.format, upstream = seen.upstream,
            name = seen.name, version = seen.version.unwrap_or(""), rule = seen.rule,
            verdict = "block", effective = "block", remembered = true, reason = seen.reason);
        self.refusals.record(seen);
    }

    /// Re-reads the config file and swaps in a new engine; on error keeps the old one.
    /// Returns the config it loaded, for the caller to apply its `[auth]` and TLS files too.
    pub async fn reload(self: &Arc<Self>) -> Result<sluice_config::Config, String> {
        let path = self.config_path.clone();
        let built = tokio::task::spawn_blocking(
            move || -> Result<(Live, sluice_config::Config), String> {
                let cfg = match &path {
                    Some(p) => sluice_config::load_file(p).map_err(|e| e.to_string())?,
                    None => sluice_config::Config::embedded_default(),
                };
                let engine = Engine::new(&cfg.policy).map_err(|e| e.to_string())?;
                Ok((Live::new(engine, &cfg.policy), cfg))
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        match built {
            Ok((live, cfg)) => {
                let (adv, pkgs) = live.engine.osv_stats();
                self.live.store(Arc::new(live));
                let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                metrics::counter!("sluice_policy_reloads_total", "result" => "ok").increment(1);
                tracing::info!(
                    generation = g,
                    osv_advisories = adv,
                    osv_packages = pkgs,
                    "policy reloaded"
                );
                Ok(cfg)
            }
            Err(e) => {
                metrics::counter!("sluice_policy_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %e, "policy reload failed; keeping the previous policy");
                Err(e)
            }
        }
    }
}

/// Which audit findings a check records.
#[derive(Clone, Copy)]
enum Audits<'a> {
    /// Those not already found by the request's `earlier` decision.
    Record(Option<&'a Decision>),
    /// None (a later check of the same request records them).
    Skip,
}

/// Metric/log label of a facts' ecosystem.
trait EcosystemLabel {
    fn ecosystem_label(&self) -> &'static str;
}

impl EcosystemLabel for Facts<'_> {
    fn ecosystem_label(&self) -> &'static str {
        match self.ecosystem {
            sluice_policy::Ecosystem::Oci => "oci",
            sluice_policy::Ecosystem::Npm => "npm",
            sluice_policy::Ecosystem::Pypi => "pypi",
            sluice_policy::Ecosystem::Cargo => "cargo",
        }
    }
}
