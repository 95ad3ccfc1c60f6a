//! The audit log: one JSON line per decision. It never holds a secret:
//! query strings and headers are not logged, a path in which the detector
//! finds anything is redacted, and an injected token is named by its
//! environment variable only. The file has a size cap: past it, the file
//! becomes `NAME.1` (replacing the previous one) and a new one starts, so
//! an agent that sends requests for hours cannot fill the disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bytes per audit file before it rotates.
pub(crate) const MAX_BYTES: u64 = 16 << 20;

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
    /// The environment variable whose token was injected, if any.
    pub(crate) injected: Option<&'a str>,
    /// Known secrets masked in the response (headers, body, trailers,
    /// WebSocket messages).
    pub(crate) redacted: u64,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) duration_ms: f64,
    /// `inspect`, `passthrough` (not decrypted: nothing inspected or
    /// injected) or `none` (plain HTTP).
    pub(crate) tls: &'a str,
}

#[derive(Debug)]
struct Open {
    path: PathBuf,
    file: File,
    size: u64,
}

#[derive(Debug)]
pub(crate) struct Audit {
    file: Option<Mutex<Open>>,
    max: u64,
}

impl Audit {
    pub(crate) fn open(path: Option<&Path>) -> std::io::Result<Audit> {
        Audit::with_cap(path, MAX_BYTES)
    }

    pub(crate) fn with_cap(path: Option<&Path>, max: u64) -> std::io::Result<Audit> {
        let file = match path {
            Some(p) => {
                let file = OpenOptions::new().create(true).append(true).open(p)?;
                let size = file.metadata()?.len();
                Some(Mutex::new(Open { path: p.to_path_buf(), file, size }))
            }
            None => None,
        };
        Ok(Audit { file, max })
    }

    pub(crate) fn write(&self, rec: &Record<'_>) {
        let Some(f) = &self.file else { return };
        let Ok(mut line) = serde_json::to_vec(rec) else { return };
        line.push(b'\n');
        let Ok(mut f) = f.lock() else { return };
        if f.size > 0 && f.size + line.len() as u64 > self.max {
            let old = f.path.with_extension(match f.path.extension() {
                Some(e) => format!("{}.1", e.to_string_lossy()),
                None => "1".into(),
            });
            if std::fs::rename(&f.path, &old).is_ok()
                && let Ok(file) = OpenOptions::new().create(true).append(true).open(&f.path)
            {
                f.file = file;
                f.size = 0;
            }
        }
        // One write per line so concurrent records never interleave. A
        // failed write (disk full) loses the record, never the request.
        if f.file.write_all(&line).is_ok() {
            f.size += line.len() as u64;
        }
    }
}

pub(crate) fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_its_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("audit.jsonl");
        let a = Audit::with_cap(Some(&p), 1000).expect("open");
        let rec = Record {
            time: now(),
            bottle: "b",
            method: "GET",
            host: "h",
            port: 443,
            path: "/",
            decision: "allow",
            rule: None,
            reason: None,
            status: 200,
            injected: Some("TOKEN_VAR"),
            redacted: 0,
            bytes_up: 1,
            bytes_down: 2,
            duration_ms: 0.5,
            tls: "inspect",
        };
        for _ in 0..50 {
            a.write(&rec);
        }
        let cur = std::fs::metadata(&p).expect("current").len();
        let old = std::fs::metadata(dir.path().join("audit.jsonl.1")).expect("rotated").len();
        assert!(cur <= 1000 && old <= 1000 && cur > 0, "{cur} {old}");
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(text.lines().all(|l| l.contains("\"injected\":\"TOKEN_VAR\"")), "{text}");
    }
}
