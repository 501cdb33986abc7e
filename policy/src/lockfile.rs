//! Lockfiles and image lists read by `sluice policy check` (and later `sluice warm`):
//! `package-lock.json` (v1, v2, v3), `requirements.txt` (pinned), `pylock.toml` (PEP 751)
//! and image lists (one reference per line). Parsing only: what each names, as entries the
//! engine can evaluate offline.

use std::path::Path;

use crate::Ecosystem;

/// One artifact a lockfile names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// npm, PyPI or OCI.
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

/// Reads a lockfile, choosing the parser by file name (and content for image lists).
pub fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parsed = if name.ends_with(".json") {
        parse_package_lock(&text)
    } else if name == "pylock.toml" || (name.starts_with("pylock.") && name.ends_with(".toml")) {
        parse_pylock(&text)
    } else if name.ends_with(".txt") && name.contains("requirements") || name.ends_with(".in") {
        parse_requirements(&text)
    } else {
        parse_images(&text)
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
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

/// `requirements.txt`: `name==version` lines (extras, markers, `--hash` options and line
/// continuations allowed). Unpinned requirements are returned without a version.
pub fn parse_requirements(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut logical = String::new();
    let mut start_line = 0;
    for (i, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start_line = i + 1;
        }
        let line = raw.split(" #").next().unwrap_or("");
        let line = if line.trim_start().starts_with('#') {
            ""
        } else {
            line
        };
        if let Some(cont) = line.trim_end().strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let req = std::mem::take(&mut logical);
        let req = req.trim();
        if req.is_empty() || req.starts_with('-') {
            continue;
        }
        let spec = req
            .split(';')
            .next()
            .unwrap_or("")
            .split(" --")
            .next()
            .unwrap_or("")
            .trim();
        let name_end = spec
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(spec.len());
        let name = &spec[..name_end];
        if name.is_empty() {
            return Err(format!(
                "line {start_line}: cannot read a requirement from {req:?}"
            ));
        }
        let rest = spec[name_end..].trim();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']').map(|x| x.1).unwrap_or("").trim(),
            None => rest,
        };
        let version = rest
            .strip_prefix("===")
            .or_else(|| rest.strip_prefix("=="))
            .map(|v| v.trim())
            .filter(|v| !v.contains('*') && !v.contains(','));
        out.push(Entry::new(
            Ecosystem::Pypi,
            name,
            version,
            format!("line {start_line}"),
        ));
    }
    Ok(out)
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

/// Image references, one per line (`#` comments): `[registry/]repo[:tag][@sha256:...]`.
pub fn parse_images(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            parse_image_ref(line)
                .map_err(|e| format!("line {}: {e}", i + 1))?
                .with_location(i + 1),
        );
    }
    Ok(out)
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
        return Err(format!("invalid image reference {r:?}"));
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
    if repo.is_empty() {
        return Err(format!("invalid image reference {r:?}"));
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
        let e = parse_requirements(req).unwrap();
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
        let e = parse_images(
            "alpine\nghcr.io/o/i:1.0\nlocalhost:5000/x@sha256:00\n# c\nlibrary/nginx:1.25",
        )
        .unwrap();
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
}
