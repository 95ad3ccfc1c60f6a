//! Services on the host (issue 13): `host.bot-bottle.internal:PORT` leads
//! to the host's 127.0.0.1:PORT through the proxy, port by port, and to
//! nothing else, whatever the spelling of the name.

use super::clients::{curl, python};
use super::harness::{Harness, Upstream};

const ALIAS: &str = "host.bot-bottle.internal";

struct Setup {
    h: Harness,
    /// Plain HTTP, routed.
    plain: Upstream,
    /// HTTPS (the test CA's leaf names `localhost`), routed.
    tls: Upstream,
    /// Plain HTTP on the same loopback, not routed.
    other: Upstream,
    env: Vec<(String, String)>,
}

fn setup() -> Setup {
    let mut h = Harness::new();
    let plain = h.rt.block_on(Upstream::start_plain("127.0.0.1"));
    let other = h.rt.block_on(Upstream::start_plain("127.0.0.1"));
    let tls = h.upstream("127.0.0.1", false);
    h.start_proxy(&format!(
        "routes:\n  - host: \"{ALIAS}:{}\"\n  - host: \"{ALIAS}:{}\"\n    methods: [GET]\n",
        plain.addr.port(),
        tls.addr.port()
    ));
    let env = h.client_env();
    Setup { h, plain, tls, other, env }
}

fn audit_for(h: &Harness, port: u16) -> Vec<serde_json::Value> {
    std::thread::sleep(std::time::Duration::from_millis(150));
    h.audit().into_iter().filter(|r| r["port"] == port).collect()
}

#[test]
fn a_routed_port_reaches_the_hosts_loopback_over_http_and_https() {
    let s = setup();
    let (p, t) = (s.plain.addr.port(), s.tls.addr.port());
    let (code, out) = curl(&s.env, &[&format!("http://{ALIAS}:{p}/dev")]);
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("\"path\":\"/dev\""), "{out}");
    // Forwarded as sent: the host service sees the name the agent used.
    assert_eq!(s.plain.seen()[0].headers.get("host").map(String::as_str), Some(format!("{ALIAS}:{p}").as_str()));
    // HTTPS: MITM like any route, the host service verified as `localhost`.
    let (code, out) = curl(&s.env, &[&format!("https://{ALIAS}:{t}/secure")]);
    assert_eq!(code, 200, "{out}");
    assert_eq!(s.tls.seen().len(), 1);
    // The route's other rules apply: this one allows GET only.
    let (code, out) = curl(&s.env, &["-X", "POST", &format!("https://{ALIAS}:{t}/secure")]);
    assert_eq!(code, 403, "{out}");
    assert_eq!(s.tls.seen().len(), 1);
    // Python's stdlib client, the same way.
    let o = python(
        &s.env,
        &format!(
            "import urllib.request\nprint(urllib.request.urlopen('http://{ALIAS}:{p}/py').status)\nprint(urllib.request.urlopen('https://{ALIAS}:{t}/py').status)"
        ),
    );
    assert_eq!((o.code, o.stdout.as_str()), (0, "200\n200\n"), "{}", o.stderr);
    let recs = audit_for(&s.h, t);
    assert!(recs.iter().any(|r| r["decision"] == "allow" && r["host"] == ALIAS), "{recs:?}");
}

#[test]
fn an_unrouted_port_on_the_host_is_denied_readably_and_logged() {
    let s = setup();
    let o = s.other.addr.port();
    for url in [format!("http://{ALIAS}:{o}/x"), format!("https://{ALIAS}:{o}/x")] {
        let (code, out) = curl(&s.env, &[&url]);
        assert_eq!(code, 403, "{url}: {out}");
        assert!(out.contains("rule: host") && out.contains(&format!("{ALIAS}:{o}")), "{url}: {out}");
    }
    assert!(s.other.seen().is_empty(), "nothing reached the unrouted port");
    let recs = audit_for(&s.h, o);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(recs.iter().all(|r| r["decision"] == "deny" && r["rule"] == "host" && r["host"] == ALIAS), "{recs:?}");
}

/// Other spellings of the name lead to the same rule: the routed port and
/// nothing else. Other names for the host's loopback lead nowhere.
#[test]
fn spellings_of_the_name_do_not_open_other_ports_or_addresses() {
    let s = setup();
    let (p, o) = (s.plain.addr.port(), s.other.addr.port());
    for host in ["HOST.BOT-BOTTLE.INTERNAL", "host.bot-bottle.internal.", "Host.Bot-Bottle.Internal."] {
        let (code, out) = curl(&s.env, &[&format!("http://{host}:{p}/same")]);
        assert_eq!(code, 200, "{host}: {out}");
        for scheme in ["http", "https"] {
            let (code, out) = curl(&s.env, &[&format!("{scheme}://{host}:{o}/x")]);
            assert_eq!(code, 403, "{scheme}://{host}:{o}: {out}");
        }
    }
    for host in [
        "127.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "localhost",
        "2130706433",
        "127.1",
        "0x7f.0.0.1",
        "bot-bottle.internal",
        "x.host.bot-bottle.internal",
        "0.0.0.0",
    ] {
        for scheme in ["http", "https"] {
            let (code, out) = curl(&s.env, &[&format!("{scheme}://{host}:{p}/x")]);
            assert_eq!(code, 403, "{scheme}://{host}:{p}: {out}");
        }
    }
    assert_eq!(s.plain.seen().len(), 3, "only the three spellings of the routed name got through");
    assert!(s.other.seen().is_empty());
    // Encoded dots, NUL and userinfo tricks in the request target and
    // CONNECT authority, sent raw; a Host that names another port.
    let script = format!(
        r#"import socket
def ask(raw):
    s = socket.create_connection(("127.0.0.1", {pp}))
    s.sendall(raw)
    print(s.recv(4096).split(b"\r\n")[0].decode())
for target in ["host%2ebot-bottle%2einternal:{p}", "host.bot-bottle.internal%2e:{p}", "host.bot-bottle.internal%00:{p}", "127.0.0.1@host.bot-bottle.internal:{o}", "host.bot-bottle.internal@127.0.0.1:{p}", "host.bot-bottle.internal:{o}"]:
    ask(("GET http://%s/x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (target, target)).encode())
    ask(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
ask(b"GET http://host.bot-bottle.internal:{p}/x HTTP/1.1\r\nHost: host.bot-bottle.internal:{o}\r\nConnection: close\r\n\r\n")
"#,
        pp = s.h.proxy_addr.port()
    );
    let out = python(&s.env, &script);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 13, "{}\n{}", out.stdout, out.stderr);
    for (i, l) in lines.iter().enumerate() {
        // A CONNECT whose target has no route is accepted (its requests get
        // the reason); nothing is dialled for it.
        let connect = i % 2 == 1 && i < 12;
        let ok = l.starts_with("HTTP/1.1 4") || (connect && *l == "HTTP/1.1 200 OK");
        assert!(ok, "line {i}: {l}\n{}", out.stdout);
    }
    assert_eq!(s.plain.seen().len(), 3, "no trick reached the routed port");
    assert!(s.other.seen().is_empty(), "no trick reached the unrouted port");
}

/// Inside an accepted tunnel, a Host that names another port of the alias
/// is refused before anything is dialled.
#[test]
fn a_tunnel_to_a_routed_port_cannot_be_steered_to_another() {
    let s = setup();
    let (t, o) = (s.tls.addr.port(), s.other.addr.port());
    let (code, out) = curl(&s.env, &["-H", &format!("Host: {ALIAS}:{o}"), &format!("https://{ALIAS}:{t}/x")]);
    assert_eq!(code, 400, "{out}");
    assert!(s.tls.seen().is_empty() && s.other.seen().is_empty());
}
