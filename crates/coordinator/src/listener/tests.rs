//! The listener with real sockets on loopback: caps per source and in all,
//! the TLS handshake deadline, the unauthenticated deadline and its exemption,
//! mTLS, and the limits' arithmetic. Every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::*;

/// Generous for a loaded 2-core machine; the deadlines under test are far shorter.
const BOUND: Duration = Duration::from_secs(5);

fn limits(per_ip: u32, total: u32, idle: Duration) -> ConnectionLimits {
    ConnectionLimits {
        tls_handshake_timeout: Duration::from_millis(300),
        unauthenticated_idle_timeout: idle,
        max_connections_per_ip: per_ip,
        max_connections: total,
    }
}

/// A listener on 127.0.0.1:0 whose admitted connections are served by
/// `serve` (each on its own task); returns its address and admission counts.
async fn start(
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
) -> (
    SocketAddr,
    Arc<Admission>,
    mpsc::UnboundedReceiver<ConnInfo>,
    CancellationToken,
) {
    let total = limits.max_connections;
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), tls, limits, total)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let admission = listener.admission();
    let stop = CancellationToken::new();
    let mut incoming = listener.incoming(stop.clone());
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(conn)) = incoming.next().await {
            let _ = seen_tx.send(conn.info().clone());
            tokio::spawn(echo(conn));
        }
    });
    (addr, admission, seen_rx, stop)
}

/// What the HTTP/2 server does with a connection, reduced to its I/O: read
/// (and answer) until an error or EOF, then drop it.
async fn echo(mut conn: Conn) {
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap();
    tokio::time::timeout(BOUND, s.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Whether the server closed (FIN or RST) within `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// The connection answers an echo round trip.
async fn answers(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(BOUND, s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_source_over_its_cap_is_reset_at_once_and_other_sources_still_get_in() {
    let (addr, admission, _seen, _stop) =
        start(None, limits(3, 100, Duration::from_secs(60))).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", addr).await);
    }
    let src2: IpAddr = "127.0.0.2".parse().unwrap();
    eventually("3 admitted from 127.0.0.2", || {
        admission.open_from(src2) == 3
    })
    .await;
    for _ in 0..2 {
        let mut over = connect_from("127.0.0.2", addr).await;
        assert!(
            closed_within(&mut over, BOUND).await,
            "a 4th connection from the same source is closed"
        );
    }
    assert_eq!(admission.open_from(src2), 3);
    for s in &mut held {
        assert!(answers(s).await, "the admitted ones keep working");
    }
    let mut other = connect_from("127.0.0.3", addr).await;
    assert!(answers(&mut other).await, "another source is not affected");

    // A slot is given back when its connection closes.
    drop(held.pop());
    eventually("one slot given back", || admission.open_from(src2) == 2).await;
    let mut again = connect_from("127.0.0.2", addr).await;
    assert!(answers(&mut again).await);
}

#[tokio::test]
async fn the_global_cap_refuses_every_source_once_full_and_admits_again_after_a_close() {
    let (addr, admission, _seen, _stop) = start(None, limits(10, 4, Duration::from_secs(60))).await;
    let mut held = Vec::new();
    for src in ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        held.push(connect_from(src, addr).await);
    }
    eventually("4 open", || admission.open() == 4).await;
    let mut over = connect_from("127.0.0.5", addr).await;
    assert!(closed_within(&mut over, BOUND).await, "over the global cap");
    drop(held.remove(0));
    eventually("a slot free", || admission.open() == 3).await;
    let mut now_in = connect_from("127.0.0.5", addr).await;
    assert!(answers(&mut now_in).await);
}

#[tokio::test]
async fn an_unauthenticated_connection_is_closed_at_its_deadline_and_a_marked_one_is_not() {
    let idle = Duration::from_millis(400);
    let (addr, admission, mut seen, _stop) = start(None, limits(10, 100, idle)).await;
    // Every deadline is at least `idle` after this (they count from accept).
    let started = tokio::time::Instant::now();
    let mut silent = connect_from("127.0.0.2", addr).await;
    let mut talking_only = connect_from("127.0.0.2", addr).await;
    let mut authenticated = connect_from("127.0.0.3", addr).await;
    let marked_port = authenticated.local_addr().unwrap();
    for _ in 0..3 {
        let info = tokio::time::timeout(BOUND, seen.recv())
            .await
            .unwrap()
            .unwrap();
        if info.remote_addr() == marked_port {
            info.mark_authenticated();
            assert!(info.is_authenticated());
        }
    }
    eventually("one of three authenticated", || {
        admission.open() == 3 && admission.unauthenticated() == 2
    })
    .await;

    // Traffic is not authentication: talking keeps no connection open.
    assert!(answers(&mut talking_only).await);
    assert!(closed_within(&mut silent, BOUND).await, "silent one closed");
    assert!(
        closed_within(&mut talking_only, BOUND).await,
        "talking one closed"
    );
    assert!(started.elapsed() >= idle, "not before the deadline");
    // Well past the deadline the authenticated one still answers.
    tokio::time::sleep(idle * 2).await;
    assert!(answers(&mut authenticated).await);
    eventually("only the authenticated one left", || {
        admission.open() == 1 && admission.unauthenticated() == 0
    })
    .await;
    drop(authenticated);
    eventually("none left", || admission.open() == 0).await;
}

// ------------------------------------------------------------------ TLS

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_pem = ca.self_signed(&key).unwrap().pem();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_pem,
            issuer: Issuer::new(ca, key),
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A leaf signed by the CA: (chain PEM, key PEM).
    fn leaf(&self, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The server's files, and `client_ca` when `mtls`.
    fn server(&self, mtls: bool) -> Tls {
        let (cert, key) = self.leaf(
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(self.path("server.pem"), cert).unwrap();
        std::fs::write(self.path("server.key"), key).unwrap();
        std::fs::write(self.path("ca.pem"), &self.ca_pem).unwrap();
        Tls {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: mtls.then(|| self.path("ca.pem")),
        }
    }

    fn client(&self, identity: Option<(String, String)>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let b = rustls::ClientConfig::builder().with_root_certificates(roots);
        let mut config = match identity {
            None => b.with_no_client_auth(),
            Some((cert, key)) => b
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    src: &str,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(src, addr).await;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(BOUND, connector.connect(name, tcp))
        .await
        .expect("handshake ends in time")
}

#[tokio::test]
async fn an_unfinished_tls_handshake_is_dropped_at_its_deadline_without_delaying_others() {
    let pki = Pki::new();
    let acceptor = tls_acceptor(&pki.server(false)).unwrap();
    let (addr, admission, mut seen, _stop) =
        start(Some(acceptor), limits(10, 100, Duration::from_secs(60))).await;
    let mut silent = connect_from("127.0.0.2", addr).await;
    let mut half_hello = connect_from("127.0.0.2", addr).await;
    // A TLS record header announcing 512 bytes of ClientHello, and 6 of them.
    half_hello
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await
        .unwrap();

    // Meanwhile a real client completes its handshake and is served.
    let mut good = tls_connect(&pki.client(None), "127.0.0.3", addr)
        .await
        .expect("handshake");
    assert_eq!(good.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let info = tokio::time::timeout(BOUND, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.remote_addr(), good.get_ref().0.local_addr().unwrap());
    assert!(
        info.peer_certs().is_none(),
        "no client certificate asked for"
    );
    good.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(BOUND, good.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");

    assert!(closed_within(&mut silent, BOUND).await, "silent one closed");
    assert!(
        closed_within(&mut half_hello, BOUND).await,
        "half a ClientHello closed"
    );
    eventually("their slots given back", || admission.open() == 1).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), seen.recv())
            .await
            .is_err(),
        "an unfinished handshake never reaches the server"
    );
}

#[tokio::test]
async fn with_client_ca_only_a_client_certificate_from_that_ca_gets_through() {
    let pki = Pki::new();
    let acceptor = tls_acceptor(&pki.server(true)).unwrap();
    let (addr, _admission, mut seen, _stop) =
        start(Some(acceptor), limits(10, 100, Duration::from_secs(60))).await;

    // Without a certificate: the handshake fails (TLS 1.3 reports it on the
    // first read) and nothing reaches the server.
    let refused = match tls_connect(&pki.client(None), "127.0.0.2", addr).await {
        Err(_) => true,
        Ok(mut s) => closed_within(&mut s, BOUND).await,
    };
    assert!(refused, "no client certificate, no connection");

    // A certificate from another CA is refused too.
    let stranger = Pki::new();
    let foreign = stranger.leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth);
    let refused = match tls_connect(&pki.client(Some(foreign)), "127.0.0.2", addr).await {
        Err(_) => true,
        Ok(mut s) => closed_within(&mut s, BOUND).await,
    };
    assert!(refused, "a certificate from another CA");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), seen.recv())
            .await
            .is_err()
    );

    let (cert, key) = pki.leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth);
    let expected = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let mut s = tls_connect(&pki.client(Some((cert, key))), "127.0.0.3", addr)
        .await
        .expect("handshake with a client certificate");
    s.write_all(b"ping").await.unwrap();
    let info = tokio::time::timeout(BOUND, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.peer_certs().as_deref(), Some(&vec![expected]));
}

#[test]
fn tls_files_that_do_not_work_are_refused_naming_the_key() {
    let pki = Pki::new();
    let good = pki.server(true);
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, "not pem at all\n").unwrap();
    let missing = pki.path("missing.pem");
    let cases = [
        (
            Tls {
                cert: missing.clone(),
                ..good.clone()
            },
            "tls_cert: reading",
        ),
        (
            Tls {
                cert: junk.clone(),
                ..good.clone()
            },
            "tls_cert:",
        ),
        (
            Tls {
                key: junk.clone(),
                ..good.clone()
            },
            "tls_key:",
        ),
        (
            Tls {
                key: pki.path("ca.pem"),
                ..good.clone()
            },
            "tls_key:",
        ),
        (
            Tls {
                client_ca: Some(missing.clone()),
                ..good.clone()
            },
            "client_ca: reading",
        ),
        (
            Tls {
                client_ca: Some(junk.clone()),
                ..good.clone()
            },
            "client_ca:",
        ),
    ];
    for (tls, want) in cases {
        let e = format!("{:#}", tls_acceptor(&tls).err().expect("refused"));
        assert!(e.starts_with(want), "{tls:?}: {e}");
    }
    assert!(tls_acceptor(&good).is_ok());
    assert!(Path::new(&good.cert).is_file());
}

#[test]
fn the_global_cap_stays_below_the_open_file_limit() {
    for (configured, limit, want) in [
        (10_000, None, 10_000),
        (10_000, Some(65_536), 10_000),
        (10_000, Some(1024), 768),
        (100, Some(1024), 100),
        (10_000, Some(300), 150),
        (10_000, Some(1), 1),
        (10_000, Some(u64::MAX), 10_000),
    ] {
        assert_eq!(
            connection_ceiling(configured, limit),
            want,
            "{configured} with limit {limit:?}"
        );
    }
}

#[test]
fn sources_are_ipv4_addresses_and_ipv6_prefixes() {
    let s = |a: &str| Source::of(a.parse().unwrap());
    assert_eq!(s("203.0.113.7"), s("::ffff:203.0.113.7"));
    assert_ne!(s("203.0.113.7"), s("203.0.113.8"));
    assert_eq!(s("2001:db8:1:2::1"), s("2001:db8:1:2:ffff::9"));
    assert_ne!(s("2001:db8:1:2::1"), s("2001:db8:1:3::1"));
    assert_eq!(s("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    assert_eq!(s("::ffff:10.1.2.3").to_string(), "10.1.2.3");
    assert_eq!(Refusal::PerSource.reason(), "per_ip_limit");
    assert_eq!(Refusal::Total.reason(), "global_limit");
}
