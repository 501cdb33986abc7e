//! Property tests (bounded: a few thousand cases each, seconds in all) for the parsers that
//! take input from clients and upstreams: digests, OCI names and references, `Range` and
//! `Content-Range`, `Retry-After`, npm routes and PyPI name normalisation. Arbitrary input
//! never panics; valid input round-trips.

use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use sluice_proxy::digest::Digest;
use sluice_proxy::formats::{npm, pypi};
use sluice_proxy::names::{Reference, RepoName, Tag};
use sluice_proxy::response::ByteRange;
use sluice_proxy::upstream::resume::ContentRange;
use sluice_proxy::upstream::retry;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const REPO_COMPONENT: &str = "[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}";

proptest! {
    #![proptest_config(config())]

    #[test]
    fn digest_parse_never_panics_and_accepts_only_canonical_sha256(s in "\\PC{0,80}") {
        if let Ok(d) = s.parse::<Digest>() {
            prop_assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn digest_round_trips_through_its_text_form(bytes in any::<[u8; 32]>()) {
        let d = Digest::from_bytes(&bytes).expect("32 bytes");
        let text = d.to_string();
        prop_assert_eq!(text.parse::<Digest>().ok(), Some(d));
        // Upper-case hex is not the canonical form: refused whenever it differs.
        let upper = format!("sha256:{}", d.hex().to_uppercase());
        prop_assert_eq!(upper.parse::<Digest>().is_ok(), upper == text);
    }

    #[test]
    fn repo_and_reference_parsers_never_panic(s in "\\PC{0,300}") {
        if let Ok(n) = RepoName::parse(&s) {
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert!(n.segments() >= 1);
        }
        if let Ok(t) = Tag::parse(&s) {
            prop_assert_eq!(t.as_str(), s.as_str());
        }
        if let Ok(r) = Reference::parse(&s) {
            prop_assert_eq!(r.to_string(), s);
        }
    }

    #[test]
    fn valid_repo_names_parse(parts in prop::collection::vec(REPO_COMPONENT, 1..4)) {
        let name = parts.join("/");
        let parsed = RepoName::parse(&name);
        prop_assert!(parsed.is_ok(), "{:?}: {:?}", name, parsed);
    }

    #[test]
    fn range_parse_never_panics_and_resolves_within_the_body(s in "\\PC{0,40}", size in 0u64..1 << 40) {
        if let Some(r) = ByteRange::parse(&s) {
            if let Some((start, end)) = r.resolve(size) {
                prop_assert!(start < end && end <= size, "{:?} on {} → {}..{}", r, size, start, end);
            }
        }
    }

    #[test]
    fn byte_ranges_round_trip(a in 0u64..u64::MAX / 2, len in 0u64..1 << 40) {
        let b = a + len;
        prop_assert_eq!(ByteRange::parse(&format!("bytes={a}-{b}")), Some(ByteRange::From(a, Some(b + 1))));
        prop_assert_eq!(ByteRange::parse(&format!("bytes={a}-")), Some(ByteRange::From(a, None)));
        prop_assert_eq!(ByteRange::parse(&format!("bytes=-{a}")), Some(ByteRange::Suffix(a)));
    }

    #[test]
    fn content_range_never_panics_and_round_trips(s in "\\PC{0,60}", first in 0u64..1 << 50, len in 0u64..1 << 40, extra in 0u64..1 << 20, known in any::<bool>()) {
        if let Some(r) = ContentRange::parse(&s) {
            prop_assert!(r.first <= r.last && r.total.is_none_or(|t| r.last < t));
        }
        let r = ContentRange { first, last: first + len, total: known.then_some(first + len + 1 + extra) };
        prop_assert_eq!(ContentRange::parse(&r.to_string()), Some(r));
    }

    #[test]
    fn retry_after_never_panics_and_backoff_stays_capped(s in "[ -~]{0,40}", base_ms in 0u64..1 << 40, attempt in any::<u32>(), jitter in any::<f64>()) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&s) {
            h.insert(http::header::RETRY_AFTER, v);
        }
        let _ = retry::retry_after(&h, std::time::SystemTime::now());
        let d = retry::backoff(std::time::Duration::from_millis(base_ms), attempt, jitter);
        prop_assert!(d <= std::time::Duration::from_secs(5));
    }

    #[test]
    fn npm_routes_never_panic(rest in "\\PC{0,120}") {
        let _ = npm::log_name(&Method::GET, &rest);
        let _ = npm::log_name(&Method::PUT, &rest);
    }

    #[test]
    fn npm_package_names_round_trip_through_routes(
        scope in prop::option::of("[a-z0-9][a-z0-9._-]{0,10}"),
        name in "[a-z0-9][a-z0-9._-]{0,20}",
    ) {
        let full = match &scope {
            Some(s) => format!("@{s}/{name}"),
            None => name.clone(),
        };
        prop_assert_eq!(npm::log_name(&Method::GET, &full), Some(full.clone()));
        if scope.is_some() {
            let encoded = full.replacen('/', "%2f", 1);
            prop_assert_eq!(npm::log_name(&Method::GET, &encoded), Some(full.clone()));
        }
    }

    #[test]
    fn pypi_normalisation_is_idempotent_and_never_panics(s in "\\PC{0,60}") {
        let n = pypi::simple::normalize(&s);
        prop_assert_eq!(pypi::simple::normalize(&n), n.clone());
        let _ = pypi::log_name(&s);
    }

    #[test]
    fn pypi_normalised_names_are_valid_and_case_and_separator_blind(
        words in prop::collection::vec("[A-Za-z0-9]{1,8}", 1..4),
        seps in prop::collection::vec("[-_.]{1,3}", 3),
    ) {
        let mut a = String::new();
        let mut b = String::new();
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                a.push_str(&seps[i - 1]);
                b.push('-');
            }
            a.push_str(w);
            b.push_str(&w.to_lowercase());
        }
        let n = pypi::simple::normalize(&a);
        prop_assert!(pypi::simple::valid_normalized(&n), "{:?} → {:?}", a, n);
        prop_assert_eq!(n, b);
    }
}
