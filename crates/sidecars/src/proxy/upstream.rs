//! Connections to upstreams: resolve once, check every address, connect to
//! the checked one (no second lookup to rebind), then TLS verified against
//! the system roots plus an optional extra CA, HTTP/2 when offered.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bot_bottle_manifest::{HOST_ALIAS, HostKind, Route, in_reserved_domain};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::body::BoxError;
use super::guard::is_internal;
use super::policy::{Denial, deny};

pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an upstream could not be used.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// Refused by policy (an internal address no route names).
    Denied(Denial),
    /// Could not resolve, connect, or complete TLS: a 502.
    Failed(String),
}

/// Resolves `host` and checks the result. A route that names an IP allows
/// exactly that IP, even an internal one; a name must resolve only to
/// public addresses.
///
/// The host's alias (`host.bot-bottle.internal`) is never resolved: a route
/// naming it leads to the host's `127.0.0.1` on the route's port and
/// nowhere else, so no DNS answer can point it at another address. Any
/// other name in bot-bottle's domain leads nowhere.
pub(crate) async fn resolve_checked(host: &str, port: u16, route: &Route) -> Result<SocketAddr, UpstreamError> {
    match &route.host.kind {
        HostKind::Ip(ip) => return Ok(SocketAddr::new(*ip, port)),
        HostKind::Exact(name) if name == HOST_ALIAS && host == HOST_ALIAS && route.host.port == Some(port) => {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
        _ => {}
    }
    if in_reserved_domain(host) {
        return Err(UpstreamError::Denied(deny(
            "host",
            format!("{host}:{port} is not reachable: only routes `{HOST_ALIAS}:PORT` lead to the host"),
        )));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Err(UpstreamError::Denied(deny("ip-literal", format!("{host} is an IP address no route names"))));
    }
    let addrs: Vec<SocketAddr> = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| UpstreamError::Failed(format!("resolving {host} timed out")))?
        .map_err(|e| UpstreamError::Failed(format!("cannot resolve {host}: {e}")))?
        .collect();
    if let Some(bad) = addrs.iter().find(|a| is_internal(a.ip())) {
        return Err(UpstreamError::Denied(deny(
            "internal-address",
            format!("{host} resolves to {}, an internal address; only a route naming that address allows it", bad.ip()),
        )));
    }
    addrs.first().copied().ok_or_else(|| UpstreamError::Failed(format!("{host} has no addresses")))
}

async fn tcp(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::Failed(format!("connecting to {addr} timed out")))?
        .map_err(|e| UpstreamError::Failed(format!("cannot connect to {addr}: {e}")))?;
    crate::peer::peer_step("set_nodelay upstream", s.set_nodelay(true));
    Ok(s)
}

/// A ready-to-use upstream connection.
pub(crate) enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

impl Sender {
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    /// Waits until the connection can take a request; `false` if it is gone.
    pub(crate) async fn ready(&mut self) -> bool {
        match self {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok(),
        }
    }

    pub(crate) async fn send(&mut self, req: Request<ProxyBody>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// TLS to `host` over an open connection, verified by `cfg`, with a timeout.
async fn handshake_tls(
    cfg: &Arc<ClientConfig>,
    host: &str,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    // The host's services are verified as `localhost`, the name local
    // development certificates are issued for.
    let host = if host == HOST_ALIAS { "localhost" } else { host };
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_owned())
            .map_err(|e| UpstreamError::Failed(format!("bad server name {host}: {e}")))?,
    };
    tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(cfg.clone()).connect(name, stream))
        .await
        .map_err(|_| UpstreamError::Failed(format!("TLS handshake with {host} timed out")))?
        .map_err(|e| UpstreamError::Failed(format!("TLS with {host} failed: {e}")))
}

/// An upstream TLS stream on which a TCP close without TLS `close_notify`
/// reads as the end of the stream. Many servers close that way after a
/// response delimited by the connection's close (legal in HTTP/1.1);
/// rustls reports it as an error, which would cut such a response short.
/// Framed responses are unaffected: hyper still knows where they end.
pub(crate) struct EofOk<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for EofOk<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EofOk<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    // Passed through: without them hyper takes the stream for one that
    // cannot write several buffers at once, and copies every body byte
    // into a write buffer of its own before TLS copies it again.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

pub(crate) async fn connect_tls(
    tls: &Arc<ClientConfig>,
    host: &str,
    addr: SocketAddr,
) -> Result<Sender, UpstreamError> {
    let tls = handshake_tls(tls, host, tcp(addr).await?).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(EofOk(tls));
    if h2 {
        let (send, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| UpstreamError::Failed(format!("HTTP/2 with {host} failed: {e}")))?;
        tokio::spawn(conn);
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = http1::handshake(io)
            .await
            .map_err(|e| UpstreamError::Failed(format!("HTTP/1.1 with {host} failed: {e}")))?;
        tokio::spawn(conn);
        Ok(Sender::H1(send))
    }
}

pub(crate) async fn connect_plain(host: &str, addr: SocketAddr) -> Result<Sender, UpstreamError> {
    let io = TokioIo::new(tcp(addr).await?);
    let (send, conn) =
        http1::handshake(io).await.map_err(|e| UpstreamError::Failed(format!("HTTP/1.1 with {host} failed: {e}")))?;
    tokio::spawn(conn);
    Ok(Sender::H1(send))
}

pub(crate) async fn connect_raw(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    tcp(addr).await
}

/// A dedicated HTTP/1.1 connection whose driver allows protocol upgrades
/// (WebSocket). `tls` is `None` for plain HTTP.
pub(crate) async fn connect_upgradable(
    tls: Option<&Arc<ClientConfig>>,
    host: &str,
    addr: SocketAddr,
) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
    let stream = tcp(addr).await?;
    let failed = |e: hyper::Error| UpstreamError::Failed(format!("HTTP/1.1 with {host} failed: {e}"));
    match tls {
        Some(cfg) => {
            let tls = handshake_tls(cfg, host, stream).await?;
            let (send, conn) = http1::handshake(TokioIo::new(EofOk(tls))).await.map_err(failed)?;
            tokio::spawn(conn.with_upgrades());
            Ok(send)
        }
        None => {
            let (send, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(failed)?;
            tokio::spawn(conn.with_upgrades());
            Ok(send)
        }
    }
}

#[cfg(test)]
mod tests {
    use bot_bottle_manifest::{HostPattern, TlsMode};

    use super::*;

    fn route(kind: HostKind, port: Option<u16>) -> Route {
        Route {
            host: HostPattern { kind, port },
            paths: Vec::new(),
            methods: Vec::new(),
            inject: None,
            tls: TlsMode::Inspect,
            websocket: false,
            provider: false,
        }
    }

    /// The alias is never looked up (it resolves nowhere here, so a lookup
    /// would fail): it is the host's 127.0.0.1 on the route's port.
    #[tokio::test]
    async fn the_host_alias_is_loopback_without_a_lookup() {
        let r = route(HostKind::Exact(HOST_ALIAS.into()), Some(8080));
        let a = resolve_checked(HOST_ALIAS, 8080, &r).await.ok();
        assert_eq!(a, Some("127.0.0.1:8080".parse().expect("addr")));
    }

    /// Other names in bot-bottle's domain lead nowhere, even with a route
    /// built around the manifest's checks.
    #[tokio::test]
    async fn other_reserved_names_lead_nowhere() {
        for name in ["bot-bottle.internal", "x.bot-bottle.internal", "x.host.bot-bottle.internal"] {
            let r = route(HostKind::Exact(name.into()), Some(8080));
            let got = resolve_checked(name, 8080, &r).await;
            assert!(matches!(got, Err(UpstreamError::Denied(ref d)) if d.rule == "host"), "{name}: {got:?}");
        }
        let r = route(HostKind::Suffix("bot-bottle.internal".into()), Some(8080));
        let got = resolve_checked("x.bot-bottle.internal", 8080, &r).await;
        assert!(matches!(got, Err(UpstreamError::Denied(_))), "{got:?}");
    }
}
