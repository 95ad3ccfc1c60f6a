//! Backends that build bottles, behind one [`Backend`] trait.
//!
//! A launch goes through the same steps on every backend:
//!
//! 1. [`Backend::prepare`]: pure resolution of the plan into what this
//!    backend would build. No side effects; `--dry-run` prints it.
//! 2. [`Backend::reserve`]: the bottle's place on the host (a directory of
//!    sockets, a loopback address). The caller starts the sidecar bundle on
//!    the returned [`Endpoint`].
//! 3. [`Backend::launch`]: creates the bottle and registers the teardown of
//!    everything it made in a [`Teardown`].
//! 4. [`provision`]: the provider's provisioning (data, from
//!    `bot-bottle-provision`) applied through the [`Bottle`] handle, once for
//!    all backends.
//! 5. [`Bottle::run_agent`]: the agent, attached to this process's terminal.
//!
//! Teardown runs whatever happens: dropping a [`Teardown`] or a bottle
//! handle undoes what it holds, so an error half way, a panic or a stop
//! request all leave nothing behind. What survives the launcher (a SIGKILL)
//! is found again by [`Backend::cleanup`].

mod bottle;
mod detect;
mod disk;
pub mod docker;
mod fds;
mod forward;
pub mod native;
pub mod smolmachines;
mod teardown;
mod terminal;
mod workspace;

/// Whether a process is still the one that was recorded: pid plus start time.
pub use bot_bottle_loopback::start_token;
pub use bottle::{Bottle, Exec, Output, Owner, provision};
pub use detect::{Detected, detect};
pub use disk::{DEFAULT_DISK, DiskWatch};
pub use fds::close_inherited as close_inherited_fds;
/// `bot-bottle __bottle-forward`: the sidecar forwarder inside a smolmachines guest.
pub use forward::guest_main as guest_forward_main;
pub use teardown::Teardown;
pub use workspace::{
    CopyOptions, CopyReport, Guarded, Progress, Project, ProjectError, ProjectQuery, ProjectSource, WorkspaceError,
    check_project, copy_owner, copy_project, find_project, guarded, partial_path, prepare_workspace, workdir_in,
};

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use bot_bottle_manifest::Plan;

/// The port of the egress proxy inside every bottle.
pub const PROXY_PORT: u16 = 3128;
/// The port of the git gate inside every bottle.
pub const GATE_PORT: u16 = 9420;
/// The port of the supervise MCP server inside every bottle.
pub const SUPERVISE_PORT: u16 = 9421;

/// The sidecar sockets of a `Unix` endpoint and the port each is reached
/// at inside the bottle, for backends that publish them one by one.
pub const UNIX_SOCKETS: &[(&str, u16)] = &[("proxy.sock", PROXY_PORT), ("gate.sock", GATE_PORT)];

/// What a backend is asked to build.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The bottle's name; unique among this user's bottles.
    pub slug: &'a str,
    pub plan: &'a Plan,
    /// The bottle's private state directory on the host (0700).
    pub state: &'a Path,
    /// The user's project directory (the source of a workspace copy).
    pub project: &'a Path,
    /// Resuming: an existing workspace copy in `state` is kept.
    pub resume: bool,
}

/// Where a bottle's sidecar bundle listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// Unix sockets in `dir`, which only `owner` (a host uid, when set) may
    /// use; the bottle reaches them through forwarders on its loopback.
    Unix { dir: PathBuf, owner: Option<u32> },
    /// TCP on a loopback address of the bottle's own. The proxy's port is
    /// already bound (`listener`), so no one can take it in between.
    Tcp { addr: Ipv4Addr, listener: std::sync::Arc<std::net::TcpListener> },
}

impl Endpoint {
    /// Makes a socket a sidecar created in a `Unix` endpoint usable by the
    /// bottle alone (0600, its owner's); nothing to do for `Tcp`.
    pub fn secure(&self, socket: &Path) -> std::io::Result<()> {
        match self {
            Endpoint::Unix { owner, .. } => own(socket, 0o600, *owner),
            Endpoint::Tcp { .. } => Ok(()),
        }
    }

    /// The proxy's URL as the agent reaches it.
    pub fn proxy_url(&self) -> String {
        match self {
            Endpoint::Unix { .. } => format!("http://127.0.0.1:{PROXY_PORT}"),
            Endpoint::Tcp { addr, .. } => format!("http://{addr}:{PROXY_PORT}"),
        }
    }

    /// The git gate's URL as the agent reaches it.
    pub fn gate_url(&self) -> String {
        match self {
            Endpoint::Unix { .. } => format!("http://127.0.0.1:{GATE_PORT}"),
            Endpoint::Tcp { addr, .. } => format!("http://{addr}:{GATE_PORT}"),
        }
    }

    /// The supervise MCP endpoint as the agent reaches it.
    pub fn supervise_url(&self) -> String {
        format!("http://{}/mcp", self.supervise_host())
    }

    /// The `host:port` in the `Host` header of the agent's requests to
    /// supervise: the only one the server accepts.
    pub fn supervise_host(&self) -> String {
        match self {
            Endpoint::Unix { .. } => format!("127.0.0.1:{SUPERVISE_PORT}"),
            Endpoint::Tcp { addr, .. } => format!("{addr}:{SUPERVISE_PORT}"),
        }
    }
}

/// One backend. `prepare` is pure; `reserve` and `launch` create things and
/// register their teardown; `cleanup` removes what a killed launcher left.
pub trait Backend {
    /// What `prepare` resolves to: shown by `--dry-run`, consumed by `launch`.
    type Prepared: serde::Serialize + std::fmt::Debug;
    type Bottle: Bottle;

    /// The name used in manifests, `--backend` and `list`.
    fn name(&self) -> &'static str;

    /// Pure resolution of `target` into what would be built.
    fn prepare(&self, target: &Target<'_>) -> Result<Self::Prepared, BackendError>;

    /// Every setting of the plan that `prepared` cannot enforce as asked on
    /// this host: shown in the plan and at start, never silently dropped.
    fn warnings(&self, prepared: &Self::Prepared) -> Vec<String>;

    /// Takes the bottle's place on the host, where its sidecars will listen.
    fn reserve(&self, prepared: &Self::Prepared, teardown: &mut Teardown) -> Result<Endpoint, BackendError>;

    /// Creates the bottle, ready for provisioning, able to reach its
    /// sidecars at `endpoint` (from `reserve`). The handle tears the bottle
    /// down when dropped.
    fn launch(
        &self,
        prepared: &Self::Prepared,
        endpoint: &Endpoint,
        teardown: &mut Teardown,
    ) -> Result<Self::Bottle, BackendError>;

    /// Removes what a launcher killed without tearing down left behind for
    /// the bottle `slug` with state dir `state`; says what it removed.
    fn cleanup(&self, slug: &str, state: &Path) -> Vec<String>;
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Native(#[from] native::NativeError),
    /// The workspace copy failed; nothing of it is left.
    #[error("copying the project into the workspace")]
    Workspace(#[from] WorkspaceError),
    /// A request to the docker daemon failed.
    #[error("{what}")]
    Docker {
        what: String,
        #[source]
        source: Box<bollard::errors::Error>,
    },
    #[error(transparent)]
    Smolvm(#[from] bot_bottle_smolvm::SmolvmError),
    #[error(transparent)]
    Loopback(#[from] bot_bottle_loopback::LoopbackError),
    /// The egress allowlist could not be confirmed: the launch is refused.
    #[error(transparent)]
    Allowlist(#[from] bot_bottle_loopback::AllowlistError),
    /// The bottle's confinement could not be confirmed: the launch is refused.
    #[error("{0}")]
    Confinement(String),
    /// What this backend needs is missing here, and how to fix it.
    #[error("{0}")]
    Preflight(String),
    /// A provisioning command failed inside the bottle.
    #[error("{why} (`{command}` exited {code}{})", tail(.stderr))]
    Provision { command: String, why: String, code: i32, stderr: String },
    /// A request to a running bottle failed inside it.
    #[error("{what} inside the bottle: {message}")]
    Inside { what: String, message: String },
    /// The bottle answered something it should not have.
    #[error("the bottle's control channel: {0}")]
    Control(String),
    /// No backend can run here; each line says what is missing.
    #[error("no backend can run bottles here:\n{}", .0.join("\n"))]
    NoBackend(Vec<String>),
    #[error("the {0} backend is not in this build yet")]
    NotBuilt(&'static str),
}

fn tail(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        return String::new();
    }
    let start = s.char_indices().rev().nth(400).map_or(0, |(i, _)| i);
    format!(": {}", &s[start..])
}

/// Test hooks: when `BOT_BOTTLE_PAUSE_AT` names this launch phase, say so
/// on stderr and wait, so that a test can kill the launcher exactly there
/// and check that `cleanup` leaves nothing behind; when
/// `BOT_BOTTLE_PANIC_AT` names it, panic (what a crash must still undo).
pub fn pause_point(phase: &str) {
    if std::env::var("BOT_BOTTLE_PANIC_AT").is_ok_and(|p| p == phase) {
        panic!("test hook: panic at {phase}");
    }
    if std::env::var("BOT_BOTTLE_PAUSE_AT").is_ok_and(|p| p == phase) {
        // One write, so a reader never sees half the line.
        let _ =
            std::io::Write::write_all(&mut std::io::stderr(), format!("bot-bottle: paused at {phase}\n").as_bytes());
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Sets `mode` on `p` and, when given, its owner (both uid and gid).
pub(crate) fn own(p: &Path, mode: u32, owner: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    if let Some(id) = owner {
        std::os::unix::fs::lchown(p, Some(id), Some(id))?;
    }
    Ok(())
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let what = what.into();
    move |source| BackendError::Io { what, source }
}
