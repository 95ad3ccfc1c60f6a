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
mod check;
mod detect;
mod disk;
pub mod docker;
mod fds;
mod forward;
mod gone;
/// Linux namespaces: only Linux has them, so only a Linux build has it;
/// docker and smolmachines build wherever their daemon and CLI run.
#[cfg(target_os = "linux")]
pub mod native;
mod session;
pub mod smolmachines;
mod teardown;
mod terminal;
mod workspace;

/// Whether a process is still the one that was recorded: pid plus start time.
pub use bot_bottle_loopback::start_token;
pub use bot_bottle_sidecars::{Endpoint, GATE_PORT, PROXY_PORT, SUPERVISE_PORT, UNIX_SOCKETS};
pub use bottle::{Bottle, Exec, Output, Owner, provision};
pub use check::{Check, Status, ready as checks_ready};
pub use detect::{Context, KINDS, detect, open, purge};
pub use disk::{DEFAULT_DISK, DiskWatch};
pub use fds::close_inherited as close_inherited_fds;
/// `bot-bottle __bottle-forward`: the sidecar forwarder inside a smolmachines guest.
pub use forward::guest_main as guest_forward_main;
pub use session::{Events, Outcome, Session, SessionError, run as run_session};
pub use teardown::Teardown;

/// How an entry of [`Backend::cleanup`] that reports a failure begins.
pub const COULD_NOT: &str = "could not ";
/// The agent's output as it may reach a terminal: escape sequences that
/// reach past the screen (clipboard, answerbacks, programmable keys) removed.
pub use terminal::filtered as terminal_safe;
pub use workspace::{
    CopyOptions, CopyReport, Guarded, Progress, Project, ProjectError, ProjectQuery, ProjectSource, WorkspaceError,
    check_project, copy_owner, copy_project, find_project, guarded, partial_path, prepare_workspace, workdir_in,
};

use std::path::{Path, PathBuf};

use bot_bottle_manifest::{BackendKind, Plan};

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

/// One backend, chosen at run time ([`open`], [`detect`]): every caller
/// holds a `Box<dyn Backend>`, so a new backend is a module here and a name
/// in [`KINDS`], with no change to any caller.
///
/// `prepare` is pure and yields a [`PreparedBottle`], whose `reserve` and
/// `launch` create things and register their teardown; `cleanup` removes
/// what a killed launcher left.
pub trait Backend: std::fmt::Debug {
    /// Which backend this is; its name is used in manifests, `--backend`
    /// and `list`.
    fn kind(&self) -> BackendKind;

    /// Pure resolution of `target` into what would be built.
    fn prepare(&self, target: &Target<'_>) -> Result<Box<dyn PreparedBottle>, BackendError>;

    /// Removes what a launcher killed without tearing down left behind for
    /// the bottle `slug` with state dir `state`; says what it removed. An
    /// entry beginning with [`COULD_NOT`] is something still there (a
    /// process it could not kill, a cgroup it could not remove): the CLI
    /// then says so and exits non-zero.
    fn cleanup(&self, slug: &str, state: &Path) -> Vec<String>;

    /// Removes what this backend keeps between bottles for `cleanup
    /// --purge` (docker: the images built from `dockerfile:`, unless a
    /// container uses one); says what it removed.
    fn purge(&self) -> Vec<String> {
        Vec::new()
    }

    /// What this backend needs from the host, each with a fix.
    fn doctor(&self) -> Vec<Check>;

    /// Runs `argv` in the running bottle `slug` (state dir `state`) as its
    /// agent, on this process's terminal or streams; returns its exit code.
    fn exec(&self, _slug: &str, _state: &Path, _argv: &[String]) -> Result<i32, BackendError> {
        Err(BackendError::Unsupported { backend: self.kind().as_str(), what: "exec" })
    }
}

/// A bottle resolved for a target and not built yet: what `--dry-run`
/// shows and what a launch builds.
pub trait PreparedBottle: std::fmt::Debug {
    /// What would be built, for `--dry-run` (the plan's `launch` view).
    fn view(&self) -> serde_json::Value;

    /// Every setting of the plan this cannot enforce as asked on this host:
    /// shown in the plan and at start, never silently dropped.
    fn warnings(&self) -> Vec<String>;

    /// The host uid a workspace copy must belong to, so that the agent
    /// inside owns it; `None` leaves it the launcher's.
    fn copy_owner(&self) -> Option<u32>;

    /// Makes what the bottle is made from (a `dockerfile:`'s image),
    /// before anything else is created; each line of progress goes to
    /// `progress`. Most backends have nothing to make.
    fn build(&self, _progress: &dyn Fn(&str)) -> Result<(), BackendError> {
        Ok(())
    }

    /// Takes the bottle's place on the host, where its sidecars will listen.
    fn reserve(&self, teardown: &mut Teardown) -> Result<Endpoint, BackendError>;

    /// Creates the bottle, ready for provisioning, able to reach its
    /// sidecars at `endpoint` (from `reserve`). The handle tears the bottle
    /// down when dropped.
    fn launch(&self, endpoint: &Endpoint, teardown: &mut Teardown) -> Result<Box<dyn Bottle>, BackendError>;
}

/// `value` (a backend's prepared bottle) as its `--dry-run` view, named.
pub(crate) fn view_of(kind: BackendKind, value: &impl serde::Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(value).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    if let Some(o) = v.as_object_mut() {
        o.insert("backend".into(), kind.as_str().into());
    }
    v
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[cfg(target_os = "linux")]
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
    /// A bottle's `dockerfile:` did not build; `log` is the end of its output.
    #[error("building {} failed: {why}{}", dockerfile.display(), if log.is_empty() { String::new() } else { format!("\n{log}") })]
    Build { dockerfile: PathBuf, why: String, log: String },
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
    /// The backend has no way to do this yet.
    #[error("`{what}` is not available for the {backend} backend yet")]
    Unsupported { backend: &'static str, what: &'static str },
}

fn tail(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        return String::new();
    }
    let start = s.char_indices().rev().nth(400).map_or(0, |(i, _)| i);
    format!(": {}", &s[start..])
}

/// The agent's uid and gid inside a bottle when bot-bottle runs as root
/// (native, docker and smolmachines alike).
pub const AGENT_ID: u32 = 1000;

/// The hidden modes of the bot-bottle binary that backends run inside
/// bottles (`__bottle-init` for a native bottle's init stages,
/// `__bottle-forward` for a guest's sidecar forwarder): `args` are the
/// program's arguments without its name. `Some(exit code)` when `args` ask
/// for one; the caller's `main` must return it before doing anything else.
pub fn helper_main(args: &[String]) -> Option<i32> {
    match args.first().map(String::as_str) {
        #[cfg(target_os = "linux")]
        Some("__bottle-init") => Some(native::init_main(&args[1..])),
        Some("__bottle-forward") => Some(guest_forward_main(&args[1..])),
        _ => None,
    }
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
        gone::eprintln_best_effort(format_args!("bot-bottle: paused at {phase}"));
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
