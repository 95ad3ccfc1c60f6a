//! A token the host renews while the proxy runs: asked for its value on
//! each request, and once it expired unrenewed, never sent: the request
//! gets a 502 that says what to do on the host, and the audit log says
//! why, without the token.

use bot_bottle_sidecars::LiveToken;

use super::clients::curl;
use super::harness::{Harness, Upstream};

const LIVE: &str = "live-renewed-token-0c4f2e9a7b15d3";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

fn proxied(expires: u64) -> (Harness, Upstream) {
    let mut h = Harness::new();
    let a = h.upstream("127.0.0.1", false);
    h.live = vec![("LIVE_TOKEN".into(), LiveToken::new(LIVE.into(), Some(expires)))];
    h.start_proxy(&format!(
        "routes:\n  - host: \"127.0.0.1:{}\"\n    inject: {{ header: authorization, env: LIVE_TOKEN, format: \"Bearer {{}}\" }}\n",
        a.addr.port()
    ));
    (h, a)
}

#[test]
fn a_renewed_token_is_injected_as_it_is_now() {
    let (h, a) = proxied(now() + 3600);
    let (code, out) = curl(&h.client_env(), &[&format!("https://{}/v1", a.addr)]);
    assert_eq!(code, 200, "{out}");
    let seen = a.seen().last().and_then(|r| r.headers.get("authorization").cloned());
    assert_eq!(seen.as_deref(), Some(format!("Bearer {LIVE}").as_str()));
}

#[test]
fn an_expired_token_is_never_sent_and_the_agent_is_told_to_log_in_on_the_host() {
    let (h, a) = proxied(now() - 1);
    let (code, out) = curl(&h.client_env(), &[&format!("https://{}/v1", a.addr)]);
    assert_eq!(code, 502, "{out}");
    assert!(out.contains("`codex login` on the host"), "{out}");
    assert!(!out.contains(LIVE), "{out}");
    assert!(a.seen().is_empty(), "nothing went upstream");
    std::thread::sleep(std::time::Duration::from_millis(150));
    let last = h.audit().last().cloned().unwrap_or_default();
    assert_eq!((last["decision"].as_str(), last["rule"].as_str()), (Some("error"), Some("credential")), "{last}");
    assert!(!last.to_string().contains(LIVE), "{last}");
}
