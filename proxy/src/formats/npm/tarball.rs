//! npm tarballs: `/<name>/-/<file>.tgz`, the file name being the last segment of the
//! version's `dist.tarball`, or `<name>-<version>.tgz` when that is not a `.tgz` name
//! ([`super::packument::served_file`]).
//!
//! Where a tarball comes from and what it must hash to are looked up in the cached
//! packument of `<name>` (`dist.tarball`, `dist.integrity` or else `dist.shasum`), never
//! taken from the request, so sluice cannot be made to fetch an arbitrary URL. The
//! content is verified while streaming ([`crate::fill`]), stored under its sha256 with a
//! sha512 / sha1 alias, and served byte-exact. A file the cached packument does not name
//! (a release newer than the cached copy) makes sluice revalidate the packument once
//! before answering `404`; the `404` is then remembered for `negative_ttl`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::StatusCode;

use crate::app::App;
use crate::digest::Digest;
use crate::docs::Doc;
use crate::error::ProxyError;
use crate::hashes::Expect;
use crate::response::{Body, CacheStatus, Reply};
use crate::upstream::Upstream;

use super::name::NpmName;
use super::packument::{tarball_index, TarballEntry};

type Index = Arc<HashMap<String, TarballEntry>>;

/// Tarball indexes of packuments, by document digest: a hit on a packument with thousands
/// of versions does not re-parse it.
fn indexes() -> &'static moka::sync::Cache<Digest, Index> {
    static CACHE: OnceLock<moka::sync::Cache<Digest, Index>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::sync::Cache::builder()
            .weigher(|_k: &Digest, v: &Index| v.len().try_into().unwrap_or(u32::MAX))
            .max_capacity(2_000_000)
            .build()
    })
}

fn index_of(doc: &Doc, name: &NpmName) -> Index {
    if let Some(i) = indexes().get(&doc.digest) {
        return i;
    }
    let i = Arc::new(tarball_index(&doc.bytes, name.as_str()));
    indexes().insert(doc.digest, i.clone());
    i
}

fn not_found(name: &NpmName, file: &str) -> ProxyError {
    ProxyError::NotFound {
        code: "NOT_FOUND",
        message: format!("{name}: no version has the tarball {file}"),
    }
}

/// The packument entry for `file`, revalidating the packument once if it lacks it.
async fn find(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &NpmName,
    file: &str,
) -> Result<TarballEntry, ProxyError> {
    // Without a policy, consult whichever form is cached (npm caches the full one, pnpm
    // the abbreviated one); when neither is, fetch the smaller abbreviated form. With one,
    // always the full form: the abbreviated one has no publish times (`time`) and no
    // `license`, and a tarball fetched first (`npm ci` from a lockfile asks for nothing
    // else) would pass the cooldown and license rules unchecked.
    let corgi =
        app.policy.engine().is_empty() && app.docs.peek(&super::doc_key(up, name, false)).is_none();
    for force in [false, true] {
        if force && app.freshness(up).offline {
            break;
        }
        if force {
            super::count_forced("missing_tarball");
        }
        let (doc, _) = super::get_packument(app, up, name, corgi, force).await?;
        if let Some(e) = index_of(&doc, name).get(file) {
            return Ok(e.clone());
        }
    }
    Err(not_found(name, file))
}

/// What the tarball must hash to: the strongest hash `dist.integrity` states, else the
/// legacy `dist.shasum`.
fn expect_of(e: &TarballEntry, name: &NpmName) -> Result<Expect, ProxyError> {
    e.integrity
        .as_deref()
        .and_then(Expect::from_sri)
        .or_else(|| e.shasum.as_deref().and_then(Expect::from_sha1_hex))
        .ok_or_else(|| ProxyError::Upstream {
            upstream: String::new(),
            message: format!(
                "{name}@{}: the packument states no usable dist.integrity or dist.shasum; \
                 refusing to serve unverifiable bytes",
                e.version
            ),
            status: None,
        })
}

const CONTENT_TYPE: &str = "application/octet-stream";

/// Answers `GET`/`HEAD /<name>/-/<file>`.
pub async fn serve(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &NpmName,
    file: &str,
    head: bool,
) -> Result<Reply, ProxyError> {
    let neg_key = format!("npm/{}/{name}/-/{file}", up.name());
    if app.is_negative(&neg_key) {
        return Err(not_found(name, file));
    }
    let entry = match find(app, up, name, file).await {
        Ok(e) => e,
        Err(e) => {
            if matches!(e, ProxyError::NotFound { .. }) {
                app.remember_negative(neg_key, up.cfg.negative_ttl.get());
            }
            return Err(e);
        }
    };
    // Cached is not the same as allowed: every tarball request is checked.
    app.policy.check(&sluice_policy::Facts {
        ecosystem: sluice_policy::Ecosystem::Npm,
        upstream: up.name(),
        public_upstream: up.cfg.public,
        name: name.as_str(),
        version: Some(&entry.version),
        digest: None,
        published_unix: entry.published,
        license: entry.license.as_deref(),
        has_install_script: entry.has_install_script,
    })?;
    let expect = expect_of(&entry, name)?;
    if let Some(reply) = stored(app, &expect) {
        return Ok(reply);
    }
    let url = up
        .base()
        .join(&entry.url)
        .map_err(|e| ProxyError::Upstream {
            upstream: up.name().to_string(),
            message: format!("{name}@{}: bad dist.tarball URL: {e}", entry.version),
            status: None,
        })?;
    let (n, f) = (name.clone(), file.to_string());
    let origin = super::super::OriginFile {
        url,
        expect: expect.clone(),
        format: "npm",
        content_type: CONTENT_TYPE,
        what: format!("{name}/-/{file}"),
        not_found: move || not_found(&n, &f),
        negative_key: neg_key,
    };
    match super::super::from_origin(app, up, origin, head).await? {
        Some(reply) => Ok(reply),
        // Stored between our lookup and the fill registry check.
        None => stored(app, &expect).ok_or_else(|| ProxyError::internal("stored tarball vanished")),
    }
}

/// The stored tarball for `expect`, if any.
fn stored(app: &App, expect: &Expect) -> Option<Reply> {
    let d = app.store.resolve(expect)?;
    let bytes = app.store.read(&d)?;
    app.store.touch(&d);
    Some(
        Reply::new(StatusCode::OK, CacheStatus::Hit)
            .header("Content-Type", CONTENT_TYPE)
            .header("ETag", format!("\"{d}\""))
            .body(Body::Mapped(bytes)),
    )
}
