//! An agent given several coordinator addresses fails over between them, with
//! real processes on loopback: one real coordinator behind two small TCP
//! forwarders written here, so that "an address dies" is a forwarder closing
//! its listener and its connections while the coordinator (and its store)
//! stays the same; every result can then be counted once.
//!
//! One name with several addresses is covered by the unit tests of the
//! candidate expansion (`failover::tests`): the agent resolves coordinator
//! names with the system's resolver, which a test cannot point at its own
//! DNS server without editing /etc/hosts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portwatch_e2e::{
    AgentProc, CountingListener, World, all_results, checked_at_ms, eventually, free_port,
    metric_value,
};
use portwatch_proto::v1;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

/// The test coordinator's heartbeat interval (the e2e harness's fast timings).
const HEARTBEAT: Duration = Duration::from_millis(500);

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portwatch-agent"))
}

fn coordinator_bin() -> PathBuf {
    // The coordinator binary sits beside ours in the target directory.
    let mut p = agent_bin().to_path_buf();
    p.set_file_name("portwatch-coordinator");
    p
}

/// A TCP forwarder on a loopback port in front of `upstream`; it records when
/// it accepted each connection, and [`Forwarder::kill`] closes its listener
/// and every connection through it, as a coordinator's host dying would.
struct Forwarder {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Instant>>>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    task: JoinHandle<()>,
}

impl Forwarder {
    async fn start(upstream: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let task = tokio::spawn({
            let (accepted, conns) = (accepted.clone(), conns.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    accepted.lock().unwrap().push(Instant::now());
                    let conn = tokio::spawn(async move {
                        if let Ok(mut up) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut up).await;
                        }
                    });
                    conns.lock().unwrap().push(conn.abort_handle());
                }
            }
        });
        Forwarder {
            addr,
            accepted,
            conns,
            task,
        }
    }

    fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().clone()
    }

    fn kill(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A coordinator, a tenant and its private region `r0` with an agent token.
async fn world() -> World {
    World::builder()
        .coordinator_bin(coordinator_bin())
        .private_regions(1)
        .start()
        .await
}

/// Starts an agent of r0 whose `coordinator` is the list `addrs` (in order).
fn agent(w: &World, addrs: &[SocketAddr]) -> AgentProc {
    let dir = w.dir.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let list = addrs
        .iter()
        .map(|a| format!("\"https://{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = dir.join("agent.toml");
    let text = format!(
        "coordinator = [{list}]\ntoken = \"{}\"\nca = \"{}\"\ntls_server_name = \"localhost\"\ndata_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\nbatch_wait = \"50ms\"\nallow_private_targets = true\n",
        w.regions[0].token,
        w.coord.cert.cert.display(),
        dir.join("spool").display(),
    );
    std::fs::write(&config, text).unwrap();
    AgentProc::launch(agent_bin(), &config)
}

/// The value of `portwatch_agent_coordinator_info` for `addr`, if reported.
fn info(text: &str, addr: SocketAddr) -> Option<f64> {
    let label = format!("address=\"{addr}\"");
    text.lines()
        .find(|l| l.starts_with("portwatch_agent_coordinator_info{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether the agent reports `addr` as the coordinator address in use.
async fn in_use(agent: &AgentProc, addr: SocketAddr) -> bool {
    let Some(text) = agent.try_metrics_text().await else {
        return false;
    };
    info(&text, addr) == Some(1.0)
}

/// Every stored result of these monitors, with a check that none is stored
/// twice (the same monitor and `checked_at`).
async fn distinct_results(w: &World, monitors: &[v1::Monitor]) -> usize {
    let mut seen = HashSet::new();
    for m in monitors {
        for r in all_results(&w.tenant, &m.id).await {
            let key = (m.id.clone(), checked_at_ms(&r));
            assert!(seen.insert(key.clone()), "stored twice: {key:?}");
        }
    }
    seen.len()
}

/// Waits (bounded) until more than `than` results are stored.
async fn results_beyond(w: &World, monitors: &[v1::Monitor], than: usize) -> usize {
    eventually(
        "more results stored",
        Duration::from_secs(20),
        || async move {
            let n = distinct_results(w, monitors).await;
            (n > than).then_some(n)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_its_coordinator_address_dies_the_agent_is_back_through_the_next_within_two_heartbeats()
 {
    let mut w = world().await;
    let target = CountingListener::start().await;
    let f1 = Forwarder::start(w.coord.addr).await;
    let f2 = Forwarder::start(w.coord.addr).await;
    let a = agent(&w, &[f1.addr, f2.addr]);
    let monitors = w
        .create_monitors(5, "127.0.0.1", target.addr.port(), 1_000)
        .await;
    eventually(
        "the agent uses the first address",
        Duration::from_secs(20),
        || async { in_use(&a, f1.addr).await.then_some(()) },
    )
    .await;
    let before = results_beyond(&w, &monitors, 5).await;
    assert!(
        f2.accepted().is_empty(),
        "the second address is not used yet"
    );

    let killed = Instant::now();
    f1.kill();
    let reached = eventually(
        "the agent connects through the second address",
        Duration::from_secs(10),
        || async { f2.accepted().first().copied() },
    )
    .await;
    let took = reached.duration_since(killed);
    assert!(
        took <= 2 * HEARTBEAT,
        "the agent reached the second address {took:?} after the first died"
    );
    eventually(
        "the agent reports the second address in use",
        Duration::from_secs(10),
        || async { in_use(&a, f2.addr).await.then_some(()) },
    )
    .await;
    let text = a.metrics_text().await;
    assert_eq!(
        metric_value(&text, "portwatch_agent_coordinator_failovers_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(info(&text, f1.addr), Some(0.0), "{text}");

    // Results keep arriving, each stored once (the spool re-sends what was
    // not acknowledged; the coordinator keeps one of each).
    let after = results_beyond(&w, &monitors, before + 10).await;
    assert!(after > before);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_address_costs_no_wait_and_a_drain_moves_the_agent_to_another() {
    let mut w = world().await;
    let target = CountingListener::start().await;
    // Nothing listens on the first address.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let f1 = Forwarder::start(w.coord.addr).await;
    let f2 = Forwarder::start(w.coord.addr).await;
    let started = Instant::now();
    let a = agent(&w, &[dead, f1.addr, f2.addr]);
    eventually(
        "the agent connects through the second address",
        Duration::from_secs(20),
        || async { in_use(&a, f1.addr).await.then_some(()) },
    )
    .await;
    let connected = f1.accepted()[0].duration_since(started);
    // Start-up (the spool, the metrics listener) and one refused connect: no
    // backoff was paid for the dead address.
    assert!(
        connected < Duration::from_secs(3),
        "connected {connected:?} after start"
    );
    let monitors = w
        .create_monitors(5, "127.0.0.1", target.addr.port(), 1_000)
        .await;
    let before = results_beyond(&w, &monitors, 5).await;

    // The coordinator stops softly: it asks its agents to drain and come
    // back in a second; it is back on the same address before that.
    let f1_before = f1.accepted().len();
    w.coord
        .proc
        .terminate(Duration::from_secs(20))
        .expect("the coordinator stops");
    w.coord.restart();
    w.reconnect().await;
    let first_f2 = eventually(
        "the agent reconnects after the drain",
        Duration::from_secs(20),
        || async { f2.accepted().first().copied() },
    )
    .await;
    // The first attempt after the drain went to another address than the
    // drained one.
    let f1_after: Vec<Instant> = f1.accepted()[f1_before..].to_vec();
    assert!(
        f1_after.iter().all(|t| *t > first_f2),
        "the agent went back to the drained address first"
    );
    eventually(
        "the agent reports the third address in use",
        Duration::from_secs(20),
        || async { in_use(&a, f2.addr).await.then_some(()) },
    )
    .await;
    let after = results_beyond(&w, &monitors, before + 10).await;
    assert!(after > before);
    drop(a);
}
