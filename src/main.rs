//! The `sluice` command line: parses arguments and calls into the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_config::Config;

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
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
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
            match sluice_proxy::serve(cfg) {
                Err(e) => {
                    eprintln!("sluice: {e:#}");
                    ExitCode::FAILURE
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
