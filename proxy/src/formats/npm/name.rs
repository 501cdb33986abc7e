//! npm package names and the routes below an npm mount point, validated once at the edge.
//!
//! A name is `name` or `@scope/name`; clients write a scoped name in a packument path as
//! `@scope%2fname` or `@scope/name`, and in a tarball path as `@scope/name/-/name-1.0.0.tgz`.
//! Everything is percent-decoded first and then checked against the characters npm names
//! may hold, so nothing like `..`, `%`, `\` or a control character reaches an upstream URL.

use std::fmt;

use http::Method;

/// Longest npm package name (npm's own limit).
const MAX_NAME: usize = 214;

/// A validated npm package name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NpmName(String);

impl NpmName {
    /// Parses `name` or `@scope/name` (already percent-decoded).
    pub fn parse(s: &str) -> Result<NpmName, String> {
        if s.is_empty() || s.len() > MAX_NAME {
            return Err(format!(
                "invalid package name {:?}: must be 1 to {MAX_NAME} characters",
                truncate(s)
            ));
        }
        let ok = match s.strip_prefix('@') {
            Some(scoped) => match scoped.split_once('/') {
                Some((scope, name)) => valid_part(scope) && valid_part(name),
                None => false,
            },
            None => valid_part(s),
        };
        if ok {
            Ok(NpmName(s.to_string()))
        } else {
            Err(format!("invalid package name {:?}", truncate(s)))
        }
    }

    /// The name as written (`@scope/name` or `name`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form registries expect in a packument path: `@scope%2fname` for scoped names.
    pub fn encoded(&self) -> String {
        self.0.replacen('/', "%2f", 1)
    }
}

impl fmt::Display for NpmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One part (scope or bare name): the characters npm ever allowed in names (legacy names
/// have capitals and a few punctuation marks), not starting with `.` (no `..`).
fn valid_part(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('.')
        && p.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.' | b'_' | b'~' | b'!' | b'*' | b'\'' | b'(' | b')'
                )
        })
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

/// What a request below `/<upstream>/` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /-/ping`
    Ping,
    /// `GET /-/v1/search`
    Search,
    /// `GET /-/npm/v1/keys`
    Keys,
    /// `GET /-/npm/v1/attestations/<name>@<version>` (provenance, `npm audit signatures`)
    Attestations(NpmName, String),
    /// `POST` to an audit endpoint; the path below the registry root.
    Audit(&'static str),
    /// `GET /-/package/<name>/dist-tags`
    DistTags(NpmName),
    /// `GET /<name>`
    Packument(NpmName),
    /// `GET /<name>/<version or dist-tag>`
    Version(NpmName, String),
    /// `GET /<name>/-/<file>.tgz`
    Tarball(NpmName, String),
    /// A write (publish, unpublish, dist-tag change, login ...).
    Write,
}

/// Parses a request: `rest` is the raw path below the mount point (no leading `/`).
pub fn parse(method: &Method, rest: &str) -> Result<Route, RouteError> {
    let read = matches!(*method, Method::GET | Method::HEAD);
    if let Some(api) = rest.strip_prefix("-/") {
        let audit = match api {
            "npm/v1/security/advisories/bulk" => Some("/-/npm/v1/security/advisories/bulk"),
            "npm/v1/security/audits/quick" => Some("/-/npm/v1/security/audits/quick"),
            // pnpm audit
            "npm/v1/security/audits" => Some("/-/npm/v1/security/audits"),
            _ => None,
        };
        if let Some(a) = audit {
            return if *method == Method::POST {
                Ok(Route::Audit(a))
            } else {
                Err(RouteError::NotFound)
            };
        }
        if !read {
            return Ok(Route::Write);
        }
        return match api {
            "ping" => Ok(Route::Ping),
            "v1/search" => Ok(Route::Search),
            "npm/v1/keys" => Ok(Route::Keys),
            _ if api.starts_with("npm/v1/attestations/") => {
                let spec = decode(&api["npm/v1/attestations/".len()..])?;
                // `<name>@<version>`, the name maybe scoped (`@scope/name@1.0.0`).
                let (name, version) = spec
                    .get(1..)
                    .and_then(|s| s.rsplit_once('@'))
                    .map(|(n, v)| (&spec[..n.len() + 1], v))
                    .ok_or_else(|| {
                        RouteError::Bad(format!(
                            "attestations need <name>@<version>, not {:?}",
                            truncate(&spec)
                        ))
                    })?;
                if !valid_version(version) {
                    return Err(RouteError::Bad(format!(
                        "invalid version {:?}",
                        truncate(version)
                    )));
                }
                let name = NpmName::parse(name).map_err(RouteError::Bad)?;
                Ok(Route::Attestations(name, version.to_string()))
            }
            _ => {
                let name = api
                    .strip_prefix("package/")
                    .and_then(|p| p.strip_suffix("/dist-tags"))
                    .ok_or(RouteError::NotFound)?;
                Ok(Route::DistTags(decode_name(name)?))
            }
        };
    }
    if !read {
        return Ok(Route::Write);
    }
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| RouteError::Bad("the path is not valid UTF-8".into()))?;
    let mut segs = decoded.split('/');
    let first = segs.next().unwrap_or("");
    let name = if first.starts_with('@') {
        let second = segs.next().ok_or(RouteError::NotFound)?;
        format!("{first}/{second}")
    } else {
        first.to_string()
    };
    let name = NpmName::parse(&name).map_err(RouteError::Bad)?;
    let tail: Vec<&str> = segs.collect();
    match tail.as_slice() {
        [] | [""] => Ok(Route::Packument(name)),
        ["-", file] if valid_file(file) => Ok(Route::Tarball(name, file.to_string())),
        [v] if valid_version(v) => Ok(Route::Version(name, v.to_string())),
        _ => Err(RouteError::NotFound),
    }
}

fn decode(raw: &str) -> Result<String, RouteError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|d| d.into_owned())
        .map_err(|_| RouteError::Bad("the path is not valid UTF-8".into()))
}

fn decode_name(raw: &str) -> Result<NpmName, RouteError> {
    NpmName::parse(&decode(raw)?).map_err(RouteError::Bad)
}

/// A file name the tarball route accepts (with a `.tgz` suffix).
pub fn valid_file(f: &str) -> bool {
    f.ends_with(".tgz")
        && !f.starts_with('.')
        && f.len() <= 300
        && f.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'!')
        })
}

fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'+'))
}

/// Why a path is not a route.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Malformed name or path.
    Bad(String),
    /// No such endpoint.
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(rest: &str) -> Result<Route, RouteError> {
        parse(&Method::GET, rest)
    }

    fn n(s: &str) -> NpmName {
        NpmName::parse(s).unwrap()
    }

    #[test]
    fn scoped_names_parse_in_every_spelling() {
        for p in [
            "@types%2fnode",
            "@types%2Fnode",
            "@types/node",
            "%40types%2fnode",
        ] {
            assert_eq!(get(p), Ok(Route::Packument(n("@types/node"))), "{p}");
        }
        assert_eq!(n("@types/node").encoded(), "@types%2fnode");
        assert_eq!(get("semver"), Ok(Route::Packument(n("semver"))));
        assert_eq!(get("JSONStream"), Ok(Route::Packument(n("JSONStream"))));
    }

    #[test]
    fn tarballs_and_versions_parse() {
        assert_eq!(
            get("@isaacs/string-locale-compare/-/string-locale-compare-1.1.0.tgz"),
            Ok(Route::Tarball(
                n("@isaacs/string-locale-compare"),
                "string-locale-compare-1.1.0.tgz".into()
            ))
        );
        assert_eq!(
            get("semver/-/semver-7.6.0.tgz"),
            Ok(Route::Tarball(n("semver"), "semver-7.6.0.tgz".into()))
        );
        assert_eq!(
            get("semver/7.6.0"),
            Ok(Route::Version(n("semver"), "7.6.0".into()))
        );
        assert_eq!(
            get("semver/latest"),
            Ok(Route::Version(n("semver"), "latest".into()))
        );
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "..",
            "../etc/passwd",
            "%2e%2e",
            "a%2f..%2f..",
            "@scope",
            "@/x",
            "a b",
            "a%00",
            "semver/-/..%2f..%2fx.tgz",
            "semver/-/x.tar",
            "semver/1.0.0/extra",
        ] {
            assert!(get(p).is_err(), "{p} should be refused: {:?}", get(p));
        }
        assert!(NpmName::parse(&"a".repeat(215)).is_err());
    }

    #[test]
    fn api_endpoints_and_writes() {
        assert_eq!(get("-/ping"), Ok(Route::Ping));
        assert_eq!(get("-/v1/search"), Ok(Route::Search));
        assert_eq!(get("-/npm/v1/keys"), Ok(Route::Keys));
        assert_eq!(
            get("-/npm/v1/attestations/@sigstore%2fsign@2.1.0"),
            Ok(Route::Attestations(n("@sigstore/sign"), "2.1.0".into()))
        );
        assert_eq!(
            get("-/npm/v1/attestations/semver@7.6.0"),
            Ok(Route::Attestations(n("semver"), "7.6.0".into()))
        );
        for bad in [
            "-/npm/v1/attestations/semver",
            "-/npm/v1/attestations/@scope%2fname",
            "-/npm/v1/attestations/semver@",
            "-/npm/v1/attestations/..%2f..@1.0.0",
            "-/npm/v1/attestations/semver@1.0.0%2f..",
        ] {
            assert!(matches!(get(bad), Err(RouteError::Bad(_))), "{bad}");
        }
        assert_eq!(
            parse(&Method::POST, "-/npm/v1/security/audits"),
            Ok(Route::Audit("/-/npm/v1/security/audits"))
        );
        assert_eq!(
            get("-/package/@a%2fb/dist-tags"),
            Ok(Route::DistTags(n("@a/b")))
        );
        assert_eq!(
            parse(&Method::POST, "-/npm/v1/security/advisories/bulk"),
            Ok(Route::Audit("/-/npm/v1/security/advisories/bulk"))
        );
        assert_eq!(parse(&Method::PUT, "semver"), Ok(Route::Write));
        assert_eq!(
            parse(&Method::DELETE, "semver/-/semver-1.0.0.tgz/-rev/1"),
            Ok(Route::Write)
        );
        assert_eq!(
            parse(&Method::PUT, "-/package/semver/dist-tags/beta"),
            Ok(Route::Write)
        );
        assert_eq!(parse(&Method::POST, "semver"), Ok(Route::Write));
        assert_eq!(get("-/whoami"), Err(RouteError::NotFound));
    }
}
