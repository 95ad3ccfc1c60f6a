//! The gate's audit entries: one JSON line per fetch and push, in the
//! bottle's audit log beside the proxy's (appended, one write per line).
//! They name refs, decisions and how many secrets were found, never a
//! secret: findings are counted, not quoted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub(crate) struct Entry<'a> {
    pub(crate) time: String,
    pub(crate) bottle: &'a str,
    pub(crate) service: &'static str,
    pub(crate) repo: &'a str,
    /// `fetch`, `push` or `land` (the uncommitted snapshot).
    pub(crate) op: &'static str,
    pub(crate) refs: Vec<String>,
    /// `allow`, `deny` or `error`.
    pub(crate) decision: &'static str,
    pub(crate) findings: usize,
    pub(crate) reason: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Audit {
    file: Option<Mutex<File>>,
}

impl Audit {
    pub(crate) fn open(path: Option<&Path>) -> std::io::Result<Audit> {
        let file = match path {
            Some(p) => Some(Mutex::new(OpenOptions::new().create(true).append(true).open(p)?)),
            None => None,
        };
        Ok(Audit { file })
    }

    /// Writes one entry. A failure to write is returned so the caller can
    /// say so; it never changes a decision already made.
    pub(crate) fn write(&self, e: &Entry<'_>) -> std::io::Result<()> {
        let Some(f) = &self.file else { return Ok(()) };
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = f.lock().map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        f.write_all(&line)
    }
}

pub(crate) fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
