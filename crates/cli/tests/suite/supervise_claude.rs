//! The real Claude Code in a native bottle with `supervise: true`, driven
//! by a scripted fake Anthropic API: it loads the MCP config bot-bottle
//! provisioned, calls `request_egress` when the API says so, the operator
//! approves with `bot-bottle requests approve`, and the tool result Claude
//! Code sends back says approved.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::claude::{agent_project, audit, claude_installed, cleanup, pki, start_in};
use super::native::{available, panic_or_skip};

/// The fake Messages API on 127.0.0.2 (TLS), streaming as Claude Code asks.
/// Each request body goes to the log. A request that offers the supervise
/// tool and carries no tool result yet is answered with a `tool_use` of
/// `request_egress`; one carrying a tool result is answered with text; any
/// other (titles, quota checks) with "ok".
const FAKE_API: &str = r#"
import http.server, json, ssl, sys
TOOL = "mcp__supervise__request_egress"
def blocks(body):
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, list):
            yield from c
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n)
        with open(sys.argv[1], "ab") as f:
            f.write(raw.replace(b"\n", b" ") + b"\n")
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        tools = [t.get("name") for t in body.get("tools", [])]
        results = [b for b in blocks(body) if b.get("type") == "tool_result"]
        if results:
            content = [{"type": "text", "text": "the tool said: " + json.dumps(results[-1].get("content"))}]
            stop = "end_turn"
        elif TOOL in tools:
            content = [{"type": "tool_use", "id": "toolu_01", "name": TOOL, "input": {
                "host": "docs.example.test", "methods": ["GET"],
                "justification": "read the library documentation"}}]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": "ok"}]
            stop = "end_turn"
        if body.get("stream"):
            self.stream(body, content, stop)
        else:
            self.send(json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": body.get("model", "m"),
                "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1}}).encode(), "application/json")
    def stream(self, body, content, stop):
        ev = []
        def e(kind, data):
            data["type"] = kind
            ev.append("event: %s\ndata: %s\n\n" % (kind, json.dumps(data)))
        e("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant",
            "model": body.get("model", "m"), "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1}}})
        for i, b in enumerate(content):
            if b["type"] == "text":
                e("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}})
                e("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": b["text"]}})
            else:
                e("content_block_start", {"index": i, "content_block": dict(b, input={})})
                e("content_block_delta", {"index": i, "delta": {"type": "input_json_delta",
                    "partial_json": json.dumps(b["input"])}})
            e("content_block_stop", {"index": i})
        e("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 1}})
        e("message_stop", {})
        self.send("".join(ev).encode(), "text/event-stream")
    def send(self, data, kind):
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.send(b"{}", "application/json")
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.2", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("leaf.pem", "leaf.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// `bot-bottle ARGS` against the state home `state`.
fn operator(state: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state)
        .env("XDG_STATE_HOME", state)
        .output()
        .expect("bot-bottle");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn claude_code_asks_over_mcp_and_sees_the_approval() {
    for probe in [available(), claude_installed()] {
        if let Err(why) = probe {
            panic_or_skip(&why);
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    pki(d);
    std::fs::write(d.join("api.py"), FAKE_API).expect("write");
    let log = d.join("requests.jsonl");
    let mut api =
        Command::new("python3").arg("api.py").arg(&log).current_dir(d).stdout(Stdio::piped()).spawn().expect("api");
    let mut line = String::new();
    BufReader::new(api.stdout.take().expect("stdout")).read_line(&mut line).expect("port");
    let port: u16 = line.trim().parse().expect("port");

    let bottle = format!(
        "backend: native\nsupervise: true\nenv: {{ ANTHROPIC_BASE_URL: \"https://127.0.0.2:{port}\" }}\negress:\n  routes:\n    - host: \"127.0.0.2:{port}\"\n      inject: {{ header: x-api-key, env: BB_TEST_ANTHROPIC_KEY }}\n"
    );
    let project = agent_project(d, &bottle, "c", "claude");
    let state = tempfile::tempdir().expect("state");
    let ca = d.join("ca.pem");
    let env = [("BOT_BOTTLE_UPSTREAM_CA", ca.as_os_str()), ("BB_TEST_ANTHROPIC_KEY", "k".as_ref())];
    let mut run = start_in(&project, state.path(), &env, "c", &["fetch the docs"]).spawn().expect("start claude");

    // The operator approves the first request that shows up.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut approved = None;
    while Instant::now() < deadline && run.try_wait().expect("wait").is_none() {
        if approved.is_none() {
            let (code, out) = operator(state.path(), &["requests", "list", "--format", "json"]);
            assert_eq!(code, 0, "{out}");
            let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
            if let Some(r) = rows.first() {
                assert_eq!(r["route"]["host"], "docs.example.test", "{out}");
                assert_eq!(r["justification"], "read the library documentation", "{out}");
                let id = r["id"].as_str().expect("id").to_owned();
                let (code, out) = operator(state.path(), &["requests", "approve", &id]);
                assert_eq!(code, 0, "{out}");
                approved = Some(id);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = run.kill();
    let out = run.wait_with_output().expect("output");
    cleanup(state.path());
    let _ = api.kill();
    let _ = api.wait();
    let requests = std::fs::read_to_string(&log).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let why = format!(
        "API requests:\n{requests}\nstdout: {stdout}\nstderr: {}\naudit: {}",
        String::from_utf8_lossy(&out.stderr),
        audit(state.path())
    );
    assert!(requests.contains("\"mcp__supervise__request_egress\""), "the MCP tools were offered: {why}");
    assert!(approved.is_some(), "Claude Code called request_egress: {why}");
    // The tool result Claude Code sent back to the API, and its answer.
    let result = requests
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .flat_map(|b| b["messages"].as_array().cloned().unwrap_or_default())
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|c| c["type"] == "tool_result" && c["tool_use_id"] == "toolu_01")
        .unwrap_or_else(|| panic!("no tool result: {why}"));
    let text = result.to_string();
    assert!(text.contains(r#"\"status\":\"approved\""#) && text.contains("docs.example.test"), "{text}");
    assert_ne!(result["is_error"], true, "{text}");
    assert!(stdout.contains("the tool said:") && stdout.contains("approved"), "{why}");
    assert_eq!(out.status.code(), Some(0), "{why}");
}

/// `bot-bottle start AGENT --quiet -- mcp list` on a pty (so the agent runs
/// interactively: its program with only our arguments), its output.
fn mcp_list(project: &Path, state: &Path, agent: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_bot-bottle");
    let out = Command::new("script")
        .args(["-qec", &format!("{bin} start {agent} --quiet -- mcp list"), "/dev/null"])
        .current_dir(project)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state)
        .env("XDG_STATE_HOME", state)
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both CLIs list the provisioned server; Claude Code connects to it.
#[test]
fn claude_code_and_codex_list_the_supervise_server() {
    let script = Command::new("script").arg("--version").output().is_ok_and(|o| o.status.success());
    let codex = Command::new("codex").arg("--version").output().is_ok_and(|o| o.status.success());
    for probe in [
        available(),
        claude_installed(),
        if script { Ok(()) } else { Err("script (util-linux) is not installed".into()) },
        if codex { Ok(()) } else { Err("codex is not installed (npm i -g @openai/codex)".into()) },
    ] {
        if let Err(why) = probe {
            panic_or_skip(&why);
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Neither CLI calls its API here: no provider route, so no key needed.
    let bottle = "backend: native\nsupervise: true\nresources: { pids: 512 }\negress: { provider-routes: false }\n";
    let project = agent_project(dir.path(), bottle, "c", "claude");
    std::fs::write(project.join(".bot-bottle/agents/x.md"), "---\nprovider: codex\nbottle: api\n---\n").expect("write");
    let state = tempfile::tempdir().expect("state");
    let claude = mcp_list(&project, state.path(), "c");
    // Claude Code draws with cursor moves between words; compare the words.
    let words: String = claude.split(|c: char| c.is_control() || c == ' ').collect::<Vec<_>>().join(" ");
    assert!(
        claude.contains("supervise: http://127.0.0.1:9421/mcp") && claude.contains("Connected"),
        "claude mcp list: {words}"
    );
    let codex = mcp_list(&project, state.path(), "x");
    let line = codex.lines().find(|l| l.starts_with("supervise")).unwrap_or_else(|| panic!("codex mcp list: {codex}"));
    assert!(line.contains("http://127.0.0.1:9421/mcp") && line.contains("enabled"), "{line}");
    cleanup(state.path());
}
