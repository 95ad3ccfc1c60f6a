//! Services on the host (issue 13) end to end: dev servers on the host's
//! loopback, reached from inside a real native bottle by curl and python
//! as `host.bot-bottle.internal:PORT`, port by port, with the bottle's
//! proxy environment left as provisioned.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::egress::{pki, run};
use super::native::{available, panic_or_skip};

/// Three servers on the host's 127.0.0.1: plain HTTP and HTTPS (routed),
/// and plain HTTP on a port no route names. Each logs
/// `PORT PATH HOST` to `requests.log` and answers `hello from PORT`.
const SERVERS: &str = r#"
import http.server, ssl, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        port = self.server.server_address[1]
        with open("requests.log", "a") as f:
            f.write("%d %s %s\n" % (port, self.path, self.headers.get("host")))
        body = ("hello from %d\n" % port).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
def serve(tls):
    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain("leaf.pem", "leaf.key")
        s.socket = ctx.wrap_socket(s.socket, server_side=True)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s.server_address[1]
print(serve(False), serve(True), serve(False), flush=True)
threading.Event().wait()
"#;

struct Servers {
    child: Child,
    plain: u16,
    tls: u16,
    other: u16,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn servers(dir: &Path) -> Servers {
    pki(dir);
    std::fs::write(dir.join("servers.py"), SERVERS).expect("write");
    let mut child =
        Command::new("python3").arg("servers.py").current_dir(dir).stdout(Stdio::piped()).spawn().expect("servers");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ports");
    let ports: Vec<u16> = line.split_whitespace().map(|p| p.parse().expect("port")).collect();
    Servers { child, plain: ports[0], tls: ports[1], other: ports[2] }
}

#[test]
fn a_dev_server_on_the_host_is_reached_by_name_port_by_port() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = servers(dir.path());
    let (p, t, o) = (s.plain, s.tls, s.other);
    let bottle = format!(
        "backend: native\nresources: {{ pids: 512 }}\negress:\n  routes:\n    - host: \"host.bot-bottle.internal:{p}\"\n    - host: \"host.bot-bottle.internal:{t}\"\n"
    );
    // NO_PROXY stays as provisioned: the name must not be in it.
    let h = "host.bot-bottle.internal";
    let script = format!(
        "echo no_proxy:$NO_PROXY; \
         echo curl-http:$(curl -sS http://{h}:{p}/curl); \
         echo curl-https:$(curl -sS https://{h}:{t}/curl); \
         python3 -c \"import urllib.request as u; print('py-http:' + u.urlopen('http://{h}:{p}/py').read().decode().strip()); print('py-https:' + u.urlopen('https://{h}:{t}/py').read().decode().strip())\"; \
         echo denied:; curl -sS http://{h}:{o}/x; curl -sS https://{h}:{o}/x; \
         echo bypass:; for u in http://127.0.0.1:{o}/x http://localhost:{o}/x 'http://[::1]:{o}/x'; do \
           echo direct:$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 $u); \
           echo proxied:$(curl -s -o /dev/null -w '%{{http_code}}' --noproxy '' --max-time 5 $u); done; \
         for u in http://HOST.BOT-BOTTLE.INTERNAL:{o}/x http://host.bot-bottle.internal.:{o}/x https://Host.Bot-Bottle.Internal.:{o}/x; do \
           echo spelled:$(curl -s -o /dev/null -w '%{{http_code}}' $u); done"
    );
    let (code, out, err, audit) = run(dir.path(), &bottle, &script);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.lines().any(|l| l.starts_with("no_proxy:") && l.contains(".internal")), "{out}");
    for want in [
        format!("curl-http:hello from {p}"),
        format!("curl-https:hello from {t}"),
        format!("py-http:hello from {p}"),
        format!("py-https:hello from {t}"),
    ] {
        assert!(out.contains(&want), "{want}: {out}\n{err}");
    }
    let denied = out.split("denied:\n").nth(1).and_then(|d| d.split("bypass:").next()).unwrap_or_default();
    assert_eq!(denied.matches("rule: host").count(), 2, "readable denial over http and https: {out}");
    assert!(denied.contains(&format!("{h}:{o}")), "{out}");
    // The bottle's own loopback holds nothing there; through the proxy, the
    // host's loopback by any other name is refused; other spellings of the
    // name do not open the unrouted port.
    assert_eq!(out.matches("direct:").count(), 3, "{out}");
    assert!(!out.contains("direct:200"), "{out}");
    assert_eq!(out.matches("proxied:403").count(), 3, "{out}");
    assert_eq!(out.matches("spelled:403").count(), 3, "{out}");
    let log = std::fs::read_to_string(dir.path().join("requests.log")).unwrap_or_default();
    let mut got: Vec<&str> = log.lines().collect();
    got.sort_unstable();
    let mut want = vec![
        format!("{p} /curl {h}:{p}"),
        format!("{p} /py {h}:{p}"),
        format!("{t} /curl {h}:{t}"),
        format!("{t} /py {h}:{t}"),
    ];
    want.sort_unstable();
    assert_eq!(got, want, "exactly the routed requests reached the host");
    let denials: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains(&format!("\"port\":{o}")) && l.contains("\"host\":\"host.bot-bottle.internal\""))
        .collect();
    assert!(denials.len() >= 5 && denials.iter().all(|l| l.contains("\"decision\":\"deny\"")), "{audit}");
}
