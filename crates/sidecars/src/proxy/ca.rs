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

impl Ca {
    /// Loads the CA from `dir` (`ca.pem`, `ca.key`), or creates it there.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Ca, ProxyError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let (cert_pem, key_pem) = if cert_path.exists() && key_path.exists() {
            let mode = fs::metadata(&key_path).map_err(io_err(&key_path))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(ProxyError::Insecure {
                    path: key_path,
                    why: format!("mode {:o} lets others read the CA key; run chmod 600 on it", mode & 0o777),
                });
            }
            (
                fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?,
                fs::read_to_string(&key_path).map_err(io_err(&key_path))?,
            )
        } else {
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
            let key_pem = key.serialize_pem();
            // Write the key with 0600 from the start: never readable by others, not even briefly.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .map_err(io_err(&key_path))?;
            f.write_all(key_pem.as_bytes()).map_err(io_err(&key_path))?;
            fs::write(&cert_path, cert.pem()).map_err(io_err(&cert_path))?;
            (cert.pem(), key_pem)
        };
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
