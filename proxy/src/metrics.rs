//! Prometheus metrics (names fixed by SPEC §6 and documented in the README).
//!
//! - `sluice_requests_total{format,status}`: every response.
//! - `sluice_cache_events_total{format,result}`: hit | miss | stale | revalidated | bypass,
//!   for every artifact response.
//! - `sluice_bytes_total{format,source}`: body bytes served from the store (`cache`) and
//!   fetched from upstreams (`upstream`).
//! - `sluice_upstream_requests_total{upstream,method,status}`,
//!   `sluice_upstream_request_seconds{upstream}` (time to response headers).
//! - `sluice_inflight_fills`, `sluice_storage_bytes`, `sluice_fill_failures_total`,
//!   `sluice_digest_mismatches_total{format}`, `sluice_upstream_token_requests_total`.

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
    metrics::describe_gauge!(
        "sluice_storage_bytes",
        "Bytes stored in the content-addressed store"
    );
    metrics::gauge!("sluice_inflight_fills").set(0.0);
    Ok(handle)
}

/// Counts one response.
pub fn record_response(
    format: &'static str,
    status: u16,
    cache: Option<&'static str>,
    cache_bytes: u64,
) {
    metrics::counter!("sluice_requests_total", "format" => format, "status" => status.to_string())
        .increment(1);
    if let Some(result) = cache {
        metrics::counter!("sluice_cache_events_total", "format" => format, "result" => result)
            .increment(1);
    }
    if cache_bytes > 0 {
        metrics::counter!("sluice_bytes_total", "format" => format, "source" => "cache")
            .increment(cache_bytes);
    }
}
