//! What a push may do, and what it brings: the ref policy (branches, force,
//! deletion) and the secret scan of every object the push introduces.

use std::path::Path;

use bot_bottle_detect::{Detector, line_of};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::GateError;
use super::argv::{self, GitCmd, Oid, RefName};
use super::git::Git;

/// One ref update as receive-pack reports it to the pre-receive hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RefUpdate {
    pub(crate) old: Oid,
    pub(crate) new: Oid,
    pub(crate) name: RefName,
}

/// The rules for one gate repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rules {
    /// An upstream: branches matching `branches`, force and deletion only
    /// when allowed.
    Upstream { branches: Vec<String>, allow_force_push: bool, allow_delete: bool },
    /// The project's repository: any branch, landed under `prefix`
    /// (`bot-bottle/<slug>/`); never forced, never deleted.
    Local { prefix: String },
}

/// Why one ref update is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RefRefusal {
    pub(crate) name: RefName,
    pub(crate) why: String,
}

/// `*` matches any run of characters within one path segment: the pattern
/// and the name must have as many segments, each matching its own.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), name.split('/').collect());
    p.len() == n.len() && p.iter().zip(&n).all(|(p, n)| segment_match(p.as_bytes(), n.as_bytes()))
}

/// Wildcard matching within one segment, with one backtrack point (enough
/// when `*` is the only wildcard).
fn segment_match(p: &[u8], n: &[u8]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Where an accepted update lands: the same name upstream, or the bottle's
/// own branch in the project's repository.
pub(crate) fn destination(rules: &Rules, name: &RefName) -> Option<RefName> {
    match rules {
        Rules::Upstream { .. } => Some(name.clone()),
        Rules::Local { prefix } => RefName::parse(&format!("refs/heads/{prefix}{}", name.branch()?)).ok(),
    }
}

/// The policy for each update, before any object is looked at. `is_ff`
/// answers whether `old` is an ancestor of `new`.
pub(crate) fn ref_policy(rules: &Rules, updates: &[RefUpdate], is_ff: &dyn Fn(&RefUpdate) -> bool) -> Vec<RefRefusal> {
    let mut out = Vec::new();
    for u in updates {
        let refuse = |why: String| RefRefusal { name: u.name.clone(), why };
        let Some(branch) = u.name.branch() else {
            out.push(refuse("only branches (refs/heads/...) can be pushed through the gate".into()));
            continue;
        };
        let (force_ok, delete_ok) = match rules {
            Rules::Upstream { branches, allow_force_push, allow_delete } => {
                if !branches.iter().any(|g| glob_match(g, branch)) {
                    out.push(refuse(format!(
                        "this repository takes only the branches {}; push to one of those names",
                        branches.iter().map(|b| format!("`{b}`")).collect::<Vec<_>>().join(", ")
                    )));
                    continue;
                }
                (*allow_force_push, *allow_delete)
            }
            Rules::Local { prefix } => {
                if branch.starts_with("bot-bottle/") {
                    out.push(refuse(format!(
                        "push the branch by its own name: `git push origin {}` lands as `{prefix}{}`",
                        branch.rsplit('/').next().unwrap_or(branch),
                        branch.rsplit('/').next().unwrap_or(branch)
                    )));
                    continue;
                }
                (false, false)
            }
        };
        if u.new.is_zero() {
            if !delete_ok {
                out.push(refuse("deleting a branch is not allowed here".into()));
            }
            continue;
        }
        if !u.old.is_zero() && !force_ok && !is_ff(u) {
            out.push(refuse(format!(
                "not a fast-forward of {} (a force-push); fetch, rebase onto it and push again",
                u.old.short()
            )));
        }
    }
    out
}

/// Blobs larger than this are not scanned, so a push holding one is refused.
pub(crate) const MAX_BLOB: u64 = 100 << 20;

/// One secret found in what a push adds. Holds no part of the secret
/// beyond what [`Detector::redact`] shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    /// `path:line`, `commit <id> message:line`, `tag <id>:line`, or a path
    /// for a secret in a file name.
    pub(crate) place: String,
    pub(crate) rule: String,
    pub(crate) shown: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.place, self.rule, self.shown)
    }
}

/// A path as shown to people: control characters escaped, and any secret
/// in the name itself replaced by its redacted form.
pub(crate) fn show_path(p: &[u8], det: &Detector) -> String {
    let mut out = Vec::with_capacity(p.len());
    let mut at = 0;
    for f in det.scan(p) {
        let (s, e) = (f.range.start as usize, f.range.end as usize);
        if s < at || e > p.len() {
            continue;
        }
        out.extend_from_slice(&p[at..s]);
        out.extend_from_slice(format!("<{}>", det.redact(&f, p)).as_bytes());
        at = e;
    }
    out.extend_from_slice(&p[at..]);
    String::from_utf8_lossy(&out)
        .chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] })
        .collect()
}
/// Scans every object reachable from `tips` that the repository does not
/// already reach: blobs (with their paths), commit and tag objects (messages,
/// author and committer), and the paths themselves. `objects` puts a push's
/// quarantine in front of the repository's own objects.
pub(crate) async fn scan_new(
    git: &Git,
    dir: &Path,
    objects: &(dyn Fn(GitCmd) -> GitCmd + Sync),
    tips: &[Oid],
    det: &Detector,
) -> Result<Vec<Finding>, GateError> {
    let tips: Vec<Oid> = tips.iter().filter(|t| !t.is_zero()).cloned().collect();
    if tips.is_empty() {
        return Ok(Vec::new());
    }
    let listed = git.output(&objects(argv::rev_list_new(dir, &tips)?), None).await?;
    if !listed.status.success() {
        return Err(GateError::git("listing the objects of a push", &listed));
    }
    // `<id>` for commits and tags, `<id> <path>` for trees and blobs.
    let mut objs: Vec<(Oid, Option<Vec<u8>>)> = Vec::new();
    for line in listed.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let (id, path) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], Some(line[i + 1..].to_vec())),
            None => (line, None),
        };
        // A line that is not an object id (a file name with a newline in
        // it) means the listing cannot be trusted: refuse rather than guess.
        let id = std::str::from_utf8(id).ok().and_then(|s| Oid::parse(s).ok()).ok_or_else(|| {
            GateError::Unscannable(format!("a path in this push cannot be listed safely: `{}`", show_path(line, det)))
        })?;
        objs.push((id, path));
    }
    let mut findings = Vec::new();
    // File and directory names can hold secrets too.
    let mut names = Vec::new();
    let mut name_of = Vec::new();
    for (_, p) in &objs {
        if let Some(p) = p.as_ref().filter(|p| !p.is_empty()) {
            names.extend_from_slice(p);
            names.push(b'\n');
            name_of.push(p.clone());
        }
    }
    for f in det.scan(&names) {
        let line = line_of(&names, f.range.start as usize);
        let shown = det.redact(&f, &names);
        let place = name_of.get(line - 1).map_or_else(String::new, |p| format!("{} (file name)", show_path(p, det)));
        findings.push(Finding { place, rule: f.rule, shown });
    }
    cat_and_scan(git, dir, objects, &objs, det, &mut findings).await?;
    Ok(findings)
}

async fn cat_and_scan(
    git: &Git,
    dir: &Path,
    objects: &(dyn Fn(GitCmd) -> GitCmd + Sync),
    objs: &[(Oid, Option<Vec<u8>>)],
    det: &Detector,
    findings: &mut Vec<Finding>,
) -> Result<(), GateError> {
    let cmd = objects(argv::cat_file_batch(dir)?);
    let mut child = git.spawn(&cmd, true)?;
    let mut stdin = child.stdin.take().ok_or_else(|| GateError::Internal("cat-file stdin".into()))?;
    let stdout = child.stdout.take().ok_or_else(|| GateError::Internal("cat-file stdout".into()))?;
    let mut input = Vec::with_capacity(objs.len() * 41);
    for (id, _) in objs {
        input.extend_from_slice(id.as_str().as_bytes());
        input.push(b'\n');
    }
    let writer = tokio::spawn(async move {
        let r = stdin.write_all(&input).await;
        drop(stdin);
        r
    });
    let mut out = BufReader::with_capacity(1 << 16, stdout);
    let mut header = Vec::new();
    let mut data = Vec::new();
    for (id, path) in objs {
        header.clear();
        out.read_until(b'\n', &mut header).await.map_err(GateError::io("reading objects"))?;
        let h = String::from_utf8_lossy(&header);
        let mut parts = h.split_whitespace();
        let (Some(got), Some(kind), Some(size)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(GateError::Unscannable(format!("object {} cannot be read", id.short())));
        };
        let size: u64 =
            size.parse().map_err(|_| GateError::Unscannable(format!("object {} cannot be read", id.short())))?;
        if got != id.as_str() {
            return Err(GateError::Unscannable(format!("object {} cannot be read", id.short())));
        }
        let wanted = matches!(kind, "blob" | "commit" | "tag");
        if size > MAX_BLOB {
            let place = path.as_deref().map_or_else(|| format!("{kind} {}", id.short()), |p| show_path(p, det));
            findings.push(Finding {
                place,
                rule: "too-large-to-scan".into(),
                shown: format!("({size} bytes; the gate scans up to {MAX_BLOB})"),
            });
            skip(&mut out, size + 1).await?;
            continue;
        }
        data.clear();
        data.resize(size as usize + 1, 0);
        out.read_exact(&mut data).await.map_err(GateError::io("reading objects"))?;
        data.pop();
        if !wanted {
            continue;
        }
        for f in det.scan(&data) {
            let line = line_of(&data, f.range.start as usize);
            let shown = det.redact(&f, &data);
            let place = match (kind, path) {
                ("blob", Some(p)) => format!("{}:{line}", show_path(p, det)),
                ("commit", _) => commit_place("commit", id, &data, line),
                ("tag", _) => commit_place("tag", id, &data, line),
                _ => format!("{kind} {}:{line}", id.short()),
            };
            findings.push(Finding { place, rule: f.rule, shown });
        }
    }
    match writer.await {
        Ok(Ok(())) => {}
        _ => return Err(GateError::Internal("feeding cat-file".into())),
    }
    let status = child.wait().await.map_err(GateError::io("cat-file"))?;
    if !status.success() {
        return Err(GateError::Unscannable("reading the objects of this push failed".into()));
    }
    Ok(())
}

/// Where in a commit or tag object a line is: its headers (author,
/// committer, tagger) or its message.
fn commit_place(kind: &str, id: &Oid, data: &[u8], line: usize) -> String {
    let header_lines = data.split(|&b| b == b'\n').position(|l| l.is_empty()).unwrap_or(usize::MAX);
    if line > header_lines + 1 {
        format!("{kind} {} message:{}", id.short(), line - header_lines - 1)
    } else {
        format!("{kind} {} header:{line}", id.short())
    }
}

async fn skip<R: tokio::io::AsyncRead + Unpin>(r: &mut R, mut n: u64) -> Result<(), GateError> {
    let mut buf = vec![0u8; 1 << 16];
    while n > 0 {
        let want = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let got = r.read(&mut buf[..want]).await.map_err(GateError::io("reading objects"))?;
        if got == 0 {
            return Err(GateError::Unscannable("an object ended early".into()));
        }
        n -= got as u64;
    }
    Ok(())
}

/// The message a refused push shows the agent (through `git push`): every
/// reason, every finding, and what to do.
pub(crate) fn refusal_message(refs: &[RefRefusal], findings: &[Finding], show: &dyn Fn(&RefName) -> String) -> String {
    const SHOWN: usize = 200;
    let mut s = String::new();
    if !refs.is_empty() {
        s.push_str("bot-bottle git gate: push refused:\n");
        for r in refs {
            s.push_str(&format!("  {}: {}\n", show(&r.name), r.why));
        }
    }
    if !findings.is_empty() {
        let n = findings.len();
        s.push_str(&format!(
            "bot-bottle git gate: push refused: {n} secret{} in what it adds:\n",
            if n == 1 { "" } else { "s" }
        ));
        for f in findings.iter().take(SHOWN) {
            s.push_str(&format!("  {f}\n"));
        }
        if n > SHOWN {
            s.push_str(&format!("  ... and {} more\n", n - SHOWN));
        }
        s.push_str(
            "Every commit of a push is scanned, not only the last one: remove each secret from every commit\n\
             that holds it (e.g. `git rebase -i`, or `git reset --soft <the branch you started from>` and\n\
             commit again), then push again. A credential the agent needs belongs in the bottle's egress\n\
             routes, where the proxy injects it; never in the repository.\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn up(old: &str, new: &str, name: &str) -> RefUpdate {
        RefUpdate {
            old: Oid::parse(old).expect("oid"),
            new: Oid::parse(new).expect("oid"),
            name: RefName::parse(name).expect("ref"),
        }
    }

    fn upstream(force: bool, delete: bool) -> Rules {
        Rules::Upstream {
            branches: vec!["bot/*".into(), "release".into()],
            allow_force_push: force,
            allow_delete: delete,
        }
    }

    #[test]
    fn globs_match_within_one_segment() {
        for (p, n, want) in [
            ("bot/*", "bot/x", true),
            ("bot/*", "bot/x/y", false),
            ("bot/*", "bot/", true),
            ("bot/*", "bots/x", false),
            ("bot/*", "main", false),
            ("*", "main", true),
            ("*", "a/b", false),
            ("*/*", "a/b", true),
            ("feat-*-x", "feat-12-x", true),
            ("feat-*-x", "feat-1/2-x", false),
            ("main", "main", true),
            ("main", "main2", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} ~ {n}");
        }
    }

    #[test]
    fn branches_outside_the_globs_tags_force_pushes_and_deletions_are_refused() {
        let ff = |_: &RefUpdate| true;
        let not_ff = |_: &RefUpdate| false;
        let r = upstream(false, false);
        assert!(ref_policy(&r, &[up(Z, A, "refs/heads/bot/x"), up(A, B, "refs/heads/release")], &ff).is_empty());
        let refused = ref_policy(
            &r,
            &[
                up(Z, A, "refs/heads/main"),
                up(Z, A, "refs/tags/v1"),
                up(A, B, "refs/heads/bot/x"),
                up(A, Z, "refs/heads/bot/y"),
                up(Z, A, "refs/heads/bot/new"),
            ],
            &not_ff,
        );
        let names: Vec<&str> = refused.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["refs/heads/main", "refs/tags/v1", "refs/heads/bot/x", "refs/heads/bot/y"]);
        assert!(refused[0].why.contains("`bot/*`, `release`"), "{}", refused[0].why);
        assert!(refused[2].why.contains("force-push"), "{}", refused[2].why);
        assert!(refused[3].why.contains("deleting"), "{}", refused[3].why);
        // Allowed when the repository says so.
        assert!(
            ref_policy(&upstream(true, true), &[up(A, B, "refs/heads/bot/x"), up(A, Z, "refs/heads/bot/y")], &not_ff)
                .is_empty()
        );
    }

    #[test]
    fn local_takes_any_branch_but_never_forces_deletes_or_names_the_landing_prefix() {
        let local = Rules::Local { prefix: "bot-bottle/a-1/".into() };
        let ff = |_: &RefUpdate| true;
        assert!(ref_policy(&local, &[up(Z, A, "refs/heads/main"), up(Z, A, "refs/heads/feature/x")], &ff).is_empty());
        let refused = ref_policy(
            &local,
            &[
                up(A, B, "refs/heads/main"),
                up(A, Z, "refs/heads/old"),
                up(Z, A, "refs/tags/v1"),
                up(Z, A, "refs/heads/bot-bottle/a-1/main"),
                up(Z, A, "refs/notes/commits"),
            ],
            &|_| false,
        );
        assert_eq!(refused.len(), 5, "{refused:?}");
        assert!(refused[3].why.contains("git push origin main"), "{}", refused[3].why);
        assert_eq!(
            destination(&local, &RefName::parse("refs/heads/feature/x").expect("ref")).map(|r| r.to_string()),
            Some("refs/heads/bot-bottle/a-1/feature/x".into())
        );
        assert_eq!(destination(&local, &RefName::parse("refs/tags/v1").expect("ref")), None);
    }

    #[test]
    fn commit_findings_say_whether_they_are_in_the_message() {
        let id = Oid::parse(A).expect("oid");
        let c = b"tree x\nauthor a <a@b> 1 +0000\ncommitter a <a@b> 1 +0000\n\nsubject\n\nbody with secret\n";
        assert_eq!(commit_place("commit", &id, c, 2), "commit 1111111111 header:2");
        assert_eq!(commit_place("commit", &id, c, 7), "commit 1111111111 message:3");
    }

    #[test]
    fn the_refusal_lists_every_reason_and_finding_and_what_to_do() {
        let m = refusal_message(
            &[RefRefusal { name: RefName::parse("refs/heads/main").expect("ref"), why: "no".into() }],
            &[Finding { place: "a.env:3".into(), rule: "github-pat".into(), shown: "ghp_… (40 bytes)".into() }],
            &|r| r.to_string(),
        );
        assert!(m.contains("  refs/heads/main: no\n"), "{m}");
        assert!(m.contains("1 secret in what it adds:\n  a.env:3 github-pat ghp_… (40 bytes)\n"), "{m}");
        assert!(m.contains("git rebase -i"), "{m}");
        let many: Vec<Finding> =
            (0..205).map(|i| Finding { place: format!("f:{i}"), rule: "r".into(), shown: String::new() }).collect();
        assert!(refusal_message(&[], &many, &|r| r.to_string()).contains("... and 5 more"));
    }
}
