//! Subscription logins, end to end with the real CLIs in native bottles:
//! Claude Code on a long-lived OAuth token (`CLAUDE_CODE_OAUTH_TOKEN` on
//! the host) and Codex on the host's ChatGPT login (`$CODEX_HOME/auth.json`,
//! its access token expired so that the launcher refreshes it). Neither
//! bottle has a route of its own: the provider brings it. The real
//! credential arrives upstream; inside there are only placeholders, and
//! the token is in no plan, log or output. The audit log holds nothing but
//! the model API's requests (no telemetry, update checks or other noise).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use bot_bottle_provision::PLACEHOLDER_TOKEN;

use super::claude::{audit, codex_installed};
use super::native::{available, panic_or_skip};
use super::providers::{Fixture, TASK, fixture_for, on_a_terminal, probe, workspace};

/// The task's command, then what the agent could see of its credentials,
/// left in the workspace copy for the test to read.
pub(super) const SEEN: &str = "echo hello > hello.txt && git add hello.txt && git commit -q -m 'add hello.txt' && \
     { env; cat \"$HOME/.claude.json\" \"${CODEX_HOME:-/nonexistent}/auth.json\"; \
       command -v codex >/dev/null && codex login status; } > .seen 2>&1; echo committed";

/// Every entry the proxy wrote went to the fake API, and none was denied.
pub(super) fn only_the_api(state: &Path) -> String {
    let audit = audit(state);
    let proxy: Vec<&str> = audit.lines().filter(|l| l.contains("\"method\"")).collect();
    assert!(!proxy.is_empty(), "the proxy saw the API's requests:\n{audit}");
    for l in &proxy {
        assert!(l.contains("127.0.0.2") && !l.contains("\"deny\""), "a request other than the API's: {l}");
    }
    audit
}

/// `start --dry-run --format json` as the run itself would resolve it.
fn plan(fx: &Fixture, agent: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
        .args(["start", agent, "--dry-run", "--format", "json"])
        .current_dir(fx.project())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", fx.dir.path())
        .envs(fx.env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .expect("dry run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(super) fn no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} holds a real credential ({s}):\n{text}");
    }
}

/// No file the bottle left (its workspace copy, its home and state, the
/// audit and agent logs) holds a real credential.
pub(super) fn no_secret_under(dir: &Path, secrets: &[&str]) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            no_secret_under(&path, secrets);
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            for s in secrets {
                assert!(!text.contains(s), "{} holds a real credential", path.display());
            }
        }
    }
}

#[test]
fn claude_on_a_subscription_token_gets_a_placeholder_and_the_proxy_injects_the_real_one() {
    if !probe() {
        return;
    }
    let real = "sk-ant-oat01-RealSubscriptionTokenForTheLoginsTest0123456789abcdefABCDEF";
    let mut fx = fixture_for("claude", "fake_anthropic.py", &[("FAKE_COMMAND", OsStr::new(SEEN))], |port| {
        format!("backend: native\nenv: {{ ANTHROPIC_BASE_URL: \"https://127.0.0.2:{port}\" }}\n")
    });
    fx.env.push(("CLAUDE_CODE_OAUTH_TOKEN", real.into()));
    fx.real = real.to_owned();

    let plan = plan(&fx, "c");
    let v: serde_json::Value = serde_json::from_str(&plan).expect("plan json");
    assert_eq!(v["agent"]["auth"]["kind"], "login", "{plan}");
    let route = &v["egress"]["routes"][0];
    assert_eq!((route["provider"].as_bool(), route["inject"]["header"].as_str()), (Some(true), Some("authorization")));
    assert_eq!(route["inject"]["env"], "CLAUDE_CODE_OAUTH_TOKEN");
    no_secret("the plan", &plan, &[real]);

    let state = tempfile::tempdir().expect("state");
    let out = fx.start(state.path(), "c", &[TASK], None, None);
    let audit = only_the_api(state.path());
    fx.assert_done(state.path(), &out, "oauth token");
    no_secret("the audit log", &audit, &[real]);
    for l in fx.requests().lines() {
        assert!(l.contains("oauth-"), "Claude Code sent the OAuth beta flag itself: {l}");
    }
    let seen = std::fs::read_to_string(workspace(state.path()).expect("workspace").join(".seen")).expect(".seen");
    // (Claude Code keeps its token out of its tools' environment, so the
    // placeholder is not there to see; the host's token must not be either.)
    assert!(!seen.contains("ANTHROPIC_API_KEY"), "{seen}");
    no_secret("the bottle's environment and files", &seen, &[real]);
    no_secret_under(state.path(), &[real]);
}

pub(super) fn jwt(claims: serde_json::Value) -> String {
    let b = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{}", b(&serde_json::json!({"alg": "RS256", "typ": "JWT"})), b(&claims), b(&serde_json::json!("sig")))
}

pub(super) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// A ChatGPT login as `codex login` leaves it, for account `acc-real-1`,
/// with the access token `access` and refresh token `refresh`.
pub(super) fn login(access: &str, refresh: &str) -> serde_json::Value {
    let auth = serde_json::json!({"chatgpt_account_id": "acc-real-1", "chatgpt_plan_type": "pro",
                                  "chatgpt_user_id": "user-real-1"});
    serde_json::json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": jwt(serde_json::json!({"email": "owner@example.com", "exp": now() + 3600,
                                               "https://api.openai.com/auth": auth})),
            "access_token": access,
            "refresh_token": refresh,
            "account_id": "acc-real-1",
        },
        "last_refresh": "2026-01-01T00:00:00Z",
    })
}

#[test]
fn codex_on_the_hosts_chatgpt_login_is_refreshed_on_the_host_and_never_enters_the_bottle() {
    for p in [available(), codex_installed()] {
        if let Err(why) = p {
            panic_or_skip(&why);
            return;
        }
    }
    let auth = serde_json::json!({"chatgpt_account_id": "acc-real-1", "chatgpt_plan_type": "pro"});
    let expired = jwt(serde_json::json!({"exp": now() - 3600, "https://api.openai.com/auth": auth, "n": "old"}));
    let fresh = jwt(serde_json::json!({"exp": now() + 10 * 86_400, "https://api.openai.com/auth": auth, "n": "new"}));
    let (old_refresh, new_refresh) = ("rt-real-refresh-token-one-0123456789", "rt-real-refresh-token-two-0123456789");

    let files = tempfile::tempdir().expect("tempdir");
    let refreshed = files.path().join("refreshed.json");
    std::fs::write(&refreshed, serde_json::json!({"access_token": fresh, "refresh_token": new_refresh}).to_string())
        .expect("write");
    let fake_env = [
        ("FAKE_COMMAND", OsStr::new(SEEN)),
        ("FAKE_REFRESH_TOKEN", OsStr::new(old_refresh)),
        ("FAKE_REFRESHED", refreshed.as_os_str()),
    ];
    let mut port = 0;
    let mut fx = fixture_for("codex", "fake_openai.py", &fake_env, |p| {
        port = p;
        format!("backend: native\nenv: {{ CHATGPT_BASE_URL: \"https://127.0.0.2:{p}/backend-api\" }}\n")
    });
    let codex_home = files.path().join("codex-home");
    std::fs::create_dir(&codex_home).expect("mkdir");
    let host_auth = codex_home.join("auth.json");
    std::fs::write(&host_auth, login(&expired, old_refresh).to_string()).expect("write");
    std::fs::set_permissions(&host_auth, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    fx.env.push(("CODEX_HOME", codex_home.clone().into_os_string()));
    fx.env.push(("CODEX_REFRESH_TOKEN_URL_OVERRIDE", format!("https://127.0.0.2:{port}/oauth/token").into()));
    fx.real = fresh.clone();
    let secrets = [expired.as_str(), fresh.as_str(), old_refresh, new_refresh];

    // No OPENAI_API_KEY on the host: the login is what it has.
    let plan = plan(&fx, "c");
    let v: serde_json::Value = serde_json::from_str(&plan).expect("plan json");
    assert_eq!(
        (v["agent"]["auth"]["kind"].as_str(), v["agent"]["auth"]["from"].as_str()),
        (Some("login"), Some("auto"))
    );
    assert_eq!(v["egress"]["routes"][0]["host"], format!("127.0.0.2:{port}"), "{plan}");
    assert_eq!(v["egress"]["routes"][0]["provider"], true, "{plan}");
    no_secret("the plan", &plan, &secrets);
    assert!(std::fs::read_to_string(&host_auth).expect("auth").contains(&expired), "a dry run refreshes nothing");

    // Two bottles at once on one expired login: the refresh token is
    // single-use, so one launcher refreshes and the other, waiting on the
    // lock, finds the login renewed.
    let (state, other) = (tempfile::tempdir().expect("state"), tempfile::tempdir().expect("state"));
    let (out, second) = std::thread::scope(|s| {
        let a = s.spawn(|| fx.start(state.path(), "c", &[TASK], None, None));
        let b = s.spawn(|| fx.start(other.path(), "c", &[TASK], None, None));
        (a.join().expect("first"), b.join().expect("second"))
    });
    assert!(second.status.success(), "the second launch: {}", String::from_utf8_lossy(&second.stderr));
    assert!(out.status.success(), "the first launch: {}", String::from_utf8_lossy(&out.stderr));
    let audit = only_the_api(state.path());
    fx.assert_done(state.path(), &out, "chatgpt login");
    no_secret("the audit log", &audit, &secrets);

    let requests = fx.requests();
    let refreshes = requests.lines().filter(|l| l.contains("\"/oauth/token\"")).count();
    assert_eq!(refreshes, 1, "one refresh, by the launcher:\n{requests}");
    assert!(!requests.contains("\"websocket\": true"), "{requests}");
    for l in requests.lines().filter(|l| !l.contains("/oauth/token")) {
        assert!(l.contains("\"account\": \"acc-real-1\""), "{l}");
    }
    assert!(requests.contains("/backend-api/codex/responses"), "{requests}");

    // The host's login now holds the renewed tokens, still private.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&host_auth).expect("auth")).expect("json");
    assert_eq!(saved["tokens"]["access_token"], fresh.as_str());
    assert_eq!(saved["tokens"]["refresh_token"], new_refresh);
    assert_eq!(saved["tokens"]["account_id"], "acc-real-1");
    assert_eq!(std::fs::metadata(&host_auth).expect("stat").permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&codex_home).expect("ls").flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers, [std::ffi::OsString::from("auth.json")], "no temporary file left beside it");

    let seen = std::fs::read_to_string(workspace(state.path()).expect("workspace").join(".seen")).expect(".seen");
    assert!(seen.contains("Logged in using ChatGPT"), "{seen}");
    assert!(seen.contains(PLACEHOLDER_TOKEN) && seen.contains("acc-real-1"), "{seen}");
    assert!(!seen.contains("OPENAI_API_KEY="), "{seen}");
    no_secret("the bottle's environment and files", &seen, &secrets);
    no_secret_under(state.path(), &secrets);
}

/// The launcher's name for a ChatGPT login's token is answered from
/// `auth.json` only: a host variable of that name neither counts as a
/// login nor reaches the proxy, and with no login `start` refuses (before
/// creating anything) naming both ways to log in.
#[test]
fn a_host_variable_cannot_pose_as_the_chatgpt_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join(".bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(m.join("bottles/b.yaml"), "backend: native\nworkspace: none\n").expect("write");
    std::fs::write(m.join("agents/x.md"), "---\nprovider: codex\nbottle: b\nauth: login\n---\nGo.\n").expect("write");
    let codex_home = dir.path().join("codex-home");
    std::fs::create_dir(&codex_home).expect("mkdir");
    let state = tempfile::tempdir().expect("state");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", state.path())
            .env("XDG_STATE_HOME", state.path())
            .env("CODEX_HOME", &codex_home)
            .env(bot_bottle_manifest::CODEX_LOGIN_ENV, "posing-as-a-login-0123456789")
            .output()
            .expect("run")
    };
    let out = run(&["start", "x", "--dry-run", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan json");
    assert_eq!(plan["secrets"][0]["env"], bot_bottle_manifest::CODEX_LOGIN_ENV);
    assert_eq!(plan["secrets"][0]["set"], false, "{plan:#}");
    let out = run(&["start", "x", "--", "go"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("codex login") && err.contains("OPENAI_API_KEY"), "{err}");
    assert!(!err.contains("posing-as-a-login"), "{err}");
    assert!(!state.path().join("bot-bottle/bottles").exists(), "nothing is created");

    // A login whose refresh fails stops the launch before anything
    // exists, and the error names the endpoint, never a token.
    let auth = serde_json::json!({"chatgpt_account_id": "acc-real-1"});
    let expired = jwt(serde_json::json!({"exp": now() - 60, "https://api.openai.com/auth": auth}));
    let refresh = "rt-real-refresh-token-unreachable-0123456789";
    std::fs::write(codex_home.join("auth.json"), login(&expired, refresh).to_string()).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
        .args(["start", "x", "--", "go"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state.path())
        .env("XDG_STATE_HOME", state.path())
        .env("CODEX_HOME", &codex_home)
        .env("CODEX_REFRESH_TOKEN_URL_OVERRIDE", "https://127.0.0.1:1/oauth/token")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("refreshing the ChatGPT login at https://127.0.0.1:1/oauth/token"), "{err}");
    no_secret("the error", &err, &[&expired, refresh]);
    assert!(!state.path().join("bot-bottle/bottles").exists(), "nothing is created");
}

/// Codex on a terminal on the host's ChatGPT login: no sign-in screen, no
/// dialog; it does its task with the real token arriving upstream.
#[test]
fn codex_on_a_chatgpt_login_on_a_terminal_shows_no_dialog_and_does_its_task() {
    for p in [available(), codex_installed()] {
        if let Err(why) = p {
            panic_or_skip(&why);
            return;
        }
    }
    let auth = serde_json::json!({"chatgpt_account_id": "acc-real-1", "chatgpt_plan_type": "pro"});
    let access = jwt(serde_json::json!({"exp": now() + 10 * 86_400, "https://api.openai.com/auth": auth}));
    let mut fx = fixture_for("codex", "fake_openai.py", &[], |p| {
        format!("backend: native\nenv: {{ CHATGPT_BASE_URL: \"https://127.0.0.2:{p}/backend-api\" }}\n")
    });
    let codex_home = fx.dir.path().join("codex-home");
    std::fs::create_dir(&codex_home).expect("mkdir");
    std::fs::write(codex_home.join("auth.json"), login(&access, "rt-real-terminal-0123456789").to_string())
        .expect("write");
    fx.env.push(("CODEX_HOME", codex_home.into_os_string()));
    fx.real = access;
    on_a_terminal(&fx);
}
