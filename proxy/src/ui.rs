//! The dashboard at `/-/ui`: one server-rendered HTML page (no script) with what an
//! operator or a security team looks at first — traffic and hit ratio today and per day,
//! storage and the shared bucket's state, each upstream's state (answering, failing,
//! paused by a `429`, probing, offline) and what it did (requests sent, failures, the last
//! answer and failure: [`crate::upstream::activity`]), and, for an `admin` token, the policy's recent
//! refusals, a policy check form (`?format=&name=&version=`: what the policy would
//! decide, neither counted nor recorded) and the cached items used last.
//!
//! Access follows `/-/api/stats`: a `read` token (or `auth.anonymous = "read"`) sees the
//! figures and the upstreams' names and states; the admin parts need an `admin` token
//! (sent, as for the admin API, whatever `auth.anonymous` grants). Browsers send one as
//! basic auth (any user name, the token as password): `/-/ui?login` answers `401` with a
//! basic challenge until they do. The page changes nothing — purge and pin stay with the
//! API and the CLI, whose `POST`s refuse a browser's request from another site
//! ([`crate::admin`]) — and is sent with a CSP that allows no script, only its own style
//! block and forms sent to itself, `no-store` and `frame-ancestors 'none'`. `?refresh=N`
//! (5–3600 s) reloads it every N seconds. `server.dashboard = false` turns it off (`404`).

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use sluice_config::{Format, Role};

use crate::app::App;
use crate::error::ProxyError;
use crate::response::{Body, CacheStatus, Reply};
use crate::upstream::breaker::Status;
use crate::upstream::Upstream;
use crate::warm::human_bytes;

/// Refusals and cached items listed.
const LISTED: usize = 50;

/// Longest a page shows the cached items as listed earlier.
const LIST_EVERY: Duration = Duration::from_secs(5);

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:72em;padding:0 1em;color:#222}\
h1{font-size:1.5em;margin:0}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}\
header p{margin:.2em 0;color:#555}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #eee;vertical-align:top}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}meter{width:8em}\
.ok{color:#176b2c}.bad{color:#b3261e;font-weight:600}.warn{color:#8a5a00;font-weight:600}\
.muted{color:#777}footer{margin:2em 0;color:#777}code{font-size:.95em}";

/// `style-src` of the CSP: the hash of [`STYLE`], nothing else.
static CSP: LazyLock<String> = LazyLock::new(|| {
    use sha2::Digest as _;
    let hash = crate::b64::encode(&sha2::Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
});

/// Answers `GET /-/ui`.
pub async fn handle(
    app: &Arc<App>,
    method: &Method,
    query: Option<&str>,
    authorization: Option<&str>,
) -> Result<Reply, ProxyError> {
    if !app.config.server.dashboard {
        return Err(ProxyError::NotFound {
            code: "NAME_UNKNOWN",
            message: "the dashboard is off (server.dashboard = false)".into(),
        });
    }
    if !matches!(*method, Method::GET | Method::HEAD) {
        return Err(ProxyError::Unsupported {
            message: format!("{method} is not supported on /-/ui (use GET)"),
            allow: "GET, HEAD",
        });
    }
    let mut login = false;
    let mut refresh = None;
    let mut asked = Asked::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "login" => login = true,
            "format" => asked.format = v.into_owned(),
            "name" => asked.name = v.trim().to_string(),
            "version" => asked.version = v.trim().to_string(),
            "refresh" => {
                refresh = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|s| (5..=3600).contains(s))
                        .ok_or(ProxyError::BadRequest {
                            code: "BAD_REQUEST",
                            message: "refresh must be a number of seconds from 5 to 3600".into(),
                        })?,
                )
            }
            _ => {}
        }
    }
    let role = app.role_of(authorization);
    if role == Role::None || login && (authorization.is_none() || role < Role::Admin) {
        return Err(ProxyError::Unauthorized(
            "the dashboard needs a sluice token: sign in with any user name and the token as password"
                .into(),
        ));
    }
    // As for the admin API: admin needs a token, whatever `auth.anonymous` grants.
    let admin = authorization.is_some() && role >= Role::Admin;
    let items = if admin {
        Some(listing(app).await?)
    } else {
        None
    };
    let page = render(
        app,
        &View {
            admin,
            refresh,
            asked: &asked,
            now: crate::store::unix_secs(),
            items: items.as_deref(),
        },
    );
    Ok(Reply::new(StatusCode::OK, CacheStatus::Bypass)
        .header("Content-Type", "text/html; charset=utf-8")
        .header("Cache-Control", "no-store")
        .header("Content-Security-Policy", CSP.as_str())
        .header("X-Frame-Options", "DENY")
        .header("X-Content-Type-Options", "nosniff")
        .header("Referrer-Policy", "no-referrer")
        .body(Body::Full(Bytes::from(page))))
}

/// The cached items used last, as `GET /-/api/cache` lists them, listed again at most
/// every [`LIST_EVERY`]: listing reads every record of the index, and a page reloading
/// every few seconds on a large store would otherwise keep a CPU busy.
async fn listing(app: &Arc<App>) -> Result<Arc<serde_json::Value>, ProxyError> {
    static LAST: parking_lot::Mutex<Option<(Instant, Arc<serde_json::Value>)>> =
        parking_lot::Mutex::new(None);
    if let Some((at, v)) = &*LAST.lock() {
        if at.elapsed() < LIST_EVERY {
            return Ok(v.clone());
        }
    }
    let app2 = app.clone();
    let v = Arc::new(
        crate::admin::blocking(move || crate::admin::list(&app2, None, None, LISTED)).await?,
    );
    *LAST.lock() = Some((Instant::now(), v.clone()));
    Ok(v)
}

/// The policy question of the page's form (`?format=&name=&version=`).
#[derive(Default)]
struct Asked {
    format: String,
    name: String,
    version: String,
}

/// What one rendering shows.
struct View<'a> {
    admin: bool,
    refresh: Option<u32>,
    asked: &'a Asked,
    now: u64,
    /// `GET /-/api/cache`'s answer (admin only).
    items: Option<&'a serde_json::Value>,
}

fn render(app: &App, view: &View<'_>) -> String {
    let stats = app.stats.snapshot();
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">");
    if let Some(s) = view.refresh {
        let _ = write!(h, "<meta http-equiv=\"refresh\" content=\"{s}\">");
    }
    let _ = writeln!(
        h,
        "<title>sluice</title><style>{STYLE}</style></head><body>"
    );
    header(&mut h, app, &stats, view);
    certificate(&mut h, app, view.admin, view.now);
    traffic(&mut h, &stats);
    days(&mut h, &stats);
    storage(&mut h, app, view.admin);
    upstreams(&mut h, app, view.admin, view.now);
    if view.admin {
        refusals(&mut h, app, view.now);
        policy_check(&mut h, app, view.asked);
        cached(&mut h, view.items, view.now);
    } else {
        h.push_str(
            "<h2>Policy refusals, policy check and cached items</h2><p class=\"muted\">Shown to an admin token: \
            <a href=\"/-/ui?login\">sign in</a> (any user name, the token as password).</p>\n",
        );
    }
    h.push_str("<footer>JSON: <a href=\"/-/api/stats\"><code>/-/api/stats</code></a>");
    if view.admin {
        h.push_str(" · <a href=\"/-/api/blocks\"><code>/-/api/blocks</code></a> · <a href=\"/-/api/cache\"><code>/-/api/cache</code></a>");
    }
    h.push_str(" · Prometheus: <a href=\"/-/metrics\"><code>/-/metrics</code></a> · reload every 10 s: <a href=\"?refresh=10\"><code>?refresh=10</code></a></footer>\n</body></html>\n");
    h
}

fn header(h: &mut String, app: &App, stats: &serde_json::Value, view: &View<'_>) {
    let started = num(&stats["started_unix"]);
    let since = num(&stats["since_unix"]);
    let _ = writeln!(
        h,
        "<header><h1>sluice {}</h1><p>up {} (since {} UTC) · figures since {} UTC{}</p></header>",
        esc(env!("CARGO_PKG_VERSION")),
        span(view.now.saturating_sub(started)),
        crate::timefmt::datetime(started),
        crate::timefmt::datetime(since),
        if app.config.server.offline {
            " · <span class=\"warn\">offline: no upstream is contacted</span>"
        } else {
            ""
        },
    );
}

/// The TLS certificate being served: until when, amber in its last two weeks; to admins,
/// why the last reload failed (the message names the files).
fn certificate(h: &mut String, app: &App, admin: bool, now: u64) {
    let Some(cert) = &app.tls else {
        return;
    };
    let served = cert.current();
    let _ = write!(
        h,
        "<p>TLS certificate <code>{}</code>, loaded {} ago",
        esc(&served.subject),
        span(now.saturating_sub(served.loaded_at).max(1))
    );
    if let Some(t) = served.expires {
        let left = t - now as i64;
        let class = match left {
            l if l <= 0 => "bad",
            l if l < 14 * 86_400 => "warn",
            _ => "ok",
        };
        let until = crate::timefmt::datetime(t.max(0) as u64);
        let _ = if left > 0 {
            write!(
                h,
                ": <span class=\"{class}\">valid until {until} UTC, {} left</span>",
                span(left as u64)
            )
        } else {
            write!(h, ": <span class=\"{class}\">expired {until} UTC</span>")
        };
    }
    match cert.last_error() {
        Some(e) if admin => {
            let _ = write!(
                h,
                " · <span class=\"bad\">the last reload failed</span>, still serving this one: {}",
                esc(&e)
            );
        }
        Some(_) => h.push_str(
            " · <span class=\"bad\">the last reload failed</span>, still serving this one",
        ),
        None => {}
    }
    h.push_str("</p>\n");
}

fn traffic(h: &mut String, stats: &serde_json::Value) {
    h.push_str("<h2>Traffic</h2><table><tr><th></th><th class=\"n\">artifacts served</th><th class=\"n\">OCI</th><th class=\"n\">npm</th><th class=\"n\">PyPI</th>\
        <th class=\"n\">hits</th><th class=\"n\">misses</th><th>hit ratio</th><th class=\"n\">served from cache</th><th class=\"n\">blocked</th><th class=\"n\">distinct clients</th></tr>\n");
    let rows = [
        (
            "today",
            &stats["today"]["counters"],
            Some(&stats["today"]["distinct_clients"]),
        ),
        (
            "previous day",
            &stats["previous_day"]["counters"],
            Some(&stats["previous_day"]["distinct_clients"]),
        ),
        ("all time", &stats["total"], None),
    ];
    for (label, c, clients) in rows {
        if c.is_null() {
            continue;
        }
        let a = &c["artifacts_served"];
        let served = served_total(a);
        let _ = writeln!(
            h,
            "<tr><th>{label}</th><td class=\"n\">{served}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            num(&a["oci"]),
            num(&a["npm"]),
            num(&a["pypi"]),
            num(&c["hits"]),
            num(&c["misses"]),
            ratio(&c["hit_ratio"]),
            human_bytes(num(&c["upstream_bytes_saved"])),
            num(&c["blocks"]),
            clients.map_or("—".to_string(), |v| num(v).to_string()),
        );
    }
    h.push_str("</table>\n");
}

/// Artifacts served in every format (the table's columns name the three GA formats).
fn served_total(a: &serde_json::Value) -> u64 {
    ["oci", "npm", "pypi", "cargo"]
        .iter()
        .map(|f| num(&a[*f]))
        .sum()
}

fn days(h: &mut String, stats: &serde_json::Value) {
    let Some(days) = stats["days"].as_array().filter(|d| d.len() > 1) else {
        return;
    };
    h.push_str("<h2>Per day (UTC)</h2><table><tr><th>day</th><th class=\"n\">artifacts served</th><th>hit ratio</th>\
        <th class=\"n\">served from cache</th><th class=\"n\">blocked</th><th class=\"n\">distinct clients</th></tr>\n");
    for d in days.iter().rev() {
        let c = &d["counters"];
        let a = &c["artifacts_served"];
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(d["day"].as_str().unwrap_or("")),
            served_total(a),
            ratio(&c["hit_ratio"]),
            human_bytes(num(&c["upstream_bytes_saved"])),
            num(&c["blocks"]),
            num(&d["distinct_clients"]),
        );
    }
    h.push_str("</table>\n");
}

fn storage(h: &mut String, app: &App, admin: bool) {
    let stored = app.store.total_bytes();
    h.push_str("<h2>Storage</h2><p>");
    match app.limits.max_size {
        Some(max) if max > 0 => {
            let _ = write!(
                h,
                "{} of {} (<meter min=\"0\" max=\"{max}\" high=\"{}\" value=\"{stored}\"></meter> {:.1}%); eviction from {:.0}% down to {:.0}%",
                human_bytes(stored),
                human_bytes(max),
                app.limits.high_bytes().unwrap_or(max),
                stored as f64 * 100.0 / max as f64,
                app.limits.high * 100.0,
                app.limits.low * 100.0,
            );
        }
        _ => {
            let _ = write!(h, "{} stored, no size limit", human_bytes(stored));
        }
    }
    h.push_str("</p>\n");
    let (Some(s3), Some(shared)) = (&app.config.storage.s3, &app.shared) else {
        return;
    };
    let st = shared.status();
    let side = |rest: Option<std::time::Duration>| match rest {
        None => "<span class=\"ok\">working</span>".to_string(),
        Some(d) => format!(
            "<span class=\"bad\">resting</span> after a failure, {} more",
            span(d.as_secs().max(1))
        ),
    };
    h.push_str("<p>Shared with other replicas through ");
    if admin {
        let _ = write!(
            h,
            "the bucket <code>{}</code> at <code>{}</code>",
            esc(&s3.bucket),
            esc(&s3.endpoint)
        );
    } else {
        h.push_str("a bucket");
    }
    let _ = writeln!(
        h,
        " (<code>[storage.s3]</code>): reads {}, uploads {}, {} uploads queued</p>",
        side(st.reads_rest),
        side(st.writes_rest),
        st.queued
    );
}

fn upstreams(h: &mut String, app: &App, admin: bool, now: u64) {
    h.push_str("<h2>Upstreams</h2><table><tr><th>name</th><th>format</th><th>clients use</th>");
    if admin {
        h.push_str("<th>URL</th>");
    }
    h.push_str("<th>state</th><th class=\"n\">requests sent</th><th class=\"n\">failed</th><th>last answer</th><th>last failure</th></tr>\n");
    let mut all: Vec<&Arc<Upstream>> = app.oci.iter().collect();
    let mut mounted: Vec<&Arc<Upstream>> = app.mounted.values().collect();
    mounted.sort_by(|a, b| a.name().cmp(b.name()));
    all.extend(mounted);
    for up in all {
        let name = esc(up.name());
        let route = match up.cfg.format {
            Format::Oci if up.cfg.default => {
                format!("<code>/v2/…</code>, <code>/v2/{name}/…</code>")
            }
            Format::Oci => format!("<code>/v2/{name}/…</code>"),
            _ => format!("<code>/{name}/</code>"),
        };
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{route}</td>",
            up.cfg.format.as_str()
        );
        if admin {
            let _ = write!(
                h,
                "<td><code>{}</code></td>",
                esc(&without_credentials(up.base()))
            );
        }
        let a = up.activity.snapshot();
        let last_failure = match (&a.last_failure, admin) {
            (None, _) => "—".to_string(),
            (Some((t, what)), true) => format!("{}: {}", ago(now, *t), esc(what)),
            (Some((t, _)), false) => ago(now, *t),
        };
        let _ = writeln!(
            h,
            "<td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{last_failure}</td></tr>",
            state(up.is_offline(), up.circuit()),
            a.requests,
            a.failures,
            a.last_success_unix.map_or("—".to_string(), |t| ago(now, t)),
        );
    }
    h.push_str("</table>\n");
}

/// An upstream's state, as HTML.
fn state(offline: bool, status: Status) -> String {
    if offline {
        return "<span class=\"warn\">offline</span> (serving what is cached)".into();
    }
    match status {
        Status::Closed { failures: 0 } => "<span class=\"ok\">answering</span>".into(),
        Status::Closed { failures } => format!(
            "<span class=\"warn\">answering</span> ({failures} failed requests in a row)"
        ),
        Status::Open { wait, asked: true } => format!(
            "<span class=\"bad\">paused</span>: it answered 429; next request in {} (serving what is cached)",
            span(wait.as_secs().max(1))
        ),
        Status::Open { wait, asked: false } => format!(
            "<span class=\"bad\">failing</span>: circuit open; next probe in {} (serving what is cached)",
            span(wait.as_secs().max(1))
        ),
        Status::Due { asked: true } => {
            "<span class=\"warn\">paused</span>: it answered 429; the pause is over, the next request checks it".into()
        }
        Status::Due { asked: false } => {
            "<span class=\"bad\">failing</span>: circuit open; the next request probes it".into()
        }
        Status::Probing => {
            "<span class=\"warn\">probing</span>: one request checks whether it recovered".into()
        }
    }
}

/// The URL without user name, password, query or fragment (where a token could be).
fn without_credentials(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn refusals(h: &mut String, app: &App, now: u64) {
    let (since, list) = app.policy.refusals.recent(LISTED);
    let _ = writeln!(
        h,
        "<h2>Policy refusals</h2><p class=\"muted\">Requests the policy refused (<b>block</b>) or an audit-mode rule would have refused (<b>audit</b>, served), since {} UTC; the last {LISTED} seen.</p>",
        crate::timefmt::datetime(since)
    );
    if list.is_empty() {
        h.push_str("<p>None.</p>\n");
        return;
    }
    h.push_str("<table><tr><th>last seen</th><th>outcome</th><th>format</th><th>name</th><th>version or tag</th><th>rule</th><th>reason</th><th class=\"n\">requests</th><th>upstream</th><th>last request id</th></tr>\n");
    for r in &list {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
            ago(now, r.last_unix),
            if r.outcome == "block" { "bad" } else { "warn" },
            esc(&r.outcome),
            esc(&r.format),
            esc(&r.name),
            esc(r.version.as_deref().unwrap_or("—")),
            esc(&r.rule),
            esc(&r.reason),
            r.count,
            esc(&r.upstream),
            esc(r.last_request_id.as_deref().unwrap_or("—")),
        );
    }
    h.push_str("</table>\n");
}

/// A form asking the policy about a name and version, and its answer (what the policy
/// would decide, as `GET /-/api/policy/check`: a public upstream, no publish time or
/// license known; nothing is counted or recorded).
fn policy_check(h: &mut String, app: &App, asked: &Asked) {
    h.push_str(
        "<h2>Policy check</h2><form method=\"get\" action=\"/-/ui\"><select name=\"format\">",
    );
    for f in [Format::Npm, Format::Pypi, Format::Oci, Format::Cargo] {
        let _ = write!(
            h,
            "<option value=\"{0}\"{1}>{0}</option>",
            f.as_str(),
            if asked.format == f.as_str() {
                " selected"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        h,
        "</select> <input name=\"name\" placeholder=\"package or repository\" value=\"{}\" required> \
         <input name=\"version\" placeholder=\"version or tag (optional)\" value=\"{}\"> <button>check</button></form>",
        esc(&asked.name),
        esc(&asked.version)
    );
    if asked.name.is_empty() {
        return;
    }
    let Some(format) = Format::ALL.into_iter().find(|f| f.as_str() == asked.format) else {
        let _ = writeln!(
            h,
            "<p class=\"bad\">Unknown format <code>{}</code>: npm, pypi, oci or cargo.</p>",
            esc(&asked.format)
        );
        return;
    };
    let version = Some(asked.version.as_str()).filter(|v| !v.is_empty());
    let d = app
        .policy
        .what_if(&crate::admin::question(format, "", &asked.name, version));
    let (class, verdict) = match d.verdict {
        sluice_policy::Verdict::Block => ("bad", "blocked"),
        sluice_policy::Verdict::Warn => ("warn", "allowed with a warning"),
        sluice_policy::Verdict::Allow => ("ok", "allowed"),
    };
    let _ = write!(
        h,
        "<p>{} {}{}: <b class=\"{class}\">{verdict}</b>",
        format.as_str(),
        esc(&asked.name),
        version.map_or(String::new(), |v| format!(" {}", esc(v))),
    );
    if let (Some(rule), Some(reason)) = (&d.rule, &d.reason) {
        let _ = write!(h, " by rule <code>{}</code>: {}", esc(rule), esc(reason));
    }
    h.push_str("</p>\n");
    if d.findings.is_empty() {
        return;
    }
    h.push_str("<table><tr><th>rule</th><th>says</th><th>counts as</th><th>reason</th></tr>\n");
    for f in &d.findings {
        let mut counts = f.effective.as_str().to_string();
        if f.audit {
            counts.push_str(" (audit mode)");
        }
        if let Some(w) = &f.waived_by {
            counts.push_str(&format!(" (waived: {w})"));
        }
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.rule),
            f.verdict.as_str(),
            esc(&counts),
            esc(&f.reason)
        );
    }
    h.push_str("</table>\n");
}

fn cached(h: &mut String, items: Option<&serde_json::Value>, now: u64) {
    let Some(v) = items else { return };
    let _ = writeln!(
        h,
        "<h2>Cached items, last used first</h2><p class=\"muted\">{} items, {} files, {}; the {LISTED} used last.</p>",
        num(&v["total"]),
        num(&v["stored_files"]),
        human_bytes(num(&v["stored_bytes"])),
    );
    let empty = Vec::new();
    let list = v["items"].as_array().unwrap_or(&empty);
    if list.is_empty() {
        return;
    }
    h.push_str("<table><tr><th>last used</th><th>format</th><th>kind</th><th>name</th><th>tag or version</th><th class=\"n\">size</th><th class=\"n\">files stored</th></tr>\n");
    for i in list {
        let last = num(&i["last_access_unix"]);
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{} of {}</td></tr>",
            if last == 0 { "—".to_string() } else { ago(now, last) },
            esc(i["format"].as_str().unwrap_or("")),
            esc(i["kind"].as_str().unwrap_or("")),
            esc(i["name"].as_str().unwrap_or("")),
            esc(i["tag"].as_str().unwrap_or("—")),
            human_bytes(num(&i["size"])),
            num(&i["files_stored"]),
            num(&i["files"]),
        );
    }
    h.push_str("</table>\n");
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A 0–1 ratio as a meter and a percentage.
fn ratio(v: &serde_json::Value) -> String {
    let r = v.as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
    format!(
        "<meter min=\"0\" max=\"1\" value=\"{r:.3}\"></meter> {:.1}%",
        r * 100.0
    )
}

/// `3 d 4 h`, `5 h 12 min`, `7 min 3 s`, `42 s`.
fn span(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

/// `5 min 2 s ago`, with the UTC time as a tooltip.
fn ago(now: u64, t: u64) -> String {
    format!(
        "<span title=\"{} UTC\">{} ago</span>",
        crate::timefmt::datetime(t),
        span(now.saturating_sub(t))
    )
}

/// `s` with `& < > " '` escaped, for text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    crate::formats::pypi::simple::escape(s, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn spans_read_in_the_largest_units() {
        assert_eq!(span(42), "42 s");
        assert_eq!(span(7 * 60 + 3), "7 min 3 s");
        assert_eq!(span(5 * 3600 + 12 * 60 + 9), "5 h 12 min");
        assert_eq!(span(3 * 86_400 + 4 * 3600 + 1), "3 d 4 h");
    }

    #[test]
    fn the_csp_allows_exactly_the_style_block() {
        use sha2::Digest as _;
        let hash = crate::b64::encode(&sha2::Sha256::digest(STYLE.as_bytes()));
        assert!(CSP.contains(&format!("style-src 'sha256-{hash}'")));
        assert!(CSP.starts_with("default-src 'none';"));
        assert!(!CSP.contains("script-src") && !CSP.contains("unsafe"));
    }

    #[test]
    fn each_circuit_status_has_its_own_words() {
        use std::time::Duration;
        let words = |st| {
            let h = state(false, st);
            h[h.find('>').unwrap() + 1..h.find("</span>").unwrap()].to_string()
                + &h[h.find("</span>").unwrap() + 7..]
        };
        assert_eq!(words(Status::Closed { failures: 0 }), "answering");
        assert_eq!(
            words(Status::Closed { failures: 2 }),
            "answering (2 failed requests in a row)"
        );
        let open = |asked| Status::Open {
            wait: Duration::from_secs(65),
            asked,
        };
        assert!(words(open(false)).starts_with("failing: circuit open; next probe in 1 min 5 s"));
        assert!(words(open(true)).starts_with("paused: it answered 429; next request in 1 min 5 s"));
        assert!(words(Status::Due { asked: false })
            .starts_with("failing: circuit open; the next request probes it"));
        assert!(words(Status::Due { asked: true })
            .starts_with("paused: it answered 429; the pause is over"));
        assert!(words(Status::Probing).starts_with("probing"));
        assert!(
            state(true, Status::Probing).contains(">offline<"),
            "offline wins"
        );
    }

    #[test]
    fn credentials_never_reach_the_page() {
        let u = url::Url::parse("https://user:secret@registry.example/v2?token=t#x").unwrap();
        assert_eq!(without_credentials(&u), "https://registry.example/v2");
    }
}
