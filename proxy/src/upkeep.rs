//! Background upkeep: flushes batched last-access times to the index, drains metric
//! histograms, reloads the policy on SIGHUP, and flushes everything once more on shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::app::App;

/// How often access times reach the index.
const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// The upkeep service.
pub struct Upkeep {
    app: Arc<App>,
}

impl Upkeep {
    /// For this app.
    pub fn new(app: Arc<App>) -> Upkeep {
        Upkeep { app }
    }

    fn flush(&self) {
        if let Err(e) = self.app.store.flush_access() {
            tracing::warn!(error = %e, "flushing access times failed");
        }
        self.app.metrics.run_upkeep();
    }
}

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        // SIGHUP reloads the policy (the default action would terminate the process).
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(),
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading policy");
                    let _ = self.app.policy.reload().await;
                }
                _ = shutdown.changed() => {
                    self.flush();
                    tracing::info!("sluice stopping: index flushed");
                    return;
                }
            }
        }
    }
}
