//! `bot-bottle scan`: the secret detector over files, trees or stdin.

use std::io::Read;
use std::path::{Path, PathBuf};

use bot_bottle_detect::{Detector, line_of};
use serde::Serialize;

use crate::{Failure, failure, print, usage};

#[derive(Debug, clap::Args)]
pub(crate) struct ScanArgs {
    /// Files or directories to scan; `-` for stdin. Default: the current directory.
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::ListFormat::Text)]
    format: crate::ListFormat,
}

#[derive(Debug, Serialize)]
struct Hit {
    path: String,
    line: usize,
    rule: String,
    /// Only a public prefix and the length; never the secret.
    redacted: String,
}

/// Files larger than this are scanned only up to it, and say so.
const MAX_FILE: u64 = 64 << 20;

pub(crate) fn run(args: ScanArgs) -> Result<(), Failure> {
    let det = Detector::builtin();
    let mut hits = Vec::new();
    let mut problems = Vec::new();
    let paths = if args.paths.is_empty() { vec![PathBuf::from(".")] } else { args.paths };
    for p in &paths {
        if p.as_os_str() == "-" {
            let mut data = Vec::new();
            std::io::stdin()
                .take(MAX_FILE)
                .read_to_end(&mut data)
                .map_err(|e| failure(format!("error: reading stdin: {e}")))?;
            collect(&det, "-", &data, &mut hits);
            continue;
        }
        if !p.exists() {
            return Err(usage(format!("error: {} does not exist", p.display())));
        }
        for entry in ignore::WalkBuilder::new(p).hidden(false).git_ignore(true).require_git(false).build() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            if !entry.file_type().is_some_and(|t| t.is_file())
                || entry.path().components().any(|c| c.as_os_str() == ".git")
            {
                continue;
            }
            match read(entry.path()) {
                Ok(data) => collect(&det, &entry.path().display().to_string(), &data, &mut hits),
                Err(e) => problems.push(format!("{}: {e}", entry.path().display())),
            }
        }
    }
    let out = match args.format {
        crate::ListFormat::Json => {
            serde_json::to_string_pretty(&serde_json::json!({ "findings": hits, "errors": problems }))
                .map_err(|e| failure(e.to_string()))?
                + "\n"
        }
        crate::ListFormat::Text => {
            let mut s: String =
                hits.iter().map(|h| format!("{}:{}:{} {}\n", h.path, h.line, h.rule, h.redacted)).collect();
            for p in &problems {
                s.push_str(&format!("warning: {p}\n"));
            }
            s
        }
    };
    print(&out)?;
    if hits.is_empty() { Ok(()) } else { Err(Failure { code: 1, message: String::new() }) }
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    std::fs::File::open(path)?.take(MAX_FILE).read_to_end(&mut data)?;
    Ok(data)
}

fn collect(det: &Detector, path: &str, data: &[u8], hits: &mut Vec<Hit>) {
    for f in det.scan(data) {
        let redacted = det.redact(&f, data);
        hits.push(Hit { path: path.to_owned(), line: line_of(data, f.range.start as usize), rule: f.rule, redacted });
    }
}
