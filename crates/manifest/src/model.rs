//! The validated manifest model. Every value here has passed its checks:
//! a `HostPattern` is a real host pattern, a `GitUrl` a supported remote, an
//! `EnvName` a legal variable name. Functions downstream take these types and
//! need not re-check.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use indexmap::IndexMap;
use serde::{Serialize, Serializer};

/// Why a scalar failed validation: a message and, when there is one, a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) message: String,
    pub(crate) help: Option<String>,
}

pub(crate) fn invalid(message: impl Into<String>, help: impl Into<String>) -> Invalid {
    Invalid { message: message.into(), help: Some(help.into()) }
}

macro_rules! serialize_display {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}

serialize_display!(HostPattern, EnvName, GitUrl, ByteSize, Method, Cpus);

// ---------------------------------------------------------------------------
// Names

/// Checks an agent, bottle, skill or repo name. Names become file names,
/// labels and argv elements, so they are kept to a safe alphabet and never
/// start with `-` or `.`.
pub(crate) fn check_name(s: &str) -> Result<(), Invalid> {
    let ok_first = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok_first && ok_rest && s.len() <= 64 {
        Ok(())
    } else {
        Err(invalid(
            format!("invalid name `{s}`"),
            "names are 1-64 characters of letters, digits, `.`, `_` and `-`, starting with a letter or digit",
        ))
    }
}

// ---------------------------------------------------------------------------
// Environment variable names

/// A legal environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvName(String);

impl EnvName {
    pub(crate) fn parse(s: &str) -> Result<Self, Invalid> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && s.len() <= 128 {
            Ok(EnvName(s.to_owned()))
        } else {
            Err(invalid(
                format!("invalid environment variable name `{s}`"),
                "use letters, digits and `_`, not starting with a digit (e.g. `ANTHROPIC_API_KEY`)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Variables bot-bottle sets inside every bottle to route traffic through the
/// proxy and trust its CA. A bottle may not override them: doing so would at
/// best break the agent and at worst point it at another proxy.
pub(crate) const RESERVED_ENV: &[&str] =
    &["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_DIR", "NODE_USE_ENV_PROXY"];

/// The variables that point a runtime at a CA bundle. Provisioning sets
/// every one of them to the bottle's bundle; a bottle may set none of them
/// (see [`is_reserved_env`]). One list, so the two can never disagree.
pub const CA_BUNDLE_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "AWS_CA_BUNDLE",
    "DENO_CERT",
];

/// Whether bot-bottle sets this variable itself (in any case).
pub(crate) fn is_reserved_env(name: &str) -> bool {
    RESERVED_ENV.iter().chain(CA_BUNDLE_VARS).any(|r| r.eq_ignore_ascii_case(name))
}

/// Whether a plain `env:` value looks like a credential. Bottle env is
/// written into the sandbox and shown in plans, so a secret there would leak;
/// secrets belong in the host environment, referenced by name.
pub fn looks_like_secret(name: &str, value: &str) -> Option<&'static str> {
    const PREFIXES: &[(&str, &str)] = &[
        ("sk-ant-", "an Anthropic API key"),
        ("sk-proj-", "an OpenAI API key"),
        ("ghp_", "a GitHub token"),
        ("gho_", "a GitHub token"),
        ("ghu_", "a GitHub token"),
        ("ghs_", "a GitHub token"),
        ("ghr_", "a GitHub token"),
        ("github_pat_", "a GitHub token"),
        ("glpat-", "a GitLab token"),
        ("xoxb-", "a Slack token"),
        ("xoxp-", "a Slack token"),
        ("xapp-", "a Slack token"),
        ("AKIA", "an AWS access key id"),
        ("ASIA", "an AWS access key id"),
        ("AIza", "a Google API key"),
        ("npm_", "an npm token"),
        ("pypi-", "a PyPI token"),
        ("sk_live_", "a Stripe key"),
        ("rk_live_", "a Stripe key"),
        ("hf_", "a Hugging Face token"),
        ("-----BEGIN", "a private key"),
    ];
    for (prefix, what) in PREFIXES {
        if value.starts_with(prefix) && value.len() >= prefix.len() + 8 {
            return Some(what);
        }
    }
    if value.starts_with("sk-") && value.len() >= 20 {
        return Some("an API key");
    }
    if value.starts_with("eyJ") && value.matches('.').count() == 2 && value.len() >= 30 {
        return Some("a JSON web token");
    }
    let upper = name.to_ascii_uppercase();
    let secret_name =
        ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "APIKEY", "PRIVATE_KEY", "CREDENTIAL", "ACCESS_KEY"]
            .iter()
            .any(|w| upper.contains(w));
    if secret_name && !value.is_empty() {
        return Some("a secret (by its name)");
    }
    None
}

// ---------------------------------------------------------------------------
// Hosts

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostKind {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`: any name strictly below `example.com`.
    Suffix(String),
    /// An IP address, named explicitly (the proxy refuses IPs no route names).
    Ip(IpAddr),
}

/// A route's host: exact, `*.suffix` or an IP literal, with an optional port.
/// Lower-cased; the text form is the key routes merge by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPattern {
    pub kind: HostKind,
    pub port: Option<u16>,
}

impl HostPattern {
    pub(crate) fn parse(raw: &str) -> Result<Self, Invalid> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(invalid("empty host", "name a host such as `api.example.com`"));
        }
        if s.contains("://") || s.contains('/') {
            return Err(invalid(
                format!("`{raw}` is a URL, not a host"),
                "give the bare host (`api.example.com`) and put path prefixes under `paths:`",
            ));
        }
        // Bracketed IPv6, optionally with a port.
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or_else(|| {
                invalid(format!("invalid host `{raw}`"), "write IPv6 addresses as `[::1]` or `[::1]:8080`")
            })?;
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| invalid(format!("invalid IPv6 address `{addr}`"), "write IPv6 addresses as `[::1]`"))?;
            let port = match after {
                "" => None,
                p => Some(parse_port(p.strip_prefix(':').unwrap_or(p), raw)?),
            };
            return Ok(HostPattern { kind: HostKind::Ip(ip), port });
        }
        if s.matches(':').count() > 1 {
            return Err(invalid(format!("invalid host `{raw}`"), "write IPv6 addresses in brackets: `[::1]`"));
        }
        let (name, port) = match s.split_once(':') {
            Some((n, p)) => (n, Some(parse_port(p, raw)?)),
            None => (s, None),
        };
        let lower = name.to_ascii_lowercase();
        if let Ok(ip) = lower.parse::<IpAddr>() {
            return Ok(HostPattern { kind: HostKind::Ip(ip), port });
        }
        if lower.ends_with('.') {
            return Err(invalid(format!("invalid host `{raw}`"), "drop the trailing dot"));
        }
        if let Some(suffix) = lower.strip_prefix("*.") {
            check_dns_name(suffix, raw)?;
            if !suffix.contains('.') {
                return Err(invalid(
                    format!("wildcard `{raw}` covers a whole top-level domain"),
                    "name at least two labels after `*.`, e.g. `*.example.com`",
                ));
            }
            return Ok(HostPattern { kind: HostKind::Suffix(suffix.to_owned()), port });
        }
        if lower.contains('*') {
            return Err(invalid(
                format!("invalid wildcard `{raw}`"),
                "a wildcard may only be a leading `*.` label, e.g. `*.example.com`",
            ));
        }
        check_dns_name(&lower, raw)?;
        Ok(HostPattern { kind: HostKind::Exact(lower), port })
    }
}

fn parse_port(p: &str, raw: &str) -> Result<u16, Invalid> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(format!("invalid port in `{raw}`"), "ports are 1-65535")),
    }
}

fn check_dns_name(name: &str, raw: &str) -> Result<(), Invalid> {
    let bad = || {
        invalid(
            format!("invalid host `{raw}`"),
            "hosts are DNS names: labels of letters, digits and `-`, separated by `.`",
        )
    };
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            HostKind::Exact(h) => f.write_str(h)?,
            HostKind::Suffix(s) => write!(f, "*.{s}")?,
            HostKind::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            HostKind::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Routes

/// An HTTP method a route allows. Upper-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Method(String);

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl Method {
    pub(crate) fn parse(s: &str) -> Result<Self, Invalid> {
        let up = s.to_ascii_uppercase();
        if METHODS.contains(&up.as_str()) {
            return Ok(Method(up));
        }
        let help = match crate::schema::suggest(&up, METHODS) {
            Some(m) => format!("did you mean `{m}`?"),
            None => format!("allowed methods: {}", METHODS.join(", ")),
        };
        Err(Invalid { message: format!("unknown HTTP method `{s}`"), help: Some(help) })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn check_path_prefix(p: &str) -> Result<(), Invalid> {
    let ok = p.starts_with('/')
        && p.chars().all(|c| c.is_ascii_graphic())
        && !p.contains(['?', '#'])
        && !p.split('/').any(|seg| seg == "..");
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("invalid path prefix `{p}`"),
            "path prefixes start with `/` and hold no spaces, `?`, `#` or `..` segments (e.g. `/v1/`)",
        ))
    }
}

/// Checks one `workspace.include-ignored` pattern: `.gitignore` syntax,
/// relative to the project, naming ignored files to copy in anyway.
pub(crate) fn check_include_pattern(p: &str) -> Result<(), Invalid> {
    let help = "write a `.gitignore`-style pattern relative to the project, e.g. `.env.example` or `vendor/`";
    if p.trim().is_empty() {
        return Err(invalid("empty pattern", help));
    }
    if p.starts_with('#') {
        return Err(invalid(format!("`{p}` is a comment in `.gitignore` syntax"), "escape a leading `#` as `\\#`"));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err(invalid("a pattern holds a control character", help));
    }
    let body = p.strip_prefix('!').unwrap_or(p);
    let body = body.strip_prefix('/').unwrap_or(body);
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Err(invalid(format!("`{p}` names no file"), help));
    }
    if body.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()) {
        return Err(invalid(
            format!("`{p}` has an empty, `.` or `..` segment"),
            "patterns name paths inside the project, e.g. `config/local.toml`",
        ));
    }
    if body.split('/').any(|seg| seg == ".git") {
        return Err(invalid(
            format!("`{p}` reaches into `.git`"),
            "the repository's `.git` is copied as a repository (objects and refs), never by pattern; remove this entry",
        ));
    }
    // The same glob dialect the copy compiles these with (the `ignore` crate's).
    let glob = if body.contains('/') { body.to_owned() } else { format!("**/{body}") };
    globset::GlobBuilder::new(&glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| invalid(format!("invalid pattern `{p}`: {}", e.kind()), help))?;
    Ok(())
}

/// Whether the proxy decrypts and inspects a route's traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Decrypt with the bottle CA; paths, methods, injection and DLP apply.
    #[default]
    Inspect,
    /// Tunnel without decrypting, for clients that pin certificates: only
    /// host and port are checked; nothing is inspected or injected.
    Passthrough,
}

/// A token the proxy adds to requests on a route, read from the host env.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inject {
    /// Header name, lower-cased.
    pub header: String,
    /// The host variable holding the real token. Only its name is ever kept.
    pub env: EnvName,
    /// How the value is written, `{}` standing for the token (e.g. `Bearer {}`).
    pub format: String,
}

pub(crate) fn check_header_name(h: &str) -> Result<String, Invalid> {
    let ok = !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if !ok {
        return Err(invalid(format!("invalid header name `{h}`"), "e.g. `authorization` or `x-api-key`"));
    }
    if looks_like_secret("", h).is_some() {
        return Err(invalid(
            format!("header name `{h}` looks like a secret"),
            "`header` names the header (e.g. `x-api-key`); the token itself stays in the host environment, named by `env`",
        ));
    }
    let lower = h.to_ascii_lowercase();
    if matches!(lower.as_str(), "host" | "content-length" | "transfer-encoding" | "connection" | "upgrade" | "te") {
        return Err(invalid(
            format!("header `{h}` cannot be injected"),
            "inject credentials into headers like `authorization` or `x-api-key`",
        ));
    }
    Ok(lower)
}

pub(crate) fn check_inject_format(f: &str) -> Result<(), Invalid> {
    if f.matches("{}").count() == 1 && !f.contains(['\r', '\n']) {
        Ok(())
    } else {
        Err(invalid(
            format!("invalid inject format `{f}`"),
            "the format holds exactly one `{}` where the token goes, e.g. `Bearer {}`",
        ))
    }
}

/// One allowed egress destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub host: HostPattern,
    /// Path prefixes; empty means any path.
    pub paths: Vec<String>,
    /// Methods; empty means any method.
    pub methods: Vec<Method>,
    pub inject: Option<Inject>,
    pub tls: TlsMode,
    pub websocket: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DlpMode {
    Block,
    Log,
}

// ---------------------------------------------------------------------------
// Git

/// A git remote the gate forwards pushes to. `git@host:path` is normalised
/// to `ssh://git@host/path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GitUrl {
    Ssh { user: Option<String>, host: String, port: Option<u16>, path: String },
    Https { host: String, port: Option<u16>, path: String },
}

impl GitUrl {
    pub(crate) fn parse(raw: &str) -> Result<Self, Invalid> {
        let s = raw.trim();
        let unsupported = || {
            invalid(
                format!("unsupported git URL `{raw}`"),
                "use ssh://git@host/org/repo.git, git@host:org/repo.git or https://host/org/repo.git",
            )
        };
        if s.starts_with('-') {
            return Err(invalid(format!("git URL `{raw}` starts with `-`"), "give a real remote URL"));
        }
        // Credentials never belong in a URL. Catch them before any other
        // check so that no error message quotes them.
        let userinfo = match s.split_once("://") {
            Some((_, rest)) => rest.split('/').next().and_then(|a| a.rsplit_once('@')).map(|(u, _)| u),
            None => s.split('/').next().and_then(|a| a.rsplit_once('@')).map(|(u, _)| u),
        };
        if let Some(u) = userinfo {
            let web = s.starts_with("https://") || s.starts_with("http://");
            if u.contains(':') || web {
                return Err(invalid(
                    "git URL carries credentials".to_owned(),
                    "never put credentials in a URL; name a key instead: `key: { provider: token, env: NAME }` (https) or `key: { provider: static, path: ... }` (ssh)",
                ));
            }
        }
        if let Some(rest) = s.strip_prefix("ssh://") {
            let (authority, path) = rest.split_once('/').ok_or_else(unsupported)?;
            let (user, hostport) = match authority.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, authority),
            };
            let (host, port) = split_host_port(hostport, raw)?;
            let user = user.map(|u| check_git_user(u, raw)).transpose()?;
            return Ok(GitUrl::Ssh { user, host, port, path: check_repo_path(path, raw)? });
        }
        if let Some(rest) = s.strip_prefix("https://") {
            let (authority, path) = rest.split_once('/').ok_or_else(unsupported)?;
            let (host, port) = split_host_port(authority, raw)?;
            return Ok(GitUrl::Https { host, port, path: check_repo_path(path, raw)? });
        }
        if s.starts_with("http://") || s.starts_with("git://") {
            return Err(invalid(
                format!("plaintext git URL `{raw}`"),
                "use https:// or ssh://; plaintext transports can be read and altered on the way",
            ));
        }
        if s.contains("://") || s.starts_with("ext::") || s.starts_with('/') || s.starts_with('.') {
            return Err(unsupported());
        }
        // scp-like: [user@]host:path
        let (authority, path) = s.split_once(':').ok_or_else(unsupported)?;
        if authority.contains('/') || path.starts_with("//") {
            return Err(unsupported());
        }
        let (user, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(check_git_user(u, raw)?), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(host, raw)?;
        Ok(GitUrl::Ssh { user, host, port, path: check_repo_path(path.trim_start_matches('/'), raw)? })
    }

    pub fn is_ssh(&self) -> bool {
        matches!(self, GitUrl::Ssh { .. })
    }

    pub fn host(&self) -> &str {
        match self {
            GitUrl::Ssh { host, .. } | GitUrl::Https { host, .. } => host,
        }
    }
}

fn check_git_user(u: &str, raw: &str) -> Result<String, Invalid> {
    if !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) && !u.starts_with('-') {
        Ok(u.to_owned())
    } else {
        Err(invalid(format!("invalid user in git URL `{raw}`"), "e.g. `git@github.com:org/app.git`"))
    }
}

fn split_host_port(s: &str, raw: &str) -> Result<(String, Option<u16>), Invalid> {
    let (h, p) = match s.split_once(':') {
        Some((h, p)) => (h, Some(parse_port(p, raw)?)),
        None => (s, None),
    };
    let lower = h.to_ascii_lowercase();
    if lower.parse::<IpAddr>().is_err() {
        check_dns_name(&lower, raw)?;
    }
    Ok((lower, p))
}

fn check_repo_path(p: &str, raw: &str) -> Result<String, Invalid> {
    let ok = !p.is_empty()
        && !p.starts_with('-')
        && p.chars().all(|c| c.is_ascii_graphic() && !"\\?#'\"`$;|&<>:@".contains(c))
        && !p.split('/').any(|seg| seg == "..");
    if ok {
        Ok(p.to_owned())
    } else {
        Err(invalid(format!("invalid repository path in `{raw}`"), "e.g. `org/app.git`"))
    }
}

impl fmt::Display for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitUrl::Ssh { user, host, port, path } => {
                f.write_str("ssh://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                f.write_str(host)?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                write!(f, "/{path}")
            }
            GitUrl::Https { host, port, path } => {
                write!(f, "https://{host}")?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                write!(f, "/{path}")
            }
        }
    }
}

/// Where the gate gets the credential it pushes upstream with. The agent
/// never sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum KeySource {
    /// A deploy key file on the host (ssh remotes).
    Static { path: PathBuf },
    /// A deploy key minted through the GitHub API with a host token (ssh remotes).
    /// `api` is the REST base URL; default `https://api.github.com` for
    /// github.com, else `https://HOST/api/v3` (GitHub Enterprise).
    Github {
        forge_token_env: EnvName,
        #[serde(skip_serializing_if = "Option::is_none")]
        api: Option<String>,
    },
    /// A deploy key minted through a Gitea API with a host token (ssh remotes).
    /// `api` is the REST base URL; default `https://HOST/api/v1`.
    Gitea {
        forge_token_env: EnvName,
        #[serde(skip_serializing_if = "Option::is_none")]
        api: Option<String>,
    },
    /// An HTTPS token from the host environment (https remotes).
    Token { env: EnvName },
}

/// A pinned SSH host key: `<type> <base64>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostKey {
    pub key_type: String,
    pub base64: String,
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

impl HostKey {
    pub(crate) fn parse(raw: &str) -> Result<Self, Invalid> {
        let help = "paste one line of `ssh-keyscan HOST` without the host name, e.g. `ssh-ed25519 AAAAC3Nza...`";
        let mut parts = raw.split_whitespace();
        let (Some(key_type), Some(b64)) = (parts.next(), parts.next()) else {
            return Err(invalid("host key must be `<type> <base64>`", help));
        };
        if !KEY_TYPES.contains(&key_type) {
            return Err(invalid(
                format!("unknown host key type `{key_type}`"),
                format!("one of: {}", KEY_TYPES.join(", ")),
            ));
        }
        // The blob starts with the length-prefixed key type; checking it catches
        // truncated or mismatched pastes.
        let blob = decode_base64(b64).ok_or_else(|| invalid("host key is not valid base64", help))?;
        let declared = blob.get(4..).and_then(|rest| {
            let n = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
            rest.get(..n)
        });
        if declared != Some(key_type.as_bytes()) {
            return Err(invalid(format!("host key data does not hold a `{key_type}` key"), help));
        }
        Ok(HostKey { key_type: key_type.to_owned(), base64: b64.to_owned() })
    }
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let body = s.trim_end_matches('=');
    if !s.len().is_multiple_of(4) || s.len() - body.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in body.as_bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

pub(crate) fn check_branch_glob(b: &str) -> Result<(), Invalid> {
    let ok = !b.is_empty()
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("@{")
        && b.chars().all(|c| c.is_ascii_graphic() && !"~^:?[\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("invalid branch pattern `{b}`"),
            "a branch name, where `*` matches within one path segment, e.g. `bot/*`",
        ))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GitUser {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// One upstream repository the gate forwards pushes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Repo {
    pub url: GitUrl,
    pub key: KeySource,
    pub host_key: Option<HostKey>,
    pub branches: Vec<String>,
    /// Whether the agent may rewrite a branch (a push that is not a fast-forward).
    pub allow_force_push: bool,
    /// Whether the agent may delete a branch.
    pub allow_delete: bool,
}

/// Checks a forge's REST base URL: https, a host, no credentials, no query.
/// Returned without a trailing `/`.
pub(crate) fn check_api_url(raw: &str) -> Result<String, Invalid> {
    let help = "the forge's REST base URL, e.g. `https://gitea.example.com/api/v1`";
    let Some(rest) = raw.strip_prefix("https://") else {
        return Err(invalid(format!("forge API URL `{raw}` is not https"), help));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(invalid(
            "forge API URL carries credentials",
            "never put credentials in a URL; the token comes from `forge_token_env`",
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    let host_ok = !host.is_empty()
        && (host.parse::<IpAddr>().is_ok()
            || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok()
            || check_dns_name(&host.to_ascii_lowercase(), raw).is_ok());
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    let path_ok = rest[authority.len()..].chars().all(|c| c.is_ascii_graphic() && !"?#\\'\"`$;|&<>@".contains(c));
    if host_ok && port_ok && path_ok {
        Ok(raw.trim_end_matches('/').to_owned())
    } else {
        Err(invalid(format!("invalid forge API URL `{raw}`"), help))
    }
}

// ---------------------------------------------------------------------------
// Resources

/// CPU count in thousandths, so `0.5` and `2` are both exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus(pub u32);

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            let s = format!("{}.{:03}", self.0 / 1000, self.0 % 1000);
            f.write_str(s.trim_end_matches('0'))
        }
    }
}

/// A size in bytes (memory, disk), written like `4GiB` or `512MiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub(crate) fn parse(s: &str) -> Result<Self, Invalid> {
        ByteSize::parse_for("memory", s)
    }

    /// `s` as the size of `what` (named in the error when it is too small).
    pub(crate) fn parse_for(what: &str, s: &str) -> Result<Self, Invalid> {
        let bad = || invalid(format!("invalid size `{s}`"), "write sizes like `512MiB`, `4GiB` or `2G`");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" | "k" | "kB" => 1000,
            "KiB" => 1 << 10,
            "M" | "MB" => 1000 * 1000,
            "MiB" => 1 << 20,
            "G" | "GB" => 1000 * 1000 * 1000,
            "GiB" => 1 << 30,
            "T" | "TB" => 1000 * 1000 * 1000 * 1000,
            "TiB" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = n.checked_mul(mult).ok_or_else(bad)?;
        if bytes < 16 << 20 {
            return Err(invalid(format!("{what} `{s}` is too small"), "give at least 16MiB"));
        }
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub cpus: Option<Cpus>,
    pub memory: Option<ByteSize>,
    pub pids: Option<u32>,
    /// How much the bottle may add to the host's disk (its workspace);
    /// the backend's default when unset.
    pub disk: Option<ByteSize>,
}

// ---------------------------------------------------------------------------
// Bottles and agents

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Auto,
    Native,
    Docker,
    Smolmachines,
}

impl BackendKind {
    pub const NAMES: &[&str] = &["auto", "native", "docker", "smolmachines"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => BackendKind::Auto,
            "native" => BackendKind::Native,
            "docker" => BackendKind::Docker,
            "smolmachines" => BackendKind::Smolmachines,
            _ => return None,
        })
    }
    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Native => "native",
            BackendKind::Docker => "docker",
            BackendKind::Smolmachines => "smolmachines",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    /// An image reference, e.g. `node:22-slim`.
    Image(String),
    /// A Dockerfile, absolute (resolved against the bottle file's folder).
    Dockerfile(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    Copy,
    Mount,
    None,
}

/// One bottle layer, or the merge of several: every field is optional so
/// that "not said" and "said" stay apart until defaults are applied in the
/// plan. Merging is [`crate::merge::merge`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BottleSpec {
    pub backend: Option<BackendKind>,
    pub image: Option<ImageSource>,
    pub workspace: Option<WorkspaceMode>,
    /// `workspace.include-ignored`: `.gitignore`-style patterns of ignored
    /// files a copy brings in anyway. Later layers append; a later `!pattern`
    /// takes one back, as in `.gitignore`.
    pub include_ignored: Vec<String>,
    /// Host directories bound read-only at the same path; later layers append.
    pub mounts: Vec<crate::mounts::Mount>,
    pub env: IndexMap<EnvName, String>,
    pub resources: Resources,
    /// Keyed by the host pattern's text (`api.example.com`, `*.x.com:8443`).
    pub routes: IndexMap<String, Route>,
    pub dlp: Option<DlpMode>,
    pub git_user: GitUser,
    pub repos: IndexMap<String, Repo>,
    pub supervise: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Claude,
    Codex,
    Command,
}

impl Provider {
    pub const NAMES: &[&str] = &["claude", "codex", "command"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let ok = |s: &str| HostPattern::parse(s).map(|h| h.to_string()).map_err(|e| e.message);
        assert_eq!(ok("API.Example.com"), Ok("api.example.com".into()));
        assert_eq!(ok("*.example.com:8443"), Ok("*.example.com:8443".into()));
        assert_eq!(ok("127.0.0.1:9000"), Ok("127.0.0.1:9000".into()));
        assert_eq!(ok("[::1]:80"), Ok("[::1]:80".into()));
        for bad in [
            "",
            "*",
            "*.com",
            "a.*.com",
            "example.com.",
            "exa mple.com",
            "-a.com",
            "a-.com",
            "x.com:0",
            "x.com:65536",
            "::1",
            "https://x.com",
            "x.com/v1",
            "[::1",
            "a..com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn git_urls() {
        let ok = |s: &str| GitUrl::parse(s).map(|u| u.to_string()).map_err(|e| e.message);
        assert_eq!(ok("git@github.com:org/app.git"), Ok("ssh://git@github.com/org/app.git".into()));
        assert_eq!(ok("github.com:org/app.git"), Ok("ssh://github.com/org/app.git".into()));
        assert_eq!(
            ok("ssh://git@Git.Example.com:2222/org/app.git"),
            Ok("ssh://git@git.example.com:2222/org/app.git".into())
        );
        assert_eq!(ok("https://gitea.example.com/org/app.git"), Ok("https://gitea.example.com/org/app.git".into()));
        for bad in [
            "-oProxyCommand=x:y",
            "ssh://-oProxyCommand=x/y",
            "http://github.com/org/app.git",
            "git://github.com/org/app.git",
            "file:///srv/app.git",
            "/srv/app.git",
            "./app",
            "ext::sh -c touch% /tmp/pwned",
            "https://token@github.com/org/app.git",
            "https://u:p@github.com/org/app.git",
            "ssh://u:p@github.com/org/app.git",
            "u:p@github.com:org/app.git",
            "git@github.com:org/../../etc",
            "git@github.com:-org/app",
            "git@github.com:org/app;rm",
            "ssh://git@github.com",
        ] {
            assert!(GitUrl::parse(bad).is_err(), "{bad:?} must be refused");
        }
        // Credentials are never quoted back.
        let e = GitUrl::parse("https://u:hunter2@github.com/x.git").expect_err("credentials");
        assert!(!e.message.contains("hunter2") && !e.help.unwrap_or_default().contains("hunter2"));
    }

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(ByteSize::parse("4GiB").map(|b| b.0), Ok(4 << 30));
        assert_eq!(ByteSize::parse("2G").map(|b| b.to_string()), Ok("1953125KiB".into()));
        assert_eq!(ByteSize::parse("512MiB").map(|b| b.to_string()), Ok("512MiB".into()));
        for bad in ["", "4 gigs", "1KiB", "-1GiB", "99999999999TiB", "GiB"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Cpus(500).to_string(), "0.5");
        assert_eq!(Cpus(2000).to_string(), "2");
        assert_eq!(Cpus(1250).to_string(), "1.25");
    }

    #[test]
    fn secret_detection_in_env_values() {
        assert!(looks_like_secret("X", "ghp_abcdefghijklmnopqrstuvwxyz0123456789").is_some());
        assert!(looks_like_secret("X", "AKIAIOSFODNN7EXAMPLE").is_some());
        assert!(looks_like_secret("GITHUB_TOKEN", "anything").is_some());
        assert!(looks_like_secret("RUST_LOG", "info").is_none());
        assert!(looks_like_secret("API_KEY", "").is_none());
        assert!(looks_like_secret("PATH_PREFIX", "sk-").is_none());
    }
}
