//! `logs SLUG` and `policy SLUG`: what a bottle did, from its audit log
//! (egress decisions, gate fetches and pushes, supervise requests and
//! decisions) and, with `--agent`, its agent's output (detached bottles).
//! Each audit line is shown by its `service`; a new service's lines show as
//! JSON until this learns them.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::{Failure, ListFormat, failure, print, usage};

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// The bottle's slug, as `list` shows it.
    slug: String,
    /// Keep printing new entries until the bottle stops.
    #[arg(long, short)]
    follow: bool,
    /// Only refusals: denied requests and pushes, rejected requests.
    #[arg(long)]
    denied: bool,
    /// The agent's output (`agent.log` of a detached bottle) instead.
    #[arg(long, conflicts_with_all = ["denied", "format"])]
    agent: bool,
    /// Output format (json: one audit entry per line, as stored).
    #[arg(long, value_enum)]
    format: Option<ListFormat>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PolicyArgs {
    /// The bottle's slug, as `list` shows it.
    slug: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Text)]
    format: ListFormat,
}

/// The bottle's state dir, and whether its launcher still runs.
fn bottle(slug: &str) -> Result<(PathBuf, bool), Failure> {
    crate::bottles::all()
        .into_iter()
        .find(|(_, m)| m.slug == slug)
        .map(|(d, m)| (d, crate::bottles::state_of(&m) == "running"))
        .ok_or_else(|| usage(format!("error: no bottle `{slug}`; `bot-bottle list` shows them")))
}

fn running(slug: &str) -> bool {
    bottle(slug).is_ok_and(|(_, r)| r)
}

fn refused(e: &Value) -> bool {
    e["decision"] == "deny" || (e["service"] == "supervise" && e["state"] == "rejected")
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// One entry as a line of text, safe for the terminal.
fn line(e: &Value) -> String {
    crate::requests::printable(&entry(e)) + "\n"
}

fn entry(e: &Value) -> String {
    let t = s(&e["time"]);
    match e["service"].as_str() {
        None => format!(
            "{t} proxy     {:<5} {} {}:{}{} {}",
            s(&e["decision"]),
            s(&e["method"]),
            s(&e["host"]),
            s(&e["port"]),
            s(&e["path"]),
            e["rule"].as_str().map(|r| format!("rule={r}")).unwrap_or_default()
        ),
        Some("gate") => format!(
            "{t} gate      {:<5} {} {} {}{}",
            s(&e["decision"]),
            s(&e["op"]),
            s(&e["repo"]),
            e["refs"].as_array().map(|r| r.iter().map(s).collect::<Vec<_>>().join(",")).unwrap_or_default(),
            e["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
        ),
        Some("supervise") => format!(
            "{t} supervise {:<8} {} {} {}{}",
            s(&e["op"]),
            s(&e["id"]),
            s(&e["route"]["host"]),
            s(&e["state"]),
            e["by"].as_str().map(|b| format!(" by {b}")).unwrap_or_default()
        ),
        Some(_) => e.to_string(),
    }
}

fn show(entries: &[Value], args: &LogsArgs) -> Result<(), Failure> {
    let mut out = String::new();
    for e in entries.iter().filter(|e| !args.denied || refused(e)) {
        match args.format {
            Some(ListFormat::Json) => out.push_str(&format!("{e}\n")),
            _ => out.push_str(&line(e)),
        }
    }
    if out.is_empty() { Ok(()) } else { print(&out) }
}

pub(crate) fn logs(args: LogsArgs) -> Result<(), Failure> {
    let (dir, _) = bottle(&args.slug)?;
    if args.agent {
        return agent(&dir, &args);
    }
    let read =
        |from| bot_bottle_sidecars::read_audit(&dir, from, None).map_err(|e| failure(format!("error: {}", chain(&e))));
    let (entries, mut at) = read(0)?;
    show(&entries, &args)?;
    if !args.follow {
        return Ok(());
    }
    loop {
        let alive = running(&args.slug);
        std::thread::sleep(Duration::from_millis(200));
        let (entries, next) = read(at)?;
        at = next;
        show(&entries, &args)?;
        // One last read after the bottle stopped, then done.
        if !alive {
            return Ok(());
        }
    }
}

/// The agent's output as `logs` prints it. On a terminal it goes through
/// the relay's escape filter: with no bot-bottle reading the terminal, an
/// answerback (a title report, a clipboard query) would be typed straight
/// into the user's shell, and a clipboard write would wait for the next paste.
fn agent_text(buf: &[u8]) -> String {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        String::from_utf8_lossy(&bot_bottle_backend::terminal_safe(buf)).into_owned()
    } else {
        String::from_utf8_lossy(buf).into_owned()
    }
}

fn agent(dir: &Path, args: &LogsArgs) -> Result<(), Failure> {
    let p = dir.join("agent.log");
    let mut f = std::fs::File::open(&p).map_err(|e| {
        usage(format!("error: {}: {e}; only a detached bottle (`start --detach`) has an agent log", p.display()))
    })?;
    let mut at = 0u64;
    loop {
        let alive = running(&args.slug);
        let mut buf = Vec::new();
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_to_end(&mut buf))
            .map_err(|e| failure(format!("error: {e}")))?;
        at += buf.len() as u64;
        if !buf.is_empty() {
            print(&agent_text(&buf))?;
        }
        if !args.follow || !alive {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Count {
    host: String,
    decision: String,
    rule: Option<String>,
    count: u64,
}

/// Egress by host, decision and rule, with counts: what the bottle tried
/// and what the policy did about it.
pub(crate) fn policy(args: PolicyArgs) -> Result<(), Failure> {
    let (dir, _) = bottle(&args.slug)?;
    let (entries, _) =
        bot_bottle_sidecars::read_audit(&dir, 0, None).map_err(|e| failure(format!("error: {}", chain(&e))))?;
    let mut counts: BTreeMap<(String, String, Option<String>), u64> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.get("service").is_none()) {
        let host = format!("{}:{}", s(&e["host"]), s(&e["port"]));
        *counts.entry((host, s(&e["decision"]), e["rule"].as_str().map(str::to_owned))).or_default() += 1;
    }
    let mut rows: Vec<Count> =
        counts.into_iter().map(|((host, decision, rule), count)| Count { host, decision, rule, count }).collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cmp(b)));
    let out = match args.format {
        ListFormat::Json => serde_json::to_string_pretty(&rows).map_err(|e| failure(e.to_string()))? + "\n",
        ListFormat::Text => {
            let mut t = format!("{:<40} {:<8} {:<18} {}\n", "HOST", "DECISION", "RULE", "COUNT");
            for r in &rows {
                t.push_str(&format!(
                    "{:<40} {:<8} {:<18} {}\n",
                    r.host,
                    r.decision,
                    r.rule.as_deref().unwrap_or("-"),
                    r.count
                ));
            }
            t
        }
    };
    print(&out)
}

fn chain(e: &dyn std::error::Error) -> String {
    crate::requests::chain(e)
}
