//! One accepted connection as tonic serves it: plain TCP or TLS over TCP, who
//! is at the other end, and the deadline by which it must have authenticated.
//!
//! Guarantees:
//! - until a request on it is marked authenticated (`ConnInfo::mark_authenticated`,
//!   called by `auth::ConnectionMarker`), every read, write and flush after the
//!   deadline fails, so the HTTP/2 server ends the connection and its socket and
//!   admission slot are released; the deadline counts from accept;
//! - once marked, the connection has no deadline (HTTP/2 keepalive still
//!   ends it if the peer goes silent);
//! - every request on the connection carries a `ConnInfo` in its extensions:
//!   the peer's address, its certificate chain under mTLS, and the mark.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::debug;

use super::admission::{Authentication, Slot};

/// What the requests of one connection know about it (a request extension).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    remote_addr: SocketAddr,
    local_addr: Option<SocketAddr>,
    peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    authentication: Authentication,
}

impl ConnInfo {
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The client's certificate chain (mTLS), verified during the handshake.
    pub fn peer_certs(&self) -> Option<Arc<Vec<CertificateDer<'static>>>> {
        self.peer_certs.clone()
    }

    /// A request on this connection carried a token its API accepts: the
    /// connection keeps living past the unauthenticated deadline.
    pub fn mark_authenticated(&self) {
        self.authentication.mark();
    }

    pub fn is_authenticated(&self) -> bool {
        self.authentication.is_authenticated()
    }

    /// tonic's own connection info, so `Request::remote_addr` keeps working
    /// for handlers behind the marker.
    pub fn tcp_connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local_addr,
            remote_addr: Some(self.remote_addr),
        }
    }
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An admitted connection with its unauthenticated deadline.
pub struct Conn {
    transport: Transport,
    info: ConnInfo,
    /// Armed until the connection authenticates; `None` afterwards.
    deadline: Option<Pin<Box<Sleep>>>,
    expired: bool,
    /// Gives the admission slot back when the connection is dropped.
    _slot: Slot,
}

impl Conn {
    pub(super) fn plain(
        tcp: TcpStream,
        remote_addr: SocketAddr,
        slot: Slot,
        deadline: Instant,
    ) -> Conn {
        let local_addr = tcp.local_addr().ok();
        Conn::new(
            Transport::Plain(tcp),
            remote_addr,
            local_addr,
            None,
            slot,
            deadline,
        )
    }

    pub(super) fn tls(
        tls: TlsStream<TcpStream>,
        remote_addr: SocketAddr,
        slot: Slot,
        deadline: Instant,
    ) -> Conn {
        let (tcp, session) = tls.get_ref();
        let local_addr = tcp.local_addr().ok();
        let peer_certs = session
            .peer_certificates()
            .map(|chain| Arc::new(chain.to_vec()));
        Conn::new(
            Transport::Tls(Box::new(tls)),
            remote_addr,
            local_addr,
            peer_certs,
            slot,
            deadline,
        )
    }

    fn new(
        transport: Transport,
        remote_addr: SocketAddr,
        local_addr: Option<SocketAddr>,
        peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
        slot: Slot,
        deadline: Instant,
    ) -> Conn {
        Conn {
            transport,
            info: ConnInfo {
                remote_addr,
                local_addr,
                peer_certs,
                authentication: slot.authentication(),
            },
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            expired: false,
            _slot: slot,
        }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Fails once the deadline has passed without an authenticated request;
    /// otherwise registers the task to be woken at the deadline.
    fn enforce_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.expired {
            return Err(expired());
        }
        let Some(deadline) = self.deadline.as_mut() else {
            return Ok(());
        };
        if self.info.is_authenticated() {
            self.deadline = None;
            return Ok(());
        }
        if deadline.as_mut().poll(cx).is_ready() {
            self.expired = true;
            self.deadline = None;
            metrics::counter!("portwatch_connections_closed_total", "reason" => "unauthenticated_idle")
                .increment(1);
            debug!(peer = %self.info.remote_addr, "closing a connection that made no authenticated request in time");
            return Err(expired());
        }
        Ok(())
    }
}

fn expired() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no authenticated request within unauthenticated_idle_timeout",
    )
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.enforce_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.enforce_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.enforce_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.enforce_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
