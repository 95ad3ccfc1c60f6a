//! An https upstream: real `git http-backend` behind a TLS server of the
//! test's own (its own CA) that demands the token; the gate authenticates
//! with the token from the host environment, which the agent never sees.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bot_bottle_manifest::{EnvName, GitUrl, KeySource, Repo};
use bot_bottle_sidecars::{Gate, GateConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use indexmap::IndexMap;

use super::gate_support::{git, missing, ok, run, runtime, skip_or_panic};

const TOKEN: &str = "https-token-4c2e8a6b0d9f1e3a5c7b";

/// A CA and a loopback server certificate.
fn pki(dir: &Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "git upstream test CA");
    let ca = p.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut sp = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    sp.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = sp.signed_by(&key, &issuer).expect("leaf");
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("cert");
    (ca_file, Arc::new(cfg))
}

/// Runs `git http-backend` as CGI for one request.
async fn cgi(root: &Path, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut c = tokio::process::Command::new("git");
    c.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("http-backend");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.expect("http-backend");
    let split = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (i, n) = split.expect("cgi headers");
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(&out.stdout[i + n..])));
    for line in String::from_utf8_lossy(&out.stdout[..i]).lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        if k.eq_ignore_ascii_case("status") {
            let code = v.trim().split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
            *r.status_mut() = StatusCode::from_u16(code).expect("status");
        } else if let (Ok(k), Ok(v)) = (hyper::header::HeaderName::try_from(k), v.trim().parse()) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// An https git server at `127.0.0.1:port` serving `root`, for clients
/// that send `Authorization: Basic base64(x-access-token:TOKEN)`.
fn serve(
    rt: &tokio::runtime::Runtime,
    root: PathBuf,
    tls: Arc<rustls::ServerConfig>,
    seen: Arc<Mutex<Vec<String>>>,
) -> u16 {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    use base64::Engine;
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}")));
    rt.spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, root, seen, expected) = (acceptor.clone(), root.clone(), seen.clone(), expected.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (root, seen, expected) = (root.clone(), seen.clone(), expected.clone());
                    async move {
                        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                        seen.lock().expect("lock").push(auth.to_owned());
                        if auth != expected {
                            let mut r = Response::new(Full::new(Bytes::from_static(b"bad credentials\n")));
                            *r.status_mut() = StatusCode::UNAUTHORIZED;
                            r.headers_mut().insert("www-authenticate", "Basic realm=\"git\"".parse().expect("h"));
                            return Ok::<_, Infallible>(r);
                        }
                        Ok(cgi(&root, req).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    port
}

fn token_env() -> EnvName {
    // EnvName is made by the manifest checker; take one from a plan.
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join(".bot-bottle");
    std::fs::create_dir_all(root.join("bottles")).expect("mkdir");
    std::fs::create_dir_all(root.join("agents")).expect("mkdir");
    std::fs::write(
        root.join("bottles/b.yaml"),
        "git-gate:\n  repos:\n    x:\n      url: https://h/o/r.git\n      key: { provider: token, env: GH_TOKEN }\n",
    )
    .expect("write");
    std::fs::write(root.join("agents/a.md"), "---\nprovider: claude\nbottle: b\n---\n").expect("write");
    let m = bot_bottle_manifest::Manifest::load(&root, None).expect("load");
    let plan =
        m.resolve(&bot_bottle_manifest::Request { agent: "a".into(), ..Default::default() }, &|_| true).expect("plan");
    match &plan.git_gate.repos["x"].key {
        KeySource::Token { env } => env.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_https_upstream_gets_the_hosts_token_and_the_agent_never_does() {
    if let Some(why) = missing() {
        skip_or_panic(&why);
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    let root = tmp.path().join("srv");
    let upstream = root.join("app.git");
    ok(git(&home).args(["init", "-q", "--bare", "-b", "main"]).arg(&upstream));
    let seed = tmp.path().join("seed");
    ok(git(&home).args(["init", "-q", "-b", "main"]).arg(&seed));
    std::fs::write(seed.join("README.md"), "# app\n").expect("write");
    ok(git(&home).arg("-C").arg(&seed).args(["add", "."]));
    ok(git(&home).arg("-C").arg(&seed).args(["commit", "-qm", "first"]));
    ok(git(&home).arg("-C").arg(&seed).args(["push", "-q"]).arg(&upstream).arg("main"));
    let (ca, tls) = pki(tmp.path());
    let rt = runtime();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let port = serve(&rt, root, tls, seen.clone());
    let start = |token: &'static str| {
        let repo = Repo {
            url: GitUrl::Https { host: "127.0.0.1".into(), port: Some(port), path: "app.git".into() },
            key: KeySource::Token { env: token_env() },
            host_key: None,
            branches: vec!["bot/*".into()],
            allow_force_push: false,
            allow_delete: false,
        };
        let mut cfg = GateConfig::new("bottle-1", tmp.path().join(format!("gate-{token}")));
        cfg.repos = IndexMap::from([("app".to_owned(), repo)]);
        cfg.upstream_ca = Some(ca.clone());
        cfg.audit_log = Some(tmp.path().join("audit.jsonl"));
        cfg.timeout = Duration::from_secs(60);
        cfg.env = Box::new(move |n| (n == "GH_TOKEN").then(|| token.to_owned()));
        let gate = rt.block_on(Gate::start(cfg)).expect("gate");
        let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let url = format!("http://{}/app.git", l.local_addr().expect("addr"));
        let g = gate.clone();
        rt.spawn(async move { g.serve(l).await });
        url
    };
    let url = start(TOKEN);
    let work = tmp.path().join("work");
    ok(git(&home).args(["clone", "-q", &url]).arg(&work));
    ok(git(&home).arg("-C").arg(&work).args(["checkout", "-qb", "bot/x"]));
    std::fs::write(work.join("a"), "a\n").expect("write");
    ok(git(&home).arg("-C").arg(&work).args(["add", "."]));
    ok(git(&home).arg("-C").arg(&work).args(["commit", "-qm", "a"]));
    let out = run(git(&home).arg("-C").arg(&work).args(["push", "origin", "bot/x"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let head = ok(git(&home).arg("-C").arg(&work).args(["rev-parse", "HEAD"]));
    assert_eq!(ok(git(&home).arg("--git-dir").arg(&upstream).args(["rev-parse", "bot/x"])), head);
    assert!(seen.lock().expect("lock").iter().all(|a| a.starts_with("Basic ")), "every request carried the token");
    // An upstream that refuses a push and echoes the credential git sent
    // it (as `Authorization: Basic` holds it, and hex): the agent's push
    // shows the refusal, never the token in any form.
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"));
    let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    let hook = upstream.join("hooks/pre-receive");
    std::fs::write(&hook, format!("#!/bin/sh\necho \"denied for Basic {basic}\"\necho \"token hex {hex}\"\nexit 1\n"))
        .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    ok(git(&home).arg("-C").arg(&work).args(["checkout", "-qb", "bot/y"]));
    std::fs::write(work.join("b"), "b\n").expect("write");
    ok(git(&home).arg("-C").arg(&work).args(["add", "."]));
    ok(git(&home).arg("-C").arg(&work).args(["commit", "-qm", "b"]));
    let out = run(git(&home).arg("-C").arg(&work).args(["push", "origin", "bot/y"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refused the push") && err.contains("denied for Basic"), "{err}");
    for (form, v) in [("raw", TOKEN), ("basic", &basic[16..]), ("hex", &hex)] {
        assert!(!err.contains(v), "the upstream's echo showed the agent the token ({form}): {err}");
    }
    std::fs::remove_file(&hook).expect("rm hook");
    // A wrong token: the upstream's 401 fails the clone, and says so.
    let bad = start("wrong-token-0000000000");
    let out = run(git(&home).args(["clone", "-q", &bad]).arg(tmp.path().join("bad")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bot-bottle git gate: repo app: the upstream"), "{err}");
    assert!(!err.contains("wrong-token") && !err.contains(TOKEN), "{err}");
    let log = std::fs::read_to_string(tmp.path().join("audit.jsonl")).expect("audit");
    assert!(!log.contains(TOKEN) && !log.contains("wrong-token"), "{log}");
}
