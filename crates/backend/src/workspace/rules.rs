//! What the copy leaves out: git's ignore rules (`.gitignore` in each
//! directory, `.git/info/exclude`, `core.excludesFile`, the user's global
//! excludes) plus `.ignore` files, the tracked set that overrides them, and
//! the manifest's `include-ignored` patterns that bring ignored files back.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::index::Tracked;

/// Compiles `.gitignore`-syntax lines; a line that is not a valid glob is
/// skipped, as git skips what it cannot use.
pub(crate) fn matcher(text: &[u8]) -> Option<Gitignore> {
    let mut b = GitignoreBuilder::new(".");
    for line in String::from_utf8_lossy(text).lines() {
        // A bad line is dropped; the rest of the file still applies.
        if b.add_line(None, line).is_err() {
            tracing::debug!(line, "ignore pattern skipped");
        }
    }
    b.build().ok().filter(|g| !g.is_empty())
}

/// One directory's own ignore files.
#[derive(Debug)]
pub(crate) struct Level {
    /// The directory, relative to the repository's top (or to the project
    /// outside a repository).
    dir: PathBuf,
    ignore: Option<Gitignore>,
    gitignore: Option<Gitignore>,
}

/// The ignore files in force in a directory: its own and its parents',
/// up to the top of its repository.
#[derive(Debug, Default)]
pub(crate) struct Stack {
    level: Option<Level>,
    parent: Option<Arc<Stack>>,
}

impl Stack {
    /// `parent` with one more directory's files on top; `None` if the
    /// directory has no ignore files (the parent's stack is reused).
    pub(crate) fn push(
        parent: &Arc<Stack>,
        dir: PathBuf,
        ignore: Option<Gitignore>,
        gitignore: Option<Gitignore>,
    ) -> Arc<Stack> {
        if ignore.is_none() && gitignore.is_none() {
            return parent.clone();
        }
        Arc::new(Stack { level: Some(Level { dir, ignore, gitignore }), parent: Some(parent.clone()) })
    }

    fn levels(&self) -> impl Iterator<Item = &Level> {
        let mut cur = Some(self);
        std::iter::from_fn(move || {
            loop {
                let s = cur?;
                cur = s.parent.as_deref();
                if let Some(l) = &s.level {
                    return Some(l);
                }
            }
        })
    }
}

/// A repository the walk is in: its tracked paths and its own excludes.
#[derive(Debug, Default)]
pub(crate) struct Repo {
    /// Where its top is, relative to the project (`""` for the project's
    /// own repository, or for one whose top is above the project).
    pub(crate) root: PathBuf,
    /// The project's path inside the repository when its top is above the
    /// project (`start --workspace` on a subdirectory); empty otherwise.
    pub(crate) base: PathBuf,
    pub(crate) tracked: Tracked,
    /// `.git/info/exclude` and `core.excludesFile`, in that order.
    pub(crate) excludes: Vec<Gitignore>,
}

impl Repo {
    /// `rel` (relative to the project) relative to this repository's top.
    pub(crate) fn path(&self, rel: &Path) -> PathBuf {
        self.base.join(rel.strip_prefix(&self.root).unwrap_or(rel))
    }
}

/// Whether `path` (relative to its repository's top) is ignored. The
/// deepest `.ignore` decides first, then the deepest `.gitignore`, then
/// the repository's excludes, then the global ones (ripgrep's order; git's
/// for everything but `.ignore`, which only ever leaves out more).
pub(crate) fn ignored(stack: &Stack, repo: &Repo, global: Option<&Gitignore>, path: &Path, is_dir: bool) -> bool {
    let decide = |m: Match<&ignore::gitignore::Glob>| match m {
        Match::None => None,
        Match::Ignore(_) => Some(true),
        Match::Whitelist(_) => Some(false),
    };
    let under = |l: &Level| path.strip_prefix(&l.dir).ok().map(Path::to_path_buf);
    fn ignore_file(l: &Level) -> Option<&Gitignore> {
        l.ignore.as_ref()
    }
    fn gitignore_file(l: &Level) -> Option<&Gitignore> {
        l.gitignore.as_ref()
    }
    for pick in [ignore_file as fn(&Level) -> Option<&Gitignore>, gitignore_file] {
        for l in stack.levels() {
            if let (Some(g), Some(p)) = (pick(l), under(l))
                && let Some(d) = decide(g.matched(&p, is_dir))
            {
                return d;
            }
        }
    }
    for g in repo.excludes.iter().chain(global) {
        if let Some(d) = decide(g.matched(path, is_dir)) {
            return d;
        }
    }
    false
}

/// The manifest's `workspace.include-ignored` patterns, relative to the
/// project.
#[derive(Debug, Default)]
pub(crate) struct Include {
    matcher: Option<Gitignore>,
    /// The literal leading directories of patterns that name a path
    /// (`target/release/app`): the walk looks inside these ignored
    /// directories for what the pattern names. A bare name (`.env.example`)
    /// matches in every directory the copy enters, but, as with a `!`
    /// pattern in `.gitignore`, never reaches into an ignored directory.
    reaches: Vec<(String, bool)>,
}

/// What an include pattern says about a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    In,
    /// Taken back by a later `!pattern`.
    Out,
    Unsaid,
}

impl Include {
    pub(crate) fn new(patterns: &[String]) -> Include {
        let text = patterns.join("\n");
        let mut reaches = Vec::new();
        for p in patterns {
            if p.starts_with('!') {
                continue;
            }
            let body = p.trim_start_matches('/').trim_end_matches('/');
            if !body.contains('/') {
                continue;
            }
            // The literal part before the first glob character, cut back to
            // a whole directory; below it, a glob may match at any depth.
            let glob = body.find(['*', '?', '[', '\\', '{']);
            let lit = glob.map_or(body, |i| &body[..i]);
            if let Some(i) = lit.rfind('/') {
                reaches.push((lit[..i].to_owned(), glob.is_some()));
            }
        }
        Include { matcher: matcher(text.as_bytes()), reaches }
    }

    pub(crate) fn verdict(&self, rel: &Path, is_dir: bool) -> Verdict {
        match self.matcher.as_ref().map(|m| m.matched(rel, is_dir)) {
            Some(Match::Ignore(_)) => Verdict::In,
            Some(Match::Whitelist(_)) => Verdict::Out,
            _ => Verdict::Unsaid,
        }
    }

    /// Whether a pattern names something inside the ignored directory `rel`.
    pub(crate) fn reaches(&self, rel: &Path) -> bool {
        let rel = rel.to_string_lossy();
        self.reaches.iter().any(|(d, glob)| {
            d == rel.as_ref() || d.starts_with(&format!("{rel}/")) || (*glob && rel.starts_with(&format!("{d}/")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(levels: &[(&str, &str)]) -> Arc<Stack> {
        let mut s = Arc::new(Stack::default());
        for (dir, text) in levels {
            s = Stack::push(&s, PathBuf::from(dir), None, matcher(text.as_bytes()));
        }
        s
    }

    #[test]
    fn the_deepest_gitignore_decides() {
        let s = stack(&[("", "*.log\ntarget/\n/only-top\n"), ("sub", "!keep.log\n")]);
        let repo = Repo::default();
        let ig = |p: &str, d: bool| ignored(&s, &repo, None, Path::new(p), d);
        assert!(ig("a.log", false) && ig("sub/x.log", false) && !ig("sub/keep.log", false));
        assert!(ig("target", true) && !ig("target", false), "`target/` matches directories only");
        assert!(ig("only-top", false) && !ig("sub/only-top", false));
        assert!(!ig("src/main.rs", false));
    }

    #[test]
    fn include_patterns() {
        let inc = Include::new(&[
            ".env.example".into(),
            "target/release/app".into(),
            "vendor/".into(),
            "!vendor/big".into(),
            "gen/*/out.txt".into(),
        ]);
        assert_eq!(inc.verdict(Path::new("sub/.env.example"), false), Verdict::In);
        assert_eq!(inc.verdict(Path::new("vendor"), true), Verdict::In);
        assert_eq!(inc.verdict(Path::new("vendor/big"), false), Verdict::Out);
        assert_eq!(inc.verdict(Path::new(".env"), false), Verdict::Unsaid);
        assert!(inc.reaches(Path::new("target")) && inc.reaches(Path::new("target/release")));
        assert!(inc.reaches(Path::new("gen")) && inc.reaches(Path::new("gen/x")) && !inc.reaches(Path::new("tar")));
        assert!(!inc.reaches(Path::new("target/debug")), "a literal path reaches only along itself");
        assert!(!inc.reaches(Path::new("node_modules")), "a bare name never reaches into an ignored directory");
    }
}
