//! `requests list|approve|reject`: the scriptable side of supervise. The
//! queue is files in each bottle's state dir; the running bottle's
//! supervise server applies a decision to its proxy within a moment.

use std::path::PathBuf;

use bot_bottle_sidecars::{EgressRequest, Queue, RequestState, RouteSpec};
use clap::Subcommand;
use serde::Serialize;

use crate::{Failure, ListFormat, failure, print, usage};

#[derive(Debug, Subcommand)]
pub(crate) enum RequestsCommand {
    /// List egress requests (pending ones unless --all), across bottles.
    List {
        /// Only this bottle's requests.
        slug: Option<String>,
        /// Decided requests too.
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
    /// Approve a request: as asked, or modified with --host/--path/--method.
    Approve {
        /// The request's id (from `requests list`).
        id: String,
        /// Grant this host instead of the one asked for.
        #[arg(long)]
        host: Option<String>,
        /// Grant only these path prefixes (repeat), instead of those asked for.
        #[arg(long = "path", value_name = "PREFIX")]
        paths: Vec<String>,
        /// Grant only these methods (repeat), instead of those asked for.
        #[arg(long = "method", value_name = "METHOD")]
        methods: Vec<String>,
        /// A note for the agent.
        #[arg(long)]
        comment: Option<String>,
        /// For good: also write the granted route into the bottle's manifest file
        /// (done anyway when the agent asked for it for good).
        #[arg(long)]
        persist: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
    /// Reject a request, with a comment the agent reads.
    Reject {
        /// The request's id (from `requests list`).
        id: String,
        /// Why, for the agent.
        #[arg(long)]
        comment: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
}

#[derive(Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) slug: String,
    #[serde(flatten)]
    pub(crate) request: EgressRequest,
    /// The manifest file the grant was written into ("for good").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) persisted: Option<PathBuf>,
}

/// Every bottle's state dir with its slug, newest first.
pub(crate) fn bottles(slug: Option<&str>) -> Vec<(String, PathBuf)> {
    crate::bottles::all()
        .into_iter()
        .filter(|(_, m)| slug.is_none_or(|s| s == m.slug))
        .map(|(d, m)| (m.slug, d))
        .collect()
}

/// The requests of every bottle (or one), oldest first.
pub(crate) fn rows(slug: Option<&str>, all: bool) -> Result<Vec<Row>, Failure> {
    let mut v = Vec::new();
    for (slug, dir) in bottles(slug) {
        let reqs = Queue::new(&dir).all().map_err(|e| failure(format!("error: {slug}: {}", chain(&e))))?;
        v.extend(reqs.into_iter().filter(|r| all || r.state == RequestState::Pending).map(|request| Row {
            slug: slug.clone(),
            request,
            persisted: None,
        }));
    }
    v.sort_by(|a, b| (&a.request.created, &a.request.id).cmp(&(&b.request.created, &b.request.id)));
    Ok(v)
}

pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

pub(crate) fn route_text(r: &RouteSpec) -> String {
    let mut s = r.host.clone();
    if !r.paths.is_empty() {
        s.push_str(&format!(" paths={}", r.paths.join(",")));
    }
    if !r.methods.is_empty() {
        s.push_str(&format!(" methods={}", r.methods.join(",")));
    }
    s
}

fn state_text(s: RequestState) -> &'static str {
    match s {
        RequestState::Pending => "pending",
        RequestState::Approved => "approved",
        RequestState::Modified => "modified",
        RequestState::Rejected => "rejected",
    }
}

/// Who decides: the operator's user name.
pub(crate) fn operator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()))
}

/// Finds the bottle whose queue holds `id`.
fn find(id: &str) -> Result<(String, Queue), Failure> {
    for (slug, dir) in bottles(None) {
        let q = Queue::new(&dir);
        if q.get(id).is_ok() {
            return Ok((slug, q));
        }
    }
    Err(usage(format!("error: no request `{id}` in any bottle's queue; `bot-bottle requests list` shows them")))
}

/// Decides `id`: `grant` builds the granted route from the asked one
/// (`None` rejects). A grant is also written into the bottle's manifest
/// file when `persist` is set or the agent asked for it for good; that
/// edit is checked before anything is decided.
pub(crate) fn decide(
    id: &str,
    grant: Option<&dyn Fn(&RouteSpec) -> RouteSpec>,
    comment: Option<String>,
    persist: bool,
) -> Result<Row, Failure> {
    let (slug, q) = find(id)?;
    let asked = q.get(id).map_err(|e| failure(format!("error: {}", chain(&e))))?;
    let route = grant.map(|g| g(&asked.route));
    if let Some(r) = &route {
        bot_bottle_sidecars::check_route(r).map_err(|e| usage(format!("error: {}", chain(&e))))?;
    }
    let for_good = route.clone().filter(|_| persist || asked.lifetime == bot_bottle_sidecars::Lifetime::Persist);
    if let Some(r) = &for_good {
        crate::persist::check(&slug, r)?;
    }
    let request = q.decide(id, &operator(), route, comment).map_err(|e| match e {
        bot_bottle_sidecars::SuperviseError::AlreadyDecided { .. } => usage(format!("error: {e}")),
        e => failure(format!("error: {}", chain(&e))),
    })?;
    let persisted = match &for_good {
        Some(r) => Some(crate::persist::persist(&slug, r).map_err(|f| {
            failure(format!("{}\n(the grant is in force for this run of `{slug}`, but was not written)", f.message))
        })?),
        None => None,
    };
    Ok(Row { slug, request, persisted })
}

/// `s` safe to print on the operator's terminal: the justification is the
/// agent's text, and an escape sequence in it must not reach the terminal
/// (rewrite what is shown, set the title, write the clipboard). Control
/// characters become spaces (line breaks, tabs) or U+FFFD; so do the bidi
/// controls that would reorder what the operator reads.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' => '\u{fffd}',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

fn show(rows: &[Row], format: ListFormat) -> Result<(), Failure> {
    let out = match format {
        ListFormat::Json => serde_json::to_string_pretty(rows).map_err(|e| failure(e.to_string()))? + "\n",
        ListFormat::Text => text(rows),
    };
    print(&out)
}

/// The text listing of `rows`, every line [`printable`].
fn text(rows: &[Row]) -> String {
    let mut s = String::new();
    for r in rows {
        let q = &r.request;
        s.push_str(&format!(
            "{}  {}  {}  {}  {}\n    why: {}\n",
            q.id,
            r.slug,
            state_text(q.state),
            route_text(&q.route),
            match q.lifetime {
                bot_bottle_sidecars::Lifetime::Session => "session",
                bot_bottle_sidecars::Lifetime::Persist => "persist",
            },
            q.justification.replace('\n', " ")
        ));
        if let Some(f) = &r.persisted {
            s.push_str(&format!("    written for good into {}\n", f.display()));
        }
        if let Some(d) = &q.decision {
            s.push_str(&format!(
                "    decided by {} at {}{}{}\n",
                d.by,
                d.at,
                d.route.as_ref().map(|r| format!(": {}", route_text(r))).unwrap_or_default(),
                d.comment.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
            ));
        }
    }
    if s.is_empty() {
        s.push_str("no requests\n");
    }
    s.lines().map(|l| printable(l) + "\n").collect()
}

pub(crate) fn run(cmd: RequestsCommand) -> Result<(), Failure> {
    match cmd {
        RequestsCommand::List { slug, all, format } => show(&rows(slug.as_deref(), all)?, format),
        RequestsCommand::Approve { id, host, paths, methods, comment, persist, format } => {
            let grant = move |asked: &RouteSpec| RouteSpec {
                host: host.clone().unwrap_or_else(|| asked.host.clone()),
                paths: if paths.is_empty() { asked.paths.clone() } else { paths.clone() },
                methods: if methods.is_empty() { asked.methods.clone() } else { methods.clone() },
            };
            show(&[decide(&id, Some(&grant), comment, persist)?], format)
        }
        RequestsCommand::Reject { id, comment, format } => show(&[decide(&id, None, comment, false)?], format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bot_bottle_sidecars::{Decision, Lifetime};

    #[test]
    fn the_agents_text_cannot_reach_the_terminal_as_escapes() {
        let evil = "need it\x1b]52;c;ZXZpbA==\x07\x1b[2J\u{9b}31m\u{202e}txet\r\nfake: line";
        let row = Row {
            slug: "b".into(),
            request: EgressRequest {
                id: "r1".into(),
                bottle: "b".into(),
                created: "2026-01-01T00:00:00Z".into(),
                run: "x".into(),
                route: RouteSpec { host: "a.example".into(), paths: vec![], methods: vec![] },
                justification: evil.into(),
                lifetime: Lifetime::Session,
                state: RequestState::Rejected,
                decision: Some(Decision {
                    by: "op".into(),
                    at: "t".into(),
                    route: None,
                    comment: Some("no\x1b[1m".into()),
                }),
                applied: false,
                apply_error: None,
            },
            persisted: None,
        };
        let out = text(&[row]);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n' || c == '\u{202e}'), "{out:?}");
        assert_eq!(out.lines().count(), 3, "the justification stays on its line: {out}");
        assert!(out.contains("need it"), "{out}");
    }
}
