//! The baseline: the cheapest correct TCP check loop we know how to write, in
//! plain libc on one thread.
//!
//! One check is: `socket(SOCK_NONBLOCK)`, `SO_LINGER 0`, `connect` (EINPROGRESS),
//! `epoll_ctl(ADD, EPOLLOUT)`, wait for readiness, `getsockopt(SO_ERROR)` for the
//! verdict, `close` (an RST, so no TIME_WAIT). No timer, no allocation per check,
//! no task: whatever the engine spends beyond this is its overhead. Every loop
//! is bounded by a check count and a deadline.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::usage::cpu_thread;

/// What a loop did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopStats {
    pub ok: u64,
    pub failed: u64,
    pub wall: Duration,
    /// The first failure's errno, for the notes.
    pub first_error: Option<i32>,
}

impl LoopStats {
    fn count(&mut self, errno: i32) {
        if errno == 0 {
            self.ok += 1;
        } else {
            self.failed += 1;
            self.first_error.get_or_insert(errno);
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Only IPv4 listeners are used by the bench.
pub fn v4(addrs: &[SocketAddr]) -> Vec<SocketAddrV4> {
    addrs
        .iter()
        .filter_map(|a| match a {
            SocketAddr::V4(v) => Some(*v),
            SocketAddr::V6(_) => None,
        })
        .collect()
}

/// Opens a socket and starts connecting. `Ok((fd, true))` when the connect
/// completed at once (loopback sometimes does).
fn start(to: &libc::sockaddr_in) -> io::Result<(RawFd, bool)> {
    // SAFETY: plain socket calls; `to` and `linger` outlive the calls that read them.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        let rc = libc::connect(
            fd,
            (to as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc == 0 {
            return Ok((fd, true));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            Ok((fd, false))
        } else {
            libc::close(fd);
            Err(e)
        }
    }
}

/// The verdict (`SO_ERROR == 0`), then close.
fn finish(fd: RawFd) -> bool {
    finish_errno(fd) == 0
}

/// `SO_ERROR` (0 when connected; -1 when it cannot be read), then close.
fn finish_errno(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR writes one c_int into `err`; `fd` is ours and closed once.
    unsafe {
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        );
        libc::close(fd);
        if rc == 0 { err } else { -1 }
    }
}

/// `tcpi_rtt` of a connected socket, microseconds.
fn tcp_rtt_us(fd: RawFd) -> Option<u64> {
    // SAFETY: TCP_INFO fills at most `len` bytes of the zeroed struct we own.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(u64::from(info.tcpi_rtt))
    }
}

struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: no preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn add_out(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLOUT as u32,
            u64: fd as u64,
        };
        // SAFETY: `ev` is valid for the call; both fds are ours.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `max` events into the slice.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), max, timeout_ms) };
        usize::try_from(n).unwrap_or(0)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptor once.
        unsafe { libc::close(self.0) };
    }
}

/// Handshakes started and not yet finished, on one epoll instance. Dropping
/// it closes those still connecting (a deadline exit).
struct InFlight {
    ep: Epoll,
    events: Vec<libc::epoll_event>,
    /// Indexed by descriptor: still connecting.
    pending: Vec<bool>,
    running: usize,
}

impl InFlight {
    fn new() -> io::Result<InFlight> {
        Ok(InFlight {
            ep: Epoll::new()?,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            pending: Vec::new(),
            running: 0,
        })
    }

    /// Starts one handshake; one that completes or fails at once is counted now.
    fn start(&mut self, to: &libc::sockaddr_in, stats: &mut LoopStats) {
        match start(to) {
            Ok((fd, true)) => stats.count(finish_errno(fd)),
            Ok((fd, false)) => {
                if self.ep.add_out(fd).is_err() {
                    finish_errno(fd);
                    stats.count(-1);
                    return;
                }
                let i = fd as usize;
                if self.pending.len() <= i {
                    self.pending.resize(i + 1, false);
                }
                self.pending[i] = true;
                self.running += 1;
            }
            Err(e) => stats.count(e.raw_os_error().unwrap_or(-1)),
        }
    }

    /// Waits up to `timeout_ms` and counts the handshakes that finished.
    fn reap(&mut self, timeout_ms: i32, stats: &mut LoopStats) {
        let n = self.ep.wait(&mut self.events, timeout_ms);
        for ev in &self.events[..n] {
            let fd = ev.u64 as RawFd;
            if let Some(p) = self.pending.get_mut(fd as usize) {
                *p = false;
            }
            self.running = self.running.saturating_sub(1);
            stats.count(finish_errno(fd));
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for (fd, p) in self.pending.iter().enumerate() {
            if *p {
                // SAFETY: a descriptor we opened and never closed.
                unsafe { libc::close(fd as RawFd) };
            }
        }
    }
}

fn sockaddrs(addrs: &[SocketAddrV4]) -> io::Result<Vec<libc::sockaddr_in>> {
    if addrs.is_empty() {
        return Err(io::Error::other("no IPv4 target"));
    }
    Ok(addrs.iter().map(|a| sockaddr(*a)).collect())
}

/// Runs `total` checks round-robin over `addrs`, `in_flight` at a time, or
/// until `deadline`. Connection errors count as failed checks.
pub fn saturate(
    addrs: &[SocketAddrV4],
    total: u64,
    in_flight: usize,
    deadline: Instant,
) -> io::Result<LoopStats> {
    let targets = sockaddrs(addrs)?;
    let mut flight = InFlight::new()?;
    let mut stats = LoopStats::default();
    let mut started: u64 = 0;
    let t0 = Instant::now();
    while stats.ok + stats.failed < total {
        while flight.running < in_flight && started < total {
            flight.start(
                &targets[(started % targets.len() as u64) as usize],
                &mut stats,
            );
            started += 1;
        }
        if Instant::now() >= deadline {
            break;
        }
        flight.reap(100, &mut stats);
    }
    stats.wall = t0.elapsed();
    Ok(stats)
}

/// Checks at a steady `per_second`, spread evenly (started on millisecond
/// ticks, as the agent's scheduler wakes), round-robin over `addrs`, for
/// `window`. The same-run baseline of the scheduler figure: what the kernel
/// charges for that many loopback handshakes when they are spread out (each
/// one wakes an idle listener) rather than back to back. Returns the loop's
/// stats and the CPU time of this thread alone.
pub fn paced(
    addrs: &[SocketAddrV4],
    per_second: u64,
    window: Duration,
) -> io::Result<(LoopStats, Duration)> {
    let targets = sockaddrs(addrs)?;
    let mut flight = InFlight::new()?;
    let mut stats = LoopStats::default();
    let mut started: u64 = 0;
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let cpu0 = cpu_thread();
    let t0 = Instant::now();
    loop {
        let elapsed_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        if elapsed_ms >= window_ms {
            break;
        }
        // Due by the current millisecond tick.
        let due = per_second.saturating_mul(elapsed_ms) / 1000;
        while started < due {
            flight.start(
                &targets[(started % targets.len() as u64) as usize],
                &mut stats,
            );
            started += 1;
        }
        // Sleep until the next tick unless a handshake completes first.
        let next_tick = Duration::from_millis(elapsed_ms.saturating_add(1));
        let wait_ms = next_tick.saturating_sub(t0.elapsed()).as_millis().max(1);
        flight.reap(i32::try_from(wait_ms).unwrap_or(1), &mut stats);
    }
    let cpu = cpu_thread().saturating_sub(cpu0);
    stats.wall = t0.elapsed();
    Ok((stats, cpu))
}

/// One check at a time: (socket→closed µs, `tcpi_rtt` µs) of each successful
/// check, for the timing-truth figure. At most `count` checks, until `deadline`.
pub fn timings(addr: SocketAddrV4, count: usize, deadline: Instant) -> io::Result<Vec<(u64, u64)>> {
    let to = sockaddr(addr);
    let ep = Epoll::new()?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        let (fd, done) = start(&to)?;
        if !done {
            ep.add_out(fd)?;
            if ep.wait(&mut events, 3_000) == 0 {
                finish(fd);
                continue;
            }
        }
        let rtt = tcp_rtt_us(fd);
        let ok = finish(fd);
        // The same span the engine's `connect_us` covers: socket() to closed.
        let connect_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        if ok && let Some(rtt) = rtt {
            out.push((connect_us, rtt));
        }
    }
    Ok(out)
}
