//! What an agent is told when the proxy refuses a request: one function
//! writes the text, so every refusal (host, path, method, upgrade, DLP,
//! limits) says the same things in the same shape, and the way to ask for
//! access changes in one place (supervise's `request_egress` tool joins it
//! when supervise exists).
//!
//! Clients show different parts of a response: curl and node print the
//! body, git prints a `text/plain` body as `remote:` lines, Python's
//! `urllib`, `requests` and pip print the reason phrase. So the reason goes
//! in all three: the body, the reason phrase, and `X-Bot-Bottle-Denied`
//! (machine-readable: `rule=...; host=...`).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::policy::Denial;
use super::upstream::ProxyBody;

/// The header that names the refusing rule.
pub(crate) const DENIED_HEADER: &str = "x-bot-bottle-denied";

/// What the denial is about: the request's target and method.
pub(crate) struct Target<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
}

/// How to ask for access: the file that holds the bottle's routes, when the
/// proxy runs for a bottle.
#[derive(Clone, Debug, Default)]
pub(crate) struct Hint {
    pub(crate) routes_file: Option<String>,
    /// The agent can ask a human for access through supervise.
    pub(crate) supervise: bool,
}

/// The route entry that would allow `t`, for the text.
fn suggestion(d: &Denial, t: &Target<'_>) -> Option<String> {
    let host = if t.port == 443 || t.port == 80 {
        t.host.to_owned()
    } else if t.host.contains(':') {
        format!("\"[{}]:{}\"", t.host, t.port)
    } else {
        format!("\"{}:{}\"", t.host, t.port)
    };
    let dir = t.path.rsplit_once('/').map_or("/", |(d, _)| if d.is_empty() { "/" } else { d });
    Some(match d.rule {
        "host" | "internal-address" | "ip-literal" => format!("- host: {host}"),
        "path" => format!("- host: {host}\n      paths: [\"{dir}\"]   (add to the route's paths)"),
        "method" => format!("- host: {host}\n      methods: [{}]   (add to the route's methods)", t.method),
        "upgrade" => format!("- host: {host}\n      websocket: true"),
        _ => return None,
    })
}

/// The body text of a denial.
pub(crate) fn text(d: &Denial, t: &Target<'_>, hint: &Hint) -> String {
    let mut s = format!(
        "bot-bottle egress proxy: request denied\nhost: {}:{}\nrule: {}\nreason: {}\n",
        t.host, t.port, d.rule, d.reason
    );
    match (suggestion(d, t), &hint.routes_file) {
        (Some(entry), Some(file)) => {
            s += &format!(
                "to allow it: add this entry under egress.routes in {file} and start the bottle again:\n    {entry}\n"
            )
        }
        (Some(entry), None) => s += &format!("to allow it: add this entry to the proxy's routes file:\n    {entry}\n"),
        (None, _) if d.rule == "dlp" => {
            s += "this request carried a secret; the proxy never forwards one. Do not send credentials: \
                  routes that need a token get it injected by the proxy.\n"
        }
        (None, _) => {}
    }
    if hint.supervise && d.rule != "dlp" {
        s += &format!(
            "or ask for access now: call the supervise MCP tool `request_egress` with host \"{}\" and a justification; \
             a human decides, and an approval applies at once\n",
            t.host
        );
    }
    s
}

/// A reason phrase (RFC 9112: visible ASCII, space and tab) for clients
/// that show only the status line.
fn reason_phrase(d: &Denial, t: &Target<'_>) -> String {
    let phrase =
        format!("Forbidden by bot-bottle egress policy (rule {}: {}) for {}:{}", d.rule, d.reason, t.host, t.port);
    phrase.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).take(300).collect()
}

/// The response for a denial with `status` (403, or 400/503 for malformed
/// requests and limits).
pub(crate) fn response(status: StatusCode, d: &Denial, t: &Target<'_>, hint: &Hint) -> Response<ProxyBody> {
    let mut r = super::text(status, text(d, t, hint));
    let header = format!("rule={}; host={}:{}", d.rule, t.host, t.port);
    if let Ok(v) = HeaderValue::from_str(&header.replace(|c: char| !c.is_ascii_graphic() && c != ' ', "?")) {
        r.headers_mut().insert(DENIED_HEADER, v);
    }
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    if let Ok(p) = hyper::ext::ReasonPhrase::try_from(reason_phrase(d, t).into_bytes()) {
        r.extensions_mut().insert(p);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::super::policy::deny;
    use super::*;

    #[test]
    fn names_the_file_and_the_entry_to_add() {
        let t = Target { host: "pypi.org", port: 443, method: "GET", path: "/simple/requests/" };
        let hint = Hint { routes_file: Some(".bot-bottle/bottles/dev.yaml".into()), supervise: false };
        let s = text(&deny("host", "no route allows pypi.org:443"), &t, &hint);
        assert!(s.contains("rule: host") && s.contains(".bot-bottle/bottles/dev.yaml"), "{s}");
        assert!(s.contains("- host: pypi.org\n"), "{s}");
        let s = text(&deny("path", "not under an allowed path"), &t, &hint);
        assert!(s.contains("paths: [\"/simple/requests\"]"), "{s}");
        let t = Target { host: "10.0.0.1", port: 8443, method: "DELETE", path: "/x" };
        let s = text(&deny("method", "DELETE is not allowed"), &t, &Hint::default());
        assert!(s.contains("host: \"10.0.0.1:8443\"") && s.contains("methods: [DELETE]"), "{s}");
        let s = text(&deny("host", "no route"), &t, &Hint { routes_file: None, supervise: true });
        assert!(s.contains("`request_egress`") && s.contains("\"10.0.0.1\""), "{s}");
        let p = reason_phrase(&deny("host", "line\r\nbreak"), &t);
        assert!(!p.contains('\r') && !p.contains('\n'), "{p}");
    }
}
