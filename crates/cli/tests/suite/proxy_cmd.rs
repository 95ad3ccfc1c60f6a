//! `bot-bottle proxy` as a user runs it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use super::cli::Env;

#[test]
fn bad_routes_file_is_a_located_error() {
    let env = Env::new();
    let routes = env.path().join("routes.yaml");
    std::fs::write(&routes, "routes:\n  - host: example.com\n    method: [GET]\n").expect("write");
    let r = env.run(env.path(), &["proxy", "--routes", routes.to_str().expect("utf-8")], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("routes.yaml:3:5") && r.stderr.contains("did you mean `methods`?"), "{}", r.stderr);
    assert_eq!(env.written(), vec!["routes.yaml".to_owned()], "no CA or state dir was created");
}

#[test]
fn an_unset_token_refuses_to_start_and_names_the_variable() {
    let env = Env::new();
    let routes = env.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "routes:\n  - host: api.example.com\n    inject: { header: x-api-key, env: NOT_SET_TOKEN }\n",
    )
    .expect("write");
    let state = env.path().join("pstate");
    let r = env.run(
        env.path(),
        &["proxy", "--routes", routes.to_str().expect("utf-8"), "--state-dir", state.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("NOT_SET_TOKEN") && r.stderr.contains("not set"), "{}", r.stderr);
}

#[test]
fn serves_denies_and_stops_on_sigterm() {
    let env = Env::new();
    let routes = env.path().join("routes.yaml");
    std::fs::write(&routes, "routes:\n  - host: api.example.com\n").expect("write");
    let state = env.path().join("pstate");
    let log = env.path().join("audit.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
        .args(["proxy", "--routes"])
        .arg(&routes)
        .arg("--state-dir")
        .arg(&state)
        .arg("--log")
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("line").expect("read");
    let addr = first.strip_prefix("listening on ").expect("listening line").to_owned();
    let rest: Vec<String> =
        lines.map_while(Result::ok).take_while(|l| !l.starts_with("export NODE_USE_ENV_PROXY")).collect();
    assert!(rest.iter().any(|l| l == &format!("export HTTPS_PROXY=http://{addr}")), "{rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("export SSL_CERT_FILE=") && l.ends_with("ca.pem")), "{rest:?}");
    assert_eq!(std::fs::metadata(state.join("ca.key")).expect("key").permissions().mode() & 0o777, 0o600);
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_connect} %{http_code}", "--cacert"])
        .arg(state.join("ca.pem"))
        .args(["-x", &format!("http://{addr}"), "https://denied.example/"])
        .output()
        .expect("curl");
    // The tunnel is accepted, nothing is dialled, and the request inside it
    // gets the readable 403.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 403", "{}", String::from_utf8_lossy(&out.stderr));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "exits cleanly on SIGTERM: {status}");
    let audit = std::fs::read_to_string(&log).expect("audit");
    assert!(audit.contains("\"decision\":\"deny\"") && audit.contains("denied.example"), "{audit}");
}
