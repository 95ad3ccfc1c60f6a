//! `list`, `stop`, `resume`, `rm` and `cleanup`: bottles by their state
//! dirs. Every one of them takes a bottle's lock before it changes the
//! bottle, and says "stopped", "removed" or "purged" only after checking.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bot_bottle_backend::{ProjectSource, check_project};
use bot_bottle_manifest::{BackendKind, DockerRuntime, Manifest, Request, WorkspaceMode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use crate::launch::{self, Meta, bottles_dir, now, read_meta, write_meta};
use crate::state::{Lock, alive, lock_within, try_lock};
use crate::{Failure, ListFormat, chain, failure, print, usage};

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Show every bottle, not only running ones.
    #[arg(long, short)]
    all: bool,
    /// Print only the slugs.
    #[arg(long, short, conflicts_with = "format")]
    quiet: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Text)]
    format: ListFormat,
}

#[derive(Debug, Serialize)]
struct Row {
    slug: String,
    agent: String,
    backend: String,
    /// running, exited (N), or crashed (the launcher died without tearing down).
    state: String,
    age_secs: u64,
    dir: PathBuf,
}

pub(crate) fn state_of(m: &Meta) -> String {
    match m.exit {
        Some(c) => format!("exited ({c})"),
        None if alive(m) => "running".into(),
        None => "crashed".into(),
    }
}

fn running(m: &Meta) -> bool {
    m.exit.is_none() && alive(m)
}

pub(crate) fn all() -> Vec<(PathBuf, Meta)> {
    let Some(dir) = bottles_dir() else { return Vec::new() };
    let mut v: Vec<(PathBuf, Meta)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.path(), read_meta(&e.path())?)))
        .collect();
    v.sort_by_key(|(_, m)| std::cmp::Reverse(m.started));
    v
}

/// The bottle named `slug`, or a usage error that says where to look.
pub(crate) fn find(slug: &str) -> Result<(PathBuf, Meta), Failure> {
    all()
        .into_iter()
        .find(|(_, m)| m.slug == slug)
        .ok_or_else(|| usage(format!("error: no bottle named `{slug}` (see `bot-bottle list -a`)")))
}

pub(crate) fn list(args: &ListArgs) -> Result<(), Failure> {
    let rows: Vec<Row> = all()
        .into_iter()
        .filter(|(_, m)| args.all || running(m))
        .map(|(dir, m)| Row {
            state: state_of(&m),
            age_secs: now().saturating_sub(m.started),
            slug: m.slug,
            agent: m.request.agent,
            backend: m.backend,
            dir,
        })
        .collect();
    let out = match args.format {
        _ if args.quiet => rows.iter().map(|r| format!("{}\n", r.slug)).collect(),
        ListFormat::Json => serde_json::to_string_pretty(&rows).map_err(|e| failure(e.to_string()))? + "\n",
        ListFormat::Text => {
            let mut s = format!("{:<22} {:<14} {:<8} {:<12} {}\n", "SLUG", "AGENT", "BACKEND", "STATE", "AGE");
            for r in &rows {
                s.push_str(&format!(
                    "{:<22} {:<14} {:<8} {:<12} {}\n",
                    r.slug,
                    r.agent,
                    r.backend,
                    r.state,
                    age(r.age_secs)
                ));
            }
            s
        }
    };
    print(&out)
}

fn age(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Signals the launcher of `m`, if it is still that process.
fn signal(m: &Meta, sig: Signal) -> Result<(), Failure> {
    if !alive(m) {
        return Ok(());
    }
    let pid = i32::try_from(m.pid).map_err(|_| failure(format!("error: bad pid {} for {}", m.pid, m.slug)))?;
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(failure(format!("error: sending {sig} to bottle {} (pid {pid}): {e}", m.slug))),
    }
}

/// Stops one running bottle and returns its lock, taken once its launcher
/// is gone: SIGTERM, which tears the bottle down; SIGKILL after `grace`,
/// then what the killed launcher left is cleaned up here.
fn stop_one(dir: &Path, m: &Meta, grace: Duration) -> Result<(Lock, String), Failure> {
    tracing::debug!(slug = %m.slug, pid = m.pid, "stop: SIGTERM");
    signal(m, Signal::SIGTERM)?;
    if let Some(lock) = lock_within(dir, grace)? {
        return Ok((lock, "stopped".into()));
    }
    tracing::debug!(slug = %m.slug, pid = m.pid, "stop: SIGKILL after the grace period");
    signal(m, Signal::SIGKILL)?;
    let lock = lock_within(dir, Duration::from_secs(10))?
        .ok_or_else(|| failure(format!("error: {}: still running after SIGKILL", m.slug)))?;
    let mut did = launch::cleanup(m, dir);
    let mut m = m.clone();
    m.exit = Some(137);
    write_meta(dir, &m).map_err(|e| failure(format!("error: {}: recording its exit: {e}", m.slug)))?;
    // Its launcher is gone, but not all it left: never "stopped" then.
    let failed = launch::failed(&did);
    if !failed.is_empty() {
        return Err(failure(format!("error: {}: killed, but {}", m.slug, failed.join(", "))));
    }
    did.insert(0, format!("killed after {} s", grace.as_secs()));
    Ok((lock, format!("stopped ({})", did.join(", "))))
}

pub(crate) fn stop(slugs: &[String], every: bool, grace: Duration) -> Result<(), Failure> {
    let mut targets = Vec::new();
    if every {
        targets.extend(all().into_iter().filter(|(_, m)| running(m)));
    } else {
        for s in slugs {
            targets.push(find(s)?);
        }
    }
    let mut errors = Vec::new();
    for (dir, m) in targets {
        if !running(&m) {
            print(&format!("{}: not running ({})\n", m.slug, state_of(&m)))?;
            continue;
        }
        match stop_one(&dir, &m, grace) {
            // Holding the lock: the launcher is gone, and nothing restarted it.
            Ok((_lock, what)) if !read_meta(&dir).is_some_and(|m| running(&m)) => {
                print(&format!("{}: {what}\n", m.slug))?;
            }
            Ok(_) => errors.push(format!("error: {}: still running", m.slug)),
            Err(f) => errors.push(f.message),
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(failure(errors.join("\n"))) }
}

pub(crate) fn resume(slug: &str, quiet: bool, detach: bool) -> Result<(), Failure> {
    let (_, meta) = find(slug)?;
    if running(&meta) {
        return Err(usage(format!("error: `{slug}` is running")));
    }
    let r = &meta.request;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let manifest = Manifest::load(&r.manifest, home.as_deref()).map_err(|e| usage(format!("error: {e}")))?;
    let req = Request {
        agent: r.agent.clone(),
        bottles: r.bottles.clone(),
        backend: r.backend.as_deref().and_then(BackendKind::parse),
        runtime: r.runtime.as_deref().and_then(DockerRuntime::parse),
        args: r.args.clone(),
    };
    let is_set = crate::credentials::is_set;
    let plan = manifest
        .resolve(&req, &is_set)
        .map_err(|e| usage(format!("error: the manifest changed and no longer resolves: {e}")))?;
    // The stored project was checked when the bottle started; a mount
    // exposes it again, so it is checked again (the state dir may have
    // moved into it since).
    if plan.workspace == WorkspaceMode::Mount {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        check_project(&r.project, ProjectSource::Stored, home.as_deref(), &launch::guarded_for(&plan))
            .map_err(|e| usage(format!("error: cannot resume `{slug}`: {}", crate::chain(&e))))?;
    }
    let unset: Vec<String> = plan.secrets.iter().filter(|s| !s.set).map(|s| s.env.to_string()).collect();
    if !unset.is_empty() {
        return Err(failure(format!("error: host environment variables not set: {}", unset.join(", "))));
    }
    if detach {
        return launch::detach(&plan.agent.name, Some(slug));
    }
    // The launcher takes the bottle's lock: a concurrent `resume`,
    // `cleanup` or `rm` of this bottle fails or leaves it alone.
    crate::agent_exit(launch::run(
        &plan,
        &launch::Options { quiet, request: r.clone(), resume: Some(slug.to_owned()) },
    )?)
}

/// Deletes a bottle's state dir (its lock held) and checks it is gone.
fn remove(dir: &Path, _lock: &Lock) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) if std::fs::symlink_metadata(dir).is_err() => Ok(()),
        Ok(()) => Err(format!("{} is still there", dir.display())),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}

/// `exec SLUG -- CMD`: the command's exit code becomes ours.
pub(crate) fn exec(slug: &str, argv: &[String]) -> Result<(), Failure> {
    let (dir, m) = find(slug)?;
    if !running(&m) {
        return Err(usage(format!("error: bottle `{slug}` is not running ({}); `resume` starts it", state_of(&m))));
    }
    let kind = BackendKind::parse(&m.backend)
        .ok_or_else(|| failure(format!("error: bottle `{slug}` names an unknown backend `{}`", m.backend)))?;
    let code = launch::backend(kind)?
        .exec(slug, &dir, argv)
        .map_err(|e| failure(format!("error: exec in `{slug}`: {}", chain(&e))))?;
    if code == 0 { Ok(()) } else { Err(Failure { code: u8::try_from(code).unwrap_or(1), message: String::new() }) }
}

pub(crate) fn rm(slugs: &[String], force: bool) -> Result<(), Failure> {
    let mut errors = Vec::new();
    for slug in slugs {
        let (dir, m) = match find(slug) {
            Ok(x) => x,
            Err(f) => {
                errors.push(f);
                continue;
            }
        };
        let lock = if running(&m) {
            if !force {
                errors.push(usage(format!(
                    "error: `{slug}` is running: stop it first (`bot-bottle stop {slug}`) or use `rm -f`"
                )));
                continue;
            }
            match stop_one(&dir, &m, Duration::from_secs(10)) {
                Ok((lock, _)) => lock,
                Err(f) => {
                    errors.push(f);
                    continue;
                }
            }
        } else {
            match try_lock(&dir) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    errors.push(failure(format!("error: `{slug}` is in use by another bot-bottle")));
                    continue;
                }
                Err(f) => {
                    errors.push(f);
                    continue;
                }
            }
        };
        // What a crashed launcher left outside the state dir (cgroups,
        // leases, deploy keys) goes first; then the state dir itself.
        let did = launch::cleanup(&m, &dir);
        for what in &did {
            tracing::debug!(%slug, what, "rm: cleanup");
        }
        // Its state dir is how `cleanup` finds what is left: kept, and
        // never "removed", while a process or cgroup of it remains.
        let failed = launch::failed(&did);
        if !failed.is_empty() {
            errors.push(failure(format!("error: {slug}: not removed: {}", failed.join(", "))));
            continue;
        }
        match remove(&dir, &lock) {
            Ok(()) => print(&format!("{slug}: removed\n"))?,
            Err(e) => errors.push(failure(format!("error: {slug}: {e}"))),
        }
    }
    match errors.iter().map(|f| f.code).max() {
        None => Ok(()),
        Some(code) => {
            Err(Failure { code, message: errors.into_iter().map(|f| f.message).collect::<Vec<_>>().join("\n") })
        }
    }
}

/// The bytes under `path`, symlinks not followed.
fn size(path: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(path) else { return 0 };
    if !md.is_dir() {
        return md.len();
    }
    std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| size(&e.path())).sum()
}

/// Whether `--purge` may go ahead: `--yes`, or "y" typed on a terminal.
fn confirmed(n: usize, bytes: u64) -> Result<bool, Failure> {
    if !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        return Err(usage(format!(
            "error: cleanup --purge would delete {n} stopped bottle(s) ({}), workspace copies included; pass --yes to confirm",
            crate::render::size(bytes)
        )));
    }
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "delete {n} stopped bottle(s) ({}), workspace copies and audit logs included? [y/N] ",
        crate::render::size(bytes)
    )
    .and_then(|()| err.flush())
    .map_err(|e| failure(format!("error: {e}")))?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| failure(format!("error: reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub(crate) fn cleanup(purge: bool, yes: bool) -> Result<(), Failure> {
    let mut out = String::new();
    let mut kept = Vec::new();
    let mut errors = Vec::new();
    // Locked first: a bottle whose launcher runs (or that another command
    // is changing) is never touched.
    let mut stopped = Vec::new();
    for (dir, m) in all() {
        match try_lock(&dir)? {
            Some(lock) if !running(&m) => stopped.push((dir, m, lock)),
            _ => tracing::debug!(slug = %m.slug, "cleanup: running or in use, left alone"),
        }
    }
    if purge && !stopped.is_empty() && !yes {
        let bytes = stopped.iter().map(|(d, _, _)| size(d)).sum();
        if !confirmed(stopped.len(), bytes)? {
            return print("nothing deleted\n");
        }
    }
    for (dir, m, lock) in stopped {
        let mut did = launch::cleanup(&m, &dir);
        let failed: Vec<String> = launch::failed(&did).into_iter().map(str::to_owned).collect();
        if !failed.is_empty() {
            // Reported as errors (non-zero exit), and the state dir kept
            // even with --purge: it is how a later cleanup finds them.
            errors.push(format!("error: {}: {}", m.slug, failed.join(", ")));
            did.retain(|d| !d.starts_with(bot_bottle_backend::COULD_NOT));
        }
        if m.exit.is_none() {
            let mut m = m.clone();
            m.exit = Some(-1);
            match write_meta(&dir, &m) {
                Ok(()) => did.push("marked crashed".into()),
                Err(e) => errors.push(format!("error: {}: recording it as crashed: {e}", m.slug)),
            }
        }
        if purge && failed.is_empty() {
            let bytes = size(&dir);
            match remove(&dir, &lock) {
                Ok(()) => did.push(format!("purged ({})", crate::render::size(bytes))),
                Err(e) => errors.push(format!("error: {}: {e}", m.slug)),
            }
        } else {
            kept.push(format!("{}: {}, holds {}", m.slug, state_of(&m), crate::render::size(size(&dir))));
        }
        if !did.is_empty() {
            out.push_str(&format!("{}: {}\n", m.slug, did.join(", ")));
        }
    }
    if purge {
        for line in crate::launch::purge() {
            out.push_str(&format!("{line}\n"));
        }
    }
    if out.is_empty() && errors.is_empty() {
        out.push_str("nothing left behind to remove\n");
    }
    if !kept.is_empty() {
        out.push_str("kept (workspace copies and audit logs):\n");
        for k in &kept {
            out.push_str(&format!("  {k}\n"));
        }
        out.push_str("remove one with `bot-bottle rm SLUG`, all with `bot-bottle cleanup --purge`\n");
    }
    print(&out)?;
    if errors.is_empty() { Ok(()) } else { Err(failure(errors.join("\n"))) }
}
