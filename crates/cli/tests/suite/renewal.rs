//! A ChatGPT login renewed on the host while its bottles run, with the real
//! Codex against the fake ChatGPT backend (which refuses an access token
//! past its `exp`, and accepts each refresh token once). The margin is
//! made seconds long (`BOT_BOTTLE_LOGIN_MARGIN_SECS`) so that the token
//! expires in the middle of a run: the first turn stalls past its expiry,
//! and the second turn goes through only with a renewed token.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::claude::codex_installed;
use super::logins::{jwt, login, no_secret, no_secret_under, now, only_the_api};
use super::native::{available, panic_or_skip};
use super::providers::{Fixture, TASK, fixture_for, workspace};

fn probe() -> bool {
    for p in [available(), codex_installed()] {
        if let Err(why) = p {
            panic_or_skip(&why);
            return false;
        }
    }
    true
}

/// The fake backend (its token endpoint renewing `refresh` with `fresh`
/// and `new_refresh`; each first turn stalled `stall` seconds) and a Codex
/// home for a login, with the margin set to `margin` seconds.
fn setup(files: &Path, refresh: &str, fresh: &str, new_refresh: &str, stall: &str, margin: u64) -> (Fixture, PathBuf) {
    let refreshed = files.join("refreshed.json");
    std::fs::write(&refreshed, serde_json::json!({"access_token": fresh, "refresh_token": new_refresh}).to_string())
        .expect("write");
    let fake_env = [
        ("FAKE_REFRESH_TOKEN", OsStr::new(refresh)),
        ("FAKE_REFRESHED", refreshed.as_os_str()),
        ("FAKE_STALL", OsStr::new(stall)),
    ];
    let mut port = 0;
    let mut fx = fixture_for("codex", "fake_openai.py", &fake_env, |p| {
        port = p;
        format!("backend: native\nenv: {{ CHATGPT_BASE_URL: \"https://127.0.0.2:{p}/backend-api\" }}\n")
    });
    let codex_home = files.join("codex-home");
    std::fs::create_dir(&codex_home).expect("mkdir");
    fx.env.push(("CODEX_HOME", codex_home.clone().into_os_string()));
    fx.env.push(("CODEX_REFRESH_TOKEN_URL_OVERRIDE", format!("https://127.0.0.2:{port}/oauth/token").into()));
    fx.env.push(("BOT_BOTTLE_LOGIN_MARGIN_SECS", margin.to_string().into()));
    (fx, codex_home.join("auth.json"))
}

fn write_login(path: &Path, access: &str, refresh: &str) {
    std::fs::write(path, login(access, refresh).to_string()).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The agent committed hello.txt in the bottle whose state is `state`.
fn did_the_task(state: &Path, out: &std::process::Output, fx: &Fixture) {
    let shown = format!(
        "exit {:?}\nstderr: {}\nrequests:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        fx.requests()
    );
    assert!(out.status.success(), "{shown}");
    let ws = workspace(state).unwrap_or_else(|| panic!("no workspace: {shown}"));
    assert_eq!(std::fs::read_to_string(ws.join("hello.txt")).ok().as_deref(), Some("hello\n"), "{shown}");
}

/// The `authorization` of every request to the backend, in order.
fn bearers(fx: &Fixture, path: &str) -> Vec<String> {
    fx.requests()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|r| r["path"].as_str().is_some_and(|p| p.contains(path)) && r["path"] != "/oauth/token")
        .map(|r| r["authorization"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_chatgpt_login_expiring_mid_run_is_renewed_on_the_host_once_for_two_bottles() {
    if !probe() {
        return;
    }
    let files = tempfile::tempdir().expect("tempdir");
    let auth = serde_json::json!({"chatgpt_account_id": "acc-real-1", "chatgpt_plan_type": "pro"});
    // Renewed 8 s before it expires: 20 s into the run. The first turn
    // stalls 30 s, so the second comes after it expired.
    let old = jwt(serde_json::json!({"exp": now() + 28, "https://api.openai.com/auth": auth, "n": "old"}));
    let fresh = jwt(serde_json::json!({"exp": now() + 10 * 86_400, "https://api.openai.com/auth": auth, "n": "new"}));
    let (old_refresh, new_refresh) = ("rt-real-midrun-one-0123456789", "rt-real-midrun-two-0123456789");
    let (fx, host_auth) = setup(files.path(), old_refresh, &fresh, new_refresh, "30", 8);
    write_login(&host_auth, &old, old_refresh);
    let secrets = [old.as_str(), fresh.as_str(), old_refresh, new_refresh];

    let (a, b) = (tempfile::tempdir().expect("state"), tempfile::tempdir().expect("state"));
    let (out_a, out_b) = std::thread::scope(|s| {
        let x = s.spawn(|| fx.start(a.path(), "c", &[TASK], None, None));
        let y = s.spawn(|| fx.start(b.path(), "c", &[TASK], None, None));
        (x.join().expect("first"), y.join().expect("second"))
    });
    did_the_task(a.path(), &out_a, &fx);
    did_the_task(b.path(), &out_b, &fx);

    // One refresh for the two bottles: the second found the login the
    // first renewed (its refresh token would have been refused).
    let requests = fx.requests();
    let refreshes = requests.lines().filter(|l| l.contains("\"/oauth/token\"")).count();
    assert_eq!(refreshes, 1, "{requests}");
    // The run began on the old token, and each second turn, sent after it
    // expired, carried the renewed one.
    let all = bearers(&fx, "/");
    assert!(all.iter().all(|b| *b == format!("Bearer {old}") || *b == format!("Bearer {fresh}")), "{requests}");
    assert!(all.contains(&format!("Bearer {old}")), "the run started on the old token:\n{requests}");
    let turns = bearers(&fx, "/responses");
    assert!(turns.iter().filter(|b| **b == format!("Bearer {fresh}")).count() >= 2, "{requests}");

    // Each bottle's proxy took the renewed token, and audited it, by name.
    for (state, out) in [(a.path(), &out_a), (b.path(), &out_b)] {
        let audit = only_the_api(state);
        let renew: Vec<&str> = audit.lines().filter(|l| l.contains("\"method\":\"RENEW\"")).collect();
        assert!(!renew.is_empty() && renew.iter().all(|l| l.contains("\"decision\":\"allow\"")), "{audit}");
        let named = format!("\"injected\":\"{}\"", bot_bottle_manifest::CODEX_LOGIN_ENV);
        assert!(renew.iter().all(|l| l.contains(&named)), "{audit}");
        no_secret("the audit log", &audit, &secrets);
        no_secret("the launcher's output", &String::from_utf8_lossy(&out.stderr), &secrets);
        no_secret("the launcher's output", &String::from_utf8_lossy(&out.stdout), &secrets);
        no_secret_under(state, &secrets);
    }

    // The host's login holds the renewed tokens, still private, whole.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&host_auth).expect("auth")).expect("json");
    assert_eq!(saved["tokens"]["access_token"], fresh.as_str());
    assert_eq!(saved["tokens"]["refresh_token"], new_refresh);
    assert_eq!(std::fs::metadata(&host_auth).expect("stat").permissions().mode() & 0o777, 0o600);
    let dir = host_auth.parent().expect("dir");
    assert_eq!(std::fs::read_dir(dir).expect("ls").count(), 1, "no temporary file left beside it");
}

#[test]
fn a_failed_renewal_is_reported_and_the_bottle_keeps_the_token_it_has() {
    if !probe() {
        return;
    }
    let files = tempfile::tempdir().expect("tempdir");
    let auth = serde_json::json!({"chatgpt_account_id": "acc-real-1", "chatgpt_plan_type": "pro"});
    // A margin of 55 s on a token that lasts 60: renewal starts 5 s in,
    // and the endpoint refuses this login's refresh token every time.
    let old = jwt(serde_json::json!({"exp": now() + 60, "https://api.openai.com/auth": auth, "n": "old"}));
    let refresh = "rt-real-refused-0123456789";
    let (fx, host_auth) = setup(files.path(), "rt-some-other-login", "unused", "unused", "12", 55);
    write_login(&host_auth, &old, refresh);
    let before = std::fs::read_to_string(&host_auth).expect("auth");
    let secrets = [old.as_str(), refresh];

    let state = tempfile::tempdir().expect("state");
    let out = fx.start(state.path(), "c", &[TASK], None, None);
    did_the_task(state.path(), &out, &fx);

    let requests = fx.requests();
    assert!(requests.contains("\"/oauth/token\""), "the launcher tried to renew:\n{requests}");
    let turns = bearers(&fx, "/responses");
    assert!(turns.len() >= 2 && turns.iter().all(|b| *b == format!("Bearer {old}")), "{requests}");

    let audit = only_the_api(state.path());
    let failed = audit
        .lines()
        .find(|l| l.contains("\"method\":\"RENEW\"") && l.contains("\"decision\":\"error\""))
        .unwrap_or_else(|| panic!("the failed renewal is audited:\n{audit}"));
    assert!(failed.contains("the token endpoint answered 401"), "{failed}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("renewing a host credential failed"), "{err}");
    no_secret("the audit log", &audit, &secrets);
    no_secret("the launcher's output", &err, &secrets);
    no_secret_under(state.path(), &secrets);
    assert_eq!(std::fs::read_to_string(&host_auth).expect("auth"), before, "the host's login is left as it was");
}
