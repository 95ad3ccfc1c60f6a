//! A real TLS upstream (HTTP/1.1 and HTTP/2) and a proxy under test.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bot_bottle_manifest::parse_egress;
use bot_bottle_sidecars::{Proxy, ProxyConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What an upstream saw: one entry per request.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
    pub(crate) peer: SocketAddr,
}

/// The test CA and a server certificate for loopback names.
pub(crate) struct TestPki {
    pub(crate) ca_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl TestPki {
    pub(crate) fn new(dir: &Path) -> TestPki {
        let ca_key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "upstream test CA");
        let ca_cert = p.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).expect("issuer");
        let key = KeyPair::generate().expect("key");
        let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"] {
            sp.subject_alt_names.push(SanType::IpAddress(ip.parse().expect("ip")));
        }
        let cert = sp.signed_by(&key, &issuer).expect("leaf");
        let ca_file = dir.join("upstream-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write");
        TestPki { ca_file, chain: vec![cert.der().clone()], key: key.serialize_der() }
    }

    fn server_config(&self, h2: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())))
            .expect("cert");
        cfg.alpn_protocols = if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        Arc::new(cfg)
    }
}

/// A TLS upstream on `ip`: echoes every request as JSON and serves files
/// under `/files/` from `files` (for git's dumb HTTP protocol).
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub(crate) async fn start(pki: &TestPki, ip: &str, h2: bool, files: Option<PathBuf>) -> Upstream {
        let ip: IpAddr = ip.parse().expect("ip");
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(h2));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                let log = log.clone();
                let files = files.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        let files = files.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(req, peer, &log, files.as_deref()).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    log: &Mutex<Vec<Seen>>,
    files: Option<&Path>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let version = format!("{:?}", req.version());
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let body_len = body.len();
    log.lock().expect("lock").push(Seen { path: path.clone(), headers: headers.clone(), body, peer });
    if let (Some(dir), Some(rel)) = (files, path.strip_prefix("/files/")) {
        let p = dir.join(rel.split('?').next().unwrap_or_default());
        return match std::fs::read(&p) {
            Ok(data) if !rel.contains("..") => Response::new(Full::new(Bytes::from(data))),
            _ => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                r
            }
        };
    }
    let json = serde_json::json!({ "method": method, "path": path, "version": version, "headers": headers, "body_len": body_len, "peer": peer.to_string() });
    let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
    r.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    r
}

/// The proxy under test, serving on its own runtime.
pub(crate) struct Harness {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) pki: TestPki,
    pub(crate) proxy: Option<Proxy>,
    pub(crate) proxy_addr: SocketAddr,
}

pub(crate) const TOKEN: &str = "real-token-7f3c9a1e5b2d4c6f8a0b";

impl Harness {
    pub(crate) fn new() -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path());
        Harness { rt, dir, pki, proxy: None, proxy_addr: "127.0.0.1:0".parse().expect("addr") }
    }

    pub(crate) fn upstream(&self, ip: &str, h2: bool) -> Upstream {
        self.rt.block_on(Upstream::start(&self.pki, ip, h2, Some(self.dir.path().join("files"))))
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub(crate) fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.state_dir().join("ca.pem")
    }

    /// Starts (or restarts) the proxy with `routes` (YAML, the egress schema).
    pub(crate) fn start_proxy(&mut self, routes: &str) -> Proxy {
        let egress = parse_egress(Path::new("routes.yaml"), routes).unwrap_or_else(|d| panic!("{}", d.render()));
        let proxy = Proxy::new(ProxyConfig {
            bottle: "test".into(),
            state_dir: self.state_dir(),
            egress,
            upstream_ca: Some(self.pki.ca_file.clone()),
            audit_log: Some(self.audit_path()),
            env: Box::new(|name| (name == "TEST_TOKEN").then(|| TOKEN.to_owned())),
            known_secrets: Vec::new(),
        })
        .expect("proxy");
        let listener = self.rt.block_on(Proxy::bind("127.0.0.1:0".parse().expect("addr"))).expect("bind");
        self.proxy_addr = listener.local_addr().expect("addr");
        let p = proxy.clone();
        self.rt.spawn(async move { p.serve(listener).await });
        self.proxy = Some(proxy.clone());
        proxy
    }

    pub(crate) fn set_routes(&self, routes: &str) {
        let egress = parse_egress(Path::new("routes.yaml"), routes).unwrap_or_else(|d| panic!("{}", d.render()));
        self.proxy.as_ref().expect("proxy").set_egress(&egress).expect("update");
    }

    pub(crate) fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// The environment a sandboxed client gets: the proxy, and the bottle CA as its only trust.
    pub(crate) fn client_env(&self) -> Vec<(String, String)> {
        let url = format!("http://{}", self.proxy_addr);
        let ca = self.ca().display().to_string();
        vec![
            ("HTTPS_PROXY".into(), url.clone()),
            ("https_proxy".into(), url.clone()),
            ("HTTP_PROXY".into(), url.clone()),
            ("http_proxy".into(), url),
            ("NO_PROXY".into(), String::new()),
            ("no_proxy".into(), String::new()),
            ("SSL_CERT_FILE".into(), ca.clone()),
            ("CURL_CA_BUNDLE".into(), ca.clone()),
            ("NODE_EXTRA_CA_CERTS".into(), ca.clone()),
            ("GIT_SSL_CAINFO".into(), ca.clone()),
            ("REQUESTS_CA_BUNDLE".into(), ca),
        ]
    }
}
