//! Upstream URLs for npm and PyPI that the configuration leaves empty, asked from the local
//! clients at start, so that no registry host is ever written into sluice's repository:
//! npm: `npm config get registry`; PyPI: pip's configured `index-url`, else pip's built-in
//! default index.

use std::process::Command;
use std::time::Duration;

use crate::schema::{Config, Format};

/// Fills empty npm / PyPI upstream URLs from the local clients. Returns one message per
/// upstream whose URL could not be found (that upstream stays empty and is not served).
pub fn fill_missing_urls(config: &mut Config) -> Vec<String> {
    let mut problems = Vec::new();
    for up in &mut config.upstreams {
        if !up.url.is_empty() {
            continue;
        }
        let found = match up.format {
            // Required in the configuration: no local client names them.
            Format::Oci | Format::Cargo => None,
            Format::Npm => npm_registry(),
            Format::Pypi => pip_index(),
        };
        match found {
            Some(u) => up.url = u,
            None => problems.push(format!(
                "upstream {:?} ({}) has no url and none could be asked from the local {} client; set url (or SLUICE_{}_UPSTREAM)",
                up.name,
                up.format.as_str(),
                if up.format == Format::Npm { "npm" } else { "pip" },
                if up.format == Format::Npm { "NPM" } else { "PYPI" },
            )),
        }
    }
    problems
}

/// The registry npm uses: `npm config get registry`.
pub fn npm_registry() -> Option<String> {
    let out = run("npm", &["config", "get", "registry"])?;
    let u = out.trim();
    (u.starts_with("http://") || u.starts_with("https://")).then(|| u.to_string())
}

/// The index pip uses: `PIP_INDEX_URL`, pip's configured `index-url`, else pip's built-in
/// default (`PyPI.simple_url`), all asked from pip itself.
pub fn pip_index() -> Option<String> {
    if let Ok(u) = std::env::var("PIP_INDEX_URL") {
        if !u.trim().is_empty() {
            return Some(u.trim().to_string());
        }
    }
    for py in ["python3", "python"] {
        if let Some(list) = run(py, &["-m", "pip", "config", "list"]) {
            for line in list.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    if k.trim().ends_with(".index-url") {
                        let v = v.trim().trim_matches('\'').trim_matches('"');
                        if v.starts_with("http") {
                            return Some(v.to_string());
                        }
                    }
                }
            }
        }
        if let Some(u) = run(
            py,
            &[
                "-c",
                "from pip._internal.models.index import PyPI; print(PyPI.simple_url)",
            ],
        ) {
            let u = u.trim();
            if u.starts_with("http") {
                return Some(u.to_string());
            }
        }
    }
    None
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut s = String::new();
    use std::io::Read;
    child.stdout.take()?.read_to_string(&mut s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build machines have npm and pip: discovery must find their indexes.
    #[test]
    fn discovery_asks_the_local_npm_and_pip() {
        if run("npm", &["--version"]).is_some() {
            let u = npm_registry().expect("npm is installed but its registry was not found");
            assert!(u.starts_with("http"), "{u}");
        }
        let u = pip_index().expect("pip's index URL was not found");
        assert!(u.starts_with("http"), "{u}");
        let mut c = crate::load_str(
            "[[upstream]]\nname = \"p\"\nformat = \"pypi\"\n[[upstream]]\nname = \"n\"\nformat = \"npm\"\n",
            "t.toml",
            |_| None,
        )
        .unwrap();
        let problems = fill_missing_urls(&mut c);
        assert!(c.upstreams[0].url.starts_with("http"));
        assert!(problems.len() <= 1);
    }
}
