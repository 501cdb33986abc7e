//! What a fill must verify: an [`Expect`]ed hash, sha256 (OCI, PyPI) or the sha512 / sha1
//! that an npm packument states (`dist.integrity`, `dist.shasum`), and the [`Hashing`] that
//! computes it alongside the sha256 every stored file is named by.

use std::fmt;

use sha2::{Digest as _, Sha256, Sha512};

use crate::digest::Digest;
use crate::error::ProxyError;

/// The hash an artifact must have.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Expect {
    /// sha256: the store's own digest.
    Sha256(Digest),
    /// sha512 (npm `dist.integrity`), 64 bytes.
    Sha512(Box<[u8; 64]>),
    /// sha1 (npm `dist.shasum`, legacy packages), 20 bytes.
    Sha1([u8; 20]),
}

impl Expect {
    /// The index key of an alias: `sha512:<hex>` / `sha1:<hex>`; `None` for sha256.
    pub fn alias_key(&self) -> Option<String> {
        match self {
            Expect::Sha256(_) => None,
            other => Some(other.to_string()),
        }
    }

    /// From an SRI string (`sha512-<base64>`, the strongest of several), as in npm's
    /// `dist.integrity`.
    pub fn from_sri(sri: &str) -> Option<Expect> {
        let mut best = None;
        for part in sri.split_whitespace() {
            // Unknown algorithms and malformed entries are skipped, as SRI prescribes.
            let Some((alg, b64)) = part.split_once('-') else {
                continue;
            };
            let Some(raw) = crate::b64::decode(b64.split('?').next().unwrap_or("")) else {
                continue;
            };
            let e = match alg {
                "sha512" => match <[u8; 64]>::try_from(raw) {
                    Ok(h) => Expect::Sha512(Box::new(h)),
                    Err(_) => continue,
                },
                "sha256" => match Digest::from_bytes(&raw) {
                    Some(d) => Expect::Sha256(d),
                    None => continue,
                },
                "sha1" => match <[u8; 20]>::try_from(raw) {
                    Ok(h) => Expect::Sha1(h),
                    Err(_) => continue,
                },
                _ => continue,
            };
            let rank = |e: &Expect| match e {
                Expect::Sha512(_) => 3,
                Expect::Sha256(_) => 2,
                Expect::Sha1(_) => 1,
            };
            if best.as_ref().is_none_or(|b| rank(&e) > rank(b)) {
                best = Some(e);
            }
        }
        best
    }

    /// From a hex sha1 (npm `dist.shasum`).
    pub fn from_sha1_hex(hex_str: &str) -> Option<Expect> {
        let mut out = [0u8; 20];
        hex::decode_to_slice(hex_str.trim(), &mut out).ok()?;
        Some(Expect::Sha1(out))
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Sha256(d) => write!(f, "{d}"),
            Expect::Sha512(h) => write!(f, "sha512:{}", hex::encode(&h[..])),
            Expect::Sha1(h) => write!(f, "sha1:{}", hex::encode(h)),
        }
    }
}

/// Running hashes of a body: always sha256, plus the expected algorithm.
pub struct Hashing {
    sha256: Sha256,
    sha512: Option<Sha512>,
    sha1: Option<sha1::Sha1>,
}

impl Hashing {
    /// Hashers for `expect`.
    pub fn new(expect: &Expect) -> Hashing {
        Hashing {
            sha256: Sha256::new(),
            sha512: matches!(expect, Expect::Sha512(_)).then(Sha512::new),
            sha1: matches!(expect, Expect::Sha1(_)).then(sha1::Sha1::new),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.sha256.update(b);
        if let Some(h) = &mut self.sha512 {
            h.update(b);
        }
        if let Some(h) = &mut self.sha1 {
            h.update(b);
        }
    }

    /// Checks the expected hash; returns the sha256 to store the file under.
    pub fn verify(self, expect: &Expect, format: &'static str) -> Result<Digest, ProxyError> {
        let digest = Digest::from_hasher(self.sha256);
        let ok = match expect {
            Expect::Sha256(d) => *d == digest,
            Expect::Sha512(h) => self
                .sha512
                .map(|s| s.finalize())
                .is_some_and(|got| got[..] == h[..]),
            Expect::Sha1(h) => self
                .sha1
                .map(|s| s.finalize())
                .is_some_and(|got| got[..] == h[..]),
        };
        if ok {
            Ok(digest)
        } else {
            metrics::counter!("sluice_digest_mismatches_total", "format" => format).increment(1);
            Err(ProxyError::HashMismatch {
                expected: expect.to_string(),
                actual_sha256: digest,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sri_picks_the_strongest_hash_and_verifies() {
        let body = b"tarball bytes";
        let sha512 = Sha512::digest(body);
        let b64 = crate::b64::encode(&sha512);
        let e = Expect::from_sri(&format!("sha1-AAAA sha512-{b64}")).unwrap();
        assert!(matches!(e, Expect::Sha512(_)));
        let mut h = Hashing::new(&e);
        h.update(body);
        assert_eq!(h.verify(&e, "npm").unwrap(), Digest::of(body));
        let mut h = Hashing::new(&e);
        h.update(b"other bytes");
        assert!(h.verify(&e, "npm").is_err());
        assert!(e.alias_key().unwrap().starts_with("sha512:"));
    }

    #[test]
    fn sha1_shasum_verifies() {
        let e = Expect::from_sha1_hex("a9993e364706816aba3e25717850c26c9cd0d89d").unwrap();
        let mut h = Hashing::new(&e);
        h.update(b"abc");
        assert!(h.verify(&e, "npm").is_ok());
        assert!(Expect::from_sha1_hex("zz").is_none());
    }
}
