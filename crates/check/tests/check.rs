//! The check engine against real sockets and a real DNS server, all on loopback.
//!
//! Each test asserts what an operator would read off the result: the outcome,
//! the address, the timings, and that no byte reached the target.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use portwatch_check::{
    AddressPolicy, CheckSpec, Checker, CloseMode, Family, Guard, Host, Nameservers, Outcome,
    Resolver,
};
use portwatch_testdns::{Answer, DnsServer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn checker_with(dns: Option<&DnsServer>, guard: Guard) -> Checker {
    let ns = match dns {
        Some(d) => Nameservers::Custom(vec![d.addr()]),
        None => Nameservers::System,
    };
    Checker::new(Resolver::new(&ns).expect("resolver"), guard)
}

fn spec(host: &str, port: u16, timeout_ms: u64) -> CheckSpec {
    let mut s = CheckSpec::new(Host::parse(host).expect("host"), port);
    s.timeout = Duration::from_millis(timeout_ms);
    s
}

/// A port on `ip` that nothing listens on (bound, then released).
fn closed_port(ip: IpAddr) -> u16 {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// A listener whose accept queue is full and never drained: further SYNs are
/// dropped by the kernel, so a connect to it times out (no root needed).
fn blackhole(ip: IpAddr, port: u16) -> (Socket, Vec<std::net::TcpStream>) {
    let addr = SocketAddr::new(ip, port);
    let l = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).unwrap();
    l.set_reuse_address(true).unwrap();
    l.bind(&addr.into()).unwrap();
    l.listen(0).unwrap();
    let mut fillers = Vec::new();
    // Backlog 0 admits one (sometimes two) connections; fill it.
    for _ in 0..8 {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        std::thread::sleep(Duration::from_millis(20));
        let s: std::net::TcpStream = s.into();
        let connected = s.peer_addr().is_ok();
        fillers.push(s);
        if !connected {
            break;
        }
    }
    (l, fillers)
}

#[tokio::test]
async fn ok_against_a_real_listener_with_timings_and_kernel_rtt() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let checker = checker_with(None, Guard::allow_private());

    let r = checker.check(&spec("127.0.0.1", port, 3000)).await;

    assert_eq!(r.outcome, Outcome::Ok, "{}", r.detail);
    assert_eq!(r.address, Some(SocketAddr::new(LOCAL, port)));
    assert_eq!(r.dns_us, 0, "an IP literal skips DNS");
    assert!(r.connect_us > 0 && r.total_us >= r.connect_us, "{r:?}");
    assert!(
        r.tcp_rtt_us.is_some(),
        "tcpi_rtt is read after the handshake"
    );
}

#[tokio::test]
async fn no_byte_is_sent_and_close_mode_picks_fin_or_rst() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let checker = checker_with(None, Guard::allow_private());

    let r = checker.check(&spec("127.0.0.1", port, 3000)).await;
    assert_eq!(r.outcome, Outcome::Ok);
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        n.unwrap(),
        0,
        "FIN close: an orderly EOF and not one byte of payload"
    );

    let mut rst = spec("127.0.0.1", port, 3000);
    rst.close_mode = CloseMode::Rst;
    let r = checker.check(&rst).await;
    assert_eq!(r.outcome, Outcome::Ok);
    let (mut conn, _) = listener.accept().await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .unwrap();
    let err = read.expect_err("RST close: the server sees a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn refused_against_a_closed_port() {
    let port = closed_port(LOCAL);
    let checker = checker_with(None, Guard::allow_private());

    let r = checker.check(&spec("127.0.0.1", port, 3000)).await;

    assert_eq!(r.outcome, Outcome::Refused, "{}", r.detail);
    assert_eq!(r.outcome.text(), "Connection refused");
    assert!(r.detail.contains(&port.to_string()), "{}", r.detail);
}

#[tokio::test]
async fn timed_out_against_a_full_accept_queue() {
    let port = closed_port(LOCAL);
    let (_listener, _fillers) = blackhole(LOCAL, port);
    let checker = checker_with(None, Guard::allow_private());

    let r = checker.check(&spec("127.0.0.1", port, 1000)).await;

    assert_eq!(r.outcome, Outcome::TimedOut, "{}", r.detail);
    assert_eq!(r.outcome.text(), "Connection timed out");
    assert!(
        r.total_us >= 1_000_000,
        "the whole deadline was waited: {}",
        r.total_us
    );
}

#[tokio::test]
async fn dns_failures_nxdomain_servfail_and_silence() {
    let dns = DnsServer::start().await.unwrap();
    dns.set("gone.test", Answer::NxDomain);
    dns.set("broken.test", Answer::ServFail);
    dns.set("silent.test", Answer::Drop);
    dns.set(
        "v6only.test",
        Answer::Addrs(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]),
    );
    let checker = checker_with(Some(&dns), Guard::allow_private());

    let r = checker.check(&spec("gone.test", 80, 2000)).await;
    assert_eq!(r.outcome, Outcome::DnsFailed, "{}", r.detail);
    assert!(r.detail.contains("NXDOMAIN"), "{}", r.detail);

    let r = checker.check(&spec("broken.test", 80, 2000)).await;
    assert_eq!(r.outcome, Outcome::DnsFailed, "{}", r.detail);
    assert!(r.detail.to_lowercase().contains("serv"), "{}", r.detail);

    let r = checker.check(&spec("silent.test", 80, 1000)).await;
    assert_eq!(r.outcome, Outcome::DnsFailed, "{}", r.detail);
    assert!(
        r.total_us >= 1_000_000 && r.total_us < 2_500_000,
        "deadline bounds DNS: {}",
        r.total_us
    );

    let mut v4 = spec("v6only.test", 80, 2000);
    v4.family = Family::Ipv4;
    let r = checker.check(&v4).await;
    assert_eq!(r.outcome, Outcome::DnsFailed, "{}", r.detail);
    assert!(r.detail.contains("no IPv4 address"), "{}", r.detail);
    assert_eq!(r.outcome.text(), "DNS resolution failed");
}

#[tokio::test]
async fn resolver_cache_honours_ttl() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ttl(300);
    dns.set("cached.test", Answer::Addrs(vec![LOCAL]));
    let checker = checker_with(Some(&dns), Guard::allow_private());

    for _ in 0..3 {
        let r = checker.check(&spec("cached.test", port, 2000)).await;
        assert_eq!(r.outcome, Outcome::Ok, "{}", r.detail);
    }
    // One A and one AAAA query at most, then served from the cache.
    assert!(
        dns.queries("cached.test") <= 2,
        "queries: {}",
        dns.queries("cached.test")
    );
}

#[tokio::test]
async fn happy_eyeballs_moves_past_a_silent_address_after_the_stagger() {
    let port = closed_port(LOCAL);
    let silent: IpAddr = "127.0.0.3".parse().unwrap();
    let (_bh, _fillers) = blackhole(silent, port);
    let listener = TcpListener::bind((LOCAL, port)).await.unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set("pair.test", Answer::Addrs(vec![silent, LOCAL]));
    let checker = checker_with(Some(&dns), Guard::allow_private());

    let r = checker.check(&spec("pair.test", port, 3000)).await;

    assert_eq!(r.outcome, Outcome::Ok, "{}", r.detail);
    assert_eq!(r.address, Some(SocketAddr::new(LOCAL, port)));
    // The silent address went first; the second started after the stagger and won,
    // long before the deadline. The abandoned attempt is not reported.
    assert!(
        r.total_us >= 250_000,
        "the first address had its 250 ms: {}",
        r.total_us
    );
    assert!(
        r.total_us < 2_000_000,
        "won after the stagger, not the timeout: {}",
        r.total_us
    );
    drop(listener);
}

#[tokio::test]
async fn happy_eyeballs_across_families() {
    // ::1 listens, 127.0.0.1 does not, same port; AAAA answers come first.
    let l6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await.unwrap();
    let port = l6.local_addr().unwrap().port();
    let dns = DnsServer::start().await.unwrap();
    dns.set(
        "dual.test",
        Answer::Addrs(vec![LOCAL, IpAddr::V6(Ipv6Addr::LOCALHOST)]),
    );
    let checker = checker_with(Some(&dns), Guard::allow_private());

    let r = checker.check(&spec("dual.test", port, 3000)).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.detail);
    assert_eq!(r.address.map(|a| a.is_ipv6()), Some(true));

    let mut v4 = spec("dual.test", port, 3000);
    v4.family = Family::Ipv4;
    let r = checker.check(&v4).await;
    assert_eq!(
        r.outcome,
        Outcome::Refused,
        "only 127.0.0.1 is tried: {}",
        r.detail
    );
}

#[tokio::test]
async fn address_policy_all_catches_one_dead_backend() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dead: IpAddr = "127.0.0.2".parse().unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set("rr.test", Answer::Addrs(vec![dead, LOCAL]));
    dns.set("one.test", Answer::Addrs(vec![LOCAL]));
    let checker = checker_with(Some(&dns), Guard::allow_private());

    let any = checker.check(&spec("rr.test", port, 2000)).await;
    assert_eq!(
        any.outcome,
        Outcome::Ok,
        "any: one backend connecting is success"
    );

    let mut all = spec("rr.test", port, 2000);
    all.address_policy = AddressPolicy::All;
    let r = checker.check(&all).await;
    assert_eq!(r.outcome, Outcome::Refused, "{}", r.detail);
    assert_eq!(
        r.address,
        Some(SocketAddr::new(dead, port)),
        "names the dead backend"
    );
    assert!(r.detail.contains("1 of 2"), "{}", r.detail);

    let mut all_ok = spec("one.test", port, 2000);
    all_ok.address_policy = AddressPolicy::All;
    assert_eq!(checker.check(&all_ok).await.outcome, Outcome::Ok);
}

#[tokio::test]
async fn guard_blocks_a_name_resolving_to_loopback_without_connecting() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dns = DnsServer::start().await.unwrap();
    dns.set("rebind.test", Answer::Addrs(vec![LOCAL]));
    let checker = checker_with(Some(&dns), Guard::public_only());

    let r = checker.check(&spec("rebind.test", port, 2000)).await;
    assert_eq!(r.outcome, Outcome::Blocked, "{}", r.detail);
    assert!(r.detail.contains("127.0.0.1"), "{}", r.detail);
    assert!(!r.outcome.is_target_failure());

    let r = checker.check(&spec("127.0.0.1", port, 2000)).await;
    assert_eq!(r.outcome, Outcome::Blocked, "an IP literal is guarded too");

    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        accepted.is_err(),
        "no connection may reach a blocked address"
    );
}

/// ENETUNREACH, produced for real: the check runs on a thread moved into a
/// fresh network namespace, where no route exists. Needs root (CI has it).
#[test]
fn unreachable_in_a_namespace_without_routes() {
    let handle = std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) needs root: {}",
            std::io::Error::last_os_error()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let checker = checker_with(None, Guard::allow_private());
            checker.check(&spec("203.0.113.7", 5432, 2000)).await
        })
    });
    let r = handle.join().expect("namespace thread");
    assert_eq!(r.outcome, Outcome::Unreachable, "{}", r.detail);
    assert_eq!(r.outcome.text(), "Network unreachable");
}
