//! Detector throughput on real files, single core.
//!
//! `cargo bench -p bot-bottle-detect --bench throughput -- DIR` loads every
//! regular file under DIR into memory, scans each with the built-in rules,
//! and prints MB/s (best of 5 passes) and findings per MB by rule, as JSON.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use bot_bottle_detect::Detector;

fn load(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(std::fs::DirEntry::path);
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            load(&e.path(), out);
        } else if ft.is_file()
            && let Ok(data) = std::fs::read(e.path())
        {
            out.push((e.path().display().to_string(), data));
        }
    }
}

fn main() {
    let dir = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| ".".into());
    let mut files = Vec::new();
    load(Path::new(&dir), &mut files);
    let bytes: usize = files.iter().map(|(_, d)| d.len()).sum();
    let det = Detector::builtin();
    let mut best = f64::MAX;
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    for pass in 0..5 {
        let t = Instant::now();
        let mut n = 0usize;
        for (_, data) in &files {
            let found = det.scan(data);
            n += found.len();
            if pass == 0 {
                for f in found {
                    *by_rule.entry(f.rule).or_default() += 1;
                }
            }
        }
        std::hint::black_box(n);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mb = bytes as f64 / 1e6;
    let total: usize = by_rule.values().sum();
    let per_mb: BTreeMap<&String, f64> = by_rule.iter().map(|(k, v)| (k, *v as f64 / mb)).collect();
    println!(
        "{{\"files\": {}, \"mb\": {mb:.2}, \"seconds\": {best:.4}, \"mb_per_s\": {:.1}, \"findings\": {total}, \"findings_per_mb\": {:.3}, \"by_rule_per_mb\": {:?}}}",
        files.len(),
        mb / best,
        total as f64 / mb,
        per_mb
    );
}
