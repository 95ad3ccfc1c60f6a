//! Git's config format: a parser that reads what git reads, a sanitizer
//! that removes what would carry a credential (or reach for one on the
//! host) into the bottle, and a writer.
//!
//! The copy is written fresh from the parsed entries rather than edited in
//! place, so comments (where a token pasted "for later" would hide) never
//! reach the bottle either.

/// One `key = value` line, with the section it sits in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Lower case, as git compares it.
    pub(crate) section: String,
    pub(crate) subsection: Option<Subsection>,
    /// As written; git compares it case-insensitively.
    pub(crate) key: String,
    /// `None` for a bare `key` (boolean true).
    pub(crate) value: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Subsection {
    pub(crate) name: Vec<u8>,
    /// Written `[section.sub]` (case-insensitive) rather than `[section "sub"]`.
    pub(crate) legacy: bool,
}

impl Entry {
    fn key_lower(&self) -> String {
        self.key.to_ascii_lowercase()
    }

    /// `section.sub.key` for reports, with any credentials in the
    /// subsection (a URL) replaced.
    pub(crate) fn name(&self) -> String {
        match &self.subsection {
            Some(s) => {
                let (sub, _) = strip_userinfo(&s.name);
                format!("{}.{}.{}", self.section, String::from_utf8_lossy(&sub), self.key)
            }
            None => format!("{}.{}", self.section, self.key),
        }
    }
}

/// Where a config file fails to parse (1-based line).
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {what}")]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) what: &'static str,
}

struct Reader<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
}

impl Reader<'_> {
    /// The next byte, with `\r\n` read as `\n`; `None` at the end.
    fn next(&mut self) -> Option<u8> {
        let mut c = *self.src.get(self.pos)?;
        self.pos += 1;
        if c == b'\r' && self.src.get(self.pos) == Some(&b'\n') {
            self.pos += 1;
            c = b'\n';
        }
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn err(&self, what: &'static str) -> ParseError {
        ParseError { line: self.line, what }
    }
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

/// Parses a config file as git's `config.c` does.
pub(crate) fn parse(src: &[u8]) -> Result<Vec<Entry>, ParseError> {
    let src = src.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(src);
    let mut r = Reader { src, pos: 0, line: 1 };
    let mut out = Vec::new();
    let mut section: Option<(String, Option<Subsection>)> = None;
    let mut comment = false;
    while let Some(c) = r.next() {
        if c == b'\n' {
            comment = false;
            continue;
        }
        if comment || c.is_ascii_whitespace() {
            continue;
        }
        if c == b'#' || c == b';' {
            comment = true;
            continue;
        }
        if c == b'[' {
            section = Some(section_header(&mut r)?);
            continue;
        }
        if !c.is_ascii_alphabetic() {
            return Err(r.err("expected a section or a key"));
        }
        let Some((name, sub)) = &section else { return Err(r.err("a key before any section")) };
        let mut key = String::from(c as char);
        let mut c = r.next();
        while let Some(k) = c.filter(|k| is_key_char(*k)) {
            key.push(k as char);
            c = r.next();
        }
        while matches!(c, Some(b' ' | b'\t')) {
            c = r.next();
        }
        let value = match c {
            None | Some(b'\n') => None,
            Some(b'=') => Some(value(&mut r)?),
            Some(_) => return Err(r.err("expected `=` after a key")),
        };
        out.push(Entry { section: name.clone(), subsection: sub.clone(), key, value });
    }
    Ok(out)
}

fn section_header(r: &mut Reader<'_>) -> Result<(String, Option<Subsection>), ParseError> {
    let mut name = String::new();
    loop {
        let c = r.next().ok_or_else(|| r.err("unterminated section header"))?;
        match c {
            b']' => break,
            c if c.is_ascii_whitespace() => return extended_header(r, name),
            c if is_key_char(c) || c == b'.' => name.push(c.to_ascii_lowercase() as char),
            _ => return Err(r.err("bad character in a section name")),
        }
    }
    if name.is_empty() {
        return Err(r.err("empty section name"));
    }
    // `[section.sub]`: the old, case-insensitive form of a subsection.
    Ok(match name.split_once('.') {
        Some((s, sub)) => (s.to_owned(), Some(Subsection { name: sub.as_bytes().to_vec(), legacy: true })),
        None => (name, None),
    })
}

fn extended_header(r: &mut Reader<'_>, name: String) -> Result<(String, Option<Subsection>), ParseError> {
    let mut c = r.next();
    while matches!(c, Some(b' ' | b'\t')) {
        c = r.next();
    }
    if c != Some(b'"') || name.is_empty() || name.contains('.') {
        return Err(r.err("bad section header"));
    }
    let mut sub = Vec::new();
    loop {
        match r.next() {
            None | Some(b'\n') => return Err(r.err("unterminated subsection")),
            Some(b'"') => break,
            Some(b'\\') => match r.next() {
                None | Some(b'\n') => return Err(r.err("unterminated subsection")),
                Some(c) => sub.push(c),
            },
            Some(c) => sub.push(c),
        }
    }
    if r.next() != Some(b']') {
        return Err(r.err("expected `]` after a subsection"));
    }
    Ok((name, Some(Subsection { name: sub, legacy: false })))
}

/// A value after `=`: quotes, escapes, continuation lines and comments as
/// git reads them; whitespace outside quotes is trimmed at both ends.
fn value(r: &mut Reader<'_>) -> Result<Vec<u8>, ParseError> {
    let mut v = Vec::new();
    let (mut quote, mut comment, mut space) = (false, false, 0usize);
    loop {
        let c = r.next().unwrap_or(b'\n');
        if c == b'\n' {
            if quote {
                return Err(r.err("unterminated quote"));
            }
            return Ok(v);
        }
        if comment {
            continue;
        }
        if c.is_ascii_whitespace() && !quote {
            if !v.is_empty() {
                space += 1;
            }
            continue;
        }
        if !quote && (c == b';' || c == b'#') {
            comment = true;
            continue;
        }
        v.extend(std::iter::repeat_n(b' ', space));
        space = 0;
        match c {
            b'\\' => match r.next().unwrap_or(b'\n') {
                b'\n' => {}
                b't' => v.push(b'\t'),
                b'b' => v.push(8),
                b'n' => v.push(b'\n'),
                c @ (b'\\' | b'"') => v.push(c),
                _ => return Err(r.err("unknown escape in a value")),
            },
            b'"' => quote = !quote,
            c => v.push(c),
        }
    }
}

/// Writes entries back as a config file git reads to the same entries.
pub(crate) fn render(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut current: Option<(&str, Option<&Subsection>)> = None;
    for e in entries {
        let here = (e.section.as_str(), e.subsection.as_ref());
        if current != Some(here) {
            match &e.subsection {
                None => out.extend_from_slice(format!("[{}]\n", e.section).as_bytes()),
                Some(s) if s.legacy => {
                    out.extend_from_slice(format!("[{}.", e.section).as_bytes());
                    out.extend_from_slice(&s.name);
                    out.extend_from_slice(b"]\n");
                }
                Some(s) => {
                    out.extend_from_slice(format!("[{} \"", e.section).as_bytes());
                    for &c in &s.name {
                        if c == b'"' || c == b'\\' {
                            out.push(b'\\');
                        }
                        out.push(c);
                    }
                    out.extend_from_slice(b"\"]\n");
                }
            }
            current = Some(here);
        }
        out.push(b'\t');
        out.extend_from_slice(e.key.as_bytes());
        if let Some(v) = &e.value {
            out.extend_from_slice(b" = \"");
            for &c in v {
                match c {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    8 => out.extend_from_slice(b"\\b"),
                    c => out.push(c),
                }
            }
            out.push(b'"');
        }
        out.push(b'\n');
    }
    out
}

/// The last value of `section.key` (no subsection), as git would use it.
pub(crate) fn get<'e>(entries: &'e [Entry], section: &str, key: &str) -> Option<&'e [u8]> {
    entries
        .iter()
        .rev()
        .find(|e| e.section == section && e.subsection.is_none() && e.key.eq_ignore_ascii_case(key))
        .and_then(|e| e.value.as_deref())
}

/// How the copy's git dir relates to the project's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The git dir is copied where it was (`.git` in the project).
    InPlace,
    /// A worktree's or submodule's git dir from elsewhere becomes the
    /// copy's own `.git`: its `core.worktree` and `core.bare` would point
    /// the copy back at the host's layout.
    Inlined,
}

/// `http.*` keys that hold a credential, send one, or name a host file
/// holding one (client keys, cookie jars, CA files that would also replace
/// the bottle's CA).
const HTTP_KEYS: &[&str] = &[
    "extraheader",
    "cookiefile",
    "savecookies",
    "proxy",
    "proxyauthmethod",
    "proxysslcert",
    "proxysslkey",
    "proxysslcertpasswordprotected",
    "proxysslcainfo",
    "sslcert",
    "sslkey",
    "sslcertpasswordprotected",
    "sslcainfo",
    "sslcapath",
];

enum Verdict {
    Keep,
    /// Removed, and said so (with why, when the name alone does not say).
    Remove(&'static str),
    /// Removed silently: it describes the host's layout, not a secret.
    Forget,
}

/// Removes from a repository's config what would bring a credential into
/// the bottle, or a way to reach one on the host; strips credentials from
/// URLs that stay. Returns the entries kept and what was removed, by name
/// (never by value).
pub(crate) fn sanitize(entries: Vec<Entry>, layout: Layout) -> (Vec<Entry>, Vec<String>) {
    let mut kept = Vec::with_capacity(entries.len());
    let mut removed: Vec<String> = Vec::new();
    let mut note = |what: String| {
        if !removed.contains(&what) {
            removed.push(what);
        }
    };
    for mut e in entries {
        let key = e.key_lower();
        let section = e.section.as_str();
        let sub_has_credentials = e.subsection.as_ref().is_some_and(|s| strip_userinfo(&s.name).1);
        let verdict = match (section, key.as_str()) {
            // Helpers and stores of credentials, for any URL.
            ("credential", _) => Verdict::Remove(""),
            // Other files of the host's, read as config.
            ("include", "path") | ("includeif", "path") => Verdict::Remove(""),
            ("http", k) if HTTP_KEYS.contains(&k) => Verdict::Remove(""),
            ("remote", "proxy" | "proxyauthmethod") => Verdict::Remove(""),
            // Programs that connect, sign or ask for passwords with the host's keys.
            ("core", "sshcommand" | "askpass" | "gitproxy") => Verdict::Remove(""),
            ("gpg", "program") => Verdict::Remove(""),
            ("sendemail", "smtppass") => Verdict::Remove(""),
            ("core", "worktree" | "bare") if layout == Layout::Inlined => Verdict::Forget,
            ("core", "worktree") if e.value.as_deref().is_some_and(|v| v.starts_with(b"/")) => {
                Verdict::Remove(" (a host path)")
            }
            _ if sub_has_credentials => Verdict::Remove(" (credentials in its URL)"),
            _ => Verdict::Keep,
        };
        match verdict {
            Verdict::Forget => continue,
            Verdict::Remove(why) => {
                note(format!("{}{why}", e.name()));
                continue;
            }
            Verdict::Keep => {}
        }
        if let Some(v) = &e.value {
            let (clean, changed) = strip_userinfo(v);
            if changed {
                note(format!("{} (credentials in its URL)", e.name()));
                e.value = Some(clean);
            }
            let text = String::from_utf8_lossy(e.value.as_deref().unwrap_or_default()).into_owned();
            // By its value, or by its section and key (`github.token`); not
            // by a subsection, which is a URL or a name of the user's.
            if bot_bottle_manifest::looks_like_secret(&format!("{section}.{key}"), &text).is_some() {
                note(format!("{} (looks like a secret)", e.name()));
                continue;
            }
        }
        kept.push(e);
    }
    (kept, removed)
}

/// Removes credentials from every URL in `text`: all userinfo for http(s)
/// and ftp(s) (a token often sits in the user name), and the password for
/// any other scheme (`ssh://git@host` keeps its login name). Returns the
/// text and whether anything changed.
pub(crate) fn strip_userinfo(text: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    while i < text.len() {
        let Some(at) = find(&text[i..], b"://").map(|p| p + i) else {
            out.extend_from_slice(&text[i..]);
            break;
        };
        // The scheme: letters, digits, `+`, `-`, `.`, starting with a letter.
        let mut s = at;
        while s > i && (text[s - 1].is_ascii_alphanumeric() || b"+-.".contains(&text[s - 1])) {
            s -= 1;
        }
        while s < at && !text[s].is_ascii_alphabetic() {
            s += 1;
        }
        let scheme = text[s..at].to_ascii_lowercase();
        let start = at + 3;
        let end = text[start..]
            .iter()
            .position(|c| b"/?#\"'<>\\".contains(c) || c.is_ascii_whitespace())
            .map_or(text.len(), |p| p + start);
        out.extend_from_slice(&text[i..start]);
        let authority = &text[start..end];
        match authority.iter().rposition(|&c| c == b'@') {
            Some(a) if !scheme.is_empty() => {
                let userinfo = &authority[..a];
                if matches!(scheme.as_slice(), b"http" | b"https" | b"ftp" | b"ftps") {
                    changed = true;
                } else if let Some(colon) = userinfo.iter().position(|&c| c == b':') {
                    out.extend_from_slice(&userinfo[..colon]);
                    out.push(b'@');
                    changed = true;
                } else {
                    out.extend_from_slice(&authority[..=a]);
                }
                out.extend_from_slice(&authority[a + 1..]);
            }
            _ => out.extend_from_slice(authority),
        }
        i = end;
    }
    (out, changed)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(cfg: &str, layout: Layout) -> (String, Vec<String>) {
        let (kept, removed) = sanitize(parse(cfg.as_bytes()).expect("parses"), layout);
        (String::from_utf8(render(&kept)).expect("utf8"), removed)
    }

    #[test]
    fn parses_what_git_parses() {
        let cfg = "\u{feff}# comment\n[core]\n\trepositoryformatversion = 0\n\tbare = false ; trailing\n\
                   [remote \"origin\"]  url = \"https://x/a b\" # c\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n\
                   [Branch.Main]\n  merge = a \\\n  b\n  flag\n[x \"q\\\"uote\\\\\"]\n k = \"tab\\there\"  spaced   out  \n";
        let e = parse(cfg.as_bytes()).expect("parses");
        let show: Vec<(String, Option<String>)> =
            e.iter().map(|e| (e.name(), e.value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()))).collect();
        let want = [
            ("core.repositoryformatversion", Some("0")),
            ("core.bare", Some("false")),
            ("remote.origin.url", Some("https://x/a b")),
            ("remote.origin.fetch", Some("+refs/heads/*:refs/remotes/origin/*")),
            ("branch.main.merge", Some("a   b")),
            ("branch.main.flag", None),
            ("x.q\"uote\\.k", Some("tab\there  spaced   out")),
        ];
        let want: Vec<(String, Option<String>)> =
            want.iter().map(|(n, v)| ((*n).to_owned(), v.map(str::to_owned))).collect();
        assert_eq!(show, want);
        // What we write reads back to the same entries.
        assert_eq!(parse(&render(&e)).expect("round trip"), e);
    }

    #[test]
    fn refuses_what_git_refuses() {
        for bad in [
            "k = v\n",
            "[core\n",
            "[core]\n k = \"open\n",
            "[core]\n k = a\\q\n",
            "[a \"b\" ]\n",
            "[]\n",
            "[core]\n1k = v\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_go_and_remotes_stay() {
        let cfg = r#"
[core]
	repositoryformatversion = 0
	sshCommand = ssh -i ~/.ssh/deploy
	askPass = /usr/bin/ksshaskpass
	worktree = /home/u/elsewhere
[remote "origin"]
	url = https://x-access-token:ghs_abcdefghijklmnopqrstuvwxyz0123@github.com/org/app.git
	pushurl = ssh://git:hunter2@example.com/org/app.git
	proxy = http://user:pw@proxy:3128
	fetch = +refs/heads/*:refs/remotes/origin/*
[remote "mirror"]
	url = git@github.com:org/app.git
[http "https://github.com/"]
	extraheader = AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46Z2hz
	sslVerify = true
[http]
	cookieFile = /home/u/.cookies
	sslKey = /home/u/client.key
[credential]
	helper = store --file=/home/u/.git-credentials
[credential "https://user:pw@example.com"]
	username = me
[include]
	path = ~/.gitconfig.secret
[includeIf "gitdir:~/work/"]
	path = ~/work.gitconfig
[url "https://oauth2:glpat-abcdefghij0123456789@gitlab.com/"]
	insteadOf = https://gitlab.com/
[url "https://mirror.example.com/"]
	insteadOf = https://github.com/
[github]
	token = 0123456789abcdef
[sendemail]
	smtpPass = hunter2
[lfs]
	url = https://tok@lfs.example.com/x
[filter "lfs"]
	process = git-lfs filter-process
"#;
        let (out, removed) = names(cfg, Layout::InPlace);
        for secret in
            ["ghs_", "hunter2", "user:pw", "eC1h", "glpat", "0123456789abcdef", "tok@", "cookies", "client.key"]
        {
            assert!(!out.contains(secret), "{secret} kept:\n{out}");
        }
        for s in &removed {
            for secret in ["ghs_", "hunter2", "pw@", "glpat", "tok@"] {
                assert!(!s.contains(secret), "a report names a value: {s}");
            }
        }
        assert_eq!(
            removed,
            [
                "core.sshCommand",
                "core.askPass",
                "core.worktree (a host path)",
                "remote.origin.url (credentials in its URL)",
                "remote.origin.pushurl (credentials in its URL)",
                "remote.origin.proxy",
                "http.https://github.com/.extraheader",
                "http.cookieFile",
                "http.sslKey",
                "credential.helper",
                "credential.https://example.com.username",
                "include.path",
                "includeif.gitdir:~/work/.path",
                "url.https://gitlab.com/.insteadOf (credentials in its URL)",
                "github.token (looks like a secret)",
                "sendemail.smtpPass",
                "lfs.url (credentials in its URL)",
            ]
        );
        assert_eq!(
            out,
            "[core]\n\trepositoryformatversion = \"0\"\n\
             [remote \"origin\"]\n\turl = \"https://github.com/org/app.git\"\n\tpushurl = \"ssh://git@example.com/org/app.git\"\n\
             \tfetch = \"+refs/heads/*:refs/remotes/origin/*\"\n\
             [remote \"mirror\"]\n\turl = \"git@github.com:org/app.git\"\n\
             [http \"https://github.com/\"]\n\tsslVerify = \"true\"\n\
             [url \"https://mirror.example.com/\"]\n\tinsteadOf = \"https://github.com/\"\n\
             [lfs]\n\turl = \"https://lfs.example.com/x\"\n\
             [filter \"lfs\"]\n\tprocess = \"git-lfs filter-process\"\n"
        );
    }

    #[test]
    fn an_inlined_git_dir_forgets_the_host_layout() {
        let cfg = "[core]\n\tbare = true\n\tworktree = ../../../sub\n\tfilemode = true\n";
        assert_eq!(names(cfg, Layout::Inlined), ("[core]\n\tfilemode = \"true\"\n".into(), vec![]));
        // In place, a relative worktree (a submodule's) is kept.
        assert_eq!(
            names(cfg, Layout::InPlace).0,
            "[core]\n\tbare = \"true\"\n\tworktree = \"../../../sub\"\n\tfilemode = \"true\"\n"
        );
    }

    #[test]
    fn userinfo_in_free_text() {
        let s = |t: &str| {
            let (o, c) = strip_userinfo(t.as_bytes());
            (String::from_utf8(o).expect("utf8"), c)
        };
        assert_eq!(
            s("abc\t\tbranch 'main' of https://tok:x@github.com/o/r\n"),
            ("abc\t\tbranch 'main' of https://github.com/o/r\n".into(), true)
        );
        assert_eq!(
            s("clone: from HTTPS://ghp_x@h/r and ssh://u:p@h:22/r"),
            ("clone: from HTTPS://h/r and ssh://u@h:22/r".into(), true)
        );
        assert_eq!(s("ssh://git@h/r https://h/p@x"), ("ssh://git@h/r https://h/p@x".into(), false));
        assert_eq!(s("no urls here: a@b ://x@y"), ("no urls here: a@b ://x@y".into(), false));
    }
}
