//! The per-bottle certificate authority and the leaf certificates it mints.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ProxyError;

/// How long a leaf certificate is valid, and how long it is reused.
const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const LEAF_REUSE: Duration = Duration::from_secs(12 * 3600);
const CA_LIFETIME_DAYS: i64 = 365;
/// Bound on cached leaves: a wildcard route lets the agent name endless
/// hosts, and each must not cost memory forever.
const MAX_LEAVES: usize = 1024;

/// A bottle's CA: created once in the bottle's state dir (key mode 0600),
/// loaded again on restart so the sandbox's trust store stays valid.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    cert_path: PathBuf,
    /// One key for every leaf: minting is then a signature, not a keygen.
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert_path", &self.cert_path).finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProxyError + '_ {
    move |source| ProxyError::Io { path: path.to_path_buf(), source }
}

const CERT_BEGIN: &str = "-----BEGIN CERTIFICATE-----";

/// A new self-signed CA for bottle `name`: its certificate and key as PEM.
fn generate(name: &str) -> Result<(String, String), ProxyError> {
    let key = KeyPair::generate().map_err(ProxyError::cert)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(ProxyError::cert)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("bot-bottle {name} CA"));
    dn.push(DnType::OrganizationName, "bot-bottle");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(CA_LIFETIME_DAYS);
    let cert = p.self_signed(&key).map_err(ProxyError::cert)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Ca {
    /// Loads the CA from `dir`, or creates it there.
    ///
    /// `ca.key` (mode 0600) holds the key *and* its certificate, written to
    /// a temporary file and renamed into place: one rename commits both, so
    /// a crash never leaves a key without its certificate. `ca.pem`, the
    /// certificate alone for trust stores, is rewritten from it whenever it
    /// is missing or differs. A key-only `ca.key` (the older layout) is used
    /// with `ca.pem` when both are there; without `ca.pem` it is what a crash
    /// between the two writes left, and a new CA replaces it.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Ca, ProxyError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let stored = match fs::symlink_metadata(&key_path) {
            Ok(md) => {
                let mode = md.permissions().mode();
                if !md.is_file() || mode & 0o077 != 0 {
                    return Err(ProxyError::Insecure {
                        path: key_path,
                        why: format!("mode {:o} lets others read the CA key; run chmod 600 on it", mode & 0o777),
                    });
                }
                let text = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
                match text.find(CERT_BEGIN) {
                    Some(at) => Some((text[at..].to_owned(), text[..at].to_owned())),
                    None if cert_path.exists() => {
                        Some((fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?, text))
                    }
                    None => {
                        tracing::warn!(path = %key_path.display(), "a CA key without its certificate (an interrupted start); making a new CA");
                        None
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        let (cert_pem, key_pem) = match stored {
            Some(pair) => pair,
            None => {
                let (cert_pem, key_pem) = generate(name)?;
                // Key and certificate together, 0600 from the start, then one rename.
                let tmp = dir.join("ca.key.tmp");
                match fs::remove_file(&tmp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
                    _ => {}
                }
                let mut f =
                    fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
                f.write_all(format!("{key_pem}{cert_pem}").as_bytes()).map_err(io_err(&tmp))?;
                f.sync_all().map_err(io_err(&tmp))?;
                fs::rename(&tmp, &key_path).map_err(io_err(&key_path))?;
                (cert_pem, key_pem)
            }
        };
        if fs::read_to_string(&cert_path).ok().as_deref() != Some(cert_pem.as_str()) {
            let tmp = dir.join("ca.pem.tmp");
            fs::write(&tmp, &cert_pem).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &cert_path).map_err(io_err(&cert_path))?;
        }
        let key = KeyPair::from_pem(&key_pem).map_err(ProxyError::cert)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(ProxyError::cert)?;
        let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| ProxyError::Cert(format!("CA certificate: {e}")))?;
        Ok(Ca {
            issuer,
            ca_der,
            cert_path,
            leaf_key: KeyPair::generate().map_err(ProxyError::cert)?,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate file, for the sandbox's trust store.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A TLS server config presenting a leaf for `host` (a DNS name or an
    /// IP address), minted on first use and cached.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, ProxyError> {
        let mut leaves = self.leaves.lock().map_err(|_| ProxyError::Cert("certificate cache poisoned".into()))?;
        if let Some((made, cfg)) = leaves.get(host)
            && made.elapsed() < LEAF_REUSE
        {
            return Ok(cfg.clone());
        }
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(ProxyError::cert)?),
        };
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![san];
        p.distinguished_name.push(DnType::CommonName, host);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::seconds(LEAF_LIFETIME.as_secs() as i64);
        let leaf = p.signed_by(&self.leaf_key, &self.issuer).map_err(ProxyError::cert)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut cfg = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(ProxyError::tls)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], key)
            .map_err(ProxyError::tls)?;
        // HTTP/1.0 too: a client that offers only it (curl --http1.0) would
        // otherwise fail the handshake; hyper answers it close-delimited.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        let cfg = Arc::new(cfg);
        if leaves.len() >= MAX_LEAVES {
            leaves.retain(|_, (made, _)| made.elapsed() < LEAF_REUSE / 4);
            if leaves.len() >= MAX_LEAVES {
                leaves.clear();
            }
        }
        leaves.insert(host.to_owned(), (Instant::now(), cfg.clone()));
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_of(dir: &Path) -> String {
        fs::read_to_string(dir.join("ca.pem")).expect("ca.pem")
    }

    #[test]
    fn a_crash_between_key_and_certificate_recovers() {
        let d = tempfile::tempdir().expect("tempdir");
        // What the old two-write layout left when killed between its writes:
        // a key, no certificate.
        let (_, key_pem) = generate("b").expect("generate");
        let mut f =
            fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(d.path().join("ca.key")).expect("key");
        f.write_all(key_pem.as_bytes()).expect("write");
        let ca = Ca::load_or_create(d.path(), "b").expect("a new CA replaces the orphaned key");
        ca.server_config("example.com").expect("it signs");
        let pem = pem_of(d.path());
        // A half-written temporary file from a crash is ignored; a lost
        // ca.pem is rewritten from the key file, the same certificate.
        fs::write(d.path().join("ca.key.tmp"), "half").expect("write");
        fs::remove_file(d.path().join("ca.pem")).expect("rm");
        Ca::load_or_create(d.path(), "b").expect("reload");
        assert_eq!(pem_of(d.path()), pem, "same CA after recovery");
        let mode = fs::metadata(d.path().join("ca.key")).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_older_layout_still_loads() {
        let d = tempfile::tempdir().expect("tempdir");
        let (cert_pem, key_pem) = generate("b").expect("generate");
        let mut f =
            fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(d.path().join("ca.key")).expect("key");
        f.write_all(key_pem.as_bytes()).expect("write");
        fs::write(d.path().join("ca.pem"), &cert_pem).expect("write");
        Ca::load_or_create(d.path(), "b").expect("load");
        assert_eq!(pem_of(d.path()), cert_pem);
    }
}
