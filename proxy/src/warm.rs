//! `sluice warm`: prefetches what lockfiles and image lists name through a running sluice,
//! so that later builds are answered from its cache.
//!
//! This is a client of sluice's own HTTP routes, exactly as npm, pip and containerd use
//! them, never of the store: npm packuments and then the tarball they point at; PyPI simple
//! pages (PEP 691 JSON) and then the files of the pinned version (and their PEP 658
//! metadata); OCI manifests, the children of an index, and every config and layer blob.
//! A few requests are in flight at once; each artifact gets one progress line (on a
//! terminal, one redrawn progress bar, and a line only for what failed or was skipped),
//! and every body is read to its end so that sluice completes and stores the fill.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;
use sluice_config::{Config, Ecosystem, Format};
use sluice_policy::lockfile::Entry;
use url::Url;

use crate::formats::oci::MANIFEST_ACCEPT;
use crate::formats::pypi::{files::version_of, simple::normalize};

/// What the npm client asks packuments with (the full form, which `npm ci` reads).
const NPM_ACCEPT: &str = "application/json";

/// PEP 691 JSON, as pip asks first.
const PYPI_ACCEPT: &str = "application/vnd.pypi.simple.v1+json";

/// Largest metadata document (packument, simple page, manifest) read into memory.
const MAX_DOCUMENT: usize = 256 << 20;

/// How much of an error body is read for its message.
const MAX_ERROR_BODY: usize = 64 << 10;

/// How `sluice warm` reaches sluice; everything else comes from the config.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// sluice's base URL (default: `server.public_url`, else `http://<listen>`).
    pub url: Option<String>,
    /// The npm upstream's mount name (default: the first `format = "npm"` upstream).
    pub npm_upstream: Option<String>,
    /// The PyPI upstream's mount name (default: the first `format = "pypi"` upstream).
    pub pypi_upstream: Option<String>,
    /// Sent as `Authorization: Bearer` when sluice requires a token.
    pub token: Option<String>,
    /// Requests in flight at once (at least 1).
    pub jobs: usize,
    /// Draw one redrawn progress bar (for a terminal) instead of a line per artifact;
    /// failures and skips still get their line.
    pub bar: bool,
}

/// What a run did, for the summary line and the exit status.
#[derive(Debug, Default)]
pub struct Summary {
    /// Artifacts fetched completely.
    pub ok: usize,
    /// Artifacts that could not be fetched (blocked, missing, upstream failure ...).
    pub failed: usize,
    /// Lockfile entries there was nothing to fetch for (unpinned npm entries, ...).
    pub skipped: usize,
    /// Body bytes received, metadata included.
    pub bytes: u64,
    /// Completed artifacts per `X-Sluice-Cache` value (HIT, MISS, ...).
    pub cache: BTreeMap<String, usize>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// Whether every artifact was fetched.
    pub fn is_clean(&self) -> bool {
        self.failed == 0
    }

    /// `sluice warm: 12 ok, 1 failed, 0 skipped; 3.4 MiB in 1.2s (4 HIT, 8 MISS)`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "sluice warm: {} ok, {} failed, {} skipped; {} in {:.1}s",
            self.ok,
            self.failed,
            self.skipped,
            human_bytes(self.bytes),
            self.elapsed.as_secs_f64()
        );
        if !self.cache.is_empty() {
            let parts: Vec<String> = self.cache.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = write!(s, " ({})", parts.join(", "));
        }
        s
    }
}

/// Reads `files` (lockfiles and image lists, see [`sluice_policy::lockfile::read`]) and
/// fetches everything they name through the sluice that `cfg` and `opts` describe, writing
/// one progress line per artifact to `progress`. Fails only when a file cannot be read or
/// the options are unusable; failed artifacts are counted in the [`Summary`].
pub fn run(
    cfg: &Config,
    opts: &Options,
    files: &[PathBuf],
    progress: &mut dyn Write,
) -> anyhow::Result<Summary> {
    let mut entries = Vec::new();
    for f in files {
        entries.extend(sluice_policy::lockfile::read(f).map_err(anyhow::Error::msg)?);
    }
    let target = Target::new(cfg, opts)?;
    let mut client = crate::admin_client::own_certificates(cfg)
        .into_iter()
        .fold(reqwest::Client::builder(), |b, c| b.add_root_certificate(c))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("sluice-warm/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = &opts.token {
        let mut h = reqwest::header::HeaderMap::new();
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
            .context("--token is not a valid header value")?;
        v.set_sensitive(true);
        h.insert(reqwest::header::AUTHORIZATION, v);
        client = client.default_headers(h);
    }
    let ctx = Arc::new(Ctx {
        client: client.build().context("building the HTTP client")?,
        target,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(drive(ctx, entries, opts.jobs.max(1), opts.bar, progress)))
}

/// Where sluice is and which of its mounts and upstreams to address.
struct Target {
    base: Url,
    npm: Option<String>,
    pypi: Option<String>,
    /// The first `format = "cargo"` upstream's mount name.
    cargo: Option<String>,
    /// OCI upstreams: (name, registry host as in `?ns=`, is Docker Hub).
    oci: Vec<(String, String, bool)>,
}

impl Target {
    fn new(cfg: &Config, opts: &Options) -> anyhow::Result<Target> {
        let raw = opts.url.clone().unwrap_or_else(|| cfg.public_url());
        let base = Url::parse(raw.trim_end_matches('/'))
            .with_context(|| format!("sluice URL {raw:?} is not an absolute URL"))?;
        if !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("sluice URL {raw:?} is not http or https");
        }
        let first = |f: Format| {
            cfg.upstreams
                .iter()
                .find(|u| u.format == f)
                .map(|u| u.name.clone())
        };
        Ok(Target {
            base,
            npm: opts.npm_upstream.clone().or_else(|| first(Format::Npm)),
            pypi: opts.pypi_upstream.clone().or_else(|| first(Format::Pypi)),
            cargo: first(Format::Cargo),
            oci: cfg
                .upstreams
                .iter()
                .filter(|u| u.format == Format::Oci)
                .map(|u| (u.name.clone(), u.ns_host(), u.is_docker_hub()))
                .collect(),
        })
    }

    /// `<base>/<path>`, with `path` already percent-encoded where it needs to be.
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base.as_str().trim_end_matches('/'))
    }

    /// `(route prefix below /v2/, query)` for an image in `registry`: the upstream whose
    /// host matches, addressed by name; else containerd's `?ns=`, which sluice answers
    /// clearly when no upstream serves that registry.
    fn oci_route(&self, registry: &str, repo: &str) -> (String, String) {
        let hub = matches!(
            registry,
            "docker.io" | "registry-1.docker.io" | "index.docker.io"
        );
        match self
            .oci
            .iter()
            .find(|(_, host, is_hub)| host == registry || (hub && *is_hub))
        {
            Some((name, _, _)) => (format!("{name}/{repo}"), String::new()),
            None => (repo.to_string(), format!("?ns={registry}")),
        }
    }
}

struct Ctx {
    client: reqwest::Client,
    target: Target,
}

/// One request to make.
struct Task {
    label: String,
    url: String,
    kind: Kind,
}

impl Task {
    /// What keeps a run from doing the same thing twice: the URL, plus the version a
    /// metadata step looks for (one packument serves several lockfile versions).
    fn key(&self) -> String {
        match &self.kind {
            Kind::Packument { version, .. } => format!("{} {version}", self.url),
            Kind::Page {
                version: Some(v), ..
            } => format!("{} {v}", self.url),
            _ => self.url.clone(),
        }
    }
}

enum Kind {
    /// npm packument; on success, the tarball of `version`.
    Packument { name: String, version: String },
    /// PyPI simple page; with a version, the files of that version.
    Page {
        project: String,
        version: Option<String>,
    },
    /// OCI manifest or index; on success, its children or blobs.
    Manifest { route: String, query: String },
    /// A file read to its end: tarball, distribution file, blob.
    Artifact,
}

/// How one task ended.
enum Outcome {
    /// Fetched: the `X-Sluice-Cache` value and the body size.
    Ok(String, u64),
    Failed(String),
    Skipped(String),
    /// A metadata step that succeeded and hands its progress slot to its follow-ups.
    Continued,
}

struct Done {
    label: String,
    outcome: Outcome,
    /// Bytes received, counted even when the step has no line of its own.
    bytes: u64,
    more: Vec<Task>,
}

/// The progress lines and the running totals behind them.
struct Tally<'w> {
    out: &'w mut dyn Write,
    summary: Summary,
    /// Lines written.
    n: usize,
    /// Lines known to come (grows as manifests and pages reveal what they list).
    total: usize,
    /// The progress bar, when drawing one.
    bar: Option<Bar>,
}

/// A one-line progress bar redrawn in place (`\r`, erase line).
struct Bar {
    started: Instant,
    /// When it was last drawn (redraws are at most every [`Bar::EVERY`]).
    drawn: Option<Instant>,
    /// The artifact last started.
    current: String,
    /// Terminal columns (`$COLUMNS`, else 80).
    width: usize,
}

impl Bar {
    const EVERY: Duration = Duration::from_millis(80);

    fn new() -> Bar {
        Bar {
            started: Instant::now(),
            drawn: None,
            current: String::new(),
            width: std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.parse().ok())
                .filter(|w| *w >= 20)
                .unwrap_or(80),
        }
    }
}

/// `[=========>          ] 7/18 3.4 MiB 0:03 npm left-pad@1.3.0`, cut to `width - 1`
/// characters so that it never wraps (a wrapped line cannot be redrawn in place).
fn bar_line(
    done: usize,
    total: usize,
    bytes: u64,
    elapsed: Duration,
    current: &str,
    width: usize,
) -> String {
    const CELLS: usize = 24;
    let total = total.max(done);
    let filled = (done * CELLS).checked_div(total).unwrap_or(0);
    let mut cells = "=".repeat(filled);
    if filled < CELLS {
        cells.push(if done == 0 { ' ' } else { '>' });
        cells.push_str(&" ".repeat(CELLS - filled - 1));
    }
    let secs = elapsed.as_secs();
    let line = format!(
        "[{cells}] {done}/{total} {} {}:{:02} {current}",
        human_bytes(bytes),
        secs / 60,
        secs % 60
    );
    line.trim_end()
        .chars()
        .take(width.saturating_sub(1))
        .collect()
}

impl Tally<'_> {
    fn record(&mut self, label: &str, outcome: Outcome, bytes: u64) {
        self.summary.bytes += bytes;
        let text = match outcome {
            Outcome::Continued => return,
            Outcome::Ok(cache, size) => {
                self.summary.ok += 1;
                let text = format!("ok ({cache}, {})", human_bytes(size));
                *self.summary.cache.entry(cache).or_default() += 1;
                text
            }
            Outcome::Failed(why) => {
                self.summary.failed += 1;
                format!("failed: {why}")
            }
            Outcome::Skipped(why) => {
                self.summary.skipped += 1;
                format!("skipped: {why}")
            }
        };
        self.n += 1;
        if self.bar.is_some() {
            // A bar replaces the lines of what went well; what did not keeps its line.
            if !text.starts_with("ok") {
                let _ = writeln!(
                    self.out,
                    "\r\x1b[2K[{}/{}] {label} ... {text}",
                    self.n, self.total
                );
                self.draw(true);
            } else {
                self.draw(self.n >= self.total);
            }
            return;
        }
        let _ = writeln!(self.out, "[{}/{}] {label} ... {text}", self.n, self.total);
    }

    /// `label` has started: the bar shows it.
    fn started(&mut self, label: &str) {
        if let Some(b) = &mut self.bar {
            label.clone_into(&mut b.current);
            self.draw(false);
        }
    }

    /// Redraws the bar (unless it was drawn a moment ago and `force` is false).
    fn draw(&mut self, force: bool) {
        let Some(b) = &mut self.bar else { return };
        if !force && b.drawn.is_some_and(|t| t.elapsed() < Bar::EVERY) {
            return;
        }
        b.drawn = Some(Instant::now());
        let line = bar_line(
            self.n,
            self.total,
            self.summary.bytes,
            b.started.elapsed(),
            &b.current,
            b.width,
        );
        let _ = write!(self.out, "\r\x1b[2K{line}");
        let _ = self.out.flush();
    }

    /// Leaves the bar at its final state on its own line.
    fn finish(&mut self) {
        if let Some(b) = &mut self.bar {
            b.current.clear();
            self.draw(true);
            let _ = writeln!(self.out);
        }
    }
}

async fn drive(
    ctx: Arc<Ctx>,
    entries: Vec<Entry>,
    jobs: usize,
    bar: bool,
    out: &mut dyn Write,
) -> Summary {
    let started = Instant::now();
    let mut seen = HashSet::new();
    let mut queue = VecDeque::new();
    let mut immediate = Vec::new();
    for e in entries {
        match plan(&ctx.target, &e) {
            Ok(t) => {
                if seen.insert(t.key()) {
                    queue.push_back(t);
                }
            }
            Err(done) => immediate.push(done),
        }
    }
    let mut tally = Tally {
        out,
        summary: Summary::default(),
        n: 0,
        total: queue.len() + immediate.len(),
        bar: bar.then(Bar::new),
    };
    for d in immediate {
        tally.record(&d.label, d.outcome, d.bytes);
    }
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < jobs {
            let Some(t) = queue.pop_front() else { break };
            tally.started(&t.label);
            running.spawn(step(ctx.clone(), t));
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let Done {
            label,
            outcome,
            bytes,
            more,
        } = joined.unwrap_or_else(|e| Done {
            label: "(internal)".into(),
            outcome: Outcome::Failed(format!("task ended abnormally: {e}")),
            bytes: 0,
            more: Vec::new(),
        });
        let before = queue.len();
        queue.extend(more.into_iter().filter(|t| seen.insert(t.key())));
        let added = queue.len() - before;
        // A step without a line of its own hands its place in the count to what it found.
        tally.total += added;
        if matches!(outcome, Outcome::Continued) {
            tally.total -= 1;
        }
        tally.record(&label, outcome, bytes);
    }
    tally.finish();
    let mut summary = tally.summary;
    summary.elapsed = started.elapsed();
    summary
}

/// The first request for a lockfile entry, or the line saying why there is none.
fn plan(target: &Target, e: &Entry) -> Result<Task, Done> {
    let early = |label: String, outcome| Done {
        label,
        outcome,
        bytes: 0,
        more: Vec::new(),
    };
    match e.ecosystem {
        Ecosystem::Npm => {
            let label = match &e.version {
                Some(v) => format!("npm {}@{v}", e.name),
                None => format!("npm {}", e.name),
            };
            let Some(version) = e.version.clone().filter(|v| is_registry_version(v)) else {
                return Err(early(
                    label,
                    Outcome::Skipped("no registry version in the lockfile".into()),
                ));
            };
            let Some(up) = &target.npm else {
                return Err(early(
                    label,
                    Outcome::Failed(
                        "no npm upstream is configured (pass --npm-upstream NAME)".into(),
                    ),
                ));
            };
            Ok(Task {
                url: target.url(&format!("{up}/{}", npm_path(&e.name))),
                label,
                kind: Kind::Packument {
                    name: e.name.clone(),
                    version,
                },
            })
        }
        Ecosystem::Pypi => {
            let project = normalize(&e.name);
            let label = match &e.version {
                Some(v) => format!("pypi {project}=={v}"),
                None => format!("pypi {project} (index page)"),
            };
            let Some(up) = &target.pypi else {
                return Err(early(
                    label,
                    Outcome::Failed(
                        "no PyPI upstream is configured (pass --pypi-upstream NAME)".into(),
                    ),
                ));
            };
            Ok(Task {
                url: target.url(&format!("{up}/simple/{project}/")),
                label,
                kind: Kind::Page {
                    project,
                    version: e.version.clone(),
                },
            })
        }
        Ecosystem::Cargo => {
            let label = format!("cargo {}@{}", e.name, e.version.as_deref().unwrap_or("?"));
            let Some(version) = e.version.clone() else {
                return Err(early(
                    label,
                    Outcome::Skipped("no version in the lockfile".into()),
                ));
            };
            let Some(up) = &target.cargo else {
                return Err(early(
                    label,
                    Outcome::Failed("no cargo upstream is configured".into()),
                ));
            };
            // sluice looks the crate up in its index and verifies it: one request. The
            // version's `+build` stays as it is, as cargo sends it.
            Ok(Task {
                url: target.url(&format!(
                    "{up}/api/v1/crates/{}/{}/download",
                    utf8_percent(&e.name),
                    percent_encoding::utf8_percent_encode(&version, VERSION_SEGMENT)
                )),
                label,
                kind: Kind::Artifact,
            })
        }
        Ecosystem::Oci => {
            let registry = e.registry.as_deref().unwrap_or("docker.io");
            let shown = if registry == "docker.io" {
                e.name.clone()
            } else {
                format!("{registry}/{}", e.name)
            };
            let (label, reference) = match (&e.version, &e.digest) {
                (Some(t), Some(d)) => (format!("oci {shown}:{t}@{d}"), d.clone()),
                (None, Some(d)) => (format!("oci {shown}@{d}"), d.clone()),
                (Some(t), None) => (format!("oci {shown}:{t}"), t.clone()),
                (None, None) => (format!("oci {shown}:latest"), "latest".to_string()),
            };
            let (route, query) = target.oci_route(registry, &e.name);
            Ok(Task {
                url: target.url(&format!("v2/{route}/manifests/{reference}{query}")),
                label,
                kind: Kind::Manifest { route, query },
            })
        }
    }
}

/// Runs one task.
async fn step(ctx: Arc<Ctx>, task: Task) -> Done {
    let Task { label, url, kind } = task;
    let (outcome, bytes, more) = match kind {
        Kind::Artifact => match fetch(&ctx.client, &url, None, false).await {
            Ok(f) => (Outcome::Ok(f.cache, f.bytes), f.bytes, Vec::new()),
            Err(e) => (Outcome::Failed(e), 0, Vec::new()),
        },
        Kind::Packument { name, version } => packument(&ctx, &label, &url, &name, &version).await,
        Kind::Page { project, version } => {
            page(&ctx, &label, &url, &project, version.as_deref()).await
        }
        Kind::Manifest { route, query } => manifest(&ctx, &label, &url, &route, &query).await,
    };
    Done {
        label,
        outcome,
        bytes,
        more,
    }
}

type Stepped = (Outcome, u64, Vec<Task>);

async fn packument(ctx: &Ctx, label: &str, url: &str, name: &str, version: &str) -> Stepped {
    let f = match fetch(&ctx.client, url, Some(NPM_ACCEPT), true).await {
        Ok(f) => f,
        Err(e) => return (Outcome::Failed(e), 0, Vec::new()),
    };
    let mut bytes = f.bytes;
    let doc: Value = match serde_json::from_slice(&f.body) {
        Ok(v) => v,
        Err(e) => {
            return (
                Outcome::Failed(format!("packument is not JSON: {e}")),
                bytes,
                Vec::new(),
            )
        }
    };
    let mut tarball = doc["versions"][version]["dist"]["tarball"]
        .as_str()
        .map(str::to_string);
    if tarball.is_none() {
        // Not listed: ask for the version itself, which makes sluice revalidate the
        // packument once and, when a policy rule withholds the version, name the rule.
        let vurl = format!("{url}/{}", utf8_percent(version));
        match fetch(&ctx.client, &vurl, Some(NPM_ACCEPT), true).await {
            Ok(v) => {
                bytes += v.bytes;
                tarball = serde_json::from_slice::<Value>(&v.body)
                    .ok()
                    .and_then(|d| d["dist"]["tarball"].as_str().map(str::to_string));
            }
            Err(e) => return (Outcome::Failed(e), bytes, Vec::new()),
        }
    }
    let Some(tarball) = tarball else {
        return (
            Outcome::Failed(format!(
                "the packument lists no tarball for {name}@{version}"
            )),
            bytes,
            Vec::new(),
        );
    };
    match resolve(url, &tarball) {
        Ok(t) => (
            Outcome::Continued,
            bytes,
            vec![Task {
                label: label.to_string(),
                url: t,
                kind: Kind::Artifact,
            }],
        ),
        Err(e) => (Outcome::Failed(e), bytes, Vec::new()),
    }
}

async fn page(ctx: &Ctx, label: &str, url: &str, project: &str, version: Option<&str>) -> Stepped {
    let f = match fetch(&ctx.client, url, Some(PYPI_ACCEPT), version.is_some()).await {
        Ok(f) => f,
        Err(e) => return (Outcome::Failed(e), 0, Vec::new()),
    };
    let Some(version) = version else {
        return (Outcome::Ok(f.cache, f.bytes), f.bytes, Vec::new());
    };
    let doc: Value = match serde_json::from_slice(&f.body) {
        Ok(v) => v,
        Err(e) => {
            return (
                Outcome::Failed(format!("index page is not PEP 691 JSON: {e}")),
                f.bytes,
                Vec::new(),
            )
        }
    };
    let mut more = Vec::new();
    for file in doc["files"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let (Some(filename), Some(href)) = (file["filename"].as_str(), file["url"].as_str()) else {
            continue;
        };
        if !version_of(project, filename).is_some_and(|v| same_pep440(&v, version)) {
            continue;
        }
        let Ok(file_url) = resolve(url, href) else {
            continue;
        };
        // pip reads PEP 658 metadata before it downloads; warm it too.
        let has_metadata = [&file["core-metadata"], &file["data-dist-info-metadata"]]
            .iter()
            .any(|m| matches!(m, Value::Bool(true) | Value::Object(_)));
        if has_metadata {
            more.push(Task {
                label: format!("{label} {filename}.metadata"),
                url: format!("{file_url}.metadata"),
                kind: Kind::Artifact,
            });
        }
        more.push(Task {
            label: format!("{label} {filename}"),
            url: file_url,
            kind: Kind::Artifact,
        });
    }
    if more.is_empty() {
        return (
            Outcome::Failed(format!(
                "the index page lists no file of {project} {version} (not published, or withheld by policy)"
            )),
            f.bytes,
            more,
        );
    }
    (Outcome::Continued, f.bytes, more)
}

async fn manifest(ctx: &Ctx, label: &str, url: &str, route: &str, query: &str) -> Stepped {
    let f = match fetch(&ctx.client, url, Some(MANIFEST_ACCEPT), true).await {
        Ok(f) => f,
        Err(e) => return (Outcome::Failed(e), 0, Vec::new()),
    };
    let doc: Value = match serde_json::from_slice(&f.body) {
        Ok(v) => v,
        Err(e) => {
            return (
                Outcome::Failed(format!("manifest is not JSON: {e}")),
                f.bytes,
                Vec::new(),
            )
        }
    };
    let digest_of = |d: &Value| {
        d["digest"]
            .as_str()
            .filter(|s| s.parse::<crate::digest::Digest>().is_ok())
            .map(str::to_string)
    };
    let mut more = Vec::new();
    if let Some(children) = doc["manifests"].as_array() {
        for child in children {
            let Some(d) = digest_of(child) else { continue };
            let p = &child["platform"];
            let platform = [&p["os"], &p["architecture"], &p["variant"]]
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join("/");
            let tail = if platform.is_empty() {
                short(&d).to_string()
            } else {
                platform
            };
            more.push(Task {
                label: format!("{label} {tail}"),
                url: ctx.target.url(&format!("v2/{route}/manifests/{d}{query}")),
                kind: Kind::Manifest {
                    route: route.to_string(),
                    query: query.to_string(),
                },
            });
        }
    } else {
        let blobs = std::iter::once(("config", &doc["config"])).chain(
            doc["layers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|l| ("layer", l)),
        );
        for (what, desc) in blobs {
            let Some(d) = digest_of(desc) else { continue };
            more.push(Task {
                label: format!("{label} {what} {}", short(&d)),
                url: ctx.target.url(&format!("v2/{route}/blobs/{d}{query}")),
                kind: Kind::Artifact,
            });
        }
    }
    (Outcome::Ok(f.cache, f.bytes), f.bytes, more)
}

/// A response read to its end.
struct Fetched {
    cache: String,
    bytes: u64,
    /// The body, when asked to keep it.
    body: Vec<u8>,
}

/// GETs `url` and reads the body to its end (kept only when `keep`). A non-2xx answer is
/// an error carrying sluice's message from the body.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
    keep: bool,
) -> Result<Fetched, String> {
    let mut req = client.get(url);
    if let Some(a) = accept {
        req = req.header(reqwest::header::ACCEPT, a);
    }
    let mut resp = req.send().await.map_err(|e| describe(&e))?;
    let status = resp.status();
    let cache = resp
        .headers()
        .get("x-sluice-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let limit = if !status.is_success() {
        MAX_ERROR_BODY
    } else if keep {
        MAX_DOCUMENT
    } else {
        0
    };
    let mut body = Vec::new();
    let mut bytes = 0u64;
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                bytes += c.len() as u64;
                if body.len() < limit {
                    body.extend_from_slice(&c[..c.len().min(limit - body.len())]);
                } else if keep && status.is_success() {
                    return Err(format!(
                        "document larger than {}",
                        human_bytes(limit as u64)
                    ));
                } else if !status.is_success() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(format!(
                    "body cut after {}: {}",
                    human_bytes(bytes),
                    describe(&e)
                ))
            }
        }
    }
    if !status.is_success() {
        return Err(format!("{status}: {}", error_message(&body)));
    }
    Ok(Fetched { cache, bytes, body })
}

/// The message in an error body: npm's `error`, OCI's `errors[0].message`, or the text.
pub(crate) fn error_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v["error"]
            .as_str()
            .or_else(|| v["errors"][0]["message"].as_str())
            .or_else(|| v["message"].as_str())
            .map(str::to_string)
    });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        "(no message)".into()
    } else {
        one_line.chars().take(500).collect()
    }
}

/// A transport error with its causes (reqwest's own text omits them).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let _ = write!(s, ": {c}");
        src = c.source();
    }
    s
}

/// `href` resolved against `base` (sluice writes absolute URLs; relative ones work too),
/// without any fragment.
fn resolve(base: &str, href: &str) -> Result<String, String> {
    let mut u = Url::parse(base)
        .and_then(|b| b.join(href))
        .map_err(|e| format!("bad URL {href:?}: {e}"))?;
    u.set_fragment(None);
    Ok(u.to_string())
}

/// The packument path of an npm name: `@scope/name` as `@scope%2fname`.
fn npm_path(name: &str) -> String {
    match name.strip_prefix('@').and_then(|n| n.split_once('/')) {
        Some((scope, n)) => format!("@{}%2f{}", utf8_percent(scope), utf8_percent(n)),
        None => utf8_percent(name),
    }
}

/// RFC 3986 unreserved characters stay as they are.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A Cargo version in a path: `+build` metadata kept as `+`, as cargo sends it.
const VERSION_SEGMENT: &percent_encoding::AsciiSet = &PATH_SEGMENT.remove(b'+');

fn utf8_percent(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

/// Whether an npm lockfile version names a registry release (not `file:`, git, a URL).
fn is_registry_version(v: &str) -> bool {
    sluice_policy::semver::Version::parse(v).is_ok()
}

/// PEP 440 equality (`1.0` == `1.0.0`), else exact text.
fn same_pep440(a: &str, b: &str) -> bool {
    use sluice_policy::pep440::Version;
    match (Version::parse(a), Version::parse(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// `sha256:0123456789ab`: enough of a digest for a progress line.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// `12.3 KiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_npm_names_encode_the_slash() {
        assert_eq!(npm_path("@types/node"), "@types%2fnode");
        assert_eq!(npm_path("event-stream"), "event-stream");
        assert_eq!(npm_path("lodash.merge"), "lodash.merge");
    }

    #[test]
    fn error_messages_come_from_each_format_body() {
        assert_eq!(
            error_message(br#"{"error":"blocked by x"}"#),
            "blocked by x"
        );
        assert_eq!(
            error_message(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#),
            "no"
        );
        assert_eq!(
            error_message(b"not there\n (request id 1)\n"),
            "not there (request id 1)"
        );
        assert_eq!(error_message(b""), "(no message)");
    }

    #[test]
    fn file_urls_lose_their_fragment() {
        assert_eq!(
            resolve("http://h/pypi/simple/a/", "../../files/x.whl#sha256=00").unwrap(),
            "http://h/pypi/files/x.whl"
        );
    }

    #[test]
    fn pep440_versions_compare_by_value() {
        assert!(same_pep440("1.0", "1.0.0"));
        assert!(!same_pep440("1.0", "1.0.1"));
    }

    #[test]
    fn image_routes_use_the_upstream_whose_host_matches() {
        let t = Target {
            base: Url::parse("http://s:5080").unwrap(),
            npm: None,
            pypi: None,
            cargo: None,
            oci: vec![
                ("dockerhub".into(), "docker.io".into(), true),
                ("ghcr".into(), "ghcr.io".into(), false),
            ],
        };
        assert_eq!(
            t.oci_route("docker.io", "library/alpine"),
            ("dockerhub/library/alpine".into(), String::new())
        );
        assert_eq!(
            t.oci_route("ghcr.io", "o/r"),
            ("ghcr/o/r".into(), String::new())
        );
        assert_eq!(
            t.oci_route("quay.io", "o/r"),
            ("o/r".into(), "?ns=quay.io".into())
        );
        assert_eq!(human_bytes(12_595), "12.3 KiB");
    }

    #[test]
    fn the_bar_shows_progress_bytes_time_and_the_current_item() {
        let t = Duration::from_secs(75);
        assert_eq!(
            bar_line(0, 8, 0, Duration::ZERO, "npm a@1.0.0", 80),
            "[                        ] 0/8 0 B 0:00 npm a@1.0.0"
        );
        assert_eq!(
            bar_line(3, 8, 12_595, t, "oci x:1", 80),
            "[=========>              ] 3/8 12.3 KiB 1:15 oci x:1"
        );
        assert_eq!(
            bar_line(8, 8, 2 << 20, t, "", 80),
            "[========================] 8/8 2.0 MiB 1:15"
        );
        // Never wider than the terminal; a total that fell behind is not shown below done.
        let l = bar_line(9, 8, 0, t, &"x".repeat(200), 40);
        assert_eq!(l.chars().count(), 39);
        assert!(l.contains("] 9/9 "), "{l}");
    }
}
