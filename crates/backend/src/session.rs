//! One bottle from prepare to teardown, the same on every backend: the
//! workspace copy, the sidecar bundle on the backend's endpoint, the bottle,
//! its provisioning, the agent, and teardown whatever happens. What the
//! caller sees of it goes through [`Events`]; what it keeps is its state
//! dir (the workspace copy, the audit log) and the [`Outcome`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bot_bottle_manifest::{BackendKind, Plan, WorkspaceMode};
use bot_bottle_provision::{Launch, provision as plan_provision};
use bot_bottle_sidecars::{Bundle, BundleConfig, BundleReport, LiveCredential, SharedEnv};

use crate::{
    Backend, BackendError, CopyOptions, CopyReport, DEFAULT_DISK, DiskWatch, Exec, Owner, PreparedBottle, Progress,
    Target, Teardown, copy_project, pause_point, workdir_in,
};

/// What one session is asked to run.
pub struct Session<'a> {
    pub slug: &'a str,
    pub plan: &'a Plan,
    /// The bottle's private state dir (0700), made and locked by the caller.
    pub state: &'a Path,
    /// The user's project, and where in it the agent starts.
    pub project: &'a Path,
    pub workdir: &'a Path,
    /// Resuming: the workspace copy in `state` is kept.
    pub resume: bool,
    /// The host's environment, for the secrets the sidecars inject.
    pub env: SharedEnv,
    /// Tokens the host renews while the bottle runs (taken by the bundle).
    pub live: Vec<LiveCredential>,
    /// An extra CA for upstreams and forge APIs (tests, corporate CAs).
    pub upstream_ca: Option<PathBuf>,
    /// How long supervise's `request_egress` waits for a decision.
    pub supervise_wait: Duration,
    /// Directories the workspace copy never enters, whatever path leads
    /// there (bot-bottle's own state and config, home).
    pub guarded: Vec<PathBuf>,
    /// Whether the agent should expect a human at a terminal.
    pub interactive: bool,
    pub events: &'a dyn Events,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("slug", &self.slug).field("state", &self.state).finish_non_exhaustive()
    }
}

/// What a session tells its caller as it goes.
pub trait Events: Sync {
    /// Progress: a line the user may ask not to see.
    fn note(&self, line: &str);
    /// A warning: always shown (a limit that does not hold, a stop).
    fn warn(&self, line: &str);
    /// The workspace copy's progress, after its first second.
    fn copying(&self, progress: Progress);
    /// What the workspace copy did.
    fn copied(&self, report: &CopyReport);
}

/// How a session ended.
#[derive(Debug)]
pub struct Outcome {
    /// The agent's exit code, or why the session failed.
    pub result: Result<i32, SessionError>,
    /// What the sidecars did (what the gate landed, pushed, refused), when
    /// they ran.
    pub report: Option<BundleReport>,
}

/// Why a session failed, at which step.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct SessionError {
    pub step: &'static str,
    /// The exit code this failure maps to: 127 when the agent's program is
    /// not in the bottle, else `None` (bot-bottle's own failure).
    pub code: Option<u8>,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn at<E: std::error::Error + Send + Sync + 'static>(step: &'static str) -> impl FnOnce(E) -> SessionError {
    move |e| SessionError { step, code: None, source: Box::new(e) }
}

/// Runs `s` on `backend`: everything it makes is undone before this returns
/// (the workspace copy and the audit log stay).
pub fn run(backend: &dyn Backend, s: &Session<'_>) -> Outcome {
    let target = Target { slug: s.slug, plan: s.plan, state: s.state, project: s.project, resume: s.resume };
    tracing::debug!(slug = s.slug, backend = backend.kind().as_str(), "preparing the bottle");
    let prepared = match backend.prepare(&target) {
        Ok(p) => p,
        Err(e) => return Outcome { result: Err(at("preparing the bottle")(e)), report: None },
    };
    for w in prepared.warnings() {
        s.events.warn(&w);
    }
    if let Some(r) = s.plan.runtime.as_ref().filter(|_| backend.kind() != BackendKind::Docker) {
        s.events.warn(&format!(
            "`runtime: {}` ({}) applies to the docker backend only; the {} backend ignores it",
            r.requested.as_str(),
            r.from,
            backend.kind().as_str()
        ));
    }
    if let Err(e) = prepared.build(&|line| s.events.note(&format!("build: {line}"))) {
        return Outcome { result: Err(at("building the bottle's image")(e)), report: None };
    }
    let mut teardown = Teardown::new();
    let endpoint = match prepared.reserve(&mut teardown) {
        Ok(e) => e,
        Err(e) => return Outcome { result: Err(at("reserving the bottle")(e)), report: None },
    };
    tracing::debug!(slug = s.slug, "reserved the bottle's endpoint; starting the sidecars");
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Outcome { result: Err(at("starting the sidecars' runtime")(e)), report: None },
    };
    let bundle = Bundle::start(
        BundleConfig {
            slug: s.slug,
            plan: s.plan,
            state: s.state,
            project: s.project,
            endpoint: &endpoint,
            env: s.env.clone(),
            live: s.live.clone(),
            upstream_ca: s.upstream_ca.clone(),
            supervise_wait: s.supervise_wait,
        },
        rt.handle(),
    );
    let bundle = match bundle {
        Ok(b) => b,
        Err(e) => return Outcome { result: Err(at("starting the sidecars")(e)), report: None },
    };
    // Whatever happens in the bottle, the sidecars are finished after it:
    // its deploy keys deleted, what it left uncommitted landed.
    let ran = in_bottle(backend, s, prepared.as_ref(), &endpoint, &bundle, &rt, teardown);
    let workspace = (ran.is_ok() && s.plan.workspace == WorkspaceMode::Copy).then(|| s.state.join("workspace"));
    tracing::debug!(slug = s.slug, ok = ran.is_ok(), "the bottle is down; finishing the sidecars");
    let report = bundle.finish(workspace.as_deref());
    if s.plan.workspace == WorkspaceMode::Copy {
        s.events.note(&format!("the agent's workspace is kept at {}", s.state.join("workspace").display()));
    }
    drop(rt);
    Outcome { result: ran, report: Some(report) }
}

/// The bottle itself, from launch to the agent's exit; its teardown runs
/// before this returns, whatever happens.
fn in_bottle(
    backend: &dyn Backend,
    s: &Session<'_>,
    prepared: &dyn PreparedBottle,
    endpoint: &crate::Endpoint,
    bundle: &Bundle,
    rt: &tokio::runtime::Runtime,
    mut teardown: Teardown,
) -> Result<i32, SessionError> {
    // Ctrl-C reaches the agent through its terminal (or the relay passes it
    // on); the launcher stays to tear down. SIGTERM and SIGHUP end the
    // bottle.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else { return };
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        let Ok(mut int) = signal(SignalKind::interrupt()) else { return };
        loop {
            tokio::select! {
                _ = term.recv() => flag.store(true, Ordering::SeqCst),
                // The user's terminal is gone: so is the agent's reason to run.
                _ = hup.recv() => flag.store(true, Ordering::SeqCst),
                _ = int.recv() => {}
            }
        }
    });
    pause_point("sidecars");

    let workspace = s.state.join("workspace");
    if s.plan.workspace == WorkspaceMode::Copy {
        if s.resume && workspace.is_dir() {
            s.events.note(&format!("resuming with the workspace at {}", workspace.display()));
        } else {
            s.events.note(&format!("copying {} into the bottle's workspace", s.project.display()));
            let progress = |p: Progress| s.events.copying(p);
            let opts = CopyOptions {
                owner: prepared.copy_owner(),
                include_ignored: &s.plan.workspace_include_ignored,
                guarded: &s.guarded,
                progress: Some(&progress as &(dyn Fn(Progress) + Sync)),
                ..CopyOptions::default()
            };
            let report = copy_project(s.project, &workspace, &opts).map_err(at("copying the project"))?;
            s.events.copied(&report);
        }
    }
    tracing::debug!(slug = s.slug, "launching the bottle");
    let mut bottle = prepared.launch(endpoint, &mut teardown).map_err(at("the bottle failed"))?;

    // Provisioning, as data, applied through the bottle.
    let ca_pem = std::fs::read_to_string(bundle.ca_cert_path()).map_err(at("reading the bottle CA"))?;
    let roots = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").ok();
    let prompt = read_prompt(s.plan).map_err(at("reading the agent's prompt"))?;
    let addresses = bundle.addresses();
    let mut prov = plan_provision(
        s.plan,
        &Launch {
            user: "agent",
            home: "/home/agent",
            workspace: "/workspace",
            state_dir: "/run/bot-bottle",
            proxy_url: &addresses.proxy_url,
            ca_pem: &ca_pem,
            system_roots_pem: roots.as_deref(),
            prompt: &prompt,
            git_gate_url: addresses.git_gate_url.as_deref(),
            git_gate_local: addresses.git_gate_local,
            supervise_url: addresses.supervise_url.as_deref(),
            interactive: s.interactive,
            chatgpt: chatgpt_account(&*s.env),
        },
    )
    .map_err(at("provisioning"))?;
    let root = match s.plan.workspace {
        WorkspaceMode::None => None,
        WorkspaceMode::Copy => Some(workspace.as_path()),
        WorkspaceMode::Mount => Some(s.project),
    };
    prov.workdir = match root {
        None => "/home/agent".into(),
        // The agent starts where `start` ran, inside the project; in a copy
        // that directory may be missing (ignored), then its nearest parent.
        Some(root) => {
            let sub = workdir_in(root, s.workdir);
            if sub != s.workdir {
                s.events.note(&format!(
                    "{} is not in the workspace; the agent starts in /workspace/{}",
                    s.workdir.display(),
                    sub.display()
                ));
            }
            if sub.as_os_str().is_empty() {
                prov.workdir
            } else {
                Path::new(&prov.workdir).join(sub).display().to_string()
            }
        }
    };
    crate::provision(bottle.as_mut(), &prov).map_err(|e| {
        // The agent's program missing from the bottle is 127, as a shell
        // (and `docker run`) reports a command that is not found.
        let missing = matches!(&e, BackendError::Provision { why, .. } if why.starts_with("the agent's program"));
        SessionError { step: "provisioning", code: missing.then_some(127), source: Box::new(e) }
    })?;

    s.events.note(&format!("starting {} in bottle {} ({})", s.plan.agent.name, s.slug, backend.kind().as_str()));
    let agent = Exec {
        argv: prov.argv.clone(),
        env: prov.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        workdir: Some(prov.workdir.clone()),
        user: Owner::Agent,
    };
    // The disk budget: the workspace is watched while the agent runs.
    let watched = match s.plan.workspace {
        WorkspaceMode::Copy => Some(workspace.clone()),
        WorkspaceMode::Mount => Some(s.project.to_path_buf()),
        WorkspaceMode::None => None,
    };
    let budget = s.plan.resources.disk.map_or(DEFAULT_DISK, |d| d.0);
    let watch = watched
        .map(|w| DiskWatch::start(&w, budget, stop.clone()))
        .transpose()
        .map_err(at("measuring the workspace"))?;
    tracing::debug!(slug = s.slug, argv = ?agent.argv, "running the agent");
    let code = bottle.run_agent(&agent, &stop).map_err(at("the bottle failed"))?;
    tracing::debug!(slug = s.slug, code, "the agent exited");
    if let Some(why) = watch.and_then(|w| w.exceeded()) {
        s.events.warn(&format!("stopped: {why}"));
    } else if stop.load(Ordering::SeqCst) {
        s.events.note("stopped by SIGTERM");
    }
    drop(bottle);
    drop(teardown);
    Ok(code)
}

/// The agent's prompt: its file from the body's first line on.
fn read_prompt(plan: &Plan) -> std::io::Result<String> {
    let text = std::fs::read_to_string(&plan.agent.prompt.file)?;
    Ok(text.lines().skip(plan.agent.prompt.line.saturating_sub(1)).collect::<Vec<_>>().join("\n"))
}

/// The host's ChatGPT account, as the launcher's environment lookup tells
/// it (identifiers only; see `bot_bottle_provision::ChatgptAccount`).
fn chatgpt_account(env: &dyn Fn(&str) -> Option<String>) -> Option<bot_bottle_provision::ChatgptAccount> {
    Some(bot_bottle_provision::ChatgptAccount {
        account_id: env(bot_bottle_provision::CHATGPT_ACCOUNT_ENV)?,
        plan_type: env(bot_bottle_provision::CHATGPT_PLAN_ENV).unwrap_or_default(),
    })
}
