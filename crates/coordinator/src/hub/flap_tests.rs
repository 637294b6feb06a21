//! The hub with flap detection, on a real store: a monitor flipping at three
//! regions gets one opened/resolved pair, a second opening, one "flapping"
//! notice (not to PagerDuty), is held while it flips, survives a restart
//! without a second notice or an early recovery, and closes once after its
//! stability time.

use super::*;
use crate::outbox;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

fn result(region: &str, outcome: v1::Outcome) -> v1::CheckResult {
    v1::CheckResult {
        monitor_id: "m1".into(),
        region: region.into(),
        checked_at: Some(to_timestamp(SystemTime::now())),
        outcome: outcome as i32,
        ..Default::default()
    }
}

fn all(outcome: v1::Outcome) -> Vec<v1::CheckResult> {
    REGIONS.iter().map(|r| result(r, outcome)).collect()
}

/// Every delivery as (incident, kind word, channel).
fn deliveries(store: &Store) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = store
        .list_deliveries()
        .unwrap()
        .into_iter()
        .filter_map(|r| r.delivery)
        .map(|d| {
            let kind = v1::DeliveryKind::try_from(d.kind).unwrap();
            (
                d.subject_id,
                outbox::kind_word(kind).to_string(),
                d.channel_id,
            )
        })
        .collect();
    v.sort();
    v
}

fn count(ds: &[(String, String, String)], incident: &str, kind: &str) -> usize {
    ds.iter()
        .filter(|(i, k, _)| i == incident && k == kind)
        .count()
}

type Inboxes = Vec<mpsc::UnboundedReceiver<v1::CoordinatorMessage>>;

/// A hub on `store` with the three regions online (agents connected; their
/// queues are returned so they stay open).
fn hub_with_agents(store: &Store) -> (Arc<Hub>, Inboxes) {
    let hub = Hub::load(store.clone(), HubSettings::default()).unwrap();
    let mut queues = Vec::new();
    for r in REGIONS {
        let (tx, rx) = mpsc::unbounded_channel();
        queues.push(rx);
        hub.agent_connected(
            r,
            v1::Agent {
                agent_id: format!("{r}-1"),
                ..Default::default()
            },
            tx,
        );
    }
    (hub, queues)
}

#[tokio::test]
async fn a_flapping_monitor_is_held_notified_once_and_recovers_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for r in REGIONS {
        store
            .put_region(&v1::Region {
                name: r.into(),
                ..Default::default()
            })
            .unwrap();
    }
    let channel = |id: &str, config| v1::Channel {
        id: id.into(),
        tenant_id: "t".into(),
        is_default: true,
        config: Some(config),
        ..Default::default()
    };
    store
        .put_channel(&channel(
            "ch-hook",
            v1::channel::Config::Webhook(v1::WebhookConfig::default()),
        ))
        .unwrap();
    store
        .put_channel(&channel(
            "ch-pd",
            v1::channel::Config::Pagerduty(v1::PagerDutyConfig::default()),
        ))
        .unwrap();
    let stable_for = Duration::from_millis(1_000);
    let m = v1::Monitor {
        interval_ms: 1_000,
        timeout_ms: 1_000,
        // Defaults otherwise: 4 changes within 20 intervals.
        flap_stable_for_ms: 1_000,
        ..super::assignment_tests::monitor("m1", &REGIONS, "t")
    };
    store.put_monitor(&m).unwrap();
    let (hub, _agents) = hub_with_agents(&store);
    let open_id = |hub: &Hub| hub.lock().open.get("m1").map(|i| i.id.clone());

    hub.results_stored(all(v1::Outcome::Ok)).await.unwrap();
    // Down, up, down: an opened/resolved pair and a second opening.
    hub.results_stored(all(v1::Outcome::Refused)).await.unwrap();
    let first = open_id(&hub).expect("the first incident");
    hub.results_stored(all(v1::Outcome::Ok)).await.unwrap();
    assert_eq!(open_id(&hub), None, "the first incident closed");
    hub.results_stored(all(v1::Outcome::Refused)).await.unwrap();
    let second = open_id(&hub).expect("the second incident");
    // Up again: the 4th change within the window. Flapping: held open.
    let mut events = hub.subscribe();
    hub.results_stored(all(v1::Outcome::Ok)).await.unwrap();
    assert_eq!(open_id(&hub).as_deref(), Some(second.as_str()), "held open");
    let flapping_events = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e.kind, Some(v1::event::Kind::IncidentFlapping(_))))
        .count();
    assert_eq!(flapping_events, 1, "the event stream announces it");

    let ds = deliveries(&store);
    assert_eq!(count(&ds, &first, "opened"), 2);
    assert_eq!(count(&ds, &first, "resolved"), 2);
    assert_eq!(count(&ds, &second, "opened"), 2);
    assert_eq!(
        ds.iter()
            .filter(|(i, k, _)| i == &second && k == "flapping")
            .map(|(_, _, c)| c.as_str())
            .collect::<Vec<_>>(),
        ["ch-hook"],
        "one flapping notice, none to PagerDuty (its alert stays triggered)"
    );
    let stored = store.get_incident(&second).unwrap().unwrap();
    assert!(stored.flapping_since.is_some() && stored.closed_at.is_none());
    assert_eq!(stored.state_changes.len(), 4);

    // Still flipping: nothing more is sent and it stays open.
    for outcome in [v1::Outcome::Refused, v1::Outcome::Ok, v1::Outcome::Refused] {
        hub.results_stored(all(outcome)).await.unwrap();
        assert_eq!(open_id(&hub).as_deref(), Some(second.as_str()));
    }
    hub.results_stored(all(v1::Outcome::Ok)).await.unwrap();
    assert_eq!(deliveries(&store), ds, "nothing sent while it flips");

    // A restart while held: no second notice, and no recovery before every
    // region has been seen up for the stability time after the start.
    store.flush().await.unwrap();
    drop(hub);
    let (hub, _agents) = hub_with_agents(&store);
    hub.results_stored(all(v1::Outcome::Ok)).await.unwrap();
    hub.evaluate_all().await.unwrap();
    assert_eq!(
        open_id(&hub).as_deref(),
        Some(second.as_str()),
        "no early recovery after a restart"
    );
    assert_eq!(deliveries(&store), ds, "no second flapping notice");

    // Stable for the stability time: one recovery, to both channels told of
    // the opening, by the periodic evaluation (no new result needed).
    tokio::time::sleep(stable_for + Duration::from_millis(100)).await;
    hub.evaluate_all().await.unwrap();
    assert_eq!(open_id(&hub), None, "closed once stable");
    let ds = deliveries(&store);
    assert_eq!(count(&ds, &second, "resolved"), 2);
    assert_eq!(count(&ds, &second, "flapping"), 1);
    let closed = store.get_incident(&second).unwrap().unwrap();
    assert!(closed.closed_at.is_some());
    assert!(
        closed.flapping_since.is_some(),
        "the closed incident says it was flapping"
    );
    let (since, at) = (
        closed
            .stable_since
            .as_ref()
            .and_then(from_timestamp)
            .unwrap(),
        closed.closed_at.as_ref().and_then(from_timestamp).unwrap(),
    );
    assert!(
        at.duration_since(since).unwrap() >= stable_for,
        "closed only after {stable_for:?} of every region up"
    );
}

#[tokio::test]
async fn turning_flap_detection_off_closes_a_held_incident_at_the_next_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for r in REGIONS {
        store
            .put_region(&v1::Region {
                name: r.into(),
                ..Default::default()
            })
            .unwrap();
    }
    let mut m = v1::Monitor {
        interval_ms: 1_000,
        timeout_ms: 1_000,
        flap_threshold: 2,
        ..super::assignment_tests::monitor("m1", &REGIONS, "t")
    };
    store.put_monitor(&m).unwrap();
    let (hub, _agents) = hub_with_agents(&store);
    hub.results_stored(all(v1::Outcome::Refused)).await.unwrap();
    hub.results_stored(all(v1::Outcome::Ok)).await.unwrap();
    assert_eq!(hub.open_incident_count(), 1, "threshold 2: held at once");
    hub.results_stored(all(v1::Outcome::Refused)).await.unwrap();
    m.flap_detection = v1::FlapDetection::Off as i32;
    hub.monitor_changed(m);
    hub.results_stored(all(v1::Outcome::Ok)).await.unwrap();
    assert_eq!(
        hub.open_incident_count(),
        0,
        "off: the next recovery closes"
    );
}
