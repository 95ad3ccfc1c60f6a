//! The lifecycle of the deploy keys a gate mints: made at start, deleted
//! when the gate finishes, and found again by title by `cleanup` after a
//! launcher was killed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bot_bottle_manifest::GitUrl;

use super::https::Https;
use super::{GateError, Inner, argv, forge, git};

impl Inner {
    /// Makes a fresh ed25519 key and registers it on the forge as a
    /// write deploy key titled with the slug. The record is written before
    /// the key is created, so `cleanup` can find it whatever happens next.
    pub(super) async fn mint_key(
        &mut self,
        name: &str,
        forge: forge::Forge,
        token_env: &str,
        api: Option<&str>,
        url: &GitUrl,
        token: &str,
    ) -> Result<PathBuf, GateError> {
        let fe = |source| GateError::Forge { repo: name.to_owned(), source };
        let title = forge::title(&self.bottle);
        let mut record = forge::record_for(name, forge, token_env, api, url, &title).map_err(fe)?;
        let path = self.dir.join("keys").join(name);
        for p in [path.clone(), path.with_extension("pub")] {
            if p.exists() {
                std::fs::remove_file(&p).map_err(GateError::io(format!("removing {}", p.display())))?;
            }
        }
        let keygen = git::find_program("ssh-keygen")?;
        let out = tokio::process::Command::new(&keygen)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .args(argv::ssh_keygen(&path, &title)?)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(GateError::io("running ssh-keygen"))?;
        if !out.status.success() {
            return Err(GateError::Internal(format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let public =
            std::fs::read_to_string(path.with_extension("pub")).map_err(GateError::io("reading the new deploy key"))?;
        self.record_key(record.clone())?;
        let id = forge::create(&self.https, &record, token, &public).await.map_err(fe)?;
        record.id = Some(id);
        self.record_key(record)?;
        Ok(path)
    }

    /// Adds or updates a key record, in memory and on disk.
    pub(super) fn record_key(&self, r: forge::KeyRecord) -> Result<(), GateError> {
        let mut keys = self.keys.lock().map_err(|_| GateError::Internal("key records".into()))?;
        keys.retain(|k| k.repo != r.repo);
        keys.push(r);
        forge::write_records(&self.dir, &keys).map_err(GateError::io("recording the deploy key"))
    }

    /// Deletes every deploy key this gate minted; says what it could not.
    pub(super) async fn delete_keys(&self) -> Vec<String> {
        let keys: Vec<forge::KeyRecord> = self.keys.lock().map(|k| k.clone()).unwrap_or_default();
        let mut problems = Vec::new();
        let mut left = Vec::new();
        for k in keys {
            let Some(token) = (self.env)(&k.token_env).filter(|t| !t.is_empty()) else {
                problems.push(format!(
                    "repo {}: ${} is not set, so its deploy key `{}` stays",
                    k.repo, k.token_env, k.title
                ));
                left.push(k);
                continue;
            };
            // By title, not by id: also a key an earlier launch of this
            // bottle left (a resumed bottle has the same slug), or one
            // created by a start that died before it wrote the id down.
            let r = forge::delete_by_title(&self.https, &k, &token).await;
            if let Err(e) = r {
                problems.push(format!(
                    "repo {}: deploy key `{}` on {}/{} could not be deleted: {e}; `bot-bottle cleanup` tries again",
                    k.repo, k.title, k.owner, k.name
                ));
                left.push(k);
            }
        }
        if let Ok(mut keys) = self.keys.lock() {
            keys.clone_from(&left);
        }
        if let Err(e) = forge::write_records(&self.dir, &left) {
            problems.push(format!("recording the deploy keys left: {e}"));
        }
        problems
    }
}

/// Removes what a killed launcher's gate left on forges: every deploy key
/// titled with its slug. `gate_dir` is that gate's directory; says what it
/// did or could not do. What it could not do begins `could not `, which
/// the CLI's `cleanup` reports as a failure (a key left on a forge is a
/// live credential).
pub async fn cleanup(
    gate_dir: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    upstream_ca: Option<&Path>,
) -> Vec<String> {
    let records = forge::read_records(gate_dir);
    if records.is_empty() {
        return Vec::new();
    }
    let https = match Https::new(upstream_ca, Duration::from_secs(30)) {
        Ok(h) => h,
        Err(e) => return vec![format!("could not delete deploy keys: {e}")],
    };
    let mut did = Vec::new();
    let mut left = Vec::new();
    for r in records {
        let Some(token) = env(&r.token_env).filter(|t| !t.is_empty()) else {
            did.push(format!(
                "could not delete deploy key `{}` on {}/{}: set ${} and run cleanup again",
                r.title, r.owner, r.name, r.token_env
            ));
            left.push(r);
            continue;
        };
        match forge::delete_by_title(&https, &r, &token).await {
            Ok(n) => did.push(format!(
                "deleted {n} deploy key{} `{}` on {}/{}",
                if n == 1 { "" } else { "s" },
                r.title,
                r.owner,
                r.name
            )),
            Err(e) => {
                did.push(format!("could not delete deploy key `{}` on {}/{}: {e}", r.title, r.owner, r.name));
                left.push(r);
            }
        }
    }
    if let Err(e) = forge::write_records(gate_dir, &left) {
        did.push(format!("could not record the deploy keys left: {e}"));
    }
    did
}
