//! sluice's proxy: the HTTP server, client protocols (formats), the content-addressed
//! store, single-flight fills and upstream clients.
//!
//! A request flows: [`server`] (pingora) → [`formats`] (parse, shape) → [`store`] (hit) or
//! [`fill`] / [`flight`] (miss) → [`upstream`] (auth, redirects, timeouts). Errors are one
//! type, [`error::ProxyError`], rendered per client protocol in one place.

pub mod accesslog;
pub mod admin;
pub mod admin_client;
pub mod app;
pub mod b64;
pub mod digest;
pub mod docs;
pub mod error;
pub mod fill;
pub mod flight;
pub mod formats;
pub mod hashes;
pub mod logsink;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod response;
pub mod server;
pub mod stats;
pub mod store;
pub mod timefmt;
mod upkeep;
pub mod upstream;
pub mod warm;

use std::sync::Arc;

/// mimalloc instead of glibc's allocator: a cached hit makes a few dozen small
/// allocations (header maps, strings), about a fifth of its instructions under glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use sluice_config::Config;

/// Per-connection write buffer: bigger than a typical cached document plus its head.
const WRITE_BUFFER: usize = 32 * 1024;

/// Sets up JSON logging to stderr (`RUST_LOG` filters; default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora_core=warn"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(logsink::LogSink)
        .try_init();
}

/// Runs the proxy until SIGTERM or SIGINT, then exits the process.
pub fn serve(
    config: Config,
    config_path: Option<std::path::PathBuf>,
) -> anyhow::Result<std::convert::Infallible> {
    let handle = metrics::install()?;
    let listen = config.listen_addr();
    let threads = config
        .server
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let grace = config.server.shutdown_grace.get().as_secs();
    let app = Arc::new(app::App::new(config, config_path, handle)?);
    tracing::info!(
        listen = %listen,
        data_dir = %app.config.storage.data_dir.display(),
        upstreams = app.oci.len(),
        stored_bytes = app.store.total_bytes(),
        "sluice starting"
    );

    let conf = ServerConf {
        threads,
        // Connections drain during the grace period; then runtimes stop within 1 s.
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: String::new(),
        // One single-threaded runtime per thread: a connection's request, reply and log
        // stay on one thread (no work-stealing wake-ups between them).
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut http = Service::new("sluice http".to_string(), server::HttpApp::new(app.clone()));
    // A 32 KiB write buffer (pingora's default is 1460 B): the head and a small known-length
    // body (a cached packument or simple page) leave in one send instead of two; larger
    // chunks still bypass the buffer.
    http.add_listener(
        ListenerConfig::tcp(listen.to_string())
            .l4_buffer(L4BufferSettings::default().write(WRITE_BUFFER)),
    );
    server.add_service(http);
    server.add_service(background_service(
        "upkeep",
        upkeep::Upkeep::new(app.clone()),
    ));
    server.run(RunArgs {
        shutdown_signal: Box::new(GracefulOnSignals),
    });
    // Requests answered during the grace period, after upkeep's last persist.
    if let Err(e) = app
        .stats
        .persist(app.store.index().as_ref())
        .and_then(|_| app.store.index().flush())
    {
        tracing::warn!(error = %e, "persisting stats at exit failed");
    }
    tracing::info!("sluice stopped");
    logsink::flush();
    std::process::exit(0);
}

/// SIGTERM and SIGINT (and SIGQUIT) all stop sluice gracefully: stop accepting, let
/// in-flight responses finish within `server.shutdown_grace`, flush the index. pingora's
/// default treats SIGINT as an immediate exit.
struct GracefulOnSignals;

#[async_trait::async_trait]
impl ShutdownSignalWatch for GracefulOnSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stop sluice with SIGKILL");
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => "SIGQUIT",
        };
        tracing::info!(signal = name, "shutting down gracefully");
        ShutdownSignal::GracefulTerminate
    }
}
