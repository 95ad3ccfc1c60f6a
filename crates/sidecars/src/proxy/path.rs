//! Request paths: normalised once, matched on segment boundaries.
//!
//! On a route with `paths:`, the path is normalised before it is matched,
//! and the normalised form is what goes upstream, so the upstream cannot
//! read it differently from the check: percent-encoded unreserved
//! characters are decoded, other escapes upper-cased, and `.`/`..` segments
//! removed. Forms that servers disagree about are refused outright: an
//! encoded `/`, `.`, `\` or `%`, a `;` parameter in a segment, a backslash,
//! a NUL or any control byte.

use super::policy::{Denial, deny};

/// The normalised path (and the query, untouched) of `path_q`.
pub(crate) fn normalize(path_q: &str) -> Result<String, Denial> {
    let (path, query) = match path_q.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_q, None),
    };
    let ambiguous =
        |what: &str| deny("path", format!("the path holds {what}, which servers read differently; refused"));
    if !path.starts_with('/') {
        return Err(deny("path", "the request target is not an absolute path"));
    }
    if path.contains('\\') {
        return Err(ambiguous("a backslash"));
    }
    if path.contains(';') {
        return Err(ambiguous("a `;` parameter"));
    }
    if path.contains('#') || path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(ambiguous("a control character or `#`"));
    }
    // Decode escapes of unreserved characters; refuse those of `/`, `.`,
    // `\`, `%` (double encoding) and anything below 0x20.
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) else {
                return Err(ambiguous("a malformed `%` escape"));
            };
            let v = (h * 16 + l) as u8;
            match v {
                b'/' | b'.' | b'\\' | b'%' | b';' => return Err(ambiguous(&format!("an encoded `{}`", v as char))),
                0..0x20 | 0x7f => return Err(ambiguous("an encoded control character")),
                _ if v.is_ascii_alphanumeric() || v == b'-' || v == b'_' || v == b'~' => out.push(v as char),
                _ => out.push_str(&format!("%{v:02X}")),
            }
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    let mut norm = remove_dot_segments(&out);
    if let Some(q) = query {
        norm.push('?');
        norm.push_str(q);
    }
    Ok(norm)
}

/// RFC 3986 section 5.2.4, on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => trailing = i == last,
            ".." => {
                segs.pop();
                trailing = i == last;
            }
            s => {
                segs.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::from("/");
    out.push_str(&segs.join("/"));
    if trailing && !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// Whether normalised `path` (query excluded) is `prefix` or below it, on
/// segment boundaries: `/repos/org/app` covers `/repos/org/app` and
/// `/repos/org/app/x`, never `/repos/org/app-secrets`.
pub(crate) fn under(path: &str, prefix: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true;
    }
    path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_what_is_unambiguous() {
        for (raw, want) in [
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/../../a", "/a"),
            ("/%61pp/%7Ex?q=%2F..", "/app/~x?q=%2F.."),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/", "/"),
            ("/a//b", "/a//b"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_what_servers_read_differently() {
        for raw in [
            "/a/..;/b",
            "/a;x=1/b",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/a%2fb",
            "/a%5cb",
            "/a\\b",
            "/a/%252e%252e/b",
            "/a%00b",
            "/a%zz",
            "/a%2",
            "*",
            "a/b",
        ] {
            assert!(normalize(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(under("/repos/org/app", "/repos/org/app"));
        assert!(under("/repos/org/app/pulls?x=1", "/repos/org/app"));
        assert!(!under("/repos/org/app-secrets/x", "/repos/org/app"));
        assert!(under("/v1/models", "/v1/"));
        assert!(under("/v1", "/v1/"));
        assert!(!under("/v10/models", "/v1/"));
        assert!(!under("/v10/models", "/v1"));
        assert!(under("/anything", "/"));
    }
}
