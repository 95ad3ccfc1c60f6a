//! A minimal HTTPS client for the forges' REST APIs (and the launcher's
//! refresh of a host login's token): one request per connection, system roots (plus an extra CA for tests and private
//! forges), a size cap on the answer and a time limit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

/// Answers larger than this are refused.
const MAX_ANSWER: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("`{0}` is not an https URL the gate can call")]
    Url(String),
    #[error("{host}: {message}")]
    Transport { host: String, message: String },
    #[error("{host}: no answer within {secs}s")]
    Timeout { host: String, secs: u64 },
    #[error("trust roots: {0}")]
    Roots(String),
}

#[derive(Clone, Debug)]
pub struct Https {
    tls: Arc<ClientConfig>,
    timeout: Duration,
}

/// `https://host[:port]/path` split into host, port and path-and-query.
pub(crate) fn split_url(url: &str) -> Result<(String, u16, String), HttpsError> {
    let bad = || HttpsError::Url(url.to_owned());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or_else(bad)?;
        (h.to_owned(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad())?,
        None => 443,
    };
    Ok((host, port, path.to_owned()))
}

impl Https {
    pub fn new(extra_ca: Option<&Path>, timeout: Duration) -> Result<Https, HttpsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            // A system root that does not parse is left out (fewer roots is
            // the closed side), as every client does.
            if let Err(e) = roots.add(c) {
                tracing::debug!(error = %e, "skipping a system root certificate that does not parse");
            }
        }
        if let Some(p) = extra_ca {
            use rustls_pki_types::pem::PemObject;
            let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(p)
                .map_err(|e| HttpsError::Roots(format!("{}: {e}", p.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| HttpsError::Roots(format!("{}: {e}", p.display())))?;
            for c in certs {
                roots.add(c).map_err(|e| HttpsError::Roots(format!("{}: {e}", p.display())))?;
            }
        }
        let mut cfg = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpsError::Roots(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Https { tls: Arc::new(cfg), timeout })
    }

    /// One request; the status and the body of the answer.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), HttpsError> {
        let (host, port, path) = split_url(url)?;
        let secs = self.timeout.as_secs();
        match tokio::time::timeout(self.timeout, self.exchange(method, &host, port, &path, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(HttpsError::Timeout { host, secs }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        host: &str,
        port: u16,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), HttpsError> {
        let fail = |e: &dyn std::fmt::Display| HttpsError::Transport { host: host.to_owned(), message: e.to_string() };
        let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(&e))?;
        let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| fail(&e))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await.map_err(|e| fail(&e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| fail(&e))?;
        let driver = tokio::spawn(conn);
        let authority = if port == 443 { host.to_owned() } else { format!("{host}:{port}") };
        let mut req = Request::builder().method(method).uri(path).header(http::header::HOST, authority);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| fail(&e))?;
        let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
        let status = resp.status().as_u16();
        let data = Limited::new(resp.into_body(), MAX_ANSWER).collect().await.map_err(|e| fail(&*e))?.to_bytes();
        driver.abort();
        Ok((status, data.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_bad_ones_are_refused() {
        assert_eq!(
            split_url("https://api.github.com/repos/o/r/keys?page=2").expect("url"),
            ("api.github.com".into(), 443, "/repos/o/r/keys?page=2".into())
        );
        assert_eq!(split_url("https://127.0.0.1:8443").expect("url"), ("127.0.0.1".into(), 8443, "/".into()));
        assert_eq!(split_url("https://[::1]:9/x").expect("url"), ("::1".into(), 9, "/x".into()));
        for bad in ["http://x/", "https://", "https://u:p@x/", "https://x:port/", "ftp://x"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}
