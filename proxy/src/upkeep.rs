//! Background upkeep: flushes batched last-access times to the index, closes idle kept
//! file mappings, drains metric histograms, enforces the storage limits (a commit that
//! takes the store over its high watermark wakes the eviction at once; the limit is also
//! checked every second), runs a full garbage collection every `storage.gc_interval` (idle
//! expiry, index records of content that is gone), persists the `/-/api/stats` figures and
//! the recent policy refusals every few seconds when they changed, reloads the policy, the
//! tokens and the TLS certificate on SIGHUP (the certificate also when its files change),
//! and flushes everything once more on shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::app::App;

/// How often access times reach the index.
const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// How often the size limit is checked (one atomic load when under it).
const LIMIT_EVERY: Duration = Duration::from_secs(1);
/// How often the TLS certificate's files are checked for a renewal (two small reads).
const CERT_CHECK_EVERY: Duration = Duration::from_secs(5);
/// After a change, how long the files must stay the same before they are read as a pair.
const CERT_SETTLE: Duration = Duration::from_secs(1);

/// The upkeep service.
pub struct Upkeep {
    app: Arc<App>,
    /// A collection is running (runs are not queued up behind a slow one).
    collecting: Arc<AtomicBool>,
}

impl Upkeep {
    /// For this app.
    pub fn new(app: Arc<App>) -> Upkeep {
        Upkeep {
            app,
            collecting: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts a collection off the async threads unless one is running.
    fn collect(&self, full: bool) {
        if self.collecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (app, flag) = (self.app.clone(), self.collecting.clone());
        tokio::task::spawn_blocking(move || {
            let r =
                crate::store::evict::collect(&app.store, &app.config.storage, &app.limits, full);
            if let Err(e) = r {
                tracing::warn!(error = %e, "eviction failed");
            }
            flag.store(false, Ordering::Release);
        });
    }

    fn flush(&self) {
        if let Err(e) = self.app.store.flush_access() {
            tracing::warn!(error = %e, "flushing access times failed");
        }
        self.app.store.expire_mappings(Instant::now());
        self.app.metrics.run_upkeep();
    }

    /// SIGHUP: re-reads the TLS certificate, from the files the reloaded config names (the
    /// ones in use when it did not load). Turning TLS on or off takes a restart: the
    /// listener is set up once.
    async fn reload_certificate(&self, reloaded: Option<sluice_config::Config>) {
        let reloaded = reloaded.as_ref();
        let Some(cert) = self.app.tls.clone() else {
            if reloaded.is_some_and(|c| c.server.tls_cert.is_some()) {
                tracing::warn!("server.tls_cert was added: serving TLS takes a restart");
            }
            return;
        };
        let paths = match reloaded.map(|c| (&c.server.tls_cert, &c.server.tls_key)) {
            Some((Some(c), Some(k))) => Some((c.clone(), k.clone())),
            Some(_) => {
                tracing::warn!("server.tls_cert was removed: serving plain HTTP takes a restart; still serving TLS");
                None
            }
            None => None,
        };
        let _ = tokio::task::spawn_blocking(move || cert.reload(paths)).await;
    }

    /// Writes the `/-/api/stats` figures and the recent policy refusals to the index when
    /// they changed.
    fn persist_stats(&self) {
        let index = self.app.store.index();
        if let Err(e) = self.app.stats.persist(index.as_ref()) {
            tracing::warn!(error = %e, "persisting stats failed");
        }
        if let Err(e) = self.app.policy.refusals.persist(index.as_ref()) {
            tracing::warn!(error = %e, "persisting policy refusals failed");
        }
    }
}

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        let mut limit = tokio::time::interval(LIMIT_EVERY);
        let mut stats = tokio::time::interval(crate::stats::PERSIST_EVERY);
        let mut cert_check = tokio::time::interval(CERT_CHECK_EVERY);
        let gc_every = self.app.config.storage.gc_interval.get();
        let mut last_gc = Instant::now();
        // SIGHUP reloads the policy, the tokens and the TLS certificate (the default action
        // would terminate the process).
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        if let Some(shared) = self.app.shared.clone() {
            tokio::spawn(async move {
                match shared.check().await {
                    Ok(()) => tracing::info!("shared store (storage.s3) answers"),
                    Err(e) => tracing::warn!(error = %e,
                        "shared store (storage.s3) does not answer; each fill that finds it failing asks its upstream directly"),
                }
            });
        }
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(),
                _ = stats.tick() => self.persist_stats(),
                _ = self.app.store.over_high_watermark() => self.collect(false),
                _ = limit.tick() => {
                    if last_gc.elapsed() >= gc_every {
                        last_gc = Instant::now();
                        self.collect(true);
                    } else if self.app.limits.over_high(self.app.store.total_bytes()) {
                        self.collect(false);
                    }
                }
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading policy, tokens and TLS certificate");
                    let reloaded = self.app.policy.reload().await.ok();
                    if let Some(cfg) = &reloaded {
                        let auth = cfg.auth.clone();
                        tracing::info!(tokens = auth.tokens.len(), anonymous = ?auth.anonymous,
                            "tokens reloaded");
                        self.app.auth.store(std::sync::Arc::new(auth));
                    }
                    self.reload_certificate(reloaded).await;
                }
                _ = cert_check.tick() => {
                    if let Some(cert) = self.app.tls.clone() {
                        let _ = tokio::task::spawn_blocking(move || cert.reload_if_changed(CERT_SETTLE)).await;
                    }
                }
                _ = shutdown.changed() => {
                    self.persist_stats();
                    self.flush();
                    tracing::info!("sluice stopping: index flushed");
                    return;
                }
            }
        }
    }
}
