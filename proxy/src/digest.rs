//! `Digest`: a sha256 content address that can only hold a valid `sha256:<64 lowercase hex>`.
//!
//! Everything that names stored content goes through this type, so a digest taken from a
//! request path can never contain `/`, `..` or anything else that would escape the store.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A validated sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// From a finished hasher.
    pub fn from_hasher(h: Sha256) -> Digest {
        Digest(h.finalize().into())
    }

    /// The 64 lowercase hex characters, without the algorithm prefix.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        s.push_str(self.hex_buf().as_str());
        s
    }

    /// `sha256:<hex>` in a stack buffer (no allocation; also what `Display` writes).
    pub fn text(&self) -> DigestText {
        let mut b = [0u8; 71];
        b[..7].copy_from_slice(b"sha256:");
        b[7..].copy_from_slice(&self.hex_bytes());
        DigestText(b)
    }

    fn hex_bytes(&self) -> [u8; 64] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        out
    }

    fn hex_buf(&self) -> HexText {
        HexText(self.hex_bytes())
    }

    /// The raw 32 bytes (index keys).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From 32 raw bytes (index keys).
    pub fn from_bytes(b: &[u8]) -> Option<Digest> {
        b.try_into().ok().map(Digest)
    }
}

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The algorithm is not sha256.
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    Algorithm(String),
    /// The hex part is malformed.
    #[error("malformed digest {0:?}: expected sha256:<64 lowercase hex characters>")]
    Malformed(String),
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        let Some((alg, hex_part)) = s.split_once(':') else {
            return Err(DigestError::Malformed(truncate(s)));
        };
        if alg != "sha256" {
            if alg.is_empty()
                || !alg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b))
            {
                return Err(DigestError::Malformed(truncate(s)));
            }
            return Err(DigestError::Algorithm(truncate(s)));
        }
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::Malformed(truncate(s)));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| DigestError::Malformed(truncate(s)))?;
        Ok(Digest(out))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// `sha256:<64 hex>` without allocation (see [`Digest::text`]).
#[derive(Clone, Copy)]
pub struct DigestText([u8; 71]);

impl DigestText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

struct HexText([u8; 64]);

impl HexText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_hex_match_hex_encoding() {
        for input in [&b""[..], b"hello", &[0xff; 100]] {
            let d = Digest::of(input);
            let expected = hex::encode(Sha256::digest(input));
            assert_eq!(d.hex(), expected);
            assert_eq!(d.to_string(), format!("sha256:{expected}"));
            assert_eq!(d.text().as_str().parse::<Digest>(), Ok(d));
        }
    }

    #[test]
    fn parses_only_well_formed_sha256() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        for bad in [
            "",
            "sha256:",
            "sha256:../../etc/passwd",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98244",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            "sha512:abcd".parse::<Digest>(),
            Err(DigestError::Algorithm(_))
        ));
    }
}
