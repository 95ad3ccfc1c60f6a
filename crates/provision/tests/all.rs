//! Provisioning snapshots for each provider, from real manifests.

use std::path::Path;

use bot_bottle_manifest::{Manifest, Plan, Request};
use bot_bottle_provision::{Launch, PLACEHOLDER_KEY, provision};

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBbottleCA\n-----END CERTIFICATE-----\n";

fn manifest(files: &[(&str, &str)]) -> (tempfile::TempDir, Manifest) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join(".bot-bottle");
    for (name, body) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, body).expect("write");
    }
    let m = Manifest::load(&root, Some(Path::new("/home/user"))).expect("load");
    (tmp, m)
}

fn plan(m: &Manifest, agent: &str, args: &[&str]) -> Plan {
    let req = Request { agent: agent.into(), args: args.iter().map(|s| s.to_string()).collect(), ..Request::default() };
    m.resolve(&req, &|_| true).unwrap_or_else(|e| panic!("{e:?}"))
}

fn launch<'a>(prompt: &'a str, interactive: bool) -> Launch<'a> {
    Launch {
        user: "agent",
        home: "/home/agent",
        workspace: "/workspace",
        state_dir: "/run/bot-bottle",
        proxy_url: "http://127.0.0.1:3128",
        ca_pem: CA,
        system_roots_pem: Some("-----BEGIN CERTIFICATE-----\nsystem roots\n-----END CERTIFICATE-----\n"),
        prompt,
        git_gate_url: Some("http://127.0.0.1:9420"),
        git_gate_local: true,
        supervise_url: Some("http://127.0.0.1:9419/mcp"),
        interactive,
        chatgpt: None,
    }
}

const BOTTLE: &str = "egress:\n  routes:\n    - host: api.anthropic.com\n      inject: { header: x-api-key, env: ANTHROPIC_API_KEY }\n    - host: api.openai.com\n      inject: { header: authorization, env: OPENAI_TOKEN, format: \"Bearer {}\" }\nenv: { RUST_LOG: info }\ngit-gate:\n  user: { name: Bot, email: bot@example.com }\n  repos:\n    app:\n      url: git@github.com:org/app.git\n      key: { provider: static, path: ~/.ssh/k }\n      host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\nsupervise: true\n";

fn snapshot(name: &str, dir: &Path, p: &bot_bottle_provision::Provision) {
    let json = serde_json::to_string_pretty(p).expect("json").replace(&dir.display().to_string(), "[TMP]");
    insta::assert_snapshot!(name, json);
}

#[test]
fn claude_provisioning() {
    let (tmp, m) = manifest(&[
        (
            "agents/rev.md",
            "---\nprovider: claude\nmodel: claude-sonnet-4-5\nbottle: dev\nskills: [review]\n---\nReview the change.\n",
        ),
        ("bottles/dev.yaml", BOTTLE),
        ("skills/review/SKILL.md", "Review carefully.\n"),
        ("skills/review/checklists/rust.md", "- clippy\n"),
    ]);
    let p = provision(&plan(&m, "rev", &["fix the bug"]), &launch("Review the change.\n", false)).expect("provision");
    snapshot("claude", tmp.path(), &p);
}

#[test]
fn codex_provisioning() {
    let (tmp, m) = manifest(&[
        ("agents/cx.md", "---\nprovider: codex\nmodel: gpt-5-codex\nbottle: dev\n---\nFix the tests.\n"),
        ("bottles/dev.yaml", BOTTLE),
    ]);
    let p = provision(&plan(&m, "cx", &[]), &launch("Fix the tests.\n", true)).expect("provision");
    snapshot("codex", tmp.path(), &p);
}

#[test]
fn command_provisioning() {
    let (tmp, m) = manifest(&[
        (
            "agents/hello.md",
            "---\nprovider: command\ncommand: [\"sh\", \"-c\", \"echo hi\"]\nbottle: plain\nskills: [greet]\n---\nSay hi.\n",
        ),
        ("bottles/plain.yaml", "env: { GREETING: hello }\n"),
        ("skills/greet/SKILL.md", "Greet.\n"),
    ]);
    let p = provision(&plan(&m, "hello", &["--loud"]), &launch("Say hi.\n", true)).expect("provision");
    snapshot("command", tmp.path(), &p);
}

#[test]
fn injected_tokens_never_enter_the_bottle() {
    let (_tmp, m) =
        manifest(&[("agents/rev.md", "---\nprovider: claude\nbottle: dev\n---\nGo.\n"), ("bottles/dev.yaml", BOTTLE)]);
    let p = provision(&plan(&m, "rev", &[]), &launch("Go.\n", true)).expect("provision");
    // Not the values (provisioning never sees them), and not even the names:
    // the agent's env holds the placeholder under the client's own variable.
    assert!(!p.env.contains_key("OPENAI_TOKEN"));
    assert_eq!(p.env.get("ANTHROPIC_API_KEY").map(String::as_str), Some(PLACEHOLDER_KEY));
    let all = serde_json::to_string(&p).expect("json");
    assert!(!all.contains("OPENAI_TOKEN"), "{all}");
}

#[test]
fn bad_inputs_are_refused() {
    let (_tmp, m) =
        manifest(&[("agents/a.md", "---\nprovider: claude\nbottle: dev\n---\nGo.\n"), ("bottles/dev.yaml", "{}\n")]);
    let pl = plan(&m, "a", &[]);
    let mut l = launch("Go.\n", true);
    l.ca_pem = "not a cert";
    assert!(provision(&pl, &l).is_err());
    let mut l = launch("Go.\n", true);
    l.home = "relative/home";
    assert!(provision(&pl, &l).is_err());
}

#[test]
fn the_task_comes_from_the_arguments_else_the_task_field() {
    let (_tmp, m) = manifest(&[
        ("agents/c.md", "---\nprovider: claude\nbottle: dev\ntask: create hello.txt\n---\nGo.\n"),
        ("agents/x.md", "---\nprovider: codex\nbottle: dev\ntask: create hello.txt\n---\nGo.\n"),
        ("agents/bare.md", "---\nprovider: claude\nbottle: dev\n---\nGo.\n"),
        ("bottles/dev.yaml", "{}\n"),
    ]);
    let argv = |agent: &str, args: &[&str], interactive: bool| {
        provision(&plan(&m, agent, args), &launch("Go.\n", interactive)).expect("provision").argv
    };
    let c = argv("c", &[], false);
    assert_eq!(c[c.len() - 2..], ["--print", "create hello.txt"]);
    let c = argv("c", &["say hi"], false);
    assert_eq!(c[c.len() - 2..], ["--print", "say hi"], "arguments replace the task");
    let c = argv("c", &[], true);
    assert_eq!(c.last().map(String::as_str), Some("create hello.txt"), "a terminal session starts with the task");
    assert_eq!(argv("x", &[], false)[1..], ["exec", "--skip-git-repo-check", "create hello.txt"]);
    // Neither: an unattended agent reads stdin.
    assert_eq!(argv("bare", &[], false).last().map(String::as_str), Some("--print"));
}

#[test]
fn claude_needs_no_dialog_and_accepts_root_in_the_bottle() {
    let (_tmp, m) =
        manifest(&[("agents/c.md", "---\nprovider: claude\nbottle: dev\n---\nGo.\n"), ("bottles/dev.yaml", "{}\n")]);
    let p = provision(&plan(&m, "c", &[]), &launch("Go.\n", true)).expect("provision");
    assert_eq!(p.env.get("IS_SANDBOX").map(String::as_str), Some("1"));
    let f = p.files.iter().find(|f| f.path == "/home/agent/.claude.json").expect(".claude.json");
    let bot_bottle_provision::Content::Inline(b) = &f.content else { panic!("inline") };
    let cfg: serde_json::Value = serde_json::from_slice(b).expect("json");
    assert_eq!(cfg["projects"]["/workspace"]["hasTrustDialogAccepted"], true);
    let approved = cfg["customApiKeyResponses"]["approved"][0].as_str().expect("approved");
    assert!(approved.len() == 20 && PLACEHOLDER_KEY.ends_with(approved), "{approved}");
}

/// Subscription logins: the bottle gets placeholders that satisfy the CLI,
/// never the host's token, and Codex's provider points at the ChatGPT
/// backend with the login (no API key variable at all).
#[test]
fn subscription_logins_get_placeholders() {
    let (tmp, m) = manifest(&[
        ("agents/c.md", "---\nprovider: claude\nbottle: dev\nauth: login\n---\nGo.\n"),
        ("agents/x.md", "---\nprovider: codex\nbottle: dev\nauth: login\n---\nGo.\n"),
        ("bottles/dev.yaml", "backend: native\n"),
    ]);
    let p = provision(&plan(&m, "c", &["go"]), &launch("Go.\n", false)).expect("provision");
    assert_eq!(p.env.get("CLAUDE_CODE_OAUTH_TOKEN").map(String::as_str), Some(bot_bottle_provision::PLACEHOLDER_TOKEN));
    assert!(!p.env.contains_key("ANTHROPIC_API_KEY"));
    for k in [
        "DISABLE_TELEMETRY",
        "DISABLE_ERROR_REPORTING",
        "DISABLE_AUTOUPDATER",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    ] {
        assert_eq!(p.env.get(k).map(String::as_str), Some("1"), "{k}");
    }

    let x = plan(&m, "x", &["go"]);
    assert_eq!(
        provision(&x, &launch("Go.\n", false)),
        Err(bot_bottle_provision::ProvisionError::NoChatgptAccount),
        "a login with no account on the host is refused, not faked"
    );
    let mut l = launch("Go.\n", false);
    l.chatgpt = Some(bot_bottle_provision::ChatgptAccount { account_id: "acc-1".into(), plan_type: "plus".into() });
    let p = provision(&x, &l).expect("provision");
    assert!(!p.env.contains_key("OPENAI_API_KEY"));
    assert!(p.commands.iter().any(|c| c.argv.iter().any(|a| a.contains("codex login status"))));
    let mut p = p;
    for f in &mut p.files {
        if f.path.ends_with("auth.json") {
            // Dates and the encoded tokens change with the clock.
            f.content = bot_bottle_provision::Content::Inline(b"<placeholder ChatGPT login>".to_vec());
        }
    }
    snapshot("codex-chatgpt-login", tmp.path(), &p);
}
