//! HTTPS for the API when a certificate is configured: a listener that hands
//! axum connections whose TLS handshake has completed. Handshakes run in
//! their own tasks with a time limit, so one slow client never holds up the
//! others.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, rustls};

const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("TLS private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A rustls server configuration from PEM files (the certificate chain, then
/// the private key). Error messages name the file, never its contents.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.display().to_string(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| TlsError::Config(e.to_string()))?;
    // HTTP/1.1 only: the server speaks nothing else (see `server`).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepted, handshaken TLS connections for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// At most `max_handshakes` handshakes run at once: a socket past that is
    /// closed at once (a client that never sends a ClientHello holds one for
    /// at most the handshake limit).
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        max_handshakes: usize,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(tokio::sync::Semaphore::new(max_handshakes.max(1)));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = tcp.accept() => a,
                    _ = tx.closed() => break,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "TCP accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics::counter!(crate::telemetry::CONNECTIONS_REFUSED).increment(1);
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed."),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// What [`write_test_ca`] wrote or kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertsWritten {
    Written,
    /// The directory already held a certificate set: nothing was changed.
    Kept,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("making the certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("give at least one --host the certificate is for")]
    NoHost,
}

/// File names [`write_test_ca`] writes into its directory.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "server.pem";
pub const KEY_FILE: &str = "server.key";
pub const KEYSTORE_FILE: &str = "server-keystore.pem";

/// Makes a private CA and one server certificate for `hosts` (DNS names or
/// IP addresses), for a deployment with no certificates of its own (a
/// compose setup, a local secure broker), and writes, PEM-encoded:
/// `ca.pem` (the CA), `server.pem` (leaf then CA), `server.key` (PKCS#8) and
/// `server-keystore.pem` (key then chain, as Kafka's `ssl.keystore.type=PEM`
/// reads it). Keys are 0600, certificates 0644. The CA's key is not kept:
/// a new host needs a new set. A directory that already holds `ca.pem` is
/// left as it is.
pub fn write_test_ca(out: &Path, hosts: &[String]) -> Result<CertsWritten, CertsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    if hosts.is_empty() {
        return Err(CertsError::NoHost);
    }
    if out.join(CA_FILE).exists() {
        return Ok(CertsWritten::Kept);
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "orderlog deployment CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, hosts[0].as_str());
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    let chain = format!("{}{}", cert.pem(), ca.pem());
    let key_pem = key.serialize_pem();
    std::fs::create_dir_all(out).map_err(|source| CertsError::Write {
        path: out.display().to_string(),
        source,
    })?;
    // The CA last: its presence says the set is complete.
    for (name, contents, mode) in [
        (KEY_FILE, key_pem.clone(), 0o600),
        (KEYSTORE_FILE, format!("{key_pem}{chain}"), 0o600),
        (CERT_FILE, chain, 0o644),
        (CA_FILE, ca.pem(), 0o644),
    ] {
        let path = out.join(name);
        write_with_mode(&path, contents.as_bytes(), mode).map_err(|source| CertsError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(CertsWritten::Written)
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod cert_tests {
    use super::*;

    #[test]
    fn a_test_ca_set_serves_tls_for_its_hosts_and_is_kept_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        assert_eq!(
            write_test_ca(dir.path(), &hosts).unwrap(),
            CertsWritten::Written
        );
        // The server side loads it as `serve` would.
        server_config(&dir.path().join(CERT_FILE), &dir.path().join(KEY_FILE)).unwrap();
        let keystore = std::fs::read_to_string(dir.path().join(KEYSTORE_FILE)).unwrap();
        assert!(keystore.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(keystore.matches("BEGIN CERTIFICATE").count(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!((mode(KEY_FILE), mode(KEYSTORE_FILE)), (0o600, 0o600));
        assert_eq!(mode(CA_FILE), 0o644);
        let ca = std::fs::read(dir.path().join(CA_FILE)).unwrap();
        assert_eq!(
            write_test_ca(dir.path(), &hosts).unwrap(),
            CertsWritten::Kept
        );
        assert_eq!(std::fs::read(dir.path().join(CA_FILE)).unwrap(), ca);
        assert!(matches!(
            write_test_ca(dir.path(), &[]),
            Err(CertsError::NoHost)
        ));
    }
}
