//! The acceptance cases, end to end.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use base64::Engine;

use super::clients::{curl, git, node, node_with_undici, python, python_stdin};
use super::harness::{Harness, TOKEN, Upstream};

const GHP: &str = "ghp_Zq8VtR2mN4kL7pX1cB9dF3hJ6sW0yA5eG2uT";

struct Setup {
    h: Harness,
    a: Upstream,
    b: Upstream,
    env: Vec<(String, String)>,
}

fn routes(a: &Upstream, b: Option<&Upstream>) -> String {
    let mut r = format!(
        "routes:\n  - host: \"127.0.0.1:{pa}\"\n    paths: [\"/api/\", \"/files/\"]\n    methods: [GET, POST, HEAD]\n    inject: {{ header: x-api-key, env: TEST_TOKEN }}\n  - host: \"localhost:{pa}\"\n",
        pa = a.addr.port()
    );
    if let Some(b) = b {
        r += &format!("  - host: \"127.0.0.2:{}\"\n", b.addr.port());
    }
    r += "dlp: { mode: block }\n";
    r
}

fn setup() -> Setup {
    let mut h = Harness::new();
    let a = h.upstream("127.0.0.1", true);
    let b = h.upstream("127.0.0.2", false);
    h.start_proxy(&routes(&a, Some(&b)));
    let env = h.client_env();
    Setup { h, a, b, env }
}

fn url(u: &Upstream, path: &str) -> String {
    format!("https://{}{path}", u.addr)
}

fn last_rule(h: &Harness) -> String {
    h.audit().last().and_then(|r| r["rule"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// Nothing the upstream received holds `needle`.
fn never_saw(u: &Upstream, needle: &str) {
    for s in u.seen() {
        let all = format!("{} {:?} {}", s.path, s.headers, String::from_utf8_lossy(&s.body));
        assert!(!all.contains(needle), "upstream saw {needle:?}: {all}");
    }
}

/// No path or body the upstream received holds `needle` (headers may: the
/// proxy injects the token there itself).
fn never_in_path_or_body(u: &Upstream, needle: &str) {
    for s in u.seen() {
        let all = format!("{} {}", s.path, String::from_utf8_lossy(&s.body));
        assert!(!all.contains(needle), "upstream saw {needle:?}: {all}");
    }
}

#[test]
fn allowed_request_with_token_injected_over_http2() {
    let s = setup();
    let (code, body) = curl(&s.env, &["-H", "x-api-key: dummy-agent-key", &url(&s.a, "/api/hello")]);
    assert_eq!(code, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).expect("echo json");
    assert_eq!(
        s.a.seen().last().and_then(|r| r.headers.get("x-api-key").cloned()).as_deref(),
        Some(TOKEN),
        "the real token replaced the agent's dummy"
    );
    assert_eq!(echo["headers"]["x-api-key"], "*".repeat(TOKEN.len()), "the echoed token is masked on the way back");
    assert!(!body.contains(TOKEN), "the agent never sees the token: {body}");
    assert_eq!(echo["version"], "HTTP/2.0", "HTTP/2 to an upstream that offers it");
    never_saw(&s.a, "dummy-agent-key");
    // The second host has no inject: the agent's header passes as is and
    // the token is never sent there.
    let (code, body) = curl(&s.env, &["-H", "x-api-key: dummy-agent-key", &url(&s.b, "/anything")]);
    assert_eq!(code, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).expect("echo json");
    assert_eq!(echo["headers"]["x-api-key"], "dummy-agent-key");
    assert_eq!(echo["version"], "HTTP/1.1");
    never_saw(&s.b, TOKEN);
    let audit = std::fs::read_to_string(s.h.audit_path()).expect("audit");
    assert!(!audit.contains(TOKEN), "the audit log never holds the token");
    let last = s.h.audit().last().cloned().expect("record");
    for field in
        ["time", "bottle", "method", "host", "path", "decision", "status", "bytes_up", "bytes_down", "duration_ms"]
    {
        assert!(!last[field].is_null(), "audit field {field}: {last}");
    }
}

#[test]
fn python_urllib_through_the_proxy() {
    let s = setup();
    let script = format!(
        "import urllib.request,json\nr=urllib.request.urlopen('{}', timeout=20)\nprint(r.status, json.load(r)['headers']['x-api-key'])",
        url(&s.a, "/api/py")
    );
    let out = python(&s.env, &script);
    assert_eq!(out.stdout.trim(), format!("200 {}", "*".repeat(TOKEN.len())), "{}", out.stderr);
    assert_eq!(s.a.seen().last().and_then(|r| r.headers.get("x-api-key").cloned()).as_deref(), Some(TOKEN));
}

#[test]
#[expect(clippy::print_stderr, reason = "a skipped test says why")]
fn node_fetch_through_the_proxy() {
    let dir = match node_with_undici() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipping node_fetch_through_the_proxy: {why}");
            if std::env::var_os("CI").is_some() {
                panic!("CI must install undici for the node client: {why}");
            }
            return;
        }
    };
    let s = setup();
    let script = format!(
        "const {{ EnvHttpProxyAgent, setGlobalDispatcher }} = require('undici');\n\
         setGlobalDispatcher(new EnvHttpProxyAgent());\n\
         fetch('{}').then(async r => {{ const j = await r.json(); console.log(r.status, j.headers['x-api-key']); }})\n\
           .catch(e => {{ console.error(e); process.exit(1); }});",
        url(&s.a, "/api/node")
    );
    let out = node(&s.env, &dir, &script);
    assert_eq!(out.stdout.trim(), format!("200 {}", "*".repeat(TOKEN.len())), "{}", out.stderr);
}

#[test]
fn git_clone_over_https() {
    let s = setup();
    let work = s.h.dir.path();
    let files = work.join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    let genv: Vec<(String, String)> = vec![
        ("GIT_AUTHOR_NAME".into(), "t".into()),
        ("GIT_AUTHOR_EMAIL".into(), "t@example.com".into()),
        ("GIT_COMMITTER_NAME".into(), "t".into()),
        ("GIT_COMMITTER_EMAIL".into(), "t@example.com".into()),
    ];
    let src = work.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for args in [&["init", "-q", "-b", "main"][..], &["commit", "-q", "--allow-empty", "-m", "hello"]] {
        let o = git(&genv, &src, args);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    let o = git(&genv, work, &["clone", "-q", "--bare", "src", "files/repo.git"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = git(&genv, &files.join("repo.git"), &["update-server-info"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut env = s.env.clone();
    env.extend(genv);
    let o = git(&env, work, &["clone", "-q", &url(&s.a, "/files/repo.git"), "cloned"]);
    assert_eq!(o.code, 0, "git clone through the proxy: {}", o.stderr);
    let log = git(&env, &work.join("cloned"), &["log", "--format=%s"]);
    assert_eq!(log.stdout.trim(), "hello");
}

#[test]
fn default_deny_by_host_path_method_and_address() {
    let s = setup();
    // Host no route names.
    let (code, _) = curl(&s.env, &["https://example.invalid/"]);
    assert_eq!(code, 403);
    assert_eq!(last_rule(&s.h), "host");
    // Path outside the route's prefixes.
    let (code, body) = curl(&s.env, &[&url(&s.a, "/admin")]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("rule: path") && body.contains("egress.routes"), "{body}");
    // Method the route does not list.
    let (code, _) = curl(&s.env, &["-X", "DELETE", &url(&s.a, "/api/x")]);
    assert_eq!((code, last_rule(&s.h)), (403, "method".into()));
    // An IP literal no route names.
    let (code, _) = curl(&s.env, &[&format!("https://127.0.0.3:{}/api/x", s.a.addr.port())]);
    assert_eq!((code, last_rule(&s.h)), (403, "host".into()));
    // A name that resolves to loopback, though a route names it.
    let (code, body) = curl(&s.env, &[&format!("https://localhost:{}/api/x", s.a.addr.port())]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(last_rule(&s.h), "internal-address");
    // Plain http to an allowed host:port is a different port (80): denied.
    let (code, _) = curl(&s.env, &[&format!("http://127.0.0.1:{}/api/x", s.a.addr.port() + 1)]);
    assert_eq!(code, 403);
    assert!(s.a.seen().iter().all(|r| r.path != "/admin"));
}

#[test]
fn host_header_and_sni_must_match_the_connect_target() {
    let s = setup();
    let (code, body) = curl(&s.env, &["-H", "Host: other.example", &url(&s.a, "/api/x")]);
    assert_eq!(code, 400, "{body}");
    assert_eq!(last_rule(&s.h), "host-header");
    // SNI naming another host than the CONNECT target: the handshake is refused.
    let script = format!(
        "import socket,ssl\n\
         s=socket.create_connection(('127.0.0.1',{pp}))\n\
         s.sendall(b'CONNECT 127.0.0.1:{pa} HTTP/1.1\\r\\nHost: 127.0.0.1:{pa}\\r\\n\\r\\n')\n\
         print(s.recv(100).split(b'\\r\\n')[0].decode())\n\
         ctx=ssl.create_default_context(cafile='{ca}')\n\
         ctx.check_hostname=False\n\
         try:\n    ctx.wrap_socket(s, server_hostname='evil.example'); print('handshake ok')\n\
         except Exception as e: print('refused')",
        pp = s.h.proxy_addr.port(),
        pa = s.a.addr.port(),
        ca = s.h.ca().display()
    );
    let out = python(&s.env, &script);
    assert_eq!(out.stdout.trim(), "HTTP/1.1 200 OK\nrefused", "{}", out.stderr);
    assert_eq!(last_rule(&s.h), "sni-mismatch");
}

#[test]
fn bytes_after_connect_that_are_not_tls_close_the_tunnel() {
    let s = setup();
    let script = format!(
        "import socket\n\
         s=socket.create_connection(('127.0.0.1',{pp}))\n\
         s.sendall(b'CONNECT 127.0.0.1:{pa} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         print(s.recv(100).split(b'\\r\\n')[0].decode())\n\
         s.sendall(b'GET /api/raw HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n')\n\
         s.settimeout(10)\n\
         data=b''\n\
         while True:\n    d=s.recv(4096)\n    if not d: break\n    data+=d\n\
         print('answered' if b'HTTP/' in data else 'closed')",
        pp = s.h.proxy_addr.port(),
        pa = s.a.addr.port()
    );
    let out = python(&s.env, &script);
    assert_eq!(out.stdout.trim(), "HTTP/1.1 200 OK\nclosed", "{}", out.stderr);
    assert!(s.a.seen().is_empty(), "nothing reached the upstream");
    assert_eq!(last_rule(&s.h), "not-tls");
}

#[test]
fn dlp_blocks_secrets_in_url_headers_and_bodies() {
    let s = setup();
    let u = url(&s.a, "/api/upload");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("url", vec![format!("{}?t={GHP}", url(&s.a, "/api/q"))]),
        ("header", vec!["-H".into(), format!("X-Note: {GHP}"), u.clone()]),
        ("body", vec!["--data-binary".into(), format!("token={GHP}"), u.clone()]),
        ("injected token in body", vec!["--data-binary".into(), format!("leak={TOKEN}"), u.clone()]),
        (
            "base64 body",
            vec![
                "--data-binary".into(),
                base64::engine::general_purpose::STANDARD.encode(format!("{{\"k\":\"{TOKEN}\"}}")),
                u.clone(),
            ],
        ),
    ];
    for (what, args) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl(&s.env, &args);
        assert_eq!(code, 403, "{what}: {body}");
        assert!(body.contains("rule: dlp"), "{what}: {body}");
    }
    // gzip: decoded before scanning.
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(format!("{{\"secret\": \"{GHP}\"}}").as_bytes()).expect("gzip");
        e.finish().expect("gzip")
    };
    let f = s.h.dir.path().join("body.gz");
    std::fs::write(&f, gz).expect("write");
    let at = format!("@{}", f.display());
    let (code, body) = curl(&s.env, &["-H", "Content-Encoding: gzip", "--data-binary", &at, &u]);
    assert_eq!(code, 403, "gzip: {body}");
    // A clean gzip body passes, bytes intact.
    let clean = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"{\"hello\": \"world\"}").expect("gzip");
        e.finish().expect("gzip")
    };
    std::fs::write(&f, &clean).expect("write");
    let (code, body) = curl(&s.env, &["-H", "Content-Encoding: gzip", "--data-binary", &at, &url(&s.a, "/api/clean")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(s.a.seen().last().map(|r| r.body.clone()), Some(clean));
    // An undecodable gzip body is refused, not passed unscanned.
    std::fs::write(&f, b"this is not gzip").expect("write");
    let (code, body) = curl(&s.env, &["-H", "Content-Encoding: gzip", "--data-binary", &at, &u]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(last_rule(&s.h), "undecodable-body");
    never_saw(&s.a, GHP);
    never_in_path_or_body(&s.a, TOKEN);
    let audit = std::fs::read_to_string(s.h.audit_path()).expect("audit");
    assert!(!audit.contains(GHP) && !audit.contains(TOKEN), "audit holds no secret");
}

#[test]
fn dlp_finds_a_secret_split_across_chunks() {
    let s = setup();
    let (first, second) = GHP.split_at(17);
    // Chunked upload; the secret straddles two chunks sent 300 ms apart.
    let script = format!(
        "import http.client,ssl,time,sys\n\
         ctx=ssl.create_default_context()\n\
         c=http.client.HTTPSConnection('127.0.0.1',{pp},context=ctx,timeout=20)\n\
         c.set_tunnel('127.0.0.1',{pa})\n\
         def body():\n    yield b'x'*70000+b' {first}'\n    time.sleep(0.3)\n    yield b'{second}'+b'\\n'+b'y'*1000\n\
         c.request('POST','/api/chunks',body=body(),encode_chunked=True)\n\
         print(c.getresponse().status)",
        pp = s.h.proxy_addr.port(),
        pa = s.a.addr.port()
    );
    let out = python(&s.env, &script);
    assert_eq!(out.stdout.trim(), "403", "{}", out.stderr);
    never_saw(&s.a, first);
}

#[test]
fn websocket_upgrades_are_refused_unless_the_route_allows_them() {
    let s = setup();
    let (code, body) = curl(
        &s.env,
        &[
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            &url(&s.a, "/api/ws"),
        ],
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(last_rule(&s.h), "upgrade");
}

#[test]
fn routes_change_at_runtime_without_dropping_connections() {
    let s = setup();
    // A keep-alive client: one tunnel, three requests, told when to go on.
    let script = format!(
        "import http.client,ssl,sys\n\
         c=http.client.HTTPSConnection('127.0.0.1',{pp},context=ssl.create_default_context(),timeout=20)\n\
         c.set_tunnel('127.0.0.1',{pa})\n\
         for i in range(3):\n    c.request('GET','/api/live')\n    r=c.getresponse(); r.read()\n    print(r.status, flush=True)\n    sys.stdin.readline()",
        pp = s.h.proxy_addr.port(),
        pa = s.a.addr.port()
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .envs(s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().expect("line").expect("read");
    assert_eq!(next(), "200");
    // Narrow the route (no token any more) and add the other upstream.
    s.h.set_routes(&format!(
        "routes:\n  - host: \"127.0.0.1:{}\"\n    methods: [GET]\n  - host: \"127.0.0.2:{}\"\n",
        s.a.addr.port(),
        s.b.addr.port()
    ));
    writeln!(stdin, "go").expect("write");
    assert_eq!(next(), "200", "same tunnel, still allowed");
    let seen = s.a.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].peer, seen[1].peer, "one upstream connection, kept alive across the update");
    assert!(!seen[1].headers.contains_key("x-api-key"), "the new routes inject nothing");
    // Remove the route: the open tunnel's next request is refused.
    s.h.set_routes(&format!("routes:\n  - host: \"127.0.0.2:{}\"\n", s.b.addr.port()));
    writeln!(stdin, "go").expect("write");
    assert_eq!(next(), "403");
    writeln!(stdin, "go").expect("write");
    assert!(child.wait().expect("wait").success());
    let (code, _) = curl(&s.env, &[&url(&s.b, "/now-allowed")]);
    assert_eq!(code, 200);
}

#[test]
fn a_restarted_proxy_keeps_its_ca() {
    let mut s = setup();
    let key = s.h.state_dir().join("ca.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(s.h.ca()).expect("ca");
    let routes = routes(&s.a, Some(&s.b));
    s.h.start_proxy(&routes);
    s.env = s.h.client_env();
    assert_eq!(std::fs::read(s.h.ca()).expect("ca"), before, "same CA after restart");
    let (code, body) = curl(&s.env, &[&url(&s.a, "/api/again")]);
    assert_eq!(code, 200, "{body}");
    // A CA key others can read is refused rather than used.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.h.start_proxy(&routes)));
    assert!(r.is_err(), "a world-readable CA key must be refused");
}

#[test]
fn a_posted_body_reaches_the_upstream_intact() {
    let s = setup();
    let script = format!(
        "import sys,urllib.request\nd=sys.stdin.buffer.read()\nr=urllib.request.urlopen(urllib.request.Request('{}',data=d,method='POST'),timeout=20)\nprint(r.status)",
        url(&s.a, "/api/stdin")
    );
    let out = python_stdin(&s.env, &script, b"hello from stdin");
    assert_eq!(out.stdout.trim(), "200", "{}", out.stderr);
    assert_eq!(s.a.seen().last().map(|r| r.body.clone()), Some(b"hello from stdin".to_vec()));
}

#[test]
fn websocket_messages_are_scanned_when_the_route_allows_websocket() {
    let mut h = Harness::new();
    let a = h.upstream("127.0.0.1", false);
    h.start_proxy(&format!("routes:\n  - host: \"127.0.0.1:{}\"\n    websocket: true\n", a.addr.port()));
    let env = h.client_env();
    // A raw client: CONNECT, TLS trusting the bottle CA, the handshake (offering
    // compression), one clean message, then one holding a secret.
    let script = format!(
        "import socket,ssl,os,base64\n\
         s=socket.create_connection(('127.0.0.1',{pp}))\n\
         s.sendall(b'CONNECT 127.0.0.1:{pa} HTTP/1.1\\r\\nHost: 127.0.0.1:{pa}\\r\\n\\r\\n'); s.recv(200)\n\
         t=ssl.create_default_context().wrap_socket(s, server_hostname='127.0.0.1')\n\
         key=base64.b64encode(os.urandom(16))\n\
         t.sendall(b'GET /ws HTTP/1.1\\r\\nHost: 127.0.0.1:{pa}\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\nSec-WebSocket-Extensions: permessage-deflate\\r\\nSec-WebSocket-Key: '+key+b'\\r\\n\\r\\n')\n\
         head=b''\n\
         while not head.endswith(b'\\r\\n\\r\\n'): head+=t.recv(1)\n\
         print(head.split(b'\\r\\n')[0].decode())\n\
         print('offered' if b'x-offered-extensions' in head.lower() else 'no extensions')\n\
         def send(p):\n    m=os.urandom(4); t.sendall(bytes([0x81,0x80|len(p)])+m+bytes(b^m[i%4] for i,b in enumerate(p)))\n\
         send(b'hello'); f=t.recv(100); print(f[2:].decode())\n\
         send(b'{GHP}'); f=t.recv(100); print('close', int.from_bytes(f[2:4],'big') if f and f[0]==0x88 else f)",
        pp = h.proxy_addr.port(),
        pa = a.addr.port()
    );
    let out = python(&env, &script);
    assert_eq!(
        out.stdout.trim(),
        "HTTP/1.1 101 Switching Protocols\nno extensions\nhello\nclose 1008",
        "{}",
        out.stderr
    );
    let got: Vec<String> =
        a.seen().iter().filter(|s| s.path == "ws:").map(|s| String::from_utf8_lossy(&s.body).into_owned()).collect();
    assert_eq!(got, vec!["hello".to_string()], "the upstream got the clean message and nothing else");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let last = h.audit().last().cloned().expect("record");
    assert_eq!((last["decision"].as_str(), last["rule"].as_str()), (Some("deny"), Some("dlp")), "{last}");
}

#[test]
fn passthrough_routes_tunnel_tls_without_inspection() {
    let mut h = Harness::new();
    let a = h.upstream("127.0.0.1", false);
    h.start_proxy(&format!("routes:\n  - host: \"127.0.0.1:{}\"\n    tls: passthrough\n", a.addr.port()));
    // The client sees the upstream's own certificate, so it trusts the upstream CA.
    let mut env = h.client_env();
    let ca = h.pki.ca_file.display().to_string();
    for (k, v) in env.iter_mut() {
        if k == "CURL_CA_BUNDLE" || k == "SSL_CERT_FILE" {
            *v = ca.clone();
        }
    }
    let (code, body) = curl(&env, &["-H", "x-note: nothing is inspected here", &url(&a, "/pinned")]);
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let rec = h.audit().into_iter().find(|r| r["tls"] == "passthrough").expect("passthrough record");
    assert_eq!(rec["decision"], "allow", "{rec}");
    // With the bottle CA only, the client refuses: the proxy did not mint a certificate.
    let (code, _) = curl(&h.client_env(), &[&url(&a, "/pinned")]);
    assert_eq!(code, 0, "no MITM certificate on a passthrough route");
}

#[test]
fn plain_http_is_checked_the_same_and_never_carries_a_token() {
    let mut h = Harness::new();
    let plain = h.rt.block_on(Upstream::start_plain("127.0.0.1"));
    let other = h.rt.block_on(Upstream::start_plain("127.0.0.2"));
    h.start_proxy(&format!(
        "routes:\n  - host: \"127.0.0.1:{}\"\n    methods: [GET]\n  - host: \"127.0.0.2:{}\"\n    inject: {{ header: authorization, env: TEST_TOKEN }}\n",
        plain.addr.port(),
        other.addr.port()
    ));
    let env = h.client_env();
    let (code, body) = curl(&env, &[&format!("http://{}/hello", plain.addr)]);
    assert_eq!(code, 200, "{body}");
    let (code, _) = curl(&env, &["-X", "POST", &format!("http://{}/hello", plain.addr)]);
    assert_eq!(code, 403);
    let (code, _) = curl(&env, &[&format!("http://{}/x?t={GHP}", plain.addr)]);
    assert_eq!((code, last_rule(&h)), (403, "dlp".into()));
    let (code, body) = curl(&env, &[&format!("http://{}/token", other.addr)]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(last_rule(&h), "inject-plaintext");
    assert!(other.seen().is_empty(), "the token-bearing route sent nothing in the clear");
    assert_eq!(h.audit().iter().filter(|r| r["tls"] == "none").count(), 4);
}

#[test]
fn framing_is_redone_upstream() {
    let s = setup();
    let (code, _) = curl(&s.env, &[&url(&s.b, "/plain-get")]);
    assert_eq!(code, 200);
    let get = s.b.seen().last().cloned().expect("seen");
    assert!(
        !get.headers.contains_key("transfer-encoding") && get.body.is_empty(),
        "a GET without a body stays without one: {:?}",
        get.headers
    );
    // Both Transfer-Encoding and Content-Length: the stale length never reaches the upstream.
    let script = format!(
        "import socket,ssl\n\
         s=socket.create_connection(('127.0.0.1',{pp}))\n\
         s.sendall(b'CONNECT 127.0.0.2:{pb} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); s.recv(200)\n\
         t=ssl.create_default_context().wrap_socket(s, server_hostname='127.0.0.2')\n\
         t.sendall(b'POST /smuggle HTTP/1.1\\r\\nHost: 127.0.0.2:{pb}\\r\\nContent-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n0\\r\\n\\r\\n')\n\
         print(t.recv(100).split(b'\\r\\n')[0].decode())",
        pp = s.h.proxy_addr.port(),
        pb = s.b.addr.port()
    );
    let out = python(&s.env, &script);
    let status = out.stdout.trim().to_owned();
    assert!(status == "HTTP/1.1 200 OK" || status.starts_with("HTTP/1.1 400"), "{status} {}", out.stderr);
    for r in s.b.seen().iter().filter(|r| r.path == "/smuggle") {
        assert_ne!(
            r.headers.get("content-length").map(String::as_str),
            Some("4"),
            "stale length forwarded: {:?}",
            r.headers
        );
        assert_eq!(r.body, b"hello");
    }
}
