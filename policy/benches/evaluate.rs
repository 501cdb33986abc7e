//! Cost of one `Engine::evaluate` with a large policy: 10,000 generated rules (exact
//! names, prefix globs, a few true wildcards and every-package rules) and a generated OSV
//! `all.zip` of 200,000 advisories over 50,000 package names.
//!
//! Run: `cargo bench -p sluice-policy --bench evaluate`

use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use sluice_policy::{Ecosystem, Engine, Facts, Verdict};

const NOW: i64 = 1_780_272_000;
const RULES: usize = 10_000;
const ADVISORIES: usize = 200_000;
const PACKAGES: usize = 50_000;

fn policy_toml(osv_zip: &std::path::Path) -> String {
    let mut s = format!(
        "vulnerability_threshold = \"high\"\nosv = [{:?}]\n",
        osv_zip.to_str().unwrap()
    );
    let mut rule = |body: String| {
        s += "[[rule]]\n";
        s += &body;
        s += "\n";
    };
    rule("id = \"cooldown\"\nkind = \"min_age\"\nage = \"3d\"\nexempt = [\"@myorg/*\"]".into());
    rule("id = \"scripts\"\nkind = \"install_scripts\"\nformat = \"npm\"".into());
    rule("id = \"licenses\"\nkind = \"license\"\ndeny = [\"AGPL-3.0\", \"SSPL-1.0\"]".into());
    rule("id = \"internal\"\nkind = \"namespace\"\nnames = [\"@myorg/*\", \"myorg-*\"]".into());
    let mut n = 4;
    // True wildcards (no literal prefix): every evaluation must try these.
    for i in 0..16 {
        rule(format!(
            "id = \"suffix-{i}\"\nkind = \"deny\"\npackage = \"*-evil{i}\""
        ));
        n += 1;
    }
    // Prefix globs: found by probing the name's prefixes.
    for i in 0..1_500 {
        rule(format!(
            "id = \"scope-{i}\"\nkind = \"deny\"\nformat = \"npm\"\npackage = \"@corp{i}/*\"\nversions = \"<1.0.0\""
        ));
        n += 1;
    }
    let mut i = 0;
    while n < RULES {
        if i % 10 == 0 {
            rule(format!(
                "id = \"py-{i}\"\nkind = \"deny\"\nformat = \"pypi\"\npackage = \"py_pkg.{i}\"\nversions = \">=1.0, <2.0, !=1.5.*\""
            ));
        } else {
            rule(format!(
                "id = \"deny-{i}\"\nkind = \"deny\"\nformat = \"npm\"\npackage = \"pkg-{i}\"\nversions = \"^1.2.3 || >=3.0.0 <3.1.0\""
            ));
        }
        i += 1;
        n += 1;
    }
    s
}

fn osv_zip(path: &std::path::Path) {
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(
        std::fs::File::create(path).unwrap(),
    ));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1));
    for a in 0..ADVISORIES {
        let pkg = a % PACKAGES;
        let (id, sev) = if a % 5 == 0 {
            (format!("MAL-2026-{a}"), "CRITICAL")
        } else {
            (format!("GHSA-{a:08x}"), ["LOW", "MODERATE", "HIGH"][a % 3])
        };
        let major = a / PACKAGES;
        let doc = serde_json::json!({
            "id": id,
            "summary": format!("advisory {a} for osv-pkg-{pkg}"),
            "database_specific": {"severity": sev},
            "affected": [{
                "package": {"ecosystem": "npm", "name": format!("osv-pkg-{pkg}")},
                "ranges": [{"type": "SEMVER", "events": [
                    {"introduced": format!("{major}.0.0")},
                    {"fixed": format!("{major}.4.2")}
                ]}],
                "versions": [format!("{major}.0.0"), format!("{major}.1.0")]
            }]
        });
        zip.start_file(format!("{id}.json"), opts).unwrap();
        zip.write_all(&serde_json::to_vec(&doc).unwrap()).unwrap();
    }
    zip.finish().unwrap();
}

fn npm<'a>(name: &'a str, version: &'a str) -> Facts<'a> {
    Facts {
        ecosystem: Ecosystem::Npm,
        upstream: "npmjs",
        public_upstream: true,
        name,
        version: Some(version),
        digest: None,
        published_unix: Some(NOW - 30 * 86_400),
        license: Some("MIT OR Apache-2.0"),
        has_install_script: false,
    }
}

fn measure(engine: &Engine, label: &str, facts: &Facts, expect: Verdict) {
    assert_eq!(engine.evaluate(facts, NOW).verdict, expect, "{label}");
    let iters = 500_000;
    // Warm up caches and branch predictors.
    for _ in 0..iters / 10 {
        black_box(engine.evaluate(black_box(facts), NOW));
    }
    let t = Instant::now();
    for _ in 0..iters {
        black_box(engine.evaluate(black_box(facts), NOW));
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    println!("{label:<44} {ns:>8.0} ns/eval  ({expect:?})");
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("npm-all.zip");
    let t = Instant::now();
    osv_zip(&zip_path);
    let size = std::fs::metadata(&zip_path).unwrap().len();
    println!(
        "generated OSV zip: {ADVISORIES} advisories, {PACKAGES} packages, {:.1} MiB in {:.1?}",
        size as f64 / 1048576.0,
        t.elapsed()
    );

    let cfg: sluice_config::PolicyConfig = toml::from_str(&policy_toml(&zip_path)).unwrap();
    assert_eq!(cfg.rules.len(), RULES);
    let t = Instant::now();
    let engine = Engine::new(&cfg).unwrap();
    println!(
        "Engine::new: {RULES} rules + OSV {:?} (advisories, packages) in {:.1?}",
        engine.osv_stats(),
        t.elapsed()
    );

    measure(
        &engine,
        "miss (no rule, no advisory)",
        &npm("react", "18.2.0"),
        Verdict::Allow,
    );
    let mut plain = npm("react", "18.2.0");
    plain.license = None;
    measure(&engine, "miss, no license to parse", &plain, Verdict::Allow);
    measure(
        &engine,
        "miss, OSV package, unaffected version",
        &npm("osv-pkg-123", "0.9.0"),
        Verdict::Allow,
    );
    measure(
        &engine,
        "hit: exact deny rule",
        &npm("pkg-4321", "1.5.0"),
        Verdict::Block,
    );
    measure(
        &engine,
        "hit: exact rule name, version outside",
        &npm("pkg-4321", "2.0.0"),
        Verdict::Allow,
    );
    measure(
        &engine,
        "hit: prefix glob @corp777/*",
        &npm("@corp777/tool", "0.5.0"),
        Verdict::Block,
    );
    measure(
        &engine,
        "hit: true wildcard *-evil7",
        &npm("very-evil7", "1.0.0"),
        Verdict::Block,
    );
    measure(
        &engine,
        "hit: OSV MAL- advisory",
        &npm("osv-pkg-125", "0.1.0"),
        Verdict::Block,
    );
    let mut young = npm("react", "19.0.0");
    young.published_unix = Some(NOW - 3600);
    measure(&engine, "hit: min_age cooldown", &young, Verdict::Block);
    let pypi = Facts {
        ecosystem: Ecosystem::Pypi,
        name: "Py_Pkg.20",
        version: Some("1.2"),
        ..npm("", "0")
    };
    measure(
        &engine,
        "hit: PyPI exact (normalised name)",
        &pypi,
        Verdict::Block,
    );
}
