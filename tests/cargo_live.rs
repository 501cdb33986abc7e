//! The Cargo format with the real `cargo` against the real crates registry: its sparse
//! index is discovered at run time from cargo's own index cache on this machine
//! (`$CARGO_HOME/registry/index/<host>-<hash>/`, which building sluice created; no index
//! host is written here), or taken from `SLUICE_CARGO_UPSTREAM`. Two machines (two empty
//! `CARGO_HOME`s) fetch and build the same lockfile through sluice; the second is served
//! from sluice's store. Under `CI=true` an index that cannot be discovered fails the test
//! instead of skipping it.

mod common;

use std::path::{Path, PathBuf};

use common::metrics::sample;
use common::{cargo_client, http_client, json_body, Sluice};

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The sparse index URL cargo uses for its default registry on this machine.
fn discover_index() -> Option<String> {
    if let Ok(u) = std::env::var("SLUICE_CARGO_UPSTREAM") {
        return Some(u);
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    // A sparse index's cache directory holds the registry's config.json (a git index's
    // holds a checkout); its name is `<host>-<hash>`.
    std::fs::read_dir(home.join("registry/index"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("config.json").is_file() && !e.path().join(".git").exists())
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (host, hash) = name.rsplit_once('-')?;
            (hash.len() == 16 && host.contains('.')).then(|| format!("https://{host}/"))
        })
}

/// Two small crates without dependencies of their own, pinned.
fn project(root: &Path, s: &Sluice) -> PathBuf {
    cargo_client::project(
        root,
        &format!("{}/crates/", s.base_url()),
        "itoa = \"=1.0.11\"\ncfg-if = \"=1.0.0\"",
        "fn main() { println!(\"{}\", itoa::Buffer::new().format(42)); }\n",
    )
}

fn cargo(dir: &Path, home: &Path, args: &[&str]) {
    let out = cargo_client::run(dir, home, args, &[]);
    assert!(
        out.status.success(),
        "cargo {args:?} through sluice failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_fetches_and_builds_real_crates_through_sluice_and_the_second_machine_hits() {
    let Some(index) = discover_index() else {
        assert!(
            !ci(),
            "CI=true and cargo's sparse index could not be found in its index cache \
             (set SLUICE_CARGO_UPSTREAM)"
        );
        eprintln!("skipping: no sparse index in cargo's index cache");
        return;
    };
    let s = Sluice::start(&format!(
        "[formats]\ncargo = true\n\n[[upstream]]\nname = \"crates\"\nformat = \"cargo\"\nurl = \"{index}\"\n"
    ));
    let first = tempfile::tempdir().unwrap();
    let dir = project(first.path(), &s);
    cargo(&dir, &first.path().join("home"), &["fetch"]);
    let m = s.metrics().await;
    let misses = sample(
        &m,
        "sluice_cache_events_total{format=\"cargo\",result=\"miss\"}",
    );
    assert!(misses >= 2.0, "{m}");

    let upstream = |m: &str| {
        common::metrics::sum_labelled(
            m,
            "sluice_upstream_requests_total",
            &["upstream=\"crates\""],
        )
        .unwrap_or(0.0)
    };
    let asked = upstream(&m);
    assert!(asked >= 2.0, "{m}");

    let second = tempfile::tempdir().unwrap();
    let dir2 = project(second.path(), &s);
    std::fs::copy(dir.join("Cargo.lock"), dir2.join("Cargo.lock")).unwrap();
    cargo(&dir2, &second.path().join("home"), &["build", "--locked"]);
    let m = s.metrics().await;
    // Everything (config, index files, crates) from sluice: the upstream was not asked.
    assert_eq!(upstream(&m), asked, "{m}");
    let hits = sample(
        &m,
        "sluice_cache_events_total{format=\"cargo\",result=\"hit\"}",
    );
    assert!(
        hits >= 2.0,
        "the second machine's crates were not cache hits:\n{m}"
    );
    let stats = json_body(
        http_client()
            .get(format!("{}/-/api/stats", s.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stats["total"]["artifacts_served"]["cargo"], 4, "{stats}");
}
