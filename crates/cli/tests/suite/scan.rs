//! `bot-bottle scan` over trees, files and stdin.

use std::io::Write;
use std::process::{Command, Stdio};

use super::cli::Env;

const GHP: &str = "ghp_R4nd0mTok3nF0rT3st1ngOnlyABCDEFGHIJ1";

#[test]
fn scan_reports_redacted_findings_and_exits_1() {
    let env = Env::new();
    let tree = tempfile::tempdir().expect("tempdir");
    let t = tree.path();
    std::fs::create_dir_all(t.join("src")).expect("mkdir");
    std::fs::write(t.join("src/config.rs"), format!("// config\nconst TOKEN: &str = \"{GHP}\";\n")).expect("write");
    std::fs::write(t.join("src/clean.rs"), "fn main() {}\n").expect("write");
    // Ignored by .gitignore: not scanned.
    std::fs::write(t.join(".gitignore"), "ignored.txt\n").expect("write");
    std::fs::write(t.join("ignored.txt"), GHP).expect("write");

    let r = env.run(t, &["scan", "."], &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "./src/config.rs:2:github-ghp ghp_… (40 bytes)");
    assert!(!r.stdout.contains(GHP) && !r.stderr.contains(GHP));

    let json = env.run(t, &["scan", "src", "--format", "json"], &[]);
    assert_eq!(json.code, 1);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["findings"][0]["rule"], "github-ghp");
    assert_eq!(v["findings"][0]["line"], 2);
    assert!(!json.stdout.contains(GHP));

    let clean = env.run(t, &["scan", "src/clean.rs"], &[]);
    assert_eq!(clean.code, 0);
    assert_eq!(clean.stdout, "");

    let missing = env.run(t, &["scan", "nope"], &[]);
    assert_eq!(missing.code, 2);
}

#[test]
fn scan_reads_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
        .args(["scan", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(format!("a\nb\nkey={GHP}\n").as_bytes()).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-:3:github-ghp ghp_… (40 bytes)");
}
