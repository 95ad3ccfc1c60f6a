//! The `.case` format shared by the manifest and CLI tests.
//!
//! ```text
//! # start: AGENT [--bottle B]... [--backend K] [-- ARGS...]
//! # env: NAME NAME        (host variables that count as set)
//! # secret: VALUE         (must never appear in any output)
//! == agents/a.md
//! ...file text...
//! == bottles/dev.yaml
//! ...
//! ```
#![allow(dead_code, reason = "each test binary that includes this uses a different part")]

use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub(crate) struct Case {
    pub name: String,
    pub start: Vec<String>,
    pub env: Vec<String>,
    pub secrets: Vec<String>,
    pub files: Vec<(String, String)>,
}

pub(crate) fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifest/tests").join(kind)
}

/// Every case in `tests/<kind>/`, sorted by name.
pub(crate) fn load_all(kind: &str) -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir(kind))
        .expect("case directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    paths.sort();
    paths.iter().map(|p| parse(p)).collect()
}

fn parse(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).expect("read case");
    let mut case = Case {
        name: path.file_stem().expect("stem").to_string_lossy().into_owned(),
        start: vec!["a".into()],
        ..Case::default()
    };
    let mut current: Option<(String, String)> = None;
    for line in text.split_inclusive('\n') {
        if let Some(name) = line.strip_prefix("== ") {
            if let Some(f) = current.take() {
                case.files.push(f);
            }
            current = Some((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        } else if let Some(v) = line.strip_prefix("# start:") {
            case.start = v.split_whitespace().map(str::to_owned).collect();
        } else if let Some(v) = line.strip_prefix("# env:") {
            case.env = v.split_whitespace().map(str::to_owned).collect();
        } else if let Some(v) = line.strip_prefix("# secret:") {
            case.secrets.push(v.trim().to_owned());
        }
    }
    case.files.extend(current);
    case
}

impl Case {
    /// Writes the case's files under `root/.bot-bottle/` and returns that path.
    pub(crate) fn materialize(&self, root: &Path) -> PathBuf {
        let m = root.join(".bot-bottle");
        for (name, body) in &self.files {
            let p = m.join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, body).expect("write");
        }
        std::fs::create_dir_all(&m).expect("mkdir");
        m
    }
}

/// Every file and folder under `root`, relative, sorted: to prove a command created nothing.
pub(crate) fn tree(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).expect("under base").to_string_lossy().into_owned());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
