//! Human-readable text for plans and listings.

use std::path::Path;

use bot_bottle_backend::{CopyReport, Project};
use bot_bottle_manifest::{AuthKind, ImageSource, KeySource, Listing, Plan, Provider, TlsMode, WorkspaceMode};

// Text is built into `String`s, where `write!` cannot fail yet returns a
// `Result` that would have to be discarded; these append instead.
macro_rules! put {
    ($s:expr, $($t:tt)*) => {
        $s.push_str(&format!($($t)*))
    };
}

macro_rules! putln {
    ($s:expr) => {
        $s.push('\n')
    };
    ($s:expr, $($t:tt)*) => {{
        $s.push_str(&format!($($t)*));
        $s.push('\n');
    }};
}

/// The project line of a text plan: what becomes `/workspace`, and where
/// the agent starts.
pub(crate) fn project_text(plan: &Plan, project: &Project) -> String {
    match plan.workspace {
        WorkspaceMode::None => String::new(),
        _ => format!(
            "project    {} (the agent starts in {})\n",
            project.root.display(),
            Path::new("/workspace").join(&project.subdir).display()
        ),
    }
}

/// What a workspace copy did, as lines: those to say always (what was
/// removed, by name; notes), and those to say unless `--quiet`.
pub(crate) fn copy_report(r: &CopyReport) -> (Vec<String>, Vec<String>) {
    let mut verbose = Vec::new();
    let reflinked = if r.reflinked > 0 { format!(", {} reflinked", r.reflinked) } else { String::new() };
    verbose.push(format!("copied {} files, {} in {:.2} s{reflinked}", r.files, size(r.bytes), r.elapsed.as_secs_f64()));
    if r.left_out_count > 0 {
        let mut shown: Vec<String> = r.left_out.iter().take(8).map(|p| p.display().to_string()).collect();
        if r.left_out_count > shown.len() as u64 {
            shown.push(format!("and {} more", r.left_out_count - shown.len() as u64));
        }
        verbose.push(format!(
            "left out what git ignores: {} (workspace.include-ignored brings files in)",
            shown.join(", ")
        ));
    }
    let mut always = Vec::new();
    let mut files: Vec<&Path> = Vec::new();
    for (f, _) in &r.removed {
        if !files.contains(&f.as_path()) {
            files.push(f);
        }
    }
    for f in files {
        let what: Vec<&str> = r.removed.iter().filter(|(g, _)| g == f).map(|(_, w)| w.as_str()).collect();
        always.push(format!("removed from the copy's {}: {}", f.display(), what.join(", ")));
    }
    always.extend(r.notes.iter().cloned());
    (always, verbose)
}

/// A byte count for people.
pub(crate) fn size(bytes: u64) -> String {
    match bytes {
        0..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

/// How to give the agent the credential it lacks, both ways.
pub(crate) fn login_hint(p: &Plan) -> String {
    let Some(auth) = &p.agent.auth else { return String::new() };
    if p.secrets.iter().all(|s| s.set || s.env != auth.env) {
        return String::new();
    }
    match p.agent.provider {
        Provider::Claude => "\nclaude logs in with $ANTHROPIC_API_KEY, or with a subscription: set $CLAUDE_CODE_OAUTH_TOKEN to the output of `claude setup-token` (the agent's `auth:` chooses)".into(),
        Provider::Codex => "\ncodex logs in with $OPENAI_API_KEY, or with ChatGPT: run `codex login` on the host (the agent's `auth:` chooses)".into(),
        Provider::Command => String::new(),
    }
}

pub(crate) fn plan_text(p: &Plan) -> String {
    let mut s = String::new();
    let a = &p.agent;
    let provider =
        serde_json::to_value(a.provider).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    put!(s, "agent      {} ({provider}", a.name);
    if let Some(cmd) = &a.command {
        put!(s, ": {}", cmd.join(" "));
    }
    if let Some(m) = &a.model {
        put!(s, ", model {m}");
    }
    putln!(s, ")");
    putln!(s, "prompt     {} from line {} ({} bytes)", a.prompt.file.display(), a.prompt.line, a.prompt.bytes);
    if let Some(t) = &a.task {
        let one_line = t.lines().next().unwrap_or_default();
        let more = if t.lines().nth(1).is_some() { " …" } else { "" };
        putln!(s, "task       {one_line}{more} (used when no arguments follow `--`)");
    }
    if !a.skills.is_empty() {
        let names: Vec<&str> = a.skills.iter().map(|k| k.name.as_str()).collect();
        putln!(s, "skills     {}", names.join(", "));
    }
    if let Some(auth) = &a.auth {
        let how = match (a.provider, auth.kind) {
            (Provider::Claude, AuthKind::Login) => {
                "subscription login (OAuth token from $CLAUDE_CODE_OAUTH_TOKEN)".into()
            }
            (Provider::Codex, AuthKind::Login) => "ChatGPT login ($CODEX_HOME/auth.json on the host)".into(),
            _ => format!("API key from ${}", auth.env),
        };
        let from = if auth.from == "agent" { "the agent's `auth:`" } else { "what the host has" };
        putln!(s, "auth       {how} (chosen by {from})");
    }
    putln!(s, "bottle     {} (chosen by {})", p.bottle.lineage_text, p.bottle.selected_by);
    let backend =
        serde_json::to_value(p.backend.requested).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    putln!(s, "backend    {backend} (from {})", p.backend.from);
    if let Some(r) = &p.runtime {
        putln!(s, "runtime    {} (from {})", r.requested.as_str(), r.from);
    }
    match &p.image {
        Some(ImageSource::Image(i)) => {
            putln!(s, "image      {i}");
        }
        Some(ImageSource::Dockerfile(d)) => {
            putln!(s, "dockerfile {}", d.display());
        }
        None => {}
    }
    let ws = serde_json::to_value(p.workspace).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    if p.workspace_include_ignored.is_empty() {
        putln!(s, "workspace  {ws}");
    } else {
        putln!(s, "workspace  {ws}, with ignored files matching {}", p.workspace_include_ignored.join(" "));
    }
    for m in &p.mounts {
        let on_path = m.bin.as_ref().map(|b| format!(", {} on PATH", b.display())).unwrap_or_default();
        putln!(s, "mount      {} (read-only{on_path})", m.path.display());
    }
    let r = &p.resources;
    let mut res = Vec::new();
    if let Some(c) = r.cpus {
        res.push(format!("cpus {c}"));
    }
    if let Some(m) = r.memory {
        res.push(format!("memory {m}"));
    }
    if let Some(n) = r.pids {
        res.push(format!("pids {n}"));
    }
    if let Some(d) = r.disk {
        res.push(format!("disk {d}"));
    }
    if !res.is_empty() {
        putln!(s, "resources  {}", res.join(", "));
    }
    for (k, v) in &p.env {
        putln!(s, "env        {k}={v}");
    }
    let dlp = serde_json::to_value(p.egress.dlp).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    putln!(s, "egress     default deny, {} route(s), dlp {dlp}", p.egress.routes.len());
    for route in &p.egress.routes {
        put!(s, "  allow    {}", route.host);
        if !route.methods.is_empty() {
            let m: Vec<String> = route.methods.iter().map(ToString::to_string).collect();
            put!(s, " {}", m.join(","));
        }
        if !route.paths.is_empty() {
            put!(s, " {}", route.paths.join(" "));
        }
        if route.tls == TlsMode::Passthrough {
            put!(s, " (tls passthrough: not inspected)");
        }
        if route.websocket {
            put!(s, " (websocket)");
        }
        if let Some(i) = &route.inject {
            if i.env.as_str() == bot_bottle_manifest::CODEX_LOGIN_ENV {
                put!(s, " [inject {} from the host's ChatGPT login]", i.header);
            } else {
                put!(s, " [inject {} from ${}]", i.header, i.env);
            }
        }
        if route.provider {
            put!(s, " (the provider's)");
        }
        putln!(s);
    }
    if !p.git_gate.repos.is_empty() {
        putln!(s, "git-gate");
        for (name, repo) in &p.git_gate.repos {
            let key = match &repo.key {
                KeySource::Static { path } => format!("key {}", path.display()),
                KeySource::Github { forge_token_env, .. } => format!("github deploy key via ${forge_token_env}"),
                KeySource::Gitea { forge_token_env, .. } => format!("gitea deploy key via ${forge_token_env}"),
                KeySource::Token { env } => format!("token ${env}"),
            };
            putln!(s, "  {name:<8} {} ({key}), branches {}", repo.url, repo.branches.join(" "));
        }
    }
    putln!(s, "supervise  {}", if p.supervise { "on" } else { "off" });
    if !p.args.is_empty() {
        putln!(s, "args       {}", p.args.join(" "));
    }
    for w in &p.warnings {
        putln!(s, "warning: {w}");
    }
    s
}

pub(crate) fn listing_text(l: &Listing) -> String {
    let mut s = String::from("agents\n");
    for a in &l.agents {
        let bottles =
            if a.bottles.is_empty() { "portable (choose with --bottle)".to_owned() } else { a.lineage.join(" -> ") };
        let bad = if a.valid { "" } else { "  [invalid: see manifest check]" };
        putln!(s, "  {:<16} {bottles}{bad}", a.name);
    }
    s.push_str("bottles\n");
    for b in &l.bottles {
        let parents = if b.extends.is_empty() { String::new() } else { format!("extends {}", b.extends.join(", ")) };
        let bad = if b.valid { "" } else { "  [invalid: see manifest check]" };
        let line = format!("  {:<16} {parents}{bad}", b.name);
        putln!(s, "{}", line.trim_end());
    }
    if !l.skills.is_empty() {
        putln!(s, "skills\n  {}", l.skills.join(", "));
    }
    s
}

/// What the bottle's sidecars did, for the end of a session: the branches
/// landed in the user's repository and how to look at them there, what was
/// pushed upstream, what was refused, and anything left undone. Never a
/// command to run inside the kept workspace: its `.git` is the agent's.
pub(crate) fn session_report(r: &bot_bottle_sidecars::BundleReport, project: &std::path::Path, slug: &str) -> String {
    let mut s = String::new();
    let g = &r.gate;
    let mut landed: Vec<&bot_bottle_sidecars::Landing> = g.landed.iter().collect();
    if let Some(u) = r.uncommitted.as_ref().filter(|u| !landed.iter().any(|l| l.branch == u.branch)) {
        landed.push(u);
    }
    if !landed.is_empty() {
        putln!(s, "bot-bottle: the bottle's work is in your repository {}:", project.display());
        for l in &landed {
            let short = l.commit.get(..10).unwrap_or(&l.commit);
            let what = if r.uncommitted.as_ref().is_some_and(|u| u.branch == l.branch) {
                " (what the workspace held uncommitted)"
            } else {
                ""
            };
            putln!(s, "  {} at {short}{what}", l.branch);
        }
        let first = &landed[0].branch;
        putln!(
            s,
            "  look at it there: git -C {} log {first}   (every branch: git -C {} branch --list 'bot-bottle/{slug}/*')",
            project.display(),
            project.display()
        );
    }
    for p in &g.pushed {
        let short = p.commit.get(..10).unwrap_or(&p.commit);
        putln!(s, "bot-bottle: pushed {} to {} at {short}", p.branch, p.repo);
    }
    for f in &g.refused {
        let secrets = match f.findings {
            0 => String::new(),
            1 => " (1 secret)".to_owned(),
            n => format!(" ({n} secrets)"),
        };
        putln!(s, "bot-bottle: refused a push to {} ({}): {}{secrets}", f.repo, f.refs.join(", "), f.reason);
    }
    for p in &g.problems {
        putln!(s, "bot-bottle: warning: {p}");
    }
    s
}
