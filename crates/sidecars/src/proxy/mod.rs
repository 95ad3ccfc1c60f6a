//! The egress proxy.
//!
//! Flow for HTTPS: the client sends `CONNECT host:port`; the proxy answers
//! 200, then requires a TLS ClientHello whose SNI (if any) is the CONNECT
//! host, and terminates TLS with a leaf from the bottle CA. When no route
//! names the host, nothing is dialled: every request in the tunnel gets a
//! 403 that says why and how to ask for access (a 403 on the CONNECT itself
//! is shown by most clients as an opaque tunnel failure). Each request
//! inside must carry exactly one `Host`, naming the CONNECT target; its
//! hop-by-hop headers are dropped before any check; it must pass the
//! route's methods and (normalised) paths, is scanned (request line,
//! headers, body) by the detector, gets its token injected, and only then
//! goes upstream. The response is scanned for the bottle's known secrets
//! on its way back. Plain HTTP arrives in absolute form and follows the
//! same checks without TLS. Everything else is refused.

mod audit;
mod body;
mod ca;
mod deny;
mod forward;
mod guard;
mod limits;
mod path;
mod policy;
mod response;
mod upstream;
mod websocket;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bot_bottle_detect::Detector;
use bot_bottle_manifest::{Egress, Route, TlsMode};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

use crate::lazy::Lazy;
use crate::renew::LiveToken;
pub use ca::Ca;
pub use limits::Limits;
pub use policy::Policy;

use audit::{Audit, Record};
use guard::{normalize_host, split_authority};
use limits::Gates;
use policy::{Denial, Scheme, deny};
use upstream::{ProxyBody, Sender, UpstreamError, connect_raw, resolve_checked};

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
    /// Tokens the host renews while the proxy runs, by the name routes
    /// inject them by: asked for their value on every request, in place
    /// of `env`.
    pub live: Vec<(String, LiveToken)>,
    /// Where the routes come from (the bottle file), named in denials so
    /// the agent can say what to add.
    pub routes_file: Option<String>,
    pub limits: Limits,
    /// The bottle has supervise: denials tell the agent to ask for access
    /// with its `request_egress` tool.
    pub supervise: bool,
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
    /// Env name -> what is injected.
    tokens: Arc<HashMap<String, Injected>>,
    detector: Arc<LazyDetector>,
    /// What the detector was built from, for [`Proxy::learn_secret`].
    secrets: Vec<(String, String)>,
}

/// A token a route injects.
pub(crate) enum Injected {
    /// Read once (when the routes were set), formatted.
    Fixed(HeaderValue),
    /// Renewed by the host: its current value, formatted per request.
    Renewed { token: LiveToken, format: String },
}

impl Injected {
    /// The header value to send, or why there is none to send.
    pub(crate) fn value(&self, env: &str) -> Result<HeaderValue, String> {
        match self {
            Injected::Fixed(v) => Ok(v.clone()),
            Injected::Renewed { token, format } => {
                let cur = token.current();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                if cur.expires.is_some_and(|e| e <= now) {
                    // Why the renewal failed (host paths, the endpoint) is
                    // for the host: the launcher's stderr and the audit log.
                    let why = if cur.failure.is_some() { "could not be renewed" } else { "was not renewed in time" };
                    return Err(format!(
                        "the host's login for ${env} has expired and {why}; run `codex login` on the host: \
                         the bottle picks the new login up at its next renewal attempt"
                    ));
                }
                HeaderValue::from_str(&format.replacen("{}", &cur.value, 1))
                    .map_err(|_| format!("the host's renewed ${env} cannot be sent in a header"))
            }
        }
    }
}

/// The two detectors a request needs: the full rule set plus the known
/// secrets for what goes out, the known secrets alone for what comes back.
pub(crate) struct Detectors {
    pub(crate) request: Arc<Detector>,
    pub(crate) response: Arc<Detector>,
}

/// The detectors, built off the start's path (see [`Lazy`]); none is ever
/// scanned by less, and a build that fails answers every request with a 503.
type LazyDetector = Lazy<Detectors>;

fn spawn_detectors(known: Vec<(String, String)>) -> Arc<LazyDetector> {
    Arc::new(Lazy::spawn(move || {
        let response = Arc::new(Detector::known_only(known.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))));
        Detectors { request: Arc::new(Detector::builtin().with_known(known)), response }
    }))
}

struct Inner {
    bottle: String,
    live: RwLock<Live>,
    env: EnvLookup,
    known: std::sync::Mutex<Vec<(String, String)>>,
    live_tokens: Vec<(String, LiveToken)>,
    ca: Ca,
    upstream_tls: Arc<ClientConfig>,
    /// HTTP/1.1 only, for WebSocket upgrades.
    upstream_tls_h1: Arc<ClientConfig>,
    audit: Audit,
    gates: Arc<Gates>,
    hint: deny::Hint,
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
        let live = build_live(&cfg.egress, &*cfg.env, &cfg.live, &cfg.known_secrets)?;
        Ok(Proxy {
            inner: Arc::new(Inner {
                bottle: cfg.bottle,
                live: RwLock::new(live),
                env: cfg.env,
                known: std::sync::Mutex::new(cfg.known_secrets),
                live_tokens: cfg.live,
                ca,
                upstream_tls,
                upstream_tls_h1,
                audit,
                gates: Arc::new(Gates::new(cfg.limits)),
                hint: deny::Hint { routes_file: cfg.routes_file, supervise: cfg.supervise },
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
        let known = self.inner.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let live = build_live(egress, &*self.inner.env, &self.inner.live_tokens, &known)?;
        if let Ok(mut l) = self.inner.live.write() {
            *l = live;
        }
        Ok(())
    }

    /// Adds a secret the bottle knows from now on (a renewed token): the
    /// detectors are rebuilt with it, the routes stay as they are.
    pub(crate) fn learn_secret(&self, name: &str, value: &str) {
        let pair = (name.to_owned(), value.to_owned());
        {
            let mut known = self.inner.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if known.contains(&pair) {
                return;
            }
            known.push(pair.clone());
        }
        let mut l = self.inner.live.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        l.secrets.push(pair);
        l.detector = spawn_detectors(l.secrets.clone());
    }

    /// Whether `value` is one of the secrets the detectors are built from.
    #[cfg(test)]
    pub(crate) fn knows(&self, value: &str) -> bool {
        self.inner
            .live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .secrets
            .iter()
            .any(|(_, v)| v == value)
    }

    /// Records a renewal of the token injected as `env` at `endpoint`
    /// (the host's own request, not the bottle's), failed with `error`.
    pub(crate) fn audit_renewal(&self, env: &str, endpoint: &str, error: Option<&str>) {
        let uri: http::Uri = endpoint.parse().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
        let mut c = Ctx::new("RENEW", uri.host().unwrap_or("-"), port, uri.path(), "host");
        c.injected = Some(env.to_owned());
        match error {
            None => self.inner.record(&c, "allow", Some(&deny("renew", "renewed on the host")), 200, 0, 0),
            Some(why) => self.inner.record(&c, "error", Some(&deny("renew", why.to_owned())), 502, 0, 0),
        }
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
                    crate::peer::peer_step("set_nodelay on a proxy connection", stream.set_nodelay(true));
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
            let mut stream = stream;
            let _permit = match inner.gates.connection().await {
                Ok(p) => p,
                Err(cap) => {
                    let reason = cap.reason(&inner.gates.limits);
                    let c = Ctx::new("CONNECT", "-", 0, "", "none");
                    inner.record(&c, "deny", Some(&deny("limit", reason.clone())), 503, 0, 0);
                    let msg = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n{}: rule=limit\r\ncontent-length: {}\r\n\r\n{reason}\n",
                        deny::DENIED_HEADER,
                        reason.len() + 1
                    );
                    // Recorded above; telling the client is a courtesy.
                    crate::peer::peer_step("the over-limit answer", stream.write_all(msg.as_bytes()).await);
                    crate::peer::peer_step("closing an over-limit connection", stream.shutdown().await);
                    return;
                }
            };
            let svc = service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(inner.outer(req).await) }
            });
            crate::peer::peer_step(
                "a proxy connection",
                server_http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await,
            );
        });
    }
}

fn build_live(
    egress: &Egress,
    env: &dyn Fn(&str) -> Option<String>,
    renewed: &[(String, LiveToken)],
    known: &[(String, String)],
) -> Result<Live, ProxyError> {
    let mut tokens = HashMap::new();
    let mut secrets: Vec<(String, String)> = known.to_vec();
    for r in &egress.routes {
        let Some(inj) = &r.inject else { continue };
        let name = inj.env.as_str();
        let live = renewed.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let value = match live {
            Some(t) => Some(t.current().value.clone()),
            None => env(name),
        }
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ProxyError::MissingToken { route: r.host.to_string(), env: name.to_owned() })?;
        let formatted = inj.format.replacen("{}", &value, 1);
        let Ok(header) = HeaderValue::from_str(&formatted) else {
            return Err(ProxyError::BadToken { route: r.host.to_string(), env: name.to_owned() });
        };
        let injected = match live {
            Some(t) => Injected::Renewed { token: t.clone(), format: inj.format.clone() },
            None => Injected::Fixed(header),
        };
        tokens.insert(name.to_owned(), injected);
        let pair = (name.to_owned(), value);
        if !secrets.contains(&pair) {
            secrets.push(pair);
        }
    }
    Ok(Live {
        policy: Arc::new(Policy::new(egress.routes.clone(), egress.dlp)),
        tokens: Arc::new(tokens),
        detector: spawn_detectors(secrets.clone()),
        secrets,
    })
}

fn upstream_client(extra_ca: Option<&Path>) -> Result<ClientConfig, ProxyError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        // A system root that does not parse is left out (fewer roots is
        // the closed side), as every client does.
        if let Err(e) = roots.add(c) {
            tracing::debug!(error = %e, "skipping a system root certificate that does not parse");
        }
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
    /// The env var whose token this request carries upstream.
    injected: Option<String>,
}

impl Ctx {
    fn new(method: &str, host: &str, port: u16, path: &str, tls: &'static str) -> Ctx {
        Ctx {
            method: method.to_owned(),
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            tls,
            started: Instant::now(),
            injected: None,
        }
    }

    fn target(&self) -> deny::Target<'_> {
        deny::Target { host: &self.host, port: self.port, method: &self.method, path: &self.path }
    }
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

/// Removes hop-by-hop headers, and those `Connection` names. Returns
/// whether the client accepts trailers (`TE: trailers`), which is passed on.
fn strip_hop_by_hop(h: &mut HeaderMap) -> bool {
    let trailers = h
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
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
    trailers
}

/// The status a refusal answers with: 400 for a malformed request, 503 for
/// a limit or a detector that is not there, 403 for policy.
fn status_of(rule: &str) -> StatusCode {
    match rule {
        "host-header" | "bad-request" => StatusCode::BAD_REQUEST,
        "limit" | "detector" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    }
}

impl Inner {
    fn policy(&self) -> Arc<Policy> {
        self.live.read().map(|l| l.policy.clone()).unwrap_or_else(|p| p.into_inner().policy.clone())
    }

    fn snapshot(&self) -> (Arc<Policy>, Arc<HashMap<String, Injected>>, Arc<LazyDetector>) {
        let l = self.live.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (l.policy.clone(), l.tokens.clone(), l.detector.clone())
    }

    fn record(&self, c: &Ctx, decision: &str, d: Option<&Denial>, status: u16, up: u64, down: u64) {
        self.record_full(c, decision, d, status, up, down, 0);
    }

    #[expect(clippy::too_many_arguments, reason = "one audit record's fields")]
    fn record_full(&self, c: &Ctx, decision: &str, d: Option<&Denial>, status: u16, up: u64, down: u64, redacted: u64) {
        // The path goes to the log only if nothing secret-looking is in it.
        // The detector may not be built yet (or have failed): then the path
        // is not logged at all.
        let (_, _, lazy) = self.snapshot();
        let clean = lazy.ready().is_some_and(|dets| !dets.request.any(c.path.as_bytes()));
        let path = if clean { c.path.as_str() } else { "[redacted]" };
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
            injected: c.injected.as_deref(),
            redacted,
            bytes_up: up,
            bytes_down: down,
            duration_ms: c.started.elapsed().as_secs_f64() * 1000.0,
            tls: c.tls,
        });
    }

    /// Refuses a request: the audit record, and a response the agent can
    /// read (see `deny`).
    fn denied(&self, c: &Ctx, d: Denial) -> Response<ProxyBody> {
        let status = status_of(d.rule);
        self.record(c, "deny", Some(&d), status.as_u16(), 0, 0);
        deny::response(status, &d, &c.target(), &self.hint)
    }

    fn failed(&self, c: &Ctx, why: String) -> Response<ProxyBody> {
        let d = deny("upstream", why.clone());
        self.record(c, "error", Some(&d), 502, 0, 0);
        text(
            StatusCode::BAD_GATEWAY,
            format!("bot-bottle egress proxy: upstream failed\nhost: {}:{}\nreason: {why}\n", c.host, c.port),
        )
    }

    /// A request whose route injects a token the host could not renew:
    /// never sent upstream without it.
    fn no_credential(&self, c: &Ctx, why: String) -> Response<ProxyBody> {
        let d = deny("credential", why.clone());
        self.record(c, "error", Some(&d), 502, 0, 0);
        text(
            StatusCode::BAD_GATEWAY,
            format!("bot-bottle egress proxy: no credential to send\nhost: {}:{}\nreason: {why}\n", c.host, c.port),
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
        // No route: the tunnel is still accepted, and every request in it is
        // answered with the reason (nothing is dialled).
        let route = self.policy().route_for(&host, port, Scheme::Https).cloned();
        let inner = self.clone();
        tokio::spawn(async move {
            if let Ok(up) = hyper::upgrade::on(req).await {
                inner.tunnel(TokioIo::new(up), host, port, route).await;
            }
        });
        empty(StatusCode::OK)
    }

    async fn tunnel(
        self: Arc<Self>,
        io: TokioIo<hyper::upgrade::Upgraded>,
        host: String,
        port: u16,
        route: Option<Route>,
    ) {
        let started = Instant::now();
        let c = |tls| {
            let mut c = Ctx::new("CONNECT", &host, port, "", tls);
            c.started = started;
            c
        };
        if let Some(r) = route.as_ref().filter(|r| r.tls == TlsMode::Passthrough) {
            self.passthrough(io, &host, port, r, c("passthrough")).await;
            return;
        }
        // Anything but a TLS ClientHello closes the connection: never a raw tunnel.
        let start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await {
            Ok(s) => s,
            Err(e) => {
                let d = match &route {
                    Some(_) => {
                        deny("not-tls", format!("bytes after CONNECT were not an acceptable TLS ClientHello: {e}"))
                    }
                    None => deny("host", format!("no route allows {host}:{port} (and the client did not speak TLS)")),
                };
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
        let tunnel = Arc::new(Tunnel { host, port, routed: route.is_some(), upstream: tokio::sync::Mutex::new(None) });
        let inner = self.clone();
        let svc = service_fn(move |req| {
            let inner = inner.clone();
            let t = tunnel.clone();
            async move { Ok::<_, Infallible>(inner.inside(t, req).await) }
        });
        crate::peer::peer_step(
            "a CONNECT tunnel",
            server_http1::Builder::new().serve_connection(TokioIo::new(tls), svc).with_upgrades().await,
        );
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

    async fn inside(self: Arc<Self>, t: Arc<Tunnel>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let path_q = req.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let c =
            Ctx::new(req.method().as_str(), &t.host, t.port, path_q.split('?').next().unwrap_or_default(), "inspect");
        if !t.routed {
            return self.denied(&c, deny("host", format!("no route allows {}:{}", t.host, t.port)));
        }
        // Hop-by-hop headers (and those `Connection` names) go before any
        // check, so nothing checked can be removed after it.
        let trailers = forward::strip_request(&mut req);
        let authority = req.uri().authority().map(|a| a.as_str().to_owned());
        if let Err(d) = one_host(req.headers(), authority.as_deref(), &t.host, t.port, 443) {
            return self.denied(&c, d);
        }
        self.forward(req, c, path_q, Scheme::Https, Some(t), trailers).await
    }

    async fn plain(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let authority = req.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let path_q = req.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let Some((host, port)) = split_authority(&authority, 80) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("bot-bottle egress proxy: bad request target `{authority}`\n"),
            );
        };
        let c = Ctx::new(req.method().as_str(), &host, port, path_q.split('?').next().unwrap_or_default(), "none");
        let trailers = forward::strip_request(&mut req);
        if let Err(d) = one_host(req.headers(), Some(&authority), &host, port, 80) {
            return self.denied(&c, d);
        }
        self.forward(req, c, path_q, Scheme::Http, None, trailers).await
    }
}

/// Exactly one `Host`, naming the target (and agreeing with an
/// absolute-form authority, when the request has one).
fn one_host(h: &HeaderMap, authority: Option<&str>, host: &str, port: u16, default_port: u16) -> Result<(), Denial> {
    let hosts: Vec<&HeaderValue> = h.get_all(header::HOST).iter().collect();
    let bad = |why: String| Err(deny("host-header", why));
    let value = match hosts.as_slice() {
        [] => return bad("the request has no Host header (it may have been named in Connection)".into()),
        [one] => one.to_str().unwrap_or("?"),
        many => return bad(format!("the request has {} Host headers; exactly one is allowed", many.len())),
    };
    for claimed in std::iter::once(value).chain(authority) {
        if split_authority(claimed, default_port) != Some((host.to_owned(), port)) {
            return bad(format!("Host `{claimed}` is not the target {host}:{port}"));
        }
    }
    Ok(())
}

fn build(
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, UpstreamError> {
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
    /// Whether a route named the CONNECT target (when not, every request
    /// in the tunnel is refused with the reason).
    routed: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A detector that cannot be had is a 503 (see `lazy`'s test for the
    /// build that fails).
    #[test]
    fn no_detector_is_unavailable() {
        assert_eq!(status_of("detector"), StatusCode::SERVICE_UNAVAILABLE);
    }
}
