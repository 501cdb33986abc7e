//! Which repository holds which content. The store is content-addressed and shared by every
//! repository, but a manifest or blob is served under a repository only once that
//! repository's upstream has shown it holds it: it was fetched from there, a manifest
//! fetched from there refers to it, or the upstream confirmed it (a `HEAD`) the first time
//! it was asked for there. Otherwise content cached for one repository (one the policy
//! denies now, or a private one sluice has credentials for) could be read by digest under
//! any other name, as a registry's own repositories never allow.

use std::sync::Arc;

use futures_util::FutureExt;
use http::{HeaderMap, Method};

use super::{blob_unknown, manifest_unknown, scope, MANIFEST_ACCEPT};
use crate::app::App;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::names::RepoName;
use crate::store::index::{Index, Tree};
use crate::upstream::{accept, Upstream};

/// How long a digest the upstream could not be asked about is served without asking again.
pub const UNCONFIRMED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// What a digest names.
#[derive(Clone, Copy)]
pub enum Content {
    Manifest,
    Blob,
}

fn key(up: &Upstream, repo: &RepoName, d: &Digest) -> String {
    format!("{}/{repo}@{d}", up.name())
}

/// Whether `repo` of `up` is known to hold `d` (a link recorded from an upstream answer).
pub fn is_linked(app: &App, up: &Upstream, repo: &RepoName, d: &Digest) -> bool {
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

/// Records that `repo` of `up` holds `digests`. The index is flushed in the background, not
/// on a client's path (no fsync before a cold blob's first byte): a crash before it lands
/// costs one upstream `HEAD` to confirm them again.
pub fn link(app: &App, up: &Upstream, repo: &RepoName, digests: impl IntoIterator<Item = Digest>) {
    if let Err(e) = put(app.store.index().as_ref(), &keys(up, repo, digests)) {
        tracing::warn!(%repo, error = %e, "recording repository links failed");
        return;
    }
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.index().flush() {
            tracing::warn!(error = %e, "flushing repository links failed");
        }
    });
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
/// repository is served under it; once confirmed, `d` and what `also` lists (a manifest's
/// references) are linked to `repo`. One upstream `HEAD` per repository and digest at a
/// time, however many clients ask. An upstream that cannot be asked (down, offline) does
/// not stop a cached copy from being served; one that says no does. After a failed ask,
/// [`UNCONFIRMED_FOR`] passes before the next (the cached copy is served meanwhile).
pub async fn confirm(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    d: &Digest,
    what: Content,
    also: impl FnOnce() -> Vec<Digest>,
) -> Result<(), ProxyError> {
    if up.is_offline() || is_linked(app, up, repo, d) {
        return Ok(());
    }
    let k = key(up, repo, d);
    // The upstream could not be asked a moment ago: served without waiting on it again.
    if app.oci_unconfirmed.get(&k).is_some() {
        return Ok(());
    }
    let (app2, up2, repo2, d2) = (app.clone(), up.clone(), repo.clone(), *d);
    let answer = app
        .oci_confirms
        .run(&k, move || {
            async move { ask(&app2, &up2, &repo2, &d2, what).await }.boxed()
        })
        .await;
    match answer {
        Ok(()) => {
            let more = also();
            if !more.is_empty() {
                link(app, up, repo, more);
            }
            Ok(())
        }
        Err(e) if e.is_upstream_failure() => {
            tracing::warn!(%repo, digest = %d, error = %e, "cannot confirm the repository holds a cached digest; serving it");
            app.oci_unconfirmed.insert(k, ());
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The upstream's `HEAD` of `d` in `repo`: linked when it is there.
async fn ask(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    d: &Digest,
    what: Content,
) -> Result<(), ProxyError> {
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
    if answer.is_ok() {
        link(app, up, repo, [*d]);
    }
    answer
}
