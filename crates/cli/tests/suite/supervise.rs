//! Supervise end to end through the real binary: an agent in a native
//! bottle is denied, asks over MCP (plain curl, as any `command` agent
//! could), the operator decides with `bot-bottle requests`, and the
//! agent's next request succeeds, with nothing restarted.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::native::{available, panic_or_skip};
use super::start_native::{Project, cli, command, upstream};

pub(super) fn project(script: &str) -> Project {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join(".bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(
        m.join("bottles/b.yaml"),
        "backend: native\nsupervise: true\nresources: { pids: 512 }\negress:\n  routes:\n    - host: example.invalid\n",
    )
    .expect("write");
    std::fs::write(
        m.join("agents/a.md"),
        format!("---\nprovider: command\ncommand: [\"sh\", \"-c\", {script:?}]\nbottle: b\n---\n"),
    )
    .expect("write");
    Project { dir, state: tempfile::tempdir().expect("tempdir") }
}

/// A shell function that calls one supervise tool over streamable HTTP.
pub(super) const MCP_SH: &str = r#"
H='Content-Type: application/json'; A='Accept: application/json, text/event-stream'
SID=$(curl -s -D - -o /dev/null -X POST "$BOT_BOTTLE_SUPERVISE_URL" -H "$H" -H "$A" \
  -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"sh","version":"1"}}}' \
  | tr -d '\r' | sed -n 's/^[Mm]cp-[Ss]ession-[Ii]d: //p')
curl -s -o /dev/null -X POST "$BOT_BOTTLE_SUPERVISE_URL" -H "$H" -H "$A" -H "Mcp-Session-Id: $SID" \
  -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
tool() {
  curl -s -X POST "$BOT_BOTTLE_SUPERVISE_URL" -H "$H" -H "$A" -H "Mcp-Session-Id: $SID" \
    -d "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"$1\",\"arguments\":$2}}" \
    | sed -n 's/^data: //p' | grep result
}
"#;

#[test]
fn an_agent_asks_the_operator_decides_and_the_next_request_succeeds() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, seen) = upstream();
    let (port2, seen2) = upstream();
    let script = format!(
        "{MCP_SH}\n\
         curl -s --noproxy '' -x \"$HTTP_PROXY\" http://127.0.0.1:{port}/data; echo; \
         echo \"https: $(curl -s https://denied.example/x | tr '\\n' ' ')\"; \
         echo \"approved: $(tool request_egress '{{\"host\":\"127.0.0.1:{port}\",\"methods\":[\"GET\"],\"justification\":\"fetch the data\"}}')\"; \
         echo \"then: $(curl -s --noproxy '' -x \"$HTTP_PROXY\" http://127.0.0.1:{port}/data)\"; \
         echo \"modified: $(tool request_egress '{{\"host\":\"127.0.0.1:{port2}\",\"justification\":\"everything there\"}}')\"; \
         echo \"granted: $(curl -s --noproxy '' -x \"$HTTP_PROXY\" http://127.0.0.1:{port2}/data)\"; \
         echo \"outside: $(curl -s --noproxy '' -x \"$HTTP_PROXY\" -X POST http://127.0.0.1:{port2}/data | head -n 3 | tr '\\n' ' ')\"; \
         echo \"rejected: $(tool request_egress '{{\"host\":\"other.example\",\"justification\":\"just because\"}}')\"; \
         echo \"denials: $(tool recent_denials '{{}}')\""
    );
    let p = project(&script);
    let child = command(&p, &["start", "a", "--quiet"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let child = child.expect("start");
    // The operator: decides each request as it appears, from another process.
    let end = Instant::now() + Duration::from_secs(60);
    let mut decided = 0;
    let mut follow = None;
    while decided < 3 && Instant::now() < end {
        let (code, out) = cli(&p, &["requests", "list", "--format", "json"]);
        assert_eq!(code, 0, "{out}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
        for r in rows {
            if follow.is_none() {
                // The bottle is running: follow its log from here on.
                let slug = r["slug"].as_str().expect("slug").to_owned();
                let f = command(&p, &["logs", &slug, "-f"]).stdout(Stdio::piped()).spawn().expect("logs -f");
                follow = Some((slug, f));
            }
            let id = r["id"].as_str().expect("id");
            let host2 = format!("127.0.0.1:{port2}");
            let args: Vec<&str> = if r["route"]["host"] == "other.example" {
                vec!["requests", "reject", id, "--comment", "not needed"]
            } else if r["route"]["host"] == host2.as_str() {
                // Modified: only GET, only /data.
                vec!["requests", "approve", id, "--path", "/data", "--method", "GET"]
            } else {
                vec!["requests", "approve", id]
            };
            let (code, out) = cli(&p, &args);
            assert_eq!(code, 0, "{out}");
            decided += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("request denied") && stdout.contains("request_egress"),
        "the denial says what to do: {stdout}"
    );
    assert!(stdout.contains(r#"approved: "#) && stdout.contains(r#"\"status\":\"approved\""#), "{stdout}");
    assert!(stdout.contains("then: upstream-ok"), "the next request got through: {stdout}");
    // An https request to a host no route names is answered inside the
    // tunnel, and the answer names the tool too.
    let https = stdout.lines().find(|l| l.starts_with("https: ")).unwrap_or_default();
    assert!(
        https.contains("request denied") && https.contains("denied.example") && https.contains("request_egress"),
        "{stdout}"
    );
    // Modified: the granted route applies, not the one asked for.
    let modified = stdout.lines().find(|l| l.starts_with("modified: ")).unwrap_or_default();
    assert!(
        modified.contains(r#"\"status\":\"modified\""#) && modified.contains(r#"\"paths\":[\"/data\"]"#),
        "{stdout}"
    );
    assert!(stdout.contains("granted: upstream-ok"), "{stdout}");
    assert!(stdout.contains("outside: bot-bottle egress proxy: request denied"), "POST was not granted: {stdout}");
    assert_eq!(*seen2.lock().expect("lock"), vec!["GET /data HTTP/1.1".to_owned()]);
    assert!(stdout.contains(r#"\"status\":\"rejected\""#) && stdout.contains("not needed"), "{stdout}");
    assert!(stdout.contains(r#"\"rule\":\"host\""#), "recent_denials: {stdout}");
    assert_eq!(*seen.lock().expect("lock"), vec!["GET /data HTTP/1.1".to_owned()]);
    // Decisions stay in the queue, decided, for the operator's record.
    let (code, out) = cli(&p, &["requests", "list", "--all", "--format", "json"]);
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    let states: Vec<&str> = rows.iter().filter_map(|r| r["state"].as_str()).collect();
    assert_eq!(states, ["approved", "modified", "rejected"]);
    // A decided request cannot be decided again.
    let id = rows[0]["id"].as_str().expect("id");
    assert_eq!(cli(&p, &["requests", "reject", id]).0, 2);
    // `logs -f` followed the running bottle and ended with it; it saw what
    // happened after it started: the grant, the allowed request, the rejection.
    let (slug, f) = follow.expect("followed");
    let followed = String::from_utf8_lossy(&f.wait_with_output().expect("logs -f").stdout).into_owned();
    assert!(followed.contains("supervise applied"), "{followed}");
    assert!(followed.contains(&format!("proxy     allow GET 127.0.0.1:{port}/data")), "{followed}");
    assert!(followed.contains("rejected by"), "{followed}");
    // `policy` counts exactly what the audit log holds.
    let (code, out) = cli(&p, &["policy", &slug, "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let counts: serde_json::Value = serde_json::from_str(&out).expect("json");
    let audit = std::fs::read_to_string(p.state.path().join("bot-bottle/bottles").join(&slug).join("audit.jsonl"))
        .expect("audit");
    let proxy_lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|e| e.get("service").is_none())
        .collect();
    let total: u64 = counts.as_array().expect("rows").iter().filter_map(|r| r["count"].as_u64()).sum();
    assert_eq!(total, proxy_lines.len() as u64, "{out}");
    let host = format!("127.0.0.1:{port}");
    let count = |d: &str| {
        counts
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["host"] == host.as_str() && r["decision"] == d)
            .map(|r| r["count"].clone())
    };
    assert_eq!((count("allow"), count("deny")), (Some(1.into()), Some(1.into())), "{out}");
    let (code, out) = cli(&p, &["logs", &slug, "--denied"]);
    assert_eq!(code, 0);
    // The http and https denials, the POST outside the modified grant, the rejection.
    assert!(out.lines().all(|l| l.contains(" deny ") || l.contains("rejected")) && out.lines().count() == 4, "{out}");
}

#[test]
fn a_bottle_that_could_write_its_own_manifest_is_refused() {
    let p = project("true");
    let b = p.dir.path().join(".bot-bottle/bottles/b.yaml");
    let text = std::fs::read_to_string(&b).expect("read");
    std::fs::write(&b, text.replace("supervise: true\n", "supervise: true\nworkspace: mount\n")).expect("write");
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("inside the project") && stderr.contains("workspace: copy"), "{stderr}");
    assert!(!p.state.path().join("bot-bottle/bottles").exists(), "nothing was created");
    // The same manifest kept outside the project is fine.
    let outside = tempfile::tempdir().expect("tempdir");
    let copy = Command::new("cp")
        .args(["-r", ".bot-bottle"])
        .arg(outside.path().join("m"))
        .current_dir(p.dir.path())
        .status()
        .expect("cp");
    assert!(copy.success());
    std::fs::remove_dir_all(p.dir.path().join(".bot-bottle")).expect("rm");
    let m = outside.path().join("m");
    let out =
        command(&p, &["start", "--manifest", m.to_str().expect("utf-8"), "a", "--quiet"]).output().expect("start");
    if available().is_ok() {
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Waits for the one pending request of `p`'s bottles; its id.
fn pending(p: &Project) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        let (code, out) = cli(p, &["requests", "list", "--format", "json"]);
        assert_eq!(code, 0, "{out}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
        if let Some(id) = rows.first().and_then(|r| r["id"].as_str()) {
            return id.to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no request showed up");
}

/// A grant for good lands in the bottle's manifest file, comments and all;
/// a bottle file that resolves into a mounted project is never written.
#[test]
fn for_good_writes_the_manifest_file_the_agent_cannot_reach() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let ask = format!(
        "{MCP_SH}\necho \"asked: $(tool request_egress '{{\"host\":\"kept.example\",\"paths\":[\"/v1\"],\"justification\":\"for every run\",\"lifetime\":\"persist\"}}')\""
    );
    let p = project(&ask);
    let b = p.dir.path().join(".bot-bottle/bottles/b.yaml");
    let original = format!("# the operator's notes\n{}", std::fs::read_to_string(&b).expect("read"));
    std::fs::write(&b, &original).expect("write");
    let agent = command(&p, &["start", "a", "--quiet"]).stdout(Stdio::piped()).spawn().expect("start");
    let id = pending(&p);
    let (code, out) = cli(&p, &["requests", "approve", &id]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("written for good into"), "{out}");
    let out = agent.wait_with_output().expect("agent");
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#"\"status\":\"approved\""#));
    let now = std::fs::read_to_string(&b).expect("read");
    assert_eq!(now, format!("{original}    - host: \"kept.example\"\n      paths: [\"/v1\"]\n"));

    // A bottle file that is a symlink into the mounted project is refused at
    // start; one that becomes such a symlink while the bottle runs is refused
    // by --persist, and nothing is decided.
    let p = project(&ask.replace("\\\"lifetime\\\":\\\"persist\\\"", "\\\"lifetime\\\":\\\"session\\\""));
    let outside = tempfile::tempdir().expect("tempdir");
    let m = outside.path().join("m");
    let moved = Command::new("cp").args(["-r", ".bot-bottle"]).arg(&m).current_dir(p.dir.path()).status();
    assert!(moved.expect("cp").success());
    std::fs::remove_dir_all(p.dir.path().join(".bot-bottle")).expect("rm");
    let inside = p.dir.path().join("b.yaml");
    let text = std::fs::read_to_string(m.join("bottles/b.yaml")).expect("read");
    std::fs::write(&inside, text.replace("supervise: true\n", "supervise: true\nworkspace: mount\n")).expect("write");
    let own = m.join("bottles/b.yaml");
    std::fs::copy(&inside, m.join("real.yaml")).expect("copy");
    std::fs::remove_file(&own).expect("rm");
    std::os::unix::fs::symlink(&inside, &own).expect("symlink");
    let ms = m.to_str().expect("utf-8");
    let o = command(&p, &["start", "--manifest", ms, "a", "--quiet"]).output().expect("start");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("resolves to") && stderr.contains("inside the project"), "{stderr}");
    std::fs::remove_file(&own).expect("rm");
    std::fs::rename(m.join("real.yaml"), &own).expect("mv");
    let agent =
        command(&p, &["start", "--manifest", ms, "a", "--quiet"]).stdout(Stdio::piped()).spawn().expect("start");
    let id = pending(&p);
    std::fs::remove_file(&own).expect("rm");
    std::os::unix::fs::symlink(&inside, &own).expect("symlink");
    let before = std::fs::read_to_string(&inside).expect("read");
    let o = command(&p, &["requests", "approve", &id, "--persist"]).output().expect("approve");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("inside the project"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&inside).expect("read"), before, "nothing written");
    assert_eq!(cli(&p, &["requests", "list", "--format", "json"]).1.matches(&id).count(), 1, "still pending");
    assert_eq!(cli(&p, &["requests", "reject", &id]).0, 0);
    let out = agent.wait_with_output().expect("agent");
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#"\"status\":\"rejected\""#));
}
