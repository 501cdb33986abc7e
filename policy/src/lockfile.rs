//! Lockfiles and image lists read by `sluice policy check` (and later `sluice warm`):
//! `package-lock.json` (v1, v2, v3), `requirements.txt` (pinned), `pylock.toml` (PEP 751)
//! `Cargo.lock` (registry packages) and image lists (one reference per line). Parsing only: what each names, as entries the
//! engine can evaluate offline.

use std::path::Path;

use crate::Ecosystem;

/// One artifact a lockfile names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// npm, PyPI, Cargo or OCI.
    pub ecosystem: Ecosystem,
    /// Package name or repository (OCI: without registry host).
    pub name: String,
    /// Pinned version (OCI: tag); `None` when the file does not pin one.
    pub version: Option<String>,
    /// OCI digest, if the reference pins one.
    pub digest: Option<String>,
    /// OCI registry host (`docker.io` when absent).
    pub registry: Option<String>,
    /// SPDX expression, when the lockfile records one (npm v2+ `license`).
    pub license: Option<String>,
    /// npm `hasInstallScript`.
    pub has_install_script: bool,
    /// Where in the file (line number, or lockfile key).
    pub location: String,
}

impl Entry {
    fn new(ecosystem: Ecosystem, name: &str, version: Option<&str>, location: String) -> Entry {
        Entry {
            ecosystem,
            name: name.to_string(),
            version: version.map(str::to_string),
            digest: None,
            registry: None,
            license: None,
            has_install_script: false,
            location,
        }
    }
}

/// What a file names, and the lines of it that could not be read (each a warning, with
/// its file and line).
#[derive(Debug, Default)]
pub struct Read {
    /// The artifacts, in file order (an included requirements file's after its includer's).
    pub entries: Vec<Entry>,
    /// Lines skipped because they could not be read or are not checked (URLs, editables,
    /// unknown options): `file: line N: why`.
    pub warnings: Vec<String>,
}

/// How deep `-r`/`-c` includes may nest.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Reads a lockfile or image list (see [`read_with_warnings`]) and prints each warning on
/// stderr, for the command-line tools (`sluice policy check`, `sluice warm`).
pub fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let r = read_with_warnings(path)?;
    for w in &r.warnings {
        eprintln!("sluice: warning: {w}");
    }
    Ok(r.entries)
}

/// Reads a lockfile or image list. The parser is chosen by name: `*.json` is an npm
/// lockfile, `pylock*.toml` a PEP 751 lock, `*requirements*.txt`, `*constraints*.txt`,
/// `*.in` and `requirements/*.txt` are pip requirements files (whose `-r`/`-c` includes are
/// followed, relative to the including file); any other file is an image list unless its
/// content says otherwise (some line is a requirement that is not an image reference, and
/// none is an image reference that is not a requirement).
pub fn read_with_warnings(path: &Path) -> Result<Read, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut out = Read::default();
    let at = |e: String| format!("{}: {e}", path.display());
    if name.ends_with(".json") {
        out.entries = parse_package_lock(&text).map_err(at)?;
    } else if name == "Cargo.lock" {
        out.entries = parse_cargo_lock(&text).map_err(at)?;
    } else if name.starts_with("pylock.") && name.ends_with(".toml") {
        out.entries = parse_pylock(&text).map_err(at)?;
    } else if is_requirements_name(path) || looks_like_requirements(&text) {
        let mut stack = Vec::new();
        let mut seen = std::collections::HashSet::new();
        read_requirements(path, &text, path, &mut stack, &mut seen, &mut out)?;
    } else {
        let parsed = parse_images(&text);
        out.entries = parsed.entries;
        out.warnings = parsed.warnings.into_iter().map(at).collect();
    }
    Ok(out)
}

/// pip's own naming habits: `requirements.txt`, `requirements-dev.txt`,
/// `dev-requirements.txt`, `constraints.txt`, `requirements.in` (pip-tools),
/// `requirements/prod.txt`.
fn is_requirements_name(path: &Path) -> bool {
    let lower = |p: Option<&std::ffi::OsStr>| p.and_then(|n| n.to_str()).map(str::to_lowercase);
    let name = lower(path.file_name()).unwrap_or_default();
    let dir = lower(path.parent().and_then(|p| p.file_name())).unwrap_or_default();
    let txt = name.ends_with(".txt");
    (txt && (name.contains("requirement") || name.contains("constraint")))
        || name.ends_with(".in")
        || (txt && (dir == "requirements" || dir == "constraints"))
}

/// Whether a file not named like a requirements file reads as one: some line is only a
/// requirement (or a pip option) and no line is only an image reference.
fn looks_like_requirements(text: &str) -> bool {
    let (mut req_only, mut image_only) = (0, 0);
    for raw in text.lines() {
        let line = strip_comment(raw).trim();
        if line.is_empty() || line.ends_with('\\') {
            continue;
        }
        let req = line.starts_with('-') || matches!(requirement(line), Ok(Some(_)));
        let image = parse_image_ref(line).is_ok();
        match (req, image) {
            (true, false) => req_only += 1,
            (false, true) => image_only += 1,
            _ => {}
        }
    }
    req_only > 0 && image_only == 0
}

/// Reads the requirements file `path` (with `text`) into `out`, then the files it includes.
/// `top` is the file named on the command line, `stack` the includes being read (for the
/// cycle and depth checks), `seen` every file read (a file included twice is read once).
fn read_requirements(
    path: &Path,
    text: &str,
    top: &Path,
    stack: &mut Vec<std::path::PathBuf>,
    seen: &mut std::collections::HashSet<std::path::PathBuf>,
    out: &mut Read,
) -> Result<(), String> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    seen.insert(canonical.clone());
    stack.push(canonical);
    let parsed = parse_requirements(text);
    let prefix = if path == top {
        String::new()
    } else {
        format!("{} ", path.display())
    };
    out.entries.extend(parsed.entries.into_iter().map(|mut e| {
        e.location = format!("{prefix}{}", e.location);
        e
    }));
    out.warnings.extend(
        parsed
            .warnings
            .into_iter()
            .map(|w| format!("{}: {w}", path.display())),
    );
    for inc in parsed.includes {
        let here = format!(
            "{}: line {}: {} {}",
            path.display(),
            inc.line,
            inc.option,
            inc.target
        );
        if inc.target.contains("://") {
            out.warnings.push(format!(
                "{here}: not followed (only local files are read); not checked"
            ));
            continue;
        }
        let target = path.parent().unwrap_or(Path::new("")).join(&inc.target);
        let canonical = std::fs::canonicalize(&target)
            .map_err(|e| format!("{here}: {}: {e}", target.display()))?;
        if !include_allowed(&canonical, top) {
            return Err(format!(
                "{here}: {} is outside the directory of {} and the current directory: \
                 includes are read only below them (a requirements file from a pull request \
                 must not make the check read, and print, any file on the machine)",
                canonical.display(),
                top.display()
            ));
        }
        if let Some(i) = stack.iter().position(|p| *p == canonical) {
            let cycle: Vec<String> = stack[i..]
                .iter()
                .chain([&canonical])
                .map(|p| p.display().to_string())
                .collect();
            return Err(format!("{here}: include cycle: {}", cycle.join(" -> ")));
        }
        if seen.contains(&canonical) {
            continue;
        }
        if stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(format!(
                "{here}: includes nested more than {MAX_INCLUDE_DEPTH} deep"
            ));
        }
        let text = std::fs::read_to_string(&target)
            .map_err(|e| format!("{here}: {}: {e}", target.display()))?;
        read_requirements(&target, &text, top, stack, seen, out)?;
    }
    stack.pop();
    Ok(())
}

/// Whether an include may be read: below the directory of the file named on the command
/// line, or below the current directory (a monorepo's shared requirements).
fn include_allowed(canonical: &Path, top: &Path) -> bool {
    let roots = [
        std::fs::canonicalize(top)
            .ok()
            .and_then(|t| t.parent().map(Path::to_path_buf)),
        std::env::current_dir()
            .ok()
            .and_then(|d| std::fs::canonicalize(d).ok()),
    ];
    roots
        .iter()
        .flatten()
        .any(|root| root != Path::new("/") && canonical.starts_with(root))
}

/// `package-lock.json` / `npm-shrinkwrap.json`, lockfileVersion 1, 2 or 3.
pub fn parse_package_lock(text: &str) -> Result<Vec<Entry>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = Vec::new();
    if let Some(pkgs) = v.get("packages").and_then(|p| p.as_object()) {
        for (key, meta) in pkgs {
            let Some(idx) = key.rfind("node_modules/") else {
                continue;
            };
            if meta.get("link").and_then(|l| l.as_bool()) == Some(true) {
                continue;
            }
            let name = meta
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or(&key[idx + "node_modules/".len()..]);
            let version = meta.get("version").and_then(|v| v.as_str());
            let mut e = Entry::new(Ecosystem::Npm, name, version, key.clone());
            e.license = meta
                .get("license")
                .and_then(|l| l.as_str())
                .map(str::to_string);
            e.has_install_script =
                meta.get("hasInstallScript").and_then(|h| h.as_bool()) == Some(true);
            out.push(e);
        }
        return Ok(out);
    }
    fn walk(deps: &serde_json::Map<String, serde_json::Value>, path: &str, out: &mut Vec<Entry>) {
        for (name, meta) in deps {
            let loc = format!("{path}{name}");
            let version = meta.get("version").and_then(|v| v.as_str());
            // v1 aliases: "version": "npm:real-name@1.2.3"
            let (real, version) = match version.and_then(|v| v.strip_prefix("npm:")) {
                Some(alias) => match alias.rsplit_once('@') {
                    Some((n, v)) if !n.is_empty() => (n.to_string(), Some(v)),
                    _ => (name.clone(), version),
                },
                None => (name.clone(), version),
            };
            out.push(Entry::new(Ecosystem::Npm, &real, version, loc.clone()));
            if let Some(sub) = meta.get("dependencies").and_then(|d| d.as_object()) {
                walk(sub, &format!("{loc} > "), out);
            }
        }
    }
    if let Some(deps) = v.get("dependencies").and_then(|d| d.as_object()) {
        walk(deps, "", &mut out);
        return Ok(out);
    }
    Err("neither \"packages\" nor \"dependencies\": not an npm lockfile".into())
}

/// What one file says, before includes are followed.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The artifacts named.
    pub entries: Vec<Entry>,
    /// `line N: why` for each line skipped.
    pub warnings: Vec<String>,
    /// `-r` / `-c` lines, to be read relative to the file.
    pub includes: Vec<Include>,
}

/// A `-r FILE` / `-c FILE` line of a requirements file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// Line number.
    pub line: usize,
    /// The option as written (`-r`, `--constraint`, ...).
    pub option: String,
    /// The file (or URL) named.
    pub target: String,
}

/// pip options a requirements file may carry that name no package.
const PIP_GLOBAL_OPTIONS: &[&str] = &[
    "-i",
    "--index-url",
    "--extra-index-url",
    "--no-index",
    "-f",
    "--find-links",
    "--pre",
    "--prefer-binary",
    "--require-hashes",
    "--only-binary",
    "--no-binary",
    "--trusted-host",
    "--use-feature",
    "--config-settings",
    "--hash",
];

/// A requirements-file comment: `#` at the start or after whitespace.
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// `requirements.txt` / `constraints.txt` (pip's format): `name==version` lines (extras,
/// markers, `--hash` options and line continuations allowed), `-r`/`-c` includes (returned,
/// not followed), pip's global options (ignored). Unpinned requirements are returned without
/// a version; URL, path and editable requirements, unknown options and unreadable lines are
/// warnings.
pub fn parse_requirements(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut logical = String::new();
    let mut start_line = 0;
    for (i, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start_line = i + 1;
        }
        let line = strip_comment(raw);
        if let Some(cont) = line.trim_end().strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let req = std::mem::take(&mut logical);
        let req = req.trim();
        if req.is_empty() {
            continue;
        }
        // The line itself is not repeated: it may be anything (a secret, if the file is not
        // what it claims), and warnings go to CI logs.
        let warn = |why: &str| format!("line {start_line}: {why}; not checked");
        if req.starts_with('-') {
            let (opt, arg) = split_option(req);
            match opt {
                "-r" | "--requirement" | "-c" | "--constraint" if !arg.is_empty() => {
                    out.includes.push(Include {
                        line: start_line,
                        option: opt.to_string(),
                        target: arg.to_string(),
                    })
                }
                "-e" | "--editable" => out
                    .warnings
                    .push(warn("an editable requirement (a path or VCS URL)")),
                o if PIP_GLOBAL_OPTIONS.contains(&o) => {}
                _ => out.warnings.push(warn("not a pip option sluice knows")),
            }
            continue;
        }
        match requirement(req) {
            Ok(Some((name, version))) => out.entries.push(Entry::new(
                Ecosystem::Pypi,
                name,
                version,
                format!("line {start_line}"),
            )),
            Ok(None) => out
                .warnings
                .push(warn("a URL or path, not a named requirement")),
            Err(why) => out.warnings.push(warn(&why)),
        }
    }
    out
}

/// `-r file`, `-rfile`, `--requirement file`, `--requirement=file` → (option, argument).
fn split_option(line: &str) -> (&str, &str) {
    let (opt, arg) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
        Some((o, a)) => (o, a.trim()),
        None => (line, ""),
    };
    if !opt.starts_with("--") && opt.len() > 2 {
        // Short option glued to its argument.
        return (&line[..2], line[2..].trim());
    }
    (opt, arg)
}

/// One PEP 508 requirement: its name and its pinned (`==` / `===`, no wildcard) version.
/// `Ok(None)`: a URL or path (nothing named to check); `Err`: not a requirement.
fn requirement(req: &str) -> Result<Option<(&str, Option<&str>)>, String> {
    // Per-requirement options (`--hash=...`) and markers are not part of what is named.
    let spec = req.split(" --").next().unwrap_or("");
    let spec = spec.split(';').next().unwrap_or("").trim();
    let first = spec.split_whitespace().next().unwrap_or("");
    if first.contains("://")
        || first.starts_with(['.', '/', '~'])
        || [".whl", ".zip", ".tar.gz", ".tgz"]
            .iter()
            .any(|ext| first.ends_with(ext))
    {
        return Ok(None);
    }
    let name_end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .unwrap_or(spec.len());
    let name = &spec[..name_end];
    let bad = || "not a requirement (expected e.g. name==1.0)".to_string();
    // PEP 508: letters/digits at both ends, `-_.` inside.
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(bad());
    }
    let rest = spec[name_end..].trim();
    let rest = match rest.strip_prefix('[') {
        Some(r) => r.split_once(']').ok_or_else(bad)?.1.trim(),
        None => rest,
    };
    if rest.starts_with('@') {
        return Ok(Some((name, None))); // name @ URL: the name is checked
    }
    let rest = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(rest)
        .trim();
    if !(rest.is_empty() || rest.starts_with(['<', '>', '=', '!', '~'])) {
        return Err(bad());
    }
    let version = rest
        .strip_prefix("===")
        .or_else(|| rest.strip_prefix("=="))
        .map(|v| v.trim())
        .filter(|v| !v.is_empty() && !v.contains('*') && !v.contains(','));
    Ok(Some((name, version)))
}

/// `Cargo.lock`: the `[[package]]` entries that come from a registry (`source =
/// "registry+..."` or `"sparse+..."`); path and git dependencies are not fetched from one.
pub fn parse_cargo_lock(text: &str) -> Result<Vec<Entry>, String> {
    let v: toml::Value = toml::from_str(text).map_err(|e| format!("not TOML: {e}"))?;
    let pkgs = v
        .get("package")
        .and_then(|p| p.as_array())
        .ok_or("no [[package]]: not a Cargo.lock file")?;
    Ok(pkgs
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let source = p.get("source")?.as_str()?;
            if !(source.starts_with("registry+") || source.starts_with("sparse+")) {
                return None;
            }
            let name = p.get("name")?.as_str()?;
            let version = p.get("version").and_then(|v| v.as_str());
            Some(Entry::new(
                Ecosystem::Cargo,
                name,
                version,
                format!("package[{i}]"),
            ))
        })
        .collect())
}

/// PEP 751 `pylock.toml`: `[[packages]]` with `name` and `version`.
pub fn parse_pylock(text: &str) -> Result<Vec<Entry>, String> {
    let v: toml::Value = toml::from_str(text).map_err(|e| format!("not TOML: {e}"))?;
    let pkgs = v
        .get("packages")
        .and_then(|p| p.as_array())
        .ok_or("no [[packages]]: not a pylock file")?;
    Ok(pkgs
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let name = p.get("name")?.as_str()?;
            let version = p.get("version").and_then(|v| v.as_str());
            Some(Entry::new(
                Ecosystem::Pypi,
                name,
                version,
                format!("packages[{i}]"),
            ))
        })
        .collect())
}

/// Image references, one per line (`#` comments): `[registry/]repo[:tag][@sha256:...]`. A
/// line that is not a valid reference is a warning.
pub fn parse_images(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match parse_image_ref(line) {
            Ok(e) => out.entries.push(e.with_location(i + 1)),
            Err(e) => out
                .warnings
                .push(format!("line {}: {e}; not checked", i + 1)),
        }
    }
    out
}

impl Entry {
    fn with_location(mut self, line: usize) -> Entry {
        self.location = format!("line {line}");
        self
    }
}

/// One image reference, Docker's way: the first component is a registry when it has a
/// `.` or `:` or is `localhost`; Docker Hub single names get `library/`.
pub fn parse_image_ref(r: &str) -> Result<Entry, String> {
    if r.contains(char::is_whitespace) {
        return Err("invalid image reference: it has white space".to_string());
    }
    let (rest, digest) = match r.split_once('@') {
        Some((a, d)) => (a, Some(d.to_string())),
        None => (r, None),
    };
    let (registry, path) = match rest.split_once('/') {
        Some((first, tail))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), tail)
        }
        _ => ("docker.io".to_string(), rest),
    };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t)),
        _ => (path, None),
    };
    let invalid = |why: &str| Err(format!("invalid image reference: {why}"));
    if repo.is_empty() || !repo.split('/').all(valid_path_component) {
        return invalid("the repository must be lowercase letters, digits and separators");
    }
    if rest.len() != path.len() && !valid_registry(&registry) {
        return invalid("bad registry host");
    }
    if tag.is_some_and(|t| !valid_tag(t)) {
        return invalid("a tag is up to 128 letters, digits, '_', '.' or '-'");
    }
    if digest.as_deref().is_some_and(|d| !valid_digest(d)) {
        return invalid("a digest is algorithm:hex, e.g. sha256:...");
    }
    let repo = if registry == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_string()
    };
    let tag = match (tag, &digest) {
        (None, None) => Some("latest"),
        (t, _) => t,
    };
    let mut e = Entry::new(Ecosystem::Oci, &repo, tag, String::new());
    e.digest = digest;
    e.registry = Some(registry);
    Ok(e)
}

/// A repository path component (distribution's reference grammar):
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let sep = b[i..].iter().take_while(|x| !alnum(**x)).count();
        let s = &c[i..i + sep];
        if !(s == "." || s == "_" || s == "__" || s.bytes().all(|x| x == b'-')) {
            return false;
        }
        i += sep;
    }
    true
}

/// `host[:port]`: DNS labels, or `[IPv6]`.
fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (h, Some(p)),
        _ => (r, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// `algorithm:encoded`, e.g. `sha256:<hex>`.
fn valid_digest(d: &str) -> bool {
    d.split_once(':').is_some_and(|(alg, enc)| {
        alg.starts_with(|c: char| c.is_ascii_alphabetic())
            && alg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+.-_".contains(&b))
            && !enc.is_empty()
            && enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lock_v3_lists_nested_and_scoped_packages() {
        let lock = r#"{"lockfileVersion":3,"packages":{
            "":{"name":"app","version":"1.0.0"},
            "node_modules/@scope/a":{"version":"1.2.3","license":"MIT"},
            "node_modules/b":{"version":"2.0.0","hasInstallScript":true},
            "node_modules/b/node_modules/c":{"version":"0.1.0"},
            "node_modules/linked":{"link":true,"resolved":"../x"}}}"#;
        let e = parse_package_lock(lock).unwrap();
        let names: Vec<_> = e
            .iter()
            .map(|e| (e.name.as_str(), e.version.as_deref()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("@scope/a", Some("1.2.3")),
                ("b", Some("2.0.0")),
                ("c", Some("0.1.0"))
            ]
        );
        assert_eq!(e[0].license.as_deref(), Some("MIT"));
        assert!(e[1].has_install_script);
    }

    #[test]
    fn package_lock_v1_walks_dependencies_and_aliases() {
        let lock = r#"{"lockfileVersion":1,"dependencies":{
            "a":{"version":"1.0.0","dependencies":{"b":{"version":"2.0.0"}}},
            "alias":{"version":"npm:real@3.0.0"}}}"#;
        let e = parse_package_lock(lock).unwrap();
        let names: Vec<_> = e
            .iter()
            .map(|e| (e.name.as_str(), e.version.as_deref()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("a", Some("1.0.0")),
                ("b", Some("2.0.0")),
                ("real", Some("3.0.0"))
            ]
        );
    }

    #[test]
    fn requirements_pins_extras_markers_hashes_and_continuations() {
        let req = "# comment\nrequests[socks]==2.31.0 ; python_version >= \"3.8\" \\\n    --hash=sha256:abc\nsix==1.16.0  # trailing\n-i https://example.invalid/simple\nflask>=2\nidna===3.4\n";
        let parsed = parse_requirements(req);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        let e = parsed.entries;
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.name.as_str(), e.version.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("requests", Some("2.31.0")),
                ("six", Some("1.16.0")),
                ("flask", None),
                ("idna", Some("3.4"))
            ]
        );
        assert_eq!(e[1].location, "line 4");
    }

    #[test]
    fn image_references_follow_docker_naming() {
        let parsed = parse_images(
            "alpine\nghcr.io/o/i:1.0\nlocalhost:5000/x@sha256:00\n# c\nlibrary/nginx:1.25",
        );
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        let e = parsed.entries;
        let got: Vec<_> = e
            .iter()
            .map(|e| {
                (
                    e.registry.as_deref().unwrap(),
                    e.name.as_str(),
                    e.version.as_deref(),
                    e.digest.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("docker.io", "library/alpine", Some("latest"), None),
                ("ghcr.io", "o/i", Some("1.0"), None),
                ("localhost:5000", "x", None, Some("sha256:00")),
                ("docker.io", "library/nginx", Some("1.25"), None),
            ]
        );
    }

    #[test]
    fn pylock_lists_packages() {
        let t = "lock-version = \"1.0\"\n[[packages]]\nname = \"six\"\nversion = \"1.16.0\"\n[[packages]]\nname = \"idna\"\nversion = \"3.7\"\n";
        let e = parse_pylock(t).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, "idna");
    }

    #[test]
    fn cargo_lock_lists_registry_packages_only() {
        let t = r#"version = 4

[[package]]
name = "itoa"
version = "1.0.11"
source = "registry+https://example.invalid/index"
checksum = "49f1f14873335454500d59611f1cf4a4b0f786f9ac11f4312a78e4cf2566695b"

[[package]]
name = "mine"
version = "0.1.0"

[[package]]
name = "forked"
version = "0.2.0"
source = "git+https://example.invalid/forked#abc"

[[package]]
name = "serde_json"
version = "1.0.120"
source = "sparse+https://example.invalid/index/"
"#;
        let e = parse_cargo_lock(t).unwrap();
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.ecosystem, e.name.as_str(), e.version.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (Ecosystem::Cargo, "itoa", Some("1.0.11")),
                (Ecosystem::Cargo, "serde_json", Some("1.0.120")),
            ]
        );
        assert_eq!(e[1].location, "package[3]");
        assert!(parse_cargo_lock("[[packages]]\nname = \"x\"\n").is_err());
        // Chosen by file name.
        let dir = tempfile::tempdir().unwrap();
        let r = read_with_warnings(&write(dir.path(), "Cargo.lock", t)).unwrap();
        assert_eq!(r.entries, e);
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn names(r: &Read) -> Vec<(String, Option<String>, String)> {
        r.entries
            .iter()
            .map(|e| (e.name.clone(), e.version.clone(), e.location.clone()))
            .collect()
    }

    #[test]
    fn requirement_includes_are_followed_relative_to_the_including_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "requirements/base.txt",
            "six==1.16.0\n-c ../constraints.txt\n",
        );
        write(d, "constraints.txt", "idna==3.7\n");
        write(
            d,
            "requirements/dev.txt",
            "--requirement=base.txt\npytest==8.0.0\n",
        );
        let top = write(
            d,
            "requirements.txt",
            "requests==2.31.0\n-r requirements/base.txt\n-rrequirements/dev.txt\n",
        );
        let r = read_with_warnings(&top).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let got = names(&r);
        let base = d.join("requirements/base.txt").display().to_string();
        let cons = d
            .join("requirements/../constraints.txt")
            .display()
            .to_string();
        let dev = d.join("requirements/dev.txt").display().to_string();
        assert_eq!(
            got,
            vec![
                ("requests".into(), Some("2.31.0".into()), "line 1".into()),
                (
                    "six".into(),
                    Some("1.16.0".into()),
                    format!("{base} line 1")
                ),
                ("idna".into(), Some("3.7".into()), format!("{cons} line 1")),
                (
                    "pytest".into(),
                    Some("8.0.0".into()),
                    format!("{dev} line 2")
                ),
            ],
            "base.txt is read once although dev.txt includes it too"
        );
    }

    #[test]
    fn includes_outside_the_files_directory_are_refused_and_odd_lines_are_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let top = write(d, "requirements.txt", "six==1.16.0\n-r /etc/passwd\n");
        let e = read_with_warnings(&top).unwrap_err();
        assert!(e.contains("/etc/passwd is outside"), "{e}");
        let top = write(
            d,
            "sub/requirements.txt",
            "-r ../../../../../../etc/passwd\n",
        );
        assert!(read_with_warnings(&top).unwrap_err().contains("is outside"));
        let top = write(d, "requirements.txt", "??s3cr3t-t0ken\n-e s3cr3t-path\n");
        let r = read_with_warnings(&top).unwrap();
        assert_eq!(r.warnings.len(), 2);
        assert!(
            r.warnings
                .iter()
                .all(|w| !w.contains("s3cr3t") && w.contains("line ")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn a_missing_include_or_an_include_cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let top = write(d, "requirements.txt", "six==1.16.0\n-r nope.txt\n");
        let e = read_with_warnings(&top).unwrap_err();
        assert!(
            e.contains("requirements.txt: line 2: -r nope.txt") && e.contains("nope.txt"),
            "{e}"
        );
        write(d, "a-requirements.txt", "-r b-requirements.txt\n");
        write(d, "b-requirements.txt", "-c a-requirements.txt\n");
        let e = read_with_warnings(&d.join("a-requirements.txt")).unwrap_err();
        assert!(e.contains("include cycle"), "{e}");
        // A chain deeper than the bound.
        for i in 0..20 {
            write(
                d,
                &format!("deep/r{i}.txt"),
                &format!("-r r{}.txt\n", i + 1),
            );
        }
        write(d, "deep/r20.txt", "six==1.16.0\n");
        let e = read_with_warnings(&d.join("deep/r0.txt")).unwrap_err();
        assert!(e.contains("nested more than 16"), "{e}");
    }

    #[test]
    fn requirements_files_are_recognised_by_name_and_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Bare names are both image references and requirements: the name decides.
        for name in [
            "requirements/prod.txt",
            "constraints.txt",
            "dev-requirements.txt",
            "requirements-dev.txt",
            "deps.in",
        ] {
            let p = write(d, name, "flask\n");
            let r = read_with_warnings(&p).unwrap();
            assert_eq!(r.entries[0].ecosystem, Ecosystem::Pypi, "{name}");
            assert_eq!(r.entries[0].name, "flask", "{name}");
        }
        let p = write(d, "images.txt", "flask\nalpine:3.19\n");
        let r = read_with_warnings(&p).unwrap();
        assert_eq!(r.entries[0].ecosystem, Ecosystem::Oci);
        assert_eq!(r.entries[0].name, "library/flask");
        // A pin is no image reference.
        let p = write(d, "deps.txt", "flask\nsix==1.16.0 # pinned\n");
        let r = read_with_warnings(&p).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(
            names(&r),
            vec![
                ("flask".into(), None, "line 1".into()),
                ("six".into(), Some("1.16.0".into()), "line 2".into())
            ]
        );
        // An image list with a stray pin: the pin is warned about, not read as an image.
        let p = write(d, "list", "ghcr.io/o/i:1.0\nsix==1.16.0\n");
        let r = read_with_warnings(&p).unwrap();
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("line 2") && r.warnings[0].contains("invalid image reference"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn unreadable_requirement_lines_are_warned_about() {
        let req = "six==1.16.0\n-e git+https://example.invalid/x.git#egg=x\n./local/pkg\nhttps://example.invalid/a-1.0-py3-none-any.whl\n--frobnicate\n--index-url https://example.invalid/simple\n!!!\nname @ https://example.invalid/n.zip\n-r https://example.invalid/r.txt\n";
        let p = parse_requirements(req);
        let got: Vec<_> = p.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(got, vec!["six", "name"]);
        let lines: Vec<_> = p
            .warnings
            .iter()
            .map(|w| w.split(':').next().unwrap())
            .collect();
        assert_eq!(
            lines,
            vec!["line 2", "line 3", "line 4", "line 5", "line 7"]
        );
        assert_eq!(p.includes.len(), 1);
    }

    #[test]
    fn image_references_are_validated() {
        for bad in [
            "six==1.16.0",
            "Alpine",
            "alpine:",
            "alpine:-x",
            "ghcr.io/o/i@nohex",
            "bad_host-.io:x/a",
            "a//b",
            "a b",
        ] {
            assert!(parse_image_ref(bad).is_err(), "{bad}");
        }
        for good in [
            "alpine",
            "a__b/c-d--e.f:1.0_x",
            "localhost:5000/x",
            "[::1]:5000/x:1",
            "registry.example:443/team/app@sha256:0123abcd",
        ] {
            assert!(parse_image_ref(good).is_ok(), "{good}");
        }
    }
}
