//! The `sluice` command line: parses arguments and calls into the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sluice_config::Config;
use sluice_proxy::admin_client::Action;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Caching pull-through proxy and dependency firewall"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (on the embedded default when no config file is given).
    Serve {
        /// Config file (default: $SLUICE_CONFIG, else the embedded default).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, overriding `server.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Data directory, overriding `storage.data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run eviction and garbage collection once against the data directory, with sluice
    /// stopped; with --now, ask a running sluice to run one now (`POST /-/api/gc`). Cleanup
    /// policies run first (`enforce` ones remove); what each removed is printed.
    Gc {
        /// Ask the running sluice (found as for `sluice stats`) instead of opening the
        /// data directory.
        #[arg(long, conflicts_with = "data_dir")]
        now: bool,
        /// Data directory, overriding `storage.data_dir` (offline only).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
        /// Print the API's JSON answer (with --now).
        #[arg(long, requires = "now")]
        json: bool,
    },
    /// Usage figures of a running sluice: artifacts served, hit ratio, upstream bytes
    /// saved, distinct clients, blocks, storage (`GET /-/api/stats`).
    Stats {
        #[command(flatten)]
        remote: Remote,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cached tags, versions and documents of a running sluice, with size and last access,
    /// most recent first (`GET /-/api/cache`; needs an admin token).
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only this format: oci, npm or pypi.
        #[arg(long)]
        format: Option<String>,
        /// Only names matching this glob (`team/*`).
        #[arg(long)]
        name: Option<String>,
        /// Most items listed (sluice's default 100, at most 10000).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove NAME[:TAG] (npm NAME@VERSION, PyPI NAME==VERSION; globs allowed) or a
    /// sha256:… file from a running sluice's store; the next request refetches.
    Purge {
        #[command(flatten)]
        remote: Remote,
        /// Format of NAME: oci, npm or pypi.
        #[arg(long, default_value = "oci")]
        format: String,
        /// NAME[:TAG] or sha256:<hex>.
        target: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pin NAME[:TAG] globs in a running sluice: never evicted (kept across restarts).
    Pin {
        #[command(flatten)]
        remote: Remote,
        /// Format of NAME: oci, npm or pypi.
        #[arg(long, default_value = "oci")]
        format: String,
        /// NAME[:TAG] globs (`team/*:v*`).
        target: String,
    },
    /// Remove a run-time pin (as given to `sluice pin`).
    Unpin {
        #[command(flatten)]
        remote: Remote,
        /// Format of NAME: oci, npm or pypi.
        #[arg(long, default_value = "oci")]
        format: String,
        /// NAME[:TAG] globs, as pinned.
        target: String,
    },
    /// Configured and run-time pins of a running sluice.
    Pins {
        #[command(flatten)]
        remote: Remote,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the policy of a running sluice refused lately, and what audit-mode rules would
    /// have refused: one line per name, version, rule and outcome with its request count,
    /// most recently seen first (`GET /-/api/blocks`). Needs an admin token.
    Blocks {
        #[command(flatten)]
        remote: Remote,
        /// Most entries listed (default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cleanup policies of a running sluice (`[[storage.cleanup]]`): the last evaluation,
    /// per policy what it removed or would remove (`GET /-/api/cleanup`); with --run,
    /// evaluate them now (`POST /-/api/cleanup`). Needs an admin token.
    Cleanup {
        #[command(flatten)]
        remote: Remote,
        /// Evaluate the policies now, each in its configured mode.
        #[arg(long)]
        run: bool,
        /// With --run: only report, even for `enforce` policies; nothing is removed.
        #[arg(long, requires = "run")]
        dry_run: bool,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Re-hash every stored file; move any whose content does not match its digest to
    /// `data_dir/quarantine/` and drop it from the index. Exit 1 when anything was found.
    /// Run it while sluice is stopped.
    Verify {
        /// Config file (default: $SLUICE_CONFIG, else the embedded default).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory, overriding `storage.data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Prefetch what lockfiles (package-lock.json, requirements.txt, pylock.toml,
    /// Cargo.lock) and image lists name through a running sluice, so later builds are served from its cache.
    /// Exit 1 when anything could not be fetched.
    Warm {
        /// Config file (default: $SLUICE_CONFIG, else the embedded default); gives the URL
        /// and the upstream names.
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// sluice's base URL (default: `server.public_url`, else `http://<listen>`).
        #[arg(long, env = "SLUICE_URL")]
        url: Option<String>,
        /// The npm upstream to warm through (default: the first `format = "npm"` upstream).
        #[arg(long)]
        npm_upstream: Option<String>,
        /// The PyPI upstream to warm through (default: the first `format = "pypi"` upstream).
        #[arg(long)]
        pypi_upstream: Option<String>,
        /// A sluice token, when anonymous access is off.
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
        /// Lockfiles and image lists.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Dependency-firewall tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

/// How the operator commands reach a running sluice.
#[derive(Args)]
struct Remote {
    /// Config file (default: $SLUICE_CONFIG, else the embedded default); gives the URL.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// sluice's base URL (default: `server.public_url`, else `http://<listen>`).
    #[arg(long, env = "SLUICE_URL")]
    url: Option<String>,
    /// A token with role admin (role read is enough for `stats`).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Runs an operator command against a running sluice; prints its answer.
fn remote(r: Remote, action: sluice_proxy::admin_client::Action, json: bool) -> ExitCode {
    let cfg = match load(r.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let how = sluice_proxy::admin_client::Remote {
        url: r.url,
        token: r.token,
    };
    match sluice_proxy::admin_client::run(&cfg, &how, &action, json) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("sluice: {}", f.message);
            ExitCode::from(f.exit)
        }
    }
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Evaluate lockfiles (package-lock.json, requirements.txt, pylock.toml, Cargo.lock) and
    /// image lists offline against the configured policy. Exit 1 when anything is blocked.
    Check {
        /// Config file (default: $SLUICE_CONFIG, else the embedded default).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file; errors name file:line:col. Exit 1 when invalid.
    Check {
        /// The file (or --config, or $SLUICE_CONFIG).
        file: Option<PathBuf>,
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => sluice_config::load_file(p).map_err(|e| e.to_string()),
        None => Ok(Config::embedded_default()),
    }
}

fn policy_check(config: Option<PathBuf>, files: Vec<PathBuf>) -> ExitCode {
    let cfg = match load(config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let engine = match sluice_policy::Engine::new(&cfg.policy) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sluice: [policy]: {e}");
            return ExitCode::from(2);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut blocked = false;
    for f in files {
        let entries = match sluice_policy::lockfile::read(&f) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("sluice: {e}");
                return ExitCode::from(2);
            }
        };
        let checked = sluice_policy::check::check(&engine, entries, now);
        let (text, any) = sluice_policy::check::report(&f.display().to_string(), &checked);
        print!("{text}");
        blocked |= any;
    }
    if blocked {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn warm(
    config: Option<PathBuf>,
    opts: sluice_proxy::warm::Options,
    files: Vec<PathBuf>,
) -> ExitCode {
    let cfg = match load(config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match sluice_proxy::warm::run(&cfg, &opts, &files, &mut std::io::stderr()) {
        Ok(summary) => {
            println!("{}", summary.line());
            if summary.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sluice warm: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let mut cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sluice: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(l) = listen {
                if l.parse::<std::net::SocketAddr>().is_err() {
                    eprintln!("sluice: --listen {l:?} is not an IP:PORT address");
                    return ExitCode::from(2);
                }
                cfg.server.listen = l;
            }
            if let Some(d) = data_dir {
                cfg.storage.data_dir = d;
            }
            sluice_proxy::init_logging();
            for problem in sluice_config::discover::fill_missing_urls(&mut cfg) {
                eprintln!("sluice: warning: {problem}");
            }
            match sluice_proxy::serve(cfg, config) {
                Err(e) => {
                    eprintln!("sluice: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Policy {
            command: PolicyCommand::Check { config, files },
        } => policy_check(config, files),
        Command::Warm {
            config,
            url,
            npm_upstream,
            pypi_upstream,
            token,
            jobs,
            files,
        } => {
            let opts = sluice_proxy::warm::Options {
                url,
                npm_upstream,
                pypi_upstream,
                token,
                jobs: jobs.into(),
                // On a terminal, a redrawn progress bar; else a line per artifact.
                bar: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            warm(config, opts, files)
        }
        Command::Gc {
            now: true,
            remote: r,
            json,
            ..
        } => remote(r, Action::Gc, json),
        Command::Gc {
            remote: Remote { config, url, token },
            data_dir,
            ..
        } => {
            if url.is_some() || token.is_some() {
                eprintln!(
                    "sluice gc: note: the URL and token (--url/--token, SLUICE_URL/SLUICE_TOKEN) \
                     are only used with --now; collecting the data directory offline"
                );
            }
            let mut cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sluice: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(d) = data_dir {
                cfg.storage.data_dir = d;
            }
            match sluice_proxy::store::evict::collect_offline(&cfg.storage) {
                Ok(r) => {
                    println!("{}", sluice_proxy::admin_client::gc_report_line(&r));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice gc: {e:#}\nhint: `sluice gc --now` asks a running sluice to collect");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Stats { remote: r, json } => remote(r, Action::Stats, json),
        Command::List {
            remote: r,
            format,
            name,
            limit,
            json,
        } => remote(
            r,
            Action::List {
                format,
                name,
                limit,
            },
            json,
        ),
        Command::Purge {
            remote: r,
            format,
            target,
            json,
        } => remote(r, Action::Purge { format, target }, json),
        Command::Pin {
            remote: r,
            format,
            target,
        } => remote(r, Action::Pin { format, target }, false),
        Command::Unpin {
            remote: r,
            format,
            target,
        } => remote(r, Action::Unpin { format, target }, false),
        Command::Pins { remote: r, json } => remote(r, Action::Pins, json),
        Command::Blocks {
            remote: r,
            limit,
            json,
        } => remote(r, Action::Blocks { limit }, json),
        Command::Cleanup {
            remote: r,
            run,
            dry_run,
            json,
        } => remote(r, Action::Cleanup { run, dry_run }, json),
        Command::Verify { config, data_dir } => {
            let dir = match load(config.as_ref()) {
                Ok(c) => data_dir.unwrap_or(c.storage.data_dir),
                Err(e) => {
                    eprintln!("sluice: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            match sluice_proxy::store::verify::verify(&dir) {
                Ok(r) => {
                    print!("{}", r.summary());
                    if r.is_clean() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("sluice verify: {}: {e:#}", dir.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Check { file, config },
        } => {
            let Some(path) = file.or(config) else {
                eprintln!("sluice config check: name a file (sluice config check FILE, --config FILE or SLUICE_CONFIG)");
                return ExitCode::from(2);
            };
            match load(Some(&path)) {
                Ok(mut c) => {
                    for problem in sluice_config::discover::fill_missing_urls(&mut c) {
                        eprintln!("warning: {problem}");
                    }
                    if let Err(e) = sluice_policy::Engine::new(&c.policy) {
                        eprintln!("{}: [policy]: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                    // The certificate files too: check a renewal before sending SIGHUP.
                    if let (Some(cert), Some(key)) = (&c.server.tls_cert, &c.server.tls_key) {
                        match sluice_proxy::tls::inspect(cert, key) {
                            Ok(pair) => println!(
                                "{}: TLS certificate {}, valid until {} UTC",
                                cert.display(),
                                pair.subject,
                                pair.expires.map_or("(unknown)".into(), |t| {
                                    sluice_proxy::timefmt::datetime(t.max(0) as u64)
                                })
                            ),
                            Err(e) => {
                                eprintln!("{}: [server]: {e}", path.display());
                                return ExitCode::FAILURE;
                            }
                        }
                    }
                    let experiments: Vec<&str> = sluice_config::Format::ALL
                        .into_iter()
                        .filter(|f| {
                            f.maturity() == sluice_config::Maturity::Experiment
                                && c.formats.enabled(*f)
                        })
                        .map(|f| f.as_str())
                        .collect();
                    if !experiments.is_empty() {
                        println!(
                            "{}: experiment formats turned on: {}",
                            path.display(),
                            experiments.join(", ")
                        );
                    }
                    println!(
                        "{}: ok ({} upstream{}, listen {})",
                        path.display(),
                        c.upstreams.len(),
                        if c.upstreams.len() == 1 { "" } else { "s" },
                        c.server.listen
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
