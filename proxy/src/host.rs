//! The `Host` header as an authority sluice may write into the links it serves (when
//! `server.public_url` is unset, see [`crate::app::App::base_url`]). Strict: anything that
//! could change a URL's meaning (`/`, `@`, spaces, a second `:`, percent escapes) is refused.

/// `host` as a URL authority, lowercased: a DNS host name (letters, digits, `-`, labels of
/// 1–63 characters, 253 at most) or IPv4 address, or an `[IPv6]` address, with an optional
/// port (1–65535). `None` for anything else.
pub fn authority(host: &str) -> Option<String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (&host[..v6.len() + 2], port)
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n));
        if !ok {
            return None;
        }
    }
    if !name.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return None;
        }
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::authority;

    #[test]
    fn plain_hosts_addresses_and_ports_are_accepted() {
        for (h, want) in [
            ("sluice.example:5080", "sluice.example:5080"),
            ("Sluice.Example", "sluice.example"),
            ("localhost", "localhost"),
            ("10.0.0.7:80", "10.0.0.7:80"),
            ("[::1]:5080", "[::1]:5080"),
            ("[fe80::1]", "[fe80::1]"),
            ("a-b.c1", "a-b.c1"),
        ] {
            assert_eq!(authority(h).as_deref(), Some(want), "{h}");
        }
    }

    #[test]
    fn anything_that_could_change_a_url_is_refused() {
        let long = format!("{}.x", "a".repeat(64));
        for h in [
            "",
            "evil.com/x",
            "evil.com x",
            " evil.com",
            "user@evil.com",
            "evil.com:5080@other",
            "evil.com:",
            "evil.com:0",
            "evil.com:65536",
            "evil.com:80:81",
            "evil.com:+80",
            "evil.com.",
            ".evil.com",
            "-evil.com",
            "ev_il.com",
            "evil%2ecom",
            "evil.com#x",
            "evil.com?x",
            "evil.com\\x",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[evil.com]",
            "[::1]/x",
            "::1",
            long.as_str(),
        ] {
            assert_eq!(authority(h), None, "{h:?}");
        }
    }
}
