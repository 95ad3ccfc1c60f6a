//! `list`, `stop`, `resume` and `cleanup`: bottles by their state dirs.

use std::path::PathBuf;
use std::time::Duration;

use bot_bottle_manifest::{BackendKind, Manifest, Request};
use serde::Serialize;

use crate::launch::{self, Meta, bottles_dir, now, read_meta};
use crate::{Failure, ListFormat, failure, print, usage};

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

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("bot-bottle"))
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

pub(crate) fn state_of(m: &Meta) -> String {
    match m.exit {
        Some(c) => format!("exited ({c})"),
        None if alive(m.pid) => "running".into(),
        None => "crashed".into(),
    }
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

pub(crate) fn list(format: ListFormat) -> Result<(), Failure> {
    let rows: Vec<Row> = all()
        .into_iter()
        .map(|(dir, m)| Row {
            state: state_of(&m),
            age_secs: now().saturating_sub(m.started),
            slug: m.slug,
            agent: m.request.agent,
            backend: m.backend,
            dir,
        })
        .collect();
    let out = match format {
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

pub(crate) fn stop(slug: Option<String>, every: bool) -> Result<(), Failure> {
    let targets: Vec<(PathBuf, Meta)> =
        all().into_iter().filter(|(_, m)| every || slug.as_deref() == Some(m.slug.as_str())).collect();
    if targets.is_empty() {
        return match slug {
            Some(s) => Err(usage(format!("error: no bottle named `{s}` (see `bot-bottle list`)"))),
            None => Ok(()),
        };
    }
    let mut out = String::new();
    for (dir, m) in targets {
        if state_of(&m) != "running" {
            if !every {
                out.push_str(&format!("{}: not running ({})\n", m.slug, state_of(&m)));
            }
            continue;
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid as i32), nix::sys::signal::Signal::SIGTERM);
        // The launcher tears the bottle down and records its exit.
        for _ in 0..200 {
            if read_meta(&dir).is_some_and(|m| m.exit.is_some()) || !alive(m.pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        out.push_str(&format!("{}: stopped\n", m.slug));
    }
    print(&out)
}

pub(crate) fn resume(slug: &str, quiet: bool) -> Result<(), Failure> {
    let (_, meta) = all()
        .into_iter()
        .find(|(_, m)| m.slug == slug)
        .ok_or_else(|| usage(format!("error: no bottle named `{slug}` (see `bot-bottle list`)")))?;
    if state_of(&meta) == "running" {
        return Err(usage(format!("error: `{slug}` is running")));
    }
    let r = &meta.request;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let manifest = Manifest::load(&r.manifest, home.as_deref()).map_err(|e| usage(format!("error: {e}")))?;
    let req = Request {
        agent: r.agent.clone(),
        bottles: r.bottles.clone(),
        backend: r.backend.as_deref().and_then(BackendKind::parse),
        args: r.args.clone(),
    };
    let is_set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let plan = manifest
        .resolve(&req, &is_set)
        .map_err(|e| usage(format!("error: the manifest changed and no longer resolves: {e}")))?;
    let unset: Vec<String> = plan.secrets.iter().filter(|s| !s.set).map(|s| s.env.to_string()).collect();
    if !unset.is_empty() {
        return Err(failure(format!("error: host environment variables not set: {}", unset.join(", "))));
    }
    let code = launch::run(&plan, &launch::Options { quiet, request: r.clone(), resume: Some(slug.to_owned()) })?;
    if code == 0 { Ok(()) } else { Err(Failure { code: u8::try_from(code).unwrap_or(1), message: String::new() }) }
}

pub(crate) fn cleanup(purge: bool) -> Result<(), Failure> {
    let mut out = String::new();
    for (dir, m) in all() {
        if state_of(&m) == "running" {
            continue;
        }
        let mut did = launch::cleanup(&m, &dir);
        if m.exit.is_none() {
            let mut m = m.clone();
            m.exit = Some(-1);
            if let Ok(j) = serde_json::to_vec_pretty(&m) {
                let _ = std::fs::write(dir.join("launch.json"), j);
            }
            did.push("marked crashed".into());
        }
        if purge {
            let _ = std::fs::remove_dir_all(&dir);
            did.push("purged".into());
        } else if dir.join("workspace").exists() && !did.is_empty() {
            did.push(format!("kept {}", dir.join("workspace").display()));
        }
        if !did.is_empty() {
            out.push_str(&format!("{}: {}\n", m.slug, did.join(", ")));
        }
    }
    if out.is_empty() {
        out.push_str("nothing to clean up\n");
    }
    print(&out)
}
