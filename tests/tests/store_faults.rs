//! The coordinator's store under a bad day, with the real binaries as
//! separate processes and a real disk: a full disk (a small tmpfs in the
//! coordinator's own mount namespace, filled and freed by the test), damaged
//! store files, and a backup restored over a destroyed data directory.
//!
//! What it proves, as an operator would see it:
//! 1. with its disk full, the coordinator acknowledges nothing (the agent's
//!    spool grows), gRPC health says NOT_SERVING, admin writes fail with
//!    UNAVAILABLE and say why, reads still answer; once space is freed it is
//!    SERVING again within seconds without a restart, the spool drains, and
//!    every handshake the agent made is stored exactly once;
//! 2. a stop (SIGTERM) of a coordinator whose disk is full ends in bounded
//!    time, even when an agent sends results with megabytes of `detail`;
//! 3. damaged store files (flipped bytes, truncation) stop the coordinator with
//!    a message naming the data directory and the restore command, exit status
//!    3, never a panic's 101, never a hang; and a backup taken from the stopped
//!    coordinator, restored over the destroyed directory, brings back every
//!    monitor, result, incident and token.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portwatch_e2e::{Coordinator, FakeAgent, Proc, eventually, metric_value};
use portwatch_proto::v1;
use support::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const HOST: &str = "db.acme.test";

/// A world whose coordinator keeps its store on a tmpfs of `mib` MiB.
async fn world_in_tmpfs(mib: u64) -> World {
    World::builder().tmpfs(mib).private_regions(1).start().await
}

/// The overall gRPC health status ("" service), as a load balancer asks it.
async fn health(coord: &Coordinator) -> Option<ServingStatus> {
    let mut client = HealthClient::new(coord.channel().await);
    let r = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

/// Results the coordinator has acknowledged since it started.
async fn ingested(coord: &Coordinator) -> f64 {
    coord
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("portwatch_results_ingested_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn spool_depth(p: &Probe) -> f64 {
    p.metric("portwatch_agent_spool_depth").await
}

/// Fills the file system holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0x5au8; 256 * 1024];
    for _ in 0..16_384 {
        if f.write_all(&chunk).is_err() {
            return path;
        }
    }
    panic!("{}: not full after 4 GiB", dir.display());
}

// ---------------------------------------------------------------- 1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledgements_and_everything_resumes_once_space_is_freed() {
    let mut w = world_in_tmpfs(48).await;
    let mut ds = doors(&["127.0.0.13"]);
    ds[0].open().await;
    let mut probe = w.probe(0, "r0").await;
    probe.answer(HOST, ds[0].ip());
    let regions = w.names(1);
    let mut monitors = Vec::new();
    for i in 0..5 {
        let req = monitor(&format!("db {i}"), HOST, ds[0].port(), &regions, 1000);
        monitors.push(create_monitor(&mut w.tenant, req).await);
    }
    eventually(
        "results acknowledged before the disk fills",
        WAIT,
        || async { (ingested(&w.coord).await >= 20.0).then_some(()) },
    )
    .await;
    assert_eq!(health(&w.coord).await, Some(ServingStatus::Serving));

    let filler = fill(&w.coord.data_view());
    eventually("health NOT_SERVING with the disk full", WAIT, || async {
        (health(&w.coord).await == Some(ServingStatus::NotServing)).then_some(())
    })
    .await;
    // Nothing is acknowledged while the disk is full: the agent keeps checking
    // and its spool grows.
    let (stored, depth) = (ingested(&w.coord).await, spool_depth(&probe).await);
    let before = ds[0].accepted();
    for d in &ds {
        let n = d.accepted() + 25;
        eventually("checks go on while the disk is full", WAIT, || async move {
            (d.accepted() >= n).then_some(())
        })
        .await;
    }
    eventually("the agent's spool grows", WAIT, || async {
        (spool_depth(&probe).await >= depth + 15.0).then_some(())
    })
    .await;
    assert_eq!(
        ingested(&w.coord).await,
        stored,
        "nothing acknowledged while the disk is full ({} handshakes meanwhile)",
        ds[0].accepted() - before
    );
    // Admin writes say why they fail; reads still answer.
    let e = w
        .tenant
        .create_monitor(monitor("while full", HOST, ds[0].port(), &regions, 1000))
        .await
        .expect_err("a write while the disk is full");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message());
    assert!(
        e.message().contains("not writable") && e.message().contains("retry"),
        "the message says what happened and what to do: {}",
        e.message()
    );
    let listed = w
        .tenant
        .list_monitors(v1::ListMonitorsRequest::default())
        .await
        .expect("reads answer while the disk is full")
        .into_inner();
    assert_eq!(listed.monitors.len(), monitors.len());
    let text = w.coord.metrics_text().await;
    assert_eq!(metric_value(&text, "portwatch_serving"), Some(0.0));
    assert_eq!(
        metric_value(
            &text,
            "portwatch_health_condition_ok{condition=\"store_writable\"}"
        ),
        Some(0.0)
    );

    std::fs::remove_file(&filler).expect("free the disk");
    let freed = Instant::now();
    eventually(
        "health SERVING again after space is freed",
        Duration::from_secs(15),
        || async { (health(&w.coord).await == Some(ServingStatus::Serving)).then_some(()) },
    )
    .await;
    println!("writable again {:?} after space was freed", freed.elapsed());
    probe.drained(Duration::from_secs(30)).await;
    println!(
        "agent spool drained {:?} after space was freed",
        freed.elapsed()
    );
    let mut paused = monitor("after", HOST, ds[0].port(), &regions, 1000);
    paused.paused = true;
    create_monitor(&mut w.tenant, paused).await;

    // A clean stop of the agent sends what it checked last; then every
    // handshake is one stored result.
    let status = probe
        .agent
        .proc
        .terminate(Duration::from_secs(20))
        .expect("the agent stops after SIGTERM");
    assert!(status.success(), "agent: {status:?}");
    let deadline = Instant::now() + WAIT;
    let all = loop {
        let mut all = Vec::new();
        for m in &monitors {
            all.extend(results(&w.tenant, &m.id).await);
        }
        if all.len() as u64 == ds[0].accepted() {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "every handshake stored as exactly one result: {} handshakes, {} results",
            ds[0].accepted(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_no_duplicates(&all);
    println!(
        "disk full and freed: {} handshakes, {} results stored",
        ds[0].accepted(),
        all.len()
    );
}

// ---------------------------------------------------------------- 2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_the_disk_full_ends_in_bounded_time_even_with_megabyte_details() {
    let mut w = world_in_tmpfs(24).await;
    let regions = w.names(1);
    let m = create_monitor(&mut w.tenant, monitor("db", HOST, 5432, &regions, 1000)).await;
    let mut agent = FakeAgent::connect(&w.coord, &w.regions[0].token, "big-detail")
        .await
        .expect("agent connects");
    agent.keepalive();
    agent.report_acked(&m.id, v1::Outcome::Ok).await;

    fill(&w.coord.data_view());
    // Results with 3 MiB of detail each (under gRPC's 4 MiB message limit):
    // sled writes each to a blob file of its own, which fails on the full disk.
    for _ in 0..3 {
        let seq = agent.next_seq;
        agent.next_seq += 1;
        let mut r =
            portwatch_e2e::result(&m.id, v1::Outcome::Refused, std::time::SystemTime::now());
        r.detail = "x".repeat(3 * 1024 * 1024);
        let batch = v1::ResultBatch {
            results: vec![v1::SequencedResult {
                seq,
                result: Some(r),
            }],
        };
        // The coordinator may end the stream meanwhile (a drain): fine.
        let _ = agent
            .tx
            .send(v1::AgentMessage {
                msg: Some(v1::agent_message::Msg::Results(batch)),
            })
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    let status = w
        .coord
        .proc
        .terminate(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("the coordinator ignored SIGTERM for 40 s with its disk full"));
    println!("stopped {:?} after SIGTERM: {status:?}", asked.elapsed());
    assert!(
        status.success(),
        "a clean stop, not a panic or the last-resort exit: {status:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "stopped within the drain and flush bounds: {:?}",
        asked.elapsed()
    );
}

// ---------------------------------------------------------------- 3

/// How a start on some store files went.
enum Start {
    /// It serves, on this address, with metrics on the second.
    Served(Proc, std::net::SocketAddr, Option<std::net::SocketAddr>),
    /// It exited by itself: status code and everything it printed.
    Exited(Option<i32>, String),
}

/// Starts the coordinator on its config as it is; waits (bounded) for it to
/// listen or to exit.
fn start_on(bin: &Path, config: &Path) -> Start {
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(config).env("PORTWATCH_LOG", "warn");
    let mut p = Proc::spawn_merged("coordinator", cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = String::new();
    let mut metrics = None;
    while Instant::now() < deadline {
        while let Ok(line) = p.lines.try_recv() {
            if let Some(m) = line.split("metrics on http://").nth(1) {
                metrics = m.trim().trim_end_matches("/metrics").parse().ok();
            }
            if let Some(addr) = line.split("listening on https://").nth(1) {
                let addr = addr.trim().parse().expect("the listen address");
                return Start::Served(p, addr, metrics);
            }
            out.push_str(&line);
            out.push('\n');
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            while let Ok(line) = p.lines.try_recv() {
                out.push_str(&line);
                out.push('\n');
            }
            return Start::Exited(status.code(), out);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the coordinator neither served nor exited within 30 s on damaged files:\n{out}");
}

/// Damage done to a copy of sled's `db` file, at a fraction of its length.
#[derive(Clone, Copy)]
enum Damage {
    /// 16 bytes flipped there.
    Flip(f64),
    /// The file cut there.
    Truncate(f64),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Flip(at) => write!(f, "16 bytes flipped at {:.0} %", at * 100.0),
            Damage::Truncate(at) => write!(f, "truncated to {:.0} %", at * 100.0),
        }
    }
}

impl Damage {
    fn apply(self, db: &Path) {
        let mut bytes = std::fs::read(db).expect("read db");
        match self {
            Damage::Flip(at) => {
                let from = (bytes.len() as f64 * at) as usize;
                let to = (from + 16).min(bytes.len());
                for b in &mut bytes[from..to] {
                    *b ^= 0xa5;
                }
            }
            Damage::Truncate(at) => bytes.truncate((bytes.len() as f64 * at) as usize),
        }
        std::fs::write(db, bytes).expect("write db");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn backup_cmd(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(coordinator_bin())
        .args(args)
        .output()
        .expect("run portwatch-coordinator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_files_stop_the_coordinator_with_a_message_and_a_backup_restores_everything()
{
    let mut w = World::start(1, "").await;
    let created = std::time::SystemTime::now();
    let mut ds = doors(&["127.0.0.14"]);
    ds[0].open().await;
    let mut probe = w.probe(0, "r0").await;
    probe.answer(HOST, ds[0].ip());
    let regions = w.names(1);
    let mut monitors = Vec::new();
    for i in 0..4 {
        let req = monitor(&format!("db {i}"), HOST, ds[0].port(), &regions, 1000);
        monitors.push(create_monitor(&mut w.tenant, req).await);
    }
    // An incident that opened and closed, and one still open.
    ds[0].refuse().await;
    wait_status(&w.tenant, &monitors[0].id, "an incident opens", WAIT, |s| {
        !s.open_incident_id.is_empty()
    })
    .await;
    ds[0].open().await;
    wait_status(
        &w.tenant,
        &monitors[0].id,
        "the incident closes",
        WAIT,
        |s| s.open_incident_id.is_empty(),
    )
    .await;
    ds[0].refuse().await;
    wait_status(
        &w.tenant,
        &monitors[1].id,
        "a second incident opens",
        WAIT,
        |s| !s.open_incident_id.is_empty(),
    )
    .await;
    let status = probe
        .agent
        .proc
        .terminate(Duration::from_secs(20))
        .expect("agent stops");
    assert!(status.success());
    // History over several of sled's log segments: what a real store holds,
    // sent as an agent sends it (times between the monitors' creation and now).
    let mut bulk = FakeAgent::connect(&w.coord, &w.regions[0].token, "bulk")
        .await
        .expect("a second agent connects");
    let span = created
        .elapsed()
        .expect("clock")
        .saturating_sub(Duration::from_secs(1));
    const BULK: u32 = 20_000;
    for chunk in 0..BULK / 1000 {
        let items = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                let m = &monitors[(n % 4) as usize];
                let at = created + Duration::from_millis(500) + span * n / BULK;
                let seq = bulk.next_seq;
                bulk.next_seq += 1;
                (seq, portwatch_e2e::result(&m.id, v1::Outcome::Ok, at))
            })
            .collect();
        bulk.send_batch(items).await;
    }
    let last = bulk.next_seq - 1;
    bulk.pump_until(WAIT, |a| a.acked >= last)
        .await
        .expect("the bulk history is acknowledged");
    drop(bulk);

    let results_before = {
        let mut n = Vec::new();
        for m in &monitors {
            n.push(results(&w.tenant, &m.id).await);
        }
        n
    };
    let incidents_before = incidents(&w.tenant, false).await;
    assert!(incidents_before.len() >= 2, "{incidents_before:?}");
    let status = w
        .coord
        .proc
        .terminate(Duration::from_secs(30))
        .expect("coordinator stops");
    assert!(status.success(), "{status:?}");

    // The backup, from the stopped coordinator.
    let data = w.coord.dir.join("data");
    let backup_file = w.dir.path().join("coordinator.backup");
    let (code, text) = backup_cmd(&[
        "backup".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        backup_file.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "backup: {text}");
    assert!(text.contains("monitors 4"), "backup summary: {text}");

    // Damaged copies of the store: each either refused with the message, or
    // (damage sled never reads) served; never a panic, never a hang.
    let pristine = w.dir.path().join("pristine");
    copy_dir(&data, &pristine);
    let config = w.coord.dir.join("coordinator.toml");
    let mut refused = 0;
    let cases = [
        Damage::Flip(0.0),
        Damage::Flip(0.2),
        Damage::Flip(0.4),
        Damage::Flip(0.6),
        Damage::Flip(0.8),
        Damage::Flip(0.97),
        Damage::Truncate(0.0),
        Damage::Truncate(0.5),
        Damage::Truncate(0.9),
    ];
    for damage in cases {
        let what = damage.to_string();
        let _ = std::fs::remove_dir_all(&data);
        copy_dir(&pristine, &data);
        damage.apply(&data.join("db"));
        match start_on(&coordinator_bin(), &config) {
            Start::Served(p, addr, metrics) => {
                w.coord.proc = p;
                w.coord.addr = addr;
                w.coord.metrics = metrics;
                w.reconnect().await;
                // Damage in the history (read back after the start) must be
                // reported; otherwise nothing may be missing.
                let damaged = eventually(
                    &format!("{what}: the history read back, or damage reported"),
                    Duration::from_secs(30),
                    || async {
                        let text = w.coord.metrics_text().await;
                        let intact = metric_value(
                            &text,
                            "portwatch_health_condition_ok{condition=\"store_intact\"}",
                        );
                        let verified = metric_value(&text, "portwatch_store_history_verified");
                        match (intact, verified) {
                            (Some(0.0), _) => Some(true),
                            (_, Some(1.0)) => Some(false),
                            _ => None,
                        }
                    },
                )
                .await;
                if damaged {
                    assert_eq!(
                        health(&w.coord).await,
                        Some(ServingStatus::NotServing),
                        "{what}: damage makes health NOT_SERVING"
                    );
                    w.coord.proc.kill9();
                    refused += 1;
                    println!("{what}: served, damage found in the history: NOT_SERVING");
                    continue;
                }
                let listed = w
                    .tenant
                    .list_monitors(v1::ListMonitorsRequest::default())
                    .await
                    .map(|r| r.into_inner().monitors.len());
                assert_eq!(
                    listed.ok(),
                    Some(monitors.len()),
                    "{what}: served without its monitors"
                );
                for (m, before) in monitors.iter().zip(&results_before) {
                    let got = results(&w.tenant, &m.id).await;
                    assert!(
                        &got == before,
                        "{what}: served, but {} has {} results of the {} stored",
                        m.name,
                        got.len(),
                        before.len()
                    );
                }
                assert_eq!(
                    incidents(&w.tenant, false).await,
                    incidents_before,
                    "{what}: incidents"
                );
                w.coord.proc.kill9();
                println!("{what}: served, everything intact (damage sled never reads)");
            }
            Start::Exited(code, out) => {
                assert_eq!(code, Some(3), "{what}: exit status; output:\n{out}");
                assert!(
                    out.contains(&data.display().to_string())
                        && out.contains("restore --in")
                        && out.contains("damaged"),
                    "{what}: the message names the store and the way out:\n{out}"
                );
                refused += 1;
                println!("{what}: refused (exit 3)");
            }
        }
    }
    assert!(refused >= 3, "only {refused} damaged stores noticed");

    // Destroyed: restore the backup into its place and start again.
    std::fs::rename(&data, w.dir.path().join("data.damaged")).expect("move aside");
    let (code, text) = backup_cmd(&[
        "restore".as_ref(),
        "--in".as_ref(),
        backup_file.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "restore: {text}");
    w.coord.restart();
    w.reconnect().await;
    let listed = w
        .tenant
        .list_monitors(v1::ListMonitorsRequest::default())
        .await
        .expect("the tenant's token works after the restore")
        .into_inner();
    let mut ids: Vec<_> = listed.monitors.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    let mut want: Vec<_> = monitors.iter().map(|m| m.id.clone()).collect();
    want.sort();
    assert_eq!(ids, want, "every monitor");
    for (m, before) in monitors.iter().zip(&results_before) {
        assert_eq!(
            &results(&w.tenant, &m.id).await,
            before,
            "every result of {}",
            m.name
        );
    }
    assert_eq!(
        incidents(&w.tenant, false).await,
        incidents_before,
        "every incident"
    );
    // The region's agent token works, and the agent is told what was stored.
    let agent = FakeAgent::connect(&w.coord, &w.regions[0].token, "after-restore")
        .await
        .expect("the agent token works after the restore");
    assert!(
        agent.assigned.len() == monitors.len(),
        "assignments: {:?}",
        agent.assigned.keys()
    );
}
