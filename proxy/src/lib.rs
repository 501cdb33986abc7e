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
pub mod client_limits;
pub mod digest;
pub mod docs;
pub mod error;
pub mod fill;
pub mod flight;
pub mod formats;
pub mod h1;
pub mod hashes;
pub mod host;
pub mod logsink;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod refusals;
pub mod response;
pub mod revalidations;
pub mod server;
pub mod sharded;
pub mod stats;
pub mod store;
pub mod text;
pub mod timefmt;
pub mod tls;
pub mod ui;
mod upkeep;
pub mod upstream;
pub mod warm;

use std::sync::Arc;

/// mimalloc instead of glibc's allocator: a cached hit makes a few dozen small
/// allocations (header maps, strings), about a fifth of its instructions under glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use sluice_config::Config;

/// Per-connection write buffer of TLS listeners: bigger than a typical cached document plus
/// its head. Plaintext listeners have none: [`h1`] writes head and body in one vectored
/// write, and a buffer would only add a copy of the body.
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
    // pingora takes whole seconds; "500ms" must not become no grace at all.
    let grace = config.server.shutdown_grace.as_secs_ceil();
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
    // One single-threaded listening service per thread, each with its own SO_REUSEPORT
    // socket (the kernel spreads connections over them, as over nginx's workers): a
    // connection is accepted, registered and served on one thread. With one listener,
    // pingora accepts on one runtime and serves on a random one, and the accepting
    // runtime relayed every socket event of the other's connections with a cross-thread
    // wake-up (an eventfd write per request). pingora shares one socket between services
    // listening on the same address text, owned (and closed at shutdown) by each of them,
    // so each service spells the port with its own number of leading zeros.
    // Port 0 (any port) keeps one listener: each socket would get a port of its own
    // (likewise an IPv6 address with a scope, which the spelling would drop).
    let per_thread = threads > 1
        && listen.port() != 0
        && !matches!(listen, std::net::SocketAddr::V6(a) if a.scope_id() != 0);
    if per_thread {
        // SO_REUSEPORT would let a second sluice bind the same port silently; a plain
        // bind first fails as before when the address is taken.
        std::net::TcpListener::bind(listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    }
    let first = server::HttpApp::new(app.clone());
    for i in 0..if per_thread { threads } else { 1 } {
        let mut http = Service::new("sluice http".to_string(), h1::Front::new(first.sibling()));
        let address = match listen {
            _ if i == 0 => listen.to_string(),
            std::net::SocketAddr::V4(a) => format!("{}:{}{}", a.ip(), "0".repeat(i), a.port()),
            std::net::SocketAddr::V6(a) => format!("[{}]:{}{}", a.ip(), "0".repeat(i), a.port()),
        };
        // Plaintext: no write buffer; h1 sends head and body in one vectored write, and
        // what it hands to pingora (requests with bodies) is written unbuffered.
        // TLS (all pingora's): a 32 KiB write buffer (pingora's default is 1460 B), so
        // that the head and a small known-length body (a cached packument or simple page)
        // leave in one record and one send instead of two; larger chunks still bypass the
        // buffer. Cost: a connection that writes a smaller chunk (a follower reading a
        // fill's latest bytes) keeps up to 32 KiB resident, and such a chunk waits in the
        // buffer until more follows or the body ends (cargo bench --bench load_cold_blob
        // -- --clients 1000 --blob-mb 100, before h1: peak RSS 57 MiB with 1460 B, 88 MiB
        // with 32 KiB).
        let write_buffer = if app.tls.is_some() { WRITE_BUFFER } else { 0 };
        let mut endpoint =
            ListenerConfig::tcp(address).l4_buffer(L4BufferSettings::default().write(write_buffer));
        if let Some(cert) = &app.tls {
            // The paths given here are not read: the resolver hands out the pair it holds.
            let mut settings = TlsSettings::intermediate("", "")?;
            settings.set_cert_resolver(cert.clone());
            endpoint = endpoint.tls(settings);
        }
        if per_thread {
            http.threads = Some(1);
            let mut opts = TcpSocketOptions::default();
            opts.so_reuseport = Some(true);
            endpoint = endpoint.tcp_socket_options(opts);
        }
        http.add_listener(endpoint);
        server.add_service(http);
    }
    server.add_service(background_service(
        "upkeep",
        upkeep::Upkeep::new(app.clone()),
    ));
    server.run(RunArgs {
        shutdown_signal: Box::new(GracefulOnSignals),
    });
    // Requests answered during the grace period, after upkeep's last persist.
    let index = app.store.index();
    if let Err(e) = app.stats.persist(index.as_ref()) {
        tracing::warn!(error = %e, "persisting stats at exit failed");
    }
    if let Err(e) = app.policy.refusals.persist(index.as_ref()) {
        tracing::warn!(error = %e, "persisting policy refusals at exit failed");
    }
    if let Err(e) = index.flush() {
        tracing::warn!(error = %e, "flushing the index at exit failed");
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
