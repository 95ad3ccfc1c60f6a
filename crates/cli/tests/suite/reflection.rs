//! Issue 10's reflection acceptance over HTTP/2 and WebSocket, end to end:
//! real clients in a real native bottle, real TLS upstreams on the host
//! (node's own `http2` and `https` modules) that hand the injected token
//! straight back. The agent must never see it, raw or base64.
//!
//! The proxy speaks HTTP/1.1 to the agent (its TLS offers `http/1.1` and
//! `http/1.0` only) and HTTP/2 to upstreams that offer it: a client that
//! asks for h2 (`curl --http2`) gets HTTP/1.1, and one that insists on h2
//! alone (node's `http2.connect`) fails its TLS handshake before any
//! request is made.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::egress::{TOKEN, pki, run};
use super::native::{available, panic_or_skip};

/// Two upstreams on 127.0.0.1: an HTTP/2-only server (no HTTP/1.1
/// fallback) and an HTTPS server whose WebSocket handler echoes. Both log
/// `KIND VERSION PATH TOKEN_ARRIVED` to `requests.log`; both hand the
/// `x-api-key` they got back in a header and in the body (raw, base64, and
/// inside the echoed request headers).
const SERVERS: &str = r#"
const fs = require('fs'), http2 = require('http2'), https = require('https'), crypto = require('crypto');
const key = fs.readFileSync('leaf.key'), cert = fs.readFileSync('leaf.pem');
const log = (l) => fs.appendFileSync('requests.log', l + '\n');
const b64 = (t) => Buffer.from('u:' + t).toString('base64');
const h2 = http2.createSecureServer({ key, cert, allowHTTP1: false }, (req, res) => {
  const tok = req.headers['x-api-key'] || '';
  log('h2 ' + req.httpVersion + ' ' + req.url + ' ' + (tok === process.env.WANT));
  res.writeHead(200, { 'x-echo': tok, 'content-type': 'application/json' });
  res.end(JSON.stringify({ raw: tok, basic: b64(tok), headers: req.headers }) + '\n');
});
const frame = (s) => {
  const p = Buffer.from(s);
  const h = p.length < 126 ? Buffer.from([0x81, p.length]) : Buffer.from([0x81, 126, p.length >> 8, p.length & 255]);
  return Buffer.concat([h, p]);
};
const ws = https.createServer({ key, cert }, (req, res) => { res.writeHead(426); res.end(); });
ws.on('upgrade', (req, sock) => {
  const tok = req.headers['x-api-key'] || '';
  log('ws ' + req.httpVersion + ' ' + req.url + ' ' + (tok === process.env.WANT));
  const accept = crypto.createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  sock.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + '\r\nx-echo: ' + tok + '\r\n\r\n');
  sock.write(frame(JSON.stringify(req.headers)));
  sock.write(frame(b64(tok)));
  let buf = Buffer.alloc(0);
  sock.on('error', () => {});
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 2) {
      const op = buf[0] & 15, masked = buf[1] & 128;
      let len = buf[1] & 127, off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      const mk = masked ? buf.subarray(off, off + 4) : null;
      if (masked) off += 4;
      if (buf.length < off + len) return;
      let p = Buffer.from(buf.subarray(off, off + len));
      if (mk) p = p.map((b, i) => b ^ mk[i % 4]);
      buf = buf.subarray(off + len);
      if (op === 8) { sock.end(Buffer.from([0x88, 0])); return; }
      if (op === 1) sock.write(frame('echo ' + p.toString() + ' with ' + tok));
    }
  });
});
let n = 0;
const ready = () => { if (++n === 2) console.log(h2.address().port + ' ' + ws.address().port); };
h2.listen(0, '127.0.0.1', ready);
ws.listen(0, '127.0.0.1', ready);
"#;

/// A WebSocket client on python's stdlib (sockets and ssl): through the
/// bottle's proxy (CONNECT, then TLS with the bottle's CA), it upgrades,
/// prints the 101 head and the server's two frames, sends `hello`, and
/// prints the echo.
const WS_CLIENT: &str = r#"
import base64, os, socket, ssl, struct, sys
target = sys.argv[1]
proxy = os.environ["HTTPS_PROXY"].split("//")[1].rstrip("/")
ph, pp = proxy.rsplit(":", 1)
s = socket.create_connection((ph, int(pp)))
s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
head = b""
while not head.endswith(b"\r\n\r\n"):
    head += s.recv(1)
c = ssl.create_default_context().wrap_socket(s, server_hostname=target.split(":")[0])
key = base64.b64encode(os.urandom(16)).decode()
c.sendall(("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % (target, key)).encode())
head = b""
while not head.endswith(b"\r\n\r\n"):
    head += c.recv(1)
print(head.decode().strip())
def read(n):
    b = b""
    while len(b) < n:
        x = c.recv(n - len(b))
        if not x:
            raise EOFError("closed")
        b += x
    return b
def frame():
    _, n = read(2)
    n &= 127
    if n == 126:
        n = struct.unpack(">H", read(2))[0]
    return read(n).decode()
print("frame:", frame())
print("frame:", frame())
m, p = os.urandom(4), b"hello"
c.sendall(bytes([0x81, 0x80 | len(p)]) + m + bytes(b ^ m[i % 4] for i, b in enumerate(p)))
print("frame:", frame())
"#;

/// node's HTTP/2 client, h2 only, through the bottle's proxy.
const H2_CLIENT: &str = r#"
const http = require('http'), http2 = require('http2'), tls = require('tls');
const target = process.argv[2], host = target.split(':')[0];
const u = new URL(process.env.HTTPS_PROXY);
const r = http.request({ host: u.hostname, port: u.port, method: 'CONNECT', path: target });
r.on('connect', (res, sock) => {
  const c = http2.connect('https://' + target, {
    createConnection: () => tls.connect({ socket: sock, host, ALPNProtocols: ['h2'] }),
  });
  const failed = (e) => { console.log('node-h2-error:', e.code, e.cause ? e.cause.code : ''); process.exit(0); };
  c.on('error', failed);
  const q = c.request({ ':path': '/node' });
  q.on('error', failed);
  let d = '';
  q.on('response', (h) => console.log('node-h2-status:', h[':status'], h['x-echo']));
  q.on('data', (x) => (d += x));
  q.on('end', () => { console.log('node-h2-body:', d); c.close(); });
});
r.end();
"#;

struct Servers {
    child: Child,
    h2: u16,
    ws: u16,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn servers(dir: &Path) -> Servers {
    pki(dir);
    std::fs::write(dir.join("servers.js"), SERVERS).expect("write");
    let mut child = Command::new("node")
        .arg("servers.js")
        .current_dir(dir)
        .env("WANT", TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node upstreams");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ports");
    let ports: Vec<u16> = line.split_whitespace().map(|p| p.parse().expect("port")).collect();
    Servers { child, h2: ports[0], ws: ports[1] }
}

/// The agent's view holds neither the token nor its base64 form.
fn never_shown(out: &str) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("u:{TOKEN}"));
    assert!(!out.contains(TOKEN), "the agent saw the token: {out}");
    assert!(!out.contains(&b64[4..]), "the agent saw the token in base64: {out}");
}

/// Native bottles and node (the upstreams are node servers).
fn probe() -> Result<(), String> {
    available()?;
    match Command::new("node").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(_) => Err("node is not installed".into()),
    }
}

fn sh_heredoc(name: &str, text: &str) -> String {
    format!("cat > /tmp/{name} <<'EOF'\n{text}\nEOF\n")
}

#[test]
fn an_echoing_h2_upstream_never_shows_the_agent_the_token() {
    if let Err(why) = probe() {
        panic_or_skip(&why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = servers(dir.path());
    let t = format!("127.0.0.1:{}", s.h2);
    let bottle = format!(
        "backend: native\nresources: {{ pids: 512 }}\negress:\n  routes:\n    - host: \"{t}\"\n      inject: {{ header: x-api-key, env: BB_EGRESS_TEST_TOKEN }}\n"
    );
    let script = format!(
        "unset NO_PROXY no_proxy\n\
         curl -sS --http2 -D - -w 'curl-version:%{{http_version}}\\n' https://{t}/curl\n\
         {}node /tmp/h2.js {t}\n",
        sh_heredoc("h2.js", H2_CLIENT)
    );
    let (code, out, err, audit) = run(dir.path(), &bottle, &script);
    assert_eq!(code, 0, "{out}\n{err}");
    let log = std::fs::read_to_string(dir.path().join("requests.log")).unwrap_or_default();
    // The proxy spoke HTTP/2 upstream and injected the real token.
    assert_eq!(log.trim(), "h2 2.0 /curl true", "{log}");
    never_shown(&out);
    assert!(out.matches(&"*".repeat(TOKEN.len())).count() >= 3, "masked in the header and the body: {out}");
    // To the agent it speaks HTTP/1.1, whatever curl asked for.
    assert!(out.contains("curl-version:1.1"), "{out}");
    // A client that offers h2 alone is refused in the TLS handshake:
    // nothing reaches the upstream.
    assert!(out.contains("node-h2-error:") && out.contains("NO_APPLICATION_PROTOCOL"), "{out}");
    assert!(!out.contains("node-h2-status"), "{out}");
    assert!(audit.contains("\"injected\":\"BB_EGRESS_TEST_TOKEN\"") && !audit.contains(TOKEN), "{audit}");
}

#[test]
fn an_echoing_websocket_upstream_never_shows_the_agent_the_token() {
    if let Err(why) = probe() {
        panic_or_skip(&why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = servers(dir.path());
    let t = format!("127.0.0.1:{}", s.ws);
    let bottle = format!(
        "backend: native\nresources: {{ pids: 512 }}\negress:\n  routes:\n    - host: \"{t}\"\n      websocket: true\n      inject: {{ header: x-api-key, env: BB_EGRESS_TEST_TOKEN }}\n"
    );
    let script = format!("unset NO_PROXY no_proxy\n{}python3 /tmp/ws.py {t}\n", sh_heredoc("ws.py", WS_CLIENT));
    let (code, out, err, audit) = run(dir.path(), &bottle, &script);
    assert_eq!(code, 0, "{out}\n{err}");
    let log = std::fs::read_to_string(dir.path().join("requests.log")).unwrap_or_default();
    assert_eq!(log.trim(), "ws 1.1 /ws true", "the upgrade reached the upstream with the real token: {log}");
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    assert_eq!(out.matches("frame:").count(), 3, "{out}");
    assert!(out.contains("echo hello with "), "the echo came through: {out}");
    never_shown(&out);
    let mask = "*".repeat(TOKEN.len());
    // The 101's header, the echoed upgrade headers, the echo frame.
    assert!(out.matches(&mask).count() >= 3, "masked in the 101 head and in frames: {out}");
    assert!(audit.contains("\"injected\":\"BB_EGRESS_TEST_TOKEN\"") && !audit.contains(TOKEN), "{audit}");
}
