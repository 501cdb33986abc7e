//! Loading: read, interpolate, parse, validate; every error says where it is.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::interpolate::expand;
use crate::schema::{Config, Format};

/// A configuration that could not be loaded, with its location when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Syntax, unknown key, wrong type or bad value, at `file:line:col`.
    #[error("{file}:{line}:{col}: {message}")]
    At {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong.
        message: String,
    },
    /// A problem without a single location (e.g. a missing environment variable).
    #[error("{file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

/// Loads and validates the config file at `path`, interpolating from the process
/// environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&text, &path.display().to_string(), |k| {
        std::env::var(k).ok()
    })
}

/// Loads and validates config `text` (named `file` in errors) with `env` for `${VAR}`.
pub fn load_str(
    text: &str,
    file: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let source = text;
    let expanded = expand(source, env).map_err(|e| {
        let (line, col) = line_col(source, e.offset);
        ConfigError::At {
            file: file.to_string(),
            line,
            col,
            message: e.message,
        }
    })?;
    // Errors are found in the expanded text and reported where the file says it.
    let locate = |pos: usize| line_col(source, expanded.source_offset(pos));
    let text = &expanded.text;
    let config: Config = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map(|s| locate(s.start)).unwrap_or((1, 1));
        ConfigError::At {
            file: file.to_string(),
            line,
            col,
            message: e.message().to_string(),
        }
    })?;
    validate(&config, text, file, &locate)?;
    Ok(config)
}

/// Spans of the keys that validation talks about; parsed separately so the schema types
/// stay plain.
#[derive(Deserialize, Default)]
struct Spans {
    #[serde(default)]
    server: Option<ServerSpans>,
    #[serde(default)]
    upstream: Vec<UpstreamSpans>,
    #[serde(default)]
    storage: Option<StorageSpans>,
    #[serde(default)]
    auth: Option<AuthSpans>,
}

#[derive(Deserialize)]
struct StorageSpans {
    #[serde(default)]
    cleanup: Vec<CleanupSpans>,
    max_size: Option<Spanned<String>>,
    high_watermark: Option<Spanned<f64>>,
    low_watermark: Option<Spanned<f64>>,
    s3: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
struct AuthSpans {
    #[serde(default)]
    token: Vec<TokenSpans>,
}

#[derive(Deserialize)]
struct TokenSpans {
    token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct CleanupSpans {
    id: Spanned<String>,
    upstream: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct ServerSpans {
    listen: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct UpstreamSpans {
    name: Spanned<String>,
    format: Spanned<String>,
    url: Option<Spanned<String>>,
    default: Option<Spanned<bool>>,
}

fn validate(
    config: &Config,
    text: &str,
    file: &str,
    locate: &dyn Fn(usize) -> (usize, usize),
) -> Result<(), ConfigError> {
    let spans: Spans = toml::from_str(text).unwrap_or_default();
    let at = |span: Option<std::ops::Range<usize>>, message: String| {
        let (line, col) = span.map(|s| locate(s.start)).unwrap_or((1, 1));
        ConfigError::At {
            file: file.to_string(),
            line,
            col,
            message,
        }
    };
    let server_span =
        |f: fn(&ServerSpans) -> Option<std::ops::Range<usize>>| spans.server.as_ref().and_then(f);

    if config.server.listen.parse::<SocketAddr>().is_err() {
        return Err(at(
            server_span(|s| s.listen.as_ref().map(|v| v.span())),
            format!(
                "listen = {:?} is not an IP:PORT address (e.g. \"127.0.0.1:5080\")",
                config.server.listen
            ),
        ));
    }
    if let Some(u) = &config.server.public_url {
        check_http_url(u)
            .map_err(|m| at(server_span(|s| s.public_url.as_ref().map(|v| v.span())), m))?;
    }
    match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(_), None) => {
            return Err(at(
                server_span(|s| s.tls_cert.as_ref().map(|v| v.span())),
                "tls_cert without tls_key: set both (PEM files) or neither".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(at(
                server_span(|s| s.tls_key.as_ref().map(|v| v.span())),
                "tls_key without tls_cert: set both (PEM files) or neither".into(),
            ))
        }
        _ => {}
    }

    let mut names = HashSet::new();
    let mut defaults = Vec::new();
    for (i, up) in config.upstreams.iter().enumerate() {
        let span = spans.upstream.get(i);
        let name_span = span.map(|s| s.name.span());
        if up.name.is_empty()
            || !up
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(at(
                name_span,
                format!(
                    "upstream name {:?} must be non-empty lowercase letters, digits, '-' or '_'",
                    up.name
                ),
            ));
        }
        if !names.insert(up.name.as_str()) {
            return Err(at(
                name_span,
                format!("upstream name {:?} is used twice", up.name),
            ));
        }
        if !config.formats.enabled(up.format) {
            let f = up.format.as_str();
            let message = match up.format.maturity() {
                crate::schema::Maturity::Experiment => format!(
                    "upstream {:?}: format \"{f}\" is an experiment, off unless enabled: add [formats] {f} = true",
                    up.name
                ),
                _ => format!(
                    "upstream {:?}: format \"{f}\" is turned off by [formats] {f} = false",
                    up.name
                ),
            };
            return Err(at(span.map(|s| s.format.span()), message));
        }
        if up.url.is_empty() && matches!(up.format, Format::Npm | Format::Pypi) {
            // npm / PyPI: discovered from the local client at start (crate::discover).
        } else if let Err(m) = check_http_url(&up.url) {
            return Err(at(
                span.and_then(|s| s.url.as_ref().map(|u| u.span())),
                format!("upstream {:?}: {m}", up.name),
            ));
        }
        if up.default && up.format != Format::Oci {
            return Err(at(
                name_span,
                format!(
                    "upstream {:?}: only an OCI upstream can be the default (other upstreams are mounted at /{}/)",
                    up.name, up.name
                ),
            ));
        }
        if matches!(up.name.as_str(), "v2" | "-") {
            return Err(at(
                name_span,
                format!("upstream name {:?} is reserved", up.name),
            ));
        }
        if up.username.is_some() != up.password.is_some() {
            return Err(at(
                name_span,
                format!(
                    "upstream {:?}: username and password must be given together",
                    up.name
                ),
            ));
        }
        if up.default {
            defaults.push((i, span.and_then(|s| s.default.as_ref().map(|d| d.span()))));
        }
    }
    let oci_count = config
        .upstreams
        .iter()
        .filter(|u| u.format == Format::Oci)
        .count();
    if defaults.len() > 1 {
        return Err(at(
            defaults[1].1.clone(),
            "more than one upstream has default = true; exactly one OCI upstream may be the default"
                .into(),
        ));
    }
    if oci_count > 0 && defaults.is_empty() {
        return Err(ConfigError::File {
            file: file.to_string(),
            message: "no upstream has default = true; mark the OCI upstream that un-prefixed /v2/ names go to".into(),
        });
    }
    validate_storage(config, &spans, &at)?;
    validate_tokens(config, &spans, &at)?;
    validate_cleanup(config, &spans, &at)
}

/// `[storage]` limits that `serve` could not use.
fn validate_storage(
    config: &Config,
    spans: &Spans,
    at: &dyn Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let s = &config.storage;
    let sp = spans.storage.as_ref();
    if s.max_size.is_some_and(|m| m.0 == 0) {
        return Err(at(
            sp.and_then(|s| s.max_size.as_ref().map(|v| v.span())),
            "max_size = \"0\" would evict everything; remove the key for no size limit".into(),
        ));
    }
    let (high, low) = (s.high_watermark, s.low_watermark);
    // Written so that NaN fails too.
    let high_ok = high > 0.0 && high <= 1.0;
    if !(high_ok && low > 0.0 && low <= high) {
        let span = if high_ok {
            sp.and_then(|s| s.low_watermark.as_ref().map(|v| v.span()))
        } else {
            sp.and_then(|s| s.high_watermark.as_ref().map(|v| v.span()))
        };
        return Err(at(
            span,
            format!(
                "watermarks must satisfy 0 < low_watermark <= high_watermark <= 1 \
                 (got low_watermark = {low}, high_watermark = {high})"
            ),
        ));
    }
    if let Some(s3) = &s.s3 {
        check_s3(s3).map_err(|m| at(sp.and_then(|s| s.s3.as_ref().map(|v| v.span())), m))?;
    }
    Ok(())
}

/// `[storage.s3]`: what would fail every request to the bucket is refused at load.
fn check_s3(s3: &crate::schema::S3Config) -> Result<(), String> {
    check_http_url(&s3.endpoint).map_err(|m| format!("[storage.s3] endpoint: {m}"))?;
    let endpoint = url::Url::parse(&s3.endpoint).map_err(|e| e.to_string())?;
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err("[storage.s3] endpoint must not hold credentials: \
                    use access_key_id and secret_access_key"
            .into());
    }
    if endpoint.query().is_some() || endpoint.fragment().is_some() {
        return Err(format!(
            "[storage.s3] endpoint = {:?} must not have a query or fragment",
            s3.endpoint
        ));
    }
    if !s3.path_style && !matches!(endpoint.host(), Some(url::Host::Domain(_))) {
        return Err(format!(
            "[storage.s3] path_style = false puts the bucket in the host name: endpoint {:?} \
             needs a DNS name, not an IP address",
            s3.endpoint
        ));
    }
    let valid_bucket = (3..=63).contains(&s3.bucket.len())
        && s3
            .bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_bucket {
        return Err(format!(
            "[storage.s3] bucket = {:?} is not an S3 bucket name (3-63 of a-z 0-9 . -)",
            s3.bucket
        ));
    }
    for (key, value) in [
        ("region", &s3.region),
        ("access_key_id", &s3.access_key_id),
        ("secret_access_key", &s3.secret_access_key),
    ] {
        if value.trim().is_empty() {
            return Err(format!(
                "[storage.s3] {key} is empty (is its ${{VAR}} set?)"
            ));
        }
    }
    let prefix_ok = s3.prefix.is_empty()
        || (s3.prefix.ends_with('/')
            && !s3.prefix.starts_with('/')
            && !s3.prefix.contains("//")
            && !s3.prefix.split('/').any(|seg| seg == "." || seg == "..")
            && s3
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b)));
    if !prefix_ok {
        return Err(format!(
            "[storage.s3] prefix = {:?} must be empty or like \"sluice/cache/\": \
             A-Z a-z 0-9 - _ . / segments, ending in /",
            s3.prefix
        ));
    }
    if s3.upload_concurrency == 0 {
        return Err("[storage.s3] upload_concurrency must be at least 1".into());
    }
    Ok(())
}

/// `[[auth.token]]`: an empty token would match an empty presented secret (`user:`).
fn validate_tokens(
    config: &Config,
    spans: &Spans,
    at: &dyn Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let token_spans = spans.auth.as_ref().map(|a| &a.token[..]).unwrap_or(&[]);
    for (i, t) in config.auth.tokens.iter().enumerate() {
        if t.token.trim().is_empty() {
            return Err(at(
                token_spans
                    .get(i)
                    .and_then(|s| s.token.as_ref().map(|v| v.span())),
                format!(
                    "token {:?} is empty; give it a secret (is the environment variable it names set?)",
                    t.name
                ),
            ));
        }
    }
    Ok(())
}

/// `[[storage.cleanup]]`: ids unique and usable as metric labels, something to select by,
/// an upstream that exists and speaks the policy's format.
fn validate_cleanup(
    config: &Config,
    spans: &Spans,
    at: &dyn Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let cleanup_spans = spans
        .storage
        .as_ref()
        .map(|s| &s.cleanup[..])
        .unwrap_or(&[]);
    let mut ids = HashSet::new();
    for (i, c) in config.storage.cleanup.iter().enumerate() {
        let span = cleanup_spans.get(i);
        let id_span = span.map(|s| s.id.span());
        if c.id.is_empty()
            || !c
                .id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.')
        {
            return Err(at(
                id_span,
                format!(
                    "cleanup id {:?} must be non-empty letters, digits, '-', '_' or '.'",
                    c.id
                ),
            ));
        }
        if !ids.insert(c.id.as_str()) {
            return Err(at(id_span, format!("cleanup id {:?} is used twice", c.id)));
        }
        if c.keep_last.is_none() && c.expire_after.is_none() {
            return Err(at(
                id_span,
                format!(
                    "cleanup policy {:?} selects nothing: set keep_last, expire_after or both",
                    c.id
                ),
            ));
        }
        if let Some(name) = &c.upstream {
            let up_span = span.and_then(|s| s.upstream.as_ref().map(|u| u.span()));
            let Some(up) = config.upstreams.iter().find(|u| &u.name == name) else {
                return Err(at(
                    up_span,
                    format!("cleanup policy {:?}: no upstream is named {name:?}", c.id),
                ));
            };
            if c.format.is_some_and(|f| f != up.format) {
                return Err(at(
                    up_span,
                    format!(
                        "cleanup policy {:?}: upstream {name:?} is {}, not {}",
                        c.id,
                        up.format.as_str(),
                        c.format.map_or("", Format::as_str)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_http_url(u: &str) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("url {u:?} is not a valid URL: {e}"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(format!("url {u:?} must be http:// or https://"));
    }
    if parsed.host_str().is_none() {
        return Err(format!("url {u:?} has no host"));
    }
    Ok(())
}

/// 1-based line and column (in characters) of byte offset `pos` in `text`.
pub(crate) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Config;

    fn load(text: &str) -> Result<Config, ConfigError> {
        load_str(text, "test.toml", |k| {
            (k == "TOKEN").then(|| "t0k".to_string())
        })
    }

    #[test]
    fn embedded_default_listens_on_5080_and_proxies_docker_hub() {
        let c = Config::embedded_default();
        assert_eq!(c.listen_addr().to_string(), "127.0.0.1:5080");
        assert_eq!(c.storage.data_dir.to_str(), Some("./sluice-data"));
        assert_eq!(c.upstreams.len(), 3);
        assert!(c.upstreams[0].default && c.upstreams[0].is_docker_hub());
        assert_eq!(c.upstreams[1].format, crate::Format::Npm);
        assert_eq!(c.upstreams[2].format, crate::Format::Pypi);
        assert_eq!(c.upstreams[1].metadata_ttl.get().as_secs(), 300);
    }

    #[test]
    fn unknown_key_is_rejected_with_line_and_column() {
        let err = load("[server]\nlisten = \"127.0.0.1:1\"\n  colour = \"blue\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("test.toml:3:3:"), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn bad_duration_is_rejected_with_its_location() {
        let text = "[[upstream]]\nname = \"a\"\nformat = \"oci\"\nurl = \"http://x\"\ndefault = true\ntag_ttl = \"5 minutes\"\n";
        let msg = load(text).unwrap_err().to_string();
        assert!(msg.starts_with("test.toml:6:"), "{msg}");
        assert!(msg.contains("invalid duration"), "{msg}");
    }

    #[test]
    fn unsupported_format_and_bad_listen_are_rejected() {
        let text = "[[upstream]]\nname = \"a\"\nformat = \"cobol\"\nurl = \"http://x\"\n";
        assert!(load(text).unwrap_err().to_string().contains("test.toml:3:"));
        let msg = load("[server]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("test.toml:2:10:"), "{msg}");
    }

    #[test]
    fn duplicate_names_and_two_defaults_are_rejected() {
        let up = |n: &str| {
            format!("[[upstream]]\nname = \"{n}\"\nformat = \"oci\"\nurl = \"http://h\"\ndefault = true\n")
        };
        let msg = load(&(up("a") + &up("a"))).unwrap_err().to_string();
        assert!(
            msg.contains("used twice") && msg.starts_with("test.toml:7:"),
            "{msg}"
        );
        let msg = load(&(up("a") + &up("b"))).unwrap_err().to_string();
        assert!(
            msg.contains("more than one") && msg.starts_with("test.toml:10:"),
            "{msg}"
        );
    }

    #[test]
    fn npm_and_pypi_upstreams_may_omit_url_but_not_be_default() {
        let ok = "[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\n";
        assert!(load(ok).is_ok());
        let oci = "[[upstream]]\nname = \"hub\"\nformat = \"oci\"\ndefault = true\n";
        assert!(load(oci)
            .unwrap_err()
            .to_string()
            .contains("not a valid URL"));
        let bad = "[[upstream]]\nname = \"p\"\nformat = \"pypi\"\nurl = \"http://x/simple/\"\ndefault = true\n";
        assert!(load(bad)
            .unwrap_err()
            .to_string()
            .contains("only an OCI upstream"));
        let reserved = "[[upstream]]\nname = \"v2\"\nformat = \"npm\"\n";
        assert!(load(reserved).unwrap_err().to_string().contains("reserved"));
    }

    #[test]
    fn experiment_formats_need_their_flag_and_ga_formats_can_be_turned_off() {
        let cargo = "[[upstream]]\nname = \"crates\"\nformat = \"cargo\"\nurl = \"https://index.example/\"\n";
        let msg = load(cargo).unwrap_err().to_string();
        assert!(
            msg.starts_with("test.toml:3:10:") && msg.contains("[formats] cargo = true"),
            "{msg}"
        );
        let c = load(&format!("[formats]\ncargo = true\n{cargo}")).unwrap();
        assert!(c.formats.enabled(crate::Format::Cargo));
        assert!(c.formats.enabled(crate::Format::Npm));
        // No discovery for Cargo: the index URL is required.
        let no_url =
            "[formats]\ncargo = true\n[[upstream]]\nname = \"crates\"\nformat = \"cargo\"\n";
        assert!(load(no_url)
            .unwrap_err()
            .to_string()
            .contains("not a valid URL"));
        let npm = "[formats]\nnpm = false\n[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\n";
        let msg = load(npm).unwrap_err().to_string();
        assert!(msg.contains("turned off by [formats] npm = false"), "{msg}");
        assert!(load("[formats]\nmaven = true\n").is_err());
    }

    #[test]
    fn cleanup_policies_parse_and_bad_ones_point_at_their_line() {
        let up =
            "[[upstream]]\nname = \"hub\"\nformat = \"oci\"\nurl = \"http://h\"\ndefault = true\n";
        let ok = format!("{up}[[storage.cleanup]]\nid = \"ci\"\nupstream = \"hub\"\nname = \"ci/*\"\nkeep_last = 3\nexpire_after = \"30d\"\nmode = \"enforce\"\n");
        let c = load(&ok).unwrap();
        let p = &c.storage.cleanup[0];
        assert_eq!(p.keep_last, Some(3));
        assert_eq!(p.mode, crate::CleanupMode::Enforce);
        assert_eq!(p.expire_after.unwrap().get().as_secs(), 30 * 86400);
        let d = load(&format!(
            "{up}[[storage.cleanup]]\nid = \"x\"\nkeep_last = 1\n"
        ))
        .unwrap();
        assert_eq!(d.storage.cleanup[0].mode, crate::CleanupMode::DryRun);
        assert_eq!(d.storage.cleanup[0].name, "*");
        let cases = [
            (
                "id = \"x\"\nkeep_last = 1\nkeep = 2\n",
                "test.toml:9:1:",
                "unknown field",
            ),
            ("id = \"x\"\n", "test.toml:7:6:", "selects nothing"),
            (
                "id = \"x\"\nkeep_last = 1\nupstream = \"nope\"\n",
                "test.toml:9:12:",
                "no upstream",
            ),
            (
                "id = \"x\"\nkeep_last = 1\nformat = \"npm\"\nupstream = \"hub\"\n",
                "test.toml:10:12:",
                "is oci, not npm",
            ),
            (
                "id = \"x\"\nkeep_last = 1\nmode = \"yes\"\n",
                "test.toml:9:",
                "dry-run",
            ),
            (
                "id = \"x\"\nexpire_after = \"3 days\"\n",
                "test.toml:8:",
                "invalid duration",
            ),
            ("id = \"a b\"\nkeep_last = 1\n", "test.toml:7:6:", "must be"),
            ("id = \"x\"\nkeep_last = -1\n", "test.toml:8:", ""),
        ];
        for (body, loc, what) in cases {
            let msg = load(&format!("{up}[[storage.cleanup]]\n{body}"))
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(loc) && msg.contains(what), "{body}: {msg}");
        }
        let twice = format!("{up}[[storage.cleanup]]\nid = \"x\"\nkeep_last = 1\n[[storage.cleanup]]\nid = \"x\"\nkeep_last = 2\n");
        let msg = load(&twice).unwrap_err().to_string();
        assert!(
            msg.starts_with("test.toml:10:6:") && msg.contains("twice"),
            "{msg}"
        );
    }

    #[test]
    fn interpolation_fills_credentials_from_environment() {
        let text = "[[upstream]]\nname = \"a\"\nformat = \"oci\"\nurl = \"${URL:-https://r.example}\"\ndefault = true\nusername = \"u\"\npassword = \"${TOKEN}\"\n";
        let c = load(text).unwrap();
        assert_eq!(c.upstreams[0].password.as_deref(), Some("t0k"));
        assert_eq!(c.upstreams[0].url, "https://r.example");
        let msg = load("[server]\nlisten = \"${NOPE}\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("test.toml:2:11:") && msg.contains("NOPE is not set"),
            "{msg}"
        );
    }

    #[test]
    fn commented_out_variables_need_no_environment() {
        // SPEC §8's own example.
        let text = "[[upstream]]\nname = \"dockerhub\"\nformat = \"oci\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\n# username = \"${DOCKERHUB_USER}\"  password = \"${DOCKERHUB_TOKEN}\"\n";
        let c = load(text).unwrap();
        assert_eq!(c.upstreams[0].username, None);
    }

    #[test]
    fn errors_after_a_substitution_point_at_the_file_as_written() {
        let msg = load("[server]\nlisten = \"${TOKEN}\" junk\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("test.toml:2:21:"), "{msg}");
    }

    #[test]
    fn empty_tokens_are_rejected_where_they_are_written() {
        for token in [
            "\"${SLUICE_ADMIN_TOKEN:-}\"",
            "\"\"",
            "\"  \"",
            "'${NOPE:-}'",
        ] {
            let text =
                format!("[[auth.token]]\nname = \"ops\"\ntoken = {token}\nrole = \"admin\"\n");
            let msg = load(&text).unwrap_err().to_string();
            assert!(
                msg.starts_with("test.toml:3:9:") && msg.contains("\"ops\" is empty"),
                "{token}: {msg}"
            );
        }
        let ok = "[[auth.token]]\nname = \"ops\"\ntoken = \"${TOKEN}\"\nrole = \"admin\"\n";
        assert_eq!(load(ok).unwrap().auth.tokens[0].token, "t0k");
    }

    #[test]
    fn watermarks_serve_would_refuse_are_rejected_at_load() {
        let cases = [
            (
                "high_watermark = 0.5\nlow_watermark = 0.9\n",
                "test.toml:3:17:",
            ),
            ("high_watermark = 1.5\n", "test.toml:2:18:"),
            ("low_watermark = 0\n", "test.toml:2:17:"),
            ("high_watermark = nan\n", "test.toml:2:18:"),
        ];
        for (body, loc) in cases {
            let msg = load(&format!("[storage]\n{body}")).unwrap_err().to_string();
            assert!(
                msg.starts_with(loc) && msg.contains("0 < low_watermark <= high_watermark <= 1"),
                "{body}: {msg}"
            );
        }
        let c = load("[storage]\nhigh_watermark = 0.9\nlow_watermark = 0.9\n").unwrap();
        assert_eq!(c.storage.low_watermark, 0.9);
    }

    #[test]
    fn storage_s3_is_read_checked_and_its_secret_never_printed() {
        let ok = "[storage.s3]\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"sluice-cache\"\n\
                  access_key_id = \"GK1\"\nsecret_access_key = \"${TOKEN}\"\n";
        let c = load(ok).unwrap();
        let s3 = c.storage.s3.as_ref().unwrap();
        assert_eq!(s3.secret_access_key, "t0k");
        assert_eq!(
            (s3.region.as_str(), s3.path_style, s3.upload_concurrency),
            ("us-east-1", true, 4)
        );
        assert!(!format!("{c:?}").contains("t0k"), "secret in Debug output");
        assert!(load("").unwrap().storage.s3.is_none());
        let cases = [
            (
                "endpoint = \"http://127.0.0.1:3900\"",
                "endpoint = \"ftp://x\"",
                "endpoint",
            ),
            (
                "bucket = \"sluice-cache\"",
                "bucket = \"Sluice_Cache\"",
                "bucket",
            ),
            ("\"${TOKEN}\"", "\"  \"", "secret_access_key is empty"),
            ("bucket = ", "prefix = \"/abs/\"\nbucket = ", "prefix"),
            ("bucket = ", "prefix = \"cache\"\nbucket = ", "prefix"),
            ("bucket = ", "prefix = \"a?b/\"\nbucket = ", "prefix"),
            (
                "http://127.0.0.1:3900",
                "http://u:p@127.0.0.1:3900",
                "credentials",
            ),
            ("bucket = ", "path_style = false\nbucket = ", "DNS name"),
            (
                "bucket = ",
                "upload_concurrency = 0\nbucket = ",
                "upload_concurrency",
            ),
        ];
        for (from, to, what) in cases {
            let msg = load(&ok.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(
                msg.starts_with("test.toml:") && msg.contains(what),
                "{to}: {msg}"
            );
            assert!(!msg.contains("t0k"), "{msg}");
        }
        let msg = load(&format!("{ok}colour = \"blue\"\n"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn a_zero_max_size_is_rejected() {
        let msg = load("[storage]\nmax_size = \"0\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("test.toml:2:12:") && msg.contains("no size limit"),
            "{msg}"
        );
        let c = load("[storage]\nmax_size = \"1.5GiB\"\n").unwrap();
        assert_eq!(c.storage.max_size.unwrap().0, 3 << 29);
    }
}
