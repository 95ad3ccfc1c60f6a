//! The host's subscription logins, as the sidecars and provisioning see
//! them: every credential stays on the host.
//!
//! Claude Code's long-lived OAuth token is a plain host variable
//! (`CLAUDE_CODE_OAUTH_TOKEN`). Codex's ChatGPT login is a file,
//! `$CODEX_HOME/auth.json` (default `~/.codex/auth.json`), with an access
//! token that expires and a refresh token to renew it. Before a bottle
//! starts, the launcher reads it, refreshes an access token that has
//! expired (or will within a day) at the token endpoint as Codex
//! does, writes the renewed login back atomically (same file, mode 0600,
//! a rename), and serves the access token to the proxy under
//! [`CODEX_LOGIN_ENV`], and the account's identifiers to provisioning.
//! While the bottle runs, the bundle renews the token the same way a
//! margin before it expires ([`ChatgptRenewal`]), under the same lock: two
//! bottles on one login spend its refresh token once, the one that loses
//! the race finding the login the winner wrote.
//! Nothing here is ever written inside a bottle or printed.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bot_bottle_manifest::{AuthKind, CODEX_LOGIN_ENV, Plan, Provider};
use bot_bottle_provision::{CHATGPT_ACCOUNT_ENV, CHATGPT_PLAN_ENV};
use bot_bottle_sidecars::{LiveCredential, LiveToken, Renew, Renewed};

/// Where Codex refreshes a ChatGPT login, and the client it does it as.
const TOKEN_URL: &str = "https://auth.openai.com/oauth/token";
const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// Codex's own override of the token endpoint, honoured the same way here.
const TOKEN_URL_VAR: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
/// Refresh when the access token has less than this left: at start, and
/// while a bottle runs. Access tokens last about ten days; a day's margin
/// leaves a day of retries when the token endpoint is down.
const MARGIN: u64 = 24 * 3600;
/// Tests only: the margin in seconds, so that a token can expire a few
/// seconds into a run (documented in docs/providers.md).
const MARGIN_VAR: &str = "BOT_BOTTLE_LOGIN_MARGIN_SECS";

fn margin() -> u64 {
    std::env::var(MARGIN_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(MARGIN)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginError {
    #[error("no ChatGPT login at {}: run `codex login` on the host", path.display())]
    Missing { path: PathBuf },
    #[error("{}: {why}", path.display())]
    Unreadable { path: PathBuf, why: String },
    #[error("{} is not a ChatGPT login ({why}): run `codex login` on the host", path.display())]
    NotChatgpt { path: PathBuf, why: &'static str },
    // Never the answer's body: it may hold tokens.
    #[error("refreshing the ChatGPT login at {url}: {why}; run `codex login` on the host if it persists")]
    Refresh { url: String, why: String },
    #[error("saving the refreshed ChatGPT login to {}: {source}", path.display())]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The host's Codex home: `$CODEX_HOME`, else `~/.codex`.
fn codex_home() -> Option<PathBuf> {
    std::env::var_os("CODEX_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".codex")))
}

fn auth_path() -> Option<PathBuf> {
    codex_home().map(|h| h.join("auth.json"))
}

/// Whether a host credential named `name` is there, without using it: the
/// host variable, or for [`CODEX_LOGIN_ENV`] a ChatGPT login on file.
pub(crate) fn is_set(name: &str) -> bool {
    if name == CODEX_LOGIN_ENV {
        return auth_path().and_then(|p| read(&p).ok()).is_some_and(|d| tokens(&d).is_ok());
    }
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// What a bottle's sidecars and provisioning read from the host: its
/// environment, plus a ChatGPT login's token and account when the plan
/// uses one (read, and refreshed if needed, now).
/// The ChatGPT login's token is also a [`LiveCredential`], renewed by the
/// bundle while the bottle runs.
pub(crate) fn host_env(plan: &Plan) -> Result<(bot_bottle_sidecars::SharedEnv, Vec<LiveCredential>), LoginError> {
    let mut extra: HashMap<&'static str, String> = HashMap::new();
    let mut live = Vec::new();
    let chatgpt =
        plan.agent.provider == Provider::Codex && plan.agent.auth.as_ref().is_some_and(|a| a.kind == AuthKind::Login);
    if chatgpt {
        let path = auth_path().ok_or_else(|| LoginError::Missing { path: PathBuf::from("~/.codex/auth.json") })?;
        let login = chatgpt_login(&path, None)?;
        live.push(LiveCredential {
            env: CODEX_LOGIN_ENV.to_owned(),
            token: LiveToken::new(login.access_token.clone(), expiry(&login.access_token)),
            renew: Arc::new(ChatgptRenewal { path }),
            margin: Duration::from_secs(margin()),
        });
        extra.insert(CODEX_LOGIN_ENV, login.access_token);
        extra.insert(CHATGPT_ACCOUNT_ENV, login.account_id);
        extra.insert(CHATGPT_PLAN_ENV, login.plan_type);
    }
    let env = Arc::new(move |name: &str| match extra.get(name) {
        Some(v) => Some(v.clone()),
        // The launcher's own names are answered from the login only, never
        // from a variable someone set.
        None if [CODEX_LOGIN_ENV, CHATGPT_ACCOUNT_ENV, CHATGPT_PLAN_ENV].contains(&name) => None,
        None => std::env::var(name).ok(),
    });
    Ok((env, live))
}

/// Renews the ChatGPT login at `path` while a bottle runs.
struct ChatgptRenewal {
    path: PathBuf,
}

impl Renew for ChatgptRenewal {
    fn renew(&self, spent: &str) -> Result<Renewed, String> {
        // The error names the file or the endpoint, never a token.
        let login = chatgpt_login(&self.path, Some(spent)).map_err(|e| e.to_string())?;
        Ok(Renewed { expires: expiry(&login.access_token), value: login.access_token })
    }

    fn endpoint(&self) -> String {
        token_url()
    }
}

/// When an access token expires (Unix seconds), if it says.
fn expiry(access: &str) -> Option<u64> {
    claims(access).and_then(|c| c["exp"].as_u64())
}

struct Login {
    access_token: String,
    account_id: String,
    plan_type: String,
}

fn read(path: &Path) -> Result<serde_json::Value, LoginError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoginError::Missing { path: path.to_owned() });
        }
        Err(e) => return Err(LoginError::Unreadable { path: path.to_owned(), why: e.to_string() }),
    };
    // serde_json's message names a position, never the text around it.
    serde_json::from_str(&text).map_err(|e| LoginError::Unreadable { path: path.to_owned(), why: e.to_string() })
}

fn tokens(doc: &serde_json::Value) -> Result<&serde_json::Map<String, serde_json::Value>, &'static str> {
    let t = doc.get("tokens").and_then(|t| t.as_object()).ok_or("no `tokens`")?;
    for k in ["access_token", "refresh_token"] {
        if t.get(k).and_then(|v| v.as_str()).is_none_or(str::is_empty) {
            return Err("no access or refresh token");
        }
    }
    Ok(t)
}

/// The claims of a JWT, unverified (only to read its expiry and account).
fn claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The login at `path`, its access token refreshed if it expires within
/// the margin or is `spent` (the one a running bottle is renewing).
fn chatgpt_login(path: &Path, spent: Option<&str>) -> Result<Login, LoginError> {
    let mut doc = read(path)?;
    let not = |why| LoginError::NotChatgpt { path: path.to_owned(), why };
    let t = tokens(&doc).map_err(not)?;
    let margin = margin();
    let expiring = |t: &serde_json::Map<String, serde_json::Value>| {
        let access = t["access_token"].as_str().unwrap_or_default();
        spent == Some(access) || expiry(access).is_some_and(|exp| exp <= now().saturating_add(margin))
    };
    // Refresh tokens are single-use: two launchers refreshing at once would
    // spend one twice. The second waits on the directory's lock, then finds
    // the login renewed (by the other, or by `codex login`), and uses that.
    // (A lock on the directory leaves no file behind.)
    let _lock = if expiring(t) {
        let dir = std::fs::File::open(path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| LoginError::Unreadable { path: path.to_owned(), why: e.to_string() })?;
        let lock = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            LoginError::Unreadable { path: path.to_owned(), why: format!("locking its directory: {e}") }
        })?;
        doc = read(path)?;
        Some(lock)
    } else {
        None
    };
    let t = tokens(&doc).map_err(not)?;
    if expiring(t) {
        let refresh = t["refresh_token"].as_str().unwrap_or_default().to_owned();
        let fresh = refresh_tokens(&refresh)?;
        let t = doc["tokens"].as_object_mut().ok_or_else(|| not("no `tokens`"))?;
        for k in ["id_token", "access_token", "refresh_token"] {
            if let Some(v) = fresh.get(k).and_then(|v| v.as_str()).filter(|v| !v.is_empty()) {
                t.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
            }
        }
        doc["last_refresh"] = serde_json::Value::String(rfc3339_now());
        save(path, &doc)?;
        tracing::debug!(path = %path.display(), "refreshed the host's ChatGPT login");
    }
    let t = tokens(&doc).map_err(not)?;
    let id = t.get("id_token").and_then(|v| v.as_str()).and_then(claims);
    let auth = id.as_ref().map(|c| &c["https://api.openai.com/auth"]);
    let account_id = t
        .get("account_id")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .or_else(|| auth.and_then(|a| a["chatgpt_account_id"].as_str()).map(str::to_owned))
        .ok_or_else(|| not("no account id"))?;
    let plan_type = auth.and_then(|a| a["chatgpt_plan_type"].as_str()).unwrap_or("plus").to_owned();
    Ok(Login { access_token: t["access_token"].as_str().unwrap_or_default().to_owned(), account_id, plan_type })
}

fn token_url() -> String {
    std::env::var(TOKEN_URL_VAR).ok().filter(|u| !u.is_empty()).unwrap_or_else(|| TOKEN_URL.to_owned())
}

/// The refresh grant, as Codex sends it. Runs on a thread of its own so
/// that it never nests in a caller's async runtime.
fn refresh_tokens(refresh_token: &str) -> Result<serde_json::Value, LoginError> {
    let url = token_url();
    let fail = |why: String| LoginError::Refresh { url: url.clone(), why };
    let body = serde_json::json!({
        "client_id": CLIENT_ID,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "scope": "openid profile email",
    })
    .to_string()
    .into_bytes();
    let extra_ca = std::env::var_os("BOT_BOTTLE_UPSTREAM_CA").map(PathBuf::from);
    let answer = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            let https = bot_bottle_sidecars::Https::new(extra_ca.as_deref(), Duration::from_secs(30))
                .map_err(|e| e.to_string())?;
            rt.block_on(https.request(
                http::Method::POST,
                &url,
                &[("content-type", "application/json".into()), ("accept", "application/json".into())],
                Some(body),
            ))
            .map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("the refresh thread panicked".into()))
    })
    .map_err(fail)?;
    let (status, data) = answer;
    if status != 200 {
        return Err(fail(format!("the token endpoint answered {status}")));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&data).map_err(|_| fail("the token endpoint's answer is not JSON".into()))?;
    if v.get("access_token").and_then(|a| a.as_str()).is_none_or(str::is_empty) {
        return Err(fail("the token endpoint's answer has no access token".into()));
    }
    Ok(v)
}

/// Replaces the login file whole: a new file beside it, 0600 from the
/// start, synced, then renamed over it. A reader (Codex on the host) sees
/// the old login or the new one, never half of either.
fn save(path: &Path, doc: &serde_json::Value) -> Result<(), LoginError> {
    let err = |source| LoginError::Save { path: path.to_owned(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".auth.json.")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(err)?;
    let text = serde_json::to_string_pretty(doc).map_err(|e| err(std::io::Error::other(e)))?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

fn rfc3339_now() -> String {
    bot_bottle_provision::rfc3339(now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let b = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", b(&serde_json::json!({"alg": "none"})), b(&claims))
    }

    #[test]
    fn a_login_needs_both_tokens() {
        let ok = serde_json::json!({"tokens": {"access_token": "a", "refresh_token": "r"}});
        assert!(tokens(&ok).is_ok());
        for bad in [
            serde_json::json!({"OPENAI_API_KEY": "sk-x"}),
            serde_json::json!({"tokens": {"access_token": "a"}}),
            serde_json::json!({"tokens": {"access_token": "", "refresh_token": "r"}}),
        ] {
            assert!(tokens(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn claims_are_read_from_the_payload_only() {
        assert_eq!(claims(&jwt(serde_json::json!({"exp": 5}))).and_then(|c| c["exp"].as_u64()), Some(5));
        assert_eq!(claims("not-a-jwt"), None);
        assert_eq!(claims("a.!!!.c"), None);
    }

    #[test]
    fn a_saved_login_is_private_and_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.json");
        std::fs::write(&path, "{}").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        save(&path, &serde_json::json!({"tokens": {"access_token": "new"}})).expect("save");
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(back["tokens"]["access_token"], "new");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1, "no temporary file left");
    }
}
