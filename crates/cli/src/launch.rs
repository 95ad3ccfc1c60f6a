//! `start` on the native backend: the sidecar bundle on the host, the
//! bottle around the agent, and teardown whatever happens.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bot_bottle_backend::{
    Backend, Context, CopyReport, Events, Guarded, Progress, Project, ProjectQuery, ProjectSource, Session, Target,
    find_project, guarded, open, partial_path, pause_point, run_session,
};
use bot_bottle_manifest::{BackendKind, Plan, WorkspaceMode};
use bot_bottle_sidecars::bundle_cleanup;

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
    /// `--runtime` (docker).
    #[serde(default)]
    pub(crate) runtime: Option<String>,
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

/// Fails unless the plan's backend is in this build (before anything else
/// is done, `--detach` included).
pub(crate) fn check_built(plan: &Plan) -> Result<(), Failure> {
    let kind = plan.backend.requested;
    if kind == BackendKind::Auto || bot_bottle_backend::KINDS.contains(&kind) {
        return Ok(());
    }
    Err(failure(format!(
        "error: cannot start `{}`: the {} backend is not in this build yet; use --backend native",
        plan.agent.name,
        kind.as_str()
    )))
}

/// The backend `kind` names (`auto`: the first that can run here).
pub(crate) fn backend(kind: BackendKind) -> Result<Box<dyn Backend>, Failure> {
    let root = state_home().ok_or_else(|| failure("error: no state dir: set XDG_STATE_HOME or HOME"))?;
    open(kind, &Context { state_root: root.join("bot-bottle") }).map_err(|e| failure(format!("error: {}", chain(&e))))
}

/// `cleanup --purge`: what the backends keep between bottles, removed.
pub(crate) fn purge() -> Vec<String> {
    match state_home() {
        Some(root) => bot_bottle_backend::purge(&Context { state_root: root.join("bot-bottle") }),
        None => Vec::new(),
    }
}

/// Runs the plan's agent in a bottle on the backend the plan asks for (or
/// the one `auto` finds) and returns the agent's exit code.
pub(crate) fn run(plan: &Plan, opts: &Options) -> Result<i32, Failure> {
    let b = backend(plan.backend.requested).map_err(|f| {
        failure(format!("error: cannot start `{}`: {}", plan.agent.name, f.message.trim_start_matches("error: ")))
    })?;
    run_on(b.as_ref(), plan, opts)
}

/// What of `did` (from [`cleanup`]) reports something still there: a
/// process not killed, a cgroup or file not removed.
pub(crate) fn failed(did: &[String]) -> Vec<&str> {
    did.iter().map(String::as_str).filter(|d| d.starts_with(bot_bottle_backend::COULD_NOT)).collect()
}

/// Removes what a killed launcher left of bottle `m` (state dir `state`):
/// the backend's leftovers, then the sidecars' (deploy keys on forges).
/// Entries that [`failed`] picks out are what could not be removed.
pub(crate) fn cleanup(m: &Meta, state: &Path) -> Vec<String> {
    let mut did = match BackendKind::parse(&m.backend).filter(|k| *k != BackendKind::Auto).map(backend) {
        Some(Ok(b)) => b.cleanup(&m.slug, state),
        Some(Err(f)) => vec![format!("could not reach its backend: {}", f.message)],
        None => vec![format!("unknown backend `{}`", m.backend)],
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

/// What the backend would build for `plan`, for `--dry-run`: nothing is
/// created; the slug is a placeholder.
pub(crate) fn dry_run(plan: &Plan, project: &Project) -> Result<serde_json::Value, Failure> {
    let slug = format!("{}-dryrun", plan.agent.name);
    let state = bottles_dir().unwrap_or_default().join(&slug);
    let target = Target { slug: &slug, plan, state: &state, project: &project.root, resume: false };
    match backend(plan.backend.requested) {
        Ok(b) => b.prepare(&target).map(|p| p.view()).map_err(|e| failure(format!("error: {}", chain(&e)))),
        Err(f) => Ok(serde_json::json!({ "backend": null, "error": f.message.trim_start_matches("error: ") })),
    }
}

/// The bottle's state dir and launch record around one session.
fn run_on(backend: &dyn Backend, plan: &Plan, opts: &Options) -> Result<i32, Failure> {
    manifest_out_of_reach(plan, &opts.request)?;
    // The host's logins, read (and a ChatGPT login refreshed) before any
    // state exists: a login that fails creates nothing.
    let (env, live) = crate::credentials::host_env(plan).map_err(|e| failure(format!("error: {e}")))?;
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
        backend: backend.kind().as_str().into(),
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
    let result = session(backend, plan, opts, &slug, &state, env, live);
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

/// One session on `backend`, told on stderr (progress unless quiet).
fn session(
    backend: &dyn Backend,
    plan: &Plan,
    opts: &Options,
    slug: &str,
    state: &Path,
    env: bot_bottle_sidecars::SharedEnv,
    live: Vec<bot_bottle_sidecars::LiveCredential>,
) -> Result<i32, Failure> {
    // The walk refuses to enter any of these, and home itself, whatever path
    // (a bind mount) leads there.
    let mut guarded: Vec<PathBuf> = guarded_for(plan).into_iter().map(|g| g.path).collect();
    guarded.extend(std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from));
    let events = Stderr::new(opts.quiet);
    let outcome = run_session(
        backend,
        &Session {
            slug,
            plan,
            state,
            project: &opts.request.project,
            workdir: &opts.request.workdir,
            resume: opts.resume.is_some(),
            env,
            live,
            upstream_ca: upstream_ca(),
            supervise_wait: supervise_wait(),
            guarded,
            interactive: nix::unistd::isatty(std::io::stdin()).unwrap_or(false),
            events: &events,
        },
    );
    if let Some(report) = &outcome.report {
        let summary = crate::render::session_report(report, &opts.request.project, slug);
        if !summary.is_empty() {
            crate::eprint_best_effort(summary);
        }
    }
    outcome.result.map_err(|e| {
        let mut f = failure(format!("error: {}: {}", e.step, chain(e.source.as_ref())));
        if let Some(code) = e.code {
            f.code = code;
        }
        f
    })
}

/// A session's events as lines on stderr.
struct Stderr {
    quiet: bool,
    tty: bool,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Stderr {
    fn new(quiet: bool) -> Stderr {
        Stderr { quiet, tty: nix::unistd::isatty(std::io::stderr()).unwrap_or(false), last: Default::default() }
    }
}

impl Events for Stderr {
    fn note(&self, line: &str) {
        if !self.quiet {
            crate::eprintln_best_effort(format_args!("bot-bottle: {line}"));
        }
    }

    fn warn(&self, line: &str) {
        // Shown even with --quiet: a limit that does not hold is not progress.
        crate::eprintln_best_effort(format_args!("bot-bottle: warning: {line}"));
    }

    fn copying(&self, p: Progress) {
        if self.quiet {
            return;
        }
        let line = format!("bot-bottle: copying the project: {} files, {}", p.files, crate::render::size(p.bytes));
        // A terminal gets one line rewritten in place; a log a line every few seconds.
        if self.tty {
            crate::eprint_best_effort(format_args!("\r{line}{}", if p.done { "\n" } else { "" }));
        } else {
            let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if p.done || last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
                *last = Some(std::time::Instant::now());
                crate::eprintln_best_effort(line);
            }
        }
    }

    fn copied(&self, r: &CopyReport) {
        // What was removed always (names only), the rest unless quiet.
        let (always, verbose) = crate::render::copy_report(r);
        for line in verbose {
            self.note(&line);
        }
        for line in always {
            crate::eprintln_best_effort(format_args!("bot-bottle: {line}"));
        }
    }
}

/// An extra CA for upstreams and forge APIs (tests, corporate CAs).
fn upstream_ca() -> Option<PathBuf> {
    std::env::var_os("BOT_BOTTLE_UPSTREAM_CA").map(PathBuf::from)
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
