//! Validated OCI names: repository names and references (tag or digest), parsed once at the
//! edge with the grammar of the OCI distribution spec.

use std::fmt;

use crate::digest::Digest;

/// A repository name such as `library/alpine` or `owner/img`: path components of
/// `[a-z0-9]+([._-][a-z0-9]+)*` joined by `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoName(String);

impl RepoName {
    /// Validates `s` as a repository name.
    pub fn parse(s: &str) -> Result<RepoName, String> {
        if s.is_empty() || s.len() > 255 {
            return Err(format!(
                "invalid repository name {:?}: length must be 1..=255",
                short(s)
            ));
        }
        for comp in s.split('/') {
            if !valid_component(comp) {
                return Err(format!(
                    "invalid repository name {:?}: each path component must match [a-z0-9]+([._-][a-z0-9]+)*",
                    short(s)
                ));
            }
        }
        Ok(RepoName(s.to_string()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of `/`-separated components.
    pub fn segments(&self) -> usize {
        self.0.split('/').count()
    }

    /// `library/<name>` for single-segment Docker Hub names.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.segments() == 1 {
            RepoName(format!("library/{}", self.0))
        } else {
            self.clone()
        }
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut prev_sep = false;
    for (i, &ch) in b.iter().enumerate() {
        if is_alnum(ch) {
            prev_sep = false;
        } else if ch == b'.' || ch == b'_' || ch == b'-' {
            // `__` is allowed as a separator; other doubled separators are not, except runs of `-`.
            let allowed_double =
                (ch == b'_' && i > 0 && b[i - 1] == b'_') || (ch == b'-' && b[i - 1] == b'-');
            if prev_sep && !allowed_double {
                return false;
            }
            prev_sep = true;
        } else {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn short(s: &str) -> String {
    s.chars().take(100).collect()
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    /// Validates a tag.
    pub fn parse(s: &str) -> Result<Tag, String> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(format!("invalid tag {:?}", short(s)))
        }
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag, revalidated after `tag_ttl`.
    Tag(Tag),
    /// A digest, never revalidated.
    Digest(Digest),
}

impl Reference {
    /// A digest if it contains `:`, a tag otherwise.
    pub fn parse(s: &str) -> Result<Reference, String> {
        if s.contains(':') {
            s.parse().map(Reference::Digest).map_err(|e| e.to_string())
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t.as_str()),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_follow_the_distribution_grammar() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "my-org/my_img",
            "x.y/z__w",
            "a--b",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "Alpine", "../etc", "a//b", "/a", "a/", "a/../b", "a..b", "-a", "a b", "a%2fb",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RepoName::parse("alpine")
                .unwrap()
                .with_library_prefix()
                .as_str(),
            "library/alpine"
        );
        assert_eq!(
            RepoName::parse("o/i")
                .unwrap()
                .with_library_prefix()
                .as_str(),
            "o/i"
        );
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!(Reference::parse("3.19"), Ok(Reference::Tag(_))));
        assert!(matches!(
            Reference::parse(&Digest::of(b"x").to_string()),
            Ok(Reference::Digest(_))
        ));
        assert!(Reference::parse("sha256:zz").is_err());
        assert!(Reference::parse(".hidden").is_err());
        assert!(Reference::parse(&"a".repeat(129)).is_err());
    }
}
