//! Which repository holds which content. The store is content-addressed and shared by every
//! repository, but a manifest or blob is served under a repository only once that
//! repository's upstream has shown it holds it: it was fetched from there, a manifest
//! fetched from there refers to it, or the upstream confirmed it (a `HEAD`) the first time
//! it was asked for there. Otherwise content cached for one repository (one the policy
//! denies now, or a private one sluice has credentials for) could be read by digest under
//! any other name, as a registry's own repositories never allow.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};

use super::{blob_unknown, manifest_unknown, scope, MANIFEST_ACCEPT};
use crate::app::App;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::names::RepoName;
use crate::store::index::{Index, Tree};
use crate::upstream::{accept, Upstream};

/// What a digest names.
#[derive(Clone, Copy)]
pub enum Content {
    Manifest,
    Blob,
}

fn key(up: &Upstream, repo: &RepoName, d: &Digest) -> String {
    format!("{}/{repo}@{d}", up.name())
}

/// Requests fetching a digest from a repository's upstream right now, by link key. While
/// one is, other requests for it there join its fill without asking the upstream first
/// (the upstream's answer to the fill is the confirmation): a thousand clients on one cold
/// blob cause no `HEAD`s.
#[derive(Default)]
pub struct Fetching(parking_lot::Mutex<HashMap<String, usize>>);

/// Marks a fetch in progress until dropped.
pub struct FetchingGuard<'a> {
    of: &'a Fetching,
    key: String,
}

impl Fetching {
    /// Marks `repo` of `up` as fetching `d` until the guard drops.
    pub fn enter(&self, up: &Upstream, repo: &RepoName, d: &Digest) -> FetchingGuard<'_> {
        let key = key(up, repo, d);
        *self.0.lock().entry(key.clone()).or_default() += 1;
        FetchingGuard { of: self, key }
    }

    fn contains(&self, key: &str) -> bool {
        self.0.lock().contains_key(key)
    }
}

impl Drop for FetchingGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.of.0.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn is_linked(app: &App, up: &Upstream, repo: &RepoName, d: &Digest) -> bool {
    if app.oci_fetching.contains(&key(up, repo, d)) {
        return true;
    }
    app.store
        .index()
        .get(Tree::Links, key(up, repo, d).as_bytes())
        .ok()
        .flatten()
        .is_some()
}

/// The index keys recording that `repo` of `up` holds each of `digests` (written with
/// [`put`]).
pub fn keys(
    up: &Upstream,
    repo: &RepoName,
    digests: impl IntoIterator<Item = Digest>,
) -> Vec<String> {
    digests.into_iter().map(|d| key(up, repo, &d)).collect()
}

/// Writes link `keys` to the index (not flushed).
pub fn put(index: &dyn Index, keys: &[String]) -> Result<(), ProxyError> {
    for k in keys {
        index
            .put(Tree::Links, k.as_bytes(), b"")
            .map_err(ProxyError::internal)?;
    }
    Ok(())
}

/// Records that `repo` of `up` holds `d`, flushed to disk (off the async threads) so that
/// a crash does not send the next request for it to the upstream to confirm it again.
pub async fn link(app: &Arc<App>, up: &Upstream, repo: &RepoName, d: Digest) {
    let (store, keys) = (app.store.clone(), keys(up, repo, [d]));
    let r = tokio::task::spawn_blocking(move || {
        put(store.index().as_ref(), &keys)?;
        store.index().flush().map_err(ProxyError::internal)
    })
    .await
    .map_err(ProxyError::internal)
    .and_then(|r| r);
    if let Err(e) = r {
        tracing::warn!(%repo, digest = %d, error = %e, "recording a repository link failed");
    }
}

/// The digests a manifest refers to: its config, layers, an index's manifests, a subject.
pub fn referenced(doc: &serde_json::Value) -> Vec<Digest> {
    let digest = |v: &serde_json::Value| v.get("digest")?.as_str()?.parse().ok();
    let mut out: Vec<Digest> = ["config", "subject"]
        .iter()
        .filter_map(|k| doc.get(*k).and_then(digest))
        .collect();
    for list in ["layers", "manifests", "blobs"] {
        if let Some(items) = doc.get(list).and_then(|v| v.as_array()) {
            out.extend(items.iter().filter_map(digest));
        }
    }
    out
}

/// Confirms that `repo` holds `d` before a copy cached (or being fetched) for another
/// repository is served under it. An upstream that cannot be asked (down, offline) does
/// not stop a cached copy from being served; one that says no does.
pub async fn confirm(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    d: &Digest,
    what: Content,
) -> Result<(), ProxyError> {
    if up.is_offline() || is_linked(app, up, repo, d) {
        return Ok(());
    }
    let (path, headers, not_found) = match what {
        Content::Manifest => (
            format!("/v2/{repo}/manifests/{d}"),
            accept(MANIFEST_ACCEPT),
            manifest_unknown(repo, &d.to_string()),
        ),
        Content::Blob => (
            format!("/v2/{repo}/blobs/{d}"),
            HeaderMap::new(),
            blob_unknown(d),
        ),
    };
    let answer = match up
        .send(Method::HEAD, &path, headers, Some(&scope(repo)), None)
        .await
    {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(up.status_error(resp.status(), &path, not_found)),
        Err(e) => Err(e),
    };
    let result = match &answer {
        Ok(()) => "confirmed",
        Err(e) if e.is_upstream_failure() => "unconfirmed",
        Err(_) => "refused",
    };
    metrics::counter!("sluice_oci_repository_checks_total", "result" => result).increment(1);
    match answer {
        Ok(()) => {
            link(app, up, repo, *d).await;
            Ok(())
        }
        Err(e) if e.is_upstream_failure() => {
            tracing::warn!(%repo, digest = %d, error = %e, "cannot confirm the repository holds a cached digest; serving it");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
