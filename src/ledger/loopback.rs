//! Whether a database URL points at this machine without choosing its TLS mode: such a
//! connection skips TLS, which protects nothing on loopback and costs a fifth of the throughput.

/// Whether `url` names a loopback server without choosing an `sslmode` itself.
pub(super) fn on_loopback(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    if parsed
        .query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("sslmode"))
    {
        return false;
    }
    match parsed.host() {
        // `postgres:` is not a special scheme, so its host stays text: parse it here.
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || d.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::on_loopback;

    #[test]
    fn only_an_unqualified_loopback_url_skips_tls() {
        assert!(on_loopback("postgres://app@127.0.0.1:5432/x"));
        assert!(on_loopback("postgres://app@localhost/x"));
        assert!(on_loopback("postgres://app@[::1]/x"));
        assert!(!on_loopback("postgres://app@127.0.0.1/x?sslmode=require"));
        assert!(!on_loopback("postgres://app@db.internal/x"));
        assert!(!on_loopback("postgres://app@10.0.0.5/x"));
    }
}
