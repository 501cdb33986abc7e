//! Lists of a repository: its tags (`/v2/<name>/tags/list`) and the referrers of a manifest
//! (`/v2/<name>/referrers/<digest>`, OCI distribution 1.1: signatures, SBOMs and
//! attestations attached to it). Both change upstream at any time, so they are metadata:
//! cached for `tag_ttl` per page, served stale when the upstream fails, a `404` remembered
//! for `negative_ttl` (an upstream without the referrers API answers `404`, and clients then
//! fall back to the `sha256-<hex>` tag schema).
//!
//! A page's `Link` to the next one is kept and answered rewritten to sluice's own path: the
//! upstream's would send the client past sluice, and lose the upstream prefix of the name.
//!
//! Referrers are cached unfiltered, one list per manifest, and an `artifactType` filter is
//! applied here (answered with `OCI-Filters-Applied: artifactType`), so that every filter
//! shares one copy and one upstream request.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::{scope, API_VERSION};
use crate::app::App;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::names::{RepoName, Tag};
use crate::response::{Body, CacheStatus, Reply};
use crate::store::index::{IndexExt, MetaRecord, Tree};
use crate::store::unix_ms;
use crate::upstream::Upstream;

/// The media type of a referrers list (an OCI image index).
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Which list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    /// `tags/list`.
    Tags,
    /// `referrers/<digest>`.
    Referrers(Digest),
}

impl List {
    /// The path after `/v2/<name>/`.
    fn tail(&self) -> String {
        match self {
            List::Tags => "tags/list".to_string(),
            List::Referrers(d) => format!("referrers/{d}"),
        }
    }
}

/// How the client asked: the repository name of its path (upstream prefix included),
/// containerd's `ns` and the raw query, to answer with a next-page link it can follow.
pub struct Asked<'a> {
    /// The name as requested.
    pub name: &'a str,
    /// containerd's `?ns=`.
    pub ns: Option<&'a str>,
    /// The raw query.
    pub query: Option<&'a str>,
}

/// A list request's query: the page (`n`, `last`) and, for referrers, `artifactType`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    /// `n=..&last=..`, validated and in that order (empty: the first page, all of it).
    page: String,
    /// The referrers filter.
    artifact_type: Option<String>,
}

/// Answers `GET /v2/<name>/tags/list` or `/v2/<name>/referrers/<digest>`.
pub async fn answer(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    list: List,
    asked: Asked<'_>,
) -> Result<Reply, ProxyError> {
    let q = parse_query(asked.query)?;
    let tail = list.tail();
    let suffix = if q.page.is_empty() {
        String::new()
    } else {
        format!("?{}", q.page)
    };
    let key = match list {
        // Kept as before referrers existed: cached pages stay valid.
        List::Tags => format!("tags/{}/{}{}", up.name(), repo, suffix),
        List::Referrers(d) => format!("referrers/{}/{}@{}{}", up.name(), repo, d, suffix),
    };
    let (bytes, rec, cache) = fetch(app, up, repo, &tail, &suffix, &key, list).await?;
    let mut reply = Reply::new(StatusCode::OK, cache)
        .header(API_VERSION.0, API_VERSION.1)
        .header("Content-Type", rec.content_type.clone());
    if let Some(next) = &rec.next_page {
        let mut link = format!("/v2/{}/{}?{}", asked.name, tail, next);
        for (k, v) in [
            ("artifactType", q.artifact_type.as_deref()),
            ("ns", asked.ns),
        ] {
            if let Some(v) = v {
                link.push_str(&format!("&{k}={}", urlencoding(v)));
            }
        }
        reply = reply.header("Link", format!("<{link}>; rel=\"next\""));
    }
    let bytes = match &q.artifact_type {
        Some(t) if matches!(list, List::Referrers(_)) => {
            reply = reply.header("OCI-Filters-Applied", "artifactType");
            only_artifact_type(&bytes, t)
        }
        _ => bytes,
    };
    Ok(reply.body(Body::Full(bytes)))
}

/// The cached page under `key` while fresh, else the upstream's (stale-if-error).
async fn fetch(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    tail: &str,
    suffix: &str,
    key: &str,
    list: List,
) -> Result<(Bytes, MetaRecord, CacheStatus), ProxyError> {
    let cached: Option<MetaRecord> = app
        .store
        .index()
        .get_rec(Tree::Meta, key.as_bytes())
        .map_err(ProxyError::internal)?;
    let cached = cached.and_then(|r| app.store.read(&r.digest).map(|b| (r, b)));
    if let Some((rec, bytes)) = &cached {
        let age = unix_ms().saturating_sub(rec.fetched_at_ms);
        if up.is_offline() || u128::from(age) < up.cfg.tag_ttl.get().as_millis() {
            return Ok((bytes.clone(), rec.clone(), CacheStatus::Hit));
        }
    }
    let not_found = || ProxyError::NotFound {
        code: match list {
            List::Tags => "NAME_UNKNOWN",
            List::Referrers(_) => "MANIFEST_UNKNOWN",
        },
        message: match list {
            List::Tags => format!("repository {repo} not found upstream"),
            List::Referrers(_) => format!(
                "no referrers list for it upstream ({}): the upstream may not support the \
                 referrers API (clients fall back to sha256-<hex> tags)",
                up.name()
            ),
        },
    };
    if cached.is_none() && app.is_negative(key) {
        return Err(not_found());
    }
    let path = format!("/v2/{repo}/{tail}{suffix}");
    match fetch_upstream(app, up, repo, &path, list, not_found).await {
        Ok((bytes, content_type, next_page)) => {
            let rec = MetaRecord {
                digest: app.store.put_bytes(&bytes)?,
                content_type,
                fetched_at_ms: unix_ms(),
                etag: None,
                last_modified: None,
                next_page,
            };
            app.store
                .index()
                .put_rec(Tree::Meta, key.as_bytes(), &rec)
                .map_err(ProxyError::internal)?;
            Ok((bytes, rec, CacheStatus::Miss))
        }
        Err(e) if e.is_upstream_failure() || matches!(e, ProxyError::Offline(_)) => match cached {
            Some((rec, bytes)) if up.stale_allowed(unix_ms().saturating_sub(rec.fetched_at_ms)) => {
                Ok((bytes, rec, CacheStatus::Stale))
            }
            _ => Err(e),
        },
        Err(e) => {
            if matches!(e, ProxyError::NotFound { .. }) {
                app.remember_negative(key.to_string(), up.cfg.negative_ttl.get());
            }
            Err(e)
        }
    }
}

/// One page from the upstream: its bytes (checked to be JSON), `Content-Type` and the
/// query of its next page.
async fn fetch_upstream(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    path: &str,
    list: List,
    not_found: impl FnOnce() -> ProxyError,
) -> Result<(Bytes, String, Option<String>), ProxyError> {
    let resp = up
        .send(
            Method::GET,
            path,
            HeaderMap::new(),
            Some(&scope(repo)),
            None,
        )
        .await?;
    if !resp.status().is_success() {
        return Err(up.status_error(resp.status(), path, not_found()));
    }
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(http::header::CONTENT_TYPE).unwrap_or_else(|| match list {
        List::Tags => "application/json".to_string(),
        List::Referrers(_) => INDEX.to_string(),
    });
    let next_page = header(http::header::LINK).and_then(|l| next_page(&l));
    let bytes =
        crate::formats::read_limited(up, resp, app.config.server.max_metadata_size.0, path).await?;
    serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| ProxyError::Upstream {
        upstream: up.name().to_string(),
        message: format!("{path}: list is not JSON: {e}"),
        status: None,
    })?;
    Ok((bytes, content_type, next_page))
}

/// Validates a list request's query: `n` (digits), `last` (a tag), `artifactType` (a media
/// type); anything else is ignored.
fn parse_query(query: Option<&str>) -> Result<Query, ProxyError> {
    let (mut n, mut last, mut artifact_type) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "n" if !v.is_empty() && v.len() < 8 && v.bytes().all(|b| b.is_ascii_digit()) => {
                n = Some(v.into_owned())
            }
            "n" => {
                return Err(ProxyError::BadRequest {
                    code: "PAGINATION_NUMBER_INVALID",
                    message: format!("invalid n={v:?}"),
                })
            }
            "last" => {
                Tag::parse(&v).map_err(|m| ProxyError::BadRequest {
                    code: "TAG_INVALID",
                    message: m,
                })?;
                last = Some(v.into_owned());
            }
            "artifactType" if is_media_type(&v) => artifact_type = Some(v.into_owned()),
            "artifactType" => {
                return Err(ProxyError::BadRequest {
                    code: "UNSUPPORTED",
                    message: format!("invalid artifactType={v:?}: not a media type"),
                })
            }
            _ => {}
        }
    }
    let page = [("n", n), ("last", last)]
        .into_iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", v?)))
        .collect::<Vec<_>>()
        .join("&");
    Ok(Query {
        page,
        artifact_type,
    })
}

/// The validated page query (`n=..&last=..`) of a `Link: <...>; rel="next"` header, if it
/// has one sluice can follow.
fn next_page(link: &str) -> Option<String> {
    let next = link
        .split(',')
        .find(|part| part.contains("rel=\"next\"") || part.contains("rel=next"))?;
    let target = next.split_once('<')?.1.split_once('>')?.0;
    let url = url::Url::parse("http://upstream/")
        .ok()?
        .join(target)
        .ok()?;
    let q = parse_query(url.query()).ok()?;
    (!q.page.is_empty()).then_some(q.page)
}

/// A media type (`type/subtype`, RFC 6838 characters), as an `artifactType` must be.
fn is_media_type(s: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 127
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    s.split_once('/').is_some_and(|(t, st)| ok(t) && ok(st))
}

/// The referrers index with only the descriptors of `artifact_type`; unchanged when it is
/// not an index.
fn only_artifact_type(bytes: &Bytes, artifact_type: &str) -> Bytes {
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return bytes.clone();
    };
    let Some(manifests) = doc.get_mut("manifests").and_then(|m| m.as_array_mut()) else {
        return bytes.clone();
    };
    manifests.retain(|m| m.get("artifactType").and_then(|t| t.as_str()) == Some(artifact_type));
    serde_json::to_vec(&doc).map_or_else(|_| bytes.clone(), Bytes::from)
}

/// Percent-encodes a query value (media types carry `+`, which a query would read as a
/// space).
fn urlencoding(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_validated_and_put_in_one_order() {
        assert_eq!(parse_query(None).unwrap(), Query::default());
        let q = parse_query(Some(
            "last=v1&x=y&n=10&artifactType=application%2Fvnd.dev.cosign%2Bjson",
        ))
        .unwrap();
        assert_eq!(q.page, "n=10&last=v1");
        assert_eq!(
            q.artifact_type.as_deref(),
            Some("application/vnd.dev.cosign+json")
        );
        for bad in [
            "n=-1",
            "n=abc",
            "last=..%2F",
            "artifactType=text",
            "artifactType=a/b%20c",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_page_is_taken_from_an_upstream_link_absolute_or_relative() {
        assert_eq!(
            next_page(r#"</v2/lib/app/tags/list?n=10&last=v10>; rel="next""#).as_deref(),
            Some("n=10&last=v10")
        );
        assert_eq!(
            next_page(r#"<https://r.example/v2/a/tags/list?last=b&n=2>; rel=next"#).as_deref(),
            Some("n=2&last=b")
        );
        assert_eq!(next_page(r#"</v2/a/tags/list?n=2>; rel="prev""#), None);
        assert_eq!(
            next_page(r#"</v2/a/tags/list?token=opaque>; rel="next""#),
            None
        );
        assert_eq!(next_page("garbage"), None);
    }

    #[test]
    fn referrers_are_filtered_by_artifact_type() {
        let index = Bytes::from_static(
            br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:a","artifactType":"application/x.sig"},{"digest":"sha256:b","artifactType":"application/x.sbom"}]}"#,
        );
        let only: serde_json::Value =
            serde_json::from_slice(&only_artifact_type(&index, "application/x.sbom")).unwrap();
        assert_eq!(only["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(only["manifests"][0]["digest"], "sha256:b");
        assert_eq!(only["schemaVersion"], 2);
    }
}
