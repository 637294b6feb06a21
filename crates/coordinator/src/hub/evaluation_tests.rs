//! Evaluation without and with traffic: a result going stale is noticed by
//! the periodic pass (which skips monitors not yet due), and a region turning
//! down asks the others to confirm only when fast confirmation is on.

use super::*;

/// A result going stale changes the verdict with no new traffic: the
/// periodic evaluation must notice it, though it skips monitors not yet due.
#[tokio::test]
async fn a_result_going_stale_is_noticed_without_new_results() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::load(Store::open(dir.path()).unwrap(), HubSettings::default()).unwrap();
    hub.region_changed(
        Some(v1::Region {
            name: "eu".into(),
            ..Default::default()
        }),
        "eu",
    );
    let m = v1::Monitor {
        id: "m1".into(),
        tenant_id: "t".into(),
        host: "db.example.com".into(),
        port: 5432,
        regions: vec!["eu".into()],
        interval_ms: 1000,
        timeout_ms: 1000,
        generation: 1,
        ..Default::default()
    };
    hub.monitor_changed(m.clone());
    let (tx, _rx) = mpsc::unbounded_channel();
    hub.agent_connected(
        "eu",
        v1::Agent {
            agent_id: "a".into(),
            ..Default::default()
        },
        tx,
    );
    // Fresh for another 300 ms (window = 2 × 1 s + 1 s + 5 s).
    let window = consensus::freshness_window(Duration::from_secs(1), Duration::from_secs(1));
    let at = SystemTime::now() - window + Duration::from_millis(300);
    let r = v1::CheckResult {
        monitor_id: "m1".into(),
        region: "eu".into(),
        checked_at: Some(to_timestamp(at)),
        outcome: v1::Outcome::Ok as i32,
        ..Default::default()
    };
    hub.results_stored(vec![r]).await.unwrap();
    let state = |hub: &Hub| hub.status(&m).regions[0].state;
    assert_eq!(state(&hub), v1::RegionState::Up as i32);
    let mut events = hub.subscribe();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut saw_stale = false;
    while std::time::Instant::now() < deadline && !saw_stale {
        hub.evaluate_all().await.unwrap();
        while let Ok(e) = events.try_recv() {
            if let Some(v1::event::Kind::RegionState(c)) = e.kind {
                saw_stale |= c.to == v1::RegionState::Unknown as i32;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        saw_stale,
        "the periodic evaluation announced the region unknown once its result went stale"
    );
    assert_eq!(state(&hub), v1::RegionState::Unknown as i32);
    // Not due again for a while: a second pass right away evaluates nothing.
    let before = hub.counters().evaluations;
    hub.evaluate_all().await.unwrap();
    assert_eq!(
        hub.counters().evaluations,
        before,
        "steady monitors are skipped"
    );
}

fn result(region: &str, outcome: v1::Outcome) -> v1::CheckResult {
    v1::CheckResult {
        monitor_id: "m1".into(),
        region: region.into(),
        checked_at: Some(to_timestamp(SystemTime::now())),
        outcome: outcome as i32,
        ..Default::default()
    }
}

/// The check-now messages each region's agent got, by region.
fn check_nows(
    rxs: &mut [(&str, mpsc::UnboundedReceiver<v1::CoordinatorMessage>)],
) -> Vec<(String, Vec<String>)> {
    let mut got = Vec::new();
    for (region, rx) in rxs.iter_mut() {
        while let Ok(m) = rx.try_recv() {
            if let Some(v1::coordinator_message::Msg::CheckNow(c)) = m.msg {
                got.push((region.to_string(), c.monitor_ids));
            }
        }
    }
    got
}

/// One region of three turns down: with `fast_confirmation` the other two
/// are asked to check now; without it nobody is, and the incident still
/// opens once a second region reports down on its own schedule.
#[tokio::test]
async fn fast_confirmation_sends_check_now_only_when_on() {
    for on in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let settings = HubSettings {
            fast_confirmation: on,
            ..HubSettings::default()
        };
        let hub = Hub::load(Store::open(dir.path()).unwrap(), settings).unwrap();
        let regions = ["eu", "us", "ap"];
        for r in regions {
            hub.region_changed(
                Some(v1::Region {
                    name: r.into(),
                    ..Default::default()
                }),
                r,
            );
        }
        hub.monitor_changed(super::assignment_tests::monitor("m1", &regions, "t"));
        let mut rxs = Vec::new();
        for r in regions {
            let (tx, rx) = mpsc::unbounded_channel();
            let agent = v1::Agent {
                agent_id: format!("{r}-1"),
                ..Default::default()
            };
            hub.agent_connected(r, agent, tx);
            rxs.push((r, rx));
        }
        let all_up = regions.iter().map(|r| result(r, v1::Outcome::Ok)).collect();
        hub.results_stored(all_up).await.unwrap();
        assert_eq!(check_nows(&mut rxs), vec![]);

        // `results_stored` evaluates before it returns: whatever check-now
        // this causes is already queued.
        hub.results_stored(vec![result("eu", v1::Outcome::Refused)])
            .await
            .unwrap();
        let got = check_nows(&mut rxs);
        if on {
            let want = vec![
                ("us".to_string(), vec!["m1".to_string()]),
                ("ap".to_string(), vec!["m1".to_string()]),
            ];
            assert_eq!(got, want, "the two other regions confirm now");
            assert_eq!(hub.counters().confirmations, 1);
        } else {
            assert_eq!(got, vec![], "fast_confirmation = false: no check-now");
            assert_eq!(hub.counters().confirmations, 0);
        }
        assert_eq!(hub.open_incident_count(), 0, "1 of 3 down does not open");

        hub.results_stored(vec![result("us", v1::Outcome::TimedOut)])
            .await
            .unwrap();
        assert_eq!(hub.open_incident_count(), 1, "2 of 3 down opens (on: {on})");
        assert_eq!(check_nows(&mut rxs), vec![], "no check-now once open");
    }
}
