//! The targets every check figure connects to: loopback listeners in a separate
//! process that accept and drop, and a CPU burner for "both cores busy".
//!
//! Why a separate process: the CPU figures read `getrusage(RUSAGE_SELF)` of the
//! bench, so the accepting side must not be charged to it. The child is this
//! same binary started with a hidden flag; it runs one epoll thread over
//! listeners on 127.0.0.1, 127.0.0.2, … (a different address per listener
//! spreads the 4-tuples, so ephemeral ports are not the limit), closes every
//! accepted socket at once (the prober's RST close leaves no TIME_WAIT), and
//! exits after `max_secs` or as soon as its parent dies (PR_SET_PDEATHSIG).

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portwatch_e2e::Proc;
use socket2::{Domain, Protocol, Socket, Type};

/// The line the child prints once it listens; the addresses follow it.
const READY: &str = "portwatch-bench listeners:";

/// Listeners running in a child process; killed when dropped.
pub struct Targets {
    proc: Proc,
    pub addrs: Vec<SocketAddr>,
}

impl Targets {
    /// Starts `count` listeners (127.0.0.1 up to 127.0.0.`count`), alive at most `max_secs`.
    pub fn spawn(count: usize, max_secs: u64) -> anyhow::Result<Targets> {
        if !(1..=250).contains(&count) {
            bail!("listeners: {count} is not in 1..=250");
        }
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("--child-listeners")
            .arg(count.to_string())
            .arg("--child-secs")
            .arg(max_secs.to_string());
        let mut proc = Proc::spawn("listeners", cmd);
        // Set-up: the harness panics if the child never says it is ready.
        let line = proc.wait_line(READY, Duration::from_secs(10));
        let addrs = line
            .trim_start_matches(READY)
            .split_whitespace()
            .map(|a| a.parse::<SocketAddr>())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the listener addresses")?;
        if addrs.len() != count {
            bail!("listeners: asked for {count}, got {}", addrs.len());
        }
        Ok(Targets { proc, addrs })
    }

    /// The child's pid (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }
}

/// Starts a child that keeps `threads` threads spinning for `secs` seconds.
pub fn spawn_spinner(threads: usize, secs: u64) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--child-spin")
        .arg(threads.to_string())
        .arg("--child-secs")
        .arg(secs.to_string());
    let mut proc = Proc::spawn("spinner", cmd);
    proc.wait_line("spinning", Duration::from_secs(10));
    Ok(proc)
}

/// Dies with the parent: the children must never outlive a bench run.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

/// The child side of [`spawn_spinner`]: spins, then exits.
pub fn spin(threads: usize, secs: u64) -> anyhow::Result<()> {
    die_with_parent();
    let until = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads.clamp(1, 64))
        .map(|_| {
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while Instant::now() < until {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) + 1);
                    }
                }
                x
            })
        })
        .collect();
    println!("spinning on {threads} threads for {secs} s");
    std::io::stdout().flush().context("stdout")?;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// The child side of [`Targets::spawn`]: listens, accepts and drops until `max_secs`.
pub fn serve(count: usize, max_secs: u64) -> anyhow::Result<()> {
    die_with_parent();
    let mut listeners = Vec::with_capacity(count);
    for i in 1..=count {
        let host = u8::try_from(i).context("listener index")?;
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), 0));
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())
            .with_context(|| format!("binding {addr}"))?;
        // The kernel caps this at net.core.somaxconn.
        s.listen(65_535)?;
        s.set_nonblocking(true)?;
        listeners.push(s);
    }
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|s| s.local_addr().ok()?.as_socket())
        .map(|a| a.to_string())
        .collect();
    println!("{READY} {}", addrs.join(" "));
    std::io::stdout().flush().context("stdout")?;

    let fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    accept_loop(&fds, Instant::now() + Duration::from_secs(max_secs))
}

fn accept_loop(fds: &[RawFd], until: Instant) -> anyhow::Result<()> {
    // SAFETY (whole function): plain epoll/accept4/setsockopt/close calls on
    // descriptors we own; buffers are sized for what each call writes.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        bail!("epoll_create1: {}", std::io::Error::last_os_error());
    }
    for (i, fd) in fds.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, *fd, &mut ev) } != 0 {
            bail!("epoll_ctl: {}", std::io::Error::last_os_error());
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut checked = Instant::now();
    while Instant::now() < until {
        if checked.elapsed() >= Duration::from_secs(1) {
            if !parent_alive() {
                break;
            }
            checked = Instant::now();
        }
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 64, 500) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("epoll_wait: {e}");
        }
        for ev in events.iter().take(n as usize) {
            let Some(&lfd) = fds.get(ev.u64 as usize) else {
                continue;
            };
            // Drain the accept queue; each connection is dropped at once.
            for _ in 0..4096 {
                let c = unsafe {
                    libc::accept4(
                        lfd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if c < 0 {
                    break;
                }
                // A plain close (FIN): an RST here could reach the prober before
                // it has seen its own handshake complete, and fail the check.
                // The prober closes with RST, so neither side keeps TIME_WAIT.
                unsafe { libc::close(c) };
            }
        }
    }
    unsafe { libc::close(ep) };
    Ok(())
}

fn parent_alive() -> bool {
    // Re-parented to init (or a subreaper) means the bench is gone.
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    ppid != 1 && Path::new(&format!("/proc/{ppid}")).exists()
}
