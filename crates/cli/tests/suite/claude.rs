//! The real Claude Code (npm `@anthropic-ai/claude-code`) and Codex (npm
//! `@openai/codex`) in native bottles.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bot_bottle_provision::PLACEHOLDER_KEY;

use super::native::{available, panic_or_skip};

pub(super) fn claude_installed() -> Result<(), String> {
    let ok = Command::new("claude").arg("--version").output().is_ok_and(|o| o.status.success());
    if ok { Ok(()) } else { Err("claude is not installed (npm i -g @anthropic-ai/claude-code)".into()) }
}

fn sh(dir: &Path, script: &str) {
    let s = Command::new("sh").arg("-c").arg(script).current_dir(dir).status().expect("sh");
    assert!(s.success(), "{script}");
}

/// A test CA and a certificate for 127.0.0.2, made with openssl. (Not
/// [::1]: Claude Code's runtime sends a bracketed IPv6 literal as SNI,
/// which rustls refuses as malformed.)
pub(super) fn pki(dir: &Path) {
    sh(
        dir,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca 2>/dev/null && \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr -subj /CN=upstream 2>/dev/null && \
         printf 'subjectAltName=IP:127.0.0.2\\n' > ext.cnf && \
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 1 -extfile ext.cnf 2>/dev/null",
    );
}

const UPSTREAM: &str = r#"
import http.server, json, socket, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def handle_one(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        with open(sys.argv[1], "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "key": self.headers.get("x-api-key"),
                "authorization": self.headers.get("authorization")}) + "\n")
        body = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "hello from the upstream"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 5}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = handle_one
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.2", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("leaf.pem", "leaf.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A project in `dir` whose bottle `api` is `bottle`, with the agent `name`
/// of `provider` (its program has the provider's name) and an agent
/// `version` that runs `PROGRAM --version` in the same bottle.
pub(super) fn agent_project(dir: &Path, bottle: &str, name: &str, provider: &str) -> std::path::PathBuf {
    let project = dir.join("project");
    let m = project.join(".bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(m.join("bottles/api.yaml"), bottle).expect("write");
    let agent = format!("---\nprovider: {provider}\nbottle: api\n---\nAnswer briefly.\n");
    std::fs::write(m.join(format!("agents/{name}.md")), agent).expect("write");
    let version = format!("---\nprovider: command\ncommand: [\"{provider}\", \"--version\"]\nbottle: api\n---\n");
    std::fs::write(m.join("agents/version.md"), version).expect("write");
    project
}

/// `bot-bottle start AGENT --quiet -- ARGS` in `project`, its state in
/// `state`, with nothing of this process's environment but PATH and `env`.
pub(super) fn start_in(
    project: &Path,
    state: &Path,
    env: &[(&str, &std::ffi::OsStr)],
    agent: &str,
    args: &[&str],
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bot-bottle"));
    c.args(["start", agent, "--quiet", "--"])
        .args(args)
        .current_dir(project)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state)
        .env("XDG_STATE_HOME", state)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The TLS upstream on 127.0.0.2, logging requests to `requests.jsonl`.
fn upstream(d: &Path) -> (std::process::Child, u16) {
    pki(d);
    std::fs::write(d.join("upstream.py"), UPSTREAM).expect("write");
    let mut up = Command::new("python3")
        .arg("upstream.py")
        .arg(d.join("requests.jsonl"))
        .current_dir(d)
        .stdout(Stdio::piped())
        .spawn()
        .expect("upstream");
    let mut line = String::new();
    BufReader::new(up.stdout.take().expect("stdout")).read_line(&mut line).expect("port");
    (up, line.trim().parse().expect("port"))
}

#[test]
fn claude_code_runs_in_a_bottle_and_its_requests_go_through_the_proxy() {
    for probe in [available(), claude_installed()] {
        if let Err(why) = probe {
            panic_or_skip(&why);
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (mut up, port) = upstream(d);

    let bottle = format!(
        "backend: native\nenv: {{ ANTHROPIC_BASE_URL: \"https://127.0.0.2:{port}\" }}\negress:\n  routes:\n    - host: \"127.0.0.2:{port}\"\n      inject: {{ header: x-api-key, env: BB_TEST_ANTHROPIC_KEY }}\n"
    );
    let project = agent_project(d, &bottle, "c", "claude");
    let state = tempfile::tempdir().expect("state");
    let real_key = "real-anthropic-key-for-the-test-0123456789";
    let ca = d.join("ca.pem");
    let env = [("BOT_BOTTLE_UPSTREAM_CA", ca.as_os_str()), ("BB_TEST_ANTHROPIC_KEY", real_key.as_ref())];
    let start = |agent: &str, args: &[&str]| start_in(&project, state.path(), &env, agent, args);

    let v = start("version", &[]).output().expect("claude --version");
    assert!(String::from_utf8_lossy(&v.stdout).contains("(Claude Code)"), "{}", String::from_utf8_lossy(&v.stderr));

    let mut run = start("c", &["say hello"]).spawn().expect("start claude");
    let deadline = Instant::now() + Duration::from_secs(90);
    let requests = d.join("requests.jsonl");
    while Instant::now() < deadline && run.try_wait().expect("wait").is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = run.kill();
    let out = run.wait_with_output().expect("output");
    cleanup(state.path());
    let _ = up.kill();
    let _ = up.wait();
    let log = std::fs::read_to_string(&requests).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("/v1/messages"),
        "Claude Code reached the allowed host through the proxy:\n{log}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for l in log.lines() {
        let r: serde_json::Value = serde_json::from_str(l).expect("json");
        assert_eq!(r["key"], real_key, "the proxy injected the real key: {l}");
        assert!(!l.contains(PLACEHOLDER_KEY));
    }
    assert!(!stdout.contains(real_key), "the real key never reaches the agent");
}

pub(super) fn codex_installed() -> Result<(), String> {
    let ok = Command::new("codex").arg("--version").output().is_ok_and(|o| o.status.success());
    if ok { Ok(()) } else { Err("codex is not installed (npm i -g @openai/codex)".into()) }
}

/// Codex talks to its real default endpoint, api.openai.com, which this
/// machine cannot reach: the proxy records the request it decrypted (so
/// Codex trusted the bottle CA through the MITM) and answers 502.
#[test]
fn codex_runs_in_a_bottle_and_its_requests_go_through_the_proxy() {
    for probe in [available(), codex_installed()] {
        if let Err(why) = probe {
            panic_or_skip(&why);
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bottle = "backend: native\negress:\n  routes:\n    - host: api.openai.com\n      inject: { header: authorization, env: BB_TEST_OPENAI_KEY, format: \"Bearer {}\" }\n";
    let project = agent_project(dir.path(), bottle, "x", "codex");
    let state = tempfile::tempdir().expect("state");
    let real_key = "sk-real-openai-key-for-the-test-0123456789";
    let env = [("BB_TEST_OPENAI_KEY", std::ffi::OsStr::new(real_key))];
    let start = |agent: &str, args: &[&str]| start_in(&project, state.path(), &env, agent, args);
    let v = start("version", &[]).output().expect("codex --version");
    assert!(String::from_utf8_lossy(&v.stdout).contains("codex-cli"), "{}", String::from_utf8_lossy(&v.stderr));

    let mut run = start("x", &["say hello"]).spawn().expect("start codex");
    let deadline = Instant::now() + Duration::from_secs(60);
    let decrypted =
        |a: &str| a.lines().any(|l| l.contains("\"host\":\"api.openai.com\"") && l.contains("/v1/responses"));
    while Instant::now() < deadline && run.try_wait().expect("wait").is_none() && !decrypted(&audit(state.path())) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = run.kill();
    let out = run.wait_with_output().expect("output");
    cleanup(state.path());
    let audit = audit(state.path());
    assert!(
        decrypted(&audit),
        "Codex's request was decrypted by the proxy:\n{audit}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!audit.contains(real_key) && !String::from_utf8_lossy(&out.stdout).contains(real_key));
}

/// `bot-bottle cleanup` for a state home: a launcher killed by the test
/// leaves its bottle's cgroup behind.
pub(super) fn cleanup(state: &Path) {
    let s = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
        .arg("cleanup")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state)
        .env("XDG_STATE_HOME", state)
        .stdout(Stdio::null())
        .status();
    assert!(s.is_ok_and(|s| s.success()), "bot-bottle cleanup");
}

/// Every bottle's audit log under a state home, for failure messages.
pub(super) fn audit(state: &Path) -> String {
    let dir = state.join("bot-bottle/bottles");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path().join("audit.jsonl")).unwrap_or_default())
        .collect()
}
