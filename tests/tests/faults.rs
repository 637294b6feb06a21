//! Faults of portwatch's own parts, with the real binaries as separate
//! processes: `kill -9` of the coordinator (during result ingest, and between an
//! incident opening and its notification), `kill -9` of an agent, the
//! coordinator away for 30 s, and every agent of a region stopped.
//!
//! What it proves, as an on-call engineer would see it:
//! 7. after a `kill -9` of the coordinator during ingest, every handshake an
//!    agent made is stored exactly once (nothing acknowledged is lost, replays
//!    are not stored twice), and the agents reconnect on their own;
//! 8. after a `kill -9` of one of a region's two agents, the other takes over its
//!    monitors with no gap in checks longer than the heartbeat timeout; the
//!    killed agent's spool (results the coordinator never acknowledged) is
//!    replayed after it restarts;
//! 9. with the coordinator away for 30 s, agents keep checking, every result
//!    arrives when it returns, and an outage that began and ended meanwhile
//!    (stale by then) pages nobody;
//! 10. a `kill -9` after an incident opened but before its notifications were
//!     delivered still delivers them after the restart, exactly once per channel;
//! 11. a region whose agents all stopped gives the operator one offline notice
//!     (and one back-online notice), tenants see it as unknown, and it never
//!     counts as a failure.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use portwatch_e2e::{HttpReceiver, SmtpServer, eventually};
use portwatch_proto::v1;
use support::*;

const HOST: &str = "db.acme.test";

fn all_up(s: &v1::MonitorStatus, n: usize) -> bool {
    s.regions.len() == n
        && s.regions
            .iter()
            .all(|r| r.state == v1::RegionState::Up as i32)
}

/// Results the coordinator has ingested since it started (all regions).
async fn ingested(w: &World) -> f64 {
    w.coord
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("portwatch_results_ingested_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `door` accepted at least `n` handshakes in all.
async fn accepted_at_least(door: &Door, n: u64, what: &str) {
    eventually(what, WAIT, || {
        let got = door.accepted();
        async move { (got >= n).then_some(()) }
    })
    .await;
}

async fn all_results(w: &World, monitors: &[v1::Monitor]) -> Vec<v1::CheckResult> {
    let mut all = Vec::new();
    for m in monitors {
        all.extend(results(&w.tenant, &m.id).await);
    }
    all
}

// ---------------------------------------------------------------- 7

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_kill9_during_ingest_loses_no_acknowledged_result_and_stores_none_twice() {
    let mut w = World::start(3, "").await;
    // Each region checks its own copy of the service, so handshakes count per region.
    let mut ds = doors(&["127.0.0.1", "127.0.0.5", "127.0.0.6"]);
    for d in ds.iter_mut() {
        d.open().await;
    }
    let mut probes = w.probes(3).await;
    for (p, d) in probes.iter().zip(&ds) {
        p.answer(HOST, d.ip());
    }
    let regions = w.names(3);
    let mut monitors = Vec::new();
    for i in 0..30 {
        let req = monitor(&format!("db {i}"), HOST, ds[0].port(), &regions, 1000);
        monitors.push(create_monitor(&mut w.tenant, req).await);
    }

    let mut outages = Vec::new();
    for round in 0..3 {
        // Results flow continuously (90 a second, in batches): kill the moment
        // the ingest counter moves, so a batch is in the middle of being stored.
        let before = ingested(&w).await;
        eventually(
            &format!("round {round}: results being ingested"),
            Duration::from_secs(40),
            || async { (ingested(&w).await > before).then_some(()) },
        )
        .await;
        w.coord.proc.kill9();
        let gone = SystemTime::now();
        // The agents keep checking while it is away.
        for d in &ds {
            let n = d.accepted() + 3;
            accepted_at_least(d, n, "checks continue while the coordinator is away").await;
        }
        outages.push((ms(gone), ms(SystemTime::now())));
        w.coord.restart();
        w.reconnect().await;
    }

    // Every agent caught up (connected, nothing unacknowledged), then a clean
    // stop: in-flight checks finish and their results are sent and acknowledged.
    for p in &probes {
        p.drained(Duration::from_secs(60)).await;
        assert!(
            p.metric("portwatch_agent_reconnects_total").await >= 3.0,
            "{} reconnected after each kill",
            p.label
        );
    }
    for p in probes.iter_mut() {
        let status = p
            .agent
            .proc
            .terminate(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("agent {} did not exit after SIGTERM", p.label));
        assert!(status.success(), "agent {}: {status:?}", p.label);
    }

    // Every handshake is one stored result: none missing, none twice.
    let all = eventually(
        "every handshake stored as exactly one result",
        WAIT,
        || async {
            let all = all_results(&w, &monitors).await;
            let by = per_region(&all);
            regions
                .iter()
                .zip(&ds)
                .all(|(r, d)| by.get(r).map_or(0, Vec::len) as u64 == d.accepted())
                .then_some(all)
        },
    )
    .await;
    assert_no_duplicates(&all);
    // Results checked while the coordinator was away arrived (replayed).
    for (from, to) in &outages {
        for r in &regions {
            assert!(
                all.iter()
                    .any(|x| &x.region == r && (*from..*to).contains(&at_ms(x))),
                "{r}: no result from the outage {from}..{to} ms"
            );
        }
    }
    let total: u64 = ds.iter().map(Door::accepted).sum();
    println!(
        "kill -9 during ingest x3: {total} handshakes, {} results stored",
        all.len()
    );
}

// ---------------------------------------------------------------- 8

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill9_hands_its_monitors_over_at_once_and_its_spool_replays_after_restart() {
    let mut w = World::start(3, "").await;
    // r0 has two agents; each one's DNS leads it to its own copy of the service,
    // so every result says which agent made it.
    let mut ds = doors(&["127.0.0.1", "127.0.0.5", "127.0.0.6", "127.0.0.7"]);
    for d in ds.iter_mut() {
        d.open().await;
    }
    let mut a = w.probe(0, "r0-a").await;
    let b = w.probe(0, "r0-b").await;
    let others = [w.probe(1, "r1").await, w.probe(2, "r2").await];
    a.answer(HOST, ds[0].ip());
    b.answer(HOST, ds[1].ip());
    others[0].answer(HOST, ds[2].ip());
    others[1].answer(HOST, ds[3].ip());
    let (a_addr, b_addr) = (ds[0].addr.to_string(), ds[1].addr.to_string());
    let regions = w.names(3);
    let interval = 1000u64;
    let heartbeat_timeout = 2000u64;
    let mut monitors = Vec::new();
    for i in 0..12 {
        let req = monitor(&format!("db {i}"), HOST, ds[0].port(), &regions, interval);
        monitors.push(create_monitor(&mut w.tenant, req).await);
    }
    accepted_at_least(&ds[0], 12, "agent a checks its share of the monitors").await;
    accepted_at_least(&ds[1], 12, "agent b checks its share of the monitors").await;

    // kill -9 of agent a: b takes over a's monitors.
    a.agent.proc.kill9();
    let killed = ms(SystemTime::now());
    let all = eventually(
        "agent b checks every monitor in r0 after a was killed",
        WAIT,
        || async {
            let all = all_results(&w, &monitors).await;
            monitors
                .iter()
                .all(|m| {
                    all.iter()
                        .filter(|r| {
                            r.monitor_id == m.id
                                && r.region == "r0"
                                && r.address == b_addr
                                && at_ms(r) > killed
                        })
                        .count()
                        >= 2
                })
                .then_some(all)
        },
    )
    .await;
    let mut worst = 0;
    for m in &monitors {
        let mut at: Vec<u64> = all
            .iter()
            .filter(|r| r.monitor_id == m.id && r.region == "r0")
            .map(at_ms)
            .filter(|t| *t + 3000 >= killed)
            .collect();
        at.sort_unstable();
        for pair in at.windows(2) {
            let gap = pair[1] - pair[0];
            worst = worst.max(gap);
            assert!(
                gap <= interval + heartbeat_timeout,
                "monitor {} went {gap} ms without a check in r0 around the kill \
                 (interval {interval} ms + heartbeat timeout {heartbeat_timeout} ms allowed)",
                m.name
            );
        }
    }
    println!("agent kill -9: longest gap between r0 checks {worst} ms");
    for m in &monitors {
        let s = status(&w.tenant, &m.id).await;
        assert!(all_up(&s, 3), "{}: {:?}", m.name, states(&s));
    }
    assert!(
        incidents(&w.tenant, false).await.is_empty(),
        "no false alarm"
    );

    // a comes back and gets its share again.
    a.agent.restart();
    let base = ds[0].accepted();
    accepted_at_least(&ds[0], base + 6, "agent a checks again after its restart").await;
    let mine: Vec<String> = {
        let since = ms(SystemTime::now()) - 500;
        eventually("a's monitors known from its results", WAIT, || async {
            let all = all_results(&w, &monitors).await;
            let ids: Vec<String> = all
                .iter()
                .filter(|r| r.region == "r0" && r.address == a_addr && at_ms(r) >= since)
                .map(|r| r.monitor_id.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            (!ids.is_empty()).then_some(ids)
        })
        .await
    };
    let share = mine.len() as u64;

    // The coordinator goes away, so nothing a checks is acknowledged: it spools.
    w.coord.proc.kill9();
    let c0 = ms(SystemTime::now());
    let a_at_c0 = ds[0].accepted();
    accepted_at_least(
        &ds[0],
        a_at_c0 + 3 * share,
        "agent a keeps checking (into its spool)",
    )
    .await;
    // kill -9 of a with an unacknowledged spool; it restarts while the
    // coordinator is still away, and goes on from its cached assignments.
    a.agent.proc.kill9();
    let k2 = ms(SystemTime::now());
    let a_at_k2 = ds[0].accepted();
    a.agent.restart();
    accepted_at_least(
        &ds[0],
        a_at_k2 + share,
        "agent a checks from its cached assignments after the restart",
    )
    .await;
    let c1 = ms(SystemTime::now());
    let a_at_c1 = ds[0].accepted();
    w.coord.restart();
    w.reconnect().await;
    a.drained(Duration::from_secs(60)).await;

    let all = all_results(&w, &monitors).await;
    assert_no_duplicates(&all);
    let from_a = |lo: u64, hi: u64| {
        all.iter()
            .filter(|r| r.region == "r0" && r.address == a_addr && (lo..hi).contains(&at_ms(r)))
            .count() as u64
    };
    // A kill -9 loses only the results not yet flushed: those of the batch
    // being gathered (50 ms) and of the batch whose flush is still running.
    // With a 1 s interval and fsync slowed by a loaded CI machine that is at
    // most two checks per monitor of a; everything older must arrive.
    let lost_at_most = 2 * share;
    let before_kill = from_a(c0, k2);
    let handshakes_before_kill = a_at_k2 - a_at_c0;
    assert!(
        before_kill + lost_at_most >= handshakes_before_kill && before_kill >= share,
        "agent a made {handshakes_before_kill} checks into its spool before kill -9; \
         only {before_kill} arrived after its restart (at most {lost_at_most} may be lost)"
    );
    let whole = from_a(c0, c1 + 1);
    assert!(
        whole <= a_at_c1 - a_at_c0 + share && whole + lost_at_most >= a_at_c1 - a_at_c0,
        "outage: {} handshakes by a, {whole} results stored",
        a_at_c1 - a_at_c0
    );
    println!(
        "agent spool replay: {handshakes_before_kill} checks spooled before kill -9, {before_kill} arrived"
    );

    // An agent that hangs (SIGSTOP: its connection stays open, it says nothing)
    // loses its monitors after the heartbeat timeout, and a takes them over.
    let b_at_stop = ds[1].accepted();
    accepted_at_least(&ds[1], b_at_stop + 1, "agent b checks before it hangs").await;
    signal(&b.agent.proc, libc::SIGSTOP);
    let hung = ms(SystemTime::now());
    let all = eventually(
        "agent a checks every monitor in r0 after b hung",
        WAIT,
        || async {
            let all = all_results(&w, &monitors).await;
            monitors
                .iter()
                .all(|m| {
                    all.iter()
                        .filter(|r| {
                            r.monitor_id == m.id
                                && r.region == "r0"
                                && r.address == a_addr
                                && at_ms(r) > hung
                        })
                        .count()
                        >= 2
                })
                .then_some(all)
        },
    )
    .await;
    signal(&b.agent.proc, libc::SIGCONT);
    // Detection takes the heartbeat timeout plus one evaluation tick (200 ms)
    // after b's last message, which can be up to one interval after its last
    // check; delivering the new assignment and running a's first check gets
    // one more interval on a loaded machine. A missed detection (a second
    // heartbeat timeout) or no hand-over at all still fails.
    let allowed = 2 * interval + heartbeat_timeout + 200;
    let mut worst = 0;
    for m in &monitors {
        let mut at: Vec<u64> = all
            .iter()
            .filter(|r| r.monitor_id == m.id && r.region == "r0")
            .map(at_ms)
            .filter(|t| *t + 3000 >= hung)
            .collect();
        at.sort_unstable();
        let gap = at.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(0);
        worst = worst.max(gap);
        assert!(
            gap <= allowed,
            "monitor {} went {gap} ms without a check in r0 while agent b hung \
             (allowed: two intervals + heartbeat timeout + one evaluation tick = {allowed} ms)",
            m.name
        );
    }
    println!("agent hung (SIGSTOP): longest gap between r0 checks {worst} ms");
    assert!(
        incidents(&w.tenant, false).await.is_empty(),
        "no false alarm"
    );
    drop(b);
    drop(others);
}

/// Sends `sig` to a child process.
fn signal(p: &portwatch_e2e::Proc, sig: i32) {
    let pid = i32::try_from(p.child.id()).expect("a pid");
    // SAFETY: a signal to our own child process.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------- 9

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_away_30_s_loses_nothing_and_an_outage_that_ended_meanwhile_pages_nobody() {
    let mut w = World::start(3, NOTIFY).await;
    let mut ds = doors(&["127.0.0.1", "127.0.0.5", "127.0.0.6"]);
    for d in ds.iter_mut() {
        d.open().await;
    }
    let probes = w.probes(3).await;
    for (p, d) in probes.iter().zip(&ds) {
        p.answer(HOST, d.ip());
    }
    let inbox = Inbox::create(&mut w.tenant, "acme").await;
    let regions = w.names(3);
    let m = create_monitor(
        &mut w.tenant,
        monitor("orders db", HOST, ds[0].port(), &regions, 1000),
    )
    .await;
    wait_status(&w.tenant, &m.id, "every region up", WAIT, |s| all_up(s, 3)).await;

    w.coord.proc.kill9();
    let away = SystemTime::now();
    for d in &ds {
        let n = d.accepted() + 2;
        accepted_at_least(d, n, "checks continue while the coordinator is away").await;
    }
    // The port goes down everywhere, long enough that every region sees it…
    for d in ds.iter_mut() {
        d.refuse().await;
    }
    for p in &probes {
        eventually(
            &format!("{} sees the port refused three times", p.region),
            WAIT,
            || async {
                (p.metric("portwatch_agent_checks_total{outcome=\"refused\"}")
                    .await
                    >= 3.0)
                    .then_some(())
            },
        )
        .await;
    }
    // …and comes back, all while the coordinator is still away.
    for d in ds.iter_mut() {
        d.open().await;
    }
    let outage_over = ms(SystemTime::now());
    for d in &ds {
        let n = d.accepted() + 2;
        accepted_at_least(d, n, "checks see the port up again").await;
    }
    // The coordinator stays away 30 s in all (the scenario's length, not a wait
    // for something to happen).
    let elapsed = away.elapsed().unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(elapsed)).await;
    w.coord.restart();
    let back = SystemTime::now();
    w.reconnect().await;
    assert!(
        ms(back) - outage_over > 8_000,
        "the outage must be older than the freshness window (2·1 s + 1 s + 5 s) on return"
    );

    // Every result arrives: each region has every scheduled check of the 30 s.
    for p in &probes {
        p.drained(Duration::from_secs(60)).await;
    }
    let rs = results(&w.tenant, &m.id).await;
    assert_no_duplicates(&rs);
    let window = ms(away)..ms(back);
    for region in &regions {
        let mut at: Vec<u64> = rs
            .iter()
            .filter(|r| &r.region == region && !r.immediate && window.contains(&at_ms(r)))
            .map(at_ms)
            .collect();
        at.sort_unstable();
        assert!(
            at.len() >= 28,
            "{region}: {} scheduled results from the 30 s away",
            at.len()
        );
        let gap = at.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(0);
        assert!(
            gap <= 1_500,
            "{region}: a {gap} ms hole in the replayed history"
        );
        let refused = rs
            .iter()
            .filter(|r| {
                &r.region == region
                    && window.contains(&at_ms(r))
                    && r.outcome == v1::Outcome::Refused as i32
            })
            .count();
        assert!(
            refused >= 3,
            "{region}: the outage's results are in the history ({refused})"
        );
    }

    // Stale replayed results do not page: nothing opened, nobody notified, even
    // after more fresh checks.
    more_results(&w.tenant, &m.id, &regions, 3).await;
    assert!(
        incidents(&w.tenant, false).await.is_empty(),
        "no incident for an outage that ended while the coordinator was away: {:?}",
        incidents(&w.tenant, false).await
    );
    assert!(inbox.notices().is_empty(), "{:?}", inbox.notices());
    let s = status(&w.tenant, &m.id).await;
    assert!(all_up(&s, 3), "{:?}", states(&s));
}

// ---------------------------------------------------------------- 10

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_incident_open_and_delivery_still_delivers_once_per_channel() {
    let mut w = World::start(3, NOTIFY).await;
    let mut target = doors(&["127.0.0.1"]).remove(0);
    target.open().await;
    let probes = w.probes(3).await;
    for p in &probes {
        p.answer(HOST, target.ip());
    }
    // The webhook receiver takes the request and never answers (the attempt is
    // in flight at the kill); the SMTP server is not there at all yet.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_addr = hanging.local_addr().expect("addr");
    let got_request: Arc<Mutex<Vec<u8>>> = Arc::default();
    let seen = got_request.clone();
    let hang = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = hanging.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            if let Ok(n) = conn.read(&mut buf).await {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
            held.push(conn);
        }
    });
    let smtp_door = doors(&["127.0.0.1"]).remove(0);
    let smtp_addr = smtp_door.addr;
    let hook_ch = create_channel(
        &mut w.tenant,
        webhook_channel("pager", format!("http://{hook_addr}/hook"), true),
    )
    .await;
    let mail_ch = create_channel(&mut w.tenant, email_channel("mail", smtp_addr, true)).await;
    let regions = w.names(3);
    let m = create_monitor(
        &mut w.tenant,
        monitor("orders db", HOST, target.port(), &regions, 1000),
    )
    .await;
    wait_status(&w.tenant, &m.id, "every region up", WAIT, |s| all_up(s, 3)).await;

    target.refuse().await;
    let inc = eventually("the incident opens", WAIT, || async {
        incidents(&w.tenant, true).await.into_iter().next()
    })
    .await;
    eventually(
        "the webhook attempt is in flight and the email attempt failed",
        WAIT,
        || async {
            let hook_sent =
                String::from_utf8_lossy(&got_request.lock().unwrap_or_else(|e| e.into_inner()))
                    .contains(&inc.id);
            let ds = w
                .tenant
                .clone()
                .list_deliveries(v1::ListDeliveriesRequest {
                    incident_id: inc.id.clone(),
                    ..Default::default()
                })
                .await
                .expect("list deliveries")
                .into_inner()
                .deliveries;
            let mail_failed = ds.iter().any(|d| {
                d.channel_id == mail_ch.id
                    && d.attempts >= 1
                    && d.state == v1::DeliveryState::Pending as i32
            });
            (hook_sent && mail_failed).then_some(())
        },
    )
    .await;

    w.coord.proc.kill9();
    hang.abort();
    let _ = hang.await;
    drop(smtp_door);
    let hook = HttpReceiver::start_on(hook_addr, |_, _| (200, "ok".to_string())).await;
    let smtp = SmtpServer::start_on(smtp_addr).await;
    w.coord.restart();
    w.reconnect().await;
    let inbox = Inbox {
        hook,
        smtp,
        hook_channel: hook_ch.clone(),
        mail_channel: mail_ch.clone(),
    };
    inbox.wait(2, WAIT).await;
    assert_eq!(
        inbox.count(&inc.id, "opened"),
        (1, 1),
        "{:?}",
        inbox.notices()
    );
    let opened_key = format!("{}:opened:{}", inc.id, hook_ch.id);
    assert_eq!(
        inbox.hook.requests()[0].header("idempotency-key"),
        Some(opened_key.as_str())
    );

    // The recovery after it: also once per channel, and still one opening each.
    target.open().await;
    inbox.wait(4, WAIT).await;
    let ds = settled_deliveries(&w.tenant, "", &inc.id, 4).await;
    assert!(
        ds.iter()
            .all(|d| d.state == v1::DeliveryState::Delivered as i32),
        "{ds:?}"
    );
    more_results(&w.tenant, &m.id, &regions, 2).await;
    assert_eq!(inbox.count(&inc.id, "opened"), (1, 1));
    assert_eq!(inbox.count(&inc.id, "resolved"), (1, 1));
    assert_eq!(inbox.notices().len(), 4, "{:?}", inbox.notices());
}

// ---------------------------------------------------------------- 11

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_with_every_agent_stopped_gives_one_offline_notice_and_no_false_alarm() {
    let mut w = World::start(3, &format!("{NOTIFY}region_offline_grace = \"1s\"\n")).await;
    let mut ds = doors(&["127.0.0.1", "127.0.0.2"]);
    ds[0].open().await;
    let (up_ip, refused_ip) = (ds[0].ip(), ds[1].ip());
    let r0 = w.probe(0, "r0").await;
    let r1 = w.probe(1, "r1").await;
    let mut r2 = [w.probe(2, "r2-a").await, w.probe(2, "r2-b").await];
    for p in [&r0, &r1, &r2[0], &r2[1]] {
        p.answer(HOST, up_ip);
    }
    let ops = Inbox::create(&mut w.op, "operator").await;
    let tenant = Inbox::create(&mut w.tenant, "acme").await;
    let regions = w.names(3);
    let m = create_monitor(
        &mut w.tenant,
        monitor("orders db", HOST, ds[0].port(), &regions, 1000),
    )
    .await;
    wait_status(&w.tenant, &m.id, "every region up", WAIT, |s| all_up(s, 3)).await;

    // Both agents of r2 stop: one drains on SIGTERM, the other is killed.
    let status = r2[0]
        .agent
        .proc
        .terminate(Duration::from_secs(20))
        .expect("r2-a exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    r2[1].agent.proc.kill9();

    let notices = ops.wait(2, WAIT).await;
    let offline: Vec<&Notice> = notices.iter().filter(|n| n.kind == "offline").collect();
    assert_eq!(offline.len(), 2, "one per operator channel: {notices:?}");
    for n in &offline {
        assert_eq!(n.subject, "Probe region offline: r2", "{n:?}");
    }
    let s = wait_status(&w.tenant, &m.id, "r2 unknown", WAIT, |s| {
        states(s).get("r2") == Some(&v1::RegionState::Unknown)
    })
    .await;
    let r2_status = s.regions.iter().find(|r| r.region == "r2").expect("r2");
    assert_eq!(r2_status.unknown_reason, "no live agent");
    assert!(!r2_status.agent_online);
    assert_eq!(s.overall, v1::OverallState::Degraded as i32);

    // A real failure in r0 on top: 1 down + 1 unknown of 3 is not a quorum of
    // down regions. Unknown never counts as unreachable.
    r0.answer(HOST, refused_ip);
    wait_status(&w.tenant, &m.id, "r0 down, r1 up, r2 unknown", WAIT, |s| {
        let st = states(s);
        st.get("r0") == Some(&v1::RegionState::Down)
            && st.get("r1") == Some(&v1::RegionState::Up)
            && st.get("r2") == Some(&v1::RegionState::Unknown)
    })
    .await;
    more_results(&w.tenant, &m.id, &regions[..2], 3).await;
    assert!(
        incidents(&w.tenant, false).await.is_empty(),
        "no incident from one down region and one without agents"
    );
    assert!(
        tenant.notices().is_empty(),
        "tenants are not paged for a probe region: {:?}",
        tenant.notices()
    );
    assert_eq!(ops.notices().len(), 2, "still one notice per channel");

    // Fixed, and r2's agents come back: one "back online" per operator channel.
    r0.answer(HOST, up_ip);
    for p in r2.iter_mut() {
        p.agent.restart();
    }
    let notices = ops.wait(4, WAIT).await;
    let online: Vec<&Notice> = notices.iter().filter(|n| n.kind == "online").collect();
    assert_eq!(online.len(), 2, "{notices:?}");
    for n in &online {
        assert_eq!(n.subject, "Probe region back online: r2", "{n:?}");
        assert_eq!(n.subject_id, offline[0].subject_id, "the same outage");
    }
    wait_status(&w.tenant, &m.id, "every region up again", WAIT, |s| {
        all_up(s, 3)
    })
    .await;
    more_results(&w.tenant, &m.id, &regions, 2).await;
    let by_kind: BTreeMap<String, usize> =
        ops.notices().iter().fold(BTreeMap::new(), |mut acc, n| {
            *acc.entry(n.kind.clone()).or_default() += 1;
            acc
        });
    assert_eq!(
        by_kind,
        BTreeMap::from([("offline".to_string(), 2), ("online".to_string(), 2)]),
        "exactly one offline and one online notice per operator channel"
    );
    assert!(tenant.notices().is_empty(), "{:?}", tenant.notices());
}
