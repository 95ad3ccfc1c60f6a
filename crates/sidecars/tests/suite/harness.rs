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

    pub(crate) fn server_config(&self, h2: bool) -> Arc<rustls::ServerConfig> {
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
                        async move {
                            Ok::<_, std::convert::Infallible>(body_of(handle(req, peer, &log, files.as_deref()).await))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    /// The same echo over plain HTTP/1.1.
    pub(crate) async fn start_plain(ip: &str) -> Upstream {
        let listener =
            tokio::net::TcpListener::bind((ip.parse::<IpAddr>().expect("ip"), 0)).await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { continue };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move { Ok::<_, std::convert::Infallible>(body_of(handle(req, peer, &log, None).await)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A response's body as the upstream sends it: whole, or for
/// `/api/trailers` ([`Trailing`]) as data then trailers.
type AnyBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// The upstream's answer to send: `handle`'s, or one with trailers.
enum Reply {
    Whole(Response<Full<Bytes>>),
    Trailing(Response<AnyBody>),
}

impl From<Response<Full<Bytes>>> for Reply {
    fn from(r: Response<Full<Bytes>>) -> Reply {
        Reply::Whole(r)
    }
}

fn body_of(r: Reply) -> Response<AnyBody> {
    match r {
        Reply::Whole(r) => r.map(BodyExt::boxed),
        Reply::Trailing(r) => r,
    }
}

/// A chunked response whose trailer hands back the request's `x-api-key`
/// and whose body ends in the key's first bytes (so a redactor holds its
/// tail back until the end).
fn trailing(headers: &BTreeMap<String, String>) -> Reply {
    let key = headers.get("x-api-key").cloned().unwrap_or_default();
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("x-echo-trailer", key.parse().expect("h"));
    let frames = Frames(
        [
            hyper::body::Frame::data(Bytes::from(format!("body-start {}", &key[..6]))),
            hyper::body::Frame::trailers(trailers),
        ]
        .into(),
    );
    let mut r = Response::new(BodyExt::boxed(frames));
    r.headers_mut().insert("trailer", "x-echo-trailer".parse().expect("h"));
    Reply::Trailing(r)
}

/// A body of the frames given, in order.
struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    log: &Arc<Mutex<Vec<Seen>>>,
    files: Option<&Path>,
) -> Reply {
    if req.uri().path() == "/api/trailers" {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        return trailing(&headers);
    }
    handle_whole(req, peer, log, files).await.into()
}

async fn handle_whole(
    mut req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    log: &Arc<Mutex<Vec<Seen>>>,
    files: Option<&Path>,
) -> Response<Full<Bytes>> {
    if req.headers().get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        return websocket_echo(&mut req, peer, log.clone());
    }
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
    if path.starts_with("/api/reflect") {
        return reflect(&headers, &path);
    }
    let json = serde_json::json!({ "method": method, "path": path, "version": version, "headers": headers, "body_len": body_len, "peer": peer.to_string() });
    let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
    r.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    r
}

/// What a careless debugging endpoint does: hands the request's
/// `x-api-key` back in a header, as a header's name, split across two headers, in the status
/// line's reason phrase (HTTP/1), raw and base64 in the body;
/// gzip-compressed when the path ends in `gz`.
fn reflect(headers: &BTreeMap<String, String>, path: &str) -> Response<Full<Bytes>> {
    use base64::Engine;
    let key = headers.get("x-api-key").cloned().unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{key}"));
    let body = format!("{{\"raw\": \"{key}\", \"basic\": \"{b64}\"}}\n");
    let (a, b) = key.split_at(key.len() / 2);
    let mut r = if path.ends_with("gz") {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body.as_bytes()).expect("gzip");
        let mut r = Response::new(Full::new(Bytes::from(e.finish().expect("gzip"))));
        r.headers_mut().insert("content-encoding", "gzip".parse().expect("h"));
        r
    } else {
        Response::new(Full::new(Bytes::from(body)))
    };
    let reason = hyper::ext::ReasonPhrase::try_from(format!("OK {key}").into_bytes()).expect("reason phrase");
    r.extensions_mut().insert(reason);
    let h = r.headers_mut();
    h.insert("x-echo", key.parse().expect("h"));
    h.insert(
        hyper::header::HeaderName::from_bytes(format!("x-{key}").as_bytes()).expect("name"),
        "1".parse().expect("h"),
    );
    h.insert("x-part-a", a.parse().expect("h"));
    h.insert("x-part-b", b.parse().expect("h"));
    r
}

/// The proxy under test, serving on its own runtime.
pub(crate) struct Harness {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) pki: TestPki,
    pub(crate) proxy: Option<Proxy>,
    pub(crate) proxy_addr: SocketAddr,
    pub(crate) limits: bot_bottle_sidecars::Limits,
    /// Whether the proxy serves a supervised bottle (denials name `request_egress`).
    pub(crate) supervise: bool,
    /// Tokens renewed while the proxy runs, by env name.
    pub(crate) live: Vec<(String, bot_bottle_sidecars::LiveToken)>,
}

pub(crate) const TOKEN: &str = "real-token-7f3c9a1e5b2d4c6f8a0b";

impl Harness {
    pub(crate) fn new() -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path());
        Harness {
            rt,
            dir,
            pki,
            proxy: None,
            proxy_addr: "127.0.0.1:0".parse().expect("addr"),
            limits: bot_bottle_sidecars::Limits::default(),
            supervise: false,
            live: Vec::new(),
        }
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
            live: self.live.clone(),
            routes_file: Some(".bot-bottle/bottles/test.yaml".into()),
            limits: self.limits.clone(),
            supervise: self.supervise,
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

/// Accepts a WebSocket upgrade and echoes each message back; every message
/// received is recorded as a `Seen` with path `ws:`.
fn websocket_echo(
    req: &mut Request<hyper::body::Incoming>,
    peer: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Response<Full<Bytes>> {
    let key = req.headers().get("sec-websocket-key").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
    let greeting = req.headers().get("x-api-key").map(|v| v.as_bytes().to_vec());
    let extensions =
        req.headers().get("sec-websocket-extensions").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut input = key;
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sha1(&input));
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(up) = upgrade.await else { return };
        let mut io = TokioIo::new(up);
        if let Some(g) = greeting {
            // A server that greets with what it was sent: the injected token.
            let mut frame = vec![0x81, g.len() as u8];
            frame.extend_from_slice(&g);
            if io.write_all(&frame).await.is_err() {
                return;
            }
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 6 {
                let len = (buf[1] & 0x7f) as usize; // tests send short frames
                if buf.len() < 6 + len {
                    break;
                }
                let mask = [buf[2], buf[3], buf[4], buf[5]];
                let payload: Vec<u8> = buf[6..6 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
                let opcode = buf[0] & 0x0f;
                buf.drain(..6 + len);
                log.lock().expect("lock").push(Seen {
                    path: "ws:".into(),
                    headers: BTreeMap::new(),
                    body: payload.clone(),
                    peer,
                });
                if opcode == 8 {
                    return;
                }
                let mut frame = vec![0x80 | opcode, payload.len() as u8];
                frame.extend_from_slice(&payload);
                if io.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert("connection", "upgrade".parse().expect("h"));
    r.headers_mut().insert("upgrade", "websocket".parse().expect("h"));
    r.headers_mut().insert("sec-websocket-accept", accept.parse().expect("h"));
    if let Some(e) = extensions {
        // A real server would accept compression if offered; the proxy must not let it be offered.
        r.headers_mut().insert("x-offered-extensions", e.parse().expect("h"));
    }
    r
}

/// SHA-1, for the WebSocket handshake only.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64) * 8;
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[test]
fn sha1_known_answer() {
    let hex: String = sha1(b"abc").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
}
