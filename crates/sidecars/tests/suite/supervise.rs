//! Supervise end to end: the official Python MCP SDK as an independent
//! client, a real proxy and upstreams, decisions through the queue (as the
//! operator's CLI makes them from another process).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bot_bottle_sidecars::{Queue, RequestState, RouteSpec, Supervise, SuperviseConfig};
use serde_json::Value;

use super::clients::curl;
use super::harness::{Harness, Upstream};

/// The Python SDK, or why the test cannot run.
fn mcp_sdk() -> Option<String> {
    let ok = Command::new("python3").args(["-c", "import mcp"]).output().is_ok_and(|o| o.status.success());
    if ok {
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/mcp_client.py").to_owned())
    } else {
        let why = "the Python MCP SDK is missing (pip install mcp)";
        assert!(std::env::var_os("CI").is_none(), "CI must run the MCP protocol tests: {why}");
        let _ = writeln!(std::io::stderr(), "skipping: {why}");
        None
    }
}

struct Setup {
    h: Harness,
    a: Upstream,
    b: Upstream,
    env: Vec<(String, String)>,
    url: String,
    port: u16,
    queue: Queue,
}

/// A proxy allowing only `127.0.0.2:<b>`, and supervise beside it.
fn setup(wait: Duration) -> Setup {
    let mut h = Harness::new();
    let a = h.upstream("127.0.0.1", false);
    let b = h.upstream("127.0.0.2", false);
    h.supervise = true;
    let proxy = h.start_proxy(&format!("routes:\n  - host: \"127.0.0.2:{}\"\n", b.addr.port()));
    let listener = h.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let egress = bot_bottle_manifest::parse_egress(
        Path::new("routes.yaml"),
        &format!("routes:\n  - host: \"127.0.0.2:{}\"\n", b.addr.port()),
    )
    .expect("routes");
    let s = Supervise::new(SuperviseConfig {
        bottle: "test".into(),
        state: h.dir.path().to_path_buf(),
        proxy,
        base: egress,
        allowed_hosts: vec![format!("127.0.0.1:{port}")],
        wait,
    })
    .expect("supervise");
    let s2 = s.clone();
    h.rt.spawn(async move { s2.serve(listener).await });
    h.rt.spawn(async move { s.run_applier().await });
    let env = h.client_env();
    let queue = Queue::new(h.dir.path());
    Setup { url: format!("http://127.0.0.1:{port}/mcp"), port, queue, env, h, a, b }
}

fn client(script: &str, args: &[&str]) -> Vec<Value> {
    let o = Command::new("python3").arg(script).args(args).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "client failed: {stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).expect("client prints JSON")).collect()
}

/// Waits until `n` requests are pending, as an operator would see them.
fn pending(q: &Queue, n: usize) -> Vec<bot_bottle_sidecars::EgressRequest> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let p: Vec<_> = q.all().expect("queue").into_iter().filter(|r| r.state == RequestState::Pending).collect();
        if p.len() >= n || Instant::now() > end {
            assert_eq!(p.len(), n, "pending requests: {p:?}");
            return p;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn step<'a>(out: &'a [Value], name: &str) -> &'a Value {
    out.iter().find(|v| v["step"] == name).unwrap_or_else(|| panic!("no step {name} in {out:?}"))
}

#[test]
fn protocol_with_the_python_sdk() {
    let Some(script) = mcp_sdk() else { return };
    let s = setup(Duration::from_secs(20));
    // Plain http: refused with its path (an https one is refused at CONNECT).
    let (code, _) = curl(&s.env, &[&format!("http://{}/denied/path", s.a.addr)]);
    assert_eq!(code, 403);
    let out = client(&script, &[&s.url, "protocol"]);
    assert_eq!(step(&out, "initialize")["server"], "rmcp");
    assert_eq!(step(&out, "initialize")["tools"], true);
    assert_eq!(
        step(&out, "tools/list")["names"],
        serde_json::json!(["check_request", "list_egress_routes", "recent_denials", "request_egress"])
    );
    assert_eq!(step(&out, "tools/list")["required"]["request_egress"], serde_json::json!(["host", "justification"]));
    let routes = &step(&out, "list_egress_routes")["body"]["routes"];
    assert_eq!(routes.as_array().map(Vec::len), Some(1), "{routes}");
    let denials = &step(&out, "recent_denials")["body"]["denials"];
    let last = denials.as_array().and_then(|d| d.last()).expect("a denial");
    assert_eq!(
        (&last["host"], &last["path"], &last["rule"]),
        (&"127.0.0.1".into(), &"/denied/path".into(), &"host".into())
    );
    // Arguments that do not fit the schema are tool errors the model can
    // correct (MCP 2025-11-25, SEP-1303, as rmcp implements it), naming the
    // field; an unknown tool is a JSON-RPC error (invalid params).
    let bad = step(&out, "missing_justification");
    assert_eq!(
        (&bad["is_error"], bad["body"].as_str().is_some_and(|b| b.contains("justification"))),
        (&true.into(), true)
    );
    assert_eq!(step(&out, "wrong_type")["is_error"], true);
    assert_eq!(step(&out, "unknown_tool")["jsonrpc_error"], -32602);
    // Refusals are tool errors the agent reads.
    assert_eq!(step(&out, "bad_route")["is_error"], true);
    assert_eq!(step(&out, "empty_justification")["is_error"], true);
    assert_eq!(step(&out, "unknown_id")["is_error"], true);
    // Nothing refused reached the queue.
    assert!(s.queue.all().expect("queue").is_empty());
}

#[test]
fn approve_and_reject_from_two_concurrent_sessions_take_effect_live() {
    let Some(script) = mcp_sdk() else { return };
    let s = setup(Duration::from_secs(20));
    let a_host = format!("127.0.0.1:{}", s.a.addr.port());
    let (code, body) = curl(&s.env, &[&format!("http://{a_host}/x")]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("request_egress"), "the denial names the tool: {body}");
    let q = s.queue.clone();
    let a2 = a_host.clone();
    let operator = std::thread::spawn(move || {
        for r in pending(&q, 2) {
            if r.route.host == a2 {
                q.decide(&r.id, "tester", Some(r.route.clone()), None).expect("approve");
            } else {
                q.decide(&r.id, "tester", None, Some("not for this task".into())).expect("reject");
            }
        }
    });
    let out = client(&script, &[&s.url, "concurrent", &a_host, "example.com"]);
    operator.join().expect("operator");
    let by_host = |h: &str| out.iter().find(|v| v["host"] == h).expect("result").clone();
    let a = by_host(&a_host);
    assert_eq!(a["body"]["status"], "approved", "{a}");
    let rejected = by_host("example.com");
    assert_eq!(
        (&rejected["body"]["status"], &rejected["body"]["comment"]),
        (&"rejected".into(), &"not for this task".into())
    );
    // The next request succeeds: the proxy was never restarted.
    let (code, body) = curl(&s.env, &[&format!("https://{a_host}/x")]);
    assert_eq!(code, 200, "{body}");
    // The audit log has each request, decision (with who) and grant.
    let audit = s.h.audit();
    let ops: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e["service"] == "supervise")
        .map(|e| (e["op"].as_str().unwrap_or(""), e["by"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(ops.iter().filter(|o| o.0 == "request").count(), 2, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| *o == &("decision", "tester")).count(), 2, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| o.0 == "applied").count(), 1, "{ops:?}");
}

#[test]
fn a_modified_grant_is_what_applies_and_pending_is_checked_later() {
    let Some(script) = mcp_sdk() else { return };
    // Nobody decides within the wait: pending, with an id.
    let s = setup(Duration::from_secs(2));
    let a_host = format!("127.0.0.1:{}", s.a.addr.port());
    let q = s.queue.clone();
    let (told, heard) = std::sync::mpsc::channel::<()>();
    let args = serde_json::json!({ "host": a_host, "paths": ["/v1/"], "justification": "read the API" }).to_string();
    let decider = std::thread::spawn(move || {
        let r = pending(&q, 1).remove(0);
        // Decide only after the agent was told "pending".
        heard.recv().expect("told");
        let g = RouteSpec { paths: vec!["/ok/".into()], methods: vec!["GET".into()], ..r.route.clone() };
        q.decide(&r.id, "tester", Some(g), Some("files only".into())).expect("modify");
        r.id
    });
    let out = client(&script, &[&s.url, "request", &args]);
    let first = &step(&out, "request")["body"];
    assert_eq!(first["status"], "pending", "{first}");
    let id = first["id"].as_str().expect("id").to_owned();
    told.send(()).expect("tell");
    let out = client(&script, &[&s.url, "check", &id, "2"]);
    assert_eq!(decider.join().expect("decider"), id);
    let v = &step(&out, "check")["body"];
    assert_eq!(v["status"], "modified", "{v}");
    assert_eq!(v["route"], serde_json::json!({ "host": a_host, "paths": ["/ok/"], "methods": ["GET"] }));
    assert_eq!(curl(&s.env, &[&format!("https://{a_host}/ok/x")]).0, 200);
    assert_eq!(curl(&s.env, &[&format!("https://{a_host}/v1/x")]).0, 403);
    assert_eq!(curl(&s.env, &["-X", "POST", &format!("https://{a_host}/ok/x")]).0, 403);
    let _ = &s.b;
}

/// Raw HTTP to the server: its status code.
fn raw(port: u16, host: &str, extra: &str) -> u16 {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).expect("write");
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn dns_rebinding_is_refused_by_host_and_origin() {
    let s = setup(Duration::from_secs(20));
    let good = format!("127.0.0.1:{}", s.port);
    assert_eq!(raw(s.port, &good, ""), 200);
    assert_eq!(raw(s.port, &format!("attacker.example:{}", s.port), ""), 403);
    assert_eq!(raw(s.port, "localhost", ""), 403);
    assert_eq!(raw(s.port, &good, "Origin: http://attacker.example\r\n"), 403);
    assert_eq!(raw(s.port, &good, &format!("Origin: http://{good}\r\n")), 403);
}

#[test]
fn two_bottles_twenty_requests_each_none_lost_or_duplicated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bottles: Vec<_> = (0..2).map(|i| dir.path().join(format!("b{i}"))).collect();
    let mut submitters = Vec::new();
    for b in &bottles {
        std::fs::create_dir_all(b).expect("mkdir");
        for t in 0..4 {
            let q = Queue::new(b);
            submitters.push(std::thread::spawn(move || {
                (0..5)
                    .map(|i| {
                        let route = RouteSpec { host: format!("h{t}-{i}.example"), ..RouteSpec::default() };
                        q.submit("b", "run", route, "why".into(), bot_bottle_sidecars::Lifetime::Session)
                            .expect("submit")
                            .id
                    })
                    .collect::<Vec<_>>()
            }));
        }
    }
    let ids: Vec<String> = submitters.into_iter().flat_map(|t| t.join().expect("submitter")).collect();
    assert_eq!(ids.len(), 40);
    // A restarted operator CLI (a new `Queue`) sees them all, and two
    // operators deciding at once decide each request exactly once.
    let mut deciders = Vec::new();
    for _ in 0..2 {
        let bottles = bottles.clone();
        deciders.push(std::thread::spawn(move || {
            let mut won = Vec::new();
            for b in &bottles {
                let q = Queue::new(b);
                for r in q.all().expect("queue") {
                    if q.decide(&r.id, "op", Some(r.route.clone()), None).is_ok() {
                        won.push(r.id);
                    }
                }
            }
            won
        }));
    }
    let mut won: Vec<String> = deciders.into_iter().flat_map(|t| t.join().expect("decider")).collect();
    won.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(won, want);
    for b in &bottles {
        let all = Queue::new(b).all().expect("queue");
        assert_eq!(all.len(), 20);
        assert!(all.iter().all(|r| r.state == RequestState::Approved));
    }
}
