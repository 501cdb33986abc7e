//! Name globs (`*` any run of characters, `/` included; `?` one character) and the name
//! normalisation each ecosystem compares names under: case-sensitive for npm and OCI,
//! PEP 503 (`Foo_Bar.baz` is `foo-bar-baz`) for PyPI.

use std::borrow::Cow;

use sluice_config::Ecosystem;

/// PEP 503 normalisation: lower case, every run of `-`, `_`, `.` becomes one `-`.
/// Borrows when the name is already normal, which is what pip sends.
pub fn pep503(name: &str) -> Cow<'_, str> {
    let normal = name
        .bytes()
        .all(|b| !b.is_ascii_uppercase() && b != b'_' && b != b'.')
        && !name.contains("--");
    if normal {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut in_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_sep {
                out.push('-');
            }
            in_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_sep = false;
        }
    }
    Cow::Owned(out)
}

/// A crate name as Cargo registries compare them: case-insensitive, `-` and `_` the same (so
/// `myorg_tool` cannot slip past a rule on `myorg-*`).
fn crate_name(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase() || b == b'_') {
        Cow::Owned(name.to_ascii_lowercase().replace('_', "-"))
    } else {
        Cow::Borrowed(name)
    }
}

/// The form of `name` that rules and advisories are compared with in `eco`.
pub fn normalise(eco: Ecosystem, name: &str) -> Cow<'_, str> {
    match eco {
        Ecosystem::Pypi => pep503(name),
        Ecosystem::Cargo => crate_name(name),
        Ecosystem::Npm | Ecosystem::Oci => Cow::Borrowed(name),
    }
}

/// A compiled glob over already-normalised names.
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: Box<str>,
    literal: bool,
}

impl Glob {
    /// Compiles `pattern` for `eco` (normalising it the way names are normalised).
    pub fn new(eco: Ecosystem, pattern: &str) -> Glob {
        let pattern: Box<str> = normalise(eco, pattern).into();
        let literal = !pattern.contains(['*', '?']);
        Glob { pattern, literal }
    }

    /// The pattern, normalised.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The pattern has no wildcard: it matches exactly one name.
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// The literal text before the first wildcard.
    pub fn prefix(&self) -> &str {
        let end = self.pattern.find(['*', '?']).unwrap_or(self.pattern.len());
        &self.pattern[..end]
    }

    /// Whether the (normalised) `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        if self.literal {
            return *self.pattern == *name;
        }
        wildcard_match(self.pattern.as_bytes(), name.as_bytes())
    }
}

/// Iterative wildcard matching with single-star backtracking: linear in practice,
/// O(pattern × name) at worst, no recursion.
fn wildcard_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(b'?') => {
                pi += 1;
                si += utf8_len(s[si]);
            }
            Some(&c) if c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    // Let the last star swallow one more character and retry.
                    let next = ss + utf8_len(s[ss]);
                    star = Some((sp, next));
                    pi = sp + 1;
                    si = next;
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*') && si == s.len()
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(eco: Ecosystem, p: &str, name: &str) -> bool {
        Glob::new(eco, p).matches(&normalise(eco, name))
    }

    #[test]
    fn star_matches_any_run_including_slashes() {
        assert!(m(Ecosystem::Npm, "@myorg/*", "@myorg/tool"));
        assert!(!m(Ecosystem::Npm, "@myorg/*", "@other/tool"));
        assert!(m(Ecosystem::Oci, "library/*", "library/alpine"));
        assert!(m(Ecosystem::Oci, "*", "a/b/c"));
        assert!(m(Ecosystem::Oci, "myorg/*/base", "myorg/team/x/base"));
        assert!(m(Ecosystem::Npm, "myorg-*", "myorg-"));
        assert!(m(Ecosystem::Npm, "*-utils*", "foo-utils-bar"));
        assert!(!m(Ecosystem::Npm, "*-utils", "foo-utils-bar"));
        assert!(m(Ecosystem::Npm, "a*b*c", "aXXbYYbZc"));
        assert!(!m(Ecosystem::Npm, "a*b*c", "aXXbYYbZ"));
    }

    #[test]
    fn question_mark_matches_one_character() {
        assert!(m(Ecosystem::Npm, "left-pa?", "left-pad"));
        // Crate names compare as Cargo registries do: case and `-`/`_` do not matter.
        assert!(m(Ecosystem::Cargo, "myorg-*", "MyOrg_tool"));
        assert!(m(Ecosystem::Cargo, "my_crate", "my-crate"));
        assert!(!m(Ecosystem::Npm, "myorg-*", "myorg_tool"));
        assert!(!m(Ecosystem::Npm, "left-pa?", "left-pa"));
        assert!(m(Ecosystem::Npm, "caf?", "café"));
    }

    #[test]
    fn npm_and_oci_are_case_sensitive_pypi_is_normalised() {
        assert!(!m(Ecosystem::Npm, "lodash", "LoDash"));
        assert!(!m(Ecosystem::Oci, "Library/*", "library/alpine"));
        assert!(m(Ecosystem::Pypi, "Foo_Bar", "foo.bar"));
        assert!(m(Ecosystem::Pypi, "foo-*", "Foo__Baz"));
        assert!(m(Ecosystem::Pypi, "requests", "Requests"));
    }

    #[test]
    fn pep503_borrows_normal_names() {
        assert!(matches!(pep503("requests"), Cow::Borrowed(_)));
        assert_eq!(pep503("Django_REST.framework"), "django-rest-framework");
        assert_eq!(pep503("a--b"), "a-b");
        assert_eq!(pep503("a-._b"), "a-b");
    }

    #[test]
    fn prefix_is_the_text_before_the_first_wildcard() {
        assert_eq!(Glob::new(Ecosystem::Npm, "@myorg/*").prefix(), "@myorg/");
        assert_eq!(Glob::new(Ecosystem::Npm, "*x").prefix(), "");
        assert!(Glob::new(Ecosystem::Npm, "lodash").is_literal());
    }
}
