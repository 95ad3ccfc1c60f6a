//! `bot-bottle proxy`: the egress proxy for any process, outside a bottle.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use bot_bottle_manifest::parse_egress;
use bot_bottle_sidecars::{Proxy, ProxyConfig};

use crate::{Failure, chain, failure, usage};

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// Routes file: the manifest's `egress:` schema (`routes:` and `dlp:`).
    #[arg(long, value_name = "FILE")]
    routes: PathBuf,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where the CA lives (created on first run, reused after).
    /// Default: $XDG_STATE_HOME/bot-bottle/proxy.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Audit log (JSON lines), appended to.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Extra CA certificates to trust for upstreams.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Option<PathBuf>,
    /// Name used for the CA and in the audit log.
    #[arg(long, default_value = "standalone")]
    name: String,
}

pub(crate) fn run(args: ProxyArgs) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&args.routes)
        .map_err(|e| usage(format!("error: cannot read routes file {}: {e}", args.routes.display())))?;
    let egress = parse_egress(&args.routes, &text).map_err(|d| usage(format!("{}\nerror: {d}", d.render())))?;
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => crate::launch::state_home()
            .ok_or_else(|| usage("error: no state dir: set --state-dir, XDG_STATE_HOME or HOME"))?
            .join("bot-bottle/proxy"),
    };
    let proxy = Proxy::new(ProxyConfig {
        bottle: args.name,
        state_dir,
        egress,
        upstream_ca: args.upstream_ca,
        audit_log: args.log,
        env: Box::new(|name| std::env::var(name).ok()),
        known_secrets: Vec::new(),
        live: Vec::new(),
        routes_file: Some(args.routes.display().to_string()),
        limits: Default::default(),
        supervise: false,
    })
    .map_err(|e| usage(format!("error: cannot start the proxy: {}", chain(&e))))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failure(format!("error: cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        let listener = Proxy::bind(args.listen).await.map_err(|e| failure(format!("error: {}", chain(&e))))?;
        let addr = listener.local_addr().map_err(|e| failure(format!("error: {e}")))?;
        let ca = proxy.ca_cert_path().display().to_string();
        let url = format!("http://{addr}");
        let mut out =
            format!("listening on {addr}\nCA certificate: {ca}\n# export these in the shell that runs the client:\n");
        let ca_vars = bot_bottle_manifest::CA_BUNDLE_VARS.iter().map(|k| (*k, ca.as_str()));
        let proxy_vars = ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"].map(|k| (k, url.as_str()));
        for (k, v) in proxy_vars.into_iter().chain(ca_vars).chain([("NODE_USE_ENV_PROXY", "1")]) {
            out.push_str(&format!("export {k}={v}\n"));
        }
        let mut stdout = std::io::stdout().lock();
        // Without these lines nobody knows where the proxy listens or which
        // CA to trust: a proxy nobody can use is not started.
        stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| failure(format!("error: printing where the proxy listens: {e}")))?;
        drop(stdout);
        tokio::select! {
            () = proxy.serve(listener) => {}
            _ = tokio::signal::ctrl_c() => {}
            () = terminate() => {}
        }
        Ok(())
    })
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
