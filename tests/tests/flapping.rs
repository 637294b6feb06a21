//! End to end, with the real binaries: flap detection against a real listener
//! that flips between open and refusing every 2 s, seen by agents in three
//! regions checking every second, with a real webhook receiver and a real SMTP
//! server as the tenant's channels.
//!
//! Two monitors watch the same flipping port: one with flap detection at its
//! defaults (4 state changes within 20 intervals, stable for 5 intervals), one
//! with it turned off. What an on-call engineer would see:
//! - with it: at most a couple of opened/resolved pairs, then exactly one
//!   "TCP Port Flapping" per channel, the incident held open (the same one)
//!   for as long as the port flips, and exactly one "TCP Port Reachable Again"
//!   once every region has seen it up for 5 s;
//! - without it, on the same flips: an incident and a page pair per flip, which
//!   is what the first monitor would show if the feature did not work.

mod support;

use std::time::{Duration, Instant};

use portwatch_e2e::eventually;
use portwatch_proto::v1;
use support::*;

const HOST: &str = "flappy.acme.test";
/// The port flips this often (open, then refusing, then open…).
const FLIP: Duration = Duration::from_secs(2);
/// Refuse/open cycles: 32 s of flipping.
const CYCLES: usize = 8;
/// The default stability time at a 1 s interval (5 intervals).
const STABLE_FOR: Duration = Duration::from_secs(5);

/// The held monitor's open incident, sampled while the port flips.
struct Sample {
    at: Instant,
    open_incident: String,
}

/// Sleeps `d`, sampling the held monitor's open incident every 250 ms and
/// noting when the first flapping notice reached the receivers.
async fn watch(
    w: &World,
    inbox: &Inbox,
    monitor: &str,
    d: Duration,
    samples: &mut Vec<Sample>,
    flapping_seen: &mut Option<Instant>,
) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        let s = status(&w.tenant, monitor).await;
        samples.push(Sample {
            at: Instant::now(),
            open_incident: s.open_incident_id,
        });
        if flapping_seen.is_none() && inbox.notices().iter().any(|n| n.kind == "flapping") {
            *flapping_seen = Some(Instant::now());
        }
        tokio::time::sleep(
            Duration::from_millis(250).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
}

/// Waits until the receivers hold at least `n` notices about `incidents`;
/// returns them.
async fn arrived(inbox: &Inbox, incidents: &[String], n: usize) -> Vec<Notice> {
    eventually(&format!("{n} notice(s) about {incidents:?}"), WAIT, || {
        let got: Vec<Notice> = inbox
            .notices()
            .into_iter()
            .filter(|x| incidents.contains(&x.subject_id))
            .collect();
        async move { (got.len() >= n).then_some(got) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_flipping_every_2_s_is_held_with_one_flapping_notice_and_recovers_once() {
    let mut w = World::start(3, NOTIFY).await;
    let mut door = doors(&["127.0.0.1"]).remove(0);
    door.open().await;
    let probes = w.probes(3).await;
    for p in &probes {
        p.answer(HOST, door.ip());
    }
    let inbox = Inbox::create(&mut w.tenant, "acme").await;
    let regions = w.names(3);
    let held = create_monitor(
        &mut w.tenant,
        monitor("held", HOST, door.port(), &regions, 1000),
    )
    .await;
    assert_eq!(
        held.flap_detection,
        v1::FlapDetection::On as i32,
        "on by default"
    );
    let mut req = monitor("unheld", HOST, door.port(), &regions, 1000);
    req.flap_detection = v1::FlapDetection::Off as i32;
    let unheld = create_monitor(&mut w.tenant, req).await;
    for m in [&held, &unheld] {
        wait_status(&w.tenant, &m.id, "every region up", WAIT, |s| {
            s.regions.len() == 3
                && s.regions
                    .iter()
                    .all(|r| r.state == v1::RegionState::Up as i32)
        })
        .await;
    }

    // Flip for 32 s: refusing for 2 s, open for 2 s.
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut flapping_seen = None;
    for _ in 0..CYCLES {
        door.refuse().await;
        watch(&w, &inbox, &held.id, FLIP, &mut samples, &mut flapping_seen).await;
        door.open().await;
        watch(&w, &inbox, &held.id, FLIP, &mut samples, &mut flapping_seen).await;
    }
    let last_opened = Instant::now();
    let flipped_for = last_opened - started;

    // Found flapping within a few flips, and held from then on: one incident,
    // open at every sample until the flipping stopped.
    let seen = flapping_seen.expect("a flapping notice while the port flipped");
    assert!(
        seen - started < Duration::from_secs(16),
        "flapping noticed {:?} into {flipped_for:?} of flipping",
        seen - started
    );
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at > seen).collect();
    assert!(
        after.len() >= 20,
        "{} samples after the notice",
        after.len()
    );
    let flapping_id = after[0].open_incident.clone();
    assert!(!flapping_id.is_empty(), "an incident is open when it flaps");
    assert!(
        after.iter().all(|s| s.open_incident == flapping_id),
        "the incident is held through the flipping: {:?}",
        after
            .iter()
            .map(|s| s.open_incident.as_str())
            .collect::<Vec<_>>()
    );

    // Stable from here: exactly one recovery, after 5 s of every region up.
    let closed = wait_status(
        &w.tenant,
        &held.id,
        "the held incident closes once stable",
        STABLE_FOR + WAIT,
        |s| s.open_incident_id.is_empty(),
    )
    .await;
    assert_eq!(closed.overall, v1::OverallState::Up as i32);
    let mut incs = incidents_of(&w.tenant, &held.id).await;
    incs.sort_by_key(|i| ts_ms(i.opened_at.as_ref()));
    let flapping = incs
        .iter()
        .find(|i| i.id == flapping_id)
        .expect("the flapping incident is listed");
    let closed_at = ts_ms(flapping.closed_at.as_ref());
    let rs = results(&w.tenant, &held.id).await;
    let last_down = rs
        .iter()
        .filter(|r| r.outcome != v1::Outcome::Ok as i32)
        .map(at_ms)
        .max()
        .expect("down results were stored");
    println!(
        "flapping: held {} incident(s) (unheld {}), flapping noticed {:?} in, recovered {} ms after the last down result",
        incs.len(),
        incidents_of(&w.tenant, &unheld.id).await.len(),
        seen - started,
        closed_at.saturating_sub(last_down)
    );
    assert!(
        closed_at >= last_down + STABLE_FOR.as_millis() as u64,
        "recovered {} ms after the last down result: sooner than the stability time",
        closed_at.saturating_sub(last_down)
    );
    assert!(flapping.flapping_since.is_some());
    let stable_since = ts_ms(flapping.stable_since.as_ref());
    assert!(
        stable_since > last_down && closed_at >= stable_since + STABLE_FOR.as_millis() as u64,
        "stable since {stable_since}, closed at {closed_at}, last down {last_down}"
    );

    // Notices: at most a couple of pairs before, one flapping, one recovery.
    let before: Vec<&v1::Incident> = incs.iter().filter(|i| i.id != flapping_id).collect();
    assert!(
        before.len() <= 2,
        "at most a couple of incidents before it was found flapping: {}",
        before.len()
    );
    assert_eq!(
        incs.last().map(|i| i.id.as_str()),
        Some(flapping_id.as_str()),
        "nothing opened after the flapping one"
    );
    let held_ids: Vec<String> = incs.iter().map(|i| i.id.clone()).collect();
    let expected = 4 * before.len() + 6;
    let held_notices = arrived(&inbox, &held_ids, expected).await;
    for i in &before {
        assert!(i.closed_at.is_some());
        assert_eq!(inbox.count(&i.id, "opened"), (1, 1), "{}", i.id);
        assert_eq!(inbox.count(&i.id, "resolved"), (1, 1), "{}", i.id);
        assert_eq!(inbox.count(&i.id, "flapping"), (0, 0), "{}", i.id);
    }
    assert_eq!(inbox.count(&flapping_id, "opened"), (1, 1));
    assert_eq!(
        inbox.count(&flapping_id, "flapping"),
        (1, 1),
        "one flapping notice per channel"
    );
    assert_eq!(
        inbox.count(&flapping_id, "resolved"),
        (1, 1),
        "one recovery per channel"
    );
    assert_eq!(held_notices.len(), expected, "{held_notices:?}");

    let subject = format!("TCP Port Flapping: {HOST}:{}", door.port());
    let body = inbox
        .hook_bodies()
        .into_iter()
        .find(|b| b["event"] == "incident.flapping")
        .expect("the flapping webhook");
    assert_eq!(body["subject"], subject.as_str());
    assert_eq!(body["incident"]["id"], flapping_id.as_str());
    assert_eq!(body["flapping"]["threshold"], 4);
    assert_eq!(body["flapping"]["window_ms"], 20_000);
    assert_eq!(body["flapping"]["stable_for_ms"], 5_000);
    let mail = inbox
        .smtp
        .mails()
        .into_iter()
        .find(|m| m.header("Subject").as_deref() == Some(subject.as_str()))
        .expect("the flapping email");
    assert!(
        mail.body_text()
            .contains("once every region has been up for 5s without a break"),
        "{}",
        mail.body_text()
    );

    // The same flips without flap detection: a pair per flip, never held.
    let plain = incidents_of(&w.tenant, &unheld.id).await;
    assert!(
        plain.len() >= 5 && plain.len() > incs.len() + 2,
        "without flap detection the same flips make many incidents: {} (with it: {})",
        plain.len(),
        incs.len()
    );
    wait_status(&w.tenant, &unheld.id, "closed", WAIT, |s| {
        s.open_incident_id.is_empty()
    })
    .await;
    for i in &plain {
        assert!(i.flapping_since.is_none(), "{}", i.id);
        assert_eq!(inbox.count(&i.id, "flapping"), (0, 0), "{}", i.id);
    }
    let plain_ids: Vec<String> = plain.iter().map(|i| i.id.clone()).collect();
    let plain_notices = arrived(&inbox, &plain_ids, 4 * plain.len()).await;
    assert_eq!(
        plain_notices.len(),
        4 * plain.len(),
        "a page pair per flip: {plain_notices:?}"
    );
    drop(probes);
}
