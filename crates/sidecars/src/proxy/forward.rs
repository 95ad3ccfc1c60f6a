//! One request's trip: the checks every request passes, the token, the
//! upstream, and the scanned response back.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bot_bottle_manifest::{DlpMode, Route};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use super::body::{self, Counted, Verdict, scan_body};
use super::policy::{Denial, Scheme, deny};
use super::response::{self, Report};
use super::upstream::{
    ProxyBody, Sender, UpstreamError, connect_plain, connect_tls, connect_upgradable, resolve_checked,
};
use super::{Ctx, Detectors, Inner, Policy, Tunnel, build, percent_decode, strip_hop_by_hop, websocket};

impl Inner {
    /// The checks every request passes, then the trip upstream.
    pub(super) async fn forward(
        self: Arc<Self>,
        req: Request<Incoming>,
        mut c: Ctx,
        path_q: String,
        scheme: Scheme,
        tunnel: Option<Arc<Tunnel>>,
        trailers: bool,
    ) -> Response<ProxyBody> {
        let _slot = match self.gates.request().await {
            Ok(p) => p,
            Err(cap) => return self.denied(&c, deny("limit", cap.reason(&self.gates.limits))),
        };
        let (policy, tokens, lazy) = self.snapshot();
        // Built before anything is decided: a denial's audit record shows
        // its path only once the detector has cleared it.
        let dets = match lazy.get().await {
            Ok(d) => d,
            Err(why) => return self.denied(&c, deny("detector", why)),
        };
        let Some(route) = policy.route_for(&c.host, c.port, scheme).cloned() else {
            return self.denied(&c, deny("host", format!("no route allows {}:{}", c.host, c.port)));
        };
        // On a route with paths, the path is normalised, matched on segment
        // boundaries, and forwarded in that form.
        let path_q = if route.paths.is_empty() {
            path_q
        } else {
            match super::path::normalize(&path_q) {
                Ok(p) => p,
                Err(d) => return self.denied(&c, d),
            }
        };
        c.path = path_q.split('?').next().unwrap_or_default().to_owned();
        if let Err(d) = Policy::check_request(&route, &c.method, &c.path) {
            return self.denied(&c, d);
        }
        let upgrade = req.extensions().get::<Upgrade>().cloned().or_else(|| {
            req.headers().get(header::UPGRADE).map(|v| Upgrade(v.to_str().unwrap_or("?").to_ascii_lowercase()))
        });
        match upgrade.as_ref().map(|u| u.0.as_str()) {
            None => {}
            Some("websocket") if route.websocket => {}
            Some("websocket") => {
                return self.denied(&c, deny("upgrade", "websocket needs `websocket: true` on the route"));
            }
            Some(other) => {
                return self.denied(&c, deny("upgrade", format!("protocol upgrade to `{other}` is never forwarded")));
            }
        }
        let inject = match route.inject.as_ref().and_then(|i| Some((i, tokens.get(i.env.as_str())?))) {
            None => None,
            // A renewed token asked for its value now; one that expired
            // unrenewed is answered here, with what to do on the host.
            Some((i, t)) => match t.value(i.env.as_str()) {
                Ok(v) => HeaderName::from_bytes(i.header.as_bytes()).ok().map(|n| (n, v, i.env.clone())),
                Err(why) => return self.no_credential(&c, why),
            },
        };
        // The detectors as they are once the token was read: a token
        // renewed since the snapshot is injected now, and its response must
        // be scanned for it too (a renewal teaches the detectors the new
        // token before it swaps it in).
        let dets = match inject {
            Some(_) => match self.snapshot().2.get().await {
                Ok(d) => d,
                Err(why) => return self.denied(&c, deny("detector", why)),
            },
            None => dets,
        };
        if scheme == Scheme::Http && inject.is_some() {
            return self
                .denied(&c, deny("inject-plaintext", "this route injects a token; it is never sent over plain http"));
        }
        // DLP on the request line and headers, as one text, plus the header
        // values run together (a secret split across two headers). The
        // header the proxy replaces is not scanned: whatever the agent put
        // there never leaves.
        let block = policy.dlp == DlpMode::Block;
        let det = dets.request.clone();
        let mut head = format!("{} {} HTTP/1.1\r\n", c.method, path_q).into_bytes();
        head.extend_from_slice(&percent_decode(path_q.as_bytes()));
        head.extend_from_slice(b"\r\n");
        let mut values = Vec::new();
        for (name, value) in req.headers() {
            if inject.as_ref().is_some_and(|(n, _, _)| n == name) {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
            values.extend_from_slice(value.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&values);
        let mut logged: Vec<String> = Vec::new();
        if let Some(f) = det.scan(&head).into_iter().next() {
            if block {
                return self.denied(&c, deny("dlp", format!("request line or headers hold a secret ({})", f.rule)));
            }
            logged.push(f.rule);
        }
        if let Some((_, _, env)) = &inject {
            c.injected = Some(env.as_str().to_owned());
        }
        if upgrade.is_some() {
            return self.websocket(req, c, &path_q, &route, inject.map(|(n, v, _)| (n, v)), &dets, block).await;
        }
        let encoding = response::codings(req.headers());
        let (parts, incoming) = req.into_parts();
        let mut headers = parts.headers;
        // Framing is redone upstream: a Content-Length that came with
        // Transfer-Encoding describes nothing we forward, and must not reach
        // a server that might believe it (request smuggling). (The
        // hop-by-hop headers went before the checks.)
        if parts.extensions.get::<Chunked>().is_some() {
            headers.remove(header::CONTENT_LENGTH);
        }
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let (fwd_body, mut verdict, up_count) = if hyper::body::Body::is_end_stream(&incoming) {
            // No body: nothing to scan, and nothing to frame as chunked.
            let (_tx, rx) = tokio::sync::oneshot::channel();
            (
                Empty::new().map_err(|e: Infallible| match e {}).boxed(),
                rx,
                Arc::new(std::sync::atomic::AtomicU64::new(0)),
            )
        } else {
            let (b, v, n) = scan_body(incoming, encoding, det, self.gates.clone(), block);
            (b.boxed(), v, n)
        };
        if let Some((name, mut value, _)) = inject {
            value.set_sensitive(true);
            headers.remove(&name);
            headers.insert(name, value);
        }
        let is_head = parts.method == Method::HEAD;
        let resp = {
            let send = self.send_upstream(&c, &route, tunnel.as_deref(), parts.method, &path_q, headers, fwd_body);
            tokio::pin!(send);
            let mut verdict_open = true;
            loop {
                tokio::select! {
                    r = &mut send => break r,
                    v = &mut verdict, if verdict_open => match v {
                        Ok(Verdict::Blocked(d)) => return self.denied(&c, d),
                        Ok(Verdict::Logged(rules)) => { logged.extend(rules); verdict_open = false; }
                        Err(_) => verdict_open = false,
                    },
                }
            }
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                // The body may have been refused while the upstream was reading it.
                if let Ok(Verdict::Blocked(d)) = verdict.try_recv() {
                    return self.denied(&c, d);
                }
                return match e {
                    UpstreamError::Denied(d) => self.denied(&c, d),
                    UpstreamError::Failed(why) => self.failed(&c, response::redact_text(why, &dets.response)),
                };
            }
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let report = Arc::new(Report::default());
        let masked = response::redact_headers(&mut parts.headers, &dets.response)
            + response::redact_reason(&mut parts.extensions, &dets.response);
        report.redacted.fetch_add(masked as u64, Ordering::Relaxed);
        let status = parts.status.as_u16();
        let no_body = is_head
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED
            || hyper::body::Body::is_end_stream(&body)
            // Nothing to look for: the body is not decoded at all.
            || !dets.response.has_known();
        let body: ProxyBody = if no_body {
            body.map_err(|e| -> body::BoxError { Box::new(e) }).boxed()
        } else {
            let codings = response::codings(&parts.headers);
            response::scan(body, codings, dets.response.clone(), self.gates.clone(), report.clone()).boxed()
        };
        let inner = self.clone();
        let rule = if logged.is_empty() { None } else { Some(format!("dlp-log: {}", logged.join(", "))) };
        let done = Box::new(move |down: u64| {
            let redacted = report.redacted.load(Ordering::Relaxed);
            let refused = report.refused.lock().ok().and_then(|r| r.clone());
            let up = up_count.load(Ordering::Relaxed);
            match refused {
                Some(why) => {
                    let d = deny("response-secret", why);
                    inner.record_full(&c, "deny", Some(&d), status, up, down, redacted);
                }
                None => {
                    let d = rule.map(|r| Denial { rule: "dlp-log", reason: r });
                    inner.record_full(&c, "allow", d.as_ref(), status, up, down, redacted);
                }
            }
        });
        Response::from_parts(parts, Counted::new(body, done).boxed())
    }

    /// Relays a WebSocket upgrade on a dedicated HTTP/1.1 upstream connection.
    #[expect(clippy::too_many_arguments, reason = "one request's parts, passed once")]
    async fn websocket(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        c: Ctx,
        path_q: &str,
        route: &Route,
        inject: Option<(HeaderName, HeaderValue)>,
        dets: &Detectors,
        block: bool,
    ) -> Response<ProxyBody> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        let mut headers = parts.headers;
        // Compressed frames could not be scanned: negotiate none.
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Some((name, mut value)) = inject {
            value.set_sensitive(true);
            headers.remove(&name);
            headers.insert(name, value);
        }
        let addr = match resolve_checked(&c.host, c.port, route).await {
            Ok(a) => a,
            Err(UpstreamError::Denied(d)) => return self.denied(&c, d),
            Err(UpstreamError::Failed(why)) => return self.failed(&c, response::redact_text(why, &dets.response)),
        };
        let tls = (c.tls == "inspect").then_some(&self.upstream_tls_h1);
        let mut sender = match connect_upgradable(tls, &c.host, addr).await {
            Ok(s) => s,
            Err(UpstreamError::Denied(d)) => return self.denied(&c, d),
            Err(UpstreamError::Failed(why)) => return self.failed(&c, response::redact_text(why, &dets.response)),
        };
        let body = Empty::new().map_err(|e: Infallible| match e {}).boxed();
        let Ok(up_req) = build(parts.method, path_q.parse().unwrap_or_default(), headers, body) else {
            return self.failed(&c, "bad request".into());
        };
        let mut resp = match sender.send_request(up_req).await {
            Ok(r) => r,
            Err(e) => return self.failed(&c, response::redact_text(format!("upstream: {e}"), &dets.response)),
        };
        let known = dets.response.clone();
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let report = Arc::new(Report::default());
            let masked = response::redact_headers(&mut parts.headers, &known)
                + response::redact_reason(&mut parts.extensions, &known);
            self.record_full(&c, "allow", None, status, 0, 0, masked as u64);
            if !known.has_known() {
                return Response::from_parts(parts, body.map_err(|e| -> body::BoxError { Box::new(e) }).boxed());
            }
            let codings = response::codings(&parts.headers);
            let body = response::scan(body, codings, known, self.gates.clone(), report);
            return Response::from_parts(parts, body.boxed());
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        let masked = (response::redact_headers(&mut parts.headers, &known)
            + response::redact_reason(&mut parts.extensions, &known)) as u64;
        let inner = self.clone();
        let det = dets.request.clone();
        tokio::spawn(async move {
            let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else { return };
            let out = websocket::relay(client, upstream, det, known, block).await;
            let redacted = out.redacted + masked;
            match out.denial {
                Some(d) => inner.record_full(&c, "deny", Some(&d), 101, out.up, out.down, redacted),
                None if !out.logged.is_empty() => {
                    let d = Denial { rule: "dlp-log", reason: format!("dlp-log: {}", out.logged.join(", ")) };
                    inner.record_full(&c, "allow", Some(&d), 101, out.up, out.down, redacted);
                }
                None => inner.record_full(&c, "allow", None, 101, out.up, out.down, redacted),
            }
        });
        Response::from_parts(parts, Empty::new().map_err(|e: Infallible| match e {}).boxed())
    }

    #[expect(clippy::too_many_arguments, reason = "one request's parts, passed once")]
    async fn send_upstream(
        &self,
        c: &Ctx,
        route: &Route,
        tunnel: Option<&Tunnel>,
        method: Method,
        path_q: &str,
        headers: HeaderMap,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let Some(t) = tunnel else {
            let addr = resolve_checked(&c.host, c.port, route).await?;
            let mut s = connect_plain(&c.host, addr).await?;
            let req = build(method, path_q.parse().unwrap_or_default(), headers, body)?;
            return s.send(req).await.map_err(|e| UpstreamError::Failed(format!("upstream: {e}")));
        };
        let mut slot = t.upstream.lock().await;
        let usable = match slot.as_mut() {
            Some(s) => s.ready().await,
            None => false,
        };
        if !usable {
            let addr = resolve_checked(&t.host, t.port, route).await?;
            *slot = Some(connect_tls(&self.upstream_tls, &t.host, addr).await?);
        }
        let Some(s) = slot.as_mut() else { return Err(UpstreamError::Failed("no upstream connection".into())) };
        let uri: Uri = if s.is_h2() {
            let auth = if t.port == 443 { t.host.clone() } else { format!("{}:{}", t.host, t.port) };
            let auth = if t.host.contains(':') { format!("[{}]:{}", t.host, t.port) } else { auth };
            format!("https://{auth}{path_q}").parse().map_err(|_| UpstreamError::Failed("bad request URI".into()))?
        } else {
            path_q.parse().map_err(|_| UpstreamError::Failed("bad request URI".into()))?
        };
        let mut headers = headers;
        if s.is_h2() {
            headers.remove(header::HOST);
        }
        let req = build(method, uri, headers, body)?;
        match s {
            Sender::H2(h2) => {
                let mut h2 = Sender::H2(h2.clone());
                drop(slot);
                h2.send(req).await.map_err(|e| UpstreamError::Failed(format!("upstream: {e}")))
            }
            Sender::H1(_) => s.send(req).await.map_err(|e| UpstreamError::Failed(format!("upstream: {e}"))),
        }
    }
}

/// The `Upgrade` a request asked for, saved before its hop-by-hop headers
/// were dropped.
#[derive(Clone, Debug)]
pub(super) struct Upgrade(pub(super) String);

/// Marks a request whose body came chunked (its framing headers are gone
/// by the time it is forwarded).
#[derive(Clone, Copy, Debug)]
pub(super) struct Chunked;

/// Records the framing and upgrade a request asked for, then drops its
/// hop-by-hop headers; returns whether the client accepts trailers.
pub(super) fn strip_request(req: &mut Request<Incoming>) -> bool {
    let h = req.headers();
    let upgrade = h.get(header::UPGRADE).map(|v| Upgrade(v.to_str().unwrap_or("?").to_ascii_lowercase()));
    let chunked = h.contains_key(header::TRANSFER_ENCODING);
    let trailers = strip_hop_by_hop(req.headers_mut());
    if let Some(u) = upgrade {
        req.extensions_mut().insert(u);
    }
    if chunked {
        req.extensions_mut().insert(Chunked);
    }
    trailers
}
