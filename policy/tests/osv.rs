//! The offline OSV database: fixtures written as osv.dev publishes them (a directory of
//! JSON files, or an `all.zip`), checked through the engine.

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sluice_policy::{Ecosystem, Engine, Facts, Verdict};

const NOW: i64 = 1_780_272_000;

fn facts<'a>(eco: Ecosystem, name: &'a str, version: &'a str) -> Facts<'a> {
    Facts {
        ecosystem: eco,
        upstream: "up",
        public_upstream: true,
        name,
        version: Some(version),
        digest: None,
        published_unix: None,
        license: None,
        has_install_script: false,
    }
}

fn write(dir: &Path, file: &str, doc: serde_json::Value) {
    let p = dir.join(file);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

fn engine(extra: &str, paths: &[&Path]) -> Engine {
    let osv: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.to_str().unwrap()))
        .collect();
    let text = format!("osv = [{}]\n{extra}", osv.join(", "));
    let cfg: sluice_config::PolicyConfig = toml::from_str(&text).unwrap();
    Engine::new(&cfg).unwrap_or_else(|e| panic!("{e}"))
}

fn npm_verdict(e: &Engine, name: &str, v: &str) -> Verdict {
    e.evaluate(&facts(Ecosystem::Npm, name, v), NOW).verdict
}

fn malicious_fixture(dir: &Path) {
    write(
        dir,
        "npm/MAL-2026-1.json",
        json!({
            "id": "MAL-2026-1",
            "summary": "Malicious code in evil-pkg (npm)",
            "affected": [{
                "package": {"ecosystem": "npm", "name": "evil-pkg"},
                "versions": ["1.0.1"],
                "ranges": [
                    {"type": "SEMVER", "events": [{"introduced": "2.0.0"}, {"fixed": "2.0.3"}]},
                    {"type": "SEMVER", "events": [{"introduced": "3.1.0"}, {"last_affected": "3.1.4"}]},
                    {"type": "GIT", "repo": "https://example.invalid/x",
                     "events": [{"introduced": "0"}, {"fixed": "abc123"}]}
                ]
            }]
        }),
    );
}

#[test]
fn malicious_advisory_blocks_exactly_its_versions_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    malicious_fixture(dir.path());
    let e = engine("", &[dir.path()]);
    assert_eq!(e.osv_stats(), (1, 1));
    assert!(!e.is_empty());
    let d = e.evaluate(&facts(Ecosystem::Npm, "evil-pkg", "1.0.1"), NOW);
    assert_eq!(d.verdict, Verdict::Block);
    assert_eq!(d.rule.as_deref(), Some("osv"));
    let reason = d.reason.unwrap();
    assert!(
        reason.contains("MAL-2026-1") && reason.contains("Malicious code in evil-pkg"),
        "{reason}"
    );
    for blocked in ["1.0.1", "2.0.0", "2.0.2", "2.0.3-beta", "3.1.0", "3.1.4"] {
        assert_eq!(
            npm_verdict(&e, "evil-pkg", blocked),
            Verdict::Block,
            "{blocked}"
        );
    }
    // fixed is exclusive, last_affected inclusive, and nothing outside the ranges.
    for allowed in [
        "1.0.0", "1.0.2", "1.9.9", "2.0.3", "2.1.0", "3.0.9", "3.1.5", "3.2.0",
    ] {
        assert_eq!(
            npm_verdict(&e, "evil-pkg", allowed),
            Verdict::Allow,
            "{allowed}"
        );
    }
    assert_eq!(npm_verdict(&e, "evil-pkg-2", "1.0.1"), Verdict::Allow);
    // The package document itself is not judged by advisories (its versions are).
    let mut doc = facts(Ecosystem::Npm, "evil-pkg", "");
    doc.version = None;
    assert_eq!(e.evaluate(&doc, NOW).verdict, Verdict::Allow);
}

#[test]
fn withdrawn_advisories_and_other_ecosystems_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a/MAL-2026-2.json",
        json!({
            "id": "MAL-2026-2",
            "withdrawn": "2026-01-02T00:00:00Z",
            "affected": [{"package": {"ecosystem": "npm", "name": "oops"},
                          "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}]
        }),
    );
    write(
        dir.path(),
        "b/deep/MAL-2026-3.json",
        json!({
            "id": "MAL-2026-3",
            "affected": [{"package": {"ecosystem": "Go", "name": "oops"},
                          "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}]
        }),
    );
    std::fs::write(dir.path().join("README.md"), "not json").unwrap();
    let e = engine("", &[dir.path()]);
    assert_eq!(e.osv_stats(), (0, 0));
    assert!(e.is_empty());
    assert_eq!(npm_verdict(&e, "oops", "1.0.0"), Verdict::Allow);
}

#[test]
fn introduced_zero_means_every_version_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "MAL-2026-4.json",
        json!({
            "id": "MAL-2026-4",
            "affected": [{"package": {"ecosystem": "npm", "name": "@evil/scope"},
                          "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}]
        }),
    );
    let e = engine("", &[dir.path()]);
    assert_eq!(
        npm_verdict(&e, "@evil/scope", "0.0.0-alpha"),
        Verdict::Block
    );
    assert_eq!(npm_verdict(&e, "@evil/scope", "99.0.0"), Verdict::Block);
    assert_eq!(npm_verdict(&e, "@Evil/scope", "1.0.0"), Verdict::Allow);
}

#[test]
fn pypi_advisories_use_pep440_order_and_normalised_names() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "PYSEC-2026-1.json",
        json!({
            "id": "GHSA-xxxx-yyyy-zzzz",
            "aliases": ["CVE-2026-0001"],
            "summary": "RCE in Foo.Bar",
            "database_specific": {"severity": "HIGH"},
            "affected": [{
                "package": {"ecosystem": "PyPI", "name": "Foo.Bar"},
                "ranges": [{"type": "ECOSYSTEM", "events": [
                    {"introduced": "1.0"}, {"fixed": "1.0.post1"},
                    {"introduced": "2.0rc1"}, {"fixed": "2.0.2"}
                ]}]
            }]
        }),
    );
    let e = engine("vulnerability_threshold = \"high\"", &[dir.path()]);
    let v = |name, ver| e.evaluate(&facts(Ecosystem::Pypi, name, ver), NOW).verdict;
    assert_eq!(v("foo-bar", "1.0"), Verdict::Block);
    assert_eq!(v("FOO_bar", "1.0.0"), Verdict::Block);
    assert_eq!(v("foo-bar", "1.0+local"), Verdict::Block);
    assert_eq!(v("foo-bar", "1.0.post1"), Verdict::Allow);
    assert_eq!(v("foo-bar", "1.0rc1"), Verdict::Allow);
    assert_eq!(v("foo-bar", "2.0b1"), Verdict::Allow);
    assert_eq!(v("foo-bar", "2.0rc2"), Verdict::Block);
    assert_eq!(v("foo-bar", "2.0.1"), Verdict::Block);
    assert_eq!(v("foo-bar", "2.0.2"), Verdict::Allow);
}

#[test]
fn vulnerabilities_block_at_or_above_the_threshold_and_warn_below_it() {
    let dir = tempfile::tempdir().unwrap();
    for (id, sev) in [("GHSA-low", "LOW"), ("GHSA-crit", "CRITICAL")] {
        write(
            dir.path(),
            &format!("{id}.json"),
            json!({
                "id": id,
                "database_specific": {"severity": sev},
                "affected": [{"package": {"ecosystem": "npm", "name": id},
                              "versions": ["1.0.0"]}]
            }),
        );
    }
    write(
        dir.path(),
        "GHSA-cvss.json",
        json!({
            "id": "GHSA-cvss",
            "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
            "affected": [{"package": {"ecosystem": "npm", "name": "GHSA-cvss"}, "versions": ["1.0.0"]}]
        }),
    );
    let e = engine("vulnerability_threshold = \"high\"", &[dir.path()]);
    assert_eq!(npm_verdict(&e, "GHSA-crit", "1.0.0"), Verdict::Block);
    assert_eq!(npm_verdict(&e, "GHSA-cvss", "1.0.0"), Verdict::Block);
    let d = e.evaluate(&facts(Ecosystem::Npm, "GHSA-low", "1.0.0"), NOW);
    assert_eq!(d.verdict, Verdict::Warn);
    assert!(d.reason.unwrap().contains("low vulnerability"));
    // Without a threshold, vulnerabilities only warn.
    let e = engine("", &[dir.path()]);
    assert_eq!(npm_verdict(&e, "GHSA-crit", "1.0.0"), Verdict::Warn);
}

#[test]
fn osv_findings_follow_osv_mode_and_waivers_by_osv_advisory_id_or_alias() {
    let dir = tempfile::tempdir().unwrap();
    malicious_fixture(dir.path());
    let audit = engine("osv_mode = \"audit\"", &[dir.path()]);
    let d = audit.evaluate(&facts(Ecosystem::Npm, "evil-pkg", "1.0.1"), NOW);
    assert_eq!(d.verdict, Verdict::Allow);
    assert!(d.findings[0].audit && d.findings[0].verdict == Verdict::Block);

    for rule in ["osv", "MAL-2026-1"] {
        let waived = engine(
            &format!(
                "[[waiver]]\nrule = \"{rule}\"\npackage = \"evil-*\"\nversions = \"1.0.1\"\nreason = \"lab use\"\nexpires = \"2026-06-30\""
            ),
            &[dir.path()],
        );
        assert_eq!(
            npm_verdict(&waived, "evil-pkg", "1.0.1"),
            Verdict::Allow,
            "{rule}"
        );
        assert_eq!(
            npm_verdict(&waived, "evil-pkg", "2.0.0"),
            Verdict::Block,
            "{rule}"
        );
    }
    let other = engine(
        "[[waiver]]\nrule = \"MAL-2026-9\"\npackage = \"evil-pkg\"\nreason = \"r\"\nexpires = \"2099-01-01\"",
        &[dir.path()],
    );
    assert_eq!(npm_verdict(&other, "evil-pkg", "1.0.1"), Verdict::Block);
}

#[test]
fn zip_exports_load_like_directories() {
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("all.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..50 {
        zip.start_file(format!("MAL-2026-{i}.json"), opts).unwrap();
        let doc = json!({
            "id": format!("MAL-2026-{i}"),
            "summary": format!("Malicious code in pkg-{i}"),
            "affected": [{"package": {"ecosystem": "PyPI", "name": format!("Pkg_{i}")},
                          "versions": ["0.1", "0.2"]}]
        });
        zip.write_all(&serde_json::to_vec(&doc).unwrap()).unwrap();
    }
    zip.start_file("README.txt", opts).unwrap();
    zip.write_all(b"not an advisory").unwrap();
    zip.finish().unwrap();

    let e = engine("", &[&zip_path]);
    assert_eq!(e.osv_stats(), (50, 50));
    let v = |name, ver| e.evaluate(&facts(Ecosystem::Pypi, name, ver), NOW).verdict;
    assert_eq!(v("pkg-7", "0.2"), Verdict::Block);
    assert_eq!(v("pkg-7", "0.2.0"), Verdict::Block);
    assert_eq!(v("pkg-7", "0.3"), Verdict::Allow);
    assert_eq!(v("pkg-50", "0.1"), Verdict::Allow);
}

#[test]
fn a_malformed_advisory_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("MAL-bad.json"), "{\"id\": 5}").unwrap();
    let cfg: sluice_config::PolicyConfig =
        toml::from_str(&format!("osv = [{:?}]", dir.path().to_str().unwrap())).unwrap();
    let err = Engine::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("MAL-bad.json"), "{err}");
}

#[test]
fn rules_come_before_advisories_in_findings() {
    let dir = tempfile::tempdir().unwrap();
    malicious_fixture(dir.path());
    let e = engine(
        "[[rule]]\nid = \"scripts\"\nkind = \"install_scripts\"",
        &[dir.path()],
    );
    let mut f = facts(Ecosystem::Npm, "evil-pkg", "1.0.1");
    f.has_install_script = true;
    let d = e.evaluate(&f, NOW);
    let ids: Vec<_> = d.findings.iter().map(|f| f.rule.as_str()).collect();
    assert_eq!(ids, ["scripts", "osv"]);
    assert_eq!(d.rule.as_deref(), Some("osv"));
}

#[test]
fn crates_io_advisories_apply_to_cargo_crates_under_either_spelling() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "crates.io/RUSTSEC-2026-0001.json",
        json!({
            "id": "RUSTSEC-2026-0001",
            "aliases": ["MAL-2026-77"],
            "summary": "Malicious build script in evil_crate",
            "affected": [{
                "package": {"ecosystem": "crates.io", "name": "evil_crate"},
                "ranges": [{"type": "SEMVER", "events": [{"introduced": "0.0.0-0"}, {"fixed": "0.3.0"}]}]
            }]
        }),
    );
    let e = engine("", &[dir.path()]);
    assert_eq!(e.osv_stats(), (1, 1));
    let v = |name, ver| e.evaluate(&facts(Ecosystem::Cargo, name, ver), NOW).verdict;
    assert_eq!(v("evil_crate", "0.2.9"), Verdict::Block);
    // Cargo registries treat `-`/`_` and case as the same name.
    assert_eq!(v("Evil-Crate", "0.2.9"), Verdict::Block);
    assert_eq!(v("evil_crate", "0.3.0"), Verdict::Allow);
    // Not an npm package.
    assert_eq!(npm_verdict(&e, "evil_crate", "0.2.9"), Verdict::Allow);
}
