//! HTTPS: with a certificate configured the API speaks TLS (certificate made
//! in the test) and, to a client offering `h2` and `http/1.1`, picks
//! `http/1.1`, which it speaks; plain HTTP on that port gets no answer, and a bad key file
//! is refused with an error that names the file and not its contents.

use crate::common;

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

async fn https_get(
    addr: std::net::SocketAddr,
    ca: &rcgen::Certificate,
    path: &str,
    token: &str,
) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Offered as curl, browsers and Go do: the server must pick what it speaks.
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the server's certificate");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "the server offers only the protocol it speaks"
    );
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_api_serves_https_with_a_configured_certificate() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let data = tempfile::tempdir().unwrap();
    let kek = orderlog::crypto::Kek::generate();
    let mut config = common::app::config(&common::unique("orders.events"), data.path(), &kek, 1);
    config.tls = Some((cert_path.clone(), key_path.clone()));
    let app = orderlog::app::App::start(&config).await.unwrap();
    assert_eq!(app.scheme, "https");

    let health = https_get(app.addr, &cert.cert, "/healthz", "").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let missing = https_get(
        app.addr,
        &cert.cert,
        &format!("/v1/orders/{}", uuid::Uuid::now_v7()),
        common::app::CHECKOUT,
    )
    .await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(missing.contains("order_not_found"));

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(15), tcp.read(&mut buf))
        .await
        .unwrap_or(Ok(0))
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    app.stop().await;

    // A key file that is not a key: refused, the file named, its contents not echoed.
    std::fs::write(&key_path, "orderlog-secret-material-not-a-pem-key").unwrap();
    let data2 = tempfile::tempdir().unwrap();
    let mut bad = common::app::config(&common::unique("orders.events"), data2.path(), &kek, 1);
    bad.tls = Some((cert_path, key_path.clone()));
    let err = format!("{:#}", orderlog::app::App::start(&bad).await.unwrap_err());
    assert!(err.contains(&key_path.display().to_string()), "{err}");
    assert!(!err.contains("orderlog-secret-material"), "{err}");
    assert!(
        !err.contains(&kek.to_text()[16..48]),
        "the KEK never appears in errors"
    );
}
