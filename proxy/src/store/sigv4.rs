//! AWS Signature Version 4 for the S3 requests of the shared tier ([`super::shared`]): the
//! `Authorization` header of one request, signed with the header-based scheme. Bodies are
//! sent as `UNSIGNED-PAYLOAD` (they are content-addressed and verified when read back).

use sha2::{Digest as _, Sha256};

/// The payload hash of a request whose body is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Credentials and scope of the requests to sign.
pub struct Signer {
    access_key_id: String,
    secret_access_key: String,
    region: String,
}

/// The headers to add to a signed request.
pub struct Signed {
    /// `x-amz-date`.
    pub amz_date: String,
    /// `x-amz-content-sha256`.
    pub content_sha256: String,
    /// `Authorization`.
    pub authorization: String,
}

impl Signer {
    /// A signer for the `s3` service in `region`.
    pub fn new(access_key_id: &str, secret_access_key: &str, region: &str) -> Signer {
        Signer {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            region: region.to_string(),
        }
    }

    /// Signs `method url` at Unix time `now`. `headers` are the further headers sent that
    /// the signature covers (lower-case names, e.g. `range`); `host`, `x-amz-date` and
    /// `x-amz-content-sha256` are always signed. `payload_sha256` is the body's hex sha256
    /// or [`UNSIGNED_PAYLOAD`].
    pub fn sign(
        &self,
        method: &str,
        url: &url::Url,
        headers: &[(&str, &str)],
        payload_sha256: &str,
        now: u64,
    ) -> Signed {
        let amz_date = amz_date(now);
        let day = &amz_date[..8];
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mut signed: Vec<(String, String)> = vec![
            ("host".into(), host),
            ("x-amz-content-sha256".into(), payload_sha256.to_string()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        signed.extend(headers.iter().map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        }));
        signed.sort();
        let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_headers = signed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical = format!(
            "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}",
            canonical_path(url),
            canonical_query(url)
        );
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(
            format!("AWS4{}", self.secret_access_key).as_bytes(),
            day.as_bytes(),
        );
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
        Signed {
            authorization: format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                self.access_key_id
            ),
            amz_date,
            content_sha256: payload_sha256.to_string(),
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` of a Unix time.
fn amz_date(secs: u64) -> String {
    let mut s: String = crate::timefmt::datetime(secs)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    s.push('Z');
    s
}

/// The path as S3 canonicalises it: each byte outside the unreserved set and `/`
/// percent-encoded once (the URL's own encoding undone first).
fn canonical_path(url: &url::Url) -> String {
    let raw = percent_encoding::percent_decode_str(url.path()).collect::<Vec<u8>>();
    encode(&raw, true)
}

/// The query's pairs, decoded, re-encoded strictly and sorted. (`+` is a plus sign here,
/// not a space as in a form.)
fn canonical_query(url: &url::Url) -> String {
    let decode = |x: &str| percent_encoding::percent_decode_str(x).collect::<Vec<u8>>();
    let mut pairs: Vec<(String, String)> = url
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (encode(&decode(k), false), encode(&decode(v), false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credentials of the S3 API reference's "Signature Calculations for the
    /// Authorization Header" examples.
    fn reference_signer() -> Signer {
        Signer::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
        )
    }

    /// That page's "GET Object" example (2013-05-24, bucket `examplebucket`,
    /// `Range: bytes=0-9`).
    #[test]
    fn matches_the_s3_reference_get_object_example() {
        let signer = reference_signer();
        let url = url::Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let empty = hex::encode(Sha256::digest(b""));
        let s = signer.sign(
            "GET",
            &url,
            &[("range", "bytes=0-9")],
            &empty,
            1_369_353_600,
        );
        assert_eq!(s.amz_date, "20130524T000000Z");
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The same page's "GET Bucket Lifecycle" and "Get Bucket (List Objects)" examples:
    /// an empty-valued and a sorted query.
    #[test]
    fn matches_the_s3_reference_query_examples() {
        let empty = hex::encode(Sha256::digest(b""));
        for (query, signature) in [
            (
                "lifecycle",
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
            ),
            (
                "max-keys=2&prefix=J",
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
            ),
        ] {
            let url = format!("https://examplebucket.s3.amazonaws.com/?{query}");
            let url = url::Url::parse(&url).unwrap();
            let s = reference_signer().sign("GET", &url, &[], &empty, 1_369_353_600);
            assert!(
                s.authorization.ends_with(&format!("Signature={signature}")),
                "{query}: {}",
                s.authorization
            );
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
