//! Credentials the host renews while a bottle runs (a ChatGPT login's
//! access token lasts days; a session may outlast it).
//!
//! The proxy asks a [`LiveToken`] for its value on every request it
//! injects: a read lock and an `Arc` clone, no I/O. The bundle keeps it
//! fresh with one task per credential: a timer at expiry minus a margin,
//! then the caller's [`Renew`] (blocking: it takes the host's lock and
//! talks to the token endpoint) on a blocking thread. A renewal that fails
//! is logged and audited without the value, the old value stays in use
//! until it expires, and the task tries again after a pause; past expiry
//! the proxy answers the request itself with what to do on the host.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::Proxy;

/// The value in force, as the proxy reads it.
pub(crate) struct Current {
    pub(crate) value: String,
    /// Unix seconds; `None` when the value does not say.
    pub(crate) expires: Option<u64>,
    /// Why the last renewal failed, until one succeeds.
    pub(crate) failure: Option<String>,
}

/// A credential's current value, shared by the proxy (reading) and the
/// bundle's renewal task (replacing it). Cheap to clone; never printed.
#[derive(Clone)]
pub struct LiveToken(Arc<RwLock<Arc<Current>>>);

impl std::fmt::Debug for LiveToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveToken(..)")
    }
}

impl LiveToken {
    /// `value`, valid until `expires` (Unix seconds) if it says.
    pub fn new(value: String, expires: Option<u64>) -> LiveToken {
        LiveToken(Arc::new(RwLock::new(Arc::new(Current { value, expires, failure: None }))))
    }

    pub(crate) fn current(&self) -> Arc<Current> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn replace(&self, c: Current) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(c);
    }
}

/// A renewed value.
pub struct Renewed {
    pub value: String,
    pub expires: Option<u64>,
}

impl std::fmt::Debug for Renewed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewed").field("expires", &self.expires).finish_non_exhaustive()
    }
}

/// How a credential is renewed on the host.
pub trait Renew: Send + Sync {
    /// A fresh value to replace `spent` (the value in use). Blocking. Its
    /// error is shown and audited: it must never hold a secret.
    fn renew(&self, spent: &str) -> Result<Renewed, String>;
    /// Where it renews, for the audit log (a URL without secrets).
    fn endpoint(&self) -> String;
}

/// One credential the bundle keeps fresh for the proxy.
#[derive(Clone)]
pub struct LiveCredential {
    /// The name routes inject it by (`inject.env`).
    pub env: String,
    pub token: LiveToken,
    pub renew: Arc<dyn Renew>,
    /// Renew this long before the value expires.
    pub margin: Duration,
}

impl std::fmt::Debug for LiveCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCredential").field("env", &self.env).field("margin", &self.margin).finish_non_exhaustive()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How long to wait before the next attempt after a failure: often enough
/// to recover before expiry, rarely enough not to hammer the endpoint.
fn retry_after(margin: Duration) -> Duration {
    (margin / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Keeps `cred` fresh for as long as the task runs (the bundle aborts it
/// at the end of the session).
pub(crate) async fn keep_fresh(cred: LiveCredential, proxy: Proxy) {
    let mut failed = false;
    loop {
        let cur = cred.token.current();
        let wait = match cur.expires {
            Some(_) if failed => retry_after(cred.margin),
            Some(exp) => Duration::from_secs(exp.saturating_sub(now().saturating_add(cred.margin.as_secs()))),
            // Nothing says when it ends: nothing to renew ahead of.
            None => return,
        };
        tokio::time::sleep(wait).await;
        let renew = cred.renew.clone();
        let spent = cur.value.clone();
        let result = tokio::task::spawn_blocking(move || renew.renew(&spent))
            .await
            .unwrap_or_else(|_| Err("the renewal panicked".into()));
        let endpoint = cred.renew.endpoint();
        match result {
            Ok(r) => {
                failed = false;
                // The new value is a secret of the bottle's from now on:
                // blocked going out, masked coming back.
                proxy.learn_secret(&cred.env, &r.value);
                let changed = r.value != cur.value;
                cred.token.replace(Current { value: r.value, expires: r.expires, failure: None });
                tracing::debug!(env = %cred.env, %endpoint, changed, expires = ?r.expires, "renewed a host credential");
                proxy.audit_renewal(&cred.env, &endpoint, None);
                if r.expires.is_some_and(|e| e <= now().saturating_add(cred.margin.as_secs())) {
                    // A value that expires within the margin already (a
                    // margin longer than the token lives): pace the next
                    // attempt instead of spinning.
                    failed = true;
                }
            }
            Err(why) => {
                failed = true;
                tracing::warn!(env = %cred.env, %endpoint, error = %why,
                    "renewing a host credential failed; the current one stays in use until it expires");
                proxy.audit_renewal(&cred.env, &endpoint, Some(&why));
                cred.token.replace(Current { value: cur.value.clone(), expires: cur.expires, failure: Some(why) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyConfig;

    struct Fake(Result<&'static str, &'static str>);

    impl Renew for Fake {
        fn renew(&self, _spent: &str) -> Result<Renewed, String> {
            self.0.map(|v| Renewed { value: v.into(), expires: Some(now() + 3600) }).map_err(str::to_owned)
        }

        fn endpoint(&self) -> String {
            "https://auth.example.com/oauth/token".into()
        }
    }

    /// Runs the renewal of a token that expires in 2 s (margin 1 s) with
    /// `fake` until `done` holds of it; returns it and the audit log.
    fn renewing(fake: Fake, done: impl Fn(&Current) -> bool) -> (Arc<Current>, String, Proxy) {
        let dir = tempfile::tempdir().expect("tempdir");
        let egress = bot_bottle_manifest::parse_egress(std::path::Path::new("r.yaml"), "routes: []\n").expect("egress");
        let proxy = Proxy::new(ProxyConfig {
            bottle: "t".into(),
            state_dir: dir.path().join("proxy"),
            egress,
            upstream_ca: None,
            audit_log: Some(dir.path().join("audit.jsonl")),
            env: Box::new(|_| None),
            known_secrets: Vec::new(),
            live: Vec::new(),
            routes_file: None,
            limits: Default::default(),
            supervise: false,
        })
        .expect("proxy");
        let token = LiveToken::new("old-value-5e1d".into(), Some(now() + 2));
        let cred = LiveCredential {
            env: "LIVE".into(),
            token: token.clone(),
            renew: Arc::new(fake),
            margin: Duration::from_secs(1),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let task = tokio::spawn(keep_fresh(cred, proxy.clone()));
            for _ in 0..100 {
                if done(&token.current()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            task.abort();
        });
        (token.current(), std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default(), proxy)
    }

    #[test]
    fn a_token_is_renewed_a_margin_before_it_expires_and_audited_by_name() {
        let (cur, audit, proxy) = renewing(Fake(Ok("new-value-9a2c")), |c| c.value == "new-value-9a2c");
        assert!(proxy.knows("new-value-9a2c"), "the renewed token is a known secret from now on");
        assert_eq!((cur.value.as_str(), cur.failure.as_deref()), ("new-value-9a2c", None));
        assert!(audit.contains("\"method\":\"RENEW\"") && audit.contains("\"decision\":\"allow\""), "{audit}");
        assert!(audit.contains("\"injected\":\"LIVE\"") && audit.contains("auth.example.com"), "{audit}");
        assert!(!audit.contains("value-"), "{audit}");
    }

    #[test]
    fn a_failed_renewal_keeps_the_old_token_and_is_audited() {
        let (cur, audit, _) = renewing(Fake(Err("the token endpoint answered 401")), |c| c.failure.is_some());
        assert_eq!(cur.value, "old-value-5e1d");
        assert_eq!(cur.failure.as_deref(), Some("the token endpoint answered 401"));
        assert!(audit.contains("\"decision\":\"error\"") && audit.contains("answered 401"), "{audit}");
        assert!(!audit.contains("value-"), "{audit}");
    }

    #[test]
    fn a_live_token_is_never_printed() {
        let t = LiveToken::new("sk-secret-value".into(), Some(1));
        assert!(!format!("{t:?}").contains("sk-secret"));
        let r = Renewed { value: "sk-secret-value".into(), expires: None };
        assert!(!format!("{r:?}").contains("sk-secret"));
    }

    #[test]
    fn retries_are_bounded() {
        assert_eq!(retry_after(Duration::from_secs(24 * 3600)), Duration::from_secs(60));
        assert_eq!(retry_after(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(retry_after(Duration::from_secs(20)), Duration::from_secs(5));
    }
}
