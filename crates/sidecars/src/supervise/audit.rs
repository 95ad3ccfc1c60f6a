//! Supervise's audit entries, in the bottle's audit log beside the proxy's
//! and the gate's: every request, every decision (who made it and when) and
//! every grant put in force. Also the reader of that log, for
//! `recent_denials` and the operator's `logs` and `policy`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{EgressRequest, RouteSpec, State, SuperviseError};

/// The bottle's audit log.
pub fn audit_path(state: &Path) -> PathBuf {
    state.join("audit.jsonl")
}

/// One supervise entry.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    pub time: String,
    pub bottle: &'a str,
    pub service: &'static str,
    /// `request`, `decision` or `applied`.
    pub op: &'static str,
    pub id: &'a str,
    pub route: &'a RouteSpec,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub justification: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<&'a str>,
}

impl<'a> AuditEvent<'a> {
    fn of(r: &'a EgressRequest, op: &'static str) -> AuditEvent<'a> {
        let d = r.decision.as_ref();
        AuditEvent {
            time: super::queue::now(),
            bottle: &r.bottle,
            service: "supervise",
            op,
            id: &r.id,
            route: d.and_then(|d| d.route.as_ref()).unwrap_or(&r.route),
            state: r.state,
            justification: (op == "request").then_some(r.justification.as_str()),
            by: d.map(|d| d.by.as_str()),
            comment: d.and_then(|d| d.comment.as_deref()),
        }
    }

    pub fn request(r: &'a EgressRequest) -> AuditEvent<'a> {
        Self::of(r, "request")
    }

    pub fn decision(r: &'a EgressRequest) -> AuditEvent<'a> {
        Self::of(r, "decision")
    }

    pub fn applied(r: &'a EgressRequest) -> AuditEvent<'a> {
        Self::of(r, "applied")
    }
}

/// Appends one entry to the bottle's audit log, in one write.
pub(crate) fn record(state: &Path, e: &AuditEvent<'_>) -> Result<(), SuperviseError> {
    let p = audit_path(state);
    let mut line = serde_json::to_vec(e).map_err(|e| SuperviseError::Corrupt(e.to_string()))?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .and_then(|mut f| f.write_all(&line))
        .map_err(|source| SuperviseError::Io { what: format!("writing {}", p.display()), source })
}

#[derive(Debug, thiserror::Error)]
#[error("reading the audit log {}", path.display())]
pub struct AuditError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The audit log's entries from byte `from` on (a whole number of lines),
/// and where the next read starts. At most the last `tail` bytes are read
/// when `tail` is set (the first, partial line then skipped). Lines that are
/// not JSON are skipped.
pub fn read_audit(state: &Path, from: u64, tail: Option<u64>) -> Result<(Vec<serde_json::Value>, u64), AuditError> {
    let path = audit_path(state);
    let err = |source| AuditError { path: path.clone(), source };
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), from)),
        Err(e) => return Err(err(e)),
    };
    let len = f.metadata().map_err(err)?.len();
    let start = match tail {
        Some(t) => from.max(len.saturating_sub(t)),
        None => from,
    };
    f.seek(SeekFrom::Start(start)).map_err(err)?;
    let mut buf = Vec::new();
    f.take(len - start.min(len)).read_to_end(&mut buf).map_err(err)?;
    // Only whole lines: a line still being written is read next time.
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut lines = buf[..end].split(|&b| b == b'\n');
    if start > from && start > 0 {
        lines.next();
    }
    let v = lines.filter(|l| !l.is_empty()).filter_map(|l| serde_json::from_slice(l).ok()).collect();
    Ok((v, start + end as u64))
}
