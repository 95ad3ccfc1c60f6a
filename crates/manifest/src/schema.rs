//! Checks a parsed YAML tree against the manifest schema and builds the typed
//! model, collecting every problem rather than stopping at the first.
//!
//! The schema is written out by hand rather than derived with serde so that
//! each error says exactly what was expected, where, and how to fix it, and
//! so that one file can yield many errors at once.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::diag::{Diagnostic, Severity, Source};
use crate::model::*;
use crate::yaml::{Target, YamlPath, locate_or_parent};

/// A reference to another manifest file (an `extends:` parent, an agent's
/// bottle, a skill), kept with its location for cross-file errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NameRef {
    pub(crate) name: String,
    pub(crate) path: YamlPath,
}

pub(crate) struct Checker<'a> {
    pub(crate) src: &'a Source<'a>,
    pub(crate) diags: Vec<Diagnostic>,
}

/// Finds the closest candidate to a misspelt word, for "did you mean".
/// Case and `_`/`-` are ignored; a swap of two letters counts as one edit.
pub(crate) fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let w = norm(word);
    candidates
        .iter()
        .map(|c| {
            let n = norm(c);
            (c, strsim::damerau_levenshtein(&w, &n), strsim::jaro_winkler(&w, &n))
        })
        .filter(|(_, edits, jw)| *edits <= (w.len() / 3).max(1) || *jw >= 0.8)
        .min_by(|a, b| a.1.cmp(&b.1).then(b.2.total_cmp(&a.2)))
        .map(|(c, _, _)| *c)
}

/// Replaces each `quoted` part of a message that looks like a secret.
fn redact_quoted(message: &str) -> (String, bool) {
    let mut hit = false;
    let out: Vec<String> = message
        .split('`')
        .enumerate()
        .map(|(i, p)| {
            let secret = i % 2 == 1 && (looks_like_secret("", p).is_some() || url_has_credentials(p));
            hit |= secret;
            if secret { "<redacted>".to_owned() } else { p.to_owned() }
        })
        .collect();
    (out.join("`"), hit)
}

/// `scheme://user:pass@host` anywhere, or `http(s)://anything@host`.
fn url_has_credentials(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else { return false };
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.contains(':') || scheme.ends_with("http") || scheme.ends_with("https"),
        None => false,
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl<'a> Checker<'a> {
    pub(crate) fn new(src: &'a Source<'a>) -> Self {
        Checker { src, diags: Vec::new() }
    }

    fn push(
        &mut self,
        sev: Severity,
        path: &YamlPath,
        target: Target,
        message: String,
        help: Option<String>,
        redact: bool,
    ) {
        // A safety net under the specific checks: whatever a message quotes,
        // if it looks like a credential it is replaced, and so is the value
        // in the quoted source line.
        let (message, redacted) = redact_quoted(&message);
        let pos = locate_or_parent(self.src.yaml, path, target);
        self.diags.push(self.src.diag(sev, pos, message, help, redact || redacted));
    }

    pub(crate) fn error(&mut self, path: &YamlPath, message: impl Into<String>, help: impl Into<String>) {
        self.push(Severity::Error, path, Target::Value, message.into(), Some(help.into()), false);
    }

    /// An error about a whole mapping (a field it lacks): points at the key
    /// that introduces it, e.g. the repo's name.
    fn missing(&mut self, path: &YamlPath, message: impl Into<String>, help: impl Into<String>) {
        self.push(Severity::Error, path, Target::Key, message.into(), Some(help.into()), false);
    }

    fn invalid(&mut self, path: &YamlPath, inv: Invalid) {
        self.push(Severity::Error, path, Target::Value, inv.message, inv.help, false);
    }

    fn wrong_type(&mut self, path: &YamlPath, expected: &str, v: &Value) {
        self.error(
            path,
            format!("`{path}` must be {expected}, found {}", describe(v)),
            format!("write `{path}` as {expected}"),
        );
    }

    /// Reports keys not in `allowed`, with a suggestion when one is close.
    fn keys(&mut self, path: &YamlPath, m: &Mapping, allowed: &[&str], what: &str) {
        for k in m.keys() {
            let Value::String(k) = k else {
                self.push(
                    Severity::Error,
                    path,
                    Target::Value,
                    format!("{what} has a non-string key ({})", describe(k)),
                    Some("keys are plain names".into()),
                    false,
                );
                continue;
            };
            if allowed.contains(&k.as_str()) {
                continue;
            }
            let help = match suggest(k, allowed) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("{what} keys are: {}", allowed.join(", ")),
            };
            self.push(
                Severity::Error,
                &path.key(k),
                Target::Key,
                format!("unknown key `{k}` in {what}"),
                Some(help),
                false,
            );
        }
    }

    fn map<'v>(&mut self, path: &YamlPath, v: &'v Value) -> Option<&'v Mapping> {
        match v {
            Value::Mapping(m) => Some(m),
            Value::Null => None,
            other => {
                self.wrong_type(path, "a mapping", other);
                None
            }
        }
    }

    fn str<'v>(&mut self, path: &YamlPath, v: &'v Value) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    fn bool(&mut self, path: &YamlPath, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.wrong_type(path, "`true` or `false`", other);
                None
            }
        }
    }

    fn uint(&mut self, path: &YamlPath, v: &Value, min: u64, max: u64) -> Option<u64> {
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error(
                    path,
                    format!("`{path}` is {n}, out of range"),
                    format!("give a whole number from {min} to {max}"),
                );
                None
            }
            None => {
                self.wrong_type(path, "a whole number", v);
                None
            }
        }
    }

    fn one_of<T>(
        &mut self,
        path: &YamlPath,
        v: &Value,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let s = self.str(path, v)?;
        if let Some(t) = parse(s) {
            return Some(t);
        }
        let help = match suggest(s, names) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("one of: {}", names.join(", ")),
        };
        self.push(
            Severity::Error,
            path,
            Target::Value,
            format!("unknown {} `{s}`", path_leaf(path)),
            Some(help),
            false,
        );
        None
    }

    /// A list of strings; items that are not strings are reported.
    fn str_list<'v>(&mut self, path: &YamlPath, v: &'v Value) -> Vec<(YamlPath, &'v str)> {
        match v {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let p = path.index(i);
                    self.str(&p, item).map(|s| (p, s))
                })
                .collect(),
            Value::Null => Vec::new(),
            other => {
                self.wrong_type(path, "a list of strings", other);
                Vec::new()
            }
        }
    }

    /// A single name or a list of names (`extends:`, `bottle:`).
    fn names(&mut self, path: &YamlPath, v: &Value) -> Vec<NameRef> {
        let items = match v {
            Value::String(s) => vec![(path.clone(), s.as_str())],
            Value::Sequence(_) => self.str_list(path, v),
            other => {
                self.wrong_type(path, "a name or a list of names", other);
                Vec::new()
            }
        };
        let mut out: Vec<NameRef> = Vec::new();
        for (p, name) in items {
            if let Err(e) = check_name(name) {
                self.invalid(&p, e);
            } else if out.iter().any(|r| r.name == name) {
                self.error(&p, format!("`{name}` is listed twice"), "list each name once");
            } else {
                out.push(NameRef { name: name.to_owned(), path: p });
            }
        }
        out
    }
}

fn path_leaf(path: &YamlPath) -> String {
    match path.0.last() {
        Some(crate::yaml::Seg::Key(k)) => k.clone(),
        _ => "value".into(),
    }
}

fn get<'m>(m: &'m Mapping, key: &str) -> Option<&'m Value> {
    m.get(key)
}

// ---------------------------------------------------------------------------
// Bottles

pub(crate) const BOTTLE_KEYS: &[&str] = &[
    "description",
    "extends",
    "backend",
    "image",
    "dockerfile",
    "workspace",
    "mounts",
    "env",
    "resources",
    "egress",
    "git-gate",
    "supervise",
];

/// A bottle file as written: its own settings plus its parents.
#[derive(Clone, Debug, Default)]
pub(crate) struct BottleFile {
    pub(crate) description: Option<String>,
    pub(crate) extends: Vec<NameRef>,
    pub(crate) spec: BottleSpec,
}

/// Checks a bottle document. `dir` is the bottle file's folder (relative
/// paths resolve against it) and `home` expands `~`.
pub(crate) fn bottle(ck: &mut Checker<'_>, root: &Value, dir: &Path, home: Option<&Path>) -> BottleFile {
    let mut out = BottleFile::default();
    let top = YamlPath::default();
    let m = match root {
        Value::Mapping(m) => m,
        Value::Null => return out,
        other => {
            ck.error(
                &top,
                format!("a bottle must be a mapping, found {}", describe(other)),
                "start with keys such as `backend:` and `egress:`",
            );
            return out;
        }
    };
    ck.keys(&top, m, BOTTLE_KEYS, "bottle");
    if let Some(v) = get(m, "description") {
        out.description = ck.str(&top.key("description"), v).map(str::to_owned);
    }
    if let Some(v) = get(m, "extends") {
        out.extends = ck.names(&top.key("extends"), v);
    }
    let spec = &mut out.spec;
    if let Some(v) = get(m, "backend") {
        spec.backend = ck.one_of(&top.key("backend"), v, BackendKind::NAMES, BackendKind::parse);
    }
    match (get(m, "image"), get(m, "dockerfile")) {
        (Some(_), Some(_)) => ck.error(
            &top.key("dockerfile"),
            "both `image` and `dockerfile` are set",
            "keep one: `image` names an image, `dockerfile` builds one",
        ),
        (Some(v), None) => {
            let p = top.key("image");
            if let Some(s) = ck.str(&p, v) {
                if s.is_empty() || s.starts_with('-') || s.chars().any(char::is_whitespace) {
                    ck.error(
                        &p,
                        format!("invalid image reference `{s}`"),
                        "e.g. `node:22-slim` or `ghcr.io/org/img@sha256:...`",
                    );
                } else {
                    spec.image = Some(ImageSource::Image(s.to_owned()));
                }
            }
        }
        (None, Some(v)) => {
            if let Some(s) = ck.str(&top.key("dockerfile"), v) {
                let path = expand_path(s, dir, home);
                if path.is_file() {
                    spec.image = Some(ImageSource::Dockerfile(path));
                } else {
                    ck.error(
                        &top.key("dockerfile"),
                        format!("Dockerfile `{s}` not found"),
                        format!("paths are relative to the bottle file's folder ({})", dir.display()),
                    );
                }
            }
        }
        (None, None) => {}
    }
    if let Some(v) = get(m, "workspace") {
        workspace(ck, &top.key("workspace"), v, spec);
    }
    if let Some(v) = get(m, "mounts") {
        mounts(ck, &top.key("mounts"), v, spec, dir, home);
    }
    if let Some(v) = get(m, "env") {
        env(ck, &top.key("env"), v, spec);
    }
    if let Some(v) = get(m, "resources") {
        resources(ck, &top.key("resources"), v, spec);
    }
    if let Some(v) = get(m, "egress") {
        egress(ck, &top.key("egress"), v, spec);
    }
    if let Some(v) = get(m, "git-gate") {
        git_gate(ck, &top.key("git-gate"), v, spec, dir, home);
    }
    if let Some(v) = get(m, "supervise") {
        spec.supervise = ck.bool(&top.key("supervise"), v);
    }
    out
}

const WORKSPACE_MODES: &[&str] = &["copy", "mount", "none"];

fn workspace_mode(s: &str) -> Option<WorkspaceMode> {
    match s {
        "copy" => Some(WorkspaceMode::Copy),
        "mount" => Some(WorkspaceMode::Mount),
        "none" => Some(WorkspaceMode::None),
        _ => None,
    }
}

/// `workspace: copy`, or the long form `{ mode, include-ignored }`.
fn workspace(ck: &mut Checker<'_>, path: &YamlPath, v: &Value, spec: &mut BottleSpec) {
    let m = match v {
        Value::Mapping(m) => m,
        Value::String(_) => {
            spec.workspace = ck.one_of(path, v, WORKSPACE_MODES, workspace_mode);
            return;
        }
        other => {
            ck.wrong_type(path, "`copy`, `mount`, `none` or a mapping with `mode` and `include-ignored`", other);
            return;
        }
    };
    ck.keys(path, m, &["mode", "include-ignored"], "workspace");
    if let Some(v) = get(m, "mode") {
        spec.workspace = ck.one_of(&path.key("mode"), v, WORKSPACE_MODES, workspace_mode);
    }
    let Some(v) = get(m, "include-ignored") else { return };
    let p = path.key("include-ignored");
    if let Some(mode @ (WorkspaceMode::Mount | WorkspaceMode::None)) = spec.workspace {
        let mode = if mode == WorkspaceMode::Mount { "mount" } else { "none" };
        ck.error(
            &p,
            format!("`include-ignored` does nothing with `mode: {mode}`"),
            "it chooses ignored files for a copy: use `mode: copy`, or remove `include-ignored`",
        );
        return;
    }
    for (ip, pattern) in ck.str_list(&p, v) {
        if let Err(e) = check_include_pattern(pattern) {
            ck.invalid(&ip, e);
        } else if spec.include_ignored.iter().any(|q| q == pattern) {
            ck.error(&ip, format!("`{pattern}` is listed twice"), "list each pattern once");
        } else {
            spec.include_ignored.push(pattern.to_owned());
        }
    }
}

/// `mounts:`: host directories the bottle sees read-only (see [`crate::mounts`]).
fn mounts(ck: &mut Checker<'_>, path: &YamlPath, v: &Value, spec: &mut BottleSpec, dir: &Path, home: Option<&Path>) {
    // Bottle files live in `<manifest>/bottles/`.
    let manifest_root = dir.parent();
    for (p, raw) in ck.str_list(path, v) {
        match crate::mounts::check(raw, home, manifest_root) {
            Ok(m) if spec.mounts.contains(&m) => {
                ck.error(&p, format!("mount `{raw}` is listed twice"), "list each directory once");
            }
            Ok(m) => spec.mounts.push(m),
            Err(r) => ck.error(&p, r.message, r.help),
        }
    }
}

fn env(ck: &mut Checker<'_>, path: &YamlPath, v: &Value, spec: &mut BottleSpec) {
    let Some(m) = ck.map(path, v) else { return };
    for (k, val) in m {
        let Some(k) = k.as_str() else {
            ck.error(path, "env has a non-string key", "env keys are variable names");
            continue;
        };
        let p = path.key(k);
        let name = match EnvName::parse(k) {
            Ok(n) => n,
            Err(e) => {
                ck.push(Severity::Error, &p, Target::Key, e.message, e.help, false);
                continue;
            }
        };
        if is_reserved_env(k) {
            ck.push(
                Severity::Error,
                &p,
                Target::Key,
                format!("`{k}` is set by bot-bottle"),
                Some("bot-bottle points every bottle at its proxy and CA; remove this entry".into()),
                false,
            );
            continue;
        }
        let value = match val {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                ck.wrong_type(&p, "a string, number or boolean", other);
                continue;
            }
        };
        if let Some(what) = looks_like_secret(k, &value) {
            ck.push(
                Severity::Error,
                &p,
                Target::Value,
                format!("env `{k}` looks like {what}"),
                Some(
                    "bottle env is copied into the sandbox in plain text; keep secrets in the host \
                     environment and let the proxy inject them: `egress.routes[].inject: { header, env }`"
                        .into(),
                ),
                true,
            );
            continue;
        }
        spec.env.insert(name, value);
    }
}

fn resources(ck: &mut Checker<'_>, path: &YamlPath, v: &Value, spec: &mut BottleSpec) {
    let Some(m) = ck.map(path, v) else { return };
    ck.keys(path, m, &["cpus", "memory", "pids", "disk"], "resources");
    if let Some(v) = get(m, "cpus") {
        let p = path.key("cpus");
        match v.as_f64() {
            Some(c) if c > 0.0 && c <= 1024.0 => spec.resources.cpus = Some(Cpus((c * 1000.0).round() as u32)),
            Some(c) => ck.error(&p, format!("cpus {c} is out of range"), "give a number above 0, e.g. `2` or `0.5`"),
            None => ck.wrong_type(&p, "a number", v),
        }
    }
    if let Some(v) = get(m, "memory") {
        let p = path.key("memory");
        if let Some(s) = ck.str(&p, v) {
            match ByteSize::parse(s) {
                Ok(b) => spec.resources.memory = Some(b),
                Err(e) => ck.invalid(&p, e),
            }
        }
    }
    if let Some(v) = get(m, "disk") {
        let p = path.key("disk");
        if let Some(s) = ck.str(&p, v) {
            match ByteSize::parse_for("disk", s) {
                Ok(b) => spec.resources.disk = Some(b),
                Err(e) => ck.invalid(&p, e),
            }
        }
    }
    if let Some(v) = get(m, "pids") {
        spec.resources.pids = ck.uint(&path.key("pids"), v, 16, 4_194_304).map(|n| n as u32);
    }
}

fn egress(ck: &mut Checker<'_>, path: &YamlPath, v: &Value, spec: &mut BottleSpec) {
    egress_section(ck, path, v, spec, true);
}

/// The `egress:` mapping. A standalone routes file (unwrapped) must say
/// something: an empty file there is more likely a mistake than a policy.
pub(crate) fn egress_section(ck: &mut Checker<'_>, path: &YamlPath, v: &Value, spec: &mut BottleSpec, wrapped: bool) {
    if !wrapped && !matches!(v, Value::Mapping(_)) {
        ck.error(
            path,
            format!("a routes file must be a mapping, found {}", describe(v)),
            "write `routes:` (a list of routes) and optionally `dlp:`",
        );
        return;
    }
    let Some(m) = ck.map(path, v) else { return };
    ck.keys(path, m, &["routes", "dlp"], "egress");
    if let Some(v) = get(m, "routes") {
        let rp = path.key("routes");
        match v {
            Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = rp.index(i);
                    if let Some(route) = route(ck, &p, item) {
                        let key = route.host.to_string();
                        if spec.routes.contains_key(&key) {
                            ck.error(
                                &p.key("host"),
                                format!("host `{key}` has two routes in this file"),
                                "merge them into one route: list several `paths` or `methods` in it",
                            );
                        } else {
                            spec.routes.insert(key, route);
                        }
                    }
                }
            }
            Value::Null => {}
            other => ck.wrong_type(&rp, "a list of routes", other),
        }
    }
    if let Some(v) = get(m, "dlp") {
        let p = path.key("dlp");
        if let Some(dm) = ck.map(&p, v) {
            ck.keys(&p, dm, &["mode"], "dlp");
            if let Some(mv) = get(dm, "mode") {
                spec.dlp = ck.one_of(&p.key("mode"), mv, &["block", "log"], |s| match s {
                    "block" => Some(DlpMode::Block),
                    "log" => Some(DlpMode::Log),
                    _ => None,
                });
            }
        }
    }
}

const ROUTE_KEYS: &[&str] = &["host", "paths", "methods", "inject", "tls", "websocket"];

fn route(ck: &mut Checker<'_>, path: &YamlPath, v: &Value) -> Option<Route> {
    let m = match v {
        Value::Mapping(m) => m,
        other => {
            ck.wrong_type(path, "a route mapping with `host:`", other);
            return None;
        }
    };
    ck.keys(path, m, ROUTE_KEYS, "route");
    let before = ck.diags.len();
    let host = match get(m, "host") {
        Some(v) => {
            let p = path.key("host");
            match ck.str(&p, v).map(HostPattern::parse) {
                Some(Ok(h)) => Some(h),
                Some(Err(e)) => {
                    ck.invalid(&p, e);
                    None
                }
                None => None,
            }
        }
        None => {
            ck.missing(path, "route has no `host`", "every route names a host, e.g. `host: api.example.com`");
            None
        }
    };
    let mut paths = Vec::new();
    if let Some(v) = get(m, "paths") {
        for (p, s) in ck.str_list(&path.key("paths"), v) {
            match check_path_prefix(s) {
                Ok(()) => paths.push(s.to_owned()),
                Err(e) => ck.invalid(&p, e),
            }
        }
    }
    let mut methods = Vec::new();
    if let Some(v) = get(m, "methods") {
        for (p, s) in ck.str_list(&path.key("methods"), v) {
            match Method::parse(s) {
                Ok(m) if methods.contains(&m) => {
                    ck.error(&p, format!("method `{m}` is listed twice"), "list each method once")
                }
                Ok(m) => methods.push(m),
                Err(e) => ck.invalid(&p, e),
            }
        }
    }
    let inject = get(m, "inject").and_then(|v| inject(ck, &path.key("inject"), v));
    let tls = match get(m, "tls") {
        Some(v) => ck
            .one_of(&path.key("tls"), v, &["inspect", "passthrough"], |s| match s {
                "inspect" => Some(TlsMode::Inspect),
                "passthrough" => Some(TlsMode::Passthrough),
                _ => None,
            })
            .unwrap_or_default(),
        None => TlsMode::Inspect,
    };
    let websocket = get(m, "websocket").and_then(|v| ck.bool(&path.key("websocket"), v)).unwrap_or(false);
    if tls == TlsMode::Passthrough {
        for (key, present) in [
            ("paths", !paths.is_empty()),
            ("methods", !methods.is_empty()),
            ("inject", inject.is_some()),
            ("websocket", websocket),
        ] {
            if present {
                ck.error(
                    &path.key(key),
                    format!("`{key}` cannot apply to a `tls: passthrough` route"),
                    "passthrough traffic is not decrypted, so only host and port are checked; drop `tls: passthrough` or this key",
                );
            }
        }
    }
    if ck.diags.len() > before {
        return None;
    }
    Some(Route { host: host?, paths, methods, inject, tls, websocket })
}

fn inject(ck: &mut Checker<'_>, path: &YamlPath, v: &Value) -> Option<Inject> {
    let m = ck.map(path, v)?;
    ck.keys(path, m, &["header", "env", "format"], "inject");
    let header = match get(m, "header") {
        Some(v) => ck.str(&path.key("header"), v).and_then(|s| match check_header_name(s) {
            Ok(h) => Some(h),
            Err(e) => {
                ck.invalid(&path.key("header"), e);
                None
            }
        }),
        None => {
            ck.missing(path, "inject has no `header`", "name the header to set, e.g. `header: authorization`");
            None
        }
    };
    let env = env_ref(ck, path, m, "env");
    let format = match get(m, "format") {
        Some(v) => ck.str(&path.key("format"), v).and_then(|s| match check_inject_format(s) {
            Ok(()) => Some(s.to_owned()),
            Err(e) => {
                ck.invalid(&path.key("format"), e);
                None
            }
        }),
        None => Some("{}".to_owned()),
    };
    Some(Inject { header: header?, env: env?, format: format? })
}

/// A required field naming a host environment variable.
fn env_ref(ck: &mut Checker<'_>, path: &YamlPath, m: &Mapping, key: &str) -> Option<EnvName> {
    let Some(v) = get(m, key) else {
        ck.missing(
            path,
            format!("missing `{key}`"),
            format!("name the host environment variable that holds the secret: `{key}: NAME`"),
        );
        return None;
    };
    let p = path.key(key);
    let s = ck.str(&p, v)?;
    match EnvName::parse(s) {
        Ok(n) => Some(n),
        Err(mut e) => {
            // A value here that is not a variable name may be the secret itself.
            let redact = looks_like_secret("", s).is_some();
            if redact {
                e.message = format!("`{key}` must name an environment variable, not hold a secret");
            }
            ck.push(Severity::Error, &p, Target::Value, e.message, e.help, redact);
            None
        }
    }
}

fn git_gate(ck: &mut Checker<'_>, path: &YamlPath, v: &Value, spec: &mut BottleSpec, dir: &Path, home: Option<&Path>) {
    let Some(m) = ck.map(path, v) else { return };
    ck.keys(path, m, &["user", "repos"], "git-gate");
    if let Some(v) = get(m, "user") {
        let p = path.key("user");
        if let Some(um) = ck.map(&p, v) {
            ck.keys(&p, um, &["name", "email"], "git-gate user");
            if let Some(v) = get(um, "name") {
                spec.git_user.name = ck.str(&p.key("name"), v).map(str::to_owned);
            }
            if let Some(v) = get(um, "email") {
                let ep = p.key("email");
                if let Some(e) = ck.str(&ep, v) {
                    if e.contains('@') && !e.contains(char::is_whitespace) && !e.contains(['<', '>']) {
                        spec.git_user.email = Some(e.to_owned());
                    } else {
                        ck.error(&ep, format!("invalid email `{e}`"), "e.g. `bot@example.com`");
                    }
                }
            }
        }
    }
    if let Some(v) = get(m, "repos") {
        let p = path.key("repos");
        if let Some(rm) = ck.map(&p, v) {
            for (name, rv) in rm {
                let Some(name) = name.as_str() else {
                    ck.error(&p, "repos has a non-string key", "repo keys are names");
                    continue;
                };
                let rp = p.key(name);
                if let Err(e) = check_name(name) {
                    ck.push(Severity::Error, &rp, Target::Key, e.message, e.help, false);
                    continue;
                }
                if name == "local" {
                    // The gate serves the project's own repository under this name.
                    ck.push(
                        Severity::Error,
                        &rp,
                        Target::Key,
                        "`local` is the gate's name for the project's own repository".to_owned(),
                        Some("give this upstream another name".to_owned()),
                        false,
                    );
                    continue;
                }
                if let Some(r) = repo(ck, &rp, rv, dir, home) {
                    spec.repos.insert(name.to_owned(), r);
                }
            }
        }
    }
}

fn repo(ck: &mut Checker<'_>, path: &YamlPath, v: &Value, dir: &Path, home: Option<&Path>) -> Option<Repo> {
    let m = match v {
        Value::Mapping(m) => m,
        other => {
            ck.wrong_type(path, "a repo mapping with `url:` and `key:`", other);
            return None;
        }
    };
    ck.keys(path, m, &["url", "key", "host_key", "branches", "allow_force_push", "allow_delete"], "repo");
    let before = ck.diags.len();
    let url = match get(m, "url") {
        Some(v) => {
            let p = path.key("url");
            ck.str(&p, v).and_then(|s| match GitUrl::parse(s) {
                Ok(u) => Some(u),
                Err(e) => {
                    // A URL with credentials in it holds a secret: never echo it.
                    let redact = e.message.contains("credentials");
                    ck.push(Severity::Error, &p, Target::Value, e.message, e.help, redact);
                    None
                }
            })
        }
        None => {
            ck.missing(path, "repo has no `url`", "e.g. `url: git@github.com:org/app.git`");
            None
        }
    };
    let key = match get(m, "key") {
        Some(v) => key_source(ck, &path.key("key"), v, dir, home),
        None => {
            ck.missing(
                path,
                "repo has no `key`",
                "say how the gate authenticates upstream, e.g. `key: { provider: static, path: ~/.ssh/app_deploy }`",
            );
            None
        }
    };
    let host_key = get(m, "host_key").and_then(|v| {
        let p = path.key("host_key");
        ck.str(&p, v).and_then(|s| match HostKey::parse(s) {
            Ok(k) => Some(k),
            Err(e) => {
                ck.invalid(&p, e);
                None
            }
        })
    });
    let mut branches = Vec::new();
    if let Some(v) = get(m, "branches") {
        for (p, b) in ck.str_list(&path.key("branches"), v) {
            match check_branch_glob(b) {
                Ok(()) => branches.push(b.to_owned()),
                Err(e) => ck.invalid(&p, e),
            }
        }
    } else {
        branches.push("bot/*".to_owned());
    }
    let allow_force_push = get(m, "allow_force_push").and_then(|v| ck.bool(&path.key("allow_force_push"), v));
    let allow_delete = get(m, "allow_delete").and_then(|v| ck.bool(&path.key("allow_delete"), v));
    if let (Some(url), Some(key)) = (&url, &key) {
        let ssh_key = !matches!(key, KeySource::Token { .. });
        if url.is_ssh() != ssh_key {
            let help = if url.is_ssh() {
                "ssh remotes use `provider: static`, `github` or `gitea`"
            } else {
                "https remotes use `provider: token` with `env: NAME`"
            };
            ck.error(&path.key("key").key("provider"), "key provider does not fit the URL's transport", help);
        }
        if url.is_ssh() && host_key.is_none() && !ck.diags.iter().any(|d| d.message.contains("host key")) {
            ck.missing(
                path,
                format!("ssh remote `{url}` has no `host_key`"),
                format!("pin the server's key so pushes cannot be intercepted: `ssh-keyscan {}`, then `host_key: \"ssh-ed25519 AAAA...\"`", url.host()),
            );
        }
        if !url.is_ssh() && get(m, "host_key").is_some() {
            ck.error(
                &path.key("host_key"),
                "`host_key` applies to ssh remotes only",
                "https remotes are verified by their TLS certificate; remove `host_key`",
            );
        }
    }
    if ck.diags.len() > before {
        return None;
    }
    Some(Repo {
        url: url?,
        key: key?,
        host_key,
        branches,
        allow_force_push: allow_force_push.unwrap_or(false),
        allow_delete: allow_delete.unwrap_or(false),
    })
}

fn key_source(ck: &mut Checker<'_>, path: &YamlPath, v: &Value, dir: &Path, home: Option<&Path>) -> Option<KeySource> {
    let m = ck.map(path, v)?;
    let Some(pv) = get(m, "provider") else {
        ck.missing(path, "key has no `provider`", "one of: static, github, gitea, token");
        return None;
    };
    let provider = ck.one_of(&path.key("provider"), pv, &["static", "github", "gitea", "token"], |s| {
        ["static", "github", "gitea", "token"].contains(&s).then(|| s.to_owned())
    })?;
    match provider.as_str() {
        "static" => {
            ck.keys(path, m, &["provider", "path"], "static key");
            let Some(v) = get(m, "path") else {
                ck.missing(path, "static key has no `path`", "e.g. `path: ~/.ssh/app_deploy`");
                return None;
            };
            let s = ck.str(&path.key("path"), v)?;
            Some(KeySource::Static { path: expand_path(s, dir, home) })
        }
        "github" | "gitea" => {
            ck.keys(path, m, &["provider", "forge_token_env", "api"], "forge key");
            let api = match get(m, "api") {
                Some(v) => {
                    let p = path.key("api");
                    let s = ck.str(&p, v)?;
                    match check_api_url(s) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            let redact = e.message.contains("credentials");
                            ck.push(Severity::Error, &p, Target::Value, e.message, e.help, redact);
                            return None;
                        }
                    }
                }
                None => None,
            };
            let env = env_ref(ck, path, m, "forge_token_env")?;
            Some(if provider == "github" {
                KeySource::Github { forge_token_env: env, api }
            } else {
                KeySource::Gitea { forge_token_env: env, api }
            })
        }
        _ => {
            ck.keys(path, m, &["provider", "env"], "token key");
            Some(KeySource::Token { env: env_ref(ck, path, m, "env")? })
        }
    }
}

/// Expands `~/` to the home folder and resolves relative paths against the
/// manifest file's folder.
pub(crate) fn expand_path(s: &str, dir: &Path, home: Option<&Path>) -> PathBuf {
    if s == "~" {
        return home.map_or_else(|| PathBuf::from(s), Path::to_path_buf);
    }
    if let (Some(rest), Some(home)) = (s.strip_prefix("~/"), home) {
        return home.join(rest);
    }
    let p = Path::new(s);
    if p.is_absolute() { p.to_path_buf() } else { dir.join(p) }
}

// ---------------------------------------------------------------------------
// Agents

pub(crate) const AGENT_KEYS: &[&str] = &["description", "provider", "command", "bottle", "skills", "model", "task"];

/// The longest `task:` accepted: it travels as one argv element.
const TASK_MAX: usize = 64 * 1024;

/// An agent's frontmatter, checked.
#[derive(Clone, Debug)]
pub(crate) struct AgentHead {
    pub(crate) description: Option<String>,
    pub(crate) provider: Option<Provider>,
    pub(crate) command: Vec<String>,
    pub(crate) bottles: Vec<NameRef>,
    pub(crate) skills: Vec<NameRef>,
    pub(crate) model: Option<String>,
    pub(crate) task: Option<String>,
}

pub(crate) fn agent(ck: &mut Checker<'_>, root: &Value) -> AgentHead {
    let mut out = AgentHead {
        description: None,
        provider: None,
        command: Vec::new(),
        bottles: Vec::new(),
        skills: Vec::new(),
        model: None,
        task: None,
    };
    let top = YamlPath::default();
    let m = match root {
        Value::Mapping(m) => m,
        other => {
            ck.error(
                &top,
                format!("agent frontmatter must be a mapping, found {}", describe(other)),
                "start the frontmatter with `provider: claude`",
            );
            return out;
        }
    };
    ck.keys(&top, m, AGENT_KEYS, "agent");
    if let Some(v) = get(m, "description") {
        out.description = ck.str(&top.key("description"), v).map(str::to_owned);
    }
    match get(m, "provider") {
        Some(v) => {
            out.provider = ck.one_of(&top.key("provider"), v, Provider::NAMES, |s| match s {
                "claude" => Some(Provider::Claude),
                "codex" => Some(Provider::Codex),
                "command" => Some(Provider::Command),
                _ => None,
            })
        }
        None => ck.error(&top, "agent has no `provider`", "add `provider: claude`, `codex` or `command`"),
    }
    match (get(m, "command"), out.provider) {
        (Some(v), Some(Provider::Command)) => {
            let p = top.key("command");
            let argv = match v {
                Value::Sequence(_) => ck.str_list(&p, v),
                Value::String(s) => {
                    ck.error(
                        &p,
                        "`command` must be a list (argv), not a string",
                        format!("write it as a list, e.g. `command: {:?}`", s.split_whitespace().collect::<Vec<_>>()),
                    );
                    Vec::new()
                }
                other => {
                    ck.wrong_type(&p, "a list of strings (argv)", other);
                    Vec::new()
                }
            };
            if argv.first().is_some_and(|(_, s)| s.is_empty()) || (matches!(v, Value::Sequence(s) if s.is_empty())) {
                ck.error(
                    &p,
                    "`command` is empty",
                    "give the program and its arguments, e.g. `command: [\"aider\", \"--yes\"]`",
                );
            }
            for (ap, a) in &argv {
                if a.contains('\0') {
                    ck.error(ap, "argument holds a NUL byte", "remove it");
                }
            }
            out.command = argv.into_iter().map(|(_, s)| s.to_owned()).collect();
        }
        (Some(_), Some(p)) => ck.error(
            &top.key("command"),
            format!("`command` is only for `provider: command`, not `{}`", Provider::NAMES[p as usize]),
            "remove `command`, or set `provider: command`",
        ),
        (None, Some(Provider::Command)) => {
            ck.error(&top, "`provider: command` needs a `command`", "e.g. `command: [\"aider\", \"--yes\"]`")
        }
        _ => {}
    }
    if let Some(v) = get(m, "bottle") {
        out.bottles = ck.names(&top.key("bottle"), v);
    }
    if let Some(v) = get(m, "skills") {
        let p = top.key("skills");
        if matches!(v, Value::String(_)) {
            ck.wrong_type(&p, "a list of skill names", v);
        } else {
            out.skills = ck.names(&p, v);
        }
    }
    if let Some(v) = get(m, "model") {
        let p = top.key("model");
        if let Some(s) = ck.str(&p, v) {
            if !s.is_empty()
                && s.len() <= 128
                && !s.starts_with('-')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "._:/@-".contains(c))
            {
                out.model = Some(s.to_owned());
            } else {
                ck.error(&p, format!("invalid model name `{s}`"), "e.g. `claude-sonnet-4-5`");
            }
        }
    }
    if let Some(v) = get(m, "task") {
        let p = top.key("task");
        if out.provider == Some(Provider::Command) {
            ck.error(
                &p,
                "`task` is for `provider: claude` or `codex`; a command's program decides what it reads",
                "remove `task`, or put the task in `command`",
            );
        } else if let Some(s) = ck.str(&p, v) {
            out.task = check_task(ck, &p, s);
        }
    }
    out
}

/// The unattended task: one argv element after the agent's own flags, so
/// it may not be empty, hold a NUL, or look like a flag.
fn check_task(ck: &mut Checker<'_>, p: &YamlPath, s: &str) -> Option<String> {
    let t = s.trim();
    let problem = if t.is_empty() {
        Some("`task` is empty")
    } else if s.contains('\0') {
        Some("`task` holds a NUL byte")
    } else if t.starts_with('-') {
        Some("`task` starts with `-`, which the agent would read as a flag")
    } else if s.len() > TASK_MAX {
        Some("`task` is longer than 64 KiB")
    } else {
        None
    };
    match problem {
        Some(m) => {
            ck.error(p, m, "write the task as a sentence, e.g. `task: \"fix the failing tests\"`");
            None
        }
        None => Some(t.to_owned()),
    }
}
