//! Provisioning: what a bottle needs before its agent runs, as data.
//!
//! [`provision`] is a pure function from a resolved [`Plan`] and the facts a
//! backend knows at launch ([`Launch`]) to a [`Provision`]: directories,
//! files, environment, setup commands and the agent's argv. Backends execute
//! it through their own `Bottle` handle. Writing it once, as data, makes it
//! the same for every backend and reviewable as a snapshot.
//!
//! Not for: running anything, or knowing any secret. [`Launch`] carries no
//! secret value, so none can reach the bottle through here: the proxy injects
//! real tokens on the way out, and the agent holds placeholders.

mod providers;

use std::path::PathBuf;

use bot_bottle_manifest::Plan;
use indexmap::IndexMap;
use serde::{Serialize, Serializer};

pub use providers::{PLACEHOLDER_KEY, PLACEHOLDER_TOKEN, rfc3339};

/// Facts known only at launch.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    /// The agent's user inside the bottle, and its home.
    pub user: &'a str,
    pub home: &'a str,
    /// Where the workspace appears inside.
    pub workspace: &'a str,
    /// A directory inside the bottle for bot-bottle's own files.
    pub state_dir: &'a str,
    /// The egress proxy as the agent reaches it, e.g. `http://127.0.0.1:8080`.
    pub proxy_url: &'a str,
    /// The bottle CA certificate (public).
    pub ca_pem: &'a str,
    /// The system trust roots to combine with it (public), if known.
    pub system_roots_pem: Option<&'a str>,
    /// The agent's prompt (the body of its file).
    pub prompt: &'a str,
    /// The git gate's base URL inside the bottle, when it runs.
    pub git_gate_url: Option<&'a str>,
    /// Whether the gate serves the project's repository as `local` (the
    /// workspace copy's `origin`).
    pub git_gate_local: bool,
    /// The supervise MCP endpoint inside the bottle, when enabled.
    pub supervise_url: Option<&'a str>,
    /// `true` when the agent is attached to a terminal; `false` for
    /// unattended (detached) runs.
    pub interactive: bool,
    /// The host's ChatGPT account, for a Codex agent on a ChatGPT login:
    /// identifiers only (the placeholder login carries them; the tokens
    /// stay on the host).
    pub chatgpt: Option<ChatgptAccount>,
}

/// The names under which a launcher's environment lookup answers the host
/// ChatGPT login's account id and plan (from Codex's `auth.json`).
pub const CHATGPT_ACCOUNT_ENV: &str = "BOT_BOTTLE_CHATGPT_ACCOUNT_ID";
pub const CHATGPT_PLAN_ENV: &str = "BOT_BOTTLE_CHATGPT_PLAN_TYPE";

/// Who the host's ChatGPT login is, minus its tokens. Codex sends the
/// account id itself (`chatgpt-account-id`) and finds it in the backend's
/// account list, so the placeholder login must name the real one; it is an
/// identifier the backend shows the client anyway, not a credential.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatgptAccount {
    pub account_id: String,
    /// `plus`, `pro`, `team`, … (what Codex offers depends on it).
    pub plan_type: String,
}

/// Everything to do to a bottle before starting the agent, in order:
/// directories, then files, then commands; then the agent runs `argv`
/// with `env` in `workdir`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Provision {
    pub dirs: Vec<Dir>,
    pub files: Vec<File>,
    pub commands: Vec<Command>,
    pub env: IndexMap<String, String>,
    pub workdir: String,
    pub argv: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dir {
    pub path: String,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub owner: Owner,
}

/// Who owns a file or directory inside the bottle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// The agent's user: it may change it.
    Agent,
    /// Root: the agent may read it, not change it.
    Root,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct File {
    pub path: String,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub owner: Owner,
    pub content: Content,
}

fn octal<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

/// A file's bytes: given inline, or copied from a host path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Inline(Vec<u8>),
    Host(PathBuf),
}

impl Serialize for Content {
    /// Snapshots show short text in full and long content by size, so that
    /// a certificate bundle does not drown the review.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Inline(b) => match std::str::from_utf8(b) {
                Ok(t) if t.len() <= 1200 => s.serialize_str(t),
                _ => s.serialize_str(&format!("<{} bytes>", b.len())),
            },
            Content::Host(p) => s.serialize_str(&format!("<copy of {}>", p.display())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Command {
    pub argv: Vec<String>,
    pub user: Owner,
    /// What it is for; shown if it fails.
    pub why: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProvisionError {
    #[error("the bottle CA certificate is not a PEM certificate")]
    BadCa,
    #[error("{what} must be an absolute path inside the bottle, not `{path}`")]
    RelativePath { what: &'static str, path: String },
    #[error("the agent logs in with ChatGPT, but the launcher found no ChatGPT account on the host")]
    NoChatgptAccount,
}

/// Builds the provisioning for `plan` at launch.
pub fn provision(plan: &Plan, launch: &Launch<'_>) -> Result<Provision, ProvisionError> {
    if !launch.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ProvisionError::BadCa);
    }
    for (what, path) in [("home", launch.home), ("workspace", launch.workspace), ("state_dir", launch.state_dir)] {
        if !path.starts_with('/') {
            return Err(ProvisionError::RelativePath { what, path: path.to_owned() });
        }
    }
    let mut p = Provision { workdir: launch.workspace.to_owned(), ..Provision::default() };
    providers::common(plan, launch, &mut p);
    match plan.agent.provider {
        bot_bottle_manifest::Provider::Claude => providers::claude(plan, launch, &mut p),
        bot_bottle_manifest::Provider::Codex => providers::codex(plan, launch, &mut p)?,
        bot_bottle_manifest::Provider::Command => providers::command(plan, launch, &mut p),
    }
    Ok(p)
}
