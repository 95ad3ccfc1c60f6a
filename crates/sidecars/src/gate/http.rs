//! The gate's HTTP server: git's smart-HTTP protocol and nothing else.
//!
//! `GET /<repo>[.git]/info/refs?service=git-upload-pack|git-receive-pack`
//! refreshes the repository from its upstream and advertises its refs;
//! `POST /<repo>[.git]/git-upload-pack` and `.../git-receive-pack` run one
//! stateless-RPC exchange. Request bodies stream into git (gzip decoded on
//! the way, in small steps, both sizes capped); git's answer streams back.
//! Protocol v2 is passed through for fetches (`Git-Protocol`). No dumb
//! HTTP, no other paths, no repository the gate was not configured with.

use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::oneshot;

use super::argv::{self, GitCmd};
use super::hook::{HOOK_ENV, Session};
use super::{GateError, Inner, RepoState};

pub(crate) type GateBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A fetch's request (wants and haves) is capped at this.
const MAX_FETCH_REQUEST: u64 = 64 << 20;

pub(crate) fn spawn_conn<S>(inner: Arc<Inner>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| {
            let inner = inner.clone();
            async move { Ok::<_, Infallible>(handle(inner, req).await) }
        });
        // A connection that ends in an error (the bottle hung up, a
        // malformed request) ends only itself; each request's outcome is
        // already audited by `handle`.
        if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
            tracing::debug!(error = %e, "git gate connection ended");
        }
    });
}

/// Tells the watcher to kill git. A closed channel means the watcher has
/// already seen git exit and reaped it: there is nothing left to kill.
fn stop_git(kill_tx: oneshot::Sender<()>) {
    if kill_tx.send(()).is_err() {
        tracing::debug!("git had already exited when the gate stopped it");
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<GateBody> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())).map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Upload,
    Receive,
}

impl Service {
    fn parse(s: &str) -> Option<Service> {
        match s {
            "git-upload-pack" => Some(Service::Upload),
            "git-receive-pack" => Some(Service::Receive),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Service::Upload => "git-upload-pack",
            Service::Receive => "git-receive-pack",
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    InfoRefs { repo: String, service: Service },
    Rpc { repo: String, service: Service },
}

fn route(method: &Method, path: &str, query: Option<&str>) -> Option<Route> {
    let rest = path.strip_prefix('/')?;
    let (repo, what) = rest.split_once('/')?;
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    if repo.is_empty() {
        return None;
    }
    match (method, what) {
        (&Method::GET, "info/refs") => {
            let service = query?.split('&').find_map(|kv| kv.strip_prefix("service=")).and_then(Service::parse)?;
            Some(Route::InfoRefs { repo: repo.to_owned(), service })
        }
        (&Method::POST, s) => Some(Route::Rpc { repo: repo.to_owned(), service: Service::parse(s)? }),
        _ => None,
    }
}

/// The `Git-Protocol` header, when it is the kind git sends
/// (`version=2`, `key=value` pairs joined by `:`).
fn git_protocol(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get("git-protocol")?.to_str().ok()?;
    let ok = v.len() <= 256 && v.chars().all(|c| c.is_ascii_alphanumeric() || "=:._-".contains(c));
    ok.then(|| v.to_owned())
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<GateBody> {
    let Some(r) = route(req.method(), req.uri().path(), req.uri().query()) else {
        return text(StatusCode::NOT_FOUND, "bot-bottle git gate: only git's smart HTTP protocol is served here\n");
    };
    let (Route::InfoRefs { repo, .. } | Route::Rpc { repo, .. }) = &r;
    let Some(state) = inner.repos.get(repo.as_str()) else {
        let known = inner.repos.keys().cloned().collect::<Vec<_>>().join(", ");
        return text(
            StatusCode::NOT_FOUND,
            format!("bot-bottle git gate: no repository `{repo}` here; this bottle's gate serves: {known}\n"),
        );
    };
    match r {
        Route::InfoRefs { service, .. } => info_refs(&inner, state, service, git_protocol(&req)).await,
        Route::Rpc { service, .. } => {
            let expected = format!("application/x-{}-request", service.name());
            if req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
                return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("bot-bottle git gate: expected {expected}\n"));
            }
            let gzip = match req.headers().get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
                None | Some("identity") => false,
                Some("gzip" | "x-gzip") => true,
                Some(other) => {
                    return text(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("bot-bottle git gate: unsupported content encoding `{other}`\n"),
                    );
                }
            };
            let proto = git_protocol(&req);
            rpc(inner.clone(), state, service, req.into_body(), gzip, proto).await
        }
    }
}

/// For a push: the namespace receive-pack works in (`local`'s landed
/// branches). A fetch sees the repository whole.
fn push_env(state: &RepoState, mut c: GitCmd) -> GitCmd {
    if let Some(ns) = state.namespace {
        c = c.env("GIT_NAMESPACE", ns);
    }
    c
}

async fn info_refs(inner: &Inner, state: &RepoState, service: Service, proto: Option<String>) -> Response<GateBody> {
    let op = if service == Service::Upload { "fetch" } else { "push" };
    // A fetch sees the upstream as it is now. A push is checked against the
    // gate's copy and forwarded with a lease on each ref, so an upstream
    // that moved since refuses it (and the agent fetches again): no ssh
    // round trip before a push. `local` is refreshed for both, cheaply,
    // so its landed branches are as the user's repository has them.
    if service == Service::Upload || state.namespace.is_some() {
        let _lock = state.lock.lock().await;
        if let Err(e) = inner.refresh(state).await {
            inner.audit(&state.name, op, Vec::new(), "error", 0, Some(e.to_string()));
            return text(StatusCode::BAD_GATEWAY, format!("bot-bottle git gate: {e}\n"));
        }
    }
    if service == Service::Upload {
        let refs = inner.served_refs(state).await;
        inner.audit(&state.name, "fetch", refs, "allow", 0, None);
    }
    let cmd = match service {
        Service::Upload => argv::upload_pack(&state.dir, true),
        Service::Receive => argv::receive_pack(&state.dir, &inner.hooks, state.policy, true),
    };
    let mut cmd = match cmd {
        Ok(c) if service == Service::Receive => push_env(state, c),
        Ok(c) => c,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("bot-bottle git gate: {e}\n")),
    };
    let v2 = service == Service::Upload && proto.as_deref().is_some_and(|p| p.split(':').any(|kv| kv == "version=2"));
    if let (Service::Upload, Some(p)) = (service, &proto) {
        cmd = cmd.env("GIT_PROTOCOL", p);
    }
    let out = match inner.git.output(&cmd, None).await {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let e = GateError::git("advertising refs", &o);
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("bot-bottle git gate: {e}\n"));
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("bot-bottle git gate: {e}\n")),
    };
    let mut body = Vec::new();
    if !v2 {
        let line = format!("# service={}\n", service.name());
        body.extend_from_slice(format!("{:04x}{line}0000", line.len() + 4).as_bytes());
    }
    body.extend_from_slice(&out.stdout);
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e: Infallible| match e {}).boxed());
    let ct = format!("application/x-{}-advertisement", service.name());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(&ct).unwrap_or(HeaderValue::from_static("")));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Why a request body was not passed on in full.
#[derive(Debug, thiserror::Error)]
enum PumpError {
    #[error("the request is larger than the gate takes ({0} bytes)")]
    TooLarge(u64),
    #[error("the request's gzip encoding is broken")]
    Gzip,
    #[error("reading the request: {0}")]
    Body(String),
    /// git stopped reading; its own answer says why.
    #[error("git stopped reading")]
    Child,
}

impl PumpError {
    /// The answer to a request that was not passed on in full.
    fn response(&self) -> Response<GateBody> {
        let status = match self {
            PumpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        text(status, format!("bot-bottle git gate: {self}\n"))
    }
}

/// Streams the request body into git's stdin (see [`pump_into`]). A request
/// over the cap is still read to its end (thrown away, within bounds), so
/// that the client, still sending, gets the 413 that says why instead of a
/// broken pipe.
///
/// git's stdin comes back with the result: on a refusal the caller answers
/// before closing it, since git at EOF would answer first, with an unpack
/// error that says nothing of the cap.
async fn pump(
    mut body: Incoming,
    gzip: bool,
    cap: u64,
    stdin: ChildStdin,
) -> (Result<(), PumpError>, Option<ChildStdin>) {
    let mut stdin = Some(stdin);
    let result = pump_into(&mut body, gzip, cap, &mut stdin).await;
    if matches!(result, Err(PumpError::TooLarge(_))) {
        drain(&mut body).await;
    }
    // A request read whole: git gets its EOF now.
    if result.is_ok() {
        stdin = None;
    }
    (result, stdin)
}

/// Reads and drops what is left of a refused request: at most 256 MiB or
/// 30 s, whichever comes first; then the connection closes anyway.
async fn drain(body: &mut Incoming) {
    const MAX: u64 = 256 << 20;
    let read = async {
        let mut n = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, |d| d.len() as u64);
            if n > MAX {
                break;
            }
        }
    };
    // Whatever the drain's outcome, the answer is the 413.
    tokio::time::timeout(std::time::Duration::from_secs(30), read).await.ok();
}

/// Streams the request body into git's stdin, decoding gzip in small steps
/// so that no burst of decoded data (a gzip bomb) is ever held whole.
async fn pump_into(body: &mut Incoming, gzip: bool, cap: u64, stdin: &mut Option<ChildStdin>) -> Result<(), PumpError> {
    const STEP: usize = 16 << 10;
    let mut dec = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
    let (mut raw, mut decoded) = (0u64, 0u64);
    // When git stops reading, the rest is still read and counted (not
    // kept), so an oversized request is refused as such whenever git gave up.
    let mut send = async |bytes: &[u8], decoded: &mut u64| -> Result<(), PumpError> {
        *decoded += bytes.len() as u64;
        if *decoded > cap {
            return Err(PumpError::TooLarge(cap));
        }
        if let Some(w) = stdin.as_mut()
            && w.write_all(bytes).await.is_err()
        {
            *stdin = None;
        }
        Ok(())
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| PumpError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        raw += data.len() as u64;
        if raw > cap {
            return Err(PumpError::TooLarge(cap));
        }
        match &mut dec {
            None => send(&data, &mut decoded).await?,
            Some(d) => {
                for piece in data.chunks(STEP) {
                    d.write_all(piece).map_err(|_| PumpError::Gzip)?;
                    let out = std::mem::take(d.get_mut());
                    send(&out, &mut decoded).await?;
                }
            }
        }
    }
    if let Some(mut d) = dec {
        d.try_finish().map_err(|_| PumpError::Gzip)?;
        let out = std::mem::take(d.get_mut());
        send(&out, &mut decoded).await?;
    }
    if stdin.is_none() { Err(PumpError::Child) } else { Ok(()) }
}

/// Streams a child's stdout as a response body, starting with a chunk
/// already read.
struct ChildBody {
    first: Option<Bytes>,
    out: ChildStdout,
    done: bool,
}

impl Body for ChildBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let mut buf = vec![0u8; 64 << 10];
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.out).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    self.done = true;
                    return Poll::Ready(None);
                }
                buf.truncate(n);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
            }
        }
    }
}

/// Owns a git child until it exits: answers its hook when it has one, and
/// kills its whole process group (the hook included) when told to, or when
/// the hook could not be answered.
async fn drive(
    inner: Arc<Inner>,
    state_name: String,
    mut child: Child,
    session: Option<Session>,
    kill: oneshot::Receiver<()>,
) {
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).map(nix::unistd::Pid::from_raw);
    // Only called while the child is not yet reaped, so its group id is
    // still its own.
    let killpg = || {
        if let Some(p) = pgid {
            match nix::sys::signal::killpg(p, nix::sys::signal::Signal::SIGKILL) {
                // ESRCH: the group already ended, which is what we wanted.
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                // The hook still refuses what it was not told to accept;
                // receive-pack running on is what this says.
                Err(e) => tracing::warn!(pgid = p.as_raw(), error = %e, "killing git receive-pack's process group"),
            }
        }
    };
    let mut kill = kill;
    // Holds the session (and its FIFOs) until receive-pack exits: a hook
    // still waiting then sees its FIFO close and refuses.
    let mut held: Option<Session> = None;
    let hook = async move {
        match session {
            Some(mut s) => {
                let r = s.request().await;
                (s, r)
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(hook);
    let mut asked = false;
    let mut kill_closed = false;
    loop {
        tokio::select! {
            _ = child.wait() => break,
            (mut s, r) = &mut hook, if !asked => {
                asked = true;
                let decided = match (r, inner.repos.get(&state_name)) {
                    (Ok(req), Some(repo)) => inner.decide(repo, req).await,
                    (Err(e), _) => (false, format!("bot-bottle git gate: {e}\n")),
                    (Ok(_), None) => (false, "bot-bottle git gate: unknown repository\n".to_owned()),
                };
                if let Err(e) = s.answer(decided.0, &decided.1).await {
                    // The hook refuses whatever it did not read in full;
                    // stopping receive-pack makes sure of it.
                    inner.audit(&state_name, "push", Vec::new(), "error", 0, Some(format!("answering the hook: {e}")));
                    killpg();
                }
                held = Some(s);
            }
            r = &mut kill, if !kill_closed => {
                // A dropped sender means the answer is under way: no kill.
                kill_closed = true;
                if r.is_ok() {
                    killpg();
                    // Reaped here so it leaves no zombie; its status is moot.
                    if let Err(e) = child.wait().await {
                        tracing::warn!(pid = ?child.id(), error = %e, "reaping a killed git receive-pack");
                    }
                    break;
                }
            }
        }
    }
    drop(held);
}

async fn rpc(
    inner: Arc<Inner>,
    state: &RepoState,
    service: Service,
    body: Incoming,
    gzip: bool,
    proto: Option<String>,
) -> Response<GateBody> {
    let fail = |e: GateError| text(StatusCode::INTERNAL_SERVER_ERROR, format!("bot-bottle git gate: {e}\n"));
    // Pushes to one repository run one at a time, refreshes too.
    let lock = match service {
        Service::Receive => Some(state.lock.clone().lock_owned().await),
        Service::Upload => None,
    };
    let (cmd, session, cap) = match service {
        Service::Upload => match argv::upload_pack(&state.dir, false) {
            Ok(mut c) => {
                if let Some(p) = &proto {
                    c = c.env("GIT_PROTOCOL", p);
                }
                (c, None, MAX_FETCH_REQUEST)
            }
            Err(e) => return fail(e.into()),
        },
        Service::Receive => {
            let n = inner.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let session = match Session::open(inner.run.join(format!("push-{n}"))) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            match argv::receive_pack(&state.dir, &inner.hooks, state.policy, false) {
                Ok(c) => (push_env(state, c.env(HOOK_ENV, session.dir())), Some(session), inner.max_push),
                Err(e) => return fail(e.into()),
            }
        }
    };
    let mut command = inner.git.command(&cmd);
    command.stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).process_group(0);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return fail(GateError::io("starting git")(e)),
    };
    let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return fail(GateError::Internal("git's pipes".into()));
    };
    let (kill_tx, kill_rx) = oneshot::channel();
    let name = state.name.clone();
    let driver_inner = inner.clone();
    tokio::spawn(async move {
        drive(driver_inner, name, child, session, kill_rx).await;
        drop(lock);
    });
    let mut pumping = tokio::spawn(pump(body, gzip, cap, stdin));
    let mut first = vec![0u8; 64 << 10];
    let mut pump_done = false;
    let n = loop {
        tokio::select! {
            n = stdout.read(&mut first) => break n,
            r = &mut pumping, if !pump_done => {
                pump_done = true;
                match r {
                    Ok((Ok(()) | Err(PumpError::Child), _)) => {}
                    Ok((Err(e), stdin)) => {
                        stop_git(kill_tx);
                        // git's stdin closes only now that the answer is ours.
                        drop(stdin);
                        return e.response();
                    }
                    Err(_) => {
                        stop_git(kill_tx);
                        return fail(GateError::Internal("the request pump failed".into()));
                    }
                }
            }
        }
    };
    let n = match n {
        // git said nothing: an empty answer (git's probe before a chunked
        // push is a lone flush packet), unless the request itself was bad.
        Ok(0) => {
            if !pump_done
                && let Ok((Err(e), _)) = pumping.await
                && !matches!(e, PumpError::Child)
            {
                stop_git(kill_tx);
                return e.response();
            }
            0
        }
        Err(e) => {
            stop_git(kill_tx);
            return fail(GateError::io(format!("reading git {}", service.name()))(e));
        }
        Ok(n) => n,
    };
    first.truncate(n);
    // The driver owns the child now; the kill switch is no longer needed.
    drop(kill_tx);
    let body = ChildBody { first: Some(Bytes::from(first)), out: stdout, done: false };
    let mut r = Response::new(body.boxed());
    let ct = format!("application/x-{}-result", service.name());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(&ct).unwrap_or(HeaderValue::from_static("")));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_smart_http_routes_are_served() {
        let up = |p: &str, q: Option<&str>| route(&Method::GET, p, q);
        assert_eq!(
            up("/app.git/info/refs", Some("service=git-upload-pack")),
            Some(Route::InfoRefs { repo: "app".into(), service: Service::Upload })
        );
        assert_eq!(
            up("/local/info/refs", Some("x=1&service=git-receive-pack")),
            Some(Route::InfoRefs { repo: "local".into(), service: Service::Receive })
        );
        assert_eq!(
            route(&Method::POST, "/app.git/git-receive-pack", None),
            Some(Route::Rpc { repo: "app".into(), service: Service::Receive })
        );
        for (m, p, q) in [
            (Method::GET, "/app.git/info/refs", None),
            (Method::GET, "/app.git/info/refs", Some("service=git-upload-archive")),
            (Method::GET, "/app.git/HEAD", None),
            (Method::GET, "/app.git/objects/info/packs", None),
            (Method::POST, "/app.git/git-upload-archive", None),
            (Method::PUT, "/app.git/git-receive-pack", None),
            (Method::GET, "/.git/info/refs", Some("service=git-upload-pack")),
            (Method::GET, "/", None),
        ] {
            assert_eq!(route(&m, p, q), None, "{m} {p} {q:?}");
        }
    }
}
