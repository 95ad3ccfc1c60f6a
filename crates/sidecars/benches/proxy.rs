//! Proxy benchmarks and the load test, all against peers in the same run.
//!
//! `cargo bench -p bot-bottle-sidecars --bench proxy -- --bin PATH [--mitmdump PATH] [--load]`
//!
//! A TLS upstream runs in this process (its own test CA). The proxies under
//! test run as separate processes: `bot-bottle proxy` (PATH) and, when
//! given, `mitmdump` with an equivalent allowlist addon. The client is this
//! process: keep-alive HTTPS through a CONNECT tunnel, or direct.
//!
//! Reports (JSON lines, then a summary): small-request throughput with 8
//! connections and latency with 1, for direct / bot-bottle / mitmdump; a
//! 100 MB upload direct vs through bot-bottle with DLP on; bot-bottle's RSS
//! holding 100 open tunnels. `--load`: 1,000 concurrent connections and
//! 100,000 requests through bot-bottle, counting errors and peak RSS.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a benchmark reports on stdout")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Pki {
    ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "bench upstream CA");
    let ca = p.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::from_ca_cert_pem(&ca.pem(), ca_key).expect("issuer");
    let key = KeyPair::generate().expect("key");
    let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    sp.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = sp.signed_by(&key, &issuer).expect("leaf");
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write");
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
        .expect("cert");
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pki { ca_file, server: Arc::new(server) }
}

async fn upstream(cfg: Arc<rustls::ServerConfig>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from(format!(
                        "ok {n}"
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    addr
}

#[derive(Clone)]
struct Target {
    proxy: Option<SocketAddr>,
    upstream: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

fn client_tls(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca file") {
        roots.add(c.expect("cert")).expect("add");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type Conn = http1::SendRequest<Body>;

async fn open(t: &Target) -> Result<Conn, String> {
    let mut tcp = TcpStream::connect(t.proxy.unwrap_or(t.upstream)).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    if t.proxy.is_some() {
        let req = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", t.upstream);
        tcp.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
                return Err("proxy closed".into());
            }
            buf.push(b[0]);
        }
        if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
            return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&buf)));
        }
    }
    let name = ServerName::IpAddress(t.upstream.ip().into());
    let tls = tokio_rustls::TlsConnector::from(t.tls.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (send, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// A request body: `remaining` bytes of text, 64 KiB at a time.
struct Body {
    remaining: usize,
    chunk: Bytes,
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len());
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

fn get(t: &Target) -> Request<Body> {
    Request::builder()
        .uri("/small")
        .header("host", t.upstream.to_string())
        .body(Body { remaining: 0, chunk: Bytes::new() })
        .expect("request")
}

struct Stats {
    requests: usize,
    errors: usize,
    seconds: f64,
    lat_us: Vec<u64>,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// `conns` keep-alive connections sending small GETs for `dur` (or `per_conn` each).
async fn load(t: &Target, conns: usize, dur: Duration, per_conn: Option<usize>) -> Stats {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut conn: Option<Conn> = None;
            let mut done = 0usize;
            while per_conn.map_or(start.elapsed() < dur, |n| done < n) {
                done += 1;
                if conn.is_none() {
                    match open(&t).await {
                        Ok(c) => conn = Some(c),
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let t0 = Instant::now();
                let ok = match c.send_request(get(&t)).await {
                    Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                    conn = None;
                }
            }
            (lat, errors)
        }));
    }
    let mut lat_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("task");
        lat_us.extend(l);
        errors += e;
    }
    lat_us.sort_unstable();
    Stats { requests: lat_us.len(), errors, seconds: start.elapsed().as_secs_f64(), lat_us }
}

async fn upload(t: &Target, bytes: usize) -> f64 {
    let mut c = open(t).await.expect("open");
    let chunk: Bytes = "The quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet.\n".repeat(900).into();
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", t.upstream.to_string())
        .header("content-length", bytes.to_string())
        .body(Body { remaining: bytes, chunk })
        .expect("request");
    let t0 = Instant::now();
    let r = c.send_request(req).await.expect("upload");
    let body = r.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, Bytes::from(format!("ok {bytes}")), "the upstream got every byte");
    bytes as f64 / 1e6 / t0.elapsed().as_secs_f64()
}

/// Five 100 MB uploads each way, alternating so that both see the same
/// machine; the medians are compared (single runs swing widely on a shared
/// 2-core machine).
async fn uploads(direct: &Target, ours: &Target, proxy_pid: u32) -> (f64, f64) {
    let (mut d, mut o) = (Vec::new(), Vec::new());
    let (mut cpu_direct, mut cpu_ours_bench, mut cpu_ours_proxy) = (0.0, 0.0, 0.0);
    for _ in 0..5 {
        let b0 = cpu_secs("self");
        d.push(upload(direct, 100_000_000).await);
        let b1 = cpu_secs("self");
        let p1 = cpu_secs(&proxy_pid.to_string());
        o.push(upload(ours, 100_000_000).await);
        cpu_direct += b1 - b0;
        cpu_ours_bench += cpu_secs("self") - b1;
        cpu_ours_proxy += cpu_secs(&proxy_pid.to_string()) - p1;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (md, mo) = (median(&mut d), median(&mut o));
    println!(
        "{{\"case\": \"upload 100 MB, median of 5\", \"direct_mb_s\": {md:.1}, \"bot_bottle_mb_s\": {mo:.1}, \"ratio\": {:.2}, \"direct_runs\": {d:.0?}, \"bot_bottle_runs\": {o:.0?}}}",
        mo / md
    );
    // CPU seconds per 100 MB: the client and upstream (this process), and the proxy.
    println!(
        "{{\"case\": \"upload CPU per 100 MB\", \"direct_client_and_upstream_s\": {:.3}, \"proxied_client_and_upstream_s\": {:.3}, \"proxy_s\": {:.3}}}",
        cpu_direct / 5.0,
        cpu_ours_bench / 5.0,
        cpu_ours_proxy / 5.0
    );
    (md, mo)
}

/// RSS with 100 tunnels open at once, each having made a request.
async fn rss_tunnels(t: &Target, pid: u32) -> u64 {
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut c = open(t).await.expect("open");
        let r = c.send_request(get(t)).await.expect("request");
        let _ = r.into_body().collect().await;
        held.push(c);
    }
    let rss = rss_kb(pid);
    println!("{{\"case\": \"rss with 100 open tunnels\", \"rss_kb\": {rss}}}");
    rss
}

/// User + system CPU seconds of a process (`self` or a pid).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime 11, stime 12 (clock ticks of 100 Hz).
    (ticks(11) + ticks(12)) / 100.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn wait_port(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listening on {port}");
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_ours(bin: &Path, dir: &Path, routes: &Path, upstream_ca: &Path, port: u16) -> Proc {
    let child = Command::new(bin)
        .args(["proxy", "--routes"])
        .arg(routes)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(dir.join("ours"))
        .arg("--upstream-ca")
        .arg(upstream_ca)
        .stdout(Stdio::null())
        .spawn()
        .expect("start bot-bottle proxy");
    Proc(child)
}

fn start_mitm(bin: &Path, dir: &Path, upstream: SocketAddr, upstream_ca: &Path, port: u16) -> Proc {
    let addon = dir.join("allow.py");
    std::fs::write(
        &addon,
        format!(
            "from mitmproxy import http\n\
             ALLOWED = {{('{h}', {p})}}\n\
             def http_connect(flow):\n    if (flow.request.host, flow.request.port) not in ALLOWED:\n        flow.response = http.Response.make(403, b'denied')\n\
             def request(flow):\n    if (flow.request.host, flow.request.port) not in ALLOWED:\n        flow.response = http.Response.make(403, b'denied')\n",
            h = upstream.ip(),
            p = upstream.port()
        ),
    )
    .expect("addon");
    let child = Command::new(bin)
        .args(["-q", "--listen-host", "127.0.0.1", "--listen-port", &port.to_string()])
        .args(["--set", &format!("confdir={}", dir.join("mitm").display())])
        .args(["--set", &format!("ssl_verify_upstream_trusted_ca={}", upstream_ca.display())])
        .arg("-s")
        .arg(&addon)
        .stdout(Stdio::null())
        .spawn()
        .expect("start mitmdump");
    Proc(child)
}

fn report(name: &str, s: &Stats) {
    println!(
        "{{\"case\": \"{name}\", \"requests\": {}, \"errors\": {}, \"rps\": {:.0}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        s.requests,
        s.errors,
        s.rps(),
        s.pct(0.5),
        s.pct(0.99)
    );
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let bin = PathBuf::from(arg("--bin").unwrap_or_else(|| "target/release/bot-bottle".into()));
    let secs: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5);
    let dur = Duration::from_secs(secs);
    let load_test = std::env::args().any(|a| a == "--load");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let pki = pki(dir);
    let up = upstream(pki.server.clone()).await;
    let routes = dir.join("routes.yaml");
    std::fs::write(&routes, format!("routes:\n  - host: \"127.0.0.1:{}\"\n", up.port())).expect("routes");

    let port = free_port();
    let ours = start_ours(&bin, dir, &routes, &pki.ca_file, port);
    wait_port(port).await;
    let ours_t =
        Target { proxy: Some(([127, 0, 0, 1], port).into()), upstream: up, tls: client_tls(&dir.join("ours/ca.pem")) };
    let direct = Target { proxy: None, upstream: up, tls: client_tls(&pki.ca_file) };

    if load_test {
        let pid = ours.0.id();
        let before = rss_kb(pid);
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
        let p2 = peak.clone();
        let sampler = tokio::spawn(async move {
            loop {
                p2.fetch_max(rss_kb(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        // Two rounds: memory is bounded if the second round does not raise the peak much.
        let mut peaks = Vec::new();
        for round in 1..=2 {
            let s = load(&ours_t, 1000, Duration::ZERO, Some(100)).await;
            report(&format!("load round {round}: 1000 connections x 100 requests via bot-bottle"), &s);
            assert_eq!(s.errors, 0, "load test: errors");
            assert_eq!(s.requests, 100_000, "load test: every request answered");
            peaks.push(peak.load(std::sync::atomic::Ordering::Relaxed));
        }
        sampler.abort();
        let after = rss_kb(pid);
        println!(
            "{{\"case\": \"load rss\", \"rss_before_kb\": {before}, \"rss_peak_round1_kb\": {}, \"rss_peak_round2_kb\": {}, \"rss_after_kb\": {after}}}",
            peaks[0], peaks[1]
        );
        assert!(peaks[1] <= peaks[0] + peaks[0] / 5, "memory grew between rounds: {peaks:?}");
        return;
    }

    if arg("--case").as_deref() == Some("rss") {
        // Where the 100-tunnel figure comes from, step by step.
        let pid = ours.0.id();
        println!("{{\"case\": \"rss at rest\", \"rss_kb\": {}}}", rss_kb(pid));
        let mut c = open(&ours_t).await.expect("open");
        let r = c.send_request(get(&ours_t)).await.expect("request");
        let _ = r.into_body().collect().await;
        drop(c);
        println!("{{\"case\": \"rss after one request (detector built)\", \"rss_kb\": {}}}", rss_kb(pid));
        uploads(&direct, &ours_t, pid).await;
        println!("{{\"case\": \"rss after the uploads\", \"rss_kb\": {}}}", rss_kb(pid));
        rss_tunnels(&ours_t, pid).await;
        return;
    }
    if arg("--case").as_deref() == Some("upload") {
        uploads(&direct, &ours_t, ours.0.id()).await;
        return;
    }

    let mitm = match arg("--mitmdump") {
        Some(m) => {
            let port = free_port();
            let p = start_mitm(Path::new(&m), dir, up, &pki.ca_file, port);
            wait_port(port).await;
            let ca = dir.join("mitm/mitmproxy-ca-cert.pem");
            for _ in 0..100 {
                if ca.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some((p, Target { proxy: Some(([127, 0, 0, 1], port).into()), upstream: up, tls: client_tls(&ca) }))
        }
        None => None,
    };

    // Warm up every path (TLS session setup, leaf minting, JIT-less caches).
    for t in [Some(&direct), Some(&ours_t), mitm.as_ref().map(|m| &m.1)].into_iter().flatten() {
        let _ = load(t, 2, Duration::from_millis(500), None).await;
    }
    let mut results = Vec::new();
    for (name, t) in
        [("direct", Some(&direct)), ("bot-bottle", Some(&ours_t)), ("mitmdump", mitm.as_ref().map(|m| &m.1))]
    {
        let Some(t) = t else { continue };
        let thr = load(t, 8, dur, None).await;
        report(&format!("throughput 8 conns: {name}"), &thr);
        let lat = load(t, 1, dur, None).await;
        report(&format!("latency 1 conn: {name}"), &lat);
        results.push((name, thr, lat));
    }

    let (up_direct, up_ours) = uploads(&direct, &ours_t, ours.0.id()).await;

    let rss = rss_tunnels(&ours_t, ours.0.id()).await;

    let by = |n: &str| results.iter().find(|r| r.0 == n);
    if let (Some(d), Some(o)) = (by("direct"), by("bot-bottle")) {
        println!("\nsummary");
        println!(
            "  bot-bottle: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms (1 conn)",
            o.1.rps(),
            o.2.pct(0.5),
            o.2.pct(0.99)
        );
        println!(
            "  direct:     {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms (1 conn)",
            d.1.rps(),
            d.2.pct(0.5),
            d.2.pct(0.99)
        );
        println!("  added p50 over direct: {:.3} ms", o.2.pct(0.5) - d.2.pct(0.5));
        if let Some(m) = by("mitmdump") {
            println!(
                "  mitmdump:   {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms (1 conn)",
                m.1.rps(),
                m.2.pct(0.5),
                m.2.pct(0.99)
            );
            println!("  throughput ratio bot-bottle / mitmdump: {:.1}x", o.1.rps() / m.1.rps());
        }
        println!("  upload through bot-bottle with DLP / direct: {:.2}x", up_ours / up_direct);
        println!("  RSS with 100 open tunnels: {:.1} MB", rss as f64 / 1024.0);
    }
    drop(mitm);
}
