//! The operator commands that talk to a running sluice through its admin API
//! ([`crate::admin`]): `sluice stats`, `list`, `purge`, `pin`, `unpin`, `pins`,
//! `cleanup` and `gc --now`.
//!
//! sluice is found as `sluice warm` finds it: `--url` (or `SLUICE_URL`), else the config's
//! `server.public_url`, else `http://<server.listen>` (a wildcard listen address is reached
//! on loopback). `--token` (or `SLUICE_TOKEN`) is sent as `Authorization: Bearer`.
//!
//! Failures are [`Failure`]s with the exit status to use: 2 when sluice cannot be reached
//! or the invocation is unusable, 1 when sluice answered with an error (a `401`/`403`
//! message says which token is needed).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use sluice_config::Config;
use url::Url;

use crate::warm::{describe, error_message, human_bytes};

/// How to reach sluice.
#[derive(Clone, Debug, Default)]
pub struct Remote {
    /// sluice's base URL (default: from the config).
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

/// A command that did not succeed: the message for stderr and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// Exit status (1: sluice answered with an error; 2: not reachable or bad invocation).
    pub exit: u8,
    /// What went wrong, with a hint where one helps.
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            exit: 2,
            message: message.into(),
        }
    }
}

/// What to do.
#[derive(Clone, Debug)]
pub enum Action {
    /// `GET /-/api/stats`.
    Stats,
    /// `GET /-/api/cache`.
    List {
        /// `oci`, `npm` or `pypi`.
        format: Option<String>,
        /// Name glob.
        name: Option<String>,
        /// Most items listed.
        limit: Option<usize>,
    },
    /// `POST /-/api/purge`: `NAME[:TAG]` or a digest.
    Purge {
        /// `oci`, `npm` or `pypi` (for a name).
        format: String,
        /// `NAME[:TAG]` (npm also `NAME@VERSION`, PyPI `NAME==VERSION`) or `sha256:…`.
        target: String,
    },
    /// `POST /-/api/pin`.
    Pin {
        /// `oci`, `npm` or `pypi`.
        format: String,
        /// `NAME[:TAG]` globs.
        target: String,
    },
    /// `POST /-/api/unpin`.
    Unpin {
        /// `oci`, `npm` or `pypi`.
        format: String,
        /// `NAME[:TAG]` globs, as pinned.
        target: String,
    },
    /// `GET /-/api/pins`.
    Pins,
    /// `GET /-/api/blocks`.
    Blocks {
        /// Most entries listed.
        limit: Option<usize>,
    },
    /// `POST /-/api/gc`.
    Gc,
    /// `GET /-/api/cleanup` (the last evaluation), or with `run` `POST` (evaluate now).
    Cleanup {
        /// Evaluate the policies now.
        run: bool,
        /// With `run`: report only, whatever the policies' modes.
        dry_run: bool,
    },
}

/// sluice's base URL: `url` if given, else the config's public URL, with a wildcard host
/// (`0.0.0.0`, `[::]`) replaced by loopback.
pub fn base_url(cfg: &Config, url: Option<&str>) -> anyhow::Result<Url> {
    let raw = url.map_or_else(|| cfg.public_url(), str::to_string);
    let mut base = Url::parse(raw.trim_end_matches('/'))
        .map_err(|e| anyhow::anyhow!("sluice URL {raw:?} is not an absolute URL: {e}"))?;
    if !matches!(base.scheme(), "http" | "https") {
        anyhow::bail!("sluice URL {raw:?} is not http or https");
    }
    match base.host_str() {
        Some("0.0.0.0") => {
            let _ = base.set_host(Some("127.0.0.1"));
        }
        Some("[::]") => {
            let _ = base.set_host(Some("[::1]"));
        }
        _ => {}
    }
    Ok(base)
}

/// Runs `action` against the sluice that `cfg` and `remote` name; returns what to print on
/// stdout (`json`: the API's JSON as it came, else a table or a line).
pub fn run(cfg: &Config, remote: &Remote, action: &Action, json: bool) -> Result<String, Failure> {
    let base =
        base_url(cfg, remote.url.as_deref()).map_err(|e| Failure::usage(format!("{e:#}")))?;
    let (method, route, params) = request_of(action)?;
    let v = call(
        &base,
        &own_certificates(cfg),
        remote.token.as_deref(),
        method,
        route,
        &params,
    )?;
    if json {
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n");
    }
    Ok(match action {
        Action::Stats => stats_table(&v, base.as_str().trim_end_matches('/')),
        Action::List { .. } => list_table(&v),
        Action::Purge { .. } => format!(
            "purged: {} files ({}), {} records; kept {} files still in use, {} pinned items; {} stored\n",
            num(&v["removed_files"]),
            human_bytes(num(&v["removed_bytes"])),
            num(&v["removed_records"]),
            num(&v["kept_files"]),
            num(&v["kept_pinned"]),
            human_bytes(num(&v["stored_bytes"]))
        ),
        Action::Pin { format, target } => format!("pinned {format} {target}\n"),
        Action::Unpin { format, target } => format!("unpinned {format} {target}\n"),
        Action::Pins => pins_table(&v),
        Action::Blocks { .. } => blocks_table(&v),
        Action::Gc => gc_line(&v) + "\n",
        Action::Cleanup { run, .. } => cleanup_table(&v, *run),
    })
}

type Request = (reqwest::Method, &'static str, Vec<(&'static str, String)>);

fn request_of(action: &Action) -> Result<Request, Failure> {
    use reqwest::Method;
    let named = |format: &str, target: &str| -> Result<Vec<(&'static str, String)>, Failure> {
        let format = check_format(format)?;
        let (name, tag) = split_reference(&format, target);
        if name.is_empty() {
            return Err(Failure::usage(format!("{target:?} names nothing")));
        }
        let mut p = vec![("format", format), ("name", name)];
        if let Some(t) = tag {
            p.push(("tag", t));
        }
        Ok(p)
    };
    Ok(match action {
        Action::Stats => (Method::GET, "stats", Vec::new()),
        Action::List {
            format,
            name,
            limit,
        } => {
            let mut p = Vec::new();
            if let Some(f) = format {
                p.push(("format", check_format(f)?));
            }
            if let Some(n) = name {
                p.push(("name", n.clone()));
            }
            if let Some(l) = limit {
                p.push(("limit", l.to_string()));
            }
            (Method::GET, "cache", p)
        }
        Action::Purge { format, target } => {
            let p = if target.starts_with("sha256:") {
                vec![("digest", target.clone())]
            } else {
                named(format, target)?
            };
            (Method::POST, "purge", p)
        }
        Action::Pin { format, target } => (Method::POST, "pin", named(format, target)?),
        Action::Unpin { format, target } => (Method::POST, "unpin", named(format, target)?),
        Action::Pins => (Method::GET, "pins", Vec::new()),
        Action::Blocks { limit } => (
            Method::GET,
            "blocks",
            limit
                .map(|l| ("limit", l.to_string()))
                .into_iter()
                .collect(),
        ),
        Action::Gc => (Method::POST, "gc", Vec::new()),
        Action::Cleanup { run: false, .. } => (Method::GET, "cleanup", Vec::new()),
        Action::Cleanup { run: true, dry_run } => {
            let p = if *dry_run {
                vec![("dry_run", "true".to_string())]
            } else {
                Vec::new()
            };
            (Method::POST, "cleanup", p)
        }
    })
}

fn check_format(f: &str) -> Result<String, Failure> {
    match f {
        "oci" | "npm" | "pypi" | "cargo" => Ok(f.to_string()),
        _ => Err(Failure::usage(format!(
            "--format {f:?}: expected oci, npm, pypi or cargo"
        ))),
    }
}

/// `NAME[:TAG]` → (name, tag). The tag separator is the last `:` after the last `/` (a
/// registry port is not a tag); npm and Cargo also take `NAME@VERSION`, PyPI `NAME==VERSION`.
fn split_reference(format: &str, s: &str) -> (String, Option<String>) {
    let last_segment = s.rfind('/').map_or(0, |i| i + 1);
    let split = |at: usize, sep: usize| (s[..at].to_string(), Some(s[at + sep..].to_string()));
    if let Some(i) = s[last_segment..].rfind(':') {
        return split(last_segment + i, 1);
    }
    match format {
        "npm" | "cargo" => match s[last_segment..].rfind('@') {
            Some(i) if last_segment + i > 0 => split(last_segment + i, 1),
            _ => (s.to_string(), None),
        },
        "pypi" => match s.find("==") {
            Some(i) => split(i, 2),
            None => (s.to_string(), None),
        },
        _ => (s.to_string(), None),
    }
}

/// The certificates of `server.tls_cert`, which the CLI trusts besides the public roots: a
/// sluice serving TLS with a self-signed or private-CA certificate is still reachable.
pub fn own_certificates(cfg: &Config) -> Vec<reqwest::Certificate> {
    cfg.server
        .tls_cert
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).ok())
        .unwrap_or_default()
}

/// One admin API call, with the failures a person can act on.
fn call(
    base: &Url,
    roots: &[reqwest::Certificate],
    token: Option<&str>,
    method: reqwest::Method,
    route: &str,
    params: &[(&'static str, String)],
) -> Result<Value, Failure> {
    let url = format!("{}/-/api/{route}", base.as_str().trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("starting the async runtime: {e}")))?;
    let client = roots
        .iter()
        .fold(reqwest::Client::builder(), |b, c| {
            b.add_root_certificate(c.clone())
        })
        .connect_timeout(Duration::from_secs(10))
        // `gc` runs a whole collection before it answers.
        .timeout(Duration::from_secs(600))
        .user_agent(concat!("sluice-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::usage(format!("building the HTTP client: {e}")))?;
    let mut req = client.request(method, &url).query(params);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let (status, body) = rt
        .block_on(async {
            let resp = req.send().await?;
            let status = resp.status();
            resp.bytes().await.map(|b| (status, b))
        })
        .map_err(|e| {
            if e.is_connect() || (e.is_timeout() && e.is_request()) {
                Failure::usage(format!(
                    "cannot reach sluice at {}: {}\nhint: is sluice running? Point at it with \
                 --url URL (or SLUICE_URL) or --config FILE",
                    base.as_str().trim_end_matches('/'),
                    describe(&e)
                ))
            } else {
                Failure::usage(format!("{url}: {}", describe(&e)))
            }
        })?;
    let fail = |hint: &str| Failure {
        exit: 1,
        message: format!("{url}: {status}: {}{hint}", error_message(&body)),
    };
    match status.as_u16() {
        200..=299 => serde_json::from_slice(&body).map_err(|e| Failure {
            exit: 1,
            message: format!("{url}: the answer is not JSON ({e}); is {base} a sluice?"),
        }),
        401 if token.is_none() => Err(fail(
            "\nhint: no token was sent; pass a token with role admin: --token TOKEN or SLUICE_TOKEN",
        )),
        401 => Err(fail(
            "\nhint: sluice does not know this token; use one of its [[auth.token]] entries \
             with role = \"admin\"",
        )),
        403 => Err(fail(
            "\nhint: this token has role read; this command needs a token with role admin",
        )),
        _ => Err(fail("")),
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Rows as left-aligned columns (the last column is not padded).
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `2026-03-01T12:34:56Z`; `-` for 0 (never).
fn utc(secs: u64) -> String {
    if secs == 0 {
        return "-".into();
    }
    format!("{}Z", crate::timefmt::datetime(secs))
}

fn ratio(v: &Value) -> String {
    format!("{:.1}%", v.as_f64().unwrap_or(0.0) * 100.0)
}

/// `sluice stats`: totals, today and the previous day side by side, then storage.
pub fn stats_table(v: &Value, base: &str) -> String {
    let periods: Vec<(String, &Value, Option<&Value>)> = [
        Some(("total".to_string(), &v["total"], None)),
        Some((
            format!("today ({})", v["today"]["day"].as_str().unwrap_or("?")),
            &v["today"]["counters"],
            Some(&v["today"]),
        )),
        v["previous_day"].is_object().then(|| {
            (
                format!(
                    "previous day ({})",
                    v["previous_day"]["day"].as_str().unwrap_or("?")
                ),
                &v["previous_day"]["counters"],
                Some(&v["previous_day"]),
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut rows = vec![std::iter::once(String::new())
        .chain(periods.iter().map(|p| p.0.clone()))
        .collect::<Vec<_>>()];
    let mut row = |label: &str, f: &dyn Fn(&Value, Option<&Value>) -> String| {
        rows.push(
            std::iter::once(label.to_string())
                .chain(periods.iter().map(|(_, c, d)| f(c, *d)))
                .collect(),
        );
    };
    for fmt in ["oci", "npm", "pypi", "cargo"] {
        row(&format!("{fmt} artifacts served"), &|c, _| {
            num(&c["artifacts_served"][fmt]).to_string()
        });
    }
    row("images served", &|c, _| {
        num(&c["images_served"]).to_string()
    });
    row("packages served", &|c, _| {
        num(&c["packages_served"]).to_string()
    });
    row("hits / misses", &|c, _| {
        format!("{} / {}", num(&c["hits"]), num(&c["misses"]))
    });
    row("hit ratio", &|c, _| ratio(&c["hit_ratio"]));
    row("upstream bytes saved", &|c, _| {
        human_bytes(num(&c["upstream_bytes_saved"]))
    });
    row("policy blocks", &|c, _| num(&c["blocks"]).to_string());
    row("distinct clients", &|_, d| {
        d.map_or("-".into(), |d| num(&d["distinct_clients"]).to_string())
    });
    row("lighthouse", &|_, d| {
        d.map_or("-".into(), |d| {
            format!("{:.2}", d["lighthouse"].as_f64().unwrap_or(0.0))
        })
    });
    let mut out = format!(
        "sluice at {base}: figures since {} (this process since {})\n\n",
        utc(num(&v["since_unix"])),
        utc(num(&v["started_unix"]))
    );
    out.push_str(&table(&rows));
    let st = &v["storage"];
    let _ = write!(
        out,
        "\nstorage: {} stored",
        human_bytes(num(&st["stored_bytes"]))
    );
    if let Some(max) = st["max_size"].as_u64() {
        let _ = write!(
            out,
            " of max_size {} ({:.0}% high / {:.0}% low watermark)",
            human_bytes(max),
            st["high_watermark"].as_f64().unwrap_or(0.0) * 100.0,
            st["low_watermark"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    out.push('\n');
    out
}

/// `sluice list`: one row per cached tag, version or document.
pub fn list_table(v: &Value) -> String {
    let items = v["items"].as_array().map_or(&[][..], Vec::as_slice);
    let mut rows = vec![[
        "FORMAT",
        "NAME",
        "TAG",
        "KIND",
        "SIZE",
        "FILES",
        "LAST ACCESS",
    ]
    .map(str::to_string)
    .to_vec()];
    for i in items {
        rows.push(vec![
            i["format"].as_str().unwrap_or("?").to_string(),
            i["name"].as_str().unwrap_or("?").to_string(),
            i["tag"].as_str().unwrap_or("-").to_string(),
            i["kind"].as_str().unwrap_or("-").to_string(),
            human_bytes(num(&i["size"])),
            format!("{}/{}", num(&i["files_stored"]), num(&i["files"])),
            utc(num(&i["last_access_unix"])),
        ]);
    }
    let mut out = if items.is_empty() {
        "nothing cached matches\n".to_string()
    } else {
        table(&rows)
    };
    let _ = writeln!(
        out,
        "{} of {} items; {} stored in {} files",
        items.len(),
        num(&v["total"]),
        human_bytes(num(&v["stored_bytes"])),
        num(&v["stored_files"])
    );
    out
}

/// `sluice pins`: configured and run-time pins.
pub fn pins_table(v: &Value) -> String {
    let mut rows = vec![["SOURCE", "FORMAT", "NAME", "TAG"]
        .map(str::to_string)
        .to_vec()];
    for (source, key) in [("config", "configured"), ("runtime", "runtime")] {
        for p in v[key].as_array().map_or(&[][..], Vec::as_slice) {
            rows.push(vec![
                source.to_string(),
                p["format"].as_str().unwrap_or("?").to_string(),
                p["name"].as_str().unwrap_or("?").to_string(),
                p["tag"].as_str().unwrap_or("*").to_string(),
            ]);
        }
    }
    if rows.len() == 1 {
        return "no pins\n".into();
    }
    table(&rows)
}

/// `sluice blocks`: what the policy refused lately, most recently seen first.
pub fn blocks_table(v: &Value) -> String {
    let list = v["blocks"].as_array().map_or(&[][..], Vec::as_slice);
    let since = utc(num(&v["since_unix"]));
    if list.is_empty() {
        return format!("no refusals since {since}\n");
    }
    let mut rows = vec![[
        "LAST SEEN",
        "OUTCOME",
        "FORMAT",
        "UPSTREAM",
        "NAME",
        "VERSION",
        "RULE",
        "REQUESTS",
        "REASON",
    ]
    .map(str::to_string)
    .to_vec()];
    // Names and reasons come from clients and advisories: one line each, no control
    // characters reach the terminal.
    let cell = |v: &Value, none: &str| {
        v.as_str()
            .unwrap_or(none)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
    };
    for b in list {
        rows.push(vec![
            utc(num(&b["last_unix"])),
            cell(&b["outcome"], "?"),
            cell(&b["format"], "?"),
            cell(&b["upstream"], "?"),
            cell(&b["name"], "?"),
            cell(&b["version"], "-"),
            cell(&b["rule"], "?"),
            num(&b["count"]).to_string(),
            cell(&b["reason"], ""),
        ]);
    }
    let mut out = table(&rows);
    let n = list.len();
    let _ = writeln!(
        out,
        "{n} {} since {since}",
        if n == 1 { "entry" } else { "entries" }
    );
    out
}

/// The summary of an offline collection.
pub fn gc_report_line(r: &crate::store::evict::Report) -> String {
    gc_line(&serde_json::to_value(r).unwrap_or_default())
}

/// The summary of a collection ([`crate::store::evict::Report`] as JSON): a line for
/// eviction, then one per cleanup policy evaluated, and under an enforced one a line per
/// tag or version it removed (the report is not kept anywhere else after an offline run).
pub fn gc_line(v: &Value) -> String {
    let mut out = format!(
        "sluice gc: removed {} files ({} bytes; {} least recently used, {} idle), \
         kept {} pinned, dropped {} index records; {} bytes stored",
        num(&v["evicted_lru"]) + num(&v["evicted_idle"]),
        num(&v["freed_bytes"]),
        num(&v["evicted_lru"]),
        num(&v["evicted_idle"]),
        num(&v["kept_pinned"]),
        num(&v["index_records_dropped"]),
        num(&v["stored_bytes"])
    );
    if v["over_limit"] == true {
        let _ = write!(
            out,
            "\nstill over max_size: nothing more can be evicted ({} pinned); unpin something \
             or raise max_size",
            human_bytes(num(&v["pinned_bytes"]))
        );
    }
    for p in v["cleanup"].as_array().map_or(&[][..], Vec::as_slice) {
        let _ = write!(out, "\ncleanup policy {}", policy_summary(p));
        if p["mode"] != "enforce" {
            continue;
        }
        for x in p["selected"].as_array().map_or(&[][..], Vec::as_slice) {
            if x["status"] == "removed" {
                let _ = write!(
                    out,
                    "\n  removed {} {} ({} files, {})",
                    x["format"].as_str().unwrap_or("?"),
                    reference(x),
                    num(&x["files"]),
                    human_bytes(num(&x["bytes"]))
                );
            }
        }
    }
    out
}

/// `NAME:TAG` (npm `NAME@VERSION`, PyPI `NAME==VERSION`) of a selected item, as the
/// commands take it.
fn reference(x: &Value) -> String {
    let (name, tag) = (
        x["name"].as_str().unwrap_or("?"),
        x["tag"].as_str().unwrap_or("?"),
    );
    let sep = match x["format"].as_str() {
        Some("npm" | "cargo") => "@",
        Some("pypi") => "==",
        _ => ":",
    };
    format!("{name}{sep}{tag}")
}

/// `keep2 (enforce): removed 2 of 5 considered (1.2 MiB); 1 kept pinned, 0 in use`.
fn policy_summary(p: &Value) -> String {
    let mode = p["mode"].as_str().unwrap_or("?");
    format!(
        "{} ({mode}): {} {} of {} considered ({}); {} kept pinned, {} in use",
        p["policy"].as_str().unwrap_or("?"),
        if mode == "enforce" {
            "removed"
        } else {
            "would remove"
        },
        num(&p["items"]),
        num(&p["considered"]),
        human_bytes(num(&p["bytes"])),
        num(&p["kept_pinned"]),
        num(&p["deferred"])
    )
}

/// `sluice cleanup`: per policy a summary line and what it selected, least recently
/// pulled first. `ran`: the answer of an evaluation just run (else the last one kept).
pub fn cleanup_table(v: &Value, ran: bool) -> String {
    let policies = v["policies"].as_array().map_or(&[][..], Vec::as_slice);
    if policies.is_empty() {
        return if ran {
            "no cleanup policies configured ([[storage.cleanup]])\n".into()
        } else {
            "no cleanup evaluation yet: policies run at every full collection \
             (gc_interval); `sluice cleanup --run` runs them now\n"
                .into()
        };
    }
    let mut out = String::new();
    for (i, p) in policies.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "policy {}, evaluated {} in {} ms",
            policy_summary(p),
            utc(num(&p["evaluated_at_ms"]) / 1000),
            num(&p["duration_ms"])
        );
        let selected = p["selected"].as_array().map_or(&[][..], Vec::as_slice);
        if selected.is_empty() {
            out.push_str("nothing selected\n");
            continue;
        }
        let mut rows = vec![[
            "FORMAT",
            "UPSTREAM",
            "NAME",
            "TAG",
            "STATUS",
            "FILES",
            "SIZE",
            "LAST PULLED",
        ]
        .map(str::to_string)
        .to_vec()];
        for x in selected {
            rows.push(vec![
                x["format"].as_str().unwrap_or("?").to_string(),
                x["upstream"].as_str().unwrap_or("?").to_string(),
                x["name"].as_str().unwrap_or("?").to_string(),
                x["tag"].as_str().unwrap_or("?").to_string(),
                x["status"].as_str().unwrap_or("?").to_string(),
                num(&x["files"]).to_string(),
                human_bytes(num(&x["bytes"])),
                utc(num(&x["last_pulled_ms"]) / 1000),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_split_at_the_tag_not_a_registry_port() {
        let s = |f, r| split_reference(f, r);
        assert_eq!(
            s("oci", "team/app:v1"),
            ("team/app".into(), Some("v1".into()))
        );
        assert_eq!(
            s("oci", "localhost:5000/app"),
            ("localhost:5000/app".into(), None)
        );
        assert_eq!(
            s("oci", "localhost:5000/app:1.*"),
            ("localhost:5000/app".into(), Some("1.*".into()))
        );
        assert_eq!(
            s("npm", "@scope/pkg@1.0.0"),
            ("@scope/pkg".into(), Some("1.0.0".into()))
        );
        assert_eq!(s("npm", "@scope/pkg"), ("@scope/pkg".into(), None));
        assert_eq!(
            s("npm", "left-pad:1.*"),
            ("left-pad".into(), Some("1.*".into()))
        );
        assert_eq!(
            s("pypi", "demo-pkg==1.0"),
            ("demo-pkg".into(), Some("1.0".into()))
        );
    }

    #[test]
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        let mut cfg = Config::embedded_default();
        cfg.server.listen = "0.0.0.0:5080".into();
        cfg.server.public_url = None;
        assert_eq!(
            base_url(&cfg, None).unwrap().as_str(),
            "http://127.0.0.1:5080/"
        );
        assert_eq!(
            base_url(&cfg, Some("http://h:1/")).unwrap().as_str(),
            "http://h:1/"
        );
        assert!(base_url(&cfg, Some("ftp://h")).is_err());
    }

    #[test]
    fn tables_show_the_figures() {
        let v = json!({
            "since_unix": 86_400 * 20_513 + 3_723,
            "started_unix": 86_400 * 20_513 + 3_723,
            "total": {"artifacts_served": {"oci": 3, "npm": 0, "pypi": 1}, "images_served": 1,
                      "packages_served": 1, "hits": 3, "misses": 1, "hit_ratio": 0.75,
                      "upstream_bytes_saved": 2048, "blocks": 2},
            "today": {"day": "2026-03-01", "distinct_clients": 2, "lighthouse": 1.0,
                      "counters": {"artifacts_served": {"oci": 3}, "hit_ratio": 0.5}},
            "previous_day": null,
            "storage": {"stored_bytes": 1024, "max_size": null},
        });
        let t = stats_table(&v, "http://s/");
        assert!(t.contains("since 2026-03-01T01:02:03Z"), "{t}");
        let line = |label: &str| {
            t.lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no {label} line in\n{t}"))
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("oci artifacts served"),
            ["oci artifacts served", "3", "3"]
        );
        assert_eq!(line("hit ratio"), ["hit ratio", "75.0%", "50.0%"]);
        assert_eq!(line("distinct clients"), ["distinct clients", "-", "2"]);
        assert_eq!(
            line("upstream bytes saved"),
            ["upstream bytes saved", "2.0 KiB", "0 B"]
        );
        assert!(!t.contains("previous day"), "{t}");
        assert!(t.contains("storage: 1.0 KiB stored\n"), "{t}");

        let l = list_table(&json!({
            "items": [{"format": "oci", "name": "sim/team/app", "tag": "v1", "kind": "tag",
                       "size": 307_200, "files_stored": 3, "files": 3,
                       "last_access_unix": 86_400 * 20_513}],
            "total": 1, "stored_bytes": 307_200, "stored_files": 3,
        }));
        assert!(
            l.starts_with("FORMAT  NAME          TAG  KIND  SIZE       FILES  LAST ACCESS\n"),
            "{l}"
        );
        assert!(
            l.contains("oci     sim/team/app  v1   tag   300.0 KiB  3/3    2026-03-01T00:00:00Z"),
            "{l}"
        );
        assert!(
            l.ends_with("1 of 1 items; 300.0 KiB stored in 3 files\n"),
            "{l}"
        );
        assert_eq!(
            pins_table(&json!({"configured": [], "runtime": []})),
            "no pins\n"
        );
    }

    fn policy(mode: &str, status: &str) -> Value {
        json!({
            "policy": "keep1", "mode": mode, "evaluated_at_ms": 86_400_000 * 20_513_u64,
            "duration_ms": 4, "considered": 3, "items": 2, "bytes": 3072, "kept_pinned": 1,
            "deferred": 0,
            "selected": [
                {"format": "pypi", "upstream": "pypi", "name": "demo", "tag": "1.0",
                 "files": 2, "bytes": 2048, "last_pulled_ms": 86_400_000 * 20_512_u64,
                 "status": status},
                {"format": "oci", "upstream": "hub", "name": "team/app", "tag": "v1",
                 "files": 1, "bytes": 1024, "last_pulled_ms": 0, "status": status},
                {"format": "npm", "upstream": "npmjs", "name": "@s/p", "tag": "2.0.0",
                 "files": 1, "bytes": 9, "last_pulled_ms": 0, "status": "pinned"},
            ],
        })
    }

    #[test]
    fn cleanup_reports_read_as_a_table_and_gc_lists_what_enforced_policies_removed() {
        let t = cleanup_table(
            &json!({"policies": [policy("dry-run", "would-remove")]}),
            true,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "policy keep1 (dry-run): would remove 2 of 3 considered (3.0 KiB); 1 kept pinned, \
             0 in use, evaluated 2026-03-01T00:00:00Z in 4 ms"
        );
        assert!(
            lines[1].starts_with("FORMAT  UPSTREAM  NAME      TAG    STATUS"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("pypi    pypi      demo      1.0    would-remove  2      2.0 KiB"),
            "{t}"
        );
        assert!(lines[2].ends_with("2026-02-28T00:00:00Z"), "{t}");
        assert!(lines[3].ends_with("  -"), "never pulled: {t}");
        assert!(lines[4].contains(" pinned "), "{t}");
        assert!(
            cleanup_table(&json!({"policies": []}), false).starts_with("no cleanup evaluation yet")
        );
        assert!(cleanup_table(&json!({"policies": []}), true)
            .starts_with("no cleanup policies configured"));

        // gc: a line per policy; removed items only under an enforced one.
        let gc = json!({"evicted_lru": 0, "evicted_idle": 0, "freed_bytes": 0,
                        "cleanup": [policy("enforce", "removed"), policy("dry-run", "would-remove")]});
        let g = gc_line(&gc);
        let lines: Vec<&str> = g.lines().collect();
        assert_eq!(
            lines[1..],
            [
                "cleanup policy keep1 (enforce): removed 2 of 3 considered (3.0 KiB); 1 kept pinned, 0 in use",
                "  removed pypi demo==1.0 (2 files, 2.0 KiB)",
                "  removed oci team/app:v1 (1 files, 1.0 KiB)",
                "cleanup policy keep1 (dry-run): would remove 2 of 3 considered (3.0 KiB); 1 kept pinned, 0 in use",
            ],
            "{g}"
        );
        assert_eq!(gc_line(&json!({})).lines().count(), 1);
    }
}
