//! Supervise: the agent asks for more egress over MCP, a human decides, and
//! the decision takes effect in the running proxy at once.
//!
//! The server (rmcp, streamable HTTP on our own hyper connection loop) runs
//! in the bottle's sidecar bundle, one per bottle, reachable only from that
//! bottle; `Host` and `Origin` are checked against DNS rebinding. Requests
//! go to the durable [`Queue`] in the bottle's state dir, which the
//! operator's CLI reads and decides from another process. The server's
//! applier notices decisions and replaces the proxy's routes with the
//! bottle's own plus every route granted in this run (and every route
//! granted for good), so nothing restarts.
//!
//! Not for: deciding anything itself. Every grant is a human's.

mod audit;
mod queue;
mod tools;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bot_bottle_manifest::{Egress, Route};
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::Proxy;

pub use audit::{AuditError, AuditEvent, audit_path, read_audit};
pub use queue::{Decision, EgressRequest, Lifetime, Queue, RouteSpec, State};

/// How long `request_egress` waits for a decision by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no request `{0}` in this bottle's queue")]
    NoSuchRequest(String),
    #[error("request `{id}` is already {state:?}; a decision is final")]
    AlreadyDecided { id: String, state: State },
    #[error("a queue file is unreadable: {0}")]
    Corrupt(String),
    #[error("invalid route: {0}")]
    InvalidRoute(String),
}

/// What a supervise server is started from.
pub struct SuperviseConfig {
    pub bottle: String,
    /// The bottle's state dir: the queue and the audit log live there.
    pub state: PathBuf,
    /// The running proxy whose routes decisions change.
    pub proxy: Proxy,
    /// The bottle's own egress (from its plan), which grants extend.
    pub base: Egress,
    /// The `Host` values the bottle uses to reach the server (`host:port`).
    pub allowed_hosts: Vec<String>,
    /// How long `request_egress` waits for a decision.
    pub wait: Duration,
}

impl std::fmt::Debug for SuperviseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuperviseConfig").field("bottle", &self.bottle).field("state", &self.state).finish()
    }
}

pub(crate) struct Inner {
    bottle: String,
    state: PathBuf,
    run: String,
    queue: Queue,
    proxy: Proxy,
    base: Egress,
    /// The routes in force: the base plus every grant applied.
    current: RwLock<Vec<Route>>,
    wait: Duration,
}

/// A bottle's supervise server. Cheap to clone.
#[derive(Clone)]
pub struct Supervise {
    inner: Arc<Inner>,
    service: StreamableHttpService<tools::Tools, LocalSessionManager>,
}

impl std::fmt::Debug for Supervise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervise").field("bottle", &self.inner.bottle).finish_non_exhaustive()
    }
}

/// Turns a requested or granted route into a checked manifest route, by the
/// manifest's own route checker (a request is as strict as a manifest).
pub fn check_route(spec: &RouteSpec) -> Result<Route, SuperviseError> {
    let doc = serde_json::json!({ "routes": [spec] });
    let text = serde_json::to_string(&doc).map_err(|e| SuperviseError::InvalidRoute(e.to_string()))?;
    let egress = bot_bottle_manifest::parse_egress(Path::new("<request>"), &text).map_err(|d| {
        let msgs: Vec<String> = d.0.iter().map(|d| d.message.clone()).collect();
        SuperviseError::InvalidRoute(msgs.join("; "))
    })?;
    let mut routes = egress.routes;
    match (routes.pop(), routes.is_empty()) {
        (Some(r), true) => Ok(r),
        _ => Err(SuperviseError::InvalidRoute("exactly one route is needed".into())),
    }
}

impl Supervise {
    /// Prepares the server and applies any route granted for good earlier.
    pub fn new(cfg: SuperviseConfig) -> Result<Supervise, SuperviseError> {
        let queue = Queue::new(&cfg.state);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let inner = Arc::new(Inner {
            run: format!("{}-{}", t.as_millis(), std::process::id()),
            bottle: cfg.bottle,
            state: cfg.state,
            queue,
            proxy: cfg.proxy,
            current: RwLock::new(cfg.base.routes.clone()),
            base: cfg.base,
            wait: cfg.wait,
        });
        inner.apply(true)?;
        let config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(cfg.allowed_hosts)
            // No browser has business here: any `Origin` is refused.
            .enforce_origin_validation();
        let i = inner.clone();
        let service = StreamableHttpService::new(
            move || Ok(tools::Tools::new(i.clone())),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        Ok(Supervise { inner, service })
    }

    /// Applies decisions as they come, until the task is dropped.
    pub async fn run_applier(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let i = self.inner.clone();
            let r = tokio::task::spawn_blocking(move || i.apply(false)).await;
            if let Ok(Err(e)) | Err(e) = r.map_err(|e| SuperviseError::Corrupt(e.to_string())) {
                warn(&e);
            }
        }
    }

    /// Serves the bottle on `listener` until the task is dropped.
    pub async fn serve(&self, listener: tokio::net::TcpListener) {
        loop {
            match listener.accept().await {
                Ok((s, _)) => self.spawn_conn(s),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The same on a unix socket (the native backend's forwarder).
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener) {
        loop {
            match listener.accept().await {
                Ok((s, _)) => self.spawn_conn(s),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn spawn_conn<S>(&self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = self.service.clone();
        tokio::spawn(async move {
            let f = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let svc = svc.clone();
                async move { Ok::<_, std::convert::Infallible>(svc.handle(req).await) }
            });
            // A connection that fails ends alone; the server keeps serving.
            let _conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), f).await;
        });
    }
}

/// The applier's problems go to stderr: there is no one else to tell, and
/// the request files say the same (`apply_error`).
fn warn(e: &SuperviseError) {
    let _written =
        std::io::Write::write_all(&mut std::io::stderr(), format!("bot-bottle: supervise: {e}\n").as_bytes());
}

impl Inner {
    /// Puts every grant in force. With `all`, even those marked applied
    /// (at start: a grant for good from an earlier run).
    fn apply(&self, all: bool) -> Result<(), SuperviseError> {
        let reqs = self.queue.all()?;
        let granted: Vec<&EgressRequest> = reqs
            .iter()
            .filter(|r| matches!(r.state, State::Approved | State::Modified))
            .filter(|r| r.lifetime == Lifetime::Persist || r.run == self.run)
            .collect();
        let fresh: Vec<String> =
            granted.iter().filter(|r| !r.applied && r.apply_error.is_none()).map(|r| r.id.clone()).collect();
        // At start, grants from earlier runs; later, only new decisions.
        let needed = !fresh.is_empty() || (all && !granted.is_empty());
        if !needed {
            return Ok(());
        }
        let mut routes = self.base.routes.clone();
        let mut bad = Vec::new();
        for r in &granted {
            let Some(spec) = r.decision.as_ref().and_then(|d| d.route.as_ref()) else { continue };
            match check_route(spec) {
                Ok(route) => routes.push(route),
                Err(e) => bad.push((r.id.clone(), e.to_string())),
            }
        }
        for (id, e) in &bad {
            self.queue.mark_applied(std::slice::from_ref(id), Some(e))?;
        }
        let fresh: Vec<String> = fresh.into_iter().filter(|id| !bad.iter().any(|(b, _)| b == id)).collect();
        match self.proxy.set_egress(&Egress { routes: routes.clone(), dlp: self.base.dlp }) {
            Ok(()) => {
                if let Ok(mut c) = self.current.write() {
                    *c = routes;
                }
                self.queue.mark_applied(&fresh, None)?;
                for id in &fresh {
                    if let Ok(r) = self.queue.get(id) {
                        audit::record(&self.state, &AuditEvent::applied(&r))?;
                    }
                }
                Ok(())
            }
            Err(e) => {
                let why = crate::bundle::chain(&e);
                self.queue.mark_applied(&fresh, Some(&why))?;
                Err(SuperviseError::InvalidRoute(why))
            }
        }
    }

    fn routes(&self) -> Vec<Route> {
        self.current.read().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }
}
