//! The egress proxy.
//!
//! Flow for HTTPS: the client sends `CONNECT host:port`; the proxy refuses
//! it unless a route names that host and port, answers 200, then requires a
//! TLS ClientHello whose SNI (if any) is the CONNECT host, and terminates
//! TLS with a leaf from the bottle CA. Each request inside must name the
//! same host in `Host`, must pass the route's methods and paths, is scanned
//! (request line, headers, body) by the detector, gets its token injected,
//! and only then goes upstream. Plain HTTP arrives in absolute form and
//! follows the same checks without TLS. Everything else is refused.

mod audit;
mod body;
mod ca;
mod guard;
mod policy;
mod upstream;
mod websocket;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bot_bottle_detect::Detector;
use bot_bottle_manifest::{DlpMode, Egress, Route, TlsMode};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

pub use ca::Ca;
pub use policy::Policy;

use audit::{Audit, Record};
use body::{Counted, Verdict, scan_body};
use guard::{normalize_host, split_authority};
use policy::{Denial, Scheme, deny};
use upstream::{
    ProxyBody, Sender, UpstreamError, connect_plain, connect_raw, connect_tls, connect_upgradable, resolve_checked,
};

/// The one crypto provider for every TLS config here.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not safe to use: {why}", path.display())]
    Insecure { path: PathBuf, why: String },
    #[error("certificate: {0}")]
    Cert(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("route {route} injects ${env}, which is not set in the proxy's environment")]
    MissingToken { route: String, env: String },
    #[error("route {route}: the value of ${env} cannot be sent in a header")]
    BadToken { route: String, env: String },
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl ProxyError {
    pub(crate) fn cert(e: impl std::fmt::Display) -> ProxyError {
        ProxyError::Cert(e.to_string())
    }

    pub(crate) fn tls(e: impl std::fmt::Display) -> ProxyError {
        ProxyError::Tls(e.to_string())
    }
}

/// Reads one host environment variable.
pub type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Everything a proxy needs to start.
pub struct ProxyConfig {
    /// The bottle's name, for the CA's name and the audit log.
    pub bottle: String,
    /// Where the CA lives (created if missing).
    pub state_dir: PathBuf,
    pub egress: Egress,
    /// An extra CA file to trust for upstreams (tests, corporate CAs).
    pub upstream_ca: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    /// Reads a host environment variable. Called for injected tokens when
    /// the proxy starts and when routes change; values stay in the proxy.
    pub env: EnvLookup,
    /// Other secret values the bottle knows (by name), blocked by DLP too.
    pub known_secrets: Vec<(String, String)>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("bottle", &self.bottle)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// The live state a request reads: replaced whole by [`Proxy::set_egress`].
struct Live {
    policy: Arc<Policy>,
    /// Env name -> header value, formatted.
    tokens: Arc<HashMap<String, String>>,
    detector: Arc<LazyDetector>,
}

/// The detector, compiled on a thread of its own: compiling the rules takes
/// tens of milliseconds, which need not delay a bottle's start. A request
/// that arrives first waits for it; none is ever scanned by less.
struct LazyDetector(std::sync::OnceLock<Arc<Detector>>);

impl LazyDetector {
    fn spawn(known: Vec<(String, String)>) -> Arc<LazyDetector> {
        let lazy = Arc::new(LazyDetector(std::sync::OnceLock::new()));
        let l = lazy.clone();
        std::thread::spawn(move || {
            let _ = l.0.set(Arc::new(Detector::builtin().with_known(known)));
        });
        lazy
    }

    fn get(&self) -> Arc<Detector> {
        self.0.wait().clone()
    }
}

struct Inner {
    bottle: String,
    live: RwLock<Live>,
    env: EnvLookup,
    known: Vec<(String, String)>,
    ca: Ca,
    upstream_tls: Arc<ClientConfig>,
    /// HTTP/1.1 only, for WebSocket upgrades.
    upstream_tls_h1: Arc<ClientConfig>,
    audit: Audit,
}

/// A running egress proxy. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("bottle", &self.inner.bottle).finish_non_exhaustive()
    }
}

impl Proxy {
    /// Loads or creates the CA, reads injected tokens (failing if any is
    /// unset), and prepares the upstream TLS client.
    pub fn new(cfg: ProxyConfig) -> Result<Proxy, ProxyError> {
        let ca = Ca::load_or_create(&cfg.state_dir, &cfg.bottle)?;
        let client = upstream_client(cfg.upstream_ca.as_deref())?;
        let mut h1 = client.clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let upstream_tls = Arc::new(client);
        let upstream_tls_h1 = Arc::new(h1);
        let audit = Audit::open(cfg.audit_log.as_deref())
            .map_err(|source| ProxyError::Io { path: cfg.audit_log.clone().unwrap_or_default(), source })?;
        let live = build_live(&cfg.egress, &*cfg.env, &cfg.known_secrets)?;
        Ok(Proxy {
            inner: Arc::new(Inner {
                bottle: cfg.bottle,
                live: RwLock::new(live),
                env: cfg.env,
                known: cfg.known_secrets,
                ca,
                upstream_tls,
                upstream_tls_h1,
                audit,
            }),
        })
    }

    /// The CA certificate to put in the sandbox's trust store.
    pub fn ca_cert_path(&self) -> &Path {
        self.inner.ca.cert_path()
    }

    /// Replaces the route set at runtime. Connections in flight keep going;
    /// every request after this is checked against the new routes. Fails,
    /// changing nothing, if a new route injects a token that is not set.
    pub fn set_egress(&self, egress: &Egress) -> Result<(), ProxyError> {
        let live = build_live(egress, &*self.inner.env, &self.inner.known)?;
        if let Ok(mut l) = self.inner.live.write() {
            *l = live;
        }
        Ok(())
    }

    /// The routes in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner.policy()
    }

    pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
        TcpListener::bind(addr).await.map_err(|source| ProxyError::Listen { addr, source })
    }

    /// Serves clients from `listener` until the task is dropped.
    pub async fn serve(&self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    self.spawn_conn(stream);
                }
                // Out of descriptors or similar: back off, keep serving.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// Serves clients from a unix socket: how a bottle's forwarder reaches
    /// its proxy without any host port.
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => self.spawn_conn(stream),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn spawn_conn<S>(&self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(inner.outer(req).await) }
            });
            let _ = server_http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
        });
    }
}

fn build_live(
    egress: &Egress,
    env: &dyn Fn(&str) -> Option<String>,
    known: &[(String, String)],
) -> Result<Live, ProxyError> {
    let mut tokens = HashMap::new();
    let mut secrets: Vec<(String, String)> = known.to_vec();
    for r in &egress.routes {
        let Some(inj) = &r.inject else { continue };
        let name = inj.env.as_str();
        let value = env(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ProxyError::MissingToken { route: r.host.to_string(), env: name.to_owned() })?;
        let formatted = inj.format.replacen("{}", &value, 1);
        if HeaderValue::from_str(&formatted).is_err() {
            return Err(ProxyError::BadToken { route: r.host.to_string(), env: name.to_owned() });
        }
        tokens.insert(name.to_owned(), formatted);
        secrets.push((name.to_owned(), value));
    }
    Ok(Live {
        policy: Arc::new(Policy::new(egress.routes.clone(), egress.dlp)),
        tokens: Arc::new(tokens),
        detector: LazyDetector::spawn(secrets),
    })
}

fn upstream_client(extra_ca: Option<&Path>) -> Result<ClientConfig, ProxyError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(p) = extra_ca {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(p)
            .map_err(|e| ProxyError::Cert(format!("{}: {e}", p.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| ProxyError::Cert(format!("{}: {e}", p.display())))?;
        if certs.is_empty() {
            return Err(ProxyError::Cert(format!("{}: no certificates in file", p.display())));
        }
        for c in certs {
            roots.add(c).map_err(|e| ProxyError::Cert(format!("{}: {e}", p.display())))?;
        }
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(ProxyError::tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(Empty::new().map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = status;
    r
}

/// What a request is, for the audit log and for denials.
struct Ctx {
    method: String,
    host: String,
    port: u16,
    path: String,
    tls: &'static str,
    started: Instant,
}

/// Hop-by-hop headers: meaningful for one connection only, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

impl Inner {
    fn policy(&self) -> Arc<Policy> {
        self.live.read().map(|l| l.policy.clone()).unwrap_or_else(|p| p.into_inner().policy.clone())
    }

    fn snapshot(&self) -> (Arc<Policy>, Arc<HashMap<String, String>>, Arc<Detector>) {
        let l = self.live.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (l.policy.clone(), l.tokens.clone(), l.detector.get())
    }

    fn record(&self, c: &Ctx, decision: &str, d: Option<&Denial>, status: u16, up: u64, down: u64) {
        // The path goes to the log only if nothing secret-looking is in it.
        let (_, _, det) = self.snapshot();
        let path = if det.any(c.path.as_bytes()) { "[redacted]" } else { c.path.as_str() };
        self.audit.write(&Record {
            time: audit::now(),
            bottle: &self.bottle,
            method: &c.method,
            host: &c.host,
            port: c.port,
            path,
            decision,
            rule: d.map(|d| d.rule),
            reason: d.map(|d| d.reason.as_str()),
            status,
            bytes_up: up,
            bytes_down: down,
            duration_ms: c.started.elapsed().as_secs_f64() * 1000.0,
            tls: c.tls,
        });
    }

    fn denied(&self, c: &Ctx, d: Denial) -> Response<ProxyBody> {
        self.record(c, "deny", Some(&d), 403, 0, 0);
        let body = format!(
            "bot-bottle egress proxy: request denied\n\
             host: {}:{}\n\
             rule: {}\n\
             reason: {}\n\
             to allow it, add or widen a route in the bottle's egress.routes \
             (or, in a supervised bottle, ask for it with the supervise MCP tool `request_egress`)\n",
            c.host, c.port, d.rule, d.reason
        );
        text(StatusCode::FORBIDDEN, body)
    }

    fn failed(&self, c: &Ctx, why: String) -> Response<ProxyBody> {
        let d = deny("upstream", why.clone());
        self.record(c, "error", Some(&d), 502, 0, 0);
        text(
            StatusCode::BAD_GATEWAY,
            format!("bot-bottle egress proxy: upstream failed\nhost: {}:{}\nreason: {why}\n", c.host, c.port),
        )
    }

    async fn outer(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.connect(req);
        }
        if req.uri().scheme_str() == Some("http") {
            return self.plain(req).await;
        }
        text(
            StatusCode::BAD_REQUEST,
            "bot-bottle egress proxy: send absolute-form http:// requests or CONNECT for https\n".into(),
        )
    }

    fn connect(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let authority = req.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let Some((host, port)) = split_authority(&authority, 443) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("bot-bottle egress proxy: bad CONNECT target `{authority}`\n"),
            );
        };
        let c = Ctx {
            method: "CONNECT".into(),
            host: host.clone(),
            port,
            path: String::new(),
            tls: "inspect",
            started: Instant::now(),
        };
        let policy = self.policy();
        let Some(route) = policy.route_for(&host, port, Scheme::Https).cloned() else {
            return self.denied(&c, deny("host", format!("no route allows {host}:{port}")));
        };
        let inner = self.clone();
        tokio::spawn(async move {
            if let Ok(up) = hyper::upgrade::on(req).await {
                inner.tunnel(TokioIo::new(up), host, port, route).await;
            }
        });
        empty(StatusCode::OK)
    }

    async fn tunnel(self: Arc<Self>, io: TokioIo<hyper::upgrade::Upgraded>, host: String, port: u16, route: Route) {
        let started = Instant::now();
        let c = |tls| Ctx { method: "CONNECT".into(), host: host.clone(), port, path: String::new(), tls, started };
        if route.tls == TlsMode::Passthrough {
            self.passthrough(io, &host, port, &route, c("passthrough")).await;
            return;
        }
        // Anything but a TLS ClientHello closes the connection: never a raw tunnel.
        let start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await {
            Ok(s) => s,
            Err(e) => {
                let d = deny("not-tls", format!("bytes after CONNECT were not an acceptable TLS ClientHello: {e}"));
                self.record(&c("inspect"), "deny", Some(&d), 0, 0, 0);
                return;
            }
        };
        if let Some(sni) = start.client_hello().server_name().map(normalize_host)
            && sni != host
        {
            self.record(
                &c("inspect"),
                "deny",
                Some(&deny("sni-mismatch", format!("TLS SNI {sni} is not the CONNECT host {host}"))),
                0,
                0,
                0,
            );
            return;
        }
        let Ok(cfg) = self.ca.server_config(&host) else { return };
        let Ok(tls) = start.into_stream(cfg).await else { return };
        let tunnel = Arc::new(Tunnel { host, port, upstream: tokio::sync::Mutex::new(None) });
        let inner = self.clone();
        let svc = service_fn(move |req| {
            let inner = inner.clone();
            let t = tunnel.clone();
            async move { Ok::<_, Infallible>(inner.inside(t, req).await) }
        });
        let _ = server_http1::Builder::new().serve_connection(TokioIo::new(tls), svc).with_upgrades().await;
    }

    /// `tls: passthrough`: check that the client speaks TLS to the CONNECT
    /// host (the SNI, when sent, must match), then copy bytes both ways.
    async fn passthrough(
        &self,
        mut io: TokioIo<hyper::upgrade::Upgraded>,
        host: &str,
        port: u16,
        route: &Route,
        c: Ctx,
    ) {
        let mut head = vec![0u8; 5];
        if io.read_exact(&mut head).await.is_err() || head[0] != 0x16 {
            self.record(&c, "deny", Some(&deny("not-tls", "bytes after CONNECT were not a TLS ClientHello")), 0, 0, 0);
            return;
        }
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        let mut rec = vec![0u8; len];
        if io.read_exact(&mut rec).await.is_err() {
            return;
        }
        if let Some(sni) = client_hello_sni(&rec).map(|s| normalize_host(&s))
            && sni != host
        {
            self.record(
                &c,
                "deny",
                Some(&deny("sni-mismatch", format!("TLS SNI {sni} is not the CONNECT host {host}"))),
                0,
                0,
                0,
            );
            return;
        }
        let addr = match resolve_checked(host, port, route).await {
            Ok(a) => a,
            Err(UpstreamError::Denied(d)) => return self.record(&c, "deny", Some(&d), 0, 0, 0),
            Err(UpstreamError::Failed(why)) => return self.record(&c, "error", Some(&deny("upstream", why)), 0, 0, 0),
        };
        let Ok(mut up) = connect_raw(addr).await else {
            return self.record(&c, "error", Some(&deny("upstream", format!("cannot connect to {addr}"))), 0, 0, 0);
        };
        head.extend_from_slice(&rec);
        if up.write_all(&head).await.is_err() {
            return;
        }
        let (a, b) = tokio::io::copy_bidirectional(&mut io, &mut up).await.unwrap_or((0, 0));
        self.record(&c, "allow", None, 0, a + head.len() as u64, b);
    }

    async fn inside(self: Arc<Self>, t: Arc<Tunnel>, req: Request<Incoming>) -> Response<ProxyBody> {
        let path_q = req.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let c = Ctx {
            method: req.method().as_str().to_owned(),
            host: t.host.clone(),
            port: t.port,
            path: path_q.split('?').next().unwrap_or_default().to_owned(),
            tls: "inspect",
            started: Instant::now(),
        };
        // Host header (and any absolute-form authority) must be the CONNECT target.
        let host_hdr = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
        for claimed in host_hdr.into_iter().chain(req.uri().authority().map(|a| a.as_str())) {
            if split_authority(claimed, 443) != Some((t.host.clone(), t.port)) {
                return self.denied(
                    &c,
                    deny("host-mismatch", format!("Host `{claimed}` is not the CONNECT target {}:{}", t.host, t.port)),
                );
            }
        }
        if host_hdr.is_none() {
            return self.denied(&c, deny("host-mismatch", "request has no Host header"));
        }
        self.forward(req, c, path_q, Scheme::Https, Some(t)).await
    }

    async fn plain(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let authority = req.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let path_q = req.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let Some((host, port)) = split_authority(&authority, 80) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("bot-bottle egress proxy: bad request target `{authority}`\n"),
            );
        };
        let c = Ctx {
            method: req.method().as_str().to_owned(),
            host: host.clone(),
            port,
            path: path_q.split('?').next().unwrap_or_default().to_owned(),
            tls: "none",
            started: Instant::now(),
        };
        if let Some(h) = req.headers().get(header::HOST).and_then(|v| v.to_str().ok())
            && split_authority(h, 80) != Some((host.clone(), port))
        {
            return self
                .denied(&c, deny("host-mismatch", format!("Host `{h}` is not the request target {host}:{port}")));
        }
        self.forward(req, c, path_q, Scheme::Http, None).await
    }

    /// The checks every request passes, then the trip upstream.
    async fn forward(
        self: Arc<Self>,
        req: Request<Incoming>,
        c: Ctx,
        path_q: String,
        scheme: Scheme,
        tunnel: Option<Arc<Tunnel>>,
    ) -> Response<ProxyBody> {
        let (policy, tokens, det) = self.snapshot();
        let Some(route) = policy.route_for(&c.host, c.port, scheme).cloned() else {
            return self.denied(&c, deny("host", format!("no route allows {}:{}", c.host, c.port)));
        };
        if let Err(d) = Policy::check_request(&route, &c.method, &path_q) {
            return self.denied(&c, d);
        }
        let upgrade = req.headers().get(header::UPGRADE).map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
        match upgrade.as_deref() {
            None => {}
            Some("websocket") if route.websocket => {}
            Some("websocket") => {
                return self.denied(&c, deny("upgrade", "websocket needs `websocket: true` on the route"));
            }
            Some(other) => {
                return self.denied(&c, deny("upgrade", format!("protocol upgrade to `{other}` is never forwarded")));
            }
        }
        let inject = route.inject.as_ref().and_then(|i| {
            let v = tokens.get(i.env.as_str())?;
            Some((HeaderName::from_bytes(i.header.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
        });
        if scheme == Scheme::Http && inject.is_some() {
            return self
                .denied(&c, deny("inject-plaintext", "this route injects a token; it is never sent over plain http"));
        }
        // DLP on the request line and headers. The header the proxy
        // replaces is not scanned: whatever the agent put there never leaves.
        let block = policy.dlp == DlpMode::Block;
        let mut head = format!("{} {} HTTP/1.1\r\n", c.method, path_q).into_bytes();
        head.extend_from_slice(&percent_decode(path_q.as_bytes()));
        head.extend_from_slice(b"\r\n");
        for (name, value) in req.headers() {
            if inject.as_ref().is_some_and(|(n, _)| n == name) {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let mut logged: Vec<String> = Vec::new();
        if let Some(f) = det.scan(&head).into_iter().next() {
            if block {
                return self.denied(&c, deny("dlp", format!("request line or headers hold a secret ({})", f.rule)));
            }
            logged.push(f.rule);
        }
        if upgrade.is_some() {
            return self.websocket(req, c, &path_q, &route, inject, det, block).await;
        }
        let encoding: Vec<String> = req
            .headers()
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty() && s != "identity")
            .collect();
        let (parts, incoming) = req.into_parts();
        let mut headers = parts.headers;
        // Framing is redone upstream: a Content-Length that came with
        // Transfer-Encoding describes nothing we forward, and must not reach
        // a server that might believe it (request smuggling).
        if headers.contains_key(header::TRANSFER_ENCODING) {
            headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(&mut headers);
        let (fwd_body, mut verdict, up_count) = if hyper::body::Body::is_end_stream(&incoming) {
            // No body: nothing to scan, and nothing to frame as chunked.
            let (_tx, rx) = tokio::sync::oneshot::channel();
            (
                Empty::new().map_err(|e: Infallible| match e {}).boxed(),
                rx,
                Arc::new(std::sync::atomic::AtomicU64::new(0)),
            )
        } else {
            let (b, v, n) = scan_body(incoming, encoding, det, block);
            (b.boxed(), v, n)
        };
        if let Some((name, mut value)) = inject {
            value.set_sensitive(true);
            headers.remove(&name);
            headers.insert(name, value);
        }
        let resp = {
            let send = self.send_upstream(&c, &route, tunnel.as_deref(), parts.method, &path_q, headers, fwd_body);
            tokio::pin!(send);
            let mut verdict_open = true;
            loop {
                tokio::select! {
                    r = &mut send => break r,
                    v = &mut verdict, if verdict_open => match v {
                        Ok(Verdict::Blocked(d)) => return self.denied(&c, d),
                        Ok(Verdict::Logged(rules)) => { logged.extend(rules); verdict_open = false; }
                        Err(_) => verdict_open = false,
                    },
                }
            }
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                // The body may have been refused while the upstream was reading it.
                if let Ok(Verdict::Blocked(d)) = verdict.try_recv() {
                    return self.denied(&c, d);
                }
                return match e {
                    UpstreamError::Denied(d) => self.denied(&c, d),
                    UpstreamError::Failed(why) => self.failed(&c, why),
                };
            }
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let status = parts.status.as_u16();
        let inner = self.clone();
        let rule = if logged.is_empty() { None } else { Some(format!("dlp-log: {}", logged.join(", "))) };
        let done = Box::new(move |down: u64| {
            let d = rule.map(|r| Denial { rule: "dlp-log", reason: r });
            inner.record(&c, "allow", d.as_ref(), status, up_count.load(Ordering::Relaxed), down);
        });
        Response::from_parts(parts, Counted::new(body, done).boxed())
    }

    /// Relays a WebSocket upgrade on a dedicated HTTP/1.1 upstream connection.
    #[expect(clippy::too_many_arguments, reason = "one request's parts, passed once")]
    async fn websocket(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        c: Ctx,
        path_q: &str,
        route: &Route,
        inject: Option<(HeaderName, HeaderValue)>,
        det: Arc<Detector>,
        block: bool,
    ) -> Response<ProxyBody> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // Compressed frames could not be scanned: negotiate none.
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Some((name, mut value)) = inject {
            value.set_sensitive(true);
            headers.remove(&name);
            headers.insert(name, value);
        }
        let addr = match resolve_checked(&c.host, c.port, route).await {
            Ok(a) => a,
            Err(UpstreamError::Denied(d)) => return self.denied(&c, d),
            Err(UpstreamError::Failed(why)) => return self.failed(&c, why),
        };
        let tls = (c.tls == "inspect").then_some(&self.upstream_tls_h1);
        let mut sender = match connect_upgradable(tls, &c.host, addr).await {
            Ok(s) => s,
            Err(UpstreamError::Denied(d)) => return self.denied(&c, d),
            Err(UpstreamError::Failed(why)) => return self.failed(&c, why),
        };
        let body = Empty::new().map_err(|e: Infallible| match e {}).boxed();
        let Ok(up_req) = build(parts.method, path_q.parse().unwrap_or_default(), headers, body) else {
            return self.failed(&c, "bad request".into());
        };
        let mut resp = match sender.send_request(up_req).await {
            Ok(r) => r,
            Err(e) => return self.failed(&c, format!("upstream: {e}")),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            self.record(&c, "allow", None, status, 0, 0);
            let (parts, body) = resp.into_parts();
            return Response::from_parts(parts, body.map_err(|e| -> body::BoxError { Box::new(e) }).boxed());
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        let inner = self.clone();
        tokio::spawn(async move {
            let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else { return };
            let out = websocket::relay(client, upstream, det, block).await;
            match out.denial {
                Some(d) => inner.record(&c, "deny", Some(&d), 101, out.up, out.down),
                None if !out.logged.is_empty() => {
                    let d = Denial { rule: "dlp-log", reason: format!("dlp-log: {}", out.logged.join(", ")) };
                    inner.record(&c, "allow", Some(&d), 101, out.up, out.down);
                }
                None => inner.record(&c, "allow", None, 101, out.up, out.down),
            }
        });
        Response::from_parts(parts, Empty::new().map_err(|e: Infallible| match e {}).boxed())
    }

    #[expect(clippy::too_many_arguments, reason = "one request's parts, passed once")]
    async fn send_upstream(
        &self,
        c: &Ctx,
        route: &Route,
        tunnel: Option<&Tunnel>,
        method: Method,
        path_q: &str,
        headers: HeaderMap,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let Some(t) = tunnel else {
            let addr = resolve_checked(&c.host, c.port, route).await?;
            let mut s = connect_plain(&c.host, addr).await?;
            let req = build(method, path_q.parse().unwrap_or_default(), headers, body)?;
            return s.send(req).await.map_err(|e| UpstreamError::Failed(format!("upstream: {e}")));
        };
        let mut slot = t.upstream.lock().await;
        let usable = match slot.as_mut() {
            Some(s) => s.ready().await,
            None => false,
        };
        if !usable {
            let addr = resolve_checked(&t.host, t.port, route).await?;
            *slot = Some(connect_tls(&self.upstream_tls, &t.host, addr).await?);
        }
        let Some(s) = slot.as_mut() else { return Err(UpstreamError::Failed("no upstream connection".into())) };
        let uri: Uri = if s.is_h2() {
            let auth = if t.port == 443 { t.host.clone() } else { format!("{}:{}", t.host, t.port) };
            let auth = if t.host.contains(':') { format!("[{}]:{}", t.host, t.port) } else { auth };
            format!("https://{auth}{path_q}").parse().map_err(|_| UpstreamError::Failed("bad request URI".into()))?
        } else {
            path_q.parse().map_err(|_| UpstreamError::Failed("bad request URI".into()))?
        };
        let mut headers = headers;
        if s.is_h2() {
            headers.remove(header::HOST);
        }
        let req = build(method, uri, headers, body)?;
        match s {
            Sender::H2(h2) => {
                let mut h2 = Sender::H2(h2.clone());
                drop(slot);
                h2.send(req).await.map_err(|e| UpstreamError::Failed(format!("upstream: {e}")))
            }
            Sender::H1(_) => s.send(req).await.map_err(|e| UpstreamError::Failed(format!("upstream: {e}"))),
        }
    }
}

fn build(method: Method, uri: Uri, headers: HeaderMap, body: ProxyBody) -> Result<Request<ProxyBody>, UpstreamError> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// One CONNECT tunnel: its target, and one upstream connection reused for
/// every request inside it (keep-alive end to end).
struct Tunnel {
    host: String,
    port: u16,
    upstream: tokio::sync::Mutex<Option<Sender>>,
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let (Some(h), Some(l)) =
                ((s[i + 1] as char).to_digit(16), s.get(i + 2).and_then(|b| (*b as char).to_digit(16)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else if s[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// The SNI of a TLS ClientHello record body (after the 5-byte header).
fn client_hello_sni(rec: &[u8]) -> Option<String> {
    // handshake type(1) len(3) version(2) random(32)
    let mut p = 4 + 2 + 32;
    let sid = *rec.get(p)? as usize;
    p += 1 + sid;
    let cs = u16::from_be_bytes([*rec.get(p)?, *rec.get(p + 1)?]) as usize;
    p += 2 + cs;
    let cm = *rec.get(p)? as usize;
    p += 1 + cm;
    let ext_len = u16::from_be_bytes([*rec.get(p)?, *rec.get(p + 1)?]) as usize;
    p += 2;
    let end = (p + ext_len).min(rec.len());
    while p + 4 <= end {
        let ty = u16::from_be_bytes([rec[p], rec[p + 1]]);
        let len = u16::from_be_bytes([rec[p + 2], rec[p + 3]]) as usize;
        p += 4;
        if ty == 0 {
            // server_name list: len(2) type(1) name_len(2) name
            let name_len = u16::from_be_bytes([*rec.get(p + 3)?, *rec.get(p + 4)?]) as usize;
            let name = rec.get(p + 5..p + 5 + name_len)?;
            return String::from_utf8(name.to_vec()).ok();
        }
        p += len;
    }
    None
}
