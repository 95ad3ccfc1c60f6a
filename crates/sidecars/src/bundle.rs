//! The sidecar bundle: every host-side service a bottle's plan needs,
//! started with one call on the backend's [`Endpoint`], their addresses as
//! the bottle reaches them, and one call that ends them.
//!
//! Each service has its own socket (a `Unix` endpoint, forwarded to its own
//! port inside the bottle) or its own port on the bottle's address (`Tcp`):
//! the egress proxy on 3128, the git gate on 9420, supervise on 9421.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::endpoint::{Endpoint, GATE_PORT, PROXY_PORT, SUPERVISE_PORT};
use bot_bottle_manifest::{Egress, Plan, WorkspaceMode};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::{
    Gate, GateConfig, GateError, GateReport, Landing, LiveCredential, Proxy, ProxyConfig, ProxyError, Supervise,
    SuperviseConfig, SuperviseError,
};

/// Reads host environment variables (by name; values stay in the bundle).
pub type SharedEnv = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What a bundle is started from.
pub struct BundleConfig<'a> {
    pub slug: &'a str,
    pub plan: &'a Plan,
    /// The bottle's private state dir: the proxy's CA, the gate's
    /// repositories and keys, and the audit log live under it.
    pub state: &'a Path,
    /// The user's project: served by the gate as `local` when it is a git
    /// repository and the workspace is not the project itself.
    pub project: &'a Path,
    pub endpoint: &'a Endpoint,
    pub env: SharedEnv,
    /// Tokens the host renews while the bottle runs (a ChatGPT login):
    /// the proxy injects their current value, and the bundle renews them.
    pub live: Vec<LiveCredential>,
    /// An extra CA for upstreams and forge APIs (tests, corporate CAs).
    pub upstream_ca: Option<PathBuf>,
    /// How long supervise's `request_egress` waits for a decision.
    pub supervise_wait: std::time::Duration,
}

impl std::fmt::Debug for BundleConfig<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleConfig").field("slug", &self.slug).field("state", &self.state).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the egress proxy")]
    Proxy(#[from] ProxyError),
    #[error("the git gate")]
    Gate(#[from] GateError),
    #[error("supervise")]
    Supervise(#[from] SuperviseError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A start that failed and could not undo all it did.
    #[error("the start failed, and undoing it left: {left}")]
    Left { source: Box<BundleError>, left: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BundleError {
    let what = what.into();
    move |source| BundleError::Io { what, source }
}

/// Where the bottle reaches its services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub proxy_url: String,
    /// The git gate's base URL; `None` when the plan needs no gate.
    pub git_gate_url: Option<String>,
    /// Whether the gate serves the project as `local`.
    pub git_gate_local: bool,
    /// The supervise MCP endpoint; `None` when the plan does not enable it.
    pub supervise_url: Option<String>,
}

/// What the bottle's sidecars did, for the end of the session.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BundleReport {
    pub gate: GateReport,
    /// The uncommitted state of the workspace, landed.
    pub uncommitted: Option<Landing>,
}

/// A bottle's running sidecars.
pub struct Bundle {
    proxy: Proxy,
    gate: Option<Gate>,
    supervise: Option<Supervise>,
    tasks: Vec<JoinHandle<()>>,
    handle: Handle,
    addresses: Addresses,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle").field("addresses", &self.addresses).finish_non_exhaustive()
    }
}

/// Whether the gate serves the project as `local`: it is a git repository,
/// and the bottle works on a copy of it (with `mount` the agent writes the
/// repository itself, so there is nothing to gate).
fn local_for(plan: &Plan, project: &Path) -> Option<PathBuf> {
    (plan.workspace != WorkspaceMode::Mount && project.join(".git").exists()).then(|| project.to_path_buf())
}

/// The secret values the plan names, read from the host environment.
fn known_secrets(plan: &Plan, env: &SharedEnv) -> Vec<(String, String)> {
    plan.secrets.iter().filter_map(|s| Some((s.env.to_string(), env(s.env.as_str())?))).collect()
}

impl Bundle {
    /// Starts every service the plan needs on `endpoint`, on the runtime
    /// behind `handle` (which must outlive the bundle). Fails, leaving
    /// nothing running and no deploy key behind, if any service cannot start.
    pub fn start(mut cfg: BundleConfig<'_>, handle: &Handle) -> Result<Bundle, BundleError> {
        let known = known_secrets(cfg.plan, &cfg.env);
        let live_creds = std::mem::take(&mut cfg.live);
        let env = cfg.env.clone();
        let proxy = Proxy::new(ProxyConfig {
            bottle: cfg.slug.to_owned(),
            state_dir: cfg.state.join("proxy"),
            egress: Egress { routes: cfg.plan.egress.routes.clone(), dlp: cfg.plan.egress.dlp },
            upstream_ca: cfg.upstream_ca.clone(),
            audit_log: Some(cfg.state.join("audit.jsonl")),
            env: Box::new(move |n| env(n)),
            known_secrets: known.clone(),
            live: live_creds.iter().map(|l| (l.env.clone(), l.token.clone())).collect(),
            // Denials name the bottle file to add a route to.
            routes_file: cfg
                .plan
                .bottle
                .files
                .last()
                .map(|f| f.strip_prefix(cfg.project).unwrap_or(f).display().to_string()),
            limits: Default::default(),
            supervise: cfg.plan.supervise,
        })?;
        let local = local_for(cfg.plan, cfg.project);
        let gate = if cfg.plan.git_gate.repos.is_empty() && local.is_none() {
            None
        } else {
            let env = cfg.env.clone();
            let mut g = GateConfig::new(cfg.slug, cfg.state.join("gate"));
            g.repos = cfg.plan.git_gate.repos.clone();
            g.local = local.clone();
            g.audit_log = Some(cfg.state.join("audit.jsonl"));
            g.env = Box::new(move |n| env(n));
            g.known_secrets = known;
            g.upstream_ca = cfg.upstream_ca.clone();
            Some(handle.block_on(Gate::start(g))?)
        };
        let supervise = if cfg.plan.supervise {
            Some(Supervise::new(SuperviseConfig {
                bottle: cfg.slug.to_owned(),
                state: cfg.state.to_path_buf(),
                proxy: proxy.clone(),
                base: Egress { routes: cfg.plan.egress.routes.clone(), dlp: cfg.plan.egress.dlp },
                allowed_hosts: vec![cfg.endpoint.supervise_host()],
                wait: cfg.supervise_wait,
            })?)
        } else {
            None
        };
        let mut bundle = Bundle {
            proxy,
            gate,
            supervise,
            tasks: Vec::new(),
            handle: handle.clone(),
            addresses: Addresses {
                proxy_url: cfg.endpoint.proxy_url(),
                git_gate_url: None,
                git_gate_local: local.is_some(),
                supervise_url: None,
            },
        };
        // Renewed on the host for as long as the bundle runs.
        for cred in live_creds {
            let p = bundle.proxy.clone();
            bundle.tasks.push(handle.spawn(crate::renew::keep_fresh(cred, p)));
        }
        if let Err(e) = bundle.listen(cfg.endpoint) {
            // Deletes any deploy key just minted before giving up, and says
            // so if one could not be.
            let left = bundle.finish(None).gate.problems;
            if left.is_empty() {
                return Err(e);
            }
            return Err(BundleError::Left { source: Box::new(e), left: left.join("; ") });
        }
        Ok(bundle)
    }

    fn listen(&mut self, endpoint: &Endpoint) -> Result<(), BundleError> {
        let _guard = self.handle.enter();
        match endpoint {
            Endpoint::Unix { dir, .. } => {
                let sock = dir.join("proxy.sock");
                let l =
                    tokio::net::UnixListener::bind(&sock).map_err(io(format!("listening on {}", sock.display())))?;
                endpoint.secure(&sock).map_err(io(format!("securing {}", sock.display())))?;
                let p = self.proxy.clone();
                self.tasks.push(self.handle.spawn(async move { p.serve_unix(l).await }));
                if let Some(g) = self.gate.clone() {
                    let sock = dir.join("gate.sock");
                    let l = tokio::net::UnixListener::bind(&sock)
                        .map_err(io(format!("listening on {}", sock.display())))?;
                    endpoint.secure(&sock).map_err(io(format!("securing {}", sock.display())))?;
                    self.tasks.push(self.handle.spawn(async move { g.serve_unix(l).await }));
                }
                if let Some(s) = self.supervise.clone() {
                    let sock = dir.join("supervise.sock");
                    let l = tokio::net::UnixListener::bind(&sock)
                        .map_err(io(format!("listening on {}", sock.display())))?;
                    endpoint.secure(&sock).map_err(io(format!("securing {}", sock.display())))?;
                    self.tasks.push(self.handle.spawn(async move { s.serve_unix(l).await }));
                }
            }
            Endpoint::Tcp { addr, listener } => {
                let l = listener.try_clone().map_err(io(format!("listening on {addr}:{PROXY_PORT}")))?;
                l.set_nonblocking(true).map_err(io(format!("listening on {addr}:{PROXY_PORT}")))?;
                let l =
                    tokio::net::TcpListener::from_std(l).map_err(io(format!("listening on {addr}:{PROXY_PORT}")))?;
                let p = self.proxy.clone();
                self.tasks.push(self.handle.spawn(async move { p.serve(l).await }));
                if let Some(g) = self.gate.clone() {
                    let l = std::net::TcpListener::bind((*addr, GATE_PORT))
                        .and_then(|l| l.set_nonblocking(true).map(|()| l))
                        .and_then(tokio::net::TcpListener::from_std)
                        .map_err(io(format!("listening on {addr}:{GATE_PORT}")))?;
                    self.tasks.push(self.handle.spawn(async move { g.serve(l).await }));
                }
                if let Some(s) = self.supervise.clone() {
                    let l = std::net::TcpListener::bind((*addr, SUPERVISE_PORT))
                        .and_then(|l| l.set_nonblocking(true).map(|()| l))
                        .and_then(tokio::net::TcpListener::from_std)
                        .map_err(io(format!("listening on {addr}:{SUPERVISE_PORT}")))?;
                    self.tasks.push(self.handle.spawn(async move { s.serve(l).await }));
                }
            }
        }
        if let Some(s) = self.supervise.clone() {
            self.tasks.push(self.handle.spawn(async move { s.run_applier().await }));
            self.addresses.supervise_url = Some(endpoint.supervise_url());
        }
        if self.gate.is_some() {
            self.addresses.git_gate_url = Some(endpoint.gate_url());
        }
        Ok(())
    }

    /// Where the bottle reaches each service, for provisioning.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// The bottle CA certificate, for the bottle's trust stores.
    pub fn ca_cert_path(&self) -> &Path {
        self.proxy.ca_cert_path()
    }

    /// Ends the session's sidecars: lands what `workspace` (the kept
    /// workspace copy, once the bottle is gone) holds uncommitted, stops
    /// every service and deletes the gate's deploy keys. Returns what the
    /// sidecars did; a failure to land is reported there, not hidden.
    pub fn finish(mut self, workspace: Option<&Path>) -> BundleReport {
        let mut report = BundleReport::default();
        let mut problems = Vec::new();
        if let (Some(g), Some(w)) = (&self.gate, workspace) {
            match self.handle.block_on(g.land_uncommitted(w)) {
                Ok(l) => report.uncommitted = l,
                Err(e) => problems.push(format!("the uncommitted changes were not landed: {}", chain(&e))),
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(g) = self.gate.take() {
            report.gate = self.handle.block_on(g.finish());
        }
        report.gate.problems.extend(problems);
        report
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        // `finish` was never called (a panic on the way out): the deploy
        // keys go anyway. Any it cannot delete stay recorded in the gate's
        // directory, where `cleanup` finds them.
        if let Some(g) = self.gate.take()
            && Handle::try_current().is_err()
        {
            let _report = self.handle.block_on(g.finish());
        }
    }
}

pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Removes what a killed launcher's sidecars left outside its state dir
/// (deploy keys on forges), for the bottle whose state dir is `state`.
/// Says what it did.
pub fn cleanup(state: &Path, env: &(dyn Fn(&str) -> Option<String> + Sync), upstream_ca: Option<&Path>) -> Vec<String> {
    let gate = state.join("gate");
    if !gate.is_dir() {
        return Vec::new();
    }
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(crate::gate_cleanup(&gate, env, upstream_ca)),
        Err(e) => vec![format!("deploy keys: {e}")],
    }
}
