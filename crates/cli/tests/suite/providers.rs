//! Providers out of the box: the real Claude Code in native bottles against
//! a scripted Messages API (`tests/support/fake_anthropic.py`), asked to
//! create hello.txt and commit it. The task comes from `-- TASK`, stdin or
//! `task:`; on a terminal no dialog stops it; launched by root or by an
//! unprivileged user (then it is uid 0 inside); the real key arrives
//! upstream and only the placeholder is inside.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bot_bottle_provision::PLACEHOLDER_KEY;

use super::claude::{audit, claude_installed, cleanup, codex_installed, pki, start_in};
use super::native::{available, panic_or_skip};

pub(super) const REAL_KEY: &str = "real-anthropic-key-for-the-providers-test-0123456789";
pub(super) const TASK: &str = "create hello.txt and commit it";

/// The fake Messages API on 127.0.0.2 and a project whose agents `c`
/// (no task) and `t` (`task:`) reach it through the bottle's proxy.
pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    api: std::process::Child,
    /// The launcher's environment beyond PATH, HOME and the test CA.
    pub(super) env: Vec<(&'static str, std::ffi::OsString)>,
    /// The credential that must arrive upstream.
    pub(super) real: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The fake API is this test's child; it must not outlive it. (An
        // error here means it is gone already.)
        self.api.kill().ok();
        self.api.wait().ok();
    }
}

pub(super) fn probe() -> bool {
    for p in [available(), claude_installed()] {
        if let Err(why) = p {
            panic_or_skip(&why);
            return false;
        }
    }
    true
}

/// No route of the bottle's own: the provider brings the one to its API
/// (moved by `ANTHROPIC_BASE_URL`), injecting the host's key.
fn fixture() -> Fixture {
    let mut fx = fixture_for("claude", "fake_anthropic.py", &[], |port| {
        format!("backend: native\nenv: {{ ANTHROPIC_BASE_URL: \"https://127.0.0.2:{port}\" }}\n")
    });
    fx.env.push(("ANTHROPIC_API_KEY", REAL_KEY.into()));
    fx
}

/// A claude [`fixture_for`] whose fake API's tool call runs `before` first,
/// the host's key set for the provider's route.
pub(super) fn fixture_with(
    provider: &str,
    script: &str,
    before: Option<&str>,
    bottle: impl FnOnce(u16) -> String,
) -> Fixture {
    let before = std::ffi::OsString::from(before.unwrap_or("true"));
    let mut fx = fixture_for(provider, script, &[("FAKE_API_BEFORE", before.as_os_str())], bottle);
    fx.env.push(("ANTHROPIC_API_KEY", REAL_KEY.into()));
    fx
}

/// The fake API `script` (in tests/support, run with `fake_env`) and
/// agents of `provider` in a bottle made by `bottle(port)`.
pub(super) fn fixture_for(
    provider: &str,
    script: &str,
    fake_env: &[(&str, &std::ffi::OsStr)],
    bottle: impl FnOnce(u16) -> String,
) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    pki(d);
    let script = format!("{}/tests/support/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut api = Command::new("python3")
        .arg(script)
        .args(["127.0.0.2", "leaf.pem", "leaf.key"])
        .arg(d.join("requests.jsonl"))
        .envs(fake_env.iter().copied())
        .current_dir(d)
        .stdout(Stdio::piped())
        .spawn()
        .expect("fake API");
    let mut line = String::new();
    BufReader::new(api.stdout.take().expect("stdout")).read_line(&mut line).expect("port");
    let port: u16 = line.trim().parse().expect("port");

    let m = d.join("project/.bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(m.join("bottles/api.yaml"), bottle(port)).expect("write");
    std::fs::write(m.join("agents/c.md"), format!("---\nprovider: {provider}\nbottle: api\n---\nBe brief.\n"))
        .expect("write");
    let t = format!("---\nprovider: {provider}\nbottle: api\ntask: \"{TASK}\"\n---\nBe brief.\n");
    std::fs::write(m.join("agents/t.md"), t).expect("write");
    // A repository with one commit and no identity of its own: the commit
    // inside needs the bottle's default one.
    let project = d.join("project");
    let git = |args: &[&str]| {
        let s = Command::new("git")
            .args(["-c", "user.name=Owner", "-c", "user.email=owner@example.com"])
            .args(args)
            .current_dir(&project)
            .stdout(Stdio::null())
            .status()
            .expect("git");
        assert!(s.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "init"]);
    Fixture { dir, api, env: Vec::new(), real: REAL_KEY.to_owned() }
}

impl Fixture {
    pub(super) fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    pub(super) fn requests(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl")).unwrap_or_default()
    }

    fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let mut env = vec![("BOT_BOTTLE_UPSTREAM_CA", self.dir.path().join("ca.pem").into_os_string())];
        env.extend(self.env.iter().cloned());
        env
    }

    /// `bot-bottle start AGENT --quiet -- ARGS` with `stdin`, its state in
    /// `state`, as `user` (a uid) when given; killed after two minutes.
    pub(super) fn start(
        &self,
        state: &Path,
        agent: &str,
        args: &[&str],
        stdin: Option<&str>,
        user: Option<u32>,
    ) -> Output {
        self.start_env(state, agent, args, stdin, user, &[])
    }

    /// [`Fixture::start`] with `extra` in the launcher's environment.
    pub(super) fn start_with(&self, state: &Path, agent: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
        self.start_env(state, agent, args, None, None, extra)
    }

    fn start_env(
        &self,
        state: &Path,
        agent: &str,
        args: &[&str],
        stdin: Option<&str>,
        user: Option<u32>,
        extra: &[(&str, &str)],
    ) -> Output {
        let mut env = self.env();
        env.extend(extra.iter().map(|(k, v)| (*k, std::ffi::OsString::from(v))));
        let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
        let mut c = start_in(&self.project(), state, &env, agent, args);
        if let Some(uid) = user {
            let mut wrapped = Command::new("setpriv");
            wrapped
                .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), "--".into()])
                .arg(c.get_program())
                .args(c.get_args())
                .current_dir(self.project())
                .env_clear()
                .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c = wrapped;
        }
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut run = c.spawn().expect("start");
        if let Some(text) = stdin {
            let mut w = run.stdin.take().expect("stdin");
            w.write_all(text.as_bytes()).expect("write the task");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && run.try_wait().expect("wait").is_none() {
            std::thread::sleep(Duration::from_millis(200));
        }
        if run.try_wait().expect("wait").is_none() {
            run.kill().expect("kill the launcher");
        }
        let out = run.wait_with_output().expect("output");
        cleanup(state);
        out
    }

    /// What the agent left: hello.txt in its workspace copy, committed
    /// with the default identity; the real key upstream, never inside.
    pub(super) fn assert_done(&self, state: &Path, out: &Output, how: &str) {
        let shown = format!(
            "{how}: exit {:?}\nstdout: {}\nstderr: {}\nrequests:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.requests()
        );
        assert!(out.status.success(), "{shown}");
        let ws = workspace(state).unwrap_or_else(|| panic!("no workspace: {shown}"));
        assert_eq!(std::fs::read_to_string(ws.join("hello.txt")).ok().as_deref(), Some("hello\n"), "{shown}");
        let log = Command::new("git")
            .args(["-c", "safe.directory=*", "log", "-1", "--format=%an <%ae>|%s"])
            .current_dir(&ws)
            .output()
            .expect("git log");
        assert_eq!(
            String::from_utf8_lossy(&log.stdout).trim(),
            "bot-bottle agent <agent@bot-bottle.invalid>|add hello.txt",
            "{shown}"
        );
        let requests = self.requests();
        assert!(requests.contains("\"tools\": true") || requests.contains("\"tools\": [\""), "{shown}");
        for l in requests.lines() {
            let r: serde_json::Value = serde_json::from_str(l).expect("json");
            if r["path"] == "/oauth/token" {
                // The launcher's refresh of a host login: never through the bottle.
                continue;
            }
            let key = r["key"].as_str().or_else(|| r["authorization"].as_str()?.strip_prefix("Bearer "));
            assert_eq!(key, Some(self.real.as_str()), "the proxy injected the real key: {l}");
            assert!(!l.contains(PLACEHOLDER_KEY), "{l}");
        }
        for stream in [&out.stdout, &out.stderr] {
            assert!(!String::from_utf8_lossy(stream).contains(&self.real), "{shown}");
        }
    }
}

/// The one bottle's workspace copy under a state home.
pub(super) fn workspace(state: &Path) -> Option<PathBuf> {
    std::fs::read_dir(state.join("bot-bottle/bottles"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("workspace"))
        .find(|w| w.is_dir())
}

#[test]
fn claude_does_its_task_unattended_from_the_arguments_stdin_or_the_task_field() {
    if !probe() {
        return;
    }
    let fx = fixture();
    for (how, agent, args, stdin) in
        [("-- TASK", "c", &[TASK][..], None), ("stdin", "c", &[][..], Some(TASK)), ("task:", "t", &[][..], None)]
    {
        let state = tempfile::tempdir().expect("state");
        let out = fx.start(state.path(), agent, args, stdin, None);
        let audit = audit(state.path());
        fx.assert_done(state.path(), &out, how);
        // Telemetry, error reports and update checks are off: the proxy
        // saw the model API's requests and nothing else.
        let elsewhere: Vec<&str> =
            audit.lines().filter(|l| l.contains("\"method\"") && !l.contains("127.0.0.2")).collect();
        assert!(elsewhere.is_empty(), "{how}: background calls:\n{}", elsewhere.join("\n"));
        std::fs::write(fx.dir.path().join("requests.jsonl"), "").expect("truncate");
    }
}

#[test]
fn an_unattended_claude_without_a_task_exits_2_and_creates_nothing() {
    // Needs no bottle: the refusal comes before anything is made.
    let fx_dir = tempfile::tempdir().expect("tempdir");
    let m = fx_dir.path().join(".bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(m.join("bottles/b.yaml"), "backend: native\nworkspace: none\n").expect("write");
    std::fs::write(m.join("agents/c.md"), "---\nprovider: claude\nbottle: b\n---\nGo.\n").expect("write");
    for detach in [false, true] {
        let state = tempfile::tempdir().expect("state");
        // A key, so that the missing task is what stops it.
        let key = [("ANTHROPIC_API_KEY", std::ffi::OsStr::new("k"))];
        let mut c = start_in(fx_dir.path(), state.path(), &key, "c", &[]);
        if detach {
            // `start c --quiet -- --detach` would pass it to the agent.
            c = Command::new(env!("CARGO_BIN_EXE_bot-bottle"));
            c.args(["start", "c", "--detach"])
                .current_dir(fx_dir.path())
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", state.path())
                .env("XDG_STATE_HOME", state.path())
                .env("ANTHROPIC_API_KEY", "k")
                .stdin(Stdio::null());
        }
        let out = c.output().expect("start");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "detach {detach}: {err}");
        assert!(err.contains("has no task") && err.contains("task:") && err.contains("-- \""), "{err}");
        assert!(!state.path().join("bot-bottle/bottles").exists(), "detach {detach}: nothing is created");
    }
}

/// The uid of an unprivileged user to launch as: `bbci` (made by .ci/run),
/// else `nobody`.
fn unprivileged_uid() -> u32 {
    let id = |name: &str| {
        let o = Command::new("id").args(["-u", name]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok().filter(|_| o.status.success())
    };
    id("bbci").or_else(|| id("nobody")).unwrap_or(65534)
}

/// Launched by an unprivileged user, the agent is uid 0 inside its user
/// namespace, where Claude Code refuses `--dangerously-skip-permissions`
/// unless the bottle says it is a sandbox.
#[test]
fn claude_launched_by_an_unprivileged_user_runs_as_uid_0_inside_and_does_its_task() {
    if !probe() {
        return;
    }
    let fx = fixture();
    let state = tempfile::tempdir().expect("state");
    let user = nix::unistd::geteuid().is_root().then(unprivileged_uid);
    if let Some(uid) = user {
        // The user must reach the test's files, as a user reaches their own.
        for p in [fx.dir.path(), state.path()] {
            let s = Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(p).status().expect("chown");
            assert!(s.success());
        }
        let s = Command::new("chmod").arg("0755").arg(fx.dir.path()).status().expect("chmod");
        assert!(s.success());
    }
    let out = fx.start(state.path(), "c", &[TASK], None, user);
    fx.assert_done(state.path(), &out, "unprivileged");
}

/// On a terminal Claude Code starts its interactive session with the task
/// as its first message: no folder-trust dialog, no "use this API key?"
/// (whose default would leave it logged out), no onboarding.
#[test]
fn claude_on_a_terminal_shows_no_dialog_and_does_its_task() {
    if !probe() {
        return;
    }
    on_a_terminal(&fixture());
}

/// The same on a subscription login (Claude Code's OAuth token): no login
/// screen, no dialog.
#[test]
fn claude_on_a_subscription_token_on_a_terminal_shows_no_dialog_and_does_its_task() {
    if !probe() {
        return;
    }
    let mut fx = fixture_for("claude", "fake_anthropic.py", &[], |port| {
        format!("backend: native\nenv: {{ ANTHROPIC_BASE_URL: \"https://127.0.0.2:{port}\" }}\n")
    });
    fx.real = "sk-ant-oat01-RealSubscriptionTokenForTheTerminalTest0123456789abcdef".into();
    fx.env.push(("CLAUDE_CODE_OAUTH_TOKEN", fx.real.clone().into()));
    on_a_terminal(&fx);
}

pub(super) fn on_a_terminal(fx: &Fixture) {
    let state = tempfile::tempdir().expect("state");
    let done = state.path().join("bot-bottle/bottles/*/workspace/hello.txt");
    let steps = serde_json::json!([
        ["waitfile", done.display().to_string()],
        // The commit follows hello.txt at once, then the final answer. (Not
        // a wait for its text: the screen is redrawn with cursor moves, so
        // no phrase is sure to be written whole.)
        ["sleep", 3],
        ["type", "\u{3}"],
        ["sleep", 0.5],
        ["type", "\u{3}"],
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/pty_run.py");
    let mut c = Command::new("python3");
    c.arg(script)
        .arg(steps.to_string())
        .args(["--", env!("CARGO_BIN_EXE_bot-bottle"), "start", "c", "--quiet", "--", TASK])
        .current_dir(fx.project())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state.path())
        .env("XDG_STATE_HOME", state.path())
        .env("TERM", "xterm-256color")
        .envs(fx.env());
    let out = c.output().expect("pty_run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pty_run: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let shown = v["output"].as_str().unwrap_or_default().to_owned();
    cleanup(state.path());
    for dialog in
        ["trust", "Do you want to use this API key", "Choose the text style", "Yes, I accept", "Select login method"]
    {
        assert!(!shown.contains(dialog), "a dialog (`{dialog}`) showed:\n{shown}");
    }
    let o = Output { status: exit_status(v["code"].as_i64().unwrap_or(-1)), stdout: Vec::new(), stderr: shown.into() };
    fx.assert_done(state.path(), &o, "terminal");
}

fn exit_status(code: i64) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    std::process::ExitStatus::from_raw(i32::try_from(code).unwrap_or(255).clamp(0, 255) << 8)
}

/// As `fixture`, for Codex: the provider's route, the host's key.
fn codex_fixture() -> Fixture {
    let mut fx = fixture_for("codex", "fake_openai.py", &[], |port| {
        format!("backend: native\nenv: {{ OPENAI_BASE_URL: \"https://127.0.0.2:{port}/v1\" }}\n")
    });
    fx.env.push(("OPENAI_API_KEY", REAL_KEY.into()));
    fx
}

/// Codex reads its base URL from config.toml, never a WebSocket first, and
/// calls nothing in the background: every request the proxy saw went to
/// the one API.
#[test]
fn codex_does_its_task_unattended_over_https_with_no_background_calls() {
    for p in [available(), codex_installed()] {
        if let Err(why) = p {
            panic_or_skip(&why);
            return;
        }
    }
    let fx = codex_fixture();
    for (how, agent, args, stdin) in [("-- TASK", "c", &[TASK][..], None), ("task:", "t", &[][..], None)] {
        let state = tempfile::tempdir().expect("state");
        let out = fx.start(state.path(), agent, args, stdin, None);
        let audit = audit(state.path());
        fx.assert_done(state.path(), &out, how);
        let requests = fx.requests();
        assert!(!requests.contains("\"websocket\": true"), "{how}: no WebSocket attempt:\n{requests}");
        // The proxy's entries (the gate's have a `service`).
        let elsewhere: Vec<&str> =
            audit.lines().filter(|l| l.contains("\"method\"") && !l.contains("127.0.0.2")).collect();
        assert!(elsewhere.is_empty(), "{how}: background calls:\n{}", elsewhere.join("\n"));
        std::fs::write(fx.dir.path().join("requests.jsonl"), "").expect("truncate");
    }
}
