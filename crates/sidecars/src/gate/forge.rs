//! Deploy keys minted per bottle through a forge's REST API (GitHub or
//! Gitea): created at launch with write access and titled with the bottle's
//! slug, deleted at teardown, and found again by title by `cleanup` when a
//! launcher was killed first.
//!
//! The forge token is read from the host environment when needed and never
//! stored; the private key lives in the gate's directory (0600, in a 0700
//! directory) and is only ever named in the ssh command the gate runs.
//! Neither reaches the bottle.

use std::path::{Path, PathBuf};

use bot_bottle_manifest::{GitUrl, KeySource};
use http::Method;
use serde::{Deserialize, Serialize};

use super::https::{Https, HttpsError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Forge {
    Github,
    Gitea,
}

impl Forge {
    fn name(self) -> &'static str {
        match self {
            Forge::Github => "GitHub",
            Forge::Gitea => "Gitea",
        }
    }
}

/// One deploy key the gate made (or was about to make): enough to find and
/// delete it again, given the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    /// The gate repository it is for.
    pub(crate) repo: String,
    pub(crate) forge: Forge,
    /// The REST base URL.
    pub(crate) api: String,
    pub(crate) owner: String,
    pub(crate) name: String,
    pub(crate) title: String,
    /// The host variable holding the forge token (its name only).
    pub(crate) token_env: String,
    /// The forge's id of the key, once created.
    pub(crate) id: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("the repository path `{0}` is not `OWNER/NAME`, as {1} needs")]
    Path(String, &'static str),
    #[error("${0} (the forge token) is not set")]
    NoToken(String),
    #[error(transparent)]
    Https(#[from] HttpsError),
    #[error("{forge} answered {status} to {what}: {message}")]
    Status { forge: &'static str, what: String, status: u16, message: String },
    #[error("{forge} answered {what} with something that is not a deploy key")]
    Answer { forge: &'static str, what: String },
}

/// The forge behind a `github` or `gitea` key, or `None` for other keys.
pub(crate) fn forge_of(key: &KeySource) -> Option<(Forge, &str, Option<&str>)> {
    match key {
        KeySource::Github { forge_token_env, api } => Some((Forge::Github, forge_token_env.as_str(), api.as_deref())),
        KeySource::Gitea { forge_token_env, api } => Some((Forge::Gitea, forge_token_env.as_str(), api.as_deref())),
        _ => None,
    }
}

/// What a deploy key for `url` would be filed under.
pub(crate) fn record_for(
    repo: &str,
    forge: Forge,
    token_env: &str,
    api: Option<&str>,
    url: &GitUrl,
    title: &str,
) -> Result<KeyRecord, ForgeError> {
    let (host, path) = match url {
        GitUrl::Ssh { host, path, .. } | GitUrl::Https { host, path, .. } => (host, path),
    };
    let trimmed = path.strip_suffix(".git").unwrap_or(path);
    let mut parts = trimmed.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ForgeError::Path(path.clone(), forge.name()));
    };
    if owner.is_empty() || name.is_empty() {
        return Err(ForgeError::Path(path.clone(), forge.name()));
    }
    let api = match (api, forge) {
        (Some(a), _) => a.trim_end_matches('/').to_owned(),
        (None, Forge::Github) if host == "github.com" => "https://api.github.com".to_owned(),
        (None, Forge::Github) => format!("https://{host}/api/v3"),
        (None, Forge::Gitea) => format!("https://{host}/api/v1"),
    };
    Ok(KeyRecord {
        repo: repo.to_owned(),
        forge,
        api,
        owner: owner.to_owned(),
        name: name.to_owned(),
        title: title.to_owned(),
        token_env: token_env.to_owned(),
        id: None,
    })
}

/// The title every key of bottle `slug` carries: how `cleanup` finds them.
pub(crate) fn title(slug: &str) -> String {
    format!("bot-bottle {slug}")
}

fn headers(forge: Forge, token: &str) -> Vec<(&'static str, String)> {
    match forge {
        Forge::Github => vec![
            ("authorization", format!("Bearer {token}")),
            ("accept", "application/vnd.github+json".into()),
            ("x-github-api-version", "2022-11-28".into()),
            ("user-agent", "bot-bottle".into()),
            ("content-type", "application/json".into()),
        ],
        Forge::Gitea => vec![
            ("authorization", format!("token {token}")),
            ("accept", "application/json".into()),
            ("user-agent", "bot-bottle".into()),
            ("content-type", "application/json".into()),
        ],
    }
}

fn keys_url(r: &KeyRecord) -> String {
    format!("{}/repos/{}/{}/keys", r.api, r.owner, r.name)
}

/// The forge's own message from an error answer, cut short and stripped of
/// anything but plain text.
fn message(body: &[u8]) -> String {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let m = v
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(|m| m.as_str())
        .map_or_else(|| String::from_utf8_lossy(body).into_owned(), str::to_owned);
    m.chars().filter(|c| !c.is_control()).take(300).collect()
}

fn status_error(r: &KeyRecord, what: String, status: u16, body: &[u8]) -> ForgeError {
    ForgeError::Status { forge: r.forge.name(), what, status, message: message(body) }
}

/// Creates the deploy key (write access) and returns its id.
pub(crate) async fn create(http: &Https, r: &KeyRecord, token: &str, public_key: &str) -> Result<u64, ForgeError> {
    let body = serde_json::json!({ "title": r.title, "key": public_key.trim(), "read_only": false });
    let what = format!("creating a deploy key on {}/{}", r.owner, r.name);
    let (status, answer) =
        http.request(Method::POST, &keys_url(r), &headers(r.forge, token), Some(body.to_string().into_bytes())).await?;
    if status != 201 {
        return Err(status_error(r, what, status, &answer));
    }
    let v: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|_| ForgeError::Answer { forge: r.forge.name(), what: what.clone() })?;
    v.get("id").and_then(serde_json::Value::as_u64).ok_or(ForgeError::Answer { forge: r.forge.name(), what })
}

/// Every deploy key of the repository: (id, title).
pub(crate) async fn list(http: &Https, r: &KeyRecord, token: &str) -> Result<Vec<(u64, String)>, ForgeError> {
    let mut out = Vec::new();
    for page in 1..=50 {
        let url = match r.forge {
            Forge::Github => format!("{}?per_page=100&page={page}", keys_url(r)),
            Forge::Gitea => format!("{}?limit=50&page={page}", keys_url(r)),
        };
        let what = format!("listing the deploy keys of {}/{}", r.owner, r.name);
        let (status, answer) = http.request(Method::GET, &url, &headers(r.forge, token), None).await?;
        if status != 200 {
            return Err(status_error(r, what, status, &answer));
        }
        let v: Vec<serde_json::Value> =
            serde_json::from_slice(&answer).map_err(|_| ForgeError::Answer { forge: r.forge.name(), what })?;
        if v.is_empty() {
            break;
        }
        for k in v {
            if let (Some(id), Some(t)) = (k.get("id").and_then(|i| i.as_u64()), k.get("title").and_then(|t| t.as_str()))
            {
                out.push((id, t.to_owned()));
            }
        }
    }
    Ok(out)
}

/// Deletes one deploy key; one that is already gone counts as deleted.
pub(crate) async fn delete(http: &Https, r: &KeyRecord, token: &str, id: u64) -> Result<(), ForgeError> {
    let url = format!("{}/{id}", keys_url(r));
    let (status, answer) = http.request(Method::DELETE, &url, &headers(r.forge, token), None).await?;
    match status {
        204 | 200 | 404 => Ok(()),
        s => Err(status_error(r, format!("deleting deploy key {id} of {}/{}", r.owner, r.name), s, &answer)),
    }
}

/// Deletes every key of the repository titled `r.title`, whatever its id:
/// also one created by a launcher killed before it wrote the id down.
/// Returns how many it deleted.
pub(crate) async fn delete_by_title(http: &Https, r: &KeyRecord, token: &str) -> Result<usize, ForgeError> {
    let mut n = 0;
    for (id, t) in list(http, r, token).await? {
        if t == r.title {
            delete(http, r, token, id).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Where the gate keeps its key records.
pub(crate) fn records_path(gate_dir: &Path) -> PathBuf {
    gate_dir.join("deploy-keys.json")
}

pub(crate) fn read_records(gate_dir: &Path) -> Vec<KeyRecord> {
    std::fs::read(records_path(gate_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Writes the records (atomically: a killed launcher leaves the old list or
/// the new one, never half of one).
pub(crate) fn write_records(gate_dir: &Path, records: &[KeyRecord]) -> std::io::Result<()> {
    let tmp = gate_dir.join("deploy-keys.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, records_path(gate_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> GitUrl {
        let (host, path) = s.split_once(':').expect("scp form");
        GitUrl::Ssh { user: Some("git".into()), host: host.into(), port: None, path: path.into() }
    }

    #[test]
    fn records_name_the_api_owner_and_repository() {
        let r = record_for("app", Forge::Github, "GH_TOKEN", None, &url("github.com:org/app.git"), "bot-bottle a-1")
            .expect("record");
        assert_eq!((r.api.as_str(), r.owner.as_str(), r.name.as_str()), ("https://api.github.com", "org", "app"));
        assert_eq!(keys_url(&r), "https://api.github.com/repos/org/app/keys");
        let ghe = record_for("app", Forge::Github, "T", None, &url("ghe.example.com:org/app"), "t").expect("record");
        assert_eq!(ghe.api, "https://ghe.example.com/api/v3");
        let gitea =
            record_for("app", Forge::Gitea, "T", None, &url("git.example.com:org/app.git"), "t").expect("record");
        assert_eq!(gitea.api, "https://git.example.com/api/v1");
        let own = record_for("app", Forge::Gitea, "T", Some("https://127.0.0.1:3000/api/v1/"), &url("h:o/n.git"), "t")
            .expect("r");
        assert_eq!(own.api, "https://127.0.0.1:3000/api/v1");
        for bad in ["h:org/sub/app.git", "h:app.git", "h:/app.git"] {
            assert!(record_for("app", Forge::Gitea, "T", None, &url(bad), "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn each_forge_gets_its_documented_auth_header() {
        assert_eq!(headers(Forge::Github, "tok")[0], ("authorization", "Bearer tok".to_owned()));
        assert_eq!(headers(Forge::Gitea, "tok")[0], ("authorization", "token tok".to_owned()));
        assert!(headers(Forge::Github, "t").iter().any(|(k, _)| *k == "x-github-api-version"));
    }

    #[test]
    fn error_messages_are_the_forges_own_cut_short() {
        assert_eq!(message(br#"{"message":"Validation Failed","errors":[]}"#), "Validation Failed");
        assert_eq!(message(b"plain\ntext"), "plaintext");
        assert_eq!(message(&[b'x'; 1000]).len(), 300);
    }
}
