//! End to end, with the real binaries as separate processes: a coordinator and
//! one `portwatch-agent run` per region, each agent with its own DNS server so
//! the same name leads each region to a different loopback address (open,
//! refusing, silent, or no such name), a real webhook receiver and a real SMTP
//! server as the tenant's channels.
//!
//! What it proves, as an on-call engineer would see it:
//! 1. a port up everywhere raises nothing, shows up in every region, and its
//!    results are stored;
//! 2. a port closed everywhere pages exactly once per channel with "Connection
//!    refused" and every region, and reopening it resolves exactly once;
//! 3. the quorum table with 3, 4 and 5 real regions (1/3, 2/4, 3/5 stay quiet;
//!    2/3, 3/4, 4/5 open);
//! 4. a timeout in one region and a DNS failure in another open one incident
//!    whose evidence names both reasons;
//! 5. a target flapping faster than the interval pages at most once (one open,
//!    one close per channel) per state change that meets the rule (with flap
//!    detection off; `flapping.rs` covers it on);
//! 6. with a 60 s interval, fast confirmation pages within one timeout plus 2 s
//!    of the port closing (the measured figure is printed as a JSON line).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use portwatch_e2e::{HttpReceiver, eventually};
use portwatch_proto::v1;
use serde_json::Value;
use support::*;

const HOST: &str = "db.acme.test";

fn all_up(s: &v1::MonitorStatus, n: usize) -> bool {
    s.regions.len() == n
        && s.regions
            .iter()
            .all(|r| r.state == v1::RegionState::Up as i32)
}

async fn open_incident(w: &World, monitor: &str, what: &str) -> v1::Incident {
    eventually(what, WAIT, || async {
        incidents_of(&w.tenant, monitor)
            .await
            .into_iter()
            .find(|i| i.closed_at.is_none())
    })
    .await
}

/// Region name → the webhook body's entry for it.
fn hook_regions(body: &Value) -> std::collections::BTreeMap<String, Value> {
    body["incident"]["regions"]
        .as_array()
        .expect("incident.regions in the webhook body")
        .iter()
        .map(|r| {
            (
                r["region"].as_str().unwrap_or_default().to_string(),
                r.clone(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- 1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_up_everywhere_stays_quiet_shows_up_in_every_region_and_stores_results() {
    let mut w = World::start(3, NOTIFY).await;
    let mut door = doors(&["127.0.0.1"]).remove(0);
    door.open().await;
    let probes = w.probes(3).await;
    for p in &probes {
        p.answer(HOST, door.ip());
    }
    let inbox = Inbox::create(&mut w.tenant, "acme").await;
    let regions = w.names(3);
    let m = create_monitor(
        &mut w.tenant,
        monitor("orders db", HOST, door.port(), &regions, 1000),
    )
    .await;

    more_results(&w.tenant, &m.id, &regions, 3).await;
    let s = wait_status(&w.tenant, &m.id, "every region up", WAIT, |s| {
        all_up(s, 3) && s.overall == v1::OverallState::Up as i32
    })
    .await;
    assert_eq!(s.quorum, 2, "3 regions need 2 down to open");
    assert!(s.open_incident_id.is_empty());
    for r in &s.regions {
        assert!(r.agent_online, "{} has a live agent", r.region);
        let last = r.last_result.as_ref().expect("a latest result");
        assert_eq!(last.outcome, v1::Outcome::Ok as i32, "{last:?}");
        assert_eq!(last.address, door.addr.to_string(), "{last:?}");
        assert!(last.connect_us > 0 && last.total_us >= last.connect_us);
    }

    let rs = results(&w.tenant, &m.id).await;
    let by_region = per_region(&rs);
    assert_eq!(
        by_region.keys().cloned().collect::<Vec<_>>(),
        regions,
        "results from every region and only from them"
    );
    for (region, list) in &by_region {
        assert!(list.len() >= 3, "{region}: {} results", list.len());
        assert!(
            list.iter().all(|r| r.outcome == v1::Outcome::Ok as i32),
            "{region}: {list:?}"
        );
    }
    assert_no_duplicates(&rs);
    assert!(
        door.accepted() >= rs.len() as u64,
        "every stored result is a real handshake: {} stored, {} accepted",
        rs.len(),
        door.accepted()
    );
    assert!(incidents(&w.tenant, false).await.is_empty(), "no incident");
    assert!(
        inbox.notices().is_empty(),
        "nobody paged: {:?}",
        inbox.notices()
    );
}

// ---------------------------------------------------------------- 2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_closed_everywhere_pages_once_per_channel_and_reopening_resolves_once() {
    let mut w = World::start(3, NOTIFY).await;
    let mut door = doors(&["127.0.0.1"]).remove(0);
    door.open().await;
    let probes = w.probes(3).await;
    for p in &probes {
        p.answer(HOST, door.ip());
    }
    let inbox = Inbox::create(&mut w.tenant, "acme").await;
    let regions = w.names(3);
    let m = create_monitor(
        &mut w.tenant,
        monitor("orders db", HOST, door.port(), &regions, 1000),
    )
    .await;
    wait_status(&w.tenant, &m.id, "every region up", WAIT, |s| all_up(s, 3)).await;

    // The service stops listening.
    door.refuse().await;
    let inc = open_incident(&w, &m.id, "an incident for the closed port").await;
    inbox.wait(2, WAIT).await;
    assert_eq!(
        inbox.count(&inc.id, "opened"),
        (1, 1),
        "one page per channel"
    );
    assert_eq!(inc.reason, v1::Outcome::Refused as i32);
    assert_eq!(inc.reason_text, "Connection refused");
    assert_eq!(inc.severity, "critical");

    let subject = format!("TCP Port Unreachable: {HOST}:{}", door.port());
    let body = &inbox.hook_bodies()[0];
    assert_eq!(body["event"], "incident.opened");
    assert_eq!(body["subject"], subject.as_str());
    assert_eq!(body["incident"]["reason_text"], "Connection refused");
    let listed = hook_regions(body);
    assert_eq!(
        listed.keys().cloned().collect::<Vec<_>>(),
        regions,
        "every region listed"
    );
    // It opens as soon as a quorum (2 of 3) saw it; the third may not have checked yet.
    let down: Vec<&Value> = listed.values().filter(|r| r["state"] == "down").collect();
    assert!(down.len() >= 2, "{listed:?}");
    for r in down {
        assert_eq!(r["outcome"], "refused", "{r}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|t| t.starts_with("Connection refused")),
            "{r}"
        );
    }
    let mail = &inbox.smtp.mails()[0];
    assert_eq!(mail.header("Subject").as_deref(), Some(subject.as_str()));
    let text = mail.body_text();
    assert!(
        text.contains("Failure reason: Connection refused"),
        "{text}"
    );
    for region in &regions {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("{region} ")))
            .unwrap_or_else(|| panic!("no row for {region} in the email:\n{text}"));
        assert!(
            !row.contains("down") || row.contains("Connection refused"),
            "{row}"
        );
    }

    // It listens again: one recovery notice per channel, and the incident closes.
    door.open().await;
    eventually("the incident closes", WAIT, || async {
        incidents(&w.tenant, true).await.is_empty().then_some(())
    })
    .await;
    inbox.wait(4, WAIT).await;
    assert_eq!(inbox.count(&inc.id, "resolved"), (1, 1));
    let closed = incidents_of(&w.tenant, &m.id).await;
    assert_eq!(closed.len(), 1);
    assert!(closed[0].closed_at.is_some());
    assert!(
        closed[0]
            .close_evidence
            .iter()
            .all(|e| e.state == v1::RegionState::Up as i32),
        "{:?}",
        closed[0].close_evidence
    );
    let resolved = &inbox.hook_bodies()[1];
    assert_eq!(
        resolved["subject"],
        format!("TCP Port Reachable Again: {HOST}:{}", door.port()).as_str()
    );

    // Exactly once: the agents keep checking and nothing more is sent.
    more_results(&w.tenant, &m.id, &regions, 3).await;
    assert_eq!(
        inbox.notices().len(),
        4,
        "no repeated notices: {:?}",
        inbox.notices()
    );
    assert_eq!(incidents_of(&w.tenant, &m.id).await.len(), 1);
    let ds = settled_deliveries(&w.tenant, "", &inc.id, 4).await;
    assert!(
        ds.iter()
            .all(|d| d.state == v1::DeliveryState::Delivered as i32 && d.attempts == 1),
        "{ds:?}"
    );
}

// ---------------------------------------------------------------- 3

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_table_with_three_four_and_five_real_regions() {
    let mut w = World::start(5, NOTIFY).await;
    let mut ds = doors(&["127.0.0.1", "127.0.0.2"]);
    ds[0].open().await;
    let (open_ip, refused_ip) = (ds[0].ip(), ds[1].ip());
    let port = ds[0].port();
    let probes = w.probes(5).await;
    let inbox = Inbox::create(&mut w.tenant, "acme").await;

    // (regions, down, opens)
    let table = [
        (3, 1, false),
        (3, 2, true),
        (4, 2, false),
        (4, 3, true),
        (5, 3, false),
        (5, 4, true),
    ];
    let mut monitors = Vec::new();
    for (n, down, opens) in table {
        let host = format!("q{n}-{down}.acme.test");
        // The first `down` regions see the port refused, the others see it open.
        for (i, p) in probes.iter().enumerate().take(n) {
            p.answer(&host, if i < down { refused_ip } else { open_ip });
        }
        let req = monitor(&format!("{down} of {n}"), &host, port, &w.names(n), 1000);
        let m = create_monitor(&mut w.tenant, req).await;
        monitors.push((n, down, opens, m));
    }

    for (n, down, _, m) in &monitors {
        let (n, down) = (*n, *down);
        wait_status(
            &w.tenant,
            &m.id,
            &format!("{down} of {n} regions down, the rest up"),
            WAIT,
            |s| {
                let st = states(s);
                st.len() == n
                    && st.values().filter(|v| **v == v1::RegionState::Down).count() == down
                    && st.values().filter(|v| **v == v1::RegionState::Up).count() == n - down
            },
        )
        .await;
    }
    for (n, down, opens, m) in &monitors {
        if *opens {
            open_incident(&w, &m.id, &format!("{down} of {n} down opens an incident")).await;
        }
    }
    // Every monitor keeps being checked; nothing changes its mind.
    for (n, _, _, m) in &monitors {
        more_results(&w.tenant, &m.id, &w.names(*n), 2).await;
    }
    let mut table_out = Vec::new();
    for (n, down, opens, m) in &monitors {
        let s = status(&w.tenant, &m.id).await;
        let incs = incidents_of(&w.tenant, &m.id).await;
        let k = match n {
            3 => 2,
            4 => 3,
            _ => 4,
        };
        assert_eq!(s.quorum, k, "k({n})");
        table_out.push(format!(
            "{down}/{n} down (k={k}): {} incident(s)",
            incs.len()
        ));
        if *opens {
            assert_eq!(incs.len(), 1, "{down} of {n}: exactly one incident");
            let down_regions = incs[0]
                .open_evidence
                .iter()
                .filter(|e| e.state == v1::RegionState::Down as i32)
                .count();
            assert_eq!(down_regions, *down, "{:?}", incs[0].open_evidence);
            assert_eq!(s.overall, v1::OverallState::Down as i32);
            assert_eq!(inbox.count(&incs[0].id, "opened"), (1, 1));
        } else {
            assert!(
                incs.is_empty(),
                "{down} of {n} must not open an incident: {incs:?}"
            );
            assert_eq!(s.overall, v1::OverallState::Degraded as i32);
        }
    }
    println!("quorum table: {}", table_out.join("; "));
    assert_eq!(
        inbox.notices().len(),
        6,
        "one page per channel for each of the three incidents, nothing else: {:?}",
        inbox.notices()
    );
}

// ---------------------------------------------------------------- 4

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_in_one_region_and_dns_failure_in_another_open_one_incident_naming_both() {
    let mut w = World::start(3, NOTIFY).await;
    let mut ds = doors(&["127.0.0.1", "127.0.0.3"]);
    ds[0].open().await;
    ds[1].blackhole().await;
    let probes = w.probes(3).await;
    probes[0].answer(HOST, ds[0].ip());
    probes[1].answer(HOST, ds[1].ip());
    probes[2].nxdomain(HOST);
    let inbox = Inbox::create(&mut w.tenant, "acme").await;
    let regions = w.names(3);
    let m = create_monitor(
        &mut w.tenant,
        monitor("orders db", HOST, ds[0].port(), &regions, 2000),
    )
    .await;

    let inc = open_incident(&w, &m.id, "an incident from a timeout and a DNS failure").await;
    let evidence: std::collections::BTreeMap<&str, &v1::RegionEvidence> = inc
        .open_evidence
        .iter()
        .map(|e| (e.region.as_str(), e))
        .collect();
    assert_eq!(evidence.len(), 3, "{evidence:?}");
    assert_eq!(evidence["r0"].state, v1::RegionState::Up as i32);
    assert_eq!(evidence["r1"].state, v1::RegionState::Down as i32);
    assert_eq!(evidence["r1"].outcome, v1::Outcome::TimedOut as i32);
    assert_eq!(evidence["r2"].state, v1::RegionState::Down as i32);
    assert_eq!(evidence["r2"].outcome, v1::Outcome::DnsFailed as i32);
    assert!(
        evidence["r2"].detail.contains("NXDOMAIN"),
        "{}",
        evidence["r2"].detail
    );
    // Refused > timed out > unreachable > DNS failed: the timeout dominates.
    assert_eq!(inc.reason, v1::Outcome::TimedOut as i32);
    assert_eq!(inc.reason_text, "Connection timed out");

    inbox.wait(2, WAIT).await;
    assert_eq!(inbox.count(&inc.id, "opened"), (1, 1));
    let listed = hook_regions(&inbox.hook_bodies()[0]);
    assert_eq!(listed["r1"]["outcome"], "timed_out");
    let reason = |r: &str| listed[r]["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason("r1").starts_with("Connection timed out"),
        "{}",
        reason("r1")
    );
    assert_eq!(listed["r2"]["outcome"], "dns_failed");
    assert!(
        reason("r2").starts_with("DNS resolution failed"),
        "{}",
        reason("r2")
    );
    assert_eq!(listed["r0"]["state"], "up");
    let text = inbox.smtp.mails()[0].body_text();
    for want in ["Connection timed out", "DNS resolution failed"] {
        assert!(
            text.contains(want),
            "{want:?} missing from the email:\n{text}"
        );
    }

    // The timeout really waited the whole deadline; nothing ever connected there.
    let rs = results(&w.tenant, &m.id).await;
    let timed_out: Vec<&v1::CheckResult> = rs
        .iter()
        .filter(|r| r.region == "r1" && r.outcome == v1::Outcome::TimedOut as i32)
        .collect();
    assert!(!timed_out.is_empty());
    assert!(
        timed_out.iter().all(|r| r.total_us >= 1_000_000),
        "{timed_out:?}"
    );
    assert_eq!(
        incidents_of(&w.tenant, &m.id).await.len(),
        1,
        "one incident"
    );
}

// ---------------------------------------------------------------- 5

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_target_pages_at_most_once_per_state_change_that_meets_the_rule() {
    let mut w = World::start(3, NOTIFY).await;
    // Each region sees its own copy of the service, flapping at its own pace.
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
    let interval = 2000;
    // The consensus rule alone, state change by state change: flap detection
    // (tests/tests/flapping.rs) would hold the incident instead.
    let mut req = monitor("flappy", HOST, ds[0].port(), &regions, interval);
    req.flap_detection = v1::FlapDetection::Off as i32;
    let m = create_monitor(&mut w.tenant, req).await;
    wait_status(&w.tenant, &m.id, "every region up", WAIT, |s| all_up(s, 3)).await;

    // Closed and opened every few hundred ms for 7 intervals: faster than the interval.
    let flap_for = Duration::from_millis(7 * interval);
    let mut tasks = Vec::new();
    for (mut d, half_period) in ds.into_iter().zip([230u64, 310, 370]) {
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut toggles = 0;
            while started.elapsed() < flap_for {
                tokio::time::sleep(Duration::from_millis(half_period)).await;
                d.refuse().await;
                tokio::time::sleep(Duration::from_millis(half_period)).await;
                d.open().await;
                toggles += 2;
            }
            (d, toggles)
        }));
    }
    let mut toggles = 0;
    let mut kept = Vec::new();
    for t in tasks {
        let (d, n) = t.await.expect("flapper");
        toggles += n;
        kept.push(d);
    }
    // Stable again (every door open): whatever opened closes.
    wait_status(
        &w.tenant,
        &m.id,
        "every region up after flapping",
        WAIT,
        |s| all_up(s, 3) && s.open_incident_id.is_empty(),
    )
    .await;
    more_results(&w.tenant, &m.id, &regions, 2).await;

    let mut incs = incidents_of(&w.tenant, &m.id).await;
    incs.sort_by_key(|i| ts_ms(i.opened_at.as_ref()));
    let rs = results(&w.tenant, &m.id).await;
    let down_results = rs
        .iter()
        .filter(|r| r.outcome != v1::Outcome::Ok as i32)
        .count();
    println!(
        "flapping: {toggles} toggles, {} results ({down_results} down), {} incident(s)",
        rs.len(),
        incs.len()
    );

    // One page and one recovery per channel per incident, and nothing else.
    for i in &incs {
        assert!(i.closed_at.is_some(), "{} still open", i.id);
        assert_eq!(inbox.count(&i.id, "opened"), (1, 1), "{}", i.id);
        assert_eq!(inbox.count(&i.id, "resolved"), (1, 1), "{}", i.id);
    }
    let notices = inbox.wait(4 * incs.len(), WAIT).await;
    assert_eq!(
        notices.len(),
        4 * incs.len(),
        "no notice outside the incidents' open/close pairs: {notices:?}"
    );
    // Each incident is its own state change that met the rule: a quorum of down
    // results to open, every region up to close, and the next one opened on
    // down results taken after the previous one's recovery evidence.
    for (n, i) in incs.iter().enumerate() {
        let down: Vec<&v1::RegionEvidence> = i
            .open_evidence
            .iter()
            .filter(|e| e.state == v1::RegionState::Down as i32)
            .collect();
        assert!(down.len() >= 2, "{} opened without quorum: {down:?}", i.id);
        assert!(
            i.close_evidence
                .iter()
                .all(|e| e.state == v1::RegionState::Up as i32),
            "{} closed without every region up: {:?}",
            i.id,
            i.close_evidence
        );
        if let Some(prev) = n.checked_sub(1).map(|p| &incs[p]) {
            assert!(ts_ms(i.opened_at.as_ref()) >= ts_ms(prev.closed_at.as_ref()));
            for e in &down {
                let before = prev
                    .close_evidence
                    .iter()
                    .find(|c| c.region == e.region)
                    .expect("the same regions");
                assert!(
                    ts_ms(e.checked_at.as_ref()) > ts_ms(before.checked_at.as_ref()),
                    "{} reopened on a down result from {} no newer than the previous recovery",
                    i.id,
                    e.region
                );
            }
        }
    }
    assert!(
        incs.len() * 2 <= down_results,
        "more incidents than down results could justify"
    );
    drop(kept);
}

// ---------------------------------------------------------------- 6

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_alert_with_a_60_s_interval_is_one_timeout_plus_delivery() {
    let mut w = World::start(3, NOTIFY).await;
    let mut ds = doors(&["127.0.0.1", "127.0.0.5", "127.0.0.6"]);
    for d in ds.iter_mut() {
        d.open().await;
    }
    let probes = w.probes(3).await;
    for (p, d) in probes.iter().zip(&ds) {
        p.answer(HOST, d.ip());
    }
    // The webhook receiver notes when each request arrived.
    let arrivals: Arc<Mutex<Vec<(SystemTime, String)>>> = Arc::default();
    let seen = arrivals.clone();
    let hook = HttpReceiver::start(move |r, _| {
        let key = r.header("idempotency-key").unwrap_or_default().to_string();
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((SystemTime::now(), key));
        (200, "ok".to_string())
    })
    .await;
    create_channel(
        &mut w.tenant,
        webhook_channel("pager", hook.url("/page"), true),
    )
    .await;
    let regions = w.names(3);
    let interval = 60_000;

    // Every region checks a monitor at the same instants (phase = hash(id) mod
    // interval). Pick a monitor whose next instant is a few seconds away, so the
    // test need not wait up to a minute for it.
    let mut chosen = None;
    for i in 0..200 {
        let mut req = monitor(
            &format!("orders db {i}"),
            HOST,
            ds[0].port(),
            &regions,
            interval,
        );
        req.paused = true;
        let m = create_monitor(&mut w.tenant, req).await;
        let now = ms(SystemTime::now());
        let next = portwatch_agent::scheduler::next_aligned(&m.id, interval, now);
        if (6_000..14_000).contains(&(next - now)) {
            chosen = Some(m);
            break;
        }
        w.tenant
            .delete_monitor(v1::DeleteMonitorRequest {
                id: m.id,
                ..Default::default()
            })
            .await
            .expect("delete a monitor not used");
    }
    let m = chosen.expect("a monitor whose next check is 6-14 s away within 200 tries");
    w.tenant
        .resume_monitor(v1::ResumeMonitorRequest {
            id: m.id.clone(),
            ..Default::default()
        })
        .await
        .expect("resume");
    // The first check runs at once everywhere: up.
    wait_status(&w.tenant, &m.id, "every region up", WAIT, |s| all_up(s, 3)).await;
    let next = portwatch_agent::scheduler::next_aligned(&m.id, interval, ms(SystemTime::now()));
    let closing = next - 500;
    let now = ms(SystemTime::now());
    assert!(
        closing > now + 200,
        "the chosen check instant came too soon ({} ms away)",
        next - now
    );

    // T: the port closes as seen from r0. r1 and r2 still complete one more
    // handshake (at the scheduled instant) and drop every SYN after that, so
    // only the coordinator's check-now can see them fail before the next minute.
    tokio::time::sleep(Duration::from_millis(closing - now)).await;
    let t = SystemTime::now();
    ds[0].refuse().await;
    ds[1].admit_one_more().await;
    ds[2].admit_one_more().await;

    let (arrived, key) = eventually("the page arrives", Duration::from_secs(10), || {
        let got = arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned();
        async move { got }
    })
    .await;
    assert!(key.contains(":opened:"), "{key}");
    let took = arrived.duration_since(t).unwrap_or_default();
    let inc = open_incident(&w, &m.id, "the incident").await;
    let took_ms = took.as_millis();
    println!("{{\"bench\":\"time_to_alert_e2e\",\"ms\":{took_ms}}}");
    println!(
        "time to alert: closed at T, scheduled check at T+{} ms, incident at T+{} ms, page at T+{took_ms} ms",
        next - ms(t),
        ts_ms(inc.opened_at.as_ref()).saturating_sub(ms(t))
    );
    assert!(
        took < Duration::from_millis(1000 + 2000),
        "the page came {took_ms} ms after the port closed; must be under one timeout (1 s) + 2 s"
    );

    // How: r0's scheduled check saw it refused; the coordinator asked r1 and r2
    // to check now, and those confirmations (not their next scheduled checks,
    // a minute away) saw it time out.
    let rs = results(&w.tenant, &m.id).await;
    let after: Vec<&v1::CheckResult> = rs.iter().filter(|r| at_ms(r) >= ms(t)).collect();
    assert!(
        after
            .iter()
            .any(|r| r.region == "r0" && r.outcome == v1::Outcome::Refused as i32 && !r.immediate),
        "r0's scheduled check saw it refused: {after:?}"
    );
    for region in ["r1", "r2"] {
        assert!(
            after
                .iter()
                .any(|r| r.region == region && r.outcome == v1::Outcome::Ok as i32 && !r.immediate),
            "{region}'s scheduled check still connected: {after:?}"
        );
    }
    let confirmed: Vec<&str> = after
        .iter()
        .filter(|r| r.immediate && r.outcome == v1::Outcome::TimedOut as i32)
        .map(|r| r.region.as_str())
        .collect();
    assert!(
        !confirmed.is_empty(),
        "a check-now confirmation saw the port down: {after:?}"
    );
}
