//! Findings on real source (false positives), for two rule sets on the same
//! files in one run.
//!
//! `cargo bench -p bot-bottle-detect --bench realsource -- [--rules FILE]... DIR...`
//! walks every regular file under each DIR (symlinks not followed, files
//! over 64 MiB cut there, as `bot-bottle scan` does) once, and scans each
//! with the built-in rules and with each rules FILE. A FILE from before
//! `nocase` existed (every keyword matched ignoring case) is read that way:
//! its rules get `nocase: true`. Prints JSON: megabytes, and per rule set
//! its findings in total, per MB and by rule.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use bot_bottle_detect::{Detector, builtin_rules, parse_rules};

const MAX_FILE: u64 = 64 << 20;

fn walk(dir: &Path, each: &mut dyn FnMut(&[u8])) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(std::fs::DirEntry::path);
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&e.path(), each);
        } else if ft.is_file() {
            let mut data = Vec::new();
            if std::fs::File::open(e.path()).and_then(|f| f.take(MAX_FILE).read_to_end(&mut data)).is_ok() {
                each(&data);
            }
        }
    }
}

/// An old rules file: every rule's keywords ignore case, as they all did.
fn old_rules(yaml: &str) -> String {
    let mut out = String::new();
    for line in yaml.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("  keywords:") && !yaml.contains("\n  nocase:") {
            out.push_str("  nocase: true\n");
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut sets: Vec<(String, Detector)> = vec![("built-in".into(), Detector::new(builtin_rules()))];
    let mut dirs = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--rules" {
            let file = it.next().expect("--rules FILE");
            let yaml = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
            let rules = parse_rules(&old_rules(&yaml)).unwrap_or_else(|e| panic!("{file}: {e}"));
            sets.push((file, Detector::new(rules)));
        } else if !a.starts_with("--") {
            dirs.push(a);
        }
    }
    let mut bytes = 0usize;
    let mut found: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); sets.len()];
    for d in &dirs {
        walk(Path::new(d), &mut |data| {
            bytes += data.len();
            for ((_, det), by_rule) in sets.iter().zip(found.iter_mut()) {
                for f in det.scan(data) {
                    *by_rule.entry(f.rule).or_default() += 1;
                }
            }
        });
    }
    let mb = bytes as f64 / 1e6;
    let report: Vec<String> = sets
        .iter()
        .zip(&found)
        .map(|((name, det), by_rule)| {
            let n: usize = by_rule.values().sum();
            let rules: Vec<String> = by_rule.iter().map(|(r, c)| format!("{r:?}: {c}")).collect();
            format!(
                "{{\"rules\": {name:?}, \"formats\": {}, \"findings\": {n}, \"per_mb\": {:.4}, \"by_rule\": {{{}}}}}",
                det.rules().len(),
                n as f64 / mb,
                rules.join(", ")
            )
        })
        .collect();
    println!("{{\"dirs\": {dirs:?}, \"mb\": {mb:.1}, \"sets\": [{}]}}", report.join(", "));
}
