//! The real `cargo` client pointed at sluice: a project whose crates-io source is replaced
//! by a sluice mount, run with its own `CARGO_HOME` (a fresh machine each time).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A binary project `app` under `root` depending on `deps` (`name = "req"` lines), with
/// `main_rs` as its `src/main.rs`, whose crates-io source is replaced by the sparse
/// registry at `index` (e.g. `http://127.0.0.1:5080/crates/`).
pub fn project(root: &Path, index: &str, deps: &str, main_rs: &str) -> PathBuf {
    let dir = root.join("app");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join(".cargo")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), main_rs).unwrap();
    std::fs::write(
        dir.join(".cargo/config.toml"),
        format!(
            "[source.crates-io]\nreplace-with = \"sluice\"\n\n[source.sluice]\nregistry = \"sparse+{index}\"\n"
        ),
    )
    .unwrap();
    dir
}

/// `cargo <args>` in `dir` with `home` as `CARGO_HOME` and `env` set, bounded in time;
/// nothing of the caller's build settings (target dir, flags) leaks in.
pub fn run(dir: &Path, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args)
        .current_dir(dir)
        .env("CARGO_HOME", home)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_NET_RETRY", "0")
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    super::run_with_timeout(&mut cmd, Duration::from_secs(300))
}
