//! The sockets: one UDP socket and one TCP listener on the same port, feeding
//! queries to the zone and writing its replies back.
//!
//! Guarantees: nothing read from the network can end a serving task (a bad packet
//! gets FORMERR or silence, a failed receive is logged and skipped), and every
//! serving task, per-connection ones included, stops once the last [`DnsServer`]
//! handle is dropped.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::debug;

use crate::wire::{self, Rcode, Reply, TCP_LIMIT};
use crate::zone::{Answer, Zone};

/// How many ephemeral ports to try before giving up on finding one free for both
/// UDP and TCP.
const BIND_ATTEMPTS: usize = 16;
/// Pause after a failed accept (say, out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A running DNS server. Cloning gives another handle to the same server; it
/// serves until the last handle is dropped.
#[derive(Debug, Clone)]
pub struct DnsServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    /// Never sent on: dropping it is the shutdown signal every serving task waits for.
    _shutdown: watch::Sender<()>,
}

impl DnsServer {
    /// Binds UDP and TCP on 127.0.0.1:0 (same port for both) and serves until dropped.
    pub async fn start() -> io::Result<DnsServer> {
        DnsServer::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Binds UDP and TCP on `addr` and serves until dropped. With port 0, picks a
    /// port free for both protocols.
    pub async fn start_on(addr: SocketAddr) -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair(addr).await?;
        let addr = udp.local_addr()?;
        let zone = Arc::new(Mutex::new(Zone::default()));
        let (shutdown, signal) = watch::channel(());
        tokio::spawn(serve_udp(udp, Arc::clone(&zone), signal.clone()));
        tokio::spawn(serve_tcp(tcp, Arc::clone(&zone), signal));
        debug!(%addr, "test DNS server started");
        Ok(DnsServer {
            inner: Arc::new(Inner {
                addr,
                zone,
                _shutdown: shutdown,
            }),
        })
    }

    /// The address both UDP and TCP listen on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Sets the answer for a name (case-insensitive, trailing dot optional).
    /// Unknown names get NXDOMAIN.
    pub fn set(&self, name: &str, answer: Answer) {
        lock(&self.inner.zone).set(name, answer);
    }

    /// Sets the TTL of answers and of negative answers (default 1 s).
    pub fn set_ttl(&self, ttl_secs: u32) {
        lock(&self.inner.zone).set_ttl(ttl_secs);
    }

    /// Number of queries received for a name (any type, any transport), for cache tests.
    pub fn queries(&self, name: &str) -> u64 {
        lock(&self.inner.zone).queries(name)
    }
}

/// A test that panicked while holding the lock leaves the zone consistent (each
/// method is one map operation), so a poisoned lock is still usable.
fn lock(zone: &Mutex<Zone>) -> MutexGuard<'_, Zone> {
    zone.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    if addr.port() != 0 {
        return Ok((UdpSocket::bind(addr).await?, TcpListener::bind(addr).await?));
    }
    // The kernel picks the UDP port; the same TCP port may be taken, so retry.
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind(addr).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// Resolves once the last [`DnsServer`] handle is gone.
async fn stopped(mut signal: watch::Receiver<()>) {
    // Nothing is ever sent, so this returns only when the sender is dropped.
    while signal.changed().await.is_ok() {}
}

/// Which transport a query came on: it decides how large a reply may be.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

/// The reply to one message, or `None` to stay silent.
fn respond(msg: &[u8], zone: &Mutex<Zone>, transport: Transport) -> Option<Vec<u8>> {
    let query = match wire::parse_query(msg) {
        Ok(query) => query,
        Err(error) => {
            debug!(%error, len = msg.len(), "malformed query");
            return wire::encode_formerr(msg, &error);
        }
    };
    let reply = if query.opcode == 0 {
        lock(zone).answer(&query.name, query.qtype, query.qclass)
    } else {
        Some(Reply::error(Rcode::NotImp))
    };
    debug!(
        name = %query.name,
        qtype = query.qtype,
        ?transport,
        rcode = ?reply.as_ref().map(|r| r.rcode),
        "query"
    );
    let limit = match transport {
        Transport::Udp => query.udp_limit(),
        Transport::Tcp => TCP_LIMIT,
    };
    Some(wire::encode_reply(&query, &reply?, limit))
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>, signal: watch::Receiver<()>) {
    tokio::select! {
        () = stopped(signal) => {}
        () = udp_loop(&socket, &zone) => {}
    }
}

async fn udp_loop(socket: &UdpSocket, zone: &Mutex<Zone>) {
    let mut buf = vec![0; usize::from(u16::MAX)];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // E.g. an ICMP error from an earlier reply; the socket itself is fine.
            Err(error) => {
                debug!(%error, "udp receive failed");
                continue;
            }
        };
        let Some(msg) = buf.get(..len) else { continue };
        if let Some(reply) = respond(msg, zone, Transport::Udp)
            && let Err(error) = socket.send_to(&reply, peer).await
        {
            debug!(%error, %peer, "udp send failed");
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>, signal: watch::Receiver<()>) {
    let accept_loop = async {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(
                        stream,
                        peer,
                        Arc::clone(&zone),
                        signal.clone(),
                    ));
                }
                Err(error) => {
                    debug!(%error, "tcp accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    };
    tokio::select! {
        () = stopped(signal.clone()) => {}
        () = accept_loop => {}
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    signal: watch::Receiver<()>,
) {
    tokio::select! {
        () = stopped(signal) => {}
        result = exchange(&mut stream, &zone) => {
            if let Err(error) = result {
                debug!(%error, %peer, "tcp connection ended");
            }
        }
    }
}

/// Serves length-prefixed messages (RFC 1035 §4.2.2) until the peer closes.
async fn exchange(stream: &mut TcpStream, zone: &Mutex<Zone>) -> io::Result<()> {
    loop {
        let mut prefix = [0; 2];
        match stream.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut msg = vec![0; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut msg).await?;
        let Some(reply) = respond(&msg, zone, Transport::Tcp) else {
            continue;
        };
        // encode_reply keeps TCP replies within TCP_LIMIT, so this always fits.
        let len = u16::try_from(reply.len()).map_err(|_| io::ErrorKind::InvalidData)?;
        let mut framed = Vec::with_capacity(2 + reply.len());
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}
