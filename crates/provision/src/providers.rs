//! One function per provider, each adding to what `common` set up.

use bot_bottle_manifest::{GitUrl, Plan, WorkspaceMode};

use crate::{Command, Content, Dir, File, Launch, Owner, Provision};

/// What the agent holds instead of a real key. The proxy replaces the header
/// it travels in with the real token; this value is harmless anywhere.
pub const PLACEHOLDER_KEY: &str = "bot-bottle-placeholder-not-a-key";

fn dir(p: &mut Provision, path: String, mode: u32, owner: Owner) {
    p.dirs.push(Dir { path, mode, owner });
}

fn file(p: &mut Provision, path: String, mode: u32, owner: Owner, content: Content) {
    p.files.push(File { path, mode, owner, content });
}

fn text(s: impl Into<String>) -> Content {
    Content::Inline(s.into().into_bytes())
}

/// Checks, before the agent starts, that its program runs in this bottle.
fn verify(p: &mut Provision, argv: &[&str], why: &str) {
    p.commands.push(Command {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        user: Owner::Agent,
        why: why.to_owned(),
    });
}

fn env(p: &mut Provision, k: &str, v: impl Into<String>) {
    p.env.insert(k.to_owned(), v.into());
}

pub(crate) fn prompt_path(l: &Launch<'_>) -> String {
    format!("{}/prompt.md", l.state_dir)
}

fn bundle_path(l: &Launch<'_>) -> String {
    format!("{}/ca-bundle.pem", l.state_dir)
}

/// CA trust for every common runtime, the proxy, git, the prompt, and the
/// bottle's own plain environment.
pub(crate) fn common(plan: &Plan, l: &Launch<'_>, p: &mut Provision) {
    dir(p, l.state_dir.to_owned(), 0o755, Owner::Root);
    dir(p, l.home.to_owned(), 0o700, Owner::Agent);
    file(p, format!("{}/ca.pem", l.state_dir), 0o644, Owner::Root, text(l.ca_pem));
    // One bundle with the system roots and the bottle CA, so that runtimes
    // that replace (not extend) their roots still trust both.
    let mut bundle = String::new();
    if let Some(roots) = l.system_roots_pem {
        bundle.push_str(roots.trim_end());
        bundle.push('\n');
    }
    bundle.push_str(l.ca_pem.trim_end());
    bundle.push('\n');
    file(p, bundle_path(l), 0o644, Owner::Root, text(bundle));
    // The prompt is the operator's: readable by the agent, not changeable.
    file(p, prompt_path(l), 0o644, Owner::Root, text(l.prompt));

    env(p, "HOME", l.home);
    env(p, "USER", l.user);
    env(p, "LOGNAME", l.user);
    // Toolchains from `mounts:` come first, as in the user's own shell.
    let mut path: Vec<String> =
        plan.mounts.iter().filter_map(|m| m.bin.as_ref()).map(|b| b.display().to_string()).collect();
    path.push("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env(p, "PATH", path.join(":"));
    for k in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"] {
        env(p, k, l.proxy_url);
    }
    // Loopback inside the bottle holds only bot-bottle's own services
    // (git gate, supervise): reach them directly.
    env(p, "NO_PROXY", "localhost,127.0.0.1");
    env(p, "no_proxy", "localhost,127.0.0.1");
    let bundle = bundle_path(l);
    for k in bot_bottle_manifest::CA_BUNDLE_VARS {
        env(p, k, bundle.clone());
    }
    env(p, "NODE_USE_ENV_PROXY", "1");
    if let Some(url) = l.supervise_url.filter(|_| plan.supervise) {
        // Any agent (a `command` one above all) finds supervise here.
        env(p, "BOT_BOTTLE_SUPERVISE_URL", url);
    }
    for (k, v) in &plan.env {
        env(p, k.as_str(), v.clone());
    }
    file(p, format!("{}/.gitconfig", l.home), 0o644, Owner::Agent, text(gitconfig(plan, l)));
    if let Some(gate) = l.git_gate_url.filter(|_| l.git_gate_local && plan.workspace != WorkspaceMode::None) {
        origin(p, l, gate);
    }
}

/// The identity commits get when the bottle sets none, so `git commit`
/// works out of the box.
const DEFAULT_NAME: &str = "bot-bottle agent";
const DEFAULT_EMAIL: &str = "agent@bot-bottle.invalid";

fn gitconfig(plan: &Plan, l: &Launch<'_>) -> String {
    let mut g = String::new();
    let user = &plan.git_gate.user;
    g.push_str("[user]\n");
    g.push_str(&format!("\tname = {}\n", quote(user.name.as_deref().unwrap_or(DEFAULT_NAME))));
    g.push_str(&format!("\temail = {}\n", quote(user.email.as_deref().unwrap_or(DEFAULT_EMAIL))));
    g.push_str(&format!("[http]\n\tproxy = {}\n\tsslCAInfo = {}\n", l.proxy_url, bundle_path(l)));
    g.push_str(&format!("[safe]\n\tdirectory = {}\n", l.workspace));
    // Pushes and fetches of the bottle's repos go to the git gate, which
    // holds the real credentials. Every spelling of an upstream the agent
    // may know (ssh://, scp-like, https://, with or without `.git`) is
    // mapped; git picks the longest match, so the `.git` forms win where
    // both fit.
    if let Some(gate) = l.git_gate_url {
        let gate = gate.trim_end_matches('/');
        // The gate is reached directly, never through the egress proxy.
        g.push_str(&format!("[http \"{gate}/\"]\n\tproxy = \"\"\n"));
        for (name, repo) in &plan.git_gate.repos {
            g.push_str(&format!("[url \"{gate}/{name}.git\"]\n"));
            for form in url_forms(&repo.url) {
                g.push_str(&format!("\tinsteadOf = {form}\n"));
            }
        }
    }
    g
}

/// The spellings of one upstream an agent may use.
fn url_forms(url: &GitUrl) -> Vec<String> {
    let (host, port, path, user) = match url {
        GitUrl::Ssh { user, host, port, path } => (host, *port, path, user.clone()),
        GitUrl::Https { host, port, path } => (host, *port, path, Some("git".to_owned())),
    };
    let stem = path.strip_suffix(".git").unwrap_or(path);
    let paths = [format!("{stem}.git"), stem.to_owned()];
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    let users: Vec<String> = user.iter().map(|u| format!("{u}@")).chain([String::new()]).collect();
    for p in &paths {
        let hp = match (url, port) {
            (GitUrl::Ssh { .. }, Some(n)) => format!("{host}:{n}"),
            _ => host.clone(),
        };
        for u in &users {
            add(format!("ssh://{u}{hp}/{p}"));
            if !(url.is_ssh() && port.is_some()) {
                add(format!("{u}{host}:{p}"));
            }
        }
        let https_host = match (url, port) {
            (GitUrl::Https { .. }, Some(n)) => format!("{host}:{n}"),
            _ => host.clone(),
        };
        add(format!("https://{https_host}/{p}"));
    }
    out
}

/// Points the workspace copy's `origin` at the gate's `local`: a push
/// there lands as `bot-bottle/<slug>/<branch>` in the user's repository.
/// Runs inside the bottle, as the agent, on the agent's own copy.
fn origin(p: &mut Provision, l: &Launch<'_>, gate: &str) {
    let url = format!("{}/local.git", gate.trim_end_matches('/'));
    p.commands.push(Command {
        argv: vec![
            "sh".into(),
            "-c".into(),
            // Without git in the bottle, or a repository in the copy,
            // there is no origin to set.
            "cd \"$1\" && command -v git >/dev/null && git rev-parse --git-dir >/dev/null 2>&1 || exit 0; \
             git remote set-url origin \"$2\" 2>/dev/null || git remote add origin \"$2\""
                .into(),
            "sh".into(),
            l.workspace.to_owned(),
            url,
        ],
        user: Owner::Agent,
        why: "pointing the workspace's `origin` at the git gate".into(),
    });
}

/// A git config value, quoted when it has characters git would misread.
fn quote(v: &str) -> String {
    if v.chars().any(|c| matches!(c, '"' | '\\' | ';' | '#') || c.is_control())
        || v.starts_with(' ')
        || v.ends_with(' ')
    {
        let escaped: String = v
            .chars()
            .filter(|c| !c.is_control())
            .flat_map(|c| match c {
                '"' => vec!['\\', '"'],
                '\\' => vec!['\\', '\\'],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    } else {
        v.to_owned()
    }
}

fn skills_into(plan: &Plan, p: &mut Provision, root: &str) {
    for s in &plan.agent.skills {
        let base = format!("{root}/{}", s.name);
        dir(p, base.clone(), 0o755, Owner::Root);
        let mut made = vec![base.clone()];
        for f in &s.files {
            // Subfolders of a skill, created once each.
            let rel = std::path::Path::new(f);
            let mut acc = base.clone();
            if let Some(parent) = rel.parent() {
                for c in parent.components() {
                    acc = format!("{acc}/{}", c.as_os_str().to_string_lossy());
                    if !made.contains(&acc) {
                        dir(p, acc.clone(), 0o755, Owner::Root);
                        made.push(acc.clone());
                    }
                }
            }
            file(p, format!("{base}/{f}"), 0o644, Owner::Root, Content::Host(s.dir.join(f)));
        }
    }
}

/// Claude Code: placeholder key, prompt appended to the system prompt,
/// skills, supervise over MCP, no update checks or nonessential traffic,
/// and no permission prompts (the bottle is the boundary).
pub(crate) fn claude(plan: &Plan, l: &Launch<'_>, p: &mut Provision) {
    let dot = format!("{}/.claude", l.home);
    dir(p, dot.clone(), 0o700, Owner::Agent);
    dir(p, format!("{dot}/skills"), 0o755, Owner::Agent);
    skills_into(plan, p, &format!("{dot}/skills"));
    // First-run screens would stall an unattended agent, and two dialogs
    // block one on a terminal: folder trust (answered per directory) and
    // "use this API key?" (answered by the key's last 20 characters; its
    // default leaves Claude Code logged out). The key it sees is the
    // placeholder, so that is the one approved; the real key never enters.
    let mut projects = serde_json::Map::new();
    for dir in [l.workspace, l.home] {
        projects.insert(
            dir.to_owned(),
            serde_json::json!({ "hasTrustDialogAccepted": true, "hasCompletedProjectOnboarding": true }),
        );
    }
    let mut cfg = serde_json::json!({
        "hasCompletedOnboarding": true,
        "bypassPermissionsModeAccepted": true,
        "projects": projects,
        "customApiKeyResponses": { "approved": [key_suffix(PLACEHOLDER_KEY)], "rejected": [] },
    });
    let supervise = l.supervise_url.filter(|_| plan.supervise);
    if let Some(url) = supervise {
        // User scope as well as `--mcp-config`: `claude mcp list` and an
        // interactive session started without our flags see it there.
        cfg["mcpServers"] = mcp_servers(url);
    }
    file(p, format!("{}/.claude.json", l.home), 0o600, Owner::Agent, text(format!("{cfg:#}\n")));
    verify(
        p,
        &["claude", "--version"],
        "Claude Code must be installed in the bottle (npm i -g @anthropic-ai/claude-code)",
    );
    env(p, "ANTHROPIC_API_KEY", PLACEHOLDER_KEY);
    env(p, "DISABLE_AUTOUPDATER", "1");
    env(p, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    // An unprivileged launch runs the agent as uid 0 inside its own user
    // namespace, where Claude Code refuses `--dangerously-skip-permissions`
    // unless told it is in a sandbox. It is: the bottle is the boundary.
    env(p, "IS_SANDBOX", "1");
    let mut argv: Vec<String> = vec!["claude".into(), "--dangerously-skip-permissions".into()];
    argv.extend(["--append-system-prompt-file".into(), prompt_path(l)]);
    if let Some(m) = &plan.agent.model {
        argv.extend(["--model".into(), m.clone()]);
    }
    if let Some(url) = supervise {
        // The operator's copy, out of the agent's reach, and with
        // `--strict-mcp-config` the only servers the session loads.
        let mcp = format!("{}/mcp.json", l.state_dir);
        let cfg = serde_json::json!({ "mcpServers": mcp_servers(url) });
        file(p, mcp.clone(), 0o644, Owner::Root, text(format!("{cfg:#}\n")));
        argv.extend(["--mcp-config".into(), mcp, "--strict-mcp-config".into()]);
    }
    if !l.interactive {
        argv.push("--print".into());
    }
    task_args(plan, &mut argv);
    p.argv = argv;
}

/// Claude Code's `mcpServers` entry for supervise.
fn mcp_servers(url: &str) -> serde_json::Value {
    serde_json::json!({ "supervise": { "type": "http", "url": url } })
}

/// The arguments after `--`, else the agent's `task:`; with neither, an
/// unattended agent reads its task from stdin.
fn task_args(plan: &Plan, argv: &mut Vec<String>) {
    if plan.args.is_empty() {
        argv.extend(plan.agent.task.iter().cloned());
    } else {
        argv.extend(plan.args.iter().cloned());
    }
}

/// What Claude Code remembers of an approved API key: its last 20 characters.
fn key_suffix(key: &str) -> &str {
    let start = key.char_indices().rev().nth(19).map_or(0, |(i, _)| i);
    &key[start..]
}

/// Where Codex's requests go when the bottle sets no `OPENAI_BASE_URL`.
const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Codex: its own home with config, placeholder auth and the prompt as
/// global instructions; approvals off (the bottle is the boundary).
pub(crate) fn codex(plan: &Plan, l: &Launch<'_>, p: &mut Provision) {
    let home = format!("{}/.codex", l.home);
    dir(p, home.clone(), 0o700, Owner::Agent);
    let mut cfg = String::new();
    if let Some(m) = &plan.agent.model {
        cfg.push_str(&format!("model = {}\n", toml_str(m)));
    }
    // Codex ignores OPENAI_BASE_URL and tries a WebSocket before HTTPS (6.5 s
    // lost when refused): a provider of our own, over HTTPS only, at the
    // bottle's OPENAI_BASE_URL when it sets one.
    cfg.push_str("model_provider = \"bot-bottle\"\n");
    // Update checks and analytics are noise in the audit log and denied anyway.
    cfg.push_str("check_for_update_on_startup = false\n");
    cfg.push_str("approval_policy = \"never\"\n");
    cfg.push_str("# The bottle is the sandbox; Codex's own would only get in the way.\n");
    cfg.push_str("sandbox_mode = \"danger-full-access\"\n");
    // The workspace is the bottle's own copy: trusted, git repository or not.
    cfg.push_str(&format!("\n[projects.{}]\ntrust_level = \"trusted\"\n", toml_str(l.workspace)));
    cfg.push_str("\n[analytics]\nenabled = false\n\n[feedback]\nenabled = false\n");
    // Plugins, apps and in-app updates fetch from github.com and chatgpt.com
    // in the background: denied by the proxy, noise in the audit log.
    cfg.push_str("\n[features]\nplugins = false\nremote_plugin = false\napps = false\nin_app_updates = false\n");
    let base =
        plan.env.iter().find(|(k, _)| k.as_str() == "OPENAI_BASE_URL").map_or(OPENAI_BASE_URL, |(_, v)| v.as_str());
    cfg.push_str(&format!(
        "\n[model_providers.bot-bottle]\nname = \"OpenAI\"\nbase_url = {}\nenv_key = \"OPENAI_API_KEY\"\nwire_api = \"responses\"\nsupports_websockets = false\n",
        toml_str(base)
    ));
    if let Some(url) = l.supervise_url.filter(|_| plan.supervise) {
        cfg.push_str(&format!("\n[mcp_servers.supervise]\nurl = {}\n", toml_str(url)));
    }
    file(p, format!("{home}/config.toml"), 0o600, Owner::Agent, text(cfg));
    file(
        p,
        format!("{home}/auth.json"),
        0o600,
        Owner::Agent,
        text(format!("{{\"OPENAI_API_KEY\": \"{PLACEHOLDER_KEY}\"}}\n")),
    );
    file(p, format!("{home}/AGENTS.md"), 0o644, Owner::Root, text(l.prompt));
    skills_into(plan, p, &format!("{home}/skills"));
    verify(p, &["codex", "--version"], "Codex must be installed in the bottle (npm i -g @openai/codex)");
    env(p, "CODEX_HOME", home);
    env(p, "OPENAI_API_KEY", PLACEHOLDER_KEY);
    let mut argv: Vec<String> = vec!["codex".into()];
    if !l.interactive {
        // Unattended; the workspace copy need not be a git repository.
        argv.extend(["exec".into(), "--skip-git-repo-check".into()]);
    }
    task_args(plan, &mut argv);
    p.argv = argv;
}

/// Any program: its argv, and where to find the prompt.
pub(crate) fn command(plan: &Plan, l: &Launch<'_>, p: &mut Provision) {
    env(p, "BOT_BOTTLE_PROMPT_FILE", prompt_path(l));
    if !plan.agent.skills.is_empty() {
        let root = format!("{}/skills", l.state_dir);
        dir(p, root.clone(), 0o755, Owner::Root);
        skills_into(plan, p, &root);
        env(p, "BOT_BOTTLE_SKILLS_DIR", root);
    }
    let mut argv = plan.agent.command.clone().unwrap_or_default();
    if let Some(program) = argv.first() {
        // `command -v` through sh: finds the program the way exec will.
        p.commands.push(Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "command -v -- \"$1\" >/dev/null".into(),
                "sh".into(),
                program.clone(),
            ],
            user: Owner::Agent,
            why: format!(
                "the agent's program `{program}` must exist in the bottle: install it on the host under /usr, \
                 or add the host directory that holds it to the bottle's `mounts:`"
            ),
        });
    }
    argv.extend(plan.args.iter().cloned());
    p.argv = argv;
}

fn toml_str(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            '\n' => vec!['\\', 'n'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_values_are_quoted_when_needed() {
        assert_eq!(quote("Bot"), "Bot");
        assert_eq!(quote("a;b"), "\"a;b\"");
        assert_eq!(quote("x\"y"), "\"x\\\"y\"");
        assert_eq!(quote("evil\n[core]\n\tsshCommand = x"), "\"evil[core]sshCommand = x\"");
    }

    #[test]
    fn every_spelling_of_an_upstream_goes_to_the_gate() {
        let https = GitUrl::Https { host: "git.example.com".into(), port: Some(8443), path: "org/app".into() };
        assert_eq!(
            url_forms(&https),
            [
                "ssh://git@git.example.com/org/app.git",
                "git@git.example.com:org/app.git",
                "ssh://git.example.com/org/app.git",
                "git.example.com:org/app.git",
                "https://git.example.com:8443/org/app.git",
                "ssh://git@git.example.com/org/app",
                "git@git.example.com:org/app",
                "ssh://git.example.com/org/app",
                "git.example.com:org/app",
                "https://git.example.com:8443/org/app",
            ]
        );
        // With a port, an ssh remote has no scp-like spelling.
        let ssh = GitUrl::Ssh { user: None, host: "h".into(), port: Some(2222), path: "a.git".into() };
        assert_eq!(url_forms(&ssh), ["ssh://h:2222/a.git", "https://h/a.git", "ssh://h:2222/a", "https://h/a"]);
    }

    #[test]
    fn the_approved_key_is_the_placeholders_last_20_characters() {
        assert_eq!(key_suffix(PLACEHOLDER_KEY).len(), 20);
        assert!(PLACEHOLDER_KEY.ends_with(key_suffix(PLACEHOLDER_KEY)));
        assert_eq!(key_suffix("short"), "short");
    }

    #[test]
    fn the_placeholder_is_not_mistaken_for_a_secret() {
        // Agents send it in bodies and headers; the egress DLP must let it pass.
        let det = bot_bottle_detect::Detector::builtin();
        for text in [
            PLACEHOLDER_KEY.to_owned(),
            format!("ANTHROPIC_API_KEY={PLACEHOLDER_KEY}"),
            format!("{{\"api_key\": \"{PLACEHOLDER_KEY}\"}}"),
            format!("authorization: Bearer {PLACEHOLDER_KEY}"),
        ] {
            assert_eq!(det.scan(text.as_bytes()), vec![], "{text}");
        }
    }
}
