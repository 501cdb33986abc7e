//! `Accept` negotiation for manifests asked for by tag.
//!
//! sluice fetches every tag with every manifest type accepted and stores what the upstream
//! answered, so a multi-platform tag is stored as its index or Docker manifest list. A
//! client whose `Accept` names manifest types but not the Docker manifest list it asked
//! for (a script asking for `application/vnd.docker.distribution.manifest.v2+json` to read
//! an image's config digest, a tool comparing digests with `HEAD`) gets what CNCF
//! distribution gives it: the list's `linux/amd64` image manifest, when that manifest's
//! type is one it named. An OCI index it did not name, a list without such a manifest,
//! and a list whose platform manifest the upstream cannot give now are served as they are
//! (distribution answers `404` to the first two; a cache has no better copy to offer and
//! lets the client decide). Requests by digest are served as asked: the digest names the
//! bytes.

use http::HeaderMap;

use crate::digest::Digest;

/// The manifest types sluice knows, one bit each.
const KNOWN: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The platform picked from an index for a client that does not accept indexes, as
/// distribution and Docker Hub pick it.
const DEFAULT_PLATFORM: (&str, &str) = ("linux", "amd64");

/// The known manifest types a request's `Accept` headers name (with a non-zero `q`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted(u8);

impl Accepted {
    /// What the request accepts; `None` when it constrains nothing: no `Accept`, a
    /// wildcard, or no known manifest type named.
    pub fn of(headers: &HeaderMap) -> Option<Accepted> {
        let mut bits = 0u8;
        for value in headers.get_all(http::header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let media = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| {
                    p.split_once('=').is_some_and(|(k, q)| {
                        k.trim().eq_ignore_ascii_case("q")
                            && q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                    })
                });
                if refused {
                    continue;
                }
                if media == "*/*" || media.eq_ignore_ascii_case("application/*") {
                    return None;
                }
                if let Some(i) = KNOWN.iter().position(|k| k.eq_ignore_ascii_case(media)) {
                    bits |= 1 << i;
                }
            }
        }
        (bits != 0).then_some(Accepted(bits))
    }

    /// Whether `media_type`, one of the types sluice knows, was named.
    pub fn names(self, media_type: &str) -> bool {
        KNOWN
            .iter()
            .position(|k| k.eq_ignore_ascii_case(media_type))
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// Whether `media_type` is an index or a Docker manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type.eq_ignore_ascii_case(KNOWN[0]) || is_docker_list(media_type)
}

/// Whether `media_type` is a Docker manifest list: the only kind distribution answers with
/// its default platform's manifest (an OCI index not accepted gets a `404` there).
pub fn is_docker_list(media_type: &str) -> bool {
    media_type.eq_ignore_ascii_case(KNOWN[2])
}

/// The digest of the default platform's manifest in index `bytes`, if the index has one
/// of a known type the client named.
pub fn default_platform(bytes: &[u8], accepted: Accepted) -> Option<Digest> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    doc.get("manifests")?.as_array()?.iter().find_map(|m| {
        let platform = m.get("platform")?;
        let (os, arch) = (
            platform.get("os")?.as_str()?,
            platform.get("architecture")?.as_str()?,
        );
        let media = m.get("mediaType")?.as_str()?;
        ((os, arch) == DEFAULT_PLATFORM && accepted.names(media))
            .then(|| m.get("digest")?.as_str()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&str]) -> Option<Accepted> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::ACCEPT, v.parse().unwrap());
        }
        Accepted::of(&h)
    }

    #[test]
    fn accept_headers_are_read_whole_and_wildcards_constrain_nothing() {
        assert_eq!(accept(&[]), None);
        assert_eq!(accept(&["application/json"]), None);
        assert_eq!(accept(&["*/*"]), None);
        assert_eq!(accept(&[KNOWN[3], "*/*"]), None);
        // Docker's client sends one header per type.
        let two = accept(&[KNOWN[3], KNOWN[2]]).expect("constrains");
        assert!(two.names(KNOWN[3]) && two.names(KNOWN[2]));
        assert!(!two.names(KNOWN[0]) && !two.names(KNOWN[1]));
        // One comma-separated header, parameters and case ignored, q=0 refused.
        let one = accept(&[&format!(
            "{}; q=0.5, APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON;q=0, {}; Q = 0.0",
            KNOWN[1], KNOWN[2]
        )])
        .expect("constrains");
        assert!(!one.names(KNOWN[2]), "Q = 0.0 refuses too");
        assert!(one.names(KNOWN[1]));
        assert!(!one.names(KNOWN[0]), "q=0 is a refusal");
        assert!(!one.names("application/vnd.example.artifact+json"));
    }

    #[test]
    fn the_default_platform_is_picked_only_in_an_accepted_type() {
        let amd = format!("sha256:{}", "a".repeat(64));
        let arm = format!("sha256:{}", "b".repeat(64));
        let index = serde_json::json!({"manifests": [
            {"mediaType": KNOWN[3], "digest": arm, "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": KNOWN[3], "digest": amd, "platform": {"os": "linux", "architecture": "amd64"}},
        ]})
        .to_string();
        let docker = accept(&[KNOWN[3]]).unwrap();
        assert_eq!(
            default_platform(index.as_bytes(), docker).map(|d| d.to_string()),
            Some(amd)
        );
        let oci_only = accept(&[KNOWN[1]]).unwrap();
        assert_eq!(default_platform(index.as_bytes(), oci_only), None);
        assert_eq!(default_platform(b"not json", docker), None);
        assert!(is_index(KNOWN[0]) && is_index(KNOWN[2]) && !is_index(KNOWN[3]));
        assert!(is_docker_list(KNOWN[2]) && !is_docker_list(KNOWN[0]));
        // A child of a type sluice does not know is never picked.
        let odd = serde_json::json!({"manifests": [{"mediaType": "application/vnd.example+json",
            "digest": format!("sha256:{}", "c".repeat(64)), "platform": {"os": "linux", "architecture": "amd64"}}]})
        .to_string();
        assert_eq!(default_platform(odd.as_bytes(), docker), None);
    }
}
