//! Faults an agent must heal from on its own, with real processes on loopback:
//! a full disk under its spool (a small tmpfs in a mount namespace of the
//! agent's own, filled and freed from here through `/proc/<pid>/root`), and a
//! coordinator that acknowledges more than the agent ever sent (a fake
//! coordinator: a real gRPC server in this test), each followed by a real
//! coordinator process. Needs root (mount namespaces), as CI has.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use portwatch_e2e::{
    Admin, AgentProc, CountingListener, OPERATOR_TOKEN, Proc, World, all_results, checked_at_ms,
    eventually, metric_value,
};
use portwatch_proto::v1;
use portwatch_proto::v1::agent_message::Msg as AgentMsg;
use portwatch_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use portwatch_proto::v1::coordinator_message::Msg as CoordMsg;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portwatch-agent"))
}

fn coordinator_bin() -> PathBuf {
    // The coordinator binary sits beside ours in the target directory.
    let mut p = agent_bin().to_path_buf();
    p.set_file_name("portwatch-coordinator");
    p
}

/// A coordinator, a tenant and its private region `r0` with an agent token.
async fn world() -> World {
    World::builder()
        .coordinator_bin(coordinator_bin())
        .private_regions(1)
        .start()
        .await
}

/// `n` monitors of `target` from r0, checked every second.
async fn monitors(w: &mut World, n: usize, target: &CountingListener) -> Vec<v1::Monitor> {
    w.create_monitors(n, "127.0.0.1", target.addr.port(), 1_000)
        .await
}

/// The agent record of r0 (the only agent there), as `portwatch agents` shows it.
async fn agent_record(w: &World) -> Option<v1::Agent> {
    let mut op = w.coord.admin(OPERATOR_TOKEN).await;
    op.list_agents(v1::ListAgentsRequest {
        region: "r0".into(),
    })
    .await
    .ok()?
    .into_inner()
    .agents
    .into_iter()
    .next()
}

/// Writes an agent config (as `AgentProc::start` does) with its spool in `data_dir`.
fn agent_config(w: &World, data_dir: &Path, extra: &str) -> PathBuf {
    let config = w.dir.path().join("agent.toml");
    let text = format!(
        "coordinator = \"https://{}\"\ntoken = \"{}\"\nca = \"{}\"\ntls_server_name = \"localhost\"\ndata_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\nbatch_wait = \"50ms\"\nallow_private_targets = true\n{extra}\n",
        w.coord.addr,
        w.regions[0].token,
        w.coord.cert.cert.display(),
        data_dir.display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// Starts the agent the way `cmd` says and waits until it runs.
fn launch(cmd: Command, config: &Path) -> AgentProc {
    let mut proc = Proc::spawn("agent", cmd);
    let line = proc.wait_line("metrics on http://", Duration::from_secs(20));
    let metrics = line
        .rsplit("http://")
        .next()
        .and_then(|s| s.trim_end_matches("/metrics").parse().ok());
    proc.wait_line("running", Duration::from_secs(20));
    AgentProc {
        proc,
        config: config.to_path_buf(),
        bin: agent_bin().to_path_buf(),
        metrics,
    }
}

/// Writes zeros to `path` until the file system is full (ENOSPC); bounded.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    for _ in 0..1024 {
        match f.write_all(&chunk).and_then(|()| f.sync_all()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return written,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    panic!("{} never filled its file system", path.display());
}

fn ms(t: SystemTime) -> u64 {
    portwatch_proto::time::unix_micros(t) / 1000
}

/// Every stored result of these monitors.
async fn results_of(tenant: &Admin, monitors: &[v1::Monitor]) -> Vec<v1::CheckResult> {
    let mut out = Vec::new();
    for m in monitors {
        out.extend(all_results(tenant, &m.id).await);
    }
    out
}

/// A metric of the agent with labels, e.g. `name{loop="stream"}`.
fn metric(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or(-1.0)
}

fn assert_all_loops_run(text: &str) {
    for l in ["checks", "spool_writer", "stream", "memory_trim"] {
        let name = format!("portwatch_agent_loop_running{{loop=\"{l}\"}}");
        assert_eq!(metric(text, &name), 1.0, "{name} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_spool_heals_without_a_restart_and_the_loss_is_reported() {
    let mut w = world().await;
    let target = CountingListener::start().await;
    // The agent gets a mount namespace of its own with a 16 MiB tmpfs as its
    // data dir; from here the directory is the empty mount point.
    let mount = w.dir.path().join("agent-disk");
    std::fs::create_dir_all(&mount).unwrap();
    // spool_max also bounds the results held in memory while the spool
    // cannot store: 100, against 40 results a second.
    let config = agent_config(&w, &mount.join("spool"), "spool_max = 100\n");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"mount -t tmpfs -o size=16m portwatch-spool "$0" && exec "$1" run --config "$2""#,
    ])
    .arg(&mount)
    .arg(agent_bin())
    .arg(&config)
    .env("PORTWATCH_LOG", "info");
    let mut agent = launch(cmd, &config);
    // unshare and sh exec: this is the agent's own pid.
    let pid = agent.proc.child.id();
    let disk = PathBuf::from(format!("/proc/{pid}/root{}", mount.display()));
    assert!(
        disk.join("spool").is_dir(),
        "the spool is on the agent's tmpfs"
    );

    let monitors = monitors(&mut w, 40, &target).await;
    let tenant = w.admin(&w.tenant_token).await;
    eventually("results stored", Duration::from_secs(20), || {
        let (t, m) = (&tenant, &monitors[..2]);
        async move { (results_of(t, m).await.len() >= 4).then_some(()) }
    })
    .await;
    assert_all_loops_run(&agent.metrics_text().await);

    // The disk fills up.
    let filler = disk.join("filler");
    let filled = tokio::task::spawn_blocking({
        let filler = filler.clone();
        move || fill(&filler)
    })
    .await
    .unwrap();
    assert!(filled > 0);
    let record = eventually(
        "the agent reports that its spool cannot store",
        Duration::from_secs(30),
        || async {
            agent_record(&w)
                .await
                .filter(|a| a.online && a.spool_error.contains("No space left on device"))
        },
    )
    .await;
    let full_seen = SystemTime::now();
    assert!(record.online, "{record:?}");
    // It goes on checking meanwhile.
    let before = target.count();
    eventually("checks go on", Duration::from_secs(10), || {
        let n = target.count();
        async move { (n >= before + 80).then_some(()) }
    })
    .await;
    let text = agent.metrics_text().await;
    assert_eq!(
        metric(&text, "portwatch_agent_spool_failing"),
        1.0,
        "{text}"
    );

    // The coordinator restarts while the disk is full: the agent reconnects
    // (its spool failing must not keep it from a session).
    w.coord.proc.kill9();
    w.coord.restart();
    let tenant = w.admin(&w.tenant_token).await;
    eventually(
        "the agent reconnects with its spool still failing",
        Duration::from_secs(30),
        || async {
            agent_record(&w)
                .await
                .filter(|a| a.online && !a.spool_error.is_empty())
        },
    )
    .await;

    // Space is freed: no restart, the agent stores and sends again.
    std::fs::remove_file(&filler).unwrap();
    let freed = SystemTime::now();
    eventually(
        "results checked after the disk was freed arrive",
        Duration::from_secs(30),
        || {
            let (t, m) = (&tenant, &monitors[..4]);
            async move {
                let rs = results_of(t, m).await;
                (rs.iter().filter(|r| checked_at_ms(r) > ms(freed)).count() >= 4).then_some(())
            }
        },
    )
    .await;
    let record = eventually(
        "the spool error clears and the loss is reported",
        Duration::from_secs(20),
        || async {
            agent_record(&w)
                .await
                .filter(|a| a.online && a.spool_error.is_empty())
        },
    )
    .await;
    assert!(
        record.unstored_total > 0,
        "results beyond the memory bound were dropped while the disk was full, and counted: {record:?}"
    );
    assert!(record.loop_errors_total > 0, "{record:?}");

    // Held in memory while the disk was full and stored after: results
    // checked then arrived too, each once.
    let rs = results_of(&tenant, &monitors).await;
    let during = rs
        .iter()
        .filter(|r| (ms(full_seen)..ms(freed)).contains(&checked_at_ms(r)))
        .count();
    assert!(
        during > 0,
        "no result checked while the disk was full arrived"
    );
    let mut keys: Vec<(String, u64)> = rs
        .iter()
        .map(|r| (r.monitor_id.clone(), checked_at_ms(r)))
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "a result was stored twice");

    let text = eventually("the agent's spool drains", Duration::from_secs(20), || {
        let a = &agent;
        async move {
            let text = a.metrics_text().await;
            (metric(&text, "portwatch_agent_spool_failing") == 0.0
                && metric(&text, "portwatch_agent_spool_held") == 0.0)
                .then_some(text)
        }
    })
    .await;
    assert!(
        metric(&text, "portwatch_agent_spool_unstored_total") >= record.unstored_total as f64,
        "{text}"
    );
    assert!(
        metric(&text, "portwatch_agent_spool_reopens_total") >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "portwatch_agent_loop_errors_total{loop=\"spool_writer\"}"
        ) > 0.0,
        "{text}"
    );
    assert_all_loops_run(&text);
    assert!(
        agent.proc.child.try_wait().unwrap().is_none(),
        "the agent was not restarted"
    );
}

/// A coordinator that acknowledges every batch up to 2^64 − 1, welcomes the
/// first connection with 0 and every later one with 2^64 − 1, and ends the
/// first connection after four batches.
#[derive(Clone)]
struct Overacknowledging {
    assignment: v1::Assignment,
    connections: Arc<AtomicUsize>,
    /// (connection, seq) of every result received.
    received: Arc<Mutex<Vec<(usize, u64)>>>,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl AgentService for Overacknowledging {
    type ConnectStream = ReceiverStream<Result<v1::CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let conn = self.connections.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        match inbound.message().await? {
            Some(v1::AgentMessage {
                msg: Some(AgentMsg::Hello(_)),
            }) => {}
            _ => return Err(Status::invalid_argument("hello first")),
        }
        let (tx, rx) = mpsc::channel(64);
        let say = |m| Ok(v1::CoordinatorMessage { msg: Some(m) });
        let welcome = v1::Welcome {
            region: "r0".into(),
            acked_seq: if conn == 0 { 0 } else { u64::MAX },
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 2_000,
            allow_private_targets: true,
        };
        let snapshot = v1::AssignmentSnapshot {
            assignments: vec![self.assignment.clone()],
            revision: 1,
        };
        let _ = tx.send(say(CoordMsg::Welcome(welcome))).await;
        let _ = tx.send(say(CoordMsg::Snapshot(snapshot))).await;
        let (received, stop) = (self.received.clone(), self.stop.clone());
        tokio::spawn(async move {
            let mut batches = 0;
            loop {
                let m = tokio::select! {
                    () = stop.cancelled() => return,
                    m = inbound.message() => m,
                };
                let Ok(Some(m)) = m else { return };
                if let Some(AgentMsg::Results(batch)) = m.msg {
                    received
                        .lock()
                        .unwrap()
                        .extend(batch.results.iter().map(|r| (conn, r.seq)));
                    let ack = v1::Ack {
                        up_to_seq: u64::MAX,
                        refused: 0,
                    };
                    if tx.send(say(CoordMsg::Ack(ack))).await.is_err() {
                        return;
                    }
                    batches += 1;
                    if conn == 0 && batches == 4 {
                        // Ends this stream: the agent connects again.
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_survives_a_coordinator_acknowledging_more_than_it_sent() {
    let mut w = world().await;
    let target = CountingListener::start().await;
    let monitor = monitors(&mut w, 1, &target).await.remove(0);
    // The real coordinator goes away; the fake takes its address and certificate.
    w.coord.proc.kill9();
    let fake = Overacknowledging {
        assignment: v1::Assignment {
            monitor_id: monitor.id.clone(),
            spec: Some(v1::CheckSpec {
                host: monitor.host.clone(),
                port: monitor.port,
                timeout_ms: 1_000,
                family: v1::IpFamily::Any as i32,
                address_policy: v1::AddressPolicy::Any as i32,
                close_mode: v1::CloseMode::Rst as i32,
            }),
            interval_ms: 1_000,
            generation: 1,
        },
        connections: Arc::new(AtomicUsize::new(0)),
        received: Arc::new(Mutex::new(Vec::new())),
        stop: CancellationToken::new(),
    };
    let listener = tokio::net::TcpListener::bind(w.coord.addr).await.unwrap();
    let identity = Identity::from_pem(
        std::fs::read(&w.coord.cert.cert).unwrap(),
        std::fs::read(&w.coord.cert.key).unwrap(),
    );
    let server = tokio::spawn(
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(AgentServiceServer::new(fake.clone()))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), {
                let stop = fake.stop.clone();
                async move { stop.cancelled().await }
            }),
    );

    let config = agent_config(&w, &w.dir.path().join("agent-spool"), "");
    let mut cmd = Command::new(agent_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("PORTWATCH_LOG", "info");
    let mut agent = launch(cmd, &config);
    let started = SystemTime::now();

    // Acknowledged up to 2^64 − 1 after every batch, the agent goes on
    // numbering and sending its results; welcomed with 2^64 − 1 on the next
    // connection, it sends everything it holds again.
    let received = eventually(
        "batches keep coming after acknowledgements beyond what was sent",
        Duration::from_secs(30),
        || {
            let received = fake.received.lock().unwrap().clone();
            async move {
                let second: Vec<u64> = received
                    .iter()
                    .filter(|(c, _)| *c == 1)
                    .map(|(_, s)| *s)
                    .collect();
                (second.len() >= 8).then_some(received)
            }
        },
    )
    .await;
    let first: Vec<u64> = received
        .iter()
        .filter(|(c, _)| *c == 0)
        .map(|(_, s)| *s)
        .collect();
    let second: Vec<u64> = received
        .iter()
        .filter(|(c, _)| *c == 1)
        .map(|(_, s)| *s)
        .collect();
    assert!(first.len() >= 4, "{received:?}");
    assert!(
        first.windows(2).all(|p| p[0] < p[1]),
        "numbers go on, strictly increasing: {first:?}"
    );
    assert_eq!(
        second[0], 1,
        "nothing was deleted for a false acknowledgement"
    );
    assert!(
        second.iter().max() > first.iter().max(),
        "new results after the second welcome: {received:?}"
    );
    assert!(
        received.iter().all(|(_, s)| *s < 1_000),
        "the counter was moved: {received:?}"
    );
    let text = agent.metrics_text().await;
    assert!(
        metric(&text, "portwatch_agent_acks_ignored_total") >= 8.0,
        "{text}"
    );
    assert_all_loops_run(&text);

    // A normal coordinator again: everything the fake claimed to hold arrives.
    fake.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let faked_until = SystemTime::now();
    w.coord.restart();
    let tenant = w.admin(&w.tenant_token).await;
    let sent_to_fake = first.len();
    let rs = eventually(
        "the results the fake acknowledged arrive at the real coordinator",
        Duration::from_secs(30),
        || {
            let (t, id) = (&tenant, &monitor.id);
            async move {
                let rs = all_results(t, id).await;
                let from_fake = rs
                    .iter()
                    .filter(|r| (ms(started)..ms(faked_until)).contains(&checked_at_ms(r)))
                    .count();
                let after = rs
                    .iter()
                    .filter(|r| checked_at_ms(r) > ms(faked_until))
                    .count();
                (from_fake >= sent_to_fake && after >= 2).then_some(rs)
            }
        },
    )
    .await;
    assert!(
        rs.len() as u64 <= target.count(),
        "never more results than checks"
    );
    // The real coordinator's acknowledgements (of the agent's own numbers)
    // empty the spool.
    eventually("the spool drains", Duration::from_secs(20), || {
        let a = &agent;
        async move {
            let text = a.metrics_text().await;
            (metric(&text, "portwatch_agent_spool_depth") == 0.0).then_some(())
        }
    })
    .await;

    // And across a restart: the counter on disk was never moved either.
    agent.proc.kill9();
    agent.restart();
    let restarted = SystemTime::now();
    eventually(
        "results checked after a restart arrive",
        Duration::from_secs(30),
        || {
            let (t, id) = (&tenant, &monitor.id);
            async move {
                let rs = all_results(t, id).await;
                (rs.iter()
                    .filter(|r| checked_at_ms(r) > ms(restarted))
                    .count()
                    >= 2)
                    .then_some(())
            }
        },
    )
    .await;
}
