//! The paths a git index tracks (index versions 2, 3 and 4), read without
//! running git: a tracked file enters the copy even where a `.gitignore`
//! pattern matches it, as git carries it.
//!
//! Only the path set is used, to decide about files the walk finds anyway;
//! a path in the index never makes the copy open anything by that path.

use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("not a git index")]
    Signature,
    #[error("index version {0} is not supported")]
    Version(u32),
    #[error("the index ends in the middle of an entry")]
    Truncated,
    /// A split index keeps most entries in a shared file; the copy then
    /// knows fewer tracked files, which only ever leaves more out.
    #[error("a split index (core.splitIndex) is not read")]
    Split,
}

/// The tracked paths of one repository, relative to its top, as bytes.
#[derive(Debug, Default)]
pub(crate) struct Tracked {
    files: HashSet<Vec<u8>>,
    /// Every directory with something tracked below it.
    dirs: HashSet<Vec<u8>>,
}

impl Tracked {
    /// Whether `path` is itself tracked (a file, a symlink or a submodule).
    pub(crate) fn is_tracked(&self, path: &[u8]) -> bool {
        self.files.contains(path)
    }

    /// Whether something below the directory `path` is tracked.
    pub(crate) fn holds(&self, path: &[u8]) -> bool {
        self.dirs.contains(path)
    }

    fn add(&mut self, path: &[u8], dir: bool) {
        let mut p = path;
        if dir {
            self.dirs.insert(p.to_vec());
        } else {
            self.files.insert(p.to_vec());
        }
        while let Some(slash) = p.iter().rposition(|&c| c == b'/') {
            p = &p[..slash];
            if !self.dirs.insert(p.to_vec()) {
                break;
            }
        }
    }

    /// Reads an index file's entries. `hash_len` is 20 for SHA-1
    /// repositories and 32 for SHA-256 ones (`extensions.objectFormat`).
    pub(crate) fn parse(data: &[u8], hash_len: usize) -> Result<Tracked, IndexError> {
        let be32 = |at: usize| -> Result<u32, IndexError> {
            let b = data.get(at..at + 4).ok_or(IndexError::Truncated)?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        if data.get(..4) != Some(b"DIRC") {
            return Err(IndexError::Signature);
        }
        let version = be32(4)?;
        if !(2..=4).contains(&version) {
            return Err(IndexError::Version(version));
        }
        let count = be32(8)?;
        let mut out = Tracked::default();
        let mut pos = 12usize;
        let mut prev: Vec<u8> = Vec::new();
        for _ in 0..count {
            let start = pos;
            let flags_at = start + 40 + hash_len;
            let mode = be32(start + 24)?;
            let flags = data.get(flags_at..flags_at + 2).ok_or(IndexError::Truncated)?;
            let extended = flags[0] & 0x40 != 0;
            pos = flags_at + 2 + if extended { 2 } else { 0 };
            let path = if version == 4 {
                let (strip, n) = varint(data.get(pos..).ok_or(IndexError::Truncated)?)?;
                pos += n;
                let end = nul(data, pos)?;
                let keep = prev.len().checked_sub(strip).ok_or(IndexError::Truncated)?;
                prev.truncate(keep);
                prev.extend_from_slice(&data[pos..end]);
                pos = end + 1;
                prev.clone()
            } else {
                let end = nul(data, pos)?;
                let path = data[pos..end].to_vec();
                // Entries are padded with 1 to 8 NULs to a multiple of 8.
                pos = start + ((end - start + 8) & !7);
                path
            };
            // A sparse index stores a directory outside the sparse cone as
            // one entry, `dir/` with mode 040000.
            if mode & 0o170000 == 0o040000 {
                out.add(path.strip_suffix(b"/").unwrap_or(&path), true);
            } else {
                out.add(&path, false);
            }
        }
        // Extensions: a four-byte signature and a length each, up to the
        // trailing checksum.
        let end = data.len().saturating_sub(hash_len);
        while pos + 8 <= end {
            if &data[pos..pos + 4] == b"link" {
                return Err(IndexError::Split);
            }
            let len = be32(pos + 4)? as usize;
            pos = pos.saturating_add(8).saturating_add(len);
        }
        Ok(out)
    }
}

fn nul(data: &[u8], from: usize) -> Result<usize, IndexError> {
    data.get(from..).and_then(|d| d.iter().position(|&c| c == 0)).map(|p| p + from).ok_or(IndexError::Truncated)
}

/// Git's offset varint (`varint.c`): each continuation adds one before
/// shifting, so every value has a single encoding.
fn varint(b: &[u8]) -> Result<(usize, usize), IndexError> {
    let mut i = 0;
    let mut c = *b.first().ok_or(IndexError::Truncated)?;
    let mut v = usize::from(c & 0x7f);
    while c & 0x80 != 0 {
        i += 1;
        c = *b.get(i).ok_or(IndexError::Truncated)?;
        v = v.checked_add(1).and_then(|v| v.checked_mul(128)).ok_or(IndexError::Truncated)? | usize::from(c & 0x7f);
    }
    Ok((v, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &std::path::Path, args: &[&str]) {
        let ok = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git");
        assert!(ok.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&ok.stderr));
    }

    use crate::workspace::tests::has_git;

    /// Real indexes written by git, in each version, with long names,
    /// prefix compression and an intent-to-add (extended) entry.
    #[test]
    fn reads_what_git_writes() {
        if !has_git() {
            return;
        }
        for (version, object_format) in [("2", "sha1"), ("3", "sha1"), ("4", "sha1"), ("4", "sha256"), ("2", "sha256")]
        {
            let d = tempfile::tempdir().expect("tempdir");
            git(d.path(), &["init", "-q", &format!("--object-format={object_format}")]);
            let l = "l".repeat(250);
            let long = format!("{l}/{l}/{l}");
            for f in ["a.txt", "dir/b.txt", "dir/sub/c.txt", "dir/sub/d.txt", &format!("dir/{long}")] {
                let p = d.path().join(f);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(&p, f).expect("write");
            }
            std::fs::write(d.path().join("new.txt"), "n").expect("write");
            git(d.path(), &["add", "a.txt", "dir"]);
            git(d.path(), &["add", "-N", "new.txt"]);
            git(d.path(), &["update-index", "--index-version", version]);
            let data = std::fs::read(d.path().join(".git/index")).expect("index");
            let hash = if object_format == "sha256" { 32 } else { 20 };
            let t = Tracked::parse(&data, hash).unwrap_or_else(|e| panic!("v{version} {object_format}: {e}"));
            let mut files: Vec<String> = t.files.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            files.sort();
            let mut want = vec!["a.txt".to_owned(), "dir/b.txt".into(), "dir/sub/c.txt".into(), "dir/sub/d.txt".into()];
            want.push(format!("dir/{long}"));
            want.push("new.txt".into());
            want.sort();
            assert_eq!(files, want, "v{version} {object_format}");
            assert!(t.holds(b"dir") && t.holds(b"dir/sub") && !t.holds(b"a.txt") && !t.holds(b"di"));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(Tracked::parse(b"", 20), Err(IndexError::Signature)));
        assert!(matches!(Tracked::parse(b"DIRC\0\0\0\x09\0\0\0\0", 20), Err(IndexError::Version(9))));
        assert!(matches!(Tracked::parse(b"DIRC\0\0\0\x02\0\0\0\x05", 20), Err(IndexError::Truncated)));
        // Every truncation and every single-byte change of a real index.
        if !has_git() {
            return;
        }
        let d = tempfile::tempdir().expect("tempdir");
        git(d.path(), &["init", "-q"]);
        std::fs::write(d.path().join("f"), "x").expect("write");
        git(d.path(), &["add", "f"]);
        git(d.path(), &["update-index", "--index-version", "4"]);
        let data = std::fs::read(d.path().join(".git/index")).expect("index");
        for cut in 0..data.len() {
            let _ = Tracked::parse(&data[..cut], 20);
            let mut m = data.clone();
            m[cut] ^= 0xff;
            let _ = Tracked::parse(&m, 20);
        }
    }
}
