//! fake-forge: a test double of the GitHub and Gitea deploy-key REST
//! endpoints, as their documentation describes them, over HTTPS.
//!
//! ```text
//! fake-forge --dir DIR --token TOKEN --repo OWNER/NAME [--repo ...] [--authorized-keys FILE]
//! ```
//!
//! It writes its CA to `DIR/ca.pem`, prints `127.0.0.1:PORT` on stdout and
//! serves until killed. Paths under `/api/v1/` speak Gitea; everything else
//! speaks GitHub (`/api/v3/` too, as GitHub Enterprise does):
//!
//! - `GET    .../repos/{owner}/{repo}/keys` (GitHub `per_page`/`page`, Gitea `limit`/`page`)
//! - `POST   .../repos/{owner}/{repo}/keys` `{title, key, read_only}` → 201
//! - `GET    .../repos/{owner}/{repo}/keys/{id}`
//! - `DELETE .../repos/{owner}/{repo}/keys/{id}` → 204
//!
//! Errors as documented: 401 without a valid token, 404 for an unknown
//! repository or key, 422 for a missing field, a malformed key or one
//! already in use. With `--authorized-keys`, every write key is kept in that
//! file (an sshd's `AuthorizedKeysFile`): what the forge lets push.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Key {
    id: u64,
    title: String,
    key: String,
    read_only: bool,
}

#[derive(Debug, Default)]
struct State {
    repos: BTreeMap<String, Vec<Key>>,
    next: u64,
}

#[derive(Debug)]
struct Forge {
    token: String,
    state: Mutex<State>,
    authorized: Option<PathBuf>,
    port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Flavour {
    Github,
    Gitea,
}

fn answer(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn error(flavour: Flavour, status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let v = match flavour {
        Flavour::Github => {
            json!({ "message": message, "documentation_url": "https://docs.github.com/rest/deploy-keys/deploy-keys", "status": status.as_u16().to_string() })
        }
        Flavour::Gitea => json!({ "message": message, "url": "https://docs.gitea.com/api" }),
    };
    answer(status, &v)
}

impl Forge {
    fn key_json(&self, f: Flavour, repo: &str, k: &Key) -> Value {
        let url = match f {
            Flavour::Github => format!("https://127.0.0.1:{}/repos/{repo}/keys/{}", self.port, k.id),
            Flavour::Gitea => format!("https://127.0.0.1:{}/api/v1/repos/{repo}/keys/{}", self.port, k.id),
        };
        match f {
            Flavour::Github => json!({
                "id": k.id, "key": k.key, "url": url, "title": k.title, "verified": true,
                "created_at": "2026-01-01T00:00:00Z", "read_only": k.read_only, "added_by": "bot", "last_used": null
            }),
            Flavour::Gitea => json!({
                "id": k.id, "key_id": k.id, "key": k.key, "url": url, "title": k.title,
                "fingerprint": format!("SHA256:fake{}", k.id), "created_at": "2026-01-01T00:00:00Z",
                "read_only": k.read_only
            }),
        }
    }

    /// Rewrites the authorized keys file: every write key of every repo.
    fn sync_authorized(&self, s: &State) {
        let Some(p) = &self.authorized else { return };
        let mut out = String::new();
        for k in s.repos.values().flatten().filter(|k| !k.read_only) {
            out.push_str(&k.key);
            out.push('\n');
        }
        std::fs::write(p, out).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (flavour, rest) = if let Some(r) = path.strip_prefix("/api/v1") {
            (Flavour::Gitea, r.to_owned())
        } else if let Some(r) = path.strip_prefix("/api/v3") {
            (Flavour::Github, r.to_owned())
        } else {
            (Flavour::Github, path.clone())
        };
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let token_ok = [format!("Bearer {}", self.token), format!("token {}", self.token)].iter().any(|t| t == auth);
        if !token_ok {
            let m = if flavour == Flavour::Github { "Bad credentials" } else { "token is required" };
            return error(flavour, StatusCode::UNAUTHORIZED, m);
        }
        let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
        let (repo, id) = match parts.as_slice() {
            ["repos", o, r, "keys"] => (format!("{o}/{r}"), None),
            ["repos", o, r, "keys", id] => match id.parse::<u64>() {
                Ok(id) => (format!("{o}/{r}"), Some(id)),
                Err(_) => return error(flavour, StatusCode::NOT_FOUND, "Not Found"),
            },
            _ => return error(flavour, StatusCode::NOT_FOUND, "Not Found"),
        };
        let method = req.method().clone();
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(flavour, StatusCode::PAYLOAD_TOO_LARGE, "too large"),
        };
        let mut s = self.state.lock().expect("state");
        if !s.repos.contains_key(&repo) {
            return error(flavour, StatusCode::NOT_FOUND, "Not Found");
        }
        match (method, id) {
            (Method::GET, None) => {
                let (per, page) = match flavour {
                    Flavour::Github => (query.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(30usize), "page"),
                    Flavour::Gitea => (query.get("limit").and_then(|v| v.parse().ok()).unwrap_or(30usize), "page"),
                };
                let page: usize = query.get(page).and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
                let keys = &s.repos[&repo];
                let v: Vec<Value> =
                    keys.iter().skip((page - 1) * per).take(per).map(|k| self.key_json(flavour, &repo, k)).collect();
                answer(StatusCode::OK, &Value::Array(v))
            }
            (Method::POST, None) => {
                let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                    return error(flavour, StatusCode::BAD_REQUEST, "Problems parsing JSON");
                };
                let title = v.get("title").and_then(Value::as_str).unwrap_or_default().to_owned();
                let key = v.get("key").and_then(Value::as_str).unwrap_or_default().trim().to_owned();
                let read_only = v.get("read_only").and_then(Value::as_bool).unwrap_or(true);
                let parts: Vec<&str> = key.split_whitespace().collect();
                if key.is_empty() || parts.len() < 2 || !parts[0].starts_with("ssh-") && !parts[0].starts_with("ecdsa-")
                {
                    return error(flavour, StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed: key is invalid");
                }
                // The key's type and data identify it; its comment does not.
                let id_of = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                if s.repos.values().flatten().any(|k| id_of(&k.key) == id_of(&key)) {
                    let m = match flavour {
                        Flavour::Github => "Validation Failed: key is already in use",
                        Flavour::Gitea => "Key content has been used as non-deploy key",
                    };
                    return error(flavour, StatusCode::UNPROCESSABLE_ENTITY, m);
                }
                s.next += 1;
                let k = Key { id: s.next, title, key: id_of(&key), read_only };
                s.repos.get_mut(&repo).expect("repo").push(k.clone());
                self.sync_authorized(&s);
                answer(StatusCode::CREATED, &self.key_json(flavour, &repo, &k))
            }
            (Method::GET, Some(id)) => match s.repos[&repo].iter().find(|k| k.id == id) {
                Some(k) => answer(StatusCode::OK, &self.key_json(flavour, &repo, k)),
                None => error(flavour, StatusCode::NOT_FOUND, "Not Found"),
            },
            (Method::DELETE, Some(id)) => {
                let keys = s.repos.get_mut(&repo).expect("repo");
                let before = keys.len();
                keys.retain(|k| k.id != id);
                if keys.len() == before {
                    return error(flavour, StatusCode::NOT_FOUND, "Not Found");
                }
                self.sync_authorized(&s);
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            _ => error(flavour, StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        }
    }
}

fn usage() -> ! {
    panic!("usage: fake-forge --dir DIR --token TOKEN --repo OWNER/NAME [--repo ...] [--authorized-keys FILE]");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut token, mut repos, mut authorized) = (None, None, Vec::new(), None);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(v)),
            "--token" => token = Some(v),
            "--repo" => repos.push(v),
            "--authorized-keys" => authorized = Some(PathBuf::from(v)),
            _ => usage(),
        }
    }
    let (Some(dir), Some(token)) = (dir, token) else { usage() };
    // A CA of its own and a certificate for loopback, as the test harness's.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "fake-forge CA");
    let ca = p.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut sp = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    sp.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = sp.signed_by(&key, &issuer).expect("leaf");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("ca.pem");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut state = State::default();
    for r in repos {
        state.repos.insert(r, Vec::new());
    }
    let forge = Arc::new(Forge { token, state: Mutex::new(state), authorized, port });
    forge.sync_authorized(&forge.state.lock().expect("state"));
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        writeln!(out, "127.0.0.1:{port}").expect("stdout");
        out.flush().expect("stdout");
    }
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let (acceptor, forge) = (acceptor.clone(), forge.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let svc = service_fn(move |req| {
                let forge = forge.clone();
                async move { Ok::<_, Infallible>(forge.handle(req).await) }
            });
            // A client that hangs up ends only its own connection.
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!(error = %e, "fake forge: connection ended");
            }
        });
    }
}
