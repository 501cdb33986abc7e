//! Prometheus metrics (names fixed by SPEC §6 and documented in the README).
//!
//! - `sluice_requests_total{format,status}`: every response.
//! - `sluice_cache_events_total{format,result}`: hit | miss | stale | revalidated | bypass,
//!   for every artifact response.
//! - `sluice_bytes_total{format,source}`: body bytes served from the store (`cache`) and
//!   fetched from upstreams (`upstream`).
//! - `sluice_upstream_requests_total{upstream,method,status}`,
//!   `sluice_upstream_request_seconds{upstream}` (time to response headers).
//! - `sluice_inflight_fills`, `sluice_storage_bytes`, `sluice_mapped_bytes`, `sluice_fill_failures_total`,
//!   `sluice_digest_mismatches_total{format}`, `sluice_upstream_token_requests_total`.
//! - `sluice_fill_follow_bytes_total{from}`: body bytes of fills handed to clients,
//!   `memory` (the received buffers) or `file` (read back from the temp file).

use std::sync::OnceLock;

use metrics::Counter;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder (once per process) and returns the renderer.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("sluice_upstream_request_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )?
        .install_recorder()?;
    metrics::describe_counter!(
        "sluice_requests_total",
        "Responses by format and HTTP status"
    );
    metrics::describe_counter!(
        "sluice_cache_events_total",
        "Artifact responses by how they were served"
    );
    metrics::describe_counter!(
        "sluice_bytes_total",
        "Body bytes by source: cache (served from the store) or upstream (fetched)"
    );
    metrics::describe_counter!(
        "sluice_upstream_requests_total",
        "Requests sent to upstreams"
    );
    metrics::describe_histogram!(
        "sluice_upstream_request_seconds",
        "Upstream time to response headers"
    );
    metrics::describe_gauge!("sluice_inflight_fills", "Blob fills in progress");
    metrics::describe_counter!(
        "sluice_fill_follow_bytes_total",
        "Body bytes of fills handed to clients, from the fill's latest received chunks (memory) or read back from the temp file (file)"
    );
    metrics::describe_gauge!(
        "sluice_storage_bytes",
        "Bytes stored in the content-addressed store"
    );
    metrics::describe_gauge!(
        "sluice_mapped_bytes",
        "Bytes of recently served large files kept memory-mapped for the next reader"
    );
    metrics::gauge!("sluice_inflight_fills").set(0.0);
    metrics::gauge!("sluice_mapped_bytes").set(0.0);
    Ok(handle)
}

/// Counts one response.
///
/// Handles are resolved once per label set and kept (a registry lookup builds a key,
/// formats the status and takes a lock; an increment of a kept handle is one atomic add).
pub fn record_response(
    format: &'static str,
    status: u16,
    cache: Option<&'static str>,
    cache_bytes: u64,
) {
    let f = format_slot(format);
    match (f, status) {
        (Some(f), 100..=599) => REQUESTS[f * STATUSES + usize::from(status - 100)]
            .get_or_init(|| requests_counter(format, status))
            .increment(1),
        _ => requests_counter(format, status).increment(1),
    }
    if let Some(result) = cache {
        let counter = || metrics::counter!("sluice_cache_events_total", "format" => format, "result" => result);
        match (f, result_slot(result)) {
            (Some(f), Some(r)) => CACHE_EVENTS[f * RESULTS.len() + r]
                .get_or_init(counter)
                .increment(1),
            _ => counter().increment(1),
        }
    }
    if cache_bytes > 0 {
        let counter =
            || metrics::counter!("sluice_bytes_total", "format" => format, "source" => "cache");
        match f {
            Some(f) => CACHE_BYTES[f].get_or_init(counter).increment(cache_bytes),
            None => counter().increment(cache_bytes),
        }
    }
}

/// Counts body bytes a fill's follower handed to its client, by where they came from:
/// the buffers received from the upstream (`memory`) or the temp file read back (`file`).
/// `sluice_metadata_revalidations_total{result}`: what asking the upstream about cached
/// mutable metadata (an OCI tag, a packument, a simple page) past its TTL found: `updated`,
/// `not_modified`, `gone` (404) or `failed`.
pub fn record_revalidation(result: &'static str) {
    metrics::counter!("sluice_metadata_revalidations_total", "result" => result).increment(1);
}

pub fn record_follow_bytes(from_memory: bool, bytes: u64) {
    static FOLLOW: [OnceLock<Counter>; 2] = [UNSET; 2];
    let from = if from_memory { "memory" } else { "file" };
    FOLLOW[usize::from(from_memory)]
        .get_or_init(|| metrics::counter!("sluice_fill_follow_bytes_total", "from" => from))
        .increment(bytes);
}

fn requests_counter(format: &'static str, status: u16) -> Counter {
    metrics::counter!("sluice_requests_total", "format" => format, "status" => status.to_string())
}

/// `format` labels with kept handles.
const FORMATS: [&str; 7] = ["oci", "npm", "pypi", "cargo", "ops", "admin", "other"];
/// `result` labels of cache events.
const RESULTS: [&str; 5] = ["hit", "miss", "stale", "revalidated", "bypass"];
/// Status codes 100..=599.
const STATUSES: usize = 500;

#[allow(clippy::declare_interior_mutable_const)]
const UNSET: OnceLock<Counter> = OnceLock::new();
static REQUESTS: [OnceLock<Counter>; FORMATS.len() * STATUSES] = [UNSET; FORMATS.len() * STATUSES];
static CACHE_EVENTS: [OnceLock<Counter>; FORMATS.len() * RESULTS.len()] =
    [UNSET; FORMATS.len() * RESULTS.len()];
static CACHE_BYTES: [OnceLock<Counter>; FORMATS.len()] = [UNSET; FORMATS.len()];

fn format_slot(format: &str) -> Option<usize> {
    FORMATS.iter().position(|f| *f == format)
}

fn result_slot(result: &str) -> Option<usize> {
    RESULTS.iter().position(|r| *r == result)
}
