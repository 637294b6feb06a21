use super::*;

fn result(i: usize) -> v1::CheckResult {
    v1::CheckResult {
        monitor_id: format!("mon-{i}"),
        ..Default::default()
    }
}

// The check loop, on its own thread as the agent runs it, against real
// loopback listeners.

/// A checker for IP literals on loopback.
fn checker() -> Checker {
    let resolver = portwatch_check::Resolver::new(&portwatch_check::Nameservers::System).unwrap();
    Checker::new(resolver, portwatch_check::Guard::allow_private())
}

/// Hourly monitors whose first aligned check is over a minute away: in
/// these tests each runs exactly once, at once (its first check).
fn assignments(n: usize, target: std::net::SocketAddr, timeout_ms: u32) -> Vec<v1::Assignment> {
    const HOUR_MS: u64 = 3_600_000;
    let now = now_ms();
    (0..)
        .map(|k| format!("mon-{k}"))
        .filter(|id| crate::scheduler::next_aligned(id, HOUR_MS, now) > now + 60_000)
        .take(n)
        .map(|monitor_id| v1::Assignment {
            monitor_id,
            spec: Some(v1::CheckSpec {
                host: target.ip().to_string(),
                port: u32::from(target.port()),
                timeout_ms,
                family: v1::IpFamily::Any as i32,
                address_policy: v1::AddressPolicy::Any as i32,
                close_mode: v1::CloseMode::Rst as i32,
            }),
            interval_ms: HOUR_MS,
            generation: 1,
        })
        .collect()
}

/// A listener that accepts and counts every connection.
async fn counting_listener() -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    (addr, accepted)
}

/// A listener whose accept queue is full and never drained: the kernel
/// drops further SYNs, so a check against it runs until its timeout.
fn silent_listener() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Protocol, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    l.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr);
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

async fn join(handle: std::thread::JoinHandle<()>, limit: Duration) {
    tokio::time::timeout(limit, tokio::task::spawn_blocking(move || handle.join()))
        .await
        .expect("the check thread did not end in time")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_falls_behind_loses_no_result_and_stops_new_checks() {
    let (addr, accepted) = counting_listener().await;
    // Room for two results in the channel, four checks in flight.
    let (tx, mut rx) = mpsc::channel(2);
    let runner = Runner::new(checker(), 4, tx, None);
    runner.apply_snapshot(&assignments(40, addr, 2_000));
    let stop = CancellationToken::new();
    let thread = runner
        .clone()
        .start(stop.clone(), Duration::from_secs(5))
        .unwrap();

    // Nobody reads: the loop holds what it cannot hand on and, once it
    // holds as many as it may run, starts nothing new.
    let mut max_in_flight = 0;
    for _ in 0..50 {
        max_in_flight = max_in_flight.max(runner.in_flight());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = accepted.load(Ordering::Relaxed);
    assert!(
        max_in_flight <= 4,
        "{max_in_flight} checks in flight, bound 4"
    );
    assert!(
        (2..=10).contains(&started),
        "{started} checks ran while the writer read nothing (channel 2 + held 4..8)"
    );

    // Once the writer reads again, every monitor's first check arrives, once.
    let mut ids = HashSet::new();
    while ids.len() < 40 {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("results stopped coming")
            .expect("channel closed early");
        assert_eq!(r.outcome, v1::Outcome::Ok as i32, "{r:?}");
        assert!(ids.insert(r.monitor_id.clone()), "{} twice", r.monitor_id);
    }
    stop.cancel();
    join(thread, Duration::from_secs(10)).await;
    assert!(
        rx.recv().await.is_none(),
        "a result after the first round, or the channel left open"
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 40);
}

/// One check in flight against a silent listener (its SYN is never
/// answered), then `stop` cancelled: returns the listener (keep it), the
/// runner, its results, the check thread and when stop was cancelled.
async fn stopped_with_one_check_in_flight(
    timeout_ms: u32,
    drain: Duration,
) -> (
    (socket2::Socket, Vec<std::net::TcpStream>),
    Arc<Runner>,
    mpsc::Receiver<v1::CheckResult>,
    std::thread::JoinHandle<()>,
    Instant,
) {
    let silent = silent_listener();
    let target = silent.0.local_addr().unwrap().as_socket().unwrap();
    let (tx, rx) = mpsc::channel(16);
    let runner = Runner::new(checker(), 16, tx, None);
    runner.apply_snapshot(&assignments(1, target, timeout_ms));
    let stop = CancellationToken::new();
    let thread = runner.clone().start(stop.clone(), drain).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while runner.in_flight() == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(runner.in_flight(), 1);
    let stopped = Instant::now();
    stop.cancel();
    (silent, runner, rx, thread, stopped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_finishes_the_checks_in_flight_then_closes_the_channel() {
    let (_silent, runner, mut rx, thread, stopped) =
        stopped_with_one_check_in_flight(1_000, Duration::from_secs(5)).await;
    // The check runs to its 1 s timeout and its verdict is handed on.
    let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no result after stopping")
        .expect("channel closed without the check in flight");
    assert_eq!(r.outcome, v1::Outcome::TimedOut as i32, "{r:?}");
    assert!(rx.recv().await.is_none());
    join(thread, Duration::from_secs(5)).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(runner.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_gives_up_on_checks_in_flight_after_the_drain_time() {
    let (_silent, _runner, mut rx, thread, stopped) =
        stopped_with_one_check_in_flight(10_000, Duration::from_millis(200)).await;
    // Closed after the 200 ms drain, not after the 10 s timeout.
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the channel stayed open");
    assert!(end.is_none(), "{end:?}");
    join(thread, Duration::from_secs(5)).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn a_panicking_check_becomes_a_probe_error_for_its_monitor() {
    let check = async {
        if now_ms() > 0 {
            panic!("a bug inside a check");
        }
        result(0)
    };
    let r = contained(check, "mon-7", 3, true).await;
    assert_eq!(r.monitor_id, "mon-7");
    assert_eq!(r.outcome, v1::Outcome::ProbeError as i32);
    assert_eq!((r.generation, r.immediate), (3, true));
    assert!(r.checked_at.is_some());
    // A check that does not panic passes through untouched.
    let r = contained(async { result(1) }, "mon-1", 1, false).await;
    assert_eq!(r.monitor_id, "mon-1");
    assert_eq!(r.outcome, v1::Outcome::Unspecified as i32);
}
