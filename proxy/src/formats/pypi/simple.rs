//! The simple repository API as data: a project page ([`Page`]) parsed from whatever the
//! upstream served (PEP 691 JSON, preferred, or PEP 503 HTML), and rendered back as either,
//! with every file URL pointing at sluice.
//!
//! Parsing is tolerant (unknown JSON keys are kept and passed on, HTML is scanned for `<a>`
//! and `<meta>` tags only) but never trusts structure: anything malformed is skipped or
//! rejected with a message, nothing is indexed blindly.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};
use url::Url;

/// PEP 691 JSON.
pub const JSON: &str = "application/vnd.pypi.simple.v1+json";
/// PEP 691 HTML.
pub const HTML_V1: &str = "application/vnd.pypi.simple.v1+html";
/// PEP 503 HTML.
pub const HTML: &str = "text/html";

/// PEP 503 normalisation: runs of `-`, `_`, `.` become one `-`, lowercased.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep {
                out.push('-');
                sep = false;
            }
            out.extend(c.to_lowercase());
        }
    }
    if sep {
        out.push('-');
    }
    out
}

/// Whether `name` is a plausible normalised project name (what sluice will ask upstream for).
pub fn valid_normalized(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// PEP 592 yank state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Yanked {
    /// Not yanked.
    No,
    /// Yanked, with the reason if one was given.
    Yes(Option<String>),
}

/// One distribution file of a project page.
#[derive(Clone, Debug)]
pub struct FileEntry {
    /// File name as the upstream states it.
    pub filename: String,
    /// Where the upstream serves it (absolute, without fragment).
    pub url: Url,
    /// Hash name → lowercase hex.
    pub hashes: BTreeMap<String, String>,
    /// `requires-python`, unescaped.
    pub requires_python: Option<String>,
    /// PEP 658/714 core metadata: `None` when absent, else its hashes (possibly none).
    pub core_metadata: Option<BTreeMap<String, String>>,
    /// PEP 592.
    pub yanked: Yanked,
    /// Other keys of the upstream's JSON file object (`size`, `upload-time`, `gpg-sig`, ...),
    /// passed on unchanged.
    pub extra: Map<String, Value>,
}

impl FileEntry {
    /// The file's sha256 (lowercase hex), when the upstream gives one.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get("sha256").map(String::as_str)
    }
}

/// A project page.
#[derive(Clone, Debug)]
pub struct Page {
    /// Project name as the upstream writes it.
    pub name: String,
    /// The upstream's `meta` (`api-version`, ...).
    pub meta: Map<String, Value>,
    /// PEP 700 `versions`, when the upstream gives them.
    pub versions: Option<Vec<Value>>,
    /// The files.
    pub files: Vec<FileEntry>,
    /// Other top-level keys of the upstream's JSON (`project-status`, ...), passed on.
    pub extra: Map<String, Value>,
}

fn is_json(content_type: &str) -> bool {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    ct.eq_ignore_ascii_case(JSON) || ct.eq_ignore_ascii_case("application/json")
}

fn hex_ok(h: &str) -> bool {
    !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hashes_from(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(m)) = v {
        for (k, v) in m {
            if let Some(h) = v.as_str().filter(|h| hex_ok(h)) {
                out.insert(k.to_ascii_lowercase(), h.to_ascii_lowercase());
            }
        }
    }
    out
}

/// Parses an upstream project page. `page_url` resolves relative links.
pub fn parse_page(
    bytes: &[u8],
    content_type: &str,
    page_url: &Url,
    fallback_name: &str,
) -> Result<Page, String> {
    if is_json(content_type) {
        parse_json_page(bytes, page_url)
    } else {
        parse_html_page(bytes, page_url, fallback_name)
    }
}

fn parse_json_page(bytes: &[u8], page_url: &Url) -> Result<Page, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut top) = v else {
        return Err("project page is not a JSON object".into());
    };
    let name = match top.remove("name") {
        Some(Value::String(s)) => s,
        _ => return Err("project page has no name".into()),
    };
    let meta = match top.remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let versions = match top.remove("versions") {
        Some(Value::Array(a)) => Some(a),
        _ => None,
    };
    let files = match top.remove("files") {
        Some(Value::Array(a)) => a,
        _ => return Err("project page has no files list".into()),
    };
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let Value::Object(mut m) = f else { continue };
        let Some(Value::String(filename)) = m.remove("filename") else {
            continue;
        };
        let Some(Value::String(url)) = m.remove("url") else {
            continue;
        };
        let Ok(mut url) = page_url.join(&url) else {
            continue;
        };
        url.set_fragment(None);
        let hashes = hashes_from(m.remove("hashes").as_ref());
        let requires_python = match m.remove("requires-python") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        };
        // PEP 714's key, its HTML attribute's name, and PEP 691's original key (passed on
        // raw, it would break pip 22.3–23.1: rendered as the first two only).
        let cm = m.remove("core-metadata");
        let ddim = m.remove("data-dist-info-metadata");
        let dim = m.remove("dist-info-metadata");
        let core_metadata = match cm.or(ddim).or(dim) {
            Some(Value::Bool(true)) => Some(BTreeMap::new()),
            Some(v @ Value::Object(_)) => Some(hashes_from(Some(&v))),
            _ => None,
        };
        let yanked = match m.remove("yanked") {
            Some(Value::Bool(true)) => Yanked::Yes(None),
            Some(Value::String(s)) => Yanked::Yes(Some(s)),
            _ => Yanked::No,
        };
        // A provenance URL (PEP 740) points at the upstream itself; a client behind sluice
        // may not reach it, and sluice does not proxy it.
        if m.contains_key("provenance") {
            m.insert("provenance".into(), Value::Null);
        }
        out.push(FileEntry {
            filename,
            url,
            hashes,
            requires_python,
            core_metadata,
            yanked,
            extra: m,
        });
    }
    Ok(Page {
        name,
        meta,
        versions,
        files: out,
        extra: top,
    })
}

/// A tag found by the HTML scanner: lowercased name, attributes (names lowercased, values
/// entity-decoded), and for `<a>` the decoded text up to `</a>`.
struct Tag {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
}

impl Tag {
    fn attr(&self, n: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    }
}

/// Scans HTML for `<a>`, `<meta>` and `<base>` tags. Tolerant of anything else.
fn scan_tags(html: &str) -> Vec<Tag> {
    let b = html.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let start = i + off + 1;
        i = start;
        let name_end = html[start..]
            .find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
            .map(|n| start + n)
            .unwrap_or(html.len());
        let name = html[start..name_end].to_ascii_lowercase();
        if !matches!(name.as_str(), "a" | "meta" | "base") {
            continue;
        }
        // Attributes up to the closing '>' (quoted values may contain '>').
        let mut attrs = Vec::new();
        let mut j = name_end;
        loop {
            while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == b'/') {
                j += 1;
            }
            if j >= b.len() || b[j] == b'>' {
                break;
            }
            let an_start = j;
            while j < b.len() && !b[j].is_ascii_whitespace() && !matches!(b[j], b'=' | b'>' | b'/')
            {
                j += 1;
            }
            let an = html[an_start..j].to_ascii_lowercase();
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let mut val = String::new();
            if j < b.len() && b[j] == b'=' {
                j += 1;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
                    let q = b[j];
                    let vs = j + 1;
                    let ve = b[vs..]
                        .iter()
                        .position(|&c| c == q)
                        .map(|n| vs + n)
                        .unwrap_or(b.len());
                    val = unescape(&html[vs..ve]);
                    j = (ve + 1).min(b.len());
                } else {
                    let vs = j;
                    while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' {
                        j += 1;
                    }
                    val = unescape(&html[vs..j]);
                }
            }
            if an.is_empty() {
                // `=value` without a name: the value was consumed, move on.
                continue;
            }
            attrs.push((an, val));
        }
        let tag_end = (j + 1).min(html.len());
        let mut text = String::new();
        if name == "a" {
            let rest = &html[tag_end..];
            let lower_end = find_ci(rest, "</a").unwrap_or(rest.len());
            text = unescape(rest[..lower_end].trim());
            i = tag_end + lower_end;
        } else {
            i = tag_end;
        }
        out.push(Tag { name, attrs, text });
    }
    out
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    let n = needle.as_bytes();
    hay.as_bytes()
        .windows(n.len())
        .position(|w| w.eq_ignore_ascii_case(n))
}

/// Decodes the HTML character references an index page uses.
pub fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let Some(semi) = rest.as_bytes()[..rest.len().min(12)]
            .iter()
            .position(|&c| c == b';')
        else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..semi];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent.strip_prefix('#').and_then(|n| {
                let code = match n.strip_prefix('x').or_else(|| n.strip_prefix('X')) {
                    Some(h) => u32::from_str_radix(h, 16).ok(),
                    None => n.parse().ok(),
                };
                code.and_then(char::from_u32)
            }),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for an HTML attribute value or element content.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
}

fn parse_html_page(bytes: &[u8], page_url: &Url, fallback_name: &str) -> Result<Page, String> {
    let html = std::str::from_utf8(bytes).map_err(|_| "project page is not UTF-8".to_string())?;
    let tags = scan_tags(html);
    let mut base = page_url.clone();
    let mut meta = Map::new();
    meta.insert("api-version".into(), Value::String("1.0".into()));
    let mut files = Vec::new();
    let mut links = 0;
    for t in tags {
        match t.name.as_str() {
            "base" => {
                if let Some(u) = t.attr("href").and_then(|h| page_url.join(h).ok()) {
                    base = u;
                }
            }
            "meta" => {
                if t.attr("name") == Some("pypi:repository-version") {
                    if let Some(v) = t.attr("content") {
                        meta.insert("api-version".into(), Value::String(v.to_string()));
                    }
                }
            }
            _ => {
                let Some(href) = t.attr("href") else { continue };
                let Ok(mut url) = base.join(href) else {
                    continue;
                };
                let mut hashes = BTreeMap::new();
                if let Some((alg, h)) = url.fragment().and_then(|f| f.split_once('=')) {
                    if hex_ok(h) {
                        hashes.insert(alg.to_ascii_lowercase(), h.to_ascii_lowercase());
                    }
                }
                url.set_fragment(None);
                let filename = if t.text.is_empty() {
                    url.path_segments()
                        .and_then(|mut s| s.next_back())
                        .map(|s| {
                            percent_encoding::percent_decode_str(s)
                                .decode_utf8_lossy()
                                .into_owned()
                        })
                        .unwrap_or_default()
                } else {
                    t.text.clone()
                };
                if filename.is_empty() || filename.contains('/') {
                    continue; // `../`, `/`: navigation, not a file link
                }
                links += 1;
                // Only distribution files: an index's other links (a maintenance page's
                // "status") are not files to offer.
                if !is_distribution(&filename) {
                    continue;
                }
                let meta_attr = t
                    .attr("data-core-metadata")
                    .or_else(|| t.attr("data-dist-info-metadata"));
                let core_metadata = match meta_attr {
                    None | Some("false") => None,
                    Some(v) => {
                        let mut m = BTreeMap::new();
                        if let Some((alg, h)) = v.split_once('=') {
                            if hex_ok(h) {
                                m.insert(alg.to_ascii_lowercase(), h.to_ascii_lowercase());
                            }
                        }
                        Some(m)
                    }
                };
                let yanked = match t.attr("data-yanked") {
                    None => Yanked::No,
                    Some("") => Yanked::Yes(None),
                    Some(r) => Yanked::Yes(Some(r.to_string())),
                };
                let mut extra = Map::new();
                if let Some(g) = t.attr("data-gpg-sig") {
                    extra.insert("gpg-sig".into(), Value::Bool(g == "true"));
                }
                files.push(FileEntry {
                    filename,
                    url,
                    hashes,
                    requires_python: t
                        .attr("data-requires-python")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    core_metadata,
                    yanked,
                    extra,
                });
            }
        }
    }
    // Links, none to a distribution file: an error or maintenance page answered with a
    // 200, not a project page (refused like an upstream failure, so a cached page stays).
    if links > 0 && files.is_empty() {
        return Err(format!(
            "not a project page: none of its {links} links is a distribution file"
        ));
    }
    Ok(Page {
        name: fallback_name.to_string(),
        meta,
        versions: None,
        files,
        extra: Map::new(),
    })
}

/// Whether `filename` names a distribution file: a wheel, an sdist or one of the legacy
/// formats indexes still list (eggs, Windows installers, RPMs).
pub fn is_distribution(filename: &str) -> bool {
    const EXTENSIONS: [&str; 14] = [
        ".whl", ".tar.gz", ".tgz", ".zip", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar", ".egg",
        ".exe", ".msi", ".rpm", ".dmg",
    ];
    let lower = filename.to_ascii_lowercase();
    EXTENSIONS
        .iter()
        .any(|e| lower.len() > e.len() && lower.ends_with(e))
}

/// How a file is linked from sluice's pages: its URL below the mount, and the hash pip
/// checks (`#alg=hex`).
pub struct Link {
    /// Absolute URL on sluice (no fragment).
    pub url: String,
    /// `(alg, hex)` for the fragment.
    pub fragment: Option<(String, String)>,
}

/// Renders the PEP 503 HTML page. `link` gives sluice's URL for each file.
pub fn render_html(page: &Page, link: impl Fn(&FileEntry) -> Link) -> String {
    let mut s = String::with_capacity(256 + page.files.len() * 256);
    let api = page
        .meta
        .get("api-version")
        .and_then(Value::as_str)
        .unwrap_or("1.0");
    s.push_str(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"",
    );
    escape(api, &mut s);
    s.push_str("\">\n<title>Links for ");
    escape(&page.name, &mut s);
    s.push_str("</title>\n</head>\n<body>\n<h1>Links for ");
    escape(&page.name, &mut s);
    s.push_str("</h1>\n");
    for f in &page.files {
        let l = link(f);
        s.push_str("<a href=\"");
        escape(&l.url, &mut s);
        if let Some((alg, h)) = &l.fragment {
            let _ = write!(s, "#{alg}={h}");
        }
        s.push('"');
        if let Some(rp) = &f.requires_python {
            s.push_str(" data-requires-python=\"");
            escape(rp, &mut s);
            s.push('"');
        }
        if let Some(m) = &f.core_metadata {
            let v = m
                .get("sha256")
                .map(|h| format!("sha256={h}"))
                .or_else(|| m.iter().next().map(|(a, h)| format!("{a}={h}")))
                .unwrap_or_else(|| "true".into());
            let mut ev = String::new();
            escape(&v, &mut ev);
            let _ = write!(
                s,
                " data-dist-info-metadata=\"{ev}\" data-core-metadata=\"{ev}\""
            );
        }
        if let Some(Value::Bool(g)) = f.extra.get("gpg-sig") {
            let _ = write!(s, " data-gpg-sig=\"{g}\"");
        }
        if let Yanked::Yes(reason) = &f.yanked {
            s.push_str(" data-yanked=\"");
            if let Some(r) = reason {
                escape(r, &mut s);
            }
            s.push('"');
        }
        s.push('>');
        escape(&f.filename, &mut s);
        s.push_str("</a><br />\n");
    }
    s.push_str("</body>\n</html>\n");
    s
}

/// Renders the PEP 691 JSON page.
pub fn render_json(page: &Page, link: impl Fn(&FileEntry) -> Link) -> Vec<u8> {
    let mut top = page.extra.clone();
    top.insert("meta".into(), Value::Object(page.meta.clone()));
    top.insert("name".into(), Value::String(page.name.clone()));
    if let Some(v) = &page.versions {
        top.insert("versions".into(), Value::Array(v.clone()));
    }
    let files: Vec<Value> = page
        .files
        .iter()
        .map(|f| {
            let mut m = f.extra.clone();
            m.insert("filename".into(), Value::String(f.filename.clone()));
            m.insert("url".into(), Value::String(link(f).url));
            m.insert(
                "hashes".into(),
                Value::Object(
                    f.hashes
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
            );
            m.insert(
                "requires-python".into(),
                f.requires_python
                    .clone()
                    .map(Value::String)
                    .unwrap_or(Value::Null),
            );
            let cm = match &f.core_metadata {
                None => Value::Bool(false),
                Some(h) if h.is_empty() => Value::Bool(true),
                Some(h) => Value::Object(
                    h.iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
            };
            m.insert("core-metadata".into(), cm.clone());
            m.insert("data-dist-info-metadata".into(), cm);
            m.insert(
                "yanked".into(),
                match &f.yanked {
                    Yanked::No => Value::Bool(false),
                    Yanked::Yes(None) => Value::Bool(true),
                    Yanked::Yes(Some(r)) => Value::String(r.clone()),
                },
            );
            Value::Object(m)
        })
        .collect();
    top.insert("files".into(), Value::Array(files));
    serde_json::to_vec(&Value::Object(top)).unwrap_or_default()
}

/// The project names of an upstream index root (PEP 691 JSON `projects`, or the `<a>` texts
/// of the PEP 503 page).
pub fn parse_root(bytes: &[u8], content_type: &str) -> Result<Vec<String>, String> {
    if is_json(content_type) {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        let projects = v
            .get("projects")
            .and_then(Value::as_array)
            .ok_or("index root has no projects list")?;
        return Ok(projects
            .iter()
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
            .collect());
    }
    let html = std::str::from_utf8(bytes).map_err(|_| "index root is not UTF-8".to_string())?;
    // A fast path for the (very large) root page: only anchor texts matter.
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(p) = find_ci(rest, "<a ") {
        rest = &rest[p + 3..];
        let Some(gt) = rest.find('>') else { break };
        rest = &rest[gt + 1..];
        let end = find_ci(rest, "</a").unwrap_or(rest.len());
        let name = unescape(rest[..end].trim());
        if !name.is_empty() {
            out.push(name);
        }
        rest = &rest[end..];
    }
    Ok(out)
}

/// Renders the index root as PEP 503 HTML (links relative to `/<up>/simple/`).
pub fn render_root_html(names: &[String]) -> String {
    let mut s = String::with_capacity(names.len() * 48 + 200);
    s.push_str(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"1.0\">\n<title>Simple index</title>\n</head>\n<body>\n",
    );
    for n in names {
        s.push_str("<a href=\"");
        escape(&normalize(n), &mut s);
        s.push_str("/\">");
        escape(n, &mut s);
        s.push_str("</a>\n");
    }
    s.push_str("</body>\n</html>\n");
    s
}

/// Renders the index root as PEP 691 JSON.
pub fn render_root_json(names: &[String]) -> Vec<u8> {
    let projects: Vec<Value> = names
        .iter()
        .map(|n| serde_json::json!({ "name": n }))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "meta": { "api-version": "1.0" },
        "projects": projects,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://idx.test/simple/demo-pkg/").unwrap()
    }

    #[test]
    fn normalisation_follows_pep_503() {
        assert_eq!(normalize("Foo_Bar.baz--Qux"), "foo-bar-baz-qux");
        assert_eq!(normalize("six"), "six");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert!(valid_normalized("foo-bar"));
        assert!(!valid_normalized("Foo"));
        assert!(!valid_normalized("../x"));
        assert!(!valid_normalized(""));
    }

    #[test]
    fn an_html_page_without_distribution_links_is_not_a_project_page() {
        let url = Url::parse("http://idx/simple/demo/").unwrap();
        let maintenance = b"<html><body><h1>Down for maintenance</h1>\
            <a href=\"/status\">status</a> <a href=\"https://help.example/\">help</a></body></html>";
        let e = parse_page(maintenance, "text/html", &url, "demo").unwrap_err();
        assert!(e.contains("not a project page"), "{e}");
        let mixed = b"<a href=\"../\">../</a><a href=\"demo-1.0-py3-none-any.whl#sha256=aa\">demo-1.0-py3-none-any.whl</a>\
            <a href=\"demo-1.0.tar.gz\">demo-1.0.tar.gz</a><a href=\"README\">README</a>";
        let page = parse_page(mixed, "text/html", &url, "demo").unwrap();
        let names: Vec<_> = page.files.iter().map(|f| f.filename.as_str()).collect();
        assert_eq!(names, ["demo-1.0-py3-none-any.whl", "demo-1.0.tar.gz"]);
        // No links at all, or only navigation: a project with no files.
        for empty in [
            &b"<html><body><h1>Links for demo</h1></body></html>"[..],
            &b"<a href=\"../\">../</a>"[..],
        ] {
            assert!(parse_page(empty, "text/html", &url, "demo")
                .unwrap()
                .files
                .is_empty());
        }
        assert!(is_distribution("Demo-1.0.WIN32.EXE") && !is_distribution(".whl"));
    }

    #[test]
    fn html_page_parses_hashes_yanked_metadata_and_relative_links() {
        let html = r#"<!DOCTYPE html><html><head><meta name="pypi:repository-version" content="1.1"></head><body>
<a href="../../files/demo_pkg-1.0-py3-none-any.whl#sha256=ABCDEF01" data-requires-python="&gt;=3.8" data-dist-info-metadata="sha256=0123abcd" data-yanked="broken &amp; bad">demo_pkg-1.0-py3-none-any.whl</a><br/>
<A HREF='https://other.test/x/demo-pkg-0.9.tar.gz#md5=00ff' data-yanked>demo-pkg-0.9.tar.gz</A>
</body></html>"#;
        let p = parse_page(html.as_bytes(), "text/html", &base(), "demo-pkg").unwrap();
        assert_eq!(p.meta["api-version"], "1.1");
        assert_eq!(p.files.len(), 2);
        let f = &p.files[0];
        assert_eq!(
            f.url.as_str(),
            "http://idx.test/files/demo_pkg-1.0-py3-none-any.whl"
        );
        assert_eq!(f.sha256(), Some("abcdef01"));
        assert_eq!(f.requires_python.as_deref(), Some(">=3.8"));
        assert_eq!(
            f.core_metadata.as_ref().unwrap().get("sha256").unwrap(),
            "0123abcd"
        );
        assert_eq!(f.yanked, Yanked::Yes(Some("broken & bad".into())));
        let g = &p.files[1];
        assert_eq!(g.hashes.get("md5").unwrap(), "00ff");
        assert_eq!(g.yanked, Yanked::Yes(None));
        assert!(g.core_metadata.is_none());
    }

    #[test]
    fn json_page_round_trips_with_rewritten_urls_and_escaped_html() {
        let json = serde_json::json!({
            "meta": {"api-version": "1.1", "_last-serial": 7},
            "name": "Demo-Pkg",
            "versions": ["1.0"],
            "files": [{
                "filename": "demo_pkg-1.0.tar.gz",
                "url": "https://files.test/p/demo_pkg-1.0.tar.gz",
                "hashes": {"sha256": "aa"},
                "requires-python": ">=3.8,<4",
                "core-metadata": {"sha256": "bb"},
                "yanked": "oops <b>",
                "size": 42,
                "upload-time": "2024-01-01T00:00:00Z"
            }]
        });
        let p = parse_page(
            &serde_json::to_vec(&json).unwrap(),
            "application/vnd.pypi.simple.v1+json",
            &base(),
            "demo-pkg",
        )
        .unwrap();
        let link = |f: &FileEntry| Link {
            url: format!(
                "http://sluice/pypi/files/sha256/{}/{}",
                f.sha256().unwrap(),
                f.filename
            ),
            fragment: Some(("sha256".into(), f.sha256().unwrap().into())),
        };
        let html = render_html(&p, link);
        assert!(html
            .contains("href=\"http://sluice/pypi/files/sha256/aa/demo_pkg-1.0.tar.gz#sha256=aa\""));
        assert!(
            html.contains("data-requires-python=\"&gt;=3.8,&lt;4\""),
            "{html}"
        );
        assert!(html.contains("data-core-metadata=\"sha256=bb\""));
        assert!(html.contains("data-yanked=\"oops &lt;b&gt;\""));
        // What sluice renders, sluice (and pip) parse back the same.
        let again = parse_page(html.as_bytes(), "text/html", &base(), "Demo-Pkg").unwrap();
        assert_eq!(again.files[0].requires_python.as_deref(), Some(">=3.8,<4"));
        assert_eq!(again.files[0].yanked, Yanked::Yes(Some("oops <b>".into())));
        let out: Value = serde_json::from_slice(&render_json(&p, link)).unwrap();
        let f = &out["files"][0];
        assert_eq!(
            f["url"],
            "http://sluice/pypi/files/sha256/aa/demo_pkg-1.0.tar.gz"
        );
        assert_eq!(f["size"], 42);
        assert_eq!(f["upload-time"], "2024-01-01T00:00:00Z");
        assert_eq!(f["yanked"], "oops <b>");
        assert_eq!(f["core-metadata"]["sha256"], "bb");
        assert_eq!(out["versions"][0], "1.0");
        assert_eq!(out["meta"]["_last-serial"], 7);
    }

    #[test]
    fn the_original_pep_691_metadata_key_is_read_and_rendered_as_pep_714s() {
        let json = serde_json::json!({
            "meta": {"api-version": "1.0"},
            "name": "demo",
            "files": [{
                "filename": "demo-1.0-py3-none-any.whl",
                "url": "https://files.test/p/demo-1.0-py3-none-any.whl",
                "hashes": {"sha256": "aa"},
                "dist-info-metadata": {"sha256": "cc"}
            }]
        });
        let p = parse_page(&serde_json::to_vec(&json).unwrap(), JSON, &base(), "demo").unwrap();
        let cm = p.files[0]
            .core_metadata
            .as_ref()
            .expect("core metadata kept");
        assert_eq!(cm.get("sha256").map(String::as_str), Some("cc"));
        let link = |f: &FileEntry| Link {
            url: format!("http://sluice/pypi/files/sha256/aa/{}", f.filename),
            fragment: None,
        };
        let out: Value = serde_json::from_slice(&render_json(&p, link)).unwrap();
        let f = out["files"][0].as_object().unwrap();
        assert!(!f.contains_key("dist-info-metadata"), "{f:?}");
        assert_eq!(f["core-metadata"]["sha256"], "cc");
        assert_eq!(f["data-dist-info-metadata"]["sha256"], "cc");
        assert!(render_html(&p, link).contains("data-core-metadata=\"sha256=cc\""));
    }

    #[test]
    fn root_parses_from_html_and_json() {
        let html = "<html><body><a href=\"/simple/six/\">six</a>\n<a href=\"x\">Zope.Interface</a></body></html>";
        let names = parse_root(html.as_bytes(), "text/html").unwrap();
        assert_eq!(names, vec!["six", "Zope.Interface"]);
        let r = render_root_html(&names);
        assert!(r.contains("<a href=\"zope-interface/\">Zope.Interface</a>"));
        let j = br#"{"meta":{"api-version":"1.0"},"projects":[{"name":"a"},{"name":"B"}]}"#;
        assert_eq!(parse_root(j, JSON).unwrap(), vec!["a", "B"]);
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "<",
            "<a",
            "<a href=",
            "<a href='x",
            "&#xZZ;",
            "&",
            "<a href=x>y",
            "<meta",
        ] {
            let _ = parse_page(s.as_bytes(), "text/html", &base(), "x");
            let _ = parse_root(s.as_bytes(), "text/html");
            let _ = unescape(s);
        }
        assert!(parse_page(b"[]", JSON, &base(), "x").is_err());
    }
}
