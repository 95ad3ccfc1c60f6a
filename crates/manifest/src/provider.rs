//! What a provider brings to a plan: how it logs in, and the route to its
//! API with the credential injected, so that `provider: claude` works with
//! no `egress:` of the bottle's own.
//!
//! Precedence, first hit wins: the agent's `auth:`; else the API key's
//! variable when it is set on the host; else the subscription login when
//! there is one (`CLAUDE_CODE_OAUTH_TOKEN` set, or a ChatGPT login in the
//! host's Codex `auth.json`); else the API key (unset: the plan warns and
//! launch refuses, naming both ways).

use indexmap::IndexMap;
use serde::Serialize;

use crate::model::{EnvName, HostPattern, Inject, Provider, Route, TlsMode};

/// How the agent logs in to its provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthKind {
    /// An API key from the host environment.
    ApiKey,
    /// The user's subscription: Claude Code's long-lived OAuth token, or
    /// Codex's ChatGPT login.
    Login,
}

impl AuthKind {
    pub const NAMES: &[&str] = &["api-key", "login"];
}

/// The resolved login, as the plan shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanAuth {
    pub kind: AuthKind,
    /// `agent` (its `auth:`) or `auto` (what the host has).
    pub from: &'static str,
    /// The host variable holding the credential, by name.
    pub env: EnvName,
    /// Where the credential comes from when it is not a plain variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
}

/// The name under which the launcher serves the access token of the host's
/// ChatGPT login (read from Codex's `auth.json`, refreshed there when it
/// expires). Never a variable of the host's own: the launcher answers it
/// from the file only.
pub const CODEX_LOGIN_ENV: &str = "BOT_BOTTLE_CODEX_CHATGPT_TOKEN";

const ANTHROPIC_KEY: &str = "ANTHROPIC_API_KEY";
const CLAUDE_OAUTH: &str = "CLAUDE_CODE_OAUTH_TOKEN";
const OPENAI_KEY: &str = "OPENAI_API_KEY";

/// Where each API is when the bottle's `env` names no other.
pub(crate) const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
pub const CHATGPT_BASE_URL: &str = "https://chatgpt.com/backend-api";

fn name(s: &str) -> EnvName {
    EnvName::parse(s).expect("a valid constant name")
}

/// The login for `provider`: `chosen` is the agent's `auth:`.
pub(crate) fn auth(provider: Provider, chosen: Option<AuthKind>, is_set: &dyn Fn(&str) -> bool) -> Option<PlanAuth> {
    let (key, login, source) = match provider {
        Provider::Claude => (ANTHROPIC_KEY, CLAUDE_OAUTH, None),
        Provider::Codex => (OPENAI_KEY, CODEX_LOGIN_ENV, Some("the host's Codex login ($CODEX_HOME/auth.json)")),
        Provider::Command => return None,
    };
    let (kind, from) = match chosen {
        Some(k) => (k, "agent"),
        None if is_set(key) => (AuthKind::ApiKey, "auto"),
        None if is_set(login) => (AuthKind::Login, "auto"),
        None => (AuthKind::ApiKey, "auto"),
    };
    Some(match kind {
        AuthKind::ApiKey => PlanAuth { kind, from, env: name(key), source: None },
        AuthKind::Login => PlanAuth { kind, from, env: name(login), source },
    })
}

/// The bottle's value of `var`, else `default`.
pub(crate) fn base_url<'a>(env: &'a IndexMap<EnvName, String>, var: &str, default: &'a str) -> &'a str {
    env.iter().find(|(k, _)| k.as_str() == var).map_or(default, |(_, v)| v.as_str())
}

/// The route the provider needs, with its credential injected: to the host
/// of the API's base URL (the bottle's `env` may move it). `Err` holds a
/// warning when that URL is no `https://` URL with a host: no route then.
pub(crate) fn routes(
    provider: Provider,
    auth: &PlanAuth,
    env: &IndexMap<EnvName, String>,
) -> Result<Vec<Route>, String> {
    let var = match (provider, auth.kind) {
        (Provider::Claude, _) => "ANTHROPIC_BASE_URL",
        (Provider::Codex, AuthKind::ApiKey) => "OPENAI_BASE_URL",
        (Provider::Codex, AuthKind::Login) => "CHATGPT_BASE_URL",
        (Provider::Command, _) => return Ok(Vec::new()),
    };
    let (url, header, format) = match (provider, auth.kind) {
        (Provider::Claude, AuthKind::ApiKey) => {
            (base_url(env, "ANTHROPIC_BASE_URL", ANTHROPIC_BASE_URL), "x-api-key", "{}")
        }
        // Claude Code sends the token itself as a bearer, with the
        // `anthropic-beta: oauth-…` header the API wants; only the value
        // is replaced.
        (Provider::Claude, AuthKind::Login) => {
            (base_url(env, "ANTHROPIC_BASE_URL", ANTHROPIC_BASE_URL), "authorization", "Bearer {}")
        }
        (Provider::Codex, AuthKind::ApiKey) => {
            (base_url(env, "OPENAI_BASE_URL", OPENAI_BASE_URL), "authorization", "Bearer {}")
        }
        (Provider::Codex, AuthKind::Login) => {
            (base_url(env, "CHATGPT_BASE_URL", CHATGPT_BASE_URL), "authorization", "Bearer {}")
        }
        (Provider::Command, _) => return Ok(Vec::new()),
    };
    let Some(host) = url_host(url) else {
        return Err(format!(
            "`{var}` is not an https:// URL with a host, so the provider's route (with its credential) is not added; \
             give an https:// URL, or write the route in `egress.routes`"
        ));
    };
    Ok(vec![Route {
        host,
        paths: Vec::new(),
        methods: Vec::new(),
        inject: Some(Inject { header: header.into(), env: auth.env.clone(), format: format.into() }),
        tls: TlsMode::Inspect,
        websocket: false,
        provider: true,
    }])
}

/// `https://host[:port]/…` as a route host (443 left implicit). `None` for
/// anything else: the bottle's env check reports a bad URL, and without a
/// host there is no route to add.
fn url_host(url: &str) -> Option<HostPattern> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.strip_suffix(":443").unwrap_or(authority);
    HostPattern::parse(authority).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_hosts_come_from_https_urls_only() {
        let h = |u: &str| url_host(u).map(|h| h.to_string());
        assert_eq!(h("https://api.anthropic.com"), Some("api.anthropic.com".into()));
        assert_eq!(h("https://api.openai.com:443/v1"), Some("api.openai.com".into()));
        assert_eq!(h("https://127.0.0.2:8443/v1"), Some("127.0.0.2:8443".into()));
        assert_eq!(h("http://api.openai.com/v1"), None);
        assert_eq!(h("https://user:pw@api.openai.com/v1"), None);
        assert_eq!(h("https://"), None);
    }

    #[test]
    fn an_explicit_choice_wins_then_the_key_then_the_login() {
        let none = |_: &str| false;
        let both = |_: &str| true;
        let login_only = |n: &str| n == CLAUDE_OAUTH || n == CODEX_LOGIN_ENV;
        let kind = |p, c, f: &dyn Fn(&str) -> bool| auth(p, c, f).map(|a| (a.kind, a.from, a.env.as_str().to_owned()));
        assert_eq!(kind(Provider::Claude, None, &none), Some((AuthKind::ApiKey, "auto", ANTHROPIC_KEY.into())));
        assert_eq!(kind(Provider::Claude, None, &both), Some((AuthKind::ApiKey, "auto", ANTHROPIC_KEY.into())));
        assert_eq!(kind(Provider::Claude, None, &login_only), Some((AuthKind::Login, "auto", CLAUDE_OAUTH.into())));
        assert_eq!(
            kind(Provider::Claude, Some(AuthKind::Login), &both),
            Some((AuthKind::Login, "agent", CLAUDE_OAUTH.into()))
        );
        assert_eq!(kind(Provider::Codex, None, &login_only), Some((AuthKind::Login, "auto", CODEX_LOGIN_ENV.into())));
        assert_eq!(kind(Provider::Command, None, &both), None);
    }
}
