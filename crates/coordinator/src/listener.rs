//! The coordinator's gRPC listener: it accepts TCP connections itself, so that
//! idle, half-open or flooding clients cannot make the port unreachable for
//! everyone, and hands tonic only connections that are admitted and, with
//! TLS, past their handshake.
//!
//! Guarantees:
//! - a source address (IPv4 address or IPv6 /64) has at most
//!   `max_connections_per_ip` connections open, and the coordinator at most
//!   `max_connections` (kept below the open-file limit, see
//!   [`connection_ceiling`]); a connection over a cap is reset at once and
//!   counted in `portwatch_connections_refused_total{reason}`;
//! - a TLS handshake that has not finished within `tls_handshake_timeout`
//!   (nothing sent, half a ClientHello, a stalled client) is dropped, and
//!   handshakes run side by side, so a slow one never delays another;
//! - a connection that has made no authenticated request within
//!   `unauthenticated_idle_timeout` of its accept is closed (see `conn`);
//!   plaintext (`insecure_plaintext`) follows the same caps and deadline;
//! - mTLS is checked during the handshake exactly as before (the client's
//!   certificate must chain to `client_ca`); the chain is available to handlers
//!   in the request's `ConnInfo`;
//! - running out of file descriptors never turns the accept loop into a busy
//!   loop: it backs off and logs.

mod admission;
mod conn;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use admission::{Admission, Authentication, Refusal, Slot, Source};
pub use conn::{Conn, ConnInfo};

pub use crate::config::ConnectionLimits;
use crate::config::Tls;

/// File descriptors kept for everything but client connections: the store's
/// files, the metrics listener, notification sends, the runtime itself.
pub const RESERVED_FDS: u64 = 256;

/// After an accept error such as EMFILE the pending connection stays queued,
/// so accepting again at once would fail again at once: wait this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one warning per this interval for the same kind of trouble
/// (a flood would otherwise fill the log).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The bound listening socket and what it enforces.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    admission: Arc<Admission>,
}

impl Listener {
    /// Binds `addr`. `max_total` is the global cap actually enforced (see
    /// [`connection_ceiling`]); `tls` is `None` only for plaintext.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<TlsAcceptor>,
        limits: ConnectionLimits,
        max_total: u32,
    ) -> io::Result<Listener> {
        let tcp = TcpListener::bind(addr).await?;
        Ok(Listener {
            tcp,
            tls,
            admission: Admission::new(limits.max_connections_per_ip, max_total),
            limits,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The live counts (for tests and diagnostics).
    pub fn admission(&self) -> Arc<Admission> {
        self.admission.clone()
    }

    /// Starts accepting: the admitted connections, ready for
    /// `Router::serve_with_incoming_shutdown`. The listening socket closes when
    /// `stop` is cancelled or the stream is dropped.
    pub fn incoming(self, stop: CancellationToken) -> ReceiverStream<io::Result<Conn>> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(self.accept_loop(tx, stop));
        ReceiverStream::new(rx)
    }

    async fn accept_loop(self, tx: mpsc::Sender<io::Result<Conn>>, stop: CancellationToken) {
        let mut warned = Warned::default();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                r = self.tcp.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    if out_of_resources(&e) {
                        if warned.due(Trouble::Resources) {
                            warn!(error = %e, "cannot accept connections: out of file descriptors or memory; retrying");
                        }
                        metrics::counter!("portwatch_accept_errors_total").increment(1);
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                    // Anything else (a connection reset before we took it) concerns
                    // that one connection only.
                    continue;
                }
            };
            let slot = match self.admission.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    metrics::counter!("portwatch_connections_refused_total", "reason" => refusal.reason())
                        .increment(1);
                    let trouble = match refusal {
                        Refusal::PerSource => Trouble::PerSource,
                        Refusal::Total => Trouble::Total,
                    };
                    if warned.due(trouble) {
                        warn!(
                            source = %Source::of(peer.ip()),
                            reason = refusal.reason(),
                            "refusing connections over the connection cap (further refusals are counted in portwatch_connections_refused_total)"
                        );
                    }
                    reset(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let deadline = Instant::now() + self.limits.unauthenticated_idle_timeout;
            match &self.tls {
                None => {
                    if tx
                        .send(Ok(Conn::plain(tcp, peer, slot, deadline)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(acceptor) => {
                    tokio::spawn(handshake(
                        acceptor.clone(),
                        tcp,
                        peer,
                        slot,
                        deadline,
                        self.limits.tls_handshake_timeout,
                        tx.clone(),
                        stop.clone(),
                    ));
                }
            }
        }
    }
}

/// One TLS handshake under its deadline, on a task of its own.
#[allow(clippy::too_many_arguments)]
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    deadline: Instant,
    timeout: Duration,
    tx: mpsc::Sender<io::Result<Conn>>,
    stop: CancellationToken,
) {
    let done = tokio::select! {
        () = stop.cancelled() => return,
        r = tokio::time::timeout(timeout, acceptor.accept(tcp)) => r,
    };
    match done {
        Ok(Ok(tls)) => {
            let _ = tx.send(Ok(Conn::tls(tls, peer, slot, deadline))).await;
        }
        Ok(Err(e)) => {
            metrics::counter!("portwatch_connections_closed_total", "reason" => "tls_handshake_failed")
                .increment(1);
            debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            metrics::counter!("portwatch_connections_closed_total", "reason" => "tls_handshake_timeout")
                .increment(1);
            debug!(%peer, "TLS handshake not finished within tls_handshake_timeout; closed");
        }
    }
}

/// Closes with a RST: the client learns at once, and a flood of refusals
/// leaves no TIME_WAIT sockets behind on this side.
fn reset(tcp: TcpStream) {
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
    drop(tcp);
}

fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Trouble {
    Resources,
    PerSource,
    Total,
}

/// When each kind of trouble was last logged.
#[derive(Default)]
struct Warned(std::collections::HashMap<Trouble, Instant>);

impl Warned {
    fn due(&mut self, t: Trouble) -> bool {
        let now = Instant::now();
        match self.0.get(&t) {
            Some(last) if now.duration_since(*last) < WARN_EVERY => false,
            _ => {
                self.0.insert(t, now);
                true
            }
        }
    }
}

/// The TLS acceptor for `tls`: the server's chain and key, and with
/// `client_ca` a client certificate required and verified (mTLS); HTTP/2 by ALPN.
pub fn tls_acceptor(tls: &Tls) -> anyhow::Result<TlsAcceptor> {
    let chain = read_certs("tls_cert", &tls.cert)?;
    let key_pem = std::fs::read(&tls.key)
        .with_context(|| format!("tls_key: reading {}", tls.key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow!("tls_key: {}: no usable private key: {e}", tls.key.display()))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let (_, unusable) = roots.add_parsable_certificates(read_certs("client_ca", path)?);
            if roots.is_empty() {
                return Err(anyhow!(
                    "client_ca: {}: none of its {unusable} certificate(s) is usable as a CA",
                    path.display()
                ));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .with_context(|| format!("client_ca: {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("tls_cert/tls_key: not a usable certificate and key")?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certs(key: &str, path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("{key}: reading {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{key}: {}: not a PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "{key}: {}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Raises the soft open-file limit to the hard one (every connection is a
/// descriptor); returns the soft limit in force afterwards.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// The global cap actually enforced: `max_connections`, but never so close to
/// the open-file limit that accepting would fail (EMFILE) before the cap
/// refuses, and never so high that the store or a notification could not
/// open a file.
pub fn connection_ceiling(max_connections: u32, open_file_limit: Option<u64>) -> u32 {
    let Some(limit) = open_file_limit else {
        return max_connections;
    };
    let room = limit.saturating_sub(RESERVED_FDS).max(limit / 2).max(1);
    u32::try_from(room.min(u64::from(max_connections))).unwrap_or(max_connections)
}
