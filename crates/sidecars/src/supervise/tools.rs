//! The MCP tools. Protocol misuse (missing or mistyped parameters, unknown
//! tools) is a JSON-RPC error, which rmcp produces from the schemas; a
//! refusal the agent should read (an invalid route, an unknown request id)
//! is a tool error with a message saying what to do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::schemars::JsonSchema;
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{EgressRequest, Inner, Lifetime, RouteSpec, State, check_route};

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub(crate) struct RecentDenials {
    /// How many of the latest denials to return (default 20, at most 200).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "lowercase")]
pub(crate) enum LifetimeParam {
    /// Until the bottle stops.
    Session,
    /// For good: also kept in the bottle's manifest.
    Persist,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestEgress {
    /// The host to reach, e.g. `api.example.com`, `*.example.com` or
    /// `example.com:8443`.
    host: String,
    /// Path prefixes wanted; omitted means any path.
    #[serde(default)]
    paths: Vec<String>,
    /// HTTP methods wanted; omitted means any method.
    #[serde(default)]
    methods: Vec<String>,
    /// Why the task needs it: the human deciding reads this.
    justification: String,
    /// `session` (until the bottle stops, the default) or `persist`.
    #[serde(default)]
    lifetime: Option<LifetimeParam>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckRequest {
    /// The id `request_egress` returned.
    id: String,
    /// Seconds to wait for a decision (0, the default, answers at once).
    #[serde(default)]
    wait_seconds: Option<u32>,
}

#[derive(Clone)]
pub(crate) struct Tools {
    inner: Arc<Inner>,
    #[expect(dead_code, reason = "read by the code `tool_handler` generates")]
    tool_router: ToolRouter<Tools>,
}

fn ok(v: Value) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(v.to_string())]))
}

fn refuse(msg: String) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::error(vec![ContentBlock::text(msg)]))
}

/// A request's state as the agent reads it.
fn outcome(r: &EgressRequest) -> Value {
    let d = r.decision.as_ref();
    let status = match r.state {
        // A grant not yet in force is still pending to the agent: its next
        // request would be refused.
        State::Approved | State::Modified if !r.applied => "pending",
        State::Approved => "approved",
        State::Modified => "modified",
        State::Rejected => "rejected",
        State::Pending => "pending",
    };
    let mut v = json!({ "id": r.id, "status": status });
    match status {
        "approved" | "modified" => {
            v["route"] = json!(d.and_then(|d| d.route.as_ref()));
            v["lifetime"] = json!(r.lifetime);
            v["message"] = json!("the route is in force now: retry the request");
        }
        "rejected" => {
            v["comment"] = json!(d.and_then(|d| d.comment.as_deref()));
            v["message"] = json!("the operator refused this; do not retry it unchanged");
        }
        _ => {
            v["message"] = json!("no decision yet: call check_request with this id later");
        }
    }
    if let Some(e) = &r.apply_error {
        v["status"] = json!("error");
        v["message"] = json!(format!("the grant could not be applied: {e}"));
    }
    v
}

impl Tools {
    pub(crate) fn new(inner: Arc<Inner>) -> Tools {
        Tools { inner, tool_router: Self::tool_router() }
    }

    /// Waits up to `wait` for `id` to be decided and (when granted) applied.
    async fn wait(&self, id: &str, wait: Duration) -> Result<EgressRequest, super::SuperviseError> {
        let end = Instant::now() + wait;
        loop {
            let r = self.inner.queue.get(id)?;
            let settled = match r.state {
                State::Pending => false,
                State::Rejected => true,
                State::Approved | State::Modified => r.applied || r.apply_error.is_some(),
            };
            if settled || Instant::now() >= end {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tool_router]
impl Tools {
    #[tool(description = "The egress routes in force for this bottle now: hosts, paths and methods the proxy allows.")]
    async fn list_egress_routes(&self) -> Result<CallToolResult, ErrorData> {
        let routes = self.inner.routes();
        ok(json!({ "routes": routes }))
    }

    #[tool(description = "What the egress proxy refused this bottle lately, newest last: host, port, method, path, \
                          the rule that refused it and why.")]
    async fn recent_denials(&self, Parameters(p): Parameters<RecentDenials>) -> Result<CallToolResult, ErrorData> {
        let limit = p.limit.unwrap_or(20).min(200) as usize;
        let state = self.inner.state.clone();
        let read = tokio::task::spawn_blocking(move || super::read_audit(&state, 0, Some(4 << 20))).await;
        let entries = match read {
            Ok(Ok((v, _))) => v,
            Ok(Err(e)) => return Err(ErrorData::internal_error(e.to_string(), None)),
            Err(e) => return Err(ErrorData::internal_error(e.to_string(), None)),
        };
        let mut denials: Vec<Value> = entries
            .into_iter()
            .filter(|e| e.get("service").is_none() && e["decision"] == "deny")
            .map(|e| {
                json!({
                    "time": e["time"], "host": e["host"], "port": e["port"], "method": e["method"],
                    "path": e["path"], "rule": e["rule"], "reason": e["reason"],
                })
            })
            .collect();
        let skip = denials.len().saturating_sub(limit);
        denials.drain(..skip);
        ok(json!({ "denials": denials }))
    }

    #[tool(description = "Ask the human operator to allow egress to a host (optionally only some paths and \
                          methods), with a justification. Waits for a decision, then answers approved (the route \
                          is in force: retry), modified (with the route actually granted), rejected (with the \
                          operator's comment), or pending (with an id for check_request).")]
    async fn request_egress(&self, Parameters(p): Parameters<RequestEgress>) -> Result<CallToolResult, ErrorData> {
        if p.justification.trim().is_empty() {
            return refuse("a justification is required: say why the task needs this host".into());
        }
        let spec = RouteSpec { host: p.host, paths: p.paths, methods: p.methods };
        if let Err(e) = check_route(&spec) {
            return refuse(format!(
                "{e}; ask for a host such as `api.example.com`, paths beginning with `/`, \
                                   and HTTP methods such as GET"
            ));
        }
        let lifetime = match p.lifetime {
            Some(LifetimeParam::Persist) => Lifetime::Persist,
            _ => Lifetime::Session,
        };
        let i = &self.inner;
        let r = match i.queue.submit(&i.bottle, &i.run, spec, p.justification, lifetime) {
            Ok(r) => r,
            Err(e) => return Err(ErrorData::internal_error(e.to_string(), None)),
        };
        match self.wait(&r.id, i.wait).await {
            Ok(r) => ok(outcome(&r)),
            Err(e) => Err(ErrorData::internal_error(e.to_string(), None)),
        }
    }

    #[tool(description = "The state of an earlier egress request by id: approved, modified, rejected or pending.")]
    async fn check_request(&self, Parameters(p): Parameters<CheckRequest>) -> Result<CallToolResult, ErrorData> {
        let wait = Duration::from_secs(p.wait_seconds.unwrap_or(0).into()).min(self.inner.wait);
        match self.wait(&p.id, wait).await {
            Ok(r) => ok(outcome(&r)),
            Err(e @ super::SuperviseError::NoSuchRequest(_)) => refuse(e.to_string()),
            Err(e) => Err(ErrorData::internal_error(e.to_string(), None)),
        }
    }
}

#[tool_handler]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "bot-bottle supervise: this bottle's egress is default-deny. When the proxy refuses a request, \
             call recent_denials to see why, then request_egress with a justification; a human decides.",
        )
    }
}
