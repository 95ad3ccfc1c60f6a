//! `start` on the native backend: the sidecar bundle on the host, the
//! bottle around the agent, and teardown whatever happens.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bot_bottle_backend::docker::Docker;
use bot_bottle_backend::native::Native;
use bot_bottle_backend::smolmachines::Smolmachines;
use bot_bottle_backend::{
    Backend, BackendError, Bottle, CopyOptions, CopyReport, DiskWatch, Exec, Guarded, Owner, Progress, Project,
    ProjectQuery, ProjectSource, Target, Teardown, copy_owner, copy_project, detect, find_project, guarded,
    partial_path, pause_point, workdir_in,
};
use bot_bottle_manifest::{BackendKind, Plan, WorkspaceMode};
use bot_bottle_provision::{Launch, provision};
use bot_bottle_sidecars::{Bundle, BundleConfig, bundle_cleanup};

use crate::{Failure, chain, failure, usage};

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
    /// Where the agent starts, relative to the project.
    #[serde(default)]
    pub(crate) workdir: PathBuf,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Meta {
    pub(crate) slug: String,
    pub(crate) backend: String,
    pub(crate) request: Stored,
    /// The launcher's pid while it runs.
    pub(crate) pid: u32,
    /// The launcher's start token (see `state::alive`): with the pid, it
    /// names that one process, never a later one with the same pid.
    #[serde(default)]
    pub(crate) pid_start: Option<String>,
    pub(crate) started: u64,
    pub(crate) exit: Option<i32>,
}

pub(crate) fn bottles_dir() -> Option<PathBuf> {
    state_home().map(|h| h.join("bot-bottle/bottles"))
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Replaces the bottle's `launch.json` atomically (a reader sees the old
/// record or the new one, never half of one).
pub(crate) fn write_meta(state: &Path, meta: &Meta) -> std::io::Result<()> {
    let j = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    let tmp = state.join("launch.json.tmp");
    std::fs::write(&tmp, j)?;
    std::fs::rename(tmp, state.join("launch.json"))
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

fn config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
}

/// What no project of `plan`'s may hold (see [`guarded`]), from this
/// user's state and config directories.
pub(crate) fn guarded_for(plan: &Plan) -> Vec<Guarded> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    guarded(state_home().as_deref(), config_home().as_deref(), home.as_deref(), plan)
}

/// The project `plan` would work on, refused (exit 2) if it may not be
/// one. With `workspace: none` nothing of it enters the bottle, so the
/// current directory is recorded and nothing is refused.
pub(crate) fn project(
    plan: &Plan,
    cwd: &Path,
    home: Option<&Path>,
    workspace: Option<&Path>,
) -> Result<Project, Failure> {
    if plan.workspace == WorkspaceMode::None && workspace.is_none() {
        return Ok(Project { root: cwd.to_path_buf(), subdir: PathBuf::new(), source: ProjectSource::Cwd });
    }
    let guarded = guarded_for(plan);
    find_project(&ProjectQuery { cwd, workspace, home, guarded: &guarded })
        .map_err(|e| usage(format!("error: cannot start `{}`: {}", plan.agent.name, chain(&e))))
}

/// Set for the detached launcher: it leaves the terminal's session before
/// anything else.
pub(crate) const DETACHED: &str = "BOT_BOTTLE_DETACHED";

/// `start --detach` and `resume --detach`: the same command again, minus
/// `--detach`, in a session of its own with no terminal, its output in the
/// bottle's `agent.log`; prints the slug and returns. `resume` names its
/// bottle; `start` claims a new one here.
pub(crate) fn detach(agent: &str, resume: Option<&str>) -> Result<(), Failure> {
    let bottles = bottles_dir().ok_or_else(|| failure("error: no state dir: set XDG_STATE_HOME or HOME"))?;
    let (slug, dir) = match resume {
        Some(s) => (s.to_owned(), bottles.join(s)),
        None => crate::state::claim_slug(agent, &bottles)?,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join("agent.log"))
        .map_err(|e| failure(format!("error: agent.log: {e}")))?;
    let err = log.try_clone().map_err(|e| failure(format!("error: agent.log: {e}")))?;
    let exe = std::env::current_exe().map_err(|e| failure(format!("error: locating bot-bottle: {e}")))?;
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--detach").collect();
    // Not a process group of its own: the child calls setsid() first thing
    // (see `DETACHED`), which a group leader cannot.
    std::process::Command::new(exe)
        .args(args)
        .env("BOT_BOTTLE_SLUG", &slug)
        .env(DETACHED, "1")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
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

/// Fails unless the plan's backend is in this build: every backend is.
pub(crate) fn check_built(plan: &Plan) -> Result<(), Failure> {
    match plan.backend.requested {
        BackendKind::Auto | BackendKind::Native | BackendKind::Smolmachines | BackendKind::Docker => Ok(()),
    }
}

/// Runs the plan's agent in a bottle on the backend the plan asks for (or
/// the one `auto` finds) and returns the agent's exit code.
pub(crate) fn run(plan: &Plan, opts: &Options) -> Result<i32, Failure> {
    check_built(plan)?;
    let name = &plan.agent.name;
    let detected =
        detect(plan.backend.requested).map_err(|e| failure(format!("error: cannot start `{name}`: {}", chain(&e))))?;
    match detected.kind {
        BackendKind::Smolmachines => run_on(&smolmachines()?, plan, opts),
        BackendKind::Docker => run_on(&Docker::from_env(), plan, opts),
        _ => run_on(&native()?, plan, opts),
    }
}

/// Removes what a killed launcher left of bottle `m` (state dir `state`):
/// the backend's leftovers, then the sidecars' (deploy keys on forges).
pub(crate) fn cleanup(m: &Meta, state: &Path) -> Vec<String> {
    let mut did = match BackendKind::parse(&m.backend) {
        Some(BackendKind::Native) => native().map(|n| n.cleanup(&m.slug, state)).unwrap_or_default(),
        Some(BackendKind::Smolmachines) => smolmachines().map(|b| b.cleanup(&m.slug, state)).unwrap_or_default(),
        Some(BackendKind::Docker) => Docker::from_env().cleanup(&m.slug, state),
        _ => Vec::new(),
    };
    let env = |name: &str| std::env::var(name).ok();
    did.extend(bundle_cleanup(state, &env, upstream_ca().as_deref()));
    // A copy the launcher was killed in the middle of.
    let partial = partial_path(&state.join("workspace"));
    if std::fs::symlink_metadata(&partial).is_ok() {
        match std::fs::remove_dir_all(&partial) {
            Ok(()) => did.push("removed an unfinished workspace copy".into()),
            Err(e) => did.push(format!("could not remove {}: {e}", partial.display())),
        }
    }
    did
}

fn native() -> Result<Native, Failure> {
    Native::new().map_err(|e| failure(format!("error: {}", chain(&e))))
}

/// The smolmachines backend, its loopback leases in this user's state.
pub(crate) fn smolmachines() -> Result<Smolmachines, Failure> {
    let root = state_home().ok_or_else(|| failure("error: no state dir: set XDG_STATE_HOME or HOME"))?;
    Ok(Smolmachines::from_env(&root.join("bot-bottle")))
}

/// What the backend would build for `plan`, for `--dry-run`: nothing is
/// created; the slug is a placeholder.
pub(crate) fn dry_run(plan: &Plan, project: &Project) -> Result<serde_json::Value, Failure> {
    let slug = format!("{}-dryrun", plan.agent.name);
    let state = bottles_dir().unwrap_or_default().join(&slug);
    let target = Target { slug: &slug, plan, state: &state, project: &project.root, resume: false };
    match detect(plan.backend.requested) {
        Ok(d) if d.kind == BackendKind::Smolmachines => describe(&smolmachines()?, &target),
        Ok(d) if d.kind == BackendKind::Native => describe(&native()?, &target),
        Ok(d) if d.kind == BackendKind::Docker => describe(&Docker::from_env(), &target),
        Ok(d) => Ok(serde_json::json!({ "backend": d.kind.as_str(), "available": false })),
        Err(e) => Ok(serde_json::json!({ "backend": null, "error": chain(&e) })),
    }
}

/// `backend.prepare(target)` as JSON, with the backend's name.
fn describe<B: Backend>(backend: &B, target: &Target<'_>) -> Result<serde_json::Value, Failure> {
    let prepared = backend.prepare(target).map_err(|e| failure(format!("error: {}", chain(&e))))?;
    let mut v = serde_json::to_value(prepared).map_err(|e| failure(format!("error: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("backend".into(), backend.name().into());
    }
    Ok(v)
}

/// The bottle's state dir and launch record around one session.
fn run_on<B: Backend>(backend: &B, plan: &Plan, opts: &Options) -> Result<i32, Failure> {
    manifest_out_of_reach(plan, &opts.request)?;
    let dir = bottles_dir().ok_or_else(|| failure("error: no state dir: set XDG_STATE_HOME or HOME"))?;
    let (slug, state) = match &opts.resume {
        Some(s) if valid_slug(s) => (s.clone(), dir.join(s)),
        Some(s) => return Err(failure(format!("error: invalid bottle name `{s}`"))),
        None => crate::state::claim_slug(&plan.agent.name, &dir)?,
    };
    if !state.is_dir() {
        return Err(failure(format!("error: bottle `{slug}` has no state dir (removed?)")));
    }
    // Private to the launcher: the bottle reaches what it needs through
    // mounts and open files, never by traversing this path.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| failure(format!("error: securing {}: {e}", state.display())))?;
    // Held until this launcher exits: `stop`, `rm`, `cleanup` and another
    // `resume` wait for it or leave the bottle alone. The descriptor is
    // close-on-exec, so nothing in the bottle inherits it.
    let _lock = crate::state::try_lock(&state)?.ok_or_else(|| {
        failure(format!("error: bottle `{slug}` is in use by another bot-bottle (see `bot-bottle list`)"))
    })?;
    let pid = std::process::id();
    let mut meta = Meta {
        slug: slug.clone(),
        backend: backend.name().into(),
        request: opts.request.clone(),
        pid,
        pid_start: bot_bottle_backend::start_token(pid),
        started: now(),
        exit: None,
    };
    write_meta(&state, &meta).map_err(|e| failure(format!("error: writing {}/launch.json: {e}", state.display())))?;
    tracing::debug!(%slug, state = %state.display(), "bottle state claimed and locked");
    pause_point("state");
    // Teardown runs inside, whatever happens; the workspace copy and the
    // audit log stay, so nothing the agent did is lost.
    let result = session(backend, plan, opts, &slug, &state);
    meta.exit = Some(match &result {
        Ok(c) => *c,
        Err(f) => i32::from(f.code),
    });
    if let Err(e) = write_meta(&state, &meta) {
        // The session is over either way; `list` will show it as crashed.
        tracing::warn!(%slug, error = %e, "recording the bottle's exit");
    }
    result
}

/// One bottle from prepare to teardown: the sidecar bundle on the host, the
/// bottle, its provisioning, the agent.
fn session<B: Backend>(backend: &B, plan: &Plan, opts: &Options, slug: &str, state: &Path) -> Result<i32, Failure> {
    let err = |what: &'static str| move |e: BackendError| failure(format!("error: {what}: {}", chain(&e)));
    let target = Target { slug, plan, state, project: &opts.request.project, resume: opts.resume.is_some() };
    tracing::debug!(%slug, backend = backend.name(), "preparing the bottle");
    let prepared = backend.prepare(&target).map_err(err("preparing the bottle"))?;
    for w in backend.warnings(&prepared) {
        // Shown even with --quiet: a limit that does not hold is not progress.
        let _ = writeln!(std::io::stderr(), "bot-bottle: warning: {w}");
    }
    let mut teardown = Teardown::new();
    let endpoint = backend.reserve(&prepared, &mut teardown).map_err(err("reserving the bottle"))?;
    tracing::debug!(%slug, "reserved the bottle's endpoint; starting the sidecars");

    // The sidecar bundle: every service the plan needs, on the endpoint.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failure(format!("error: runtime: {e}")))?;
    let bundle = Bundle::start(
        BundleConfig {
            slug,
            plan,
            state,
            project: &opts.request.project,
            endpoint: &endpoint,
            env: std::sync::Arc::new(|name: &str| std::env::var(name).ok()),
            upstream_ca: upstream_ca(),
            supervise_wait: supervise_wait(),
        },
        rt.handle(),
    )
    .map_err(|e| failure(format!("error: starting the sidecars: {}", chain(&e))))?;
    // Whatever happens in the bottle, the sidecars are finished after it:
    // its deploy keys deleted, what it left uncommitted landed.
    let ran = in_bottle(backend, plan, opts, slug, state, &prepared, &endpoint, &bundle, &rt, teardown);
    let workspace = (ran.is_ok() && plan.workspace == WorkspaceMode::Copy).then(|| state.join("workspace"));
    tracing::debug!(%slug, ok = ran.is_ok(), "the bottle is down; finishing the sidecars");
    let report = bundle.finish(workspace.as_deref());
    if plan.workspace == WorkspaceMode::Copy {
        say(opts, &format!("the agent's workspace is kept at {}", state.join("workspace").display()));
    }
    let summary = crate::render::session_report(&report, &opts.request.project, slug);
    if !summary.is_empty() {
        let _ = std::io::stderr().write_all(summary.as_bytes());
    }
    drop(rt);
    ran
}

/// The bottle itself, from launch to the agent's exit; its teardown runs
/// before this returns, whatever happens.
#[expect(clippy::too_many_arguments, reason = "one launch's parts, passed once")]
fn in_bottle<B: Backend>(
    backend: &B,
    plan: &Plan,
    opts: &Options,
    slug: &str,
    state: &Path,
    prepared: &B::Prepared,
    endpoint: &bot_bottle_backend::Endpoint,
    bundle: &Bundle,
    rt: &tokio::runtime::Runtime,
    mut teardown: Teardown,
) -> Result<i32, Failure> {
    let err = |what: &'static str| move |e: BackendError| failure(format!("error: {what}: {}", chain(&e)));
    // Ctrl-C reaches the agent through the terminal; the launcher stays to
    // tear down. SIGTERM is for the launcher: it ends the bottle.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    rt.spawn(async move {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        let Ok(mut int) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) else { return };
        loop {
            tokio::select! {
                _ = term.recv() => { s.store(true, std::sync::atomic::Ordering::SeqCst); }
                // The user's terminal is gone: so is the agent's reason to run.
                _ = hup.recv() => { s.store(true, std::sync::atomic::Ordering::SeqCst); }
                // The bottle's relay passes it on to the agent.
                _ = int.recv() => {}
            }
        }
    });
    pause_point("sidecars");

    let workspace = state.join("workspace");
    if plan.workspace == WorkspaceMode::Copy {
        if opts.resume.is_some() && workspace.is_dir() {
            say(opts, &format!("resuming with the workspace at {}", workspace.display()));
        } else {
            say(opts, &format!("copying {} into the bottle's workspace", opts.request.project.display()));
            let report = copy(backend.name(), plan, opts, &workspace)?;
            tell(opts, &report);
        }
    }
    tracing::debug!(%slug, "launching the bottle");
    let mut bottle = backend.launch(prepared, endpoint, &mut teardown).map_err(err("the bottle failed"))?;

    // Provisioning, as data, applied through the bottle.
    let ca_pem = std::fs::read_to_string(bundle.ca_cert_path())
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
            proxy_url: &bundle.addresses().proxy_url,
            ca_pem: &ca_pem,
            system_roots_pem: roots.as_deref(),
            prompt: &prompt,
            git_gate_url: bundle.addresses().git_gate_url.as_deref(),
            git_gate_local: bundle.addresses().git_gate_local,
            supervise_url: bundle.addresses().supervise_url.as_deref(),
            interactive,
        },
    )
    .map_err(|e| failure(format!("error: provisioning: {e}")))?;
    let mut prov = prov;
    let at = match plan.workspace {
        WorkspaceMode::None => None,
        WorkspaceMode::Copy => Some(workspace.as_path()),
        WorkspaceMode::Mount => Some(opts.request.project.as_path()),
    };
    prov.workdir = match at {
        None => "/home/agent".into(),
        // The agent starts where `start` ran, inside the project; in a copy
        // that directory may be missing (ignored), then its nearest parent.
        Some(root) => {
            let sub = workdir_in(root, &opts.request.workdir);
            if sub != opts.request.workdir {
                say(
                    opts,
                    &format!(
                        "{} is not in the workspace; the agent starts in /workspace/{}",
                        opts.request.workdir.display(),
                        sub.display()
                    ),
                );
            }
            if sub.as_os_str().is_empty() {
                prov.workdir
            } else {
                Path::new(&prov.workdir).join(sub).display().to_string()
            }
        }
    };
    bot_bottle_backend::provision(&mut bottle, &prov).map_err(|e| {
        // The agent's program missing from the bottle is 127, as a shell
        // (and `docker run`) reports a command that is not found.
        let missing = matches!(&e, BackendError::Provision { why, .. } if why.starts_with("the agent's program"));
        let mut f = err("provisioning")(e);
        if missing {
            f.code = 127;
        }
        f
    })?;

    say(opts, &format!("starting {} in bottle {slug} ({})", plan.agent.name, backend.name()));
    let agent = Exec {
        argv: prov.argv.clone(),
        env: prov.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        workdir: Some(prov.workdir.clone()),
        user: Owner::Agent,
    };
    // The disk budget: the workspace is watched while the agent runs.
    let workspace = match plan.workspace {
        WorkspaceMode::Copy => Some(state.join("workspace")),
        WorkspaceMode::Mount => Some(opts.request.project.clone()),
        WorkspaceMode::None => None,
    };
    let budget = plan.resources.disk.map_or(bot_bottle_backend::DEFAULT_DISK, |d| d.0);
    let watch = workspace
        .map(|w| DiskWatch::start(&w, budget, stop.clone()))
        .transpose()
        .map_err(|e| failure(format!("error: measuring the workspace: {e}")))?;
    tracing::debug!(%slug, argv = ?agent.argv, "running the agent");
    let code = bottle.run_agent(&agent, &stop).map_err(err("the bottle failed"))?;
    tracing::debug!(%slug, code, "the agent exited");
    let over = watch.and_then(|w| w.exceeded());
    if let Some(why) = &over {
        let _ = writeln!(std::io::stderr(), "bot-bottle: stopped: {why}");
    } else if stop.load(std::sync::atomic::Ordering::SeqCst) {
        say(opts, "stopped by SIGTERM");
    }
    drop(bottle);
    drop(teardown);
    Ok(code)
}

/// An extra CA for upstreams and forge APIs (tests, corporate CAs).
fn upstream_ca() -> Option<PathBuf> {
    std::env::var_os("BOT_BOTTLE_UPSTREAM_CA").map(PathBuf::from)
}

/// Copies the project into `dst`, with a progress line on stderr when it
/// takes more than a second.
fn copy(backend: &str, plan: &Plan, opts: &Options, dst: &Path) -> Result<CopyReport, Failure> {
    let tty = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
    let last = std::sync::Mutex::new(None::<std::time::Instant>);
    let progress = |p: Progress| {
        let line = format!("bot-bottle: copying the project: {} files, {}", p.files, crate::render::size(p.bytes));
        let mut err = std::io::stderr().lock();
        // A terminal gets one line rewritten in place; a log a line every few seconds.
        let _ = if tty {
            write!(err, "\r{line}{}", if p.done { "\n" } else { "" })
        } else {
            let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if p.done || last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
                *last = Some(std::time::Instant::now());
                writeln!(err, "{line}")
            } else {
                Ok(())
            }
        };
    };
    // The walk refuses to enter any of these, and home itself, whatever path
    // (a bind mount) leads there.
    let mut guarded: Vec<PathBuf> = guarded_for(plan).into_iter().map(|g| g.path).collect();
    guarded.extend(std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from));
    let copy_opts = CopyOptions {
        owner: copy_owner(backend),
        include_ignored: &plan.workspace_include_ignored,
        guarded: &guarded,
        progress: (!opts.quiet).then_some(&progress as &(dyn Fn(Progress) + Sync)),
        ..CopyOptions::default()
    };
    copy_project(&opts.request.project, dst, &copy_opts).map_err(|e| {
        failure(format!("error: copying {} into the workspace: {}", opts.request.project.display(), chain(&e)))
    })
}

/// What the copy did: what it removed always (names only), the rest
/// unless quiet.
fn tell(opts: &Options, r: &CopyReport) {
    let (always, verbose) = crate::render::copy_report(r);
    for line in verbose {
        say(opts, &line);
    }
    for line in always {
        let _ = writeln!(std::io::stderr(), "bot-bottle: {line}");
    }
}

/// The agent's prompt: its file from the body's first line on.
fn read_prompt(plan: &Plan) -> Result<String, Failure> {
    let text = std::fs::read_to_string(&plan.agent.prompt.file)
        .map_err(|e| failure(format!("error: reading {}: {e}", plan.agent.prompt.file.display())))?;
    Ok(text.lines().skip(plan.agent.prompt.line.saturating_sub(1)).collect::<Vec<_>>().join("\n"))
}

/// How long `request_egress` waits for a decision: 60 s, or
/// `BOT_BOTTLE_SUPERVISE_WAIT` seconds.
fn supervise_wait() -> std::time::Duration {
    std::env::var("BOT_BOTTLE_SUPERVISE_WAIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(bot_bottle_sidecars::SUPERVISE_DEFAULT_WAIT, std::time::Duration::from_secs)
}

/// Refuses a bottle that could write its own manifest: with `workspace:
/// mount` the agent writes the project, so a manifest directory inside it
/// would let the agent widen its own egress (for the next start or resume,
/// or through supervise's grants for good). Nothing is created first.
pub(crate) fn manifest_out_of_reach(plan: &Plan, request: &Stored) -> Result<(), Failure> {
    if plan.workspace != WorkspaceMode::Mount {
        return Ok(());
    }
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (manifest, project) = (real(&request.manifest), real(&request.project));
    if manifest.starts_with(&project) {
        return Err(usage(format!(
            "error: the manifest directory {} is inside the project {}, which `workspace: mount` lets the agent write: \
             it could widen its own egress. Use `workspace: copy`, or keep the manifest outside the project \
             (--manifest DIR, or ~/.config/bot-bottle/)",
            manifest.display(),
            project.display()
        )));
    }
    // A file of the manifest may be a symlink into the project.
    for file in plan.bottle.files.iter().chain([&plan.agent.file]) {
        if real(file).starts_with(&project) {
            return Err(usage(format!(
                "error: the manifest file {} resolves to {}, inside the project {}, which `workspace: mount` lets \
                 the agent write: it could widen its own egress. Use `workspace: copy`, or keep the file outside the project",
                file.display(),
                real(file).display(),
                project.display()
            )));
        }
    }
    Ok(())
}
