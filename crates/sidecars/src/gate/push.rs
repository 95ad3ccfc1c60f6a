//! One push, decided: the ref rules, the scan of what it adds, and the
//! forward (upstream, or into the project's repository) when it is clean.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::argv::{self, GitCmd, Oid, RefName, Remote, Update};
use super::check::{self, Finding, RefUpdate};
use super::hook::HookRequest;
use super::{GateError, Inner, Landing, Refusal, RepoState};

impl Inner {
    /// The gate's decision on one push, made while its objects are in
    /// quarantine: the verdict and what the agent's `git push` shows.
    pub(crate) async fn decide(&self, repo: &RepoState, req: HookRequest) -> (bool, String) {
        let det = match self.detector.get().await {
            Ok(d) => d,
            Err(why) => {
                return (false, format!("refused: the gate cannot scan this push ({why}); nothing was pushed\n"));
            }
        };
        let refs: Vec<String> =
            req.updates.iter().map(|u| check::show_path(u.name.as_str().as_bytes(), &det)).collect();
        // A push that only deletes brings no objects, and git makes no
        // quarantine for it.
        let quarantine = if req.quarantine.as_os_str().is_empty() {
            None
        } else {
            match quarantine_of(&repo.dir, &req.quarantine) {
                Ok(q) => Some(q),
                Err(e) => {
                    self.audit(&repo.name, "push", refs, "error", 0, Some(e.to_string()));
                    return (false, format!("bot-bottle git gate: {e}\n"));
                }
            }
        };
        let objects = repo.dir.join("objects");
        let env = move |c: GitCmd| match &quarantine {
            Some(q) => argv::quarantine_env(c, q, &objects),
            None => c,
        };
        match self.check_and_forward(repo, &req.updates, &env, "push").await {
            Ok(msg) => (true, msg),
            Err(msg) => (false, msg),
        }
    }

    /// Checks updates whose objects `env` makes visible, and forwards them
    /// when clean. `Ok` carries the message for an accepted push, `Err` the
    /// refusal. Records the outcome in the audit log and the report.
    pub(crate) async fn check_and_forward(
        &self,
        repo: &RepoState,
        updates: &[RefUpdate],
        env: &(dyn Fn(GitCmd) -> GitCmd + Sync),
        op: &'static str,
    ) -> Result<String, String> {
        let det = self.detector.get().await.map_err(|why| format!("the gate cannot scan this push ({why})"))?;
        // Ref names are the agent's text too: shown and logged redacted.
        let show = |r: &RefName| check::show_path(r.as_str().as_bytes(), &det);
        let refs: Vec<String> = updates.iter().map(|u| show(&u.name)).collect();
        let refuse = |reason: String, findings: usize, decision: &'static str| {
            let first = reason.lines().find(|l| !l.trim().is_empty()).unwrap_or("refused").trim().to_owned();
            self.audit(&repo.name, op, refs.clone(), decision, findings, Some(first.clone()));
            if let Ok(mut ev) = self.events.lock() {
                ev.refused.push(Refusal { repo: repo.name.clone(), refs: refs.clone(), reason: first, findings });
            }
            Err(reason)
        };
        // Every new tip must be a commit; then the ref rules.
        let mut ff: HashMap<RefName, bool> = HashMap::new();
        for u in updates.iter().filter(|u| !u.new.is_zero()) {
            match self.object_type(&repo.dir, env, &u.new).await {
                Ok(t) if t == "commit" => {}
                Ok(t) => {
                    return refuse(
                        format!(
                            "bot-bottle git gate: {} would point at a {t}; only commits can be pushed to a branch\n",
                            show(&u.name)
                        ),
                        0,
                        "deny",
                    );
                }
                Err(e) => return refuse(format!("bot-bottle git gate: {e}\n"), 0, "error"),
            }
            if !u.old.is_zero() {
                match self.is_ancestor(&repo.dir, env, &u.old, &u.new).await {
                    Ok(b) => {
                        ff.insert(u.name.clone(), b);
                    }
                    Err(e) => return refuse(format!("bot-bottle git gate: {e}\n"), 0, "error"),
                }
            }
        }
        let ref_refusals = check::ref_policy(&repo.rules, updates, &|u| ff.get(&u.name).copied().unwrap_or(false));
        let tips: Vec<Oid> = updates.iter().map(|u| u.new.clone()).collect();
        // A branch name is forwarded too: a secret in one would leave.
        let mut findings: Vec<Finding> = Vec::new();
        for u in updates {
            for f in det.scan(u.name.as_str().as_bytes()) {
                let shown = det.redact(&f, u.name.as_str().as_bytes());
                findings.push(Finding { place: format!("{} (ref name)", show(&u.name)), rule: f.rule, shown });
            }
        }
        // The scan reads git's output as it comes; the same time limit as
        // any git run bounds it as a whole.
        match tokio::time::timeout(self.git.timeout, check::scan_new(&self.git, &repo.dir, env, &tips, &det)).await {
            Ok(Ok(f)) => findings.extend(f),
            Ok(Err(e)) => return refuse(format!("bot-bottle git gate: push refused: {e}\n"), 0, "error"),
            Err(_) => return refuse("bot-bottle git gate: push refused: the scan took too long\n".into(), 0, "error"),
        };
        if !ref_refusals.is_empty() || !findings.is_empty() {
            return refuse(check::refusal_message(&ref_refusals, &findings, &show), findings.len(), "deny");
        }
        // Clean: forward, all or nothing.
        let mut fwd = Vec::new();
        for u in updates {
            let Some(dst) = check::destination(&repo.rules, &u.name) else {
                return refuse(format!("bot-bottle git gate: {} has no destination\n", show(&u.name)), 0, "error");
            };
            fwd.push(Update { old: u.old.clone(), new: u.new.clone(), dst });
        }
        let force = updates.iter().any(|u| ff.get(&u.name) == Some(&false));
        let cmd = match argv::push(&repo.dir, &repo.remote, &fwd, force) {
            Ok(c) => env(c),
            Err(e) => return refuse(format!("bot-bottle git gate: {e}\n"), 0, "error"),
        };
        let out = match self.git.output(&cmd, None).await {
            Ok(o) => o,
            Err(e) => {
                return refuse(
                    format!("bot-bottle git gate: forwarding failed: {}\n", self.redact(&e.to_string()).await),
                    0,
                    "error",
                );
            }
        };
        if !out.status.success() {
            let said = self
                .redact(&format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    match String::from_utf8_lossy(&out.stderr).trim() {
                        "" => String::new(),
                        e => format!("\n{e}"),
                    }
                ))
                .await;
            let whom =
                if matches!(repo.remote, Remote::Local { .. }) { "the project's repository" } else { "the upstream" };
            return refuse(
                format!(
                    "bot-bottle git gate: {whom} refused the push; nothing was changed:\n{}\n",
                    said.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
                ),
                0,
                "deny",
            );
        }
        self.audit(&repo.name, op, refs, "allow", 0, None);
        let mut msg = String::new();
        if let Ok(mut ev) = self.events.lock() {
            for u in &fwd {
                let branch = u.dst.branch().unwrap_or(u.dst.as_str()).to_owned();
                let list = if matches!(repo.remote, Remote::Local { .. }) { &mut ev.landed } else { &mut ev.pushed };
                list.retain(|l| !(l.repo == repo.name && l.branch == branch));
                if !u.new.is_zero() {
                    list.push(Landing { repo: repo.name.clone(), branch: branch.clone(), commit: u.new.to_string() });
                }
                if matches!(repo.remote, Remote::Local { .. }) {
                    msg.push_str(&format!("bot-bottle git gate: landed as {branch} in the project's repository\n"));
                }
            }
        }
        Ok(msg)
    }

    pub(super) async fn object_type(
        &self,
        dir: &Path,
        env: &(dyn Fn(GitCmd) -> GitCmd + Sync),
        oid: &Oid,
    ) -> Result<String, GateError> {
        let out = self.git.output(&env(argv::object_type(dir, oid)?), None).await?;
        if !out.status.success() {
            return Err(GateError::git(&format!("reading object {}", oid.short()), &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub(super) async fn is_ancestor(
        &self,
        dir: &Path,
        env: &(dyn Fn(GitCmd) -> GitCmd + Sync),
        old: &Oid,
        new: &Oid,
    ) -> Result<bool, GateError> {
        let out = self.git.output(&env(argv::is_ancestor(dir, old, new)?), None).await?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(GateError::git("comparing the push with the branch", &out)),
        }
    }
}

/// The quarantine receive-pack named to its hook, checked: a directory
/// that git made directly inside this repository's object store.
fn quarantine_of(repo: &Path, q: &Path) -> Result<PathBuf, GateError> {
    let bad = || GateError::Internal("the push's quarantine is not where git keeps it".into());
    let q = std::fs::canonicalize(q).map_err(|_| bad())?;
    let objects = std::fs::canonicalize(repo.join("objects")).map_err(|_| bad())?;
    let name = q.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
    if q.parent() != Some(objects.as_path())
        || !(name.starts_with("tmp_objdir-incoming-") || name.starts_with("incoming-"))
    {
        return Err(bad());
    }
    Ok(q)
}
