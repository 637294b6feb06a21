//! One TCP handshake to one address: socket2 socket, tokio readiness, TCP_INFO.
//!
//! No byte is sent or read. The socket is closed as soon as the handshake is
//! known to have completed (or failed), with FIN or, in `Rst` mode, SO_LINGER 0
//! so that a busy agent does not pile up TIME_WAIT sockets.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::classify::outcome_for;
use crate::{CloseMode, Outcome};

/// What one handshake attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub address: SocketAddr,
    pub outcome: Outcome,
    pub detail: String,
    /// From `connect()` to the verdict, monotonic clock.
    pub connect_us: u64,
    /// The kernel's smoothed RTT right after the handshake (`tcpi_rtt`).
    pub tcp_rtt_us: Option<u64>,
}

/// Tries one handshake; gives up at `deadline` with `TimedOut`.
pub async fn attempt(
    address: SocketAddr,
    source: Option<IpAddr>,
    close: CloseMode,
    deadline: tokio::time::Instant,
) -> Attempt {
    let started = Instant::now();
    let verdict = tokio::time::timeout_at(deadline, handshake(address, source, close)).await;
    let connect_us = micros(started.elapsed());
    match verdict {
        Ok(Ok(tcp_rtt_us)) => Attempt {
            address,
            outcome: Outcome::Ok,
            detail: format!("connected to {address}"),
            connect_us,
            tcp_rtt_us,
        },
        Ok(Err(e)) => Attempt {
            address,
            outcome: outcome_for(&e),
            detail: format!("{address}: {e}"),
            connect_us,
            tcp_rtt_us: None,
        },
        Err(_) => Attempt {
            address,
            outcome: Outcome::TimedOut,
            detail: format!("{address}: no answer to the SYN within the deadline"),
            connect_us,
            tcp_rtt_us: None,
        },
    }
}

/// Microseconds in a duration, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn handshake(
    address: SocketAddr,
    source: Option<IpAddr>,
    close: CloseMode,
) -> io::Result<Option<u64>> {
    // Non-blocking from creation: no fcntl round trips.
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    if let Some(ip) = source {
        // A source of the other family cannot be used for this address; skip it.
        if ip.is_ipv4() == address.is_ipv4() {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
    }
    if close == CloseMode::Rst {
        socket.set_linger(Some(Duration::ZERO))?;
    }
    match socket.connect(&address.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    loop {
        stream.writable().await?;
        // `try_io` clears a spurious readiness (WouldBlock), so the loop waits
        // again instead of spinning.
        match stream.try_io(Interest::WRITABLE, || established(&stream)) {
            Ok(rtt) => return Ok(rtt),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Linux's TCP states (`include/net/tcp_states.h`) that matter here.
const TCP_SYN_SENT: u8 = 2;
const TCP_CLOSE: u8 = 7;

/// After a writable wake-up: the connect's error, or the handshake's `tcpi_rtt`
/// once the socket has left SYN-SENT, or `WouldBlock` while it has not (a
/// spurious wake-up). One `TCP_INFO` read both confirms the connection and
/// gives the RTT; `getpeername` confirms it where `TCP_INFO` is unavailable.
fn established(stream: &TcpStream) -> io::Result<Option<u64>> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match tcp_info(stream) {
        Some(info) if info.tcpi_state == TCP_SYN_SENT || info.tcpi_state == TCP_CLOSE => {
            Err(io::ErrorKind::WouldBlock.into())
        }
        Some(info) => Ok(Some(u64::from(info.tcpi_rtt))),
        None => match stream.peer_addr() {
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            Err(e) => Err(e),
        },
    }
}

/// `getsockopt(TCP_INFO)`: the kernel's view of the connection, including
/// `tcpi_rtt`, its measure of the handshake round trip, untouched by
/// scheduler delay in the agent.
fn tcp_info(stream: &TcpStream) -> Option<libc::tcp_info> {
    // SAFETY: TCP_INFO fills at most `len` bytes of a zeroed, properly aligned
    // `tcp_info`; the fd is a live TCP socket owned by `stream`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).ok()?;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}
