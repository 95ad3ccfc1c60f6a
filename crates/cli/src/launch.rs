//! `start` on the native backend: the sidecar bundle on the host, the
//! bottle around the agent, and teardown whatever happens.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bot_bottle_backend::native::{self, Forward, Limits, Spec, SpecCheck, SpecDir, SpecFile};
use bot_bottle_manifest::{Egress, Plan, WorkspaceMode};
use bot_bottle_provision::{Content, Launch, Owner, provision};
use bot_bottle_sidecars::{Proxy, ProxyConfig};

use crate::{Failure, chain, failure};

/// The proxy's port inside every bottle.
const PROXY_PORT: u16 = 3128;

pub(crate) struct Options {
    pub(crate) quiet: bool,
    /// What was asked, kept in the bottle's state so `resume` can ask again.
    pub(crate) request: Stored,
    /// Resume this bottle (its state dir and workspace copy) instead of a new one.
    pub(crate) resume: Option<String>,
}

/// A bottle's launch metadata (`launch.json` in its state dir).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stored {
    pub(crate) agent: String,
    pub(crate) bottles: Vec<String>,
    pub(crate) backend: Option<String>,
    pub(crate) args: Vec<String>,
    pub(crate) manifest: PathBuf,
    pub(crate) project: PathBuf,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Meta {
    pub(crate) slug: String,
    pub(crate) backend: String,
    pub(crate) request: Stored,
    /// The launcher's pid while it runs.
    pub(crate) pid: u32,
    pub(crate) started: u64,
    pub(crate) exit: Option<i32>,
}

pub(crate) fn bottles_dir() -> Option<PathBuf> {
    state_home().map(|h| h.join("bot-bottle/bottles"))
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn write_meta(state: &Path, meta: &Meta) {
    if let Ok(j) = serde_json::to_vec_pretty(meta) {
        let tmp = state.join("launch.json.tmp");
        if std::fs::write(&tmp, j).is_ok() {
            let _ = std::fs::rename(tmp, state.join("launch.json"));
        }
    }
}

pub(crate) fn read_meta(state: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(state.join("launch.json")).ok()?).ok()
}

fn say(opts: &Options, msg: &str) {
    if !opts.quiet {
        let _ = writeln!(std::io::stderr(), "bot-bottle: {msg}");
    }
}

pub(crate) fn state_home() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
}

/// `start --detach`: the same command again, minus `--detach`, in a process
/// group of its own with its output in the bottle's `agent.log`; prints the
/// slug and returns.
pub(crate) fn detach(agent: &str) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt;
    let slug = slug(agent);
    let dir = bottles_dir().ok_or_else(|| failure("error: no state dir: set XDG_STATE_HOME or HOME"))?.join(&slug);
    std::fs::create_dir_all(&dir).map_err(|e| failure(format!("error: creating {}: {e}", dir.display())))?;
    let log = std::fs::File::create(dir.join("agent.log")).map_err(|e| failure(format!("error: agent.log: {e}")))?;
    let err = log.try_clone().map_err(|e| failure(format!("error: agent.log: {e}")))?;
    let exe = std::env::current_exe().map_err(|e| failure(format!("error: locating bot-bottle: {e}")))?;
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--detach").collect();
    std::process::Command::new(exe)
        .args(args)
        .env("BOT_BOTTLE_SLUG", &slug)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| failure(format!("error: starting the bottle: {e}")))?;
    crate::print(&format!("{slug}\n"))
}

/// A slug names a directory: letters, digits, `.`, `_`, `-`, and not a dot name.
fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 100
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// A short name for this bottle: the agent and a random suffix.
fn slug(agent: &str) -> String {
    let mut b = [0u8; 3];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    format!("{agent}-{:02x}{:02x}{:02x}", b[0], b[1], b[2])
}

pub(crate) fn run(plan: &Plan, opts: &Options) -> Result<i32, Failure> {
    let dir = bottles_dir().ok_or_else(|| failure("error: no state dir: set XDG_STATE_HOME or HOME"))?;
    let slug = match &opts.resume {
        Some(s) if valid_slug(s) => s.clone(),
        Some(s) => return Err(failure(format!("error: invalid bottle name `{s}`"))),
        None => slug(&plan.agent.name),
    };
    let state = dir.join(&slug);
    let mk =
        |p: &Path| std::fs::create_dir_all(p).map_err(|e| failure(format!("error: creating {}: {e}", p.display())));
    mk(&state)?;
    // Private to the launcher: the bottle reaches what it needs through
    // mounts and open files, never by traversing this path.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| failure(format!("error: securing {}: {e}", state.display())))?;
    let mut meta = Meta {
        slug: slug.clone(),
        backend: "native".into(),
        request: opts.request.clone(),
        pid: std::process::id(),
        started: now(),
        exit: None,
    };
    write_meta(&state, &meta);
    native::pause_point("state");
    let result = launch(plan, opts, &slug, &state);
    // Teardown runs whatever happened above; the workspace copy and the
    // audit log stay, so nothing the agent did is lost.
    for d in ["root", "sockets"] {
        let _ = std::fs::remove_dir_all(state.join(d));
    }
    meta.exit = Some(match &result {
        Ok(c) => *c,
        Err(f) => i32::from(f.code),
    });
    write_meta(&state, &meta);
    result
}

fn launch(plan: &Plan, opts: &Options, slug: &str, state: &Path) -> Result<i32, Failure> {
    let mk =
        |p: &Path| std::fs::create_dir_all(p).map_err(|e| failure(format!("error: creating {}: {e}", p.display())));
    let (uid, gid) = native::agent_ids();
    let host_agent = if nix::unistd::geteuid().is_root() { Some(native::HOST_ID_BASE + uid) } else { None };

    // The workspace: a copy of the project by default.
    let cwd = opts.request.project.clone();
    let workspace = match plan.workspace {
        WorkspaceMode::None => None,
        WorkspaceMode::Mount => Some(cwd.clone()),
        WorkspaceMode::Copy => {
            let dst = state.join("workspace");
            if opts.resume.is_some() && dst.is_dir() {
                say(opts, &format!("resuming with the workspace at {}", dst.display()));
            } else {
                say(opts, &format!("copying {} into the bottle's workspace", cwd.display()));
                copy_tree(&cwd, &dst, host_agent).map_err(|e| failure(format!("error: copying the workspace: {e}")))?;
            }
            Some(dst)
        }
    };

    native::pause_point("workspace");
    // The sidecar bundle: the egress proxy on a unix socket.
    let sockets = state.join("sockets");
    mk(&sockets)?;
    // Only the bottle's own root (its forwarder) may connect: a socket
    // anyone could reach would lend them the bottle's injected tokens.
    let bottle_root = nix::unistd::geteuid().is_root().then_some(native::HOST_ID_BASE);
    let own = |p: &Path, mode: u32| -> Result<(), Failure> {
        let secure = || -> std::io::Result<()> {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
            if let Some(id) = bottle_root {
                std::os::unix::fs::lchown(p, Some(id), Some(id))?;
            }
            Ok(())
        };
        secure().map_err(|e| failure(format!("error: securing {}: {e}", p.display())))
    };
    own(&sockets, 0o700)?;
    let proxy = Proxy::new(ProxyConfig {
        bottle: slug.to_owned(),
        state_dir: state.join("proxy"),
        egress: Egress { routes: plan.egress.routes.clone(), dlp: plan.egress.dlp },
        upstream_ca: std::env::var_os("BOT_BOTTLE_UPSTREAM_CA").map(PathBuf::from),
        audit_log: Some(state.join("audit.jsonl")),
        env: Box::new(|name| std::env::var(name).ok()),
        known_secrets: Vec::new(),
    })
    .map_err(|e| failure(format!("error: starting the egress proxy: {}", chain(&e))))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failure(format!("error: runtime: {e}")))?;
    let sock = sockets.join("proxy.sock");
    let listener = rt
        .block_on(async { tokio::net::UnixListener::bind(&sock) })
        .map_err(|e| failure(format!("error: listening on {}: {e}", sock.display())))?;
    own(&sock, 0o600)?;
    let p = proxy.clone();
    rt.spawn(async move { p.serve_unix(listener).await });
    // Ctrl-C reaches the agent through the terminal; the launcher stays to
    // tear down. SIGTERM is for the launcher: it ends the bottle.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    rt.spawn(async move {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        let Ok(mut int) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) else { return };
        loop {
            tokio::select! {
                _ = term.recv() => { s.store(true, std::sync::atomic::Ordering::SeqCst); }
                _ = int.recv() => {}
            }
        }
    });

    native::pause_point("sidecars");
    // Provisioning, as data, then into the bottle's spec.
    let ca_pem = std::fs::read_to_string(proxy.ca_cert_path())
        .map_err(|e| failure(format!("error: reading the bottle CA: {e}")))?;
    let roots = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").ok();
    let prompt = read_prompt(plan)?;
    let interactive = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let prov = provision(
        plan,
        &Launch {
            user: "agent",
            home: "/home/agent",
            workspace: "/workspace",
            state_dir: "/run/bot-bottle",
            proxy_url: &format!("http://127.0.0.1:{PROXY_PORT}"),
            ca_pem: &ca_pem,
            system_roots_pem: roots.as_deref(),
            prompt: &prompt,
            git_gate_url: None,
            supervise_url: None,
            interactive,
        },
    )
    .map_err(|e| failure(format!("error: provisioning: {e}")))?;
    let mut files = Vec::new();
    for f in &prov.files {
        let content = match &f.content {
            Content::Inline(b) => b.clone(),
            Content::Host(p) => {
                std::fs::read(p).map_err(|e| failure(format!("error: reading {}: {e}", p.display())))?
            }
        };
        files.push(SpecFile { path: f.path.clone(), mode: f.mode, agent: f.owner == Owner::Agent, content });
    }
    let spec = Spec {
        argv: prov.argv.clone(),
        env: prov.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        workdir: if workspace.is_some() { prov.workdir.clone() } else { "/home/agent".into() },
        hostname: format!("bottle-{slug}").chars().take(63).collect(),
        uid,
        gid,
        user: "agent".into(),
        home: "/home/agent".into(),
        workspace: workspace.clone(),
        root_dir: state.join("root"),
        sockets_dir: Some(sockets),
        forwards: vec![Forward { port: PROXY_PORT, socket: "proxy.sock".into() }],
        files,
        dirs: prov
            .dirs
            .iter()
            .map(|d| SpecDir { path: d.path.clone(), mode: d.mode, agent: d.owner == Owner::Agent })
            .collect(),
        limits: Limits {
            pids: plan.resources.pids.map(u64::from).or(Some(4096)),
            memory: plan.resources.memory.map(|m| m.0),
        },
        checks: prov.commands.iter().map(|c| SpecCheck { argv: c.argv.clone(), why: c.why.clone() }).collect(),
        sync_out: state.join("sync-out"),
        sync_in: state.join("sync-in"),
        init_exe: std::env::current_exe().map_err(|e| failure(format!("error: locating bot-bottle: {e}")))?,
    };
    say(opts, &format!("starting {} in bottle {slug} (native)", plan.agent.name));
    let code = std::thread::scope(|scope| {
        let h = scope.spawn(|| native::run(&spec, state, &stop));
        h.join()
    });
    let code = match code {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(failure(format!("error: the bottle failed: {}", chain(&e)))),
        Err(_) => return Err(failure("error: the bottle launcher panicked")),
    };
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        say(opts, "stopped by SIGTERM");
    }
    if let Some(ws) = workspace.filter(|_| plan.workspace == WorkspaceMode::Copy) {
        say(opts, &format!("the agent's workspace is kept at {}", ws.display()));
    }
    drop(rt);
    Ok(code)
}

/// The agent's prompt: its file from the body's first line on.
fn read_prompt(plan: &Plan) -> Result<String, Failure> {
    let text = std::fs::read_to_string(&plan.agent.prompt.file)
        .map_err(|e| failure(format!("error: reading {}: {e}", plan.agent.prompt.file.display())))?;
    Ok(text.lines().skip(plan.agent.prompt.line.saturating_sub(1)).collect::<Vec<_>>().join("\n"))
}

/// Copies a project tree, symlinks as symlinks, modes kept, owned by the
/// agent's host id when given.
fn copy_tree(src: &Path, dst: &Path, owner: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    let chown = |p: &Path| -> std::io::Result<()> {
        if let Some(id) = owner {
            std::os::unix::fs::lchown(p, Some(id), Some(id))?;
        }
        Ok(())
    };
    chown(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let ft = e.file_type()?;
        let to = dst.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &to, owner)?;
            std::fs::set_permissions(&to, e.metadata()?.permissions())?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &to)?;
            chown(&to)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &to)?;
            chown(&to)?;
        }
        // Sockets, fifos and devices are not part of a project.
    }
    Ok(())
}
