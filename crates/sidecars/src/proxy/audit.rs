//! The audit log: one JSON line per decision. It never holds a secret:
//! query strings and headers are not logged, and a path in which the
//! detector finds anything is redacted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub(crate) struct Record<'a> {
    pub(crate) time: String,
    pub(crate) bottle: &'a str,
    pub(crate) method: &'a str,
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) path: &'a str,
    /// `allow`, `deny` or `error`.
    pub(crate) decision: &'a str,
    pub(crate) rule: Option<&'a str>,
    pub(crate) reason: Option<&'a str>,
    pub(crate) status: u16,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) duration_ms: f64,
    /// `inspect`, `passthrough` (not decrypted: nothing inspected or
    /// injected) or `none` (plain HTTP).
    pub(crate) tls: &'a str,
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

    pub(crate) fn write(&self, rec: &Record<'_>) {
        let Some(f) = &self.file else { return };
        let Ok(mut line) = serde_json::to_vec(rec) else { return };
        line.push(b'\n');
        if let Ok(mut f) = f.lock() {
            // One write per line so concurrent records never interleave.
            let _ = f.write_all(&line);
        }
    }
}

pub(crate) fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
