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
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
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
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        // Writable without an error means connected; confirm, since readiness can be spurious.
        match stream.peer_addr() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
            Err(e) => return Err(e),
        }
    }
    let rtt = tcp_rtt_us(&stream);
    drop(stream);
    Ok(rtt)
}

/// `tcpi_rtt` from `getsockopt(TCP_INFO)`: the kernel's measure of the handshake
/// round trip, untouched by scheduler delay in the agent.
fn tcp_rtt_us(stream: &TcpStream) -> Option<u64> {
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
    (rc == 0).then_some(u64::from(info.tcpi_rtt))
}
