//! Checks on the workspace's own source.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, test and bench directories left out.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() {
            if !matches!(name, "tests" | "benches" | "target") {
                sources(&p, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(p);
        }
    }
}

/// The lines of `text` before its unit-test module (`#[cfg(test)]` then
/// `mod`), which by house style comes last in a file.
fn non_test_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].trim() == "#[cfg(test)]"
                && lines[i + 1..]
                    .iter()
                    .map(|l| l.trim())
                    .find(|l| !l.is_empty())
                    .is_some_and(|l| l.starts_with("mod "))
        })
        .unwrap_or(lines.len());
    lines.into_iter().take(end).enumerate().map(|(i, l)| (i + 1, l))
}

/// Where `let _ =` throws a result away outside tests and benches.
fn discards(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(root, &mut files);
    assert!(files.len() > 50, "expected the workspace's sources under {}, found {}", root.display(), files.len());
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        for (n, line) in non_test_lines(&text) {
            if line.contains("let _ =") && !line.trim_start().starts_with("//") {
                found.push(format!("{}:{n}: {}", f.strip_prefix(root).unwrap_or(&f).display(), line.trim()));
            }
        }
    }
    found
}

/// No result is thrown away with `let _ =` outside tests and benches: a
/// kill, a removal or a check whose failure goes unseen leaves something
/// running or unchecked. Handle it (already-gone is success, anything else
/// is logged and reported), or, where failure only means that a peer or
/// stderr is gone, call a named helper that says so
/// (`bot_bottle_sidecars`'s `peer_step`, `eprintln_best_effort`).
#[test]
fn no_discarded_results_outside_tests() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let found = discards(&crates);
    assert!(found.is_empty(), "`let _ =` outside tests and benches:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_a_discard_and_skips_unit_tests() {
    let d = tempfile::tempdir().expect("tempdir");
    let src = d.path().join("c/src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for i in 0..60 {
        std::fs::write(src.join(format!("f{i}.rs")), "fn f() {}\n").expect("write");
    }
    std::fs::write(
        src.join("kill.rs"),
        "fn k() {\n    let _ = kill(pid);\n}\n\n#[cfg(test)]\nmod tests {\n    let _ = fine_in_tests();\n}\n",
    )
    .expect("write");
    std::fs::create_dir_all(d.path().join("c/tests")).expect("mkdir");
    std::fs::write(d.path().join("c/tests/all.rs"), "let _ = fine();\n").expect("write");
    assert_eq!(discards(d.path()), vec!["c/src/kill.rs:2: let _ = kill(pid);".to_owned()]);
}
