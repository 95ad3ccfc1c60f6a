//! The egress proxy's hardening (issue 10) end to end: real native bottles
//! started by the real binary, real clients inside (curl, python, git,
//! pip), and a real TLS upstream on the host that echoes what it is sent.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::native::{available, panic_or_skip};

pub(super) const TOKEN: &str = "real-token-for-the-egress-test-0123456789";

/// A TLS upstream on 127.0.0.1 (openssl-made CA, python's ssl): echoes the
/// request's `x-api-key` in a header and the body (raw and base64), answers
/// `/close` close-delimited, and counts requests in `requests.log`.
struct Upstream {
    child: Child,
    port: u16,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SERVER: &str = r#"
import base64, http.server, socket, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open("requests.log", "a") as f:
            f.write(self.path + " " + str(self.headers.get_all("host")) + "\n")
        key = self.headers.get("x-api-key") or ""
        if self.path.endswith("/close"):
            self.close_connection = True
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"".join(b"close-delimited line %05d\n" % i for i in range(3000)))
            return
        body = ('{"raw": "%s", "basic": "%s"}\n' % (key, base64.b64encode(("u:" + key).encode()).decode())).encode()
        self.send_response(200)
        self.send_header("x-echo", key)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("leaf.pem", "leaf.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A test CA (`ca.pem`, handed to the proxy as its extra upstream CA) and a
/// leaf (`leaf.pem`, `leaf.key`) for 127.0.0.1 and `localhost`, in `dir`.
pub(super) fn pki(dir: &Path) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca 2>/dev/null && \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr -subj /CN=upstream 2>/dev/null && \
             printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf && \
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 1 -extfile ext.cnf 2>/dev/null",
        )
        .current_dir(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl");
}

fn upstream(dir: &Path) -> Upstream {
    pki(dir);
    std::fs::write(dir.join("upstream.py"), SERVER).expect("write");
    let mut child =
        Command::new("python3").arg("upstream.py").current_dir(dir).stdout(Stdio::piped()).spawn().expect("upstream");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("port");
    Upstream { port: line.trim().parse().expect("port"), child }
}

/// Runs `script` (sh) as the agent (which must unset `NO_PROXY` to reach
/// the upstream on 127.0.0.1 through the proxy) of a fresh native bottle whose bottle
/// file is `bottle`; returns (exit code, stdout, stderr, the audit log).
pub(super) fn run(dir: &Path, bottle: &str, script: &str) -> (i32, String, String, String) {
    let project = dir.join("project");
    let m = project.join(".bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(m.join("bottles/b.yaml"), bottle).expect("write");
    std::fs::write(
        m.join("agents/a.md"),
        format!("---\nprovider: command\ncommand: [\"sh\", \"-c\", {script:?}]\nbottle: b\n---\n"),
    )
    .expect("write");
    let state = tempfile::tempdir().expect("state");
    let out = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
        .args(["start", "a", "--quiet"])
        .current_dir(&project)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state.path())
        .env("XDG_STATE_HOME", state.path())
        .env("BOT_BOTTLE_UPSTREAM_CA", dir.join("ca.pem"))
        .env("BB_EGRESS_TEST_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("start");
    let bottles = state.path().join("bot-bottle/bottles");
    let audit: String = std::fs::read_dir(bottles)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path().join("audit.jsonl")).unwrap_or_default())
        .collect();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        audit,
    )
}

fn bottle(port: u16, extra: &str) -> String {
    format!(
        "backend: native\nresources: {{ pids: 512 }}\negress:\n  routes:\n    - host: \"127.0.0.1:{port}\"\n      inject: {{ header: x-api-key, env: BB_EGRESS_TEST_TOKEN }}\n{extra}"
    )
}

#[test]
fn the_injected_token_never_comes_back_to_the_agent() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let up = upstream(dir.path());
    let port = up.port;
    let script = format!(
        "unset NO_PROXY no_proxy; curl -sS -D - https://127.0.0.1:{port}/echo; \
         python3 -c \"import urllib.request; r=urllib.request.urlopen('https://127.0.0.1:{port}/echo'); print(r.headers['x-echo'], r.read().decode())\""
    );
    let (code, out, err, audit) = run(dir.path(), &bottle(port, ""), &script);
    assert_eq!(code, 0, "{out}\n{err}");
    let log = std::fs::read_to_string(dir.path().join("requests.log")).unwrap_or_default();
    assert_eq!(log.lines().count(), 2, "both requests reached the upstream: {log}");
    assert!(!out.contains(TOKEN), "the agent saw the token: {out}");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("u:{TOKEN}"));
    assert!(!out.contains(&b64[4..]), "the agent saw the token in base64: {out}");
    assert!(out.matches(&"*".repeat(TOKEN.len())).count() >= 4, "masked in header and body: {out}");
    assert!(audit.contains("\"injected\":\"BB_EGRESS_TEST_TOKEN\"") && !audit.contains(TOKEN), "{audit}");
}

#[test]
fn hosts_paths_and_denials_through_a_bottle() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let up = upstream(dir.path());
    let port = up.port;
    let script = format!(
        "unset NO_PROXY no_proxy; t=127.0.0.1:{port}; \
         echo host:$(curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: evil.example' https://$t/repos/org/app); \
         echo conn:$(curl -s -o /dev/null -w '%{{http_code}}' -H 'Connection: host' https://$t/repos/org/app); \
         for p in /repos/org/app/x /repos/org/app-secrets/x '/repos/org/app/..;/app-secrets' /repos/org/app/%252e%252e/x; do \
           echo path:$(curl -s --path-as-is -o /dev/null -w '%{{http_code}}' https://$t$p); done; \
         echo close:$(curl -sS https://$t/repos/org/app/close | wc -l); \
         python3 -c \"import urllib.request; print('pyclose:', len(urllib.request.urlopen('https://$t/repos/org/app/close').read().splitlines()))\"; \
         echo curl:; curl -s https://denied.example/x; \
         echo python:; python3 -c \"import urllib.request\ntry: urllib.request.urlopen('https://denied.example/x')\nexcept Exception as e: print(e)\"; \
         echo git:; git clone -q https://denied.example/org/repo.git /tmp/r 2>&1; \
         echo pip:; python3 -m pip download --no-cache-dir --no-deps -d /tmp/p --retries 0 https://denied.example/pkg/demo-1.0.tar.gz 2>&1 | grep -i error | head -3; \
         echo node:; node -e \"const tls=require('tls'),http=require('http');const r=http.request({{host:process.env.HTTPS_PROXY.split('//')[1].split(':')[0],port:+process.env.HTTPS_PROXY.split(':').pop(),method:'CONNECT',path:'denied.example:443'}});r.on('connect',(res,sock)=>{{const s=tls.connect({{socket:sock,servername:'denied.example'}},()=>{{s.write('GET / HTTP/1.1\\r\\nHost: denied.example\\r\\nConnection: close\\r\\n\\r\\n')}});let d='';s.on('data',c=>d+=c);s.on('end',()=>console.log(d.split('\\r\\n')[0], d.includes('rule: host')))}});r.end()\" 2>&1"
    );
    let (code, out, err, _audit) = run(dir.path(), &bottle(port, "      paths: [\"/repos/org/app\"]\n"), &script);
    assert_eq!(code, 0, "{out}\n{err}");
    for want in ["host:400", "conn:400", "path:200\npath:403\npath:403\npath:403", "close:3000", "pyclose: 3000"] {
        assert!(out.contains(want), "{want}: {out}\n{err}");
    }
    let section = |name: &str| {
        let start = out.find(&format!("{name}:\n")).unwrap_or(out.len());
        out[start..]
            .lines()
            .skip(1)
            .take_while(|l| !matches!(*l, "curl:" | "python:" | "git:" | "pip:" | "node:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(section("curl").contains("rule: host") && section("curl").contains(".bot-bottle/bottles/b.yaml"), "{out}");
    assert!(section("python").contains("HTTP Error 403") && section("python").contains("rule host"), "{out}");
    assert!(section("git").contains("rule: host"), "{out}");
    assert!(section("pip").contains("rule host"), "{out}");
    assert!(section("node").contains("403") && section("node").contains("true"), "{out}");
}
