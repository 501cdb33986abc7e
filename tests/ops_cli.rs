//! The operator CLI against a real running sluice (OCI simulator upstream): `sluice stats`,
//! `list`, `purge`, `pin`/`unpin`/`pins`, `cleanup` and `gc --now` are HTTP clients of the
//! admin API (offline `sluice gc` prints what the cleanup policies removed),
//! with clear failures for a wrong token or an unreachable sluice; and the `/-/api/stats`
//! figures survive a graceful restart and (up to the last persist) a SIGKILL.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::ops::{config, pull, stats, ADMIN, READER};
use common::sim::{Sim, SimImage};
use common::{blob_path, random_bytes, run_with_timeout, Sluice};

/// Runs `sluice ARGS` (off the async threads: the simulator answers on them), with
/// `SLUICE_*` variables only as `env` gives them.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args);
    for v in ["SLUICE_CONFIG", "SLUICE_URL", "SLUICE_TOKEN"] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, Duration::from_secs(60)))
        .await
        .expect("cli thread")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `sluice ARGS --config <s's config>` and insists on success.
async fn ok(s: &Sluice, args: &[&str]) -> String {
    let cfg = s.config_path().display().to_string();
    let mut all = args.to_vec();
    all.extend(["--config", &cfg]);
    let o = cli(&all, &[]).await;
    assert!(
        o.status.success(),
        "sluice {all:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        out(&o),
        err(&o)
    );
    out(&o)
}

async fn ok_json(s: &Sluice, args: &[&str]) -> serde_json::Value {
    let text = ok(s, args).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{text}"))
}

/// The cells of each table row (columns are separated by at least two spaces).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The row whose first cell is `label` (else whose second is).
fn row(table: &str, label: &str) -> Vec<String> {
    let all = rows(table);
    all.iter()
        .find(|r| r.first().is_some_and(|c| c == label))
        .or_else(|| all.iter().find(|r| r.get(1).is_some_and(|c| c == label)))
        .unwrap_or_else(|| panic!("no {label:?} row in\n{table}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_drive_a_running_sluice() {
    let sim = Sim::start().await;
    let app = sim.push_image("team/app", "v1", &[random_bytes(200 * 1024, 11)]);
    let other = sim.push_image("team/other", "v2", &[random_bytes(50 * 1024, 12)]);
    let s = Sluice::start_with(|port, dir| config(port, dir, &sim, ""));
    assert_eq!(pull(&s, "team/app", "v1", &app).await, ["MISS"; 3]);
    assert_eq!(pull(&s, "team/app", "v1", &app).await, ["HIT"; 3]);
    assert_eq!(pull(&s, "team/other", "v2", &other).await, ["MISS"; 3]);
    // The cold layer of team/other is committed after its response: `list` sizes it.
    s.settled().await;

    // stats: JSON as the API has it, and a table with the same figures.
    let v = ok_json(&s, &["stats", "--json"]).await;
    let t = &v["today"]["counters"];
    assert_eq!(t["artifacts_served"]["oci"], 9, "{v}");
    assert_eq!(t["images_served"], 3, "{v}");
    assert_eq!(t["hits"], 3, "{v}");
    assert_eq!(t["misses"], 6, "{v}");
    assert_eq!(v["today"]["distinct_clients"], 1, "{v}");
    let table = ok(&s, &["stats", "--token", READER]).await;
    assert_eq!(row(&table, "oci artifacts served")[1..], ["9", "9"]);
    assert_eq!(row(&table, "hits / misses")[1..], ["3 / 6", "3 / 6"]);
    assert_eq!(row(&table, "hit ratio")[1..], ["33.3%", "33.3%"]);
    assert_eq!(row(&table, "distinct clients")[1..], ["-", "1"]);
    assert_eq!(row(&table, "images served")[1..], ["3", "3"]);

    // list: both tags with their size; a name glob narrows it.
    let listed = ok(&s, &["list", "--token", ADMIN]).await;
    let app_row = row(&listed, "sim/team/app");
    assert_eq!(app_row[2], "v1", "{listed}");
    assert_eq!(app_row[3], "tag", "{listed}");
    assert!(app_row[4].ends_with("KiB"), "{listed}");
    assert_eq!(app_row[5], "3/3", "{listed}");
    assert!(app_row[6].ends_with('Z'), "{listed}");
    assert!(listed.contains("sim/team/other"), "{listed}");
    assert!(listed.contains("2 of 2 items"), "{listed}");
    let v = ok_json(
        &s,
        &["list", "--token", ADMIN, "--name", "team/o*", "--json"],
    )
    .await;
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["name"], "sim/team/other");
    assert!(items[0]["size"].as_u64().unwrap() > 50 * 1024, "{v}");

    // pin / pins / unpin round trip; unpinning what is not pinned fails with sluice's message.
    let o = ok(&s, &["pin", "--token", ADMIN, "team/*:v*"]).await;
    assert_eq!(o, "pinned oci team/*:v*\n");
    let pins = ok(&s, &["pins", "--token", ADMIN]).await;
    assert_eq!(row(&pins, "runtime"), ["runtime", "oci", "team/*", "v*"]);
    let v = ok_json(&s, &["pins", "--token", ADMIN, "--json"]).await;
    assert_eq!(v["runtime"][0]["tag"], "v*", "{v}");
    ok(&s, &["unpin", "--token", ADMIN, "team/*:v*"]).await;
    assert_eq!(ok(&s, &["pins", "--token", ADMIN]).await, "no pins\n");
    let cfg = s.config_path().display().to_string();
    let o = cli(
        &["unpin", "--config", &cfg, "--token", ADMIN, "team/*:v*"],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(
        err(&o).contains("404") && err(&o).contains("no such run-time pin"),
        "{}",
        err(&o)
    );

    // purge by digest: one file; the next request for it is a MISS.
    let layer = &app.layer_digests[0];
    let o = ok(&s, &["purge", "--token", ADMIN, layer]).await;
    assert!(o.starts_with("purged: 1 files"), "{o}");
    assert!(!blob_path(&s.data_dir(), layer).exists());
    assert_eq!(
        pull(&s, "team/app", "v1", &app).await,
        ["HIT", "HIT", "MISS"]
    );
    // The refetched layer must be in the store before the purge counts its files.
    s.settled().await;

    // purge by name:tag: the manifest, config and layer and the tag record.
    let v = ok_json(&s, &["purge", "--token", ADMIN, "team/app:v1", "--json"]).await;
    assert_eq!(v["removed_files"], 3, "{v}");
    assert_eq!(v["removed_records"], 1, "{v}");
    let listed = ok(&s, &["list", "--token", ADMIN]).await;
    assert!(!listed.contains("sim/team/app "), "{listed}");
    assert_eq!(pull(&s, "team/app", "v1", &app).await, ["MISS"; 3]);
    // stored_bytes below counts the refetched layer once it is committed.
    s.settled().await;

    // gc --now asks the running sluice (offline `sluice gc` refuses while it runs).
    let o = ok(&s, &["gc", "--now", "--token", ADMIN]).await;
    assert!(o.starts_with("sluice gc: removed 0 files"), "{o}");
    let v = ok_json(&s, &["gc", "--now", "--token", ADMIN, "--json"]).await;
    assert!(v["stored_bytes"].as_u64().unwrap() > 250 * 1024, "{v}");
    let o = cli(&["gc", "--config", &cfg], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("sluice gc --now"), "{}", err(&o));

    // URL and token from the environment, no config file.
    let base = s.base_url();
    let o = cli(
        &["list", "--json"],
        &[("SLUICE_URL", &base), ("SLUICE_TOKEN", ADMIN)],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["total"],
        2
    );

    // Wrong, missing and read-only tokens: non-zero exit with what to do.
    let o = cli(&["list", "--url", &base, "--token", "nope"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("401"), "{}", err(&o));
    assert!(err(&o).contains("does not know this token"), "{}", err(&o));
    assert!(out(&o).is_empty());
    let o = cli(&["purge", "--url", &base, "team/other"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("401") && err(&o).contains("--token"),
        "{}",
        err(&o)
    );
    let o = cli(&["pin", "--url", &base, "--token", READER, "x"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("403") && err(&o).contains("role admin"),
        "{}",
        err(&o)
    );
    let o = cli(
        &["list", "--url", &base, "--token", ADMIN, "--format", "rpm"],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("expected oci, npm, pypi or cargo"),
        "{}",
        err(&o)
    );
    // Nothing was pinned or purged by the refused commands.
    assert_eq!(ok(&s, &["pins", "--token", ADMIN]).await, "no pins\n");
    assert_eq!(pull(&s, "team/other", "v2", &other).await, ["HIT"; 3]);

    // No sluice there: a clear error, exit 2.
    let refusing = common::refusing_port();
    let nobody = format!("http://127.0.0.1:{}", refusing.port);
    for args in [
        vec!["stats", "--url", &nobody],
        vec!["gc", "--now", "--url", &nobody],
    ] {
        let o = cli(&args, &[]).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
        assert!(err(&o).contains("cannot reach sluice at"), "{}", err(&o));
        assert!(err(&o).contains("is sluice running?"), "{}", err(&o));
    }
}

/// `sluice_stats_persists_total{result="ok"}`.
async fn persists(s: &Sluice) -> u64 {
    s.metrics()
        .await
        .lines()
        .find(|l| l.starts_with("sluice_stats_persists_total{result=\"ok\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn served(v: &serde_json::Value) -> u64 {
    v["total"]["artifacts_served"]["oci"].as_u64().unwrap()
}

/// The stats once `n` artifacts were counted (or after 5 s): a request is counted after its
/// body went out, so the client can ask before the last one is.
async fn stats_once_served(s: &Sluice, n: u64) -> serde_json::Value {
    common::eventually_async(|| async { served(&stats(s).await) >= n }).await;
    stats(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_survive_a_restart_and_a_crash_loses_at_most_the_last_persist() {
    let sim = Sim::start().await;
    let img = sim.push_image("team/app", "v1", &[random_bytes(100 * 1024, 21)]);
    let mut s = Sluice::start_with(|port, dir| config(port, dir, &sim, ""));
    pull(&s, "team/app", "v1", &img).await;
    pull(&s, "team/app", "v1", &img).await;
    let before = stats_once_served(&s, 6).await;
    assert_eq!(served(&before), 6, "{before}");

    // Graceful restart: everything is kept.
    assert!(s.restart().is_some_and(|st| st.success()));
    let after = stats(&s).await;
    assert_eq!(after["total"], before["total"], "{after}");
    assert_eq!(after["today"], before["today"], "{after}");
    assert_eq!(after["since_unix"], before["since_unix"]);
    assert!(after["started_unix"].as_u64() >= before["started_unix"].as_u64());
    assert_eq!(after["today"]["distinct_clients"], 1, "{after}");
    // The same client after the restart is not a new one.
    pull(&s, "team/app", "v1", &img).await;
    let v = stats_once_served(&s, 9).await;
    assert_eq!(served(&v), 9);
    assert_eq!(v["today"]["distinct_clients"], 1, "{v}");
    assert_eq!(v["today"]["counters"]["hits"], 6, "{v}");

    // SIGKILL after a persist (upkeep writes within 2 s of a change: wait for the next one,
    // unless it already ran) and sled's flush (every 0.5 s): nothing is lost.
    let before_persists = persists(&s).await;
    let since = std::time::Instant::now();
    while persists(&s).await == before_persists && since.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    s.crash_restart();
    let v = stats(&s).await;
    assert_eq!(served(&v), 9, "{v}");
    assert_eq!(v["today"]["distinct_clients"], 1, "{v}");

    // SIGKILL right after more pulls: at most what came after the last persist is lost.
    pull(&s, "team/app", "v1", &img).await;
    s.crash_restart();
    let v = stats(&s).await;
    let n = served(&v);
    assert!((9..=12).contains(&n), "{n} artifacts after the crash: {v}");
    assert_eq!(v["since_unix"], before["since_unix"], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_command_reports_runs_in_dry_run_and_offline_gc_prints_what_policies_removed() {
    let sim = Sim::start().await;
    let imgs: Vec<SimImage> = (0..3)
        .map(|i| {
            sim.push_image(
                "app",
                &format!("t{}", i + 1),
                &[random_bytes(40 * 1024, 30 + i)],
            )
        })
        .collect();
    let mut s = Sluice::start_with(|port, dir| {
        config(port, dir, &sim, "").replace(
            "[storage]\n",
            "[storage]\neviction_grace = \"1s\"\ngc_interval = \"1h\"\n",
        ) + "\n[[storage.cleanup]]\nid = \"keep1\"\nformat = \"oci\"\nname = \"app\"\nkeep_last = 1\nmode = \"enforce\"\n"
    });
    let data = s.data_dir();
    let files = |img: &SimImage| {
        let mut v = vec![img.manifest_digest.clone(), img.config_digest.clone()];
        v.extend(img.layer_digests.iter().cloned());
        v
    };
    let stored = |img: &SimImage| files(img).iter().all(|d| blob_path(&data, d).exists());
    let gone = |img: &SimImage| files(img).iter().all(|d| !blob_path(&data, d).exists());

    // Nothing evaluated yet.
    let o = ok(&s, &["cleanup", "--token", ADMIN]).await;
    assert!(o.starts_with("no cleanup evaluation yet"), "{o}");

    pull(&s, "app", "t1", &imgs[0]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    pull(&s, "app", "t2", &imgs[1]).await;
    // Out of eviction_grace.
    tokio::time::sleep(Duration::from_millis(2200)).await;

    // A read token may not look or run: exit 1 with the 403 hint, nothing removed.
    let cfg = s.config_path().display().to_string();
    for args in [
        vec!["cleanup", "--config", &cfg, "--token", READER],
        vec!["cleanup", "--config", &cfg, "--token", READER, "--run"],
    ] {
        let o = cli(&args, &[]).await;
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", err(&o));
        assert!(
            err(&o).contains("403") && err(&o).contains("needs a token with role admin"),
            "{}",
            err(&o)
        );
        assert!(out(&o).is_empty());
    }
    assert!(stored(&imgs[0]) && stored(&imgs[1]));
    // --dry-run only goes with --run.
    let o = cli(
        &["cleanup", "--config", &cfg, "--token", ADMIN, "--dry-run"],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));

    // --run --dry-run on an enforce policy: reported, nothing removed.
    let o = ok(&s, &["cleanup", "--token", ADMIN, "--run", "--dry-run"]).await;
    assert!(
        o.starts_with("policy keep1 (dry-run): would remove 1 of 2 considered ("),
        "{o}"
    );
    let t1 = row(&o, "oci");
    assert_eq!(t1[..5], ["oci", "sim", "app", "t1", "would-remove"], "{o}");
    assert_eq!(t1[5], "3", "{o}");
    assert!(t1[6].ends_with("KiB") && t1[7].ends_with('Z'), "{o}");
    assert!(!o.contains("t2"), "{o}");
    assert!(stored(&imgs[0]) && stored(&imgs[1]));

    // No flag: the last report, as a table.
    let last = ok(&s, &["cleanup", "--token", ADMIN]).await;
    assert_eq!(row(&last, "oci")[..5], t1[..5], "{last}");
    let v = ok_json(&s, &["cleanup", "--token", ADMIN, "--json"]).await;
    assert_eq!(v["policies"][0]["mode"], "dry-run", "{v}");

    // --run: the policy in its own mode removes t1.
    let v = ok_json(&s, &["cleanup", "--token", ADMIN, "--run", "--json"]).await;
    let p = &v["policies"][0];
    assert_eq!(p["mode"], "enforce", "{v}");
    assert_eq!(p["selected"][0]["tag"], "t1", "{v}");
    assert_eq!(p["selected"][0]["status"], "removed", "{v}");
    assert!(gone(&imgs[0]) && stored(&imgs[1]));
    let o = ok(&s, &["cleanup", "--token", ADMIN]).await;
    assert!(
        o.starts_with("policy keep1 (enforce): removed 1 of 2 considered"),
        "{o}"
    );

    // Offline gc runs enforce policies too and says what each removed: t3 pulled last
    // (recorded at the graceful stop), so t2 goes.
    pull(&s, "app", "t3", &imgs[2]).await;
    s.settled().await;
    assert!(s.stop().is_some_and(|st| st.success()));
    let o = cli(&["gc", "--config", &cfg], &[]).await;
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("sluice gc: removed 0 files"), "{text}");
    assert!(
        lines[1].starts_with("cleanup policy keep1 (enforce): removed 1 of 2 considered ("),
        "{text}"
    );
    assert!(
        lines[2].starts_with("  removed oci app:t2 (3 files, "),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(gone(&imgs[1]) && stored(&imgs[2]));
}
