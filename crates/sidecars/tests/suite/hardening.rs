//! Issue 10: the injected token never comes back, one Host, exact paths,
//! bounded resources, denials the agent can read, close-delimited bodies.

use std::process::{Command, Stdio};

use super::clients::{curl, git, node, node_with_undici, python};
use super::harness::{Harness, TOKEN, Upstream};

fn url(u: &Upstream, path: &str) -> String {
    format!("https://{}{path}", u.addr)
}

fn last(h: &Harness) -> serde_json::Value {
    std::thread::sleep(std::time::Duration::from_millis(150));
    h.audit().last().cloned().unwrap_or_default()
}

/// An upstream on 127.0.0.1 (h2 or h1) behind a route that injects TOKEN.
fn injecting(h2: bool, extra: &str) -> (Harness, Upstream) {
    let mut h = Harness::new();
    let a = h.upstream("127.0.0.1", h2);
    h.start_proxy(&format!(
        "routes:\n  - host: \"127.0.0.1:{}\"\n    inject: {{ header: x-api-key, env: TEST_TOKEN }}\n{extra}dlp: {{ mode: block }}\n",
        a.addr.port()
    ));
    (h, a)
}

#[test]
fn an_echoing_upstream_never_shows_the_agent_the_token() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{TOKEN}"));
    for h2 in [true, false] {
        let (h, a) = injecting(h2, "");
        let env = h.client_env();
        let (code, out) = curl(&env, &["-sS", "-D", "-", &url(&a, "/api/reflect")]);
        assert_eq!(code, 200, "{out}");
        assert_eq!(a.seen().last().and_then(|r| r.headers.get("x-api-key").cloned()).as_deref(), Some(TOKEN));
        assert!(!out.contains(TOKEN), "h2={h2}: the raw token came back: {out}");
        assert!(!out.contains(&b64[8..]), "h2={h2}: the base64 token came back: {out}");
        let lower = out.to_ascii_lowercase();
        let (half_a, half_b) = TOKEN.split_at(TOKEN.len() / 2);
        assert!(
            !(lower.contains(&format!("x-part-a: {half_a}")) && lower.contains(&format!("x-part-b: {half_b}"))),
            "h2={h2}: a token split across two headers came back whole: {out}"
        );
        assert!(out.contains(&"*".repeat(TOKEN.len())), "h2={h2}: masked in place: {out}");
        let rec = last(&h);
        assert_eq!(rec["injected"], "TEST_TOKEN", "{rec}");
        assert!(rec["redacted"].as_u64().unwrap_or(0) >= 4, "{rec}");
        // Compressed: the token cannot be masked inside gzip, so the
        // response is cut; the agent gets nothing of it.
        let (_, out) = curl(&env, &["--compressed", &url(&a, "/api/reflectgz")]);
        assert!(!out.contains(TOKEN), "h2={h2}: gzip reflection leaked: {out}");
        let rec = last(&h);
        assert_eq!((rec["decision"].as_str(), rec["rule"].as_str()), (Some("deny"), Some("response-secret")), "{rec}");
        let audit = std::fs::read_to_string(h.audit_path()).expect("audit");
        assert!(!audit.contains(TOKEN), "the audit log holds no token");
    }
}

#[test]
fn a_websocket_server_that_echoes_the_token_shows_only_a_mask() {
    let (h, a) = injecting(false, "    websocket: true\n");
    let env = h.client_env();
    let script = format!(
        "import socket,ssl,os,base64\n\
         s=socket.create_connection(('127.0.0.1',{pp}))\n\
         s.sendall(b'CONNECT 127.0.0.1:{pa} HTTP/1.1\\r\\nHost: 127.0.0.1:{pa}\\r\\n\\r\\n'); s.recv(200)\n\
         t=ssl.create_default_context().wrap_socket(s, server_hostname='127.0.0.1')\n\
         key=base64.b64encode(os.urandom(16))\n\
         t.sendall(b'GET /ws HTTP/1.1\\r\\nHost: 127.0.0.1:{pa}\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: '+key+b'\\r\\n\\r\\n')\n\
         head=b''\n\
         while not head.endswith(b'\\r\\n\\r\\n'): head+=t.recv(1)\n\
         print(head.split(b'\\r\\n')[0].decode())\n\
         f=b''\n\
         while len(f)<2 or len(f)<2+f[1]: f+=t.recv(100)\n\
         print(f[2:2+f[1]].decode())",
        pp = h.proxy_addr.port(),
        pa = a.addr.port()
    );
    let out = python(&env, &script);
    assert_eq!(
        out.stdout.trim(),
        format!("HTTP/1.1 101 Switching Protocols\n{}", "*".repeat(TOKEN.len())),
        "{}",
        out.stderr
    );
}

/// An upstream's trailers that echo the token never show it, and the body
/// before them arrives whole, the redactor's held-back tail included (it
/// used to be sent after the trailers), over h1 and h2 upstreams.
#[test]
fn trailers_are_masked_and_come_after_the_whole_body() {
    for h2 in [false, true] {
        let (h, a) = injecting(h2, "");
        let env = h.client_env();
        let script = format!(
            "import socket,ssl\n\
             s=socket.create_connection(('127.0.0.1',{pp}))\n\
             s.sendall(b'CONNECT 127.0.0.1:{pa} HTTP/1.1\\r\\nHost: 127.0.0.1:{pa}\\r\\n\\r\\n'); s.recv(200)\n\
             t=ssl.create_default_context().wrap_socket(s, server_hostname='127.0.0.1')\n\
             t.sendall(b'GET /api/trailers HTTP/1.1\\r\\nHost: 127.0.0.1:{pa}\\r\\nTE: trailers\\r\\nConnection: close\\r\\n\\r\\n')\n\
             raw=b''\n\
             while True:\n    d=t.recv(4096)\n    if not d: break\n    raw+=d\n\
             head,rest=raw.split(b'\\r\\n\\r\\n',1)\n\
             body=b''\n\
             while True:\n    size,rest=rest.split(b'\\r\\n',1)\n    n=int(size,16)\n    if n==0: break\n    body+=rest[:n]; rest=rest[n+2:]\n\
             print('BODY:'+body.decode()); print('TRAILERS:'+rest.decode().replace('\\r\\n','|'))",
            pp = h.proxy_addr.port(),
            pa = a.addr.port()
        );
        let out = python(&env, &script);
        let got = out.stdout.trim();
        assert!(!got.contains(TOKEN), "h2={h2}: the token came back: {got}");
        // Every byte of the body arrived before the last chunk.
        assert!(
            got.starts_with(&format!("BODY:body-start {}\nTRAILERS:", &TOKEN[..6])),
            "h2={h2}: {got}\n{}",
            out.stderr
        );
        // Trailers do not reach an HTTP/1.1 agent (the proxy keeps the
        // `Trailer` header back); whatever arrives after the body is masked.
        let trailers = got.split_once("TRAILERS:").map_or("", |(_, t)| t);
        assert!(!trailers.contains(&TOKEN[..8]), "h2={h2}: {got}");
    }
}

/// Raw HTTP/1.1 through a CONNECT tunnel: the status line the proxy answers.
fn raw_status(h: &Harness, a: &Upstream, request: &str) -> String {
    let script = format!(
        "import socket,ssl\n\
         s=socket.create_connection(('127.0.0.1',{pp}))\n\
         s.sendall(b'CONNECT 127.0.0.1:{pa} HTTP/1.1\\r\\nHost: 127.0.0.1:{pa}\\r\\n\\r\\n'); s.recv(200)\n\
         t=ssl.create_default_context().wrap_socket(s, server_hostname='127.0.0.1')\n\
         t.sendall({request:?}.encode())\n\
         print(t.recv(200).split(b'\\r\\n')[0].decode())",
        pp = h.proxy_addr.port(),
        pa = a.addr.port()
    );
    let out = python(&h.client_env(), &script);
    format!("{}{}", out.stdout.trim(), out.stderr)
}

#[test]
fn exactly_one_host_and_connection_cannot_remove_it() {
    let (h, a) = injecting(false, "");
    let host = format!("127.0.0.1:{}", a.addr.port());
    let cases = [
        format!("GET /api/x HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n\r\n"),
        format!("GET /api/x HTTP/1.1\r\nHost: evil.example\r\nHost: {host}\r\n\r\n"),
        format!("GET /api/x HTTP/1.1\r\nHost: {host}\r\nConnection: host\r\n\r\n"),
        "GET /api/x HTTP/1.1\r\n\r\n".to_owned(),
        format!("GET https://evil.example/api/x HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    ];
    for req in &cases {
        let status = raw_status(&h, &a, req);
        assert!(status.starts_with("HTTP/1.1 400"), "{req:?}: {status}");
        assert_eq!(last(&h)["rule"], "host-header", "{req:?}");
    }
    assert!(a.seen().is_empty(), "nothing reached the upstream");
    // Connection naming the injected header cannot strip the token either:
    // it is added after the checks.
    let status = raw_status(&h, &a, &format!("GET /api/ok HTTP/1.1\r\nHost: {host}\r\nConnection: x-api-key\r\n\r\n"));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(a.seen().last().and_then(|r| r.headers.get("x-api-key").cloned()).as_deref(), Some(TOKEN));
}

#[test]
fn paths_match_whole_segments_of_the_normalised_path() {
    let mut h = Harness::new();
    let a = h.upstream("127.0.0.1", false);
    h.start_proxy(&format!("routes:\n  - host: \"127.0.0.1:{}\"\n    paths: [\"/repos/org/app\"]\n", a.addr.port()));
    let env = h.client_env();
    for (path, want) in [
        ("/repos/org/app", 200),
        ("/repos/org/app/pulls", 200),
        ("/repos/org/app-secrets/x", 403),
        ("/repos/org/app/..;/app-secrets/x", 403),
        ("/repos/org/app/%2e%2e/app-secrets", 403),
        ("/repos/org/app/%252e%252e/app-secrets", 403),
        ("/repos/org/app%2f..%2fapp-secrets", 403),
        ("/repos/org/app;x/y", 403),
        ("/repos/org/%61pp/./x/../issues", 200),
    ] {
        let (code, body) = curl(&env, &["--path-as-is", &url(&a, path)]);
        assert_eq!(code, want, "{path}: {body}");
    }
    let paths: Vec<String> = a.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        vec!["/repos/org/app", "/repos/org/app/pulls", "/repos/org/app/issues"],
        "only allowed paths arrived, in their normalised form"
    );
}

#[test]
#[expect(clippy::print_stderr, reason = "a skipped client says why")]
fn denials_say_why_in_every_client() {
    let (h, a) = injecting(false, "    methods: [GET]\n");
    let env = h.client_env();
    // curl: a host no route names. The CONNECT is accepted and the request
    // inside gets the 403 and its text.
    let (code, out) = curl(&env, &["-D", "-", "https://denied.example/some/thing"]);
    assert_eq!(code, 403, "{out}");
    assert!(
        out.contains("rule: host") && out.contains("egress.routes") && out.contains("- host: denied.example"),
        "{out}"
    );
    assert!(out.to_ascii_lowercase().contains("x-bot-bottle-denied: rule=host"), "{out}");
    // Method denial in an allowed tunnel.
    let (code, out) = curl(&env, &["-X", "DELETE", &url(&a, "/api/x")]);
    assert_eq!(code, 403, "{out}");
    assert!(out.contains("rule: method") && out.contains("methods: [DELETE]"), "{out}");
    // python: urllib shows the reason phrase.
    let out = python(
        &env,
        "import urllib.request\ntry:\n    urllib.request.urlopen('https://denied.example/x', timeout=20)\nexcept Exception as e:\n    print(e)",
    );
    assert!(out.stdout.contains("HTTP Error 403") && out.stdout.contains("rule host"), "{}{}", out.stdout, out.stderr);
    // git shows a text/plain body as `remote:` lines.
    let work = tempfile::tempdir().expect("tempdir");
    let o = git(&env, work.path(), &["clone", "https://denied.example/org/repo.git"]);
    assert!(o.stderr.contains("rule: host") || o.stderr.contains("rule host"), "git: {}", o.stderr);
    // pip prints the reason phrase of a 403 for a package URL (for an
    // index page it says so with -v; see SECURITY.md).
    let o = Command::new("python3")
        .args(["-m", "pip", "download", "--no-cache-dir", "--no-deps", "-d"])
        .arg(work.path())
        .args(["--retries", "0", "--timeout", "10", "https://denied.example/packages/demo-1.0.tar.gz"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", work.path())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PIP_CERT", h.ca())
        .stdin(Stdio::null())
        .output()
        .expect("pip");
    let pip = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(pip.contains("rule host"), "pip: {pip}");
    // node (undici's fetch): status and reason.
    match node_with_undici() {
        Ok(dir) => {
            let out = node(
                &env,
                &dir,
                "const { EnvHttpProxyAgent, setGlobalDispatcher } = require('undici');\n\
                 setGlobalDispatcher(new EnvHttpProxyAgent());\n\
                 fetch('https://denied.example/x').then(async r => console.log(r.status, r.headers.get('x-bot-bottle-denied'), await r.text()))\n\
                   .catch(e => { console.error(e); process.exit(1); });",
            );
            assert!(
                out.stdout.starts_with("403 rule=host") && out.stdout.contains("egress.routes"),
                "{}{}",
                out.stdout,
                out.stderr
            );
        }
        Err(why) => {
            eprintln!("skipping the node client: {why}");
            assert!(std::env::var_os("CI").is_none(), "CI must install undici: {why}");
        }
    }
}

/// A child process killed when dropped, so a failing test leaves no server
/// behind (holding the test runner's output pipe open).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // The server may have exited already; nothing else to do.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TLS server that answers without Content-Length or chunking and ends
/// the body by closing the connection (no TLS close_notify either).
fn close_delimited_server(h: &Harness) -> (Killed, u16) {
    let dir = h.dir.path();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout cdca.key -out cdca.pem -days 1 -subj /CN=cd-ca 2>/dev/null && \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout cd.key -out cd.csr -subj /CN=x 2>/dev/null && \
             printf 'subjectAltName=IP:127.0.0.1\\n' > cd.cnf && \
             openssl x509 -req -in cd.csr -CA cdca.pem -CAkey cdca.key -CAcreateserial -out cd.pem -days 1 -extfile cd.cnf 2>/dev/null",
        )
        .current_dir(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl");
    let script = "import socket,ssl,sys\n\
        ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain('cd.pem','cd.key')\n\
        l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(16); print(l.getsockname()[1], flush=True)\n\
        body=b''.join(b'line %05d of a response that ends when the server closes\\n' % i for i in range(4000))\n\
        while True:\n    c,_=l.accept()\n    raw=c.dup()\n    t=ctx.wrap_socket(c, server_side=True)\n    d=b''\n    \
        while b'\\r\\n\\r\\n' not in d:\n        b=t.recv(4096)\n        if not b: break\n        d+=b\n    \
        t.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nConnection: close\\r\\n\\r\\n'+body)\n    \
        raw.shutdown(socket.SHUT_RDWR); raw.close()\n";
    let mut child =
        Command::new("python3").args(["-c", script]).current_dir(dir).stdout(Stdio::piped()).spawn().expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line)
        .expect("port");
    let port = line.trim().parse().expect("port");
    (Killed(child), port)
}

#[test]
fn a_close_delimited_response_arrives_whole() {
    let mut h = Harness::new();
    let (_server, port) = close_delimited_server(&h);
    let ca = h.dir.path().join("cdca.pem");
    let mut pki_ca = std::fs::read(&h.pki.ca_file).expect("ca");
    pki_ca.extend(std::fs::read(&ca).expect("cd ca"));
    std::fs::write(&h.pki.ca_file, pki_ca).expect("write");
    h.start_proxy(&format!("routes:\n  - host: \"127.0.0.1:{port}\"\n"));
    let env = h.client_env();
    let want = 4000 * "line 00000 of a response that ends when the server closes\n".len();
    let (code, out) = curl(&env, &[&format!("https://127.0.0.1:{port}/")]);
    assert_eq!(code, 200, "{}", &out[out.len().saturating_sub(300)..]);
    assert!(out.contains("line 03999 of") && !out.contains("transfer closed"), "{}", &out[out.len() - 300..]);
    let py = python(
        &env,
        &format!(
            "import urllib.request\nprint(len(urllib.request.urlopen('https://127.0.0.1:{port}/', timeout=20).read()))"
        ),
    );
    assert_eq!(py.stdout.trim(), want.to_string(), "{}", py.stderr);
    // HTTP/1.0 clients get it close-delimited too.
    let (code, out) = curl(&env, &["--http1.0", &format!("https://127.0.0.1:{port}/")]);
    assert_eq!(code, 200, "{}", &out[out.len().saturating_sub(300)..]);
    assert!(out.contains("line 03999 of"), "{}", &out[out.len().saturating_sub(300)..]);
}

#[test]
fn over_the_request_limit_the_agent_gets_a_503_that_says_so() {
    let mut h = Harness::new();
    let a = h.upstream("127.0.0.1", false);
    h.limits.in_flight = 1;
    h.limits.wait = std::time::Duration::from_millis(200);
    h.start_proxy(&format!("routes:\n  - host: \"127.0.0.1:{}\"\n", a.addr.port()));
    let env = h.client_env();
    // One slow upload holds the only slot; a second request waits, then 503.
    let script = format!(
        "import http.client,ssl,time,threading,urllib.request\n\
         def slow():\n    c=http.client.HTTPSConnection('127.0.0.1',{pp},context=ssl.create_default_context(),timeout=20)\n    c.set_tunnel('127.0.0.1',{pa})\n    def body():\n        yield b'x'*10\n        time.sleep(2)\n        yield b'y'\n    c.request('POST','/slow',body=body(),encode_chunked=True); c.getresponse().read()\n\
         t=threading.Thread(target=slow); t.start(); time.sleep(0.7)\n\
         try:\n    urllib.request.urlopen('https://127.0.0.1:{pa}/second', timeout=20); print('ok')\n\
         except Exception as e: print(e)\n\
         t.join()",
        pp = h.proxy_addr.port(),
        pa = a.addr.port()
    );
    let out = python(&env, &script);
    assert!(out.stdout.contains("HTTP Error 503") && out.stdout.contains("rule limit"), "{}{}", out.stdout, out.stderr);
    let audit = h.audit();
    assert!(audit.iter().any(|r| r["rule"] == "limit" && r["status"] == 503), "{audit:?}");
}
