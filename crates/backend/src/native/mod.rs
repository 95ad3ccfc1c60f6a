//! The native backend: Linux namespaces, no daemon.
//!
//! [`Native`] is the [`Backend`]. The launcher ([`NativeBottle::launch`])
//! starts the init stages ([`init_main`], reached through the binary's
//! hidden `__bottle-init` mode), writes their id maps from outside, and then
//! drives the bottle's pid 1 over a private control socket: provisioning,
//! commands, and finally the agent.

mod cgroup;
mod control;
mod doctor;
mod idmap;
mod init;
mod landlock;
mod pid1;
pub(crate) mod seccomp;
mod spec;

use std::fs;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bot_bottle_manifest::WorkspaceMode;
use nix::sys::stat::Mode;
use nix::unistd::mkfifo;

use crate::terminal::Relay;
use crate::{
    Backend, BackendError, Bottle, Endpoint, Exec, Output, Owner, PROXY_PORT, PreparedBottle, Target, Teardown,
};
use bot_bottle_manifest::BackendKind;
use control::{Reply, Request, Size};

pub use self::cgroup::{
    Cgroup, CgroupError, CgroupMode, Detection as CgroupDetection, Rejection as CgroupRejection,
    cleanup_stale as cgroup_cleanup_stale, detect as cgroup_detect, list as cgroup_list,
};
pub use self::landlock::{
    FsRules, LandlockError, LandlockStatus, NotEnforced as LandlockNotEnforced, probe as landlock_probe,
    restrict as landlock_restrict,
};
pub use doctor::{Check, Host, Status, checks as doctor_checks, ready as doctor_ready, this_host as doctor};
pub use idmap::Groups;
pub use init::init_main;
pub use seccomp::filters as seccomp_filters;
pub use spec::{Forward, Limits, Spec, SpecCgroup};

/// First host uid/gid of a bottle's range when bot-bottle runs as root:
/// inside root maps here, so nothing in a bottle is ever host root.
pub const HOST_ID_BASE: u32 = 0x7000_0000;
pub use crate::AGENT_ID;

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the bottle's init exited (exit {0})")]
    InitDied(i32),
    #[error("building the bottle: {0}")]
    Init(String),
    #[error("writing the bottle's id maps: {0}")]
    Map(String),
    #[error("the bottle's cgroup")]
    Cgroup(#[from] CgroupError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NativeError {
    let what = what.into();
    move |source| NativeError::Io { what, source }
}

/// The uid and gid the agent runs as inside, given who launches the bottle.
pub fn agent_ids() -> (u32, u32) {
    if nix::unistd::geteuid().is_root() { (AGENT_ID, AGENT_ID) } else { (0, 0) }
}

/// The native backend. The binary at `init` must run
/// [`init_main`] when called as `init __bottle-init ...` (the bundled CLI
/// does); it is re-executed for the bottle's init stages.
#[derive(Clone, Debug)]
pub struct Native {
    pub init: PathBuf,
}

impl Native {
    /// The native backend with this program as the bottle's init.
    pub fn new() -> Result<Native, BackendError> {
        Ok(Native { init: std::env::current_exe().map_err(crate::io("locating this program"))? })
    }
}

/// What a native launch builds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prepared {
    /// The bottle's name, and its cgroup's.
    pub slug: String,
    pub spec: Spec,
    /// How each limit and the launcher's groups are dealt with on this host.
    pub enforcement: Enforcement,
    /// Every setting of the plan this host cannot enforce as asked.
    pub warnings: Vec<String>,
    pub workspace_mode: WorkspaceMode,
    pub project: PathBuf,
    pub state: PathBuf,
    pub resume: bool,
}

/// The host uid that owns what the bottle's root may use (its sockets):
/// the bottle's root id when launched by root; the launcher's own otherwise.
fn bottle_root() -> Option<u32> {
    nix::unistd::geteuid().is_root().then_some(HOST_ID_BASE)
}

/// Sets `mode` on `p` and gives it to the bottle's root.
fn give_to_bottle(p: &Path, mode: u32) -> std::io::Result<()> {
    crate::own(p, mode, bottle_root())
}

impl Backend for Native {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    fn prepare(&self, t: &Target<'_>) -> Result<Box<dyn PreparedBottle>, BackendError> {
        Ok(Box::new(self.prepare_spec(t)?))
    }

    fn cleanup(&self, slug: &str, state: &Path) -> Vec<String> {
        cleanup_leftovers(slug, state)
    }

    fn doctor(&self) -> Vec<Check> {
        doctor::this_host()
    }

    fn exec(&self, _slug: &str, state: &Path, argv: &[String]) -> Result<i32, BackendError> {
        exec_in(state, argv)
    }
}

impl Native {
    /// What a native launch for `t` builds.
    pub fn prepare_spec(&self, t: &Target<'_>) -> Result<Prepared, BackendError> {
        let (uid, gid) = agent_ids();
        let workspace = match t.plan.workspace {
            WorkspaceMode::None => None,
            WorkspaceMode::Mount => Some(t.project.to_path_buf()),
            WorkspaceMode::Copy => Some(t.state.join("workspace")),
        };
        let spec = Spec {
            hostname: format!("bottle-{}", t.slug).chars().take(63).collect(),
            uid,
            gid,
            user: "agent".into(),
            home: "/home/agent".into(),
            workspace,
            root_dir: t.state.join("root"),
            sockets_dir: Some(t.state.join("sockets")),
            forwards: [
                Some(Forward { port: PROXY_PORT, socket: "proxy.sock".into() }),
                Some(Forward { port: crate::GATE_PORT, socket: "gate.sock".into() }),
                // Supervise is reachable only from a bottle whose plan asks for it.
                t.plan.supervise.then(|| Forward { port: crate::SUPERVISE_PORT, socket: "supervise.sock".into() }),
            ]
            .into_iter()
            .flatten()
            .collect(),
            limits: Limits {
                pids: t.plan.resources.pids.map(u64::from).or(Some(4096)),
                memory: t.plan.resources.memory.map(|m| m.0),
                cpus: t.plan.resources.cpus.map(|c| u64::from(c.0)),
                disk: Some(t.plan.resources.disk.map_or(crate::DEFAULT_DISK, |d| d.0)),
            },
            sync_out: t.state.join("sync-out"),
            sync_in: t.state.join("sync-in"),
            control: t.state.join("control.sock"),
            init_exe: self.init.clone(),
            mounts: t.plan.mounts.iter().map(|m| m.path.clone()).collect(),
            cgroup: None,
        };
        let (enforcement, warnings) = enforcement(&spec.limits, &t.plan.resources);
        Ok(Prepared {
            slug: t.slug.to_owned(),
            spec,
            enforcement,
            warnings,
            workspace_mode: t.plan.workspace,
            project: t.project.to_path_buf(),
            state: t.state.to_path_buf(),
            resume: t.resume,
        })
    }
}

impl PreparedBottle for Prepared {
    fn view(&self) -> serde_json::Value {
        crate::view_of(BackendKind::Native, self)
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn copy_owner(&self) -> Option<u32> {
        crate::copy_owner("native")
    }

    fn reserve(&self, teardown: &mut Teardown) -> Result<Endpoint, BackendError> {
        let p = self;
        let Some(dir) = p.spec.sockets_dir.clone() else {
            return Err(BackendError::Control("a native bottle needs a sockets directory".into()));
        };
        fs::create_dir_all(&dir).map_err(crate::io(format!("creating {}", dir.display())))?;
        // Only the bottle's own root (its forwarders) may connect: a socket
        // anyone could reach would lend them the bottle's injected tokens.
        give_to_bottle(&dir, 0o700).map_err(crate::io(format!("securing {}", dir.display())))?;
        let d = dir.clone();
        teardown.push("the sidecar sockets", move || {
            // Logged by `gone`; `bot-bottle cleanup` retries what is left.
            if crate::gone::remove_dir_all("the sidecar sockets", &d).is_err() {
                tracing::warn!(dir = %d.display(), "the sidecar sockets outlive the bottle; `bot-bottle cleanup` retries");
            }
        });
        Ok(Endpoint::Unix { dir, owner: bottle_root() })
    }

    fn launch(&self, _endpoint: &Endpoint, _teardown: &mut Teardown) -> Result<Box<dyn Bottle>, BackendError> {
        let p = self;
        let owner = bottle_root().map(|_| HOST_ID_BASE + agent_ids().0);
        crate::prepare_workspace(p.workspace_mode, &p.project, &p.state, p.resume, owner)?;
        crate::pause_point("workspace");
        // The bottle undoes itself (its root, its cgroup) when dropped or
        // when it fails to start.
        let cgroup = bottle_cgroup(&p.slug, &p.spec.limits).map_err(NativeError::from)?;
        Ok(Box::new(NativeBottle::launch_in(&p.spec, &p.state, cgroup)?))
    }
}

/// What a killed launcher left of the native bottle `slug` (state dir
/// `state`): its processes, its cgroup, its runtime files.
fn cleanup_leftovers(slug: &str, state: &Path) -> Vec<String> {
    {
        let mut did = Vec::new();
        let pids = leftover_processes(state);
        let (killed, alive): (Vec<i32>, Vec<i32>) =
            pids.iter().partition(|pid| crate::gone::kill("a leftover bottle process", **pid).is_ok());
        if !killed.is_empty() {
            did.push(format!("killed {} process(es)", killed.len()));
        }
        for pid in alive {
            did.push(format!("could not kill process {pid}"));
        }
        // Kills whatever is still inside, whatever its command line.
        match cgroup::cleanup_stale(slug) {
            Ok(true) => did.push("removed its cgroup".into()),
            Ok(false) => {}
            Err(e) => did.push(format!("could not remove its cgroup: {}", error_chain(&e))),
        }
        for d in ["root", "sockets", "sync-in", "sync-out", "spec.json", "control.sock", EXEC_SOCKET] {
            let p = state.join(d);
            if fs::symlink_metadata(&p).is_ok() {
                match crate::gone::remove_any(d, &p) {
                    Ok(()) => did.push(format!("removed {d}")),
                    Err(e) => did.push(format!("could not remove {}: {e}", p.display())),
                }
            }
        }
        did
    }
}

/// How a native bottle's limits and the launcher's groups are dealt with.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Enforcement {
    pub pids: String,
    pub memory: String,
    pub cpus: String,
    pub disk: String,
    #[serde(flatten)]
    pub groups: Groups,
}

/// What this host will enforce of `limits` (the plan asked for `asked`),
/// and a warning for each setting it cannot enforce as asked.
fn enforcement(limits: &Limits, asked: &bot_bottle_manifest::Resources) -> (Enforcement, Vec<String>) {
    let detection = cgroup::detect(limits);
    let by_cgroup = detection.enforced(limits);
    let mode = detection.mode().map_or_else(String::new, |m| m.to_string());
    let doctor = "`bot-bottle doctor` says why and how to fix it";
    let mut warnings = Vec::new();
    let pids = match (by_cgroup.pids, limits.pids) {
        (Some(_), _) => mode.clone(),
        (None, Some(_)) => {
            if asked.pids.is_some() {
                warnings.push(format!(
                    "pids: no usable cgroup here, so the limit counts every process of your user (RLIMIT_NPROC), not the bottle's alone; {doctor}"
                ));
            }
            "RLIMIT_NPROC (all of the launching user's processes)".into()
        }
        (None, None) => "none".into(),
    };
    let memory = match (by_cgroup.memory, limits.memory) {
        (Some(_), _) => mode.clone(),
        (None, Some(_)) => {
            warnings.push(format!(
                "memory: no usable cgroup here, so the limit holds for each process (RLIMIT_DATA), not for the bottle as a whole; {doctor}"
            ));
            "RLIMIT_DATA (each process)".into()
        }
        (None, None) => "none".into(),
    };
    let cpus = match (by_cgroup.cpus, limits.cpus) {
        (Some(_), _) => mode,
        (None, Some(_)) => {
            warnings.push(format!("cpus: not enforced: no cgroup with a cpu controller here; {doctor}"));
            "not enforced".into()
        }
        (None, None) => "none".into(),
    };
    let disk = match limits.disk {
        Some(_) => "each file: RLIMIT_FSIZE; the workspace: measured every second, the bottle stopped past it".into(),
        None => "none".into(),
    };
    let (_, groups) = idmap::GidMap::for_this_process();
    if let Groups::Kept { gids, why } = &groups {
        warnings.push(format!(
            "groups: your supplementary groups ({}) stay with the bottle: {why}; nothing only a group may read is mounted inside, but a `workspace: mount` project can hold such files",
            gids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ));
    }
    (Enforcement { pids, memory, cpus, disk, groups }, warnings)
}

/// The cgroup for the bottle `name` with `limits`, where this host has a
/// usable one (`None`: the bottle falls back to rlimits; `bot-bottle
/// doctor` says why). What a crashed run left under the same name (a
/// resumed bottle keeps its name) is removed first.
pub fn bottle_cgroup(name: &str, limits: &Limits) -> Result<Option<Arc<Cgroup>>, CgroupError> {
    cgroup::cleanup_stale(name)?;
    Ok(Cgroup::create(name, limits)?.map(Arc::new))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(&format!(": {c}"));
        source = c.source();
    }
    s
}

/// Processes of a bottle's init still alive (the init stages name the
/// bottle's state dir in their argv).
fn leftover_processes(state: &Path) -> Vec<i32> {
    let needle = state.display().to_string();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains("__bottle-init") && c.contains(&needle))
        })
        .collect()
}

/// A running native bottle: its init's first stage, the control socket to
/// its pid 1, and its cgroup if it has one. Dropping it kills every
/// process inside, then removes the cgroup.
#[derive(Debug)]
pub struct NativeBottle {
    child: Child,
    ctl: BufReader<UnixStream>,
    spec: Spec,
    spec_path: PathBuf,
    cgroup: Option<Arc<Cgroup>>,
}

impl NativeBottle {
    /// Builds the bottle described by `spec` (whose sync, control and root
    /// paths are in `state`) and waits until its pid 1 is ready for
    /// commands. The bottle shares this process's stdin, stdout and stderr.
    /// Without a cgroup: its limits are rlimits.
    pub fn launch(spec: &Spec, state: &Path) -> Result<NativeBottle, NativeError> {
        NativeBottle::launch_in(spec, state, None)
    }

    /// [`NativeBottle::launch`] inside `cgroup` (see [`bottle_cgroup`]),
    /// which enforces the limits it can in place of rlimits, and which the
    /// bottle removes when it ends (or fails to start).
    pub fn launch_in(spec: &Spec, state: &Path, cgroup: Option<Arc<Cgroup>>) -> Result<NativeBottle, NativeError> {
        let mut spec = spec.clone();
        spec.cgroup = cgroup.as_ref().map(|cg| {
            let enforced = cg.enforced(&spec.limits);
            SpecCgroup { procs: cg.procs_files(), pids: enforced.pids.is_some(), memory: enforced.memory.is_some() }
        });
        let result = NativeBottle::start(&spec, state, cgroup.clone());
        if result.is_err()
            && let Some(cg) = &cgroup
        {
            // Teardown: a failure is reported, and `cleanup` retries it.
            if let Err(e) = cg.remove() {
                tracing::warn!(error = %e, "removing the cgroup of a bottle that failed to start");
            }
        }
        result
    }

    /// The bottle's cgroup, if it has one.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_deref()
    }

    fn start(spec: &Spec, state: &Path, cgroup: Option<Arc<Cgroup>>) -> Result<NativeBottle, NativeError> {
        let spec_path = state.join("spec.json");
        let (listener, child) = match NativeBottle::spawn(spec, &spec_path) {
            Ok(started) => started,
            Err(e) => {
                cleanup(spec, &spec_path);
                return Err(e);
            }
        };
        NativeBottle::connect(spec, spec_path, listener, child, cgroup)
    }

    /// The files the init stages meet the launcher through, and the first
    /// stage itself.
    fn spawn(spec: &Spec, spec_path: &Path) -> Result<(UnixListener, Child), NativeError> {
        for p in [&spec.sync_out, &spec.sync_in] {
            // A stale fifo from a killed launcher; mkfifo below says what
            // is wrong if it could not go.
            crate::gone::remove_file("a stale sync fifo", p).ok();
            mkfifo(p.as_path(), Mode::S_IRUSR | Mode::S_IWUSR)
                .map_err(|e| NativeError::Io { what: format!("mkfifo {}", p.display()), source: e.into() })?;
        }
        fs::create_dir_all(&spec.root_dir).map_err(io(format!("creating {}", spec.root_dir.display())))?;
        let json = serde_json::to_vec(spec).map_err(|e| NativeError::Io { what: "spec".into(), source: e.into() })?;
        fs::write(spec_path, json).map_err(io("writing the bottle spec"))?;
        // A stale socket from a killed launcher; bind below fails (and
        // says why) if it could not go.
        crate::gone::remove_file("a stale control socket", &spec.control).ok();
        let listener =
            UnixListener::bind(&spec.control).map_err(io(format!("listening on {}", spec.control.display())))?;
        give_to_bottle(&spec.control, 0o600).map_err(io("securing the control socket"))?;
        // Nothing of the launcher's environment (tokens included) goes in, not
        // even to the init stages, whose /proc/*/environ an agent might read.
        // Nor any of its standard streams, which may be the user's
        // terminal: the init stages get none, and what they say on stderr
        // comes back through a pipe. The agent's streams are made later,
        // inside (see `run_agent`).
        let mut child = Command::new(&spec.init_exe)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("__bottle-init")
            .arg("a")
            .arg(spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(format!("starting {}", spec.init_exe.display())))?;
        if let Some(mut err) = child.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::stderr()));
        }
        Ok((listener, child))
    }

    /// Maps the first stage's ids and waits for pid 1 on the control socket.
    fn connect(
        spec: &Spec,
        spec_path: PathBuf,
        listener: UnixListener,
        mut child: Child,
        cgroup: Option<Arc<Cgroup>>,
    ) -> Result<NativeBottle, NativeError> {
        crate::pause_point("init-spawned");
        let result = handshake(spec, &mut child).and_then(|()| accept(&listener, &mut child));
        drop(listener);
        // Nothing connects to it again; a failure is logged by `gone`, and
        // `cleanup` at teardown tries once more.
        crate::gone::remove_file("the control socket", &spec.control).ok();
        crate::pause_point("bottle-mapped");
        let ctl = match result {
            Ok(s) => s,
            Err(e) => {
                // `kill` fails only for a child already reaped; `wait`
                // reaps it either way.
                if let Err(k) = child.kill() {
                    tracing::warn!(pid = child.id(), error = %k, "killing the bottle's init after a failed start");
                }
                if let Err(w) = child.wait() {
                    tracing::warn!(pid = child.id(), error = %w, "reaping the bottle's init after a failed start");
                }
                cleanup(spec, &spec_path);
                return Err(e);
            }
        };
        let mut b = NativeBottle { child, ctl: BufReader::new(ctl), spec: spec.clone(), spec_path, cgroup };
        match control::recv::<Reply>(&mut b.ctl) {
            Ok(Some(Reply::Ready)) => Ok(b),
            Ok(Some(Reply::Error { message })) => Err(NativeError::Init(message)),
            _ => Err(NativeError::InitDied(b.wait_exit())),
        }
    }

    fn call(&mut self, req: &Request) -> Result<Reply, BackendError> {
        let sent = control::send(self.ctl.get_mut(), req);
        let reply = sent.and_then(|()| control::recv::<Reply>(&mut self.ctl));
        match reply {
            Ok(Some(r)) => Ok(r),
            Ok(None) | Err(_) => Err(NativeError::InitDied(self.wait_exit()).into()),
        }
    }

    fn done(&mut self, what: String, req: &Request) -> Result<(), BackendError> {
        match self.call(req)? {
            Reply::Done => Ok(()),
            Reply::Error { message } => Err(BackendError::Inside { what, message }),
            other => Err(BackendError::Control(format!("unexpected reply {other:?}"))),
        }
    }

    /// The exit code of the bottle once it has ended (waits briefly).
    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return exit_code(s),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => return -1,
            }
        }
    }
}

impl Bottle for NativeBottle {
    fn exec(&mut self, cmd: &Exec) -> Result<Output, BackendError> {
        match self.call(&Request::Exec { cmd: cmd.clone() })? {
            Reply::Output { code, stdout, stderr } => Ok(Output { code, stdout, stderr }),
            Reply::Error { message } => {
                Err(BackendError::Inside { what: format!("running `{}`", cmd.argv.join(" ")), message })
            }
            other => Err(BackendError::Control(format!("unexpected reply {other:?}"))),
        }
    }

    fn mkdir(&mut self, path: &str, mode: u32, owner: Owner) -> Result<(), BackendError> {
        self.done(format!("creating {path}"), &Request::Mkdir { path: path.to_owned(), mode, owner })
    }

    fn copy_in(&mut self, path: &str, content: &[u8], mode: u32, owner: Owner) -> Result<(), BackendError> {
        let req = Request::Write { path: path.to_owned(), mode, owner, content: content.to_vec() };
        self.done(format!("writing {path}"), &req)
    }

    fn run_agent(&mut self, cmd: &Exec, stop: &AtomicBool) -> Result<i32, BackendError> {
        let size = crate::terminal::terminal_size();
        let terminal = size.map(|w| Size { rows: w.ws_row, cols: w.ws_col });
        let what = format!("starting `{}`", cmd.argv.join(" "));
        let sent = control::send(self.ctl.get_mut(), &Request::Agent { cmd: cmd.clone(), terminal });
        let reply = sent.and_then(|()| control::recv_with_fds::<Reply>(&mut self.ctl));
        let fds = match reply {
            Ok(Some((Reply::Started, fds))) => fds,
            Ok(Some((Reply::Error { message }, _))) => return Err(BackendError::Inside { what, message }),
            Ok(Some((other, _))) => return Err(BackendError::Control(format!("unexpected reply {other:?}"))),
            Ok(None) | Err(_) => return Err(NativeError::InitDied(self.wait_exit()).into()),
        };
        let relay = match (terminal, <[_; 3]>::try_from(fds)) {
            (Some(_), Ok(_)) | (None, Err(_)) => {
                return Err(BackendError::Control("the agent's streams did not arrive".into()));
            }
            (Some(_), Err(mut one)) if one.len() == 1 => {
                Relay::pty(one.remove(0)).map_err(io("putting your terminal in raw mode"))?
            }
            (Some(_), Err(_)) => return Err(BackendError::Control("the agent's terminal did not arrive".into())),
            (None, Ok([stdin, stdout, stderr])) => Relay::pipes(stdin, stdout, stderr),
        };
        let signals = Signals::register().map_err(io("signal handlers"))?;
        // `bot-bottle exec` reaches the running bottle through this launcher.
        let exec = ExecServer::listen(&self.exec_socket()).map_err(io("the bottle's exec socket"))?;
        crate::pause_point("agent");
        let code = loop {
            if let Some(conn) = exec.accept() {
                // One caller's failure is theirs to see, not the bottle's end.
                if let Err(e) = self.serve_exec(conn, cmd) {
                    tracing::warn!("bot-bottle exec: {e}");
                }
            }
            if let Some(s) = self.child.try_wait().map_err(io("waiting for the bottle"))? {
                break exit_code(s);
            }
            if stop.load(Ordering::SeqCst) {
                // The init stages die with their parent (PR_SET_PDEATHSIG), so
                // killing the first takes down the bottle's pid 1 and all inside.
                self.child.kill().ok();
            }
            if signals.take(&signals.winch) {
                relay.resize();
            }
            for (flag, signal) in [(&signals.int, libc::SIGINT), (&signals.quit, libc::SIGQUIT)] {
                if signals.take(flag) {
                    // The bottle may be ending; its exit is what counts then.
                    self.call(&Request::Signal { signal }).ok();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        relay.finish();
        drop(exec);
        Ok(code)
    }
}

impl NativeBottle {
    /// Where the launcher listens for `bot-bottle exec`, in the bottle's
    /// state dir (0700): nothing inside the bottle can reach it.
    fn exec_socket(&self) -> PathBuf {
        self.spec_path.with_file_name(EXEC_SOCKET)
    }

    /// Runs one `bot-bottle exec` request: as the agent, with the agent's
    /// environment and working directory, its streams handed to the caller.
    fn serve_exec(&mut self, conn: UnixStream, agent: &Exec) -> Result<(), String> {
        let me = rustix::process::geteuid();
        let peer = rustix::net::sockopt::socket_peercred(&conn).map_err(|e| format!("peer credentials: {e}"))?;
        // The socket is 0600 in a 0700 directory; check anyway.
        if peer.uid != me && !peer.uid.is_root() {
            return Err(format!("refused a caller with uid {}", peer.uid.as_raw()));
        }
        conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
        let req: control::ExecRequest = match control::recv(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("reading the request: {e}")),
        };
        let reply_err = |message: String| {
            let mut w = &conn;
            control::send(&mut w, &Reply::Error { message: message.clone() }).ok();
            message
        };
        if req.argv.is_empty() {
            return Err(reply_err("no command to run".into()));
        }
        let cmd = Exec { argv: req.argv, env: agent.env.clone(), workdir: agent.workdir.clone(), user: Owner::Agent };
        let sent = control::send(self.ctl.get_mut(), &Request::Spawn { cmd, terminal: req.terminal });
        match sent.and_then(|()| control::recv_with_fds::<Reply>(&mut self.ctl)) {
            Ok(Some((Reply::Started, fds))) => {
                let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
                control::send_with_fds(&conn, &Reply::Started, &borrowed).map_err(|e| format!("answering: {e}"))
            }
            Ok(Some((Reply::Error { message }, _))) => Err(reply_err(message)),
            Ok(Some((other, _))) => Err(reply_err(format!("unexpected reply {other:?}"))),
            Ok(None) | Err(_) => Err(reply_err("the bottle ended".into())),
        }
    }
}

/// The name of the launcher's exec socket in a bottle's state dir.
const EXEC_SOCKET: &str = "exec.sock";

/// The launcher's listener for `bot-bottle exec`; removed when dropped.
struct ExecServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ExecServer {
    fn listen(path: &Path) -> std::io::Result<ExecServer> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ExecServer { listener, path: path.to_path_buf() })
    }

    fn accept(&self) -> Option<UnixStream> {
        let (conn, _) = self.listener.accept().ok()?;
        conn.set_nonblocking(false).ok()?;
        Some(conn)
    }
}

impl Drop for ExecServer {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!("removing {}: {e}", self.path.display());
        }
    }
}

/// `bot-bottle exec`: runs `argv` in the running bottle whose state dir is
/// `state`, as its agent, on a terminal of its own when this process is on
/// one (relayed like the agent's), on pipes otherwise; returns its exit
/// code.
pub fn exec_in(state: &Path, argv: &[String]) -> Result<i32, BackendError> {
    let path = state.join(EXEC_SOCKET);
    let conn = UnixStream::connect(&path).map_err(|e| {
        BackendError::Control(format!(
            "cannot reach the bottle ({}: {e}); is it running? (`bot-bottle list`)",
            path.display()
        ))
    })?;
    let size = crate::terminal::terminal_size();
    let terminal = size.map(|w| Size { rows: w.ws_row, cols: w.ws_col });
    let mut w = &conn;
    control::send(&mut w, &control::ExecRequest { argv: argv.to_vec(), terminal }).map_err(io("asking the bottle"))?;
    let mut reader = BufReader::new(conn);
    let mut fds = match control::recv_with_fds::<Reply>(&mut reader) {
        Ok(Some((Reply::Started, fds))) => fds,
        Ok(Some((Reply::Error { message }, _))) => {
            return Err(BackendError::Inside { what: format!("running `{}`", argv.join(" ")), message });
        }
        Ok(Some((other, _))) => return Err(BackendError::Control(format!("unexpected reply {other:?}"))),
        Ok(None) | Err(_) => return Err(BackendError::Control("the bottle's launcher hung up".into())),
    };
    let status = fds.pop().ok_or_else(|| BackendError::Control("no status pipe".into()))?;
    let relay = match (terminal, <[_; 3]>::try_from(fds)) {
        (None, Ok([stdin, stdout, stderr])) => Relay::pipes(stdin, stdout, stderr),
        (Some(_), Err(mut one)) if one.len() == 1 => {
            Relay::pty(one.remove(0)).map_err(io("putting your terminal in raw mode"))?
        }
        _ => return Err(BackendError::Control("the command's streams did not arrive".into())),
    };
    let signals = Signals::register().map_err(io("signal handlers"))?;
    let code = wait_status(status, || {
        if signals.take(&signals.winch) {
            relay.resize();
        }
    });
    relay.finish();
    code.ok_or_else(|| BackendError::Control("the bottle ended before the command".into()))
}

/// Reads the exit code a status pipe gets, calling `tick` every 50 ms
/// meanwhile; `None` if the pipe closes without one (the bottle ended).
fn wait_status(status: std::os::fd::OwnedFd, tick: impl Fn()) -> Option<i32> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut got = Vec::new();
    let every = Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
    loop {
        tick();
        let mut fds = [PollFd::new(&status, PollFlags::IN)];
        match poll(&mut fds, Some(&every)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(_) => return None,
        }
        let mut buf = [0u8; 16];
        match rustix::io::read(&status, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    std::str::from_utf8(&got).ok()?.trim().parse().ok()
}

/// The signals the launcher passes on while the agent runs: window size
/// changes, and SIGINT and SIGQUIT sent to the launcher (from a terminal
/// the agent is not on, or by `kill`). Unregistered when dropped.
struct Signals {
    winch: Arc<AtomicBool>,
    int: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        let (winch, int, quit) = Default::default();
        let mut s = Signals { winch, int, quit, ids: Vec::new() };
        for (sig, flag) in [
            (signal_hook::consts::SIGWINCH, s.winch.clone()),
            (signal_hook::consts::SIGINT, s.int.clone()),
            (signal_hook::consts::SIGQUIT, s.quit.clone()),
        ] {
            s.ids.push(signal_hook::flag::register(sig, flag)?);
        }
        Ok(s)
    }

    fn take(&self, flag: &AtomicBool) -> bool {
        flag.swap(false, Ordering::SeqCst)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

impl Drop for NativeBottle {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            if let Err(e) = self.child.kill() {
                tracing::warn!(error = %e, "killing the bottle's init");
            }
            if let Err(e) = self.child.wait() {
                tracing::warn!(error = %e, "reaping the bottle's init");
            }
        }
        // The init stages are gone, and with pid 1 everything in its pid
        // namespace; the cgroup makes sure, and goes.
        if let Some(cg) = &self.cgroup
            && let Err(e) = cg.remove()
        {
            tracing::warn!(error = %e, "removing the bottle's cgroup; `bot-bottle cleanup` retries");
        }
        cleanup(&self.spec, &self.spec_path);
    }
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// Removes the bottle's runtime files. What cannot go is logged (by
/// `gone`) and left for `bot-bottle cleanup`, which removes these same
/// files and reports any it cannot.
fn cleanup(spec: &Spec, spec_path: &Path) {
    let files = [
        ("the exec socket", spec_path.with_file_name(EXEC_SOCKET)),
        ("a sync fifo", spec.sync_out.clone()),
        ("a sync fifo", spec.sync_in.clone()),
        ("the control socket", spec.control.clone()),
        ("the bottle spec", spec_path.to_path_buf()),
    ];
    let mut left = files.iter().filter(|(what, p)| crate::gone::remove_file(what, p).is_err()).count();
    left += usize::from(crate::gone::remove_dir("the bottle's root mount point", &spec.root_dir).is_err());
    if left > 0 {
        tracing::warn!(count = left, "runtime files outlive the bottle; `bot-bottle cleanup` retries");
    }
}

/// Waits for the bottle's pid 1 to connect, without hanging if it dies.
fn accept(listener: &UnixListener, child: &mut Child) -> Result<UnixStream, NativeError> {
    listener.set_nonblocking(true).map_err(io("control socket"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(io("control socket"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(io("accepting the bottle's control connection")(e)),
        }
        if let Some(s) = child.try_wait().map_err(io("waiting for the bottle"))? {
            return Err(NativeError::InitDied(exit_code(s)));
        }
        if Instant::now() > deadline {
            return Err(NativeError::Init("the bottle's pid 1 did not connect within 60 s".into()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for the init to unshare (without blocking forever if it dies),
/// writes its id maps from outside, and lets it go on.
fn handshake(spec: &Spec, child: &mut std::process::Child) -> Result<(), NativeError> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&spec.sync_out)
        .map_err(io("opening the sync fifo"))?;
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 64];
        match f.read(&mut buf) {
            Ok(n) if n > 0 => {
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"\n") {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(io("reading the sync fifo")(e)),
        }
        if let Some(s) = child.try_wait().map_err(io("waiting for the bottle"))? {
            return Err(NativeError::InitDied(s.code().unwrap_or(-1)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = child.id();
    let (map, _) = idmap::GidMap::for_this_process();
    let answer = match idmap::write_maps(pid, &map) {
        Ok(()) => "mapped\n".to_owned(),
        Err(e) => format!("{e}\n"),
    };
    fs::OpenOptions::new()
        .write(true)
        .open(&spec.sync_in)
        .and_then(|mut w| w.write_all(answer.as_bytes()))
        .map_err(io("writing the sync fifo"))?;
    if answer == "mapped\n" { Ok(()) } else { Err(NativeError::Map(answer.trim().to_owned())) }
}
