//! The engine as the proxy and `sluice policy check` use it: configuration in the §8 key
//! names, facts in, decisions out.

use sluice_policy::{Decision, Ecosystem, Engine, Facts, Verdict};

/// 2026-06-01T00:00:00Z.
const NOW: i64 = 1_780_272_000;
const DAY: i64 = 86_400;

fn engine(toml_text: &str) -> Engine {
    Engine::new(&config(toml_text)).unwrap_or_else(|e| panic!("{e}"))
}

fn config(toml_text: &str) -> sluice_config::PolicyConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
}

fn engine_err(toml_text: &str) -> String {
    match Engine::new(&config(toml_text)) {
        Ok(_) => panic!("expected an error for\n{toml_text}"),
        Err(e) => e.to_string(),
    }
}

fn npm<'a>(name: &'a str, version: &'a str) -> Facts<'a> {
    Facts {
        ecosystem: Ecosystem::Npm,
        upstream: "npmjs",
        public_upstream: true,
        name,
        version: Some(version),
        digest: None,
        published_unix: Some(NOW - 365 * DAY),
        license: None,
        has_install_script: false,
    }
}

fn pypi<'a>(name: &'a str, version: &'a str) -> Facts<'a> {
    Facts {
        ecosystem: Ecosystem::Pypi,
        upstream: "pypi",
        ..npm(name, version)
    }
}

fn oci<'a>(name: &'a str, tag: Option<&'a str>, digest: Option<&'a str>) -> Facts<'a> {
    Facts {
        ecosystem: Ecosystem::Oci,
        upstream: "dockerhub",
        version: tag,
        digest,
        published_unix: None,
        ..npm(name, "0.0.0")
    }
}

fn verdict(e: &Engine, f: &Facts) -> Verdict {
    e.evaluate(f, NOW).verdict
}

#[test]
fn engine_is_send_sync_and_empty_without_rules() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
    let e = engine("");
    assert!(e.is_empty());
    assert_eq!(e.osv_stats(), (0, 0));
    assert_eq!(e.evaluate(&npm("x", "1.0.0"), NOW), Decision::allow());
}

#[test]
fn deny_blocks_exactly_the_listed_versions() {
    let e = engine(
        r#"
        [[rule]]
        id = "no-bad-release"
        kind = "deny"
        format = "npm"
        package = "event-stream"
        versions = "3.3.6"
        reason = "compromised release"
        "#,
    );
    assert!(!e.is_empty());
    let d = e.evaluate(&npm("event-stream", "3.3.6"), NOW);
    assert_eq!(d.verdict, Verdict::Block);
    assert_eq!(d.rule.as_deref(), Some("no-bad-release"));
    assert_eq!(d.reason.as_deref(), Some("compromised release"));
    assert_eq!(d.findings.len(), 1);
    assert_eq!(verdict(&e, &npm("event-stream", "3.3.5")), Verdict::Allow);
    assert_eq!(verdict(&e, &npm("event-stream-x", "3.3.6")), Verdict::Allow);
    // Other ecosystems are untouched by an npm rule.
    assert_eq!(verdict(&e, &pypi("event-stream", "3.3.6")), Verdict::Allow);
}

#[test]
fn deny_without_versions_blocks_the_package_document_too() {
    let e = engine("[[rule]]\nid = \"d\"\nkind = \"deny\"\npackage = \"evil-*\"");
    let mut f = npm("evil-pkg", "1.0.0");
    assert_eq!(verdict(&e, &f), Verdict::Block);
    f.version = None;
    assert_eq!(verdict(&e, &f), Verdict::Block);
    assert_eq!(
        verdict(&e, &oci("evil-img", Some("latest"), None)),
        Verdict::Block
    );
    assert_eq!(verdict(&e, &npm("good", "1.0.0")), Verdict::Allow);
}

#[test]
fn deny_range_catches_prereleases_inside_it() {
    let e = engine(
        r#"
        [[rule]]
        id = "d"
        kind = "deny"
        format = "npm"
        package = "left-pad"
        versions = ">=1.3.0 <2"
        "#,
    );
    assert_eq!(
        verdict(&e, &npm("left-pad", "1.4.0-beta.1")),
        Verdict::Block
    );
    assert_eq!(verdict(&e, &npm("left-pad", "1.2.9")), Verdict::Allow);
    assert_eq!(verdict(&e, &npm("left-pad", "2.0.0-rc.1")), Verdict::Allow);
}

#[test]
fn allow_rule_blocks_versions_outside_its_range_and_ignores_other_packages() {
    let e = engine(
        r#"
        [[rule]]
        id = "pin-lodash"
        kind = "allow"
        format = "npm"
        package = "lodash"
        versions = "^4.17.21"
        "#,
    );
    assert_eq!(verdict(&e, &npm("lodash", "4.17.21")), Verdict::Allow);
    assert_eq!(verdict(&e, &npm("lodash", "4.18.0")), Verdict::Allow);
    let d = e.evaluate(&npm("lodash", "4.17.20"), NOW);
    assert_eq!(d.verdict, Verdict::Block);
    assert!(d.reason.unwrap().contains("^4.17.21"));
    // Allow ranges keep npm's prerelease semantics.
    assert_eq!(verdict(&e, &npm("lodash", "4.18.0-beta")), Verdict::Block);
    assert_eq!(verdict(&e, &npm("underscore", "1.0.0")), Verdict::Allow);
    let mut doc = npm("lodash", "x");
    doc.version = None;
    assert_eq!(verdict(&e, &doc), Verdict::Allow);
}

#[test]
fn pypi_rules_compare_pep503_names_and_pep440_versions() {
    let e = engine(
        r#"
        [[rule]]
        id = "d"
        kind = "deny"
        format = "pypi"
        package = "Django_REST.framework"
        versions = "<3.15, !=3.14.*"
        "#,
    );
    assert_eq!(
        verdict(&e, &pypi("django-rest-framework", "3.13")),
        Verdict::Block
    );
    assert_eq!(
        verdict(&e, &pypi("Django.Rest_Framework", "3.13.post1")),
        Verdict::Block
    );
    assert_eq!(
        verdict(&e, &pypi("django-rest-framework", "3.14.2")),
        Verdict::Allow
    );
    assert_eq!(
        verdict(&e, &pypi("django-rest-framework", "3.15")),
        Verdict::Allow
    );
}

#[test]
fn oci_deny_matches_tag_globs_and_digests() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let e = engine(&format!(
        r#"
        [[rule]]
        id = "old-alpine"
        kind = "deny"
        format = "oci"
        package = "library/alpine"
        versions = "3.1?"

        [[rule]]
        id = "bad-digest"
        kind = "deny"
        format = "oci"
        package = "library/*"
        versions = "{digest}"
        "#
    ));
    assert_eq!(
        verdict(&e, &oci("library/alpine", Some("3.12"), None)),
        Verdict::Block
    );
    assert_eq!(
        verdict(&e, &oci("library/alpine", Some("3.20"), None)),
        Verdict::Allow
    );
    let d = e.evaluate(&oci("library/nginx", None, Some(&digest)), NOW);
    assert_eq!(d.rule.as_deref(), Some("bad-digest"));
    let other = format!("sha256:{}", "b".repeat(64));
    assert_eq!(
        verdict(&e, &oci("library/nginx", None, Some(&other))),
        Verdict::Allow
    );
}

#[test]
fn min_age_blocks_young_versions_except_exempt_names() {
    let e = engine(
        r#"
        [[rule]]
        id = "cooldown"
        kind = "min_age"
        age = "7d"
        exempt = ["@myorg/*"]
        "#,
    );
    let mut f = npm("left-pad", "1.3.0");
    f.published_unix = Some(NOW - 2 * DAY);
    let d = e.evaluate(&f, NOW);
    assert_eq!(d.verdict, Verdict::Block);
    assert!(
        d.reason.as_deref().unwrap().contains("7d cooldown"),
        "{d:?}"
    );
    f.published_unix = Some(NOW - 7 * DAY);
    assert_eq!(verdict(&e, &f), Verdict::Allow);
    f.published_unix = Some(NOW - 7 * DAY + 1);
    assert_eq!(verdict(&e, &f), Verdict::Block);
    let mut mine = npm("@myorg/tool", "1.0.0");
    mine.published_unix = Some(NOW - 60);
    assert_eq!(verdict(&e, &mine), Verdict::Allow);
}

#[test]
fn min_age_warns_when_publish_time_is_unknown() {
    let e = engine("[[rule]]\nid = \"cooldown\"\nkind = \"min_age\"\nage = \"7d\"");
    let mut f = pypi("requests", "2.32.0");
    f.published_unix = None;
    let d = e.evaluate(&f, NOW);
    assert_eq!(d.verdict, Verdict::Warn);
    assert!(d.reason.unwrap().contains("publish time unknown"));
    // A package document (no version) is not subject to the cooldown.
    f.version = None;
    assert_eq!(verdict(&e, &f), Verdict::Allow);
}

#[test]
fn namespace_blocks_internal_names_only_from_public_upstreams() {
    let e = engine(
        r#"
        [[rule]]
        id = "internal-names"
        kind = "namespace"
        names = ["@myorg/*", "myorg-*"]
        "#,
    );
    let mut f = npm("@myorg/secret", "1.0.0");
    let d = e.evaluate(&f, NOW);
    assert_eq!(d.verdict, Verdict::Block);
    assert!(d
        .reason
        .unwrap()
        .contains("internal name, never fetched from a public registry"));
    f.version = None;
    assert_eq!(verdict(&e, &f), Verdict::Block);
    f.public_upstream = false;
    assert_eq!(verdict(&e, &f), Verdict::Allow);
    assert_eq!(verdict(&e, &pypi("MyOrg_Utils", "1.0")), Verdict::Block);
    assert_eq!(verdict(&e, &npm("@other/secret", "1.0.0")), Verdict::Allow);
}

#[test]
fn license_deny_blocks_only_when_no_choice_avoids_it() {
    let e =
        engine("[[rule]]\nid = \"no-gpl\"\nkind = \"license\"\ndeny = [\"GPL-3.0\", \"AGPL-3.0\"]");
    let mut f = npm("x", "1.0.0");
    f.license = Some("MIT OR GPL-3.0-or-later");
    assert_eq!(verdict(&e, &f), Verdict::Allow);
    f.license = Some("(MIT AND GPL-3.0-only) OR (AGPL-3.0 AND ISC)");
    assert_eq!(verdict(&e, &f), Verdict::Block);
    f.license = None;
    assert_eq!(verdict(&e, &f), Verdict::Allow);
    f.license = Some("SEE LICENSE IN LICENSE");
    assert_eq!(verdict(&e, &f), Verdict::Warn);
}

#[test]
fn license_allow_list_needs_a_satisfying_choice_and_warns_without_a_license() {
    let e = engine(
        r#"
        [[rule]]
        id = "licenses"
        kind = "license"
        allow = ["MIT", "Apache-2.0", "GPL-2.0 WITH Classpath-exception-2.0"]
        "#,
    );
    let mut f = npm("x", "1.0.0");
    f.license =
        Some("(Apache-2.0 OR GPL-3.0) AND (MIT OR (GPL-2.0-only WITH Classpath-exception-2.0))");
    assert_eq!(verdict(&e, &f), Verdict::Allow);
    f.license = Some("GPL-2.0-only");
    assert_eq!(verdict(&e, &f), Verdict::Block);
    f.license = None;
    let d = e.evaluate(&f, NOW);
    assert_eq!(d.verdict, Verdict::Warn);
    assert_eq!(d.rule.as_deref(), Some("licenses"));
}

#[test]
fn install_scripts_warn_by_default_block_on_request_and_honour_exemptions() {
    let warn = engine("[[rule]]\nid = \"scripts\"\nkind = \"install_scripts\"\nformat = \"npm\"");
    let block = engine(
        "[[rule]]\nid = \"scripts\"\nkind = \"install_scripts\"\naction = \"block\"\nexempt = [\"esbuild\", \"@swc/*\"]",
    );
    let mut f = npm("node-sass", "9.0.0");
    assert_eq!(verdict(&warn, &f), Verdict::Allow);
    f.has_install_script = true;
    assert_eq!(verdict(&warn, &f), Verdict::Warn);
    assert_eq!(verdict(&block, &f), Verdict::Block);
    let mut ok = npm("@swc/core", "1.0.0");
    ok.has_install_script = true;
    assert_eq!(verdict(&block, &ok), Verdict::Allow);
}

#[test]
fn audit_mode_reports_a_block_but_allows() {
    let e = engine(
        r#"
        mode = "audit"
        [[rule]]
        id = "d"
        kind = "deny"
        package = "left-pad"
        [[rule]]
        id = "e"
        kind = "deny"
        package = "right-pad"
        mode = "enforce"
        "#,
    );
    let d = e.evaluate(&npm("left-pad", "1.0.0"), NOW);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.rule, None);
    let f = &d.findings[0];
    assert!(f.audit);
    assert_eq!((f.verdict, f.effective), (Verdict::Block, Verdict::Allow));
    assert_eq!(verdict(&e, &npm("right-pad", "1.0.0")), Verdict::Block);
}

#[test]
fn first_block_in_config_order_decides_and_all_matches_are_findings() {
    let e = engine(
        r#"
        [[rule]]
        id = "scripts"
        kind = "install_scripts"
        [[rule]]
        id = "second"
        kind = "deny"
        package = "x*"
        reason = "second"
        [[rule]]
        id = "first-exact"
        kind = "deny"
        package = "xyz"
        reason = "third"
        "#,
    );
    let mut f = npm("xyz", "1.0.0");
    f.has_install_script = true;
    let d = e.evaluate(&f, NOW);
    assert_eq!(d.verdict, Verdict::Block);
    assert_eq!(d.rule.as_deref(), Some("second"));
    let ids: Vec<_> = d.findings.iter().map(|f| f.rule.as_str()).collect();
    assert_eq!(ids, ["scripts", "second", "first-exact"]);
    // With no block, the first warn decides.
    let d = e.evaluate(&Facts { name: "abc", ..f }, NOW);
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Warn, Some("scripts"))
    );
}

#[test]
fn waivers_apply_through_their_expiry_day_and_then_stop() {
    let e = engine(
        r#"
        [[rule]]
        id = "cooldown"
        kind = "min_age"
        age = "7d"

        [[waiver]]
        rule = "cooldown"
        package = "left-pad"
        versions = ">=1.3.0"
        reason = "urgent fix, reviewed"
        expires = "2026-06-01"
        "#,
    );
    let mut f = npm("left-pad", "1.3.0");
    f.published_unix = Some(NOW - DAY);
    let d = e.evaluate(&f, NOW);
    assert_eq!(d.verdict, Verdict::Allow);
    let w = d.findings[0].waived_by.as_deref().unwrap();
    assert!(
        w.contains("urgent fix, reviewed") && w.contains("2026-06-01"),
        "{w}"
    );
    // Last second of the expiry day (UTC): still waived; the next second: not.
    assert_eq!(e.evaluate(&f, NOW + DAY - 1).verdict, Verdict::Allow);
    assert_eq!(e.evaluate(&f, NOW + DAY).verdict, Verdict::Block);
    // Versions outside the waiver's range, and other packages, are not waived.
    let mut old = npm("left-pad", "1.2.0");
    old.published_unix = Some(NOW - DAY);
    assert_eq!(verdict(&e, &old), Verdict::Block);
    let mut other = npm("right-pad", "1.3.0");
    other.published_unix = Some(NOW - DAY);
    assert_eq!(verdict(&e, &other), Verdict::Block);
}

#[test]
fn waiver_for_one_rule_does_not_waive_another() {
    let e = engine(
        r#"
        [[rule]]
        id = "a"
        kind = "deny"
        package = "pkg"
        [[rule]]
        id = "b"
        kind = "deny"
        package = "pk?"
        [[waiver]]
        rule = "a"
        package = "pkg"
        reason = "r"
        expires = "2099-01-01"
        "#,
    );
    let d = e.evaluate(&npm("pkg", "1.0.0"), NOW);
    assert_eq!((d.verdict, d.rule.as_deref()), (Verdict::Block, Some("b")));
    assert!(d.findings[0].waived_by.is_some());
    assert!(d.findings[1].waived_by.is_none());
}

#[test]
fn many_glob_rules_are_found_through_the_index() {
    let mut cfg = String::new();
    for i in 0..300 {
        cfg += &format!("[[rule]]\nid = \"exact-{i}\"\nkind = \"deny\"\npackage = \"pkg-{i}\"\n");
        cfg += &format!("[[rule]]\nid = \"glob-{i}\"\nkind = \"deny\"\npackage = \"org{i}-*\"\n");
    }
    cfg += "[[rule]]\nid = \"suffix\"\nkind = \"deny\"\npackage = \"*-evil\"\n";
    cfg += "[[rule]]\nid = \"q\"\nkind = \"deny\"\npackage = \"?ab\"\n";
    let e = engine(&cfg);
    let rule = |n: &str| e.evaluate(&npm(n, "1.0.0"), NOW).rule;
    assert_eq!(rule("pkg-17").as_deref(), Some("exact-17"));
    assert_eq!(rule("org17-x").as_deref(), Some("glob-17"));
    assert_eq!(rule("org1-x").as_deref(), Some("glob-1"));
    assert_eq!(rule("org299-").as_deref(), Some("glob-299"));
    assert_eq!(rule("very-evil").as_deref(), Some("suffix"));
    assert_eq!(rule("cab").as_deref(), Some("q"));
    assert_eq!(rule("org300-x"), None);
    assert_eq!(rule("pkg-300"), None);
    assert_eq!(rule("or"), None);
}

#[test]
fn configuration_errors_name_the_rule_and_the_problem() {
    let cases = [
        ("[[rule]]\nid = \"r1\"\nkind = \"deny\"\nformat = \"npm\"\nversions = \">=>1\"", "\"r1\""),
        ("[[rule]]\nid = \"r2\"\nkind = \"deny\"\nversions = \"~=2.2\"", "set `format`"),
        ("[[rule]]\nid = \"r3\"\nkind = \"allow\"\npackage = \"x\"", "needs `versions`"),
        ("[[rule]]\nid = \"r4\"\nkind = \"min_age\"", "needs `age`"),
        ("[[rule]]\nid = \"r5\"\nkind = \"namespace\"", "needs `names`"),
        ("[[rule]]\nid = \"r6\"\nkind = \"license\"", "needs `allow` or `deny`"),
        ("[[rule]]\nid = \"r7\"\nkind = \"license\"\nallow = [\"MIT OR ISC\"]", "`allow`"),
        ("[[rule]]\nid = \"r8\"\nkind = \"deny\"\nage = \"1d\"", "`age` does not apply"),
        ("[[rule]]\nid = \"r9\"\nkind = \"namespace\"\npackage = \"x\"\nnames = [\"a\"]", "`package` does not apply"),
        ("[[rule]]\nid = \"d\"\nkind = \"deny\"\n[[rule]]\nid = \"d\"\nkind = \"deny\"", "duplicate"),
        ("[[rule]]\nid = \"osv\"\nkind = \"deny\"", "reserved"),
        ("[[rule]]\nid = \"o\"\nkind = \"deny\"\nformat = \"oci\"\nversions = \"sha256:12\"", "digest"),
        ("[[waiver]]\nrule = \"x\"\npackage = \"p\"\nreason = \"r\"\nexpires = \"2026-02-30\"", "expires"),
        ("[[waiver]]\nrule = \"x\"\npackage = \"p\"\nversions = \">=>\"\nreason = \"r\"\nexpires = \"2026-02-01\"", "versions"),
        ("osv = [\"/nonexistent/osv-dir\"]", "/nonexistent/osv-dir"),
    ];
    for (cfg, want) in cases {
        let msg = engine_err(cfg);
        assert!(msg.contains(want), "{msg:?} should mention {want:?}");
    }
}

fn cargo<'a>(name: &'a str, version: &'a str) -> Facts<'a> {
    Facts {
        ecosystem: Ecosystem::Cargo,
        upstream: "crates",
        ..npm(name, version)
    }
}

#[test]
fn cargo_rules_read_cargo_syntax_and_unformatted_texts_mean_the_same_everywhere() {
    // With `format = "cargo"`, Cargo's own syntax: a bare version is a caret requirement.
    let e = engine(
        r#"
[[rule]]
id = "caret"
kind = "deny"
format = "cargo"
package = "serde_*"
versions = "1.2"

[[rule]]
id = "plain"
kind = "deny"
package = "left-pad"
versions = ">=1.3.0"

[[rule]]
id = "licenses"
kind = "license"
allow = ["MIT"]

[[waiver]]
rule = "caret"
package = "serde_json"
versions = "1.2.5"
reason = "reviewed"
expires = "2099-01-01"
"#,
    );
    assert_eq!(verdict(&e, &cargo("serde_yaml", "1.9.0")), Verdict::Block);
    assert_eq!(verdict(&e, &cargo("Serde-Yaml", "1.2.0")), Verdict::Block);
    assert_eq!(verdict(&e, &cargo("serde_yaml", "2.0.0")), Verdict::Allow);
    assert_eq!(verdict(&e, &cargo("serde_yaml", "1.1.9")), Verdict::Allow);
    // No format: the range applies to crates too.
    assert_eq!(verdict(&e, &cargo("left_pad", "1.3.0")), Verdict::Block);
    assert_eq!(verdict(&e, &cargo("left-pad", "1.2.9")), Verdict::Allow);
    assert_eq!(verdict(&e, &npm("left-pad", "1.3.1")), Verdict::Block);
    // A waiver's bare version is exact: it does not waive the rest of 1.x.
    assert_eq!(verdict(&e, &cargo("serde_json", "1.2.5")), Verdict::Allow);
    assert_eq!(verdict(&e, &cargo("serde_json", "1.2.6")), Verdict::Block);
    // The index states no license: a license allow list has nothing to say about crates
    // (it still warns for an npm package without one).
    assert!(e
        .evaluate(&cargo("anyhow", "1.0.0"), NOW)
        .findings
        .is_empty());
    assert_eq!(verdict(&e, &npm("nolicense", "1.0.0")), Verdict::Warn);
    assert!(engine_err("[[rule]]\nid = \"r\"\nkind = \"deny\"\npackage = \"x\"\nversions = \">=1.0 <2.0\"\nformat = \"cargo\"\n").contains("Cargo"));
    // Rules that could never fire on a crate are refused, not silently inert.
    for kind in [
        "kind = \"license\"\nallow = [\"MIT\"]",
        "kind = \"install_scripts\"",
    ] {
        let err = engine_err(&format!(
            "[[rule]]\nid = \"r\"\n{kind}\nformat = \"cargo\"\n"
        ));
        assert!(err.contains("could never apply to crates"), "{err}");
    }
}
