//! Destination guards: host normalisation, and which addresses may never be
//! reached unless a route names them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Lower-cases a host, strips IPv6 brackets and one trailing dot, so that
/// every comparison sees one spelling.
pub(crate) fn normalize_host(h: &str) -> String {
    let h = h.trim_start_matches('[').trim_end_matches(']');
    let h = h.strip_suffix('.').unwrap_or(h);
    h.to_ascii_lowercase()
}

/// Splits `host[:port]` (IPv6 in brackets), defaulting the port.
pub(crate) fn split_authority(a: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (h.to_owned(), port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().ok()?),
            Some(_) => return None,
            None => (a.to_owned(), default_port),
        }
    };
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((normalize_host(&host), port))
}

/// Addresses that lead back into the host, a private network or a cloud
/// metadata service. Reached only when a route names the address itself.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254 metadata)
                || (seg0 & 0xffc0) == 0xfe80 // link-local
                || (seg0 & 0xffc0) == 0xfec0 // site-local (deprecated)
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0) // NAT64 prefix itself
                || (v6.segments()[0] == 0x2002) // 6to4 can wrap private v4
                || (v6.segments()[0] == 0x2001 && v6.segments()[1] == 0) // Teredo
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local() // includes 169.254.169.254 metadata
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || o[0] >= 240 // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "127.0.0.31",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(is_internal(a.parse().expect("ip")), "{a}");
        }
        for a in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "140.82.112.3"] {
            assert!(!is_internal(a.parse().expect("ip")), "{a}");
        }
    }

    #[test]
    fn authorities() {
        assert_eq!(split_authority("Example.COM.:443", 80), Some(("example.com".into(), 443)));
        assert_eq!(split_authority("example.com", 443), Some(("example.com".into(), 443)));
        assert_eq!(split_authority("[::1]:8443", 443), Some(("::1".into(), 8443)));
        assert_eq!(split_authority("[::1]", 443), Some(("::1".into(), 443)));
        assert_eq!(split_authority("::1", 443), None);
        assert_eq!(split_authority("x.com:0", 443), None);
        assert_eq!(split_authority("x.com:99999", 443), None);
        assert_eq!(split_authority(":443", 443), None);
    }
}
