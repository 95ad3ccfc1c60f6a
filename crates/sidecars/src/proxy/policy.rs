//! The route set: which destinations, paths and methods are allowed.
//! Default deny: a request passes only if a route allows it.

use std::net::IpAddr;

use bot_bottle_manifest::{DlpMode, HostKind, Route, TlsMode, in_reserved_domain};

/// The scheme a request arrived with, for default ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Https,
    Http,
}

impl Scheme {
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
        }
    }
}

/// A compiled route set plus the DLP mode. Replaced whole on update.
#[derive(Clone, Debug)]
pub struct Policy {
    routes: Vec<Route>,
    pub(crate) dlp: DlpMode,
}

/// Why a request was refused. Shown in the 403 body and the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Denial {
    pub(crate) rule: &'static str,
    pub(crate) reason: String,
}

pub(crate) fn deny(rule: &'static str, reason: impl Into<String>) -> Denial {
    Denial { rule, reason: reason.into() }
}

impl Policy {
    pub fn new(routes: Vec<Route>, dlp: DlpMode) -> Policy {
        Policy { routes, dlp }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The most specific route for `host:port`: an exact name or an IP
    /// beats a wildcard; among wildcards the longest suffix wins. `host`
    /// must already be lower-cased, without a trailing dot.
    pub(crate) fn route_for(&self, host: &str, port: u16, scheme: Scheme) -> Option<&Route> {
        let ip: Option<IpAddr> = host.trim_start_matches('[').trim_end_matches(']').parse().ok();
        let port_ok = |r: &Route| r.host.port.unwrap_or(scheme.default_port()) == port;
        // bot-bottle's own names are reached only through a route that
        // names them exactly (the manifest refuses wildcards over them).
        let reserved = in_reserved_domain(host);
        let mut best: Option<(&Route, usize)> = None;
        for r in self.routes.iter().filter(|r| port_ok(r)) {
            let score = match (&r.host.kind, ip) {
                (HostKind::Ip(a), Some(b)) if *a == b => usize::MAX,
                (HostKind::Exact(h), None) if h == host => usize::MAX,
                (HostKind::Suffix(s), None)
                    if !reserved
                        && host.len() > s.len() + 1
                        && host.ends_with(s.as_str())
                        && host.as_bytes()[host.len() - s.len() - 1] == b'.' =>
                {
                    s.len()
                }
                _ => continue,
            };
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((r, score));
            }
        }
        best.map(|(r, _)| r)
    }

    /// Checks a request's method and path against its route. On a route
    /// with paths, `path` must already be normalised (`path::normalize`).
    pub(crate) fn check_request(route: &Route, method: &str, path: &str) -> Result<(), Denial> {
        if route.tls == TlsMode::Passthrough {
            return Err(deny("passthrough", "route is tls: passthrough; requests are not inspected"));
        }
        if !route.methods.is_empty() && !route.methods.iter().any(|m| m.to_string() == method) {
            return Err(deny("method", format!("method {method} is not allowed for {}", route.host)));
        }
        if !route.paths.is_empty() && !route.paths.iter().any(|p| super::path::under(path, p)) {
            return Err(deny(
                "path",
                format!("{path} is not under an allowed path of {} ({})", route.host, route.paths.join(", ")),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(routes_yaml: &str) -> Policy {
        let e = bot_bottle_manifest::parse_egress(std::path::Path::new("routes.yaml"), routes_yaml).expect("routes");
        Policy::new(e.routes, e.dlp)
    }

    #[test]
    fn most_specific_route_wins() {
        let p = policy(
            "routes:\n  - { host: \"*.example.com\", methods: [GET] }\n  - { host: api.example.com, methods: [POST] }\n  - { host: \"*.b.example.com\" }\n",
        );
        let host = |h: &str| p.route_for(h, 443, Scheme::Https).map(|r| r.host.to_string());
        assert_eq!(host("api.example.com"), Some("api.example.com".into()));
        assert_eq!(host("x.example.com"), Some("*.example.com".into()));
        assert_eq!(host("y.b.example.com"), Some("*.b.example.com".into()));
        assert_eq!(host("example.com"), None, "a wildcard does not cover its own apex");
        assert_eq!(host("evilexample.com"), None);
        assert_eq!(p.route_for("api.example.com", 8443, Scheme::Https).map(|r| r.host.to_string()), None);
        assert_eq!(
            p.route_for("api.example.com", 80, Scheme::Http).map(|r| r.host.to_string()),
            Some("api.example.com".into())
        );
    }

    /// A wildcard never covers bot-bottle's own names, even one built
    /// around the manifest's checks.
    #[test]
    fn wildcards_do_not_cover_the_host_alias() {
        use bot_bottle_manifest::HostPattern;
        let mut p = policy("routes:\n  - { host: \"*.example.com\" }\n");
        let mut r = p.routes[0].clone();
        for suffix in ["bot-bottle.internal", "internal"] {
            r.host = HostPattern { kind: HostKind::Suffix(suffix.into()), port: Some(8080) };
            p.routes = vec![r.clone()];
            assert!(p.route_for("host.bot-bottle.internal", 8080, Scheme::Http).is_none(), "*.{suffix}");
        }
    }

    #[test]
    fn paths_and_methods() {
        let p = policy("routes:\n  - { host: api.example.com, methods: [GET], paths: [/v1/] }\n");
        let r = p.route_for("api.example.com", 443, Scheme::Https).expect("route");
        assert!(Policy::check_request(r, "GET", "/v1/models?x=1").is_ok());
        assert_eq!(Policy::check_request(r, "POST", "/v1/models").map_err(|d| d.rule), Err("method"));
        assert_eq!(Policy::check_request(r, "GET", "/v2/").map_err(|d| d.rule), Err("path"));
        assert_eq!(Policy::check_request(r, "GET", "/v10/x").map_err(|d| d.rule), Err("path"));
        // Normalised first: what is left of a traversal is what is matched.
        for sneaky in ["/v1/../admin", "/v1/%2e%2e/admin", "/v1/..%2fadmin", "/v1\\..\\admin", "/v1/..;/admin"] {
            let checked =
                super::super::path::normalize(sneaky).and_then(|p| Policy::check_request(r, "GET", &p).map(|()| p));
            assert!(checked.is_err(), "{sneaky}: {checked:?}");
        }
    }
}
