//! Streaming scan throughput, the way the egress proxy scans an upload.
//!
//! `cargo bench -p bot-bottle-detect --bench stream [-- DIR]` feeds 100 MB
//! through [`Stream::feed`] in 16 KiB chunks (a TLS record's worth, as
//! hyper hands them over) with the built-in rules, with them plus one known
//! secret (the request side), and with the known secret only (the response side),
//! and prints MB/s and CPU seconds (best of 5), as JSON. The data is the proxy bench's
//! upload text, or, given DIR, the files under it concatenated.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::path::Path;
use std::time::Instant;

use bot_bottle_detect::Detector;

fn load(dir: &Path, out: &mut Vec<u8>) {
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
            out.extend_from_slice(&data);
        }
    }
}

/// This process's resident set, in KiB.
fn rss_kb() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time of this thread, in seconds: wall time on a shared machine
/// measures the neighbours as much as the scan.
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace().next().and_then(|ns| ns.parse::<f64>().ok()).unwrap_or(0.0) / 1e9
}

fn main() {
    let dir = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let mut unit = Vec::new();
    let what = match &dir {
        Some(d) => {
            load(Path::new(d), &mut unit);
            d.clone()
        }
        None => {
            unit =
                "The quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet.\n".repeat(900).into_bytes();
            "upload text".to_owned()
        }
    };
    assert!(!unit.is_empty(), "no data");
    let mut data: Vec<u8> = Vec::with_capacity(100_000_000 + unit.len());
    while data.len() < 100_000_000 {
        data.extend_from_slice(&unit);
    }
    data.truncate(100_000_000);
    let before = rss_kb();
    let det = Detector::builtin();
    println!("{{\"case\": \"resident memory of the built-in detector\", \"rss_kb\": {}}}", rss_kb() - before);
    drop(det);
    for (case, det) in [
        ("rules", Detector::builtin()),
        ("rules + known token", Detector::builtin().with_known([("TOKEN", "tok-Zq8VtR2mN4kL7pX1cB9dF3hJ6sW0yA5e")])),
        ("known token only", Detector::known_only([("TOKEN", "tok-Zq8VtR2mN4kL7pX1cB9dF3hJ6sW0yA5e")])),
    ] {
        let mut best = f64::MAX;
        let mut best_cpu = f64::MAX;
        let mut findings = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let cpu0 = cpu_secs();
            let mut st = det.stream();
            let mut n = 0;
            for c in data.chunks(16 << 10) {
                n += st.feed(c).len();
            }
            n += st.finish().len();
            findings = n;
            best = best.min(t.elapsed().as_secs_f64());
            best_cpu = best_cpu.min(cpu_secs() - cpu0);
        }
        println!(
            "{{\"case\": {case:?}, \"data\": {what:?}, \"mb\": 100, \"chunk_kib\": 16, \"seconds\": {best:.4}, \"mb_per_s\": {:.1}, \"cpu_seconds\": {best_cpu:.4}, \"findings\": {findings}}}",
            100.0 / best
        );
    }
}
