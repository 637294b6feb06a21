//! Region outages on a real store: one offline notice per region after the
//! grace period, not repeated by a restart, and one "back online" notice
//! only after it.

use super::*;

fn operator_channel(store: &Store, id: &str) {
    store
        .put_channel(&v1::Channel {
            id: id.into(),
            name: "ops".into(),
            ..Default::default()
        })
        .unwrap();
}

fn kinds(store: &Store) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = store
        .list_deliveries()
        .unwrap()
        .into_iter()
        .filter_map(|r| r.delivery)
        .map(|d| (d.kind, d.subject_id))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn one_offline_notice_per_region_and_back_online_only_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let settings = HubSettings {
        region_offline_grace: Duration::from_millis(200),
        ..HubSettings::default()
    };
    let hub = Hub::load(store.clone(), settings.clone()).unwrap();
    let eu = v1::Region {
        name: "eu".into(),
        ..Default::default()
    };
    store.put_region(&eu).unwrap();
    hub.region_changed(Some(eu), "eu");
    // Told nobody (no channel yet): the region comes back without a notice.
    tokio::time::sleep(Duration::from_millis(250)).await;
    hub.region_notices().await.unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let agent = v1::Agent {
        agent_id: "eu-1".into(),
        ..Default::default()
    };
    let session = hub.agent_connected("eu", agent.clone(), tx);
    hub.region_notices().await.unwrap();
    assert!(kinds(&store).is_empty());

    operator_channel(&store, "ch-op");
    hub.agent_disconnected("eu", session);
    hub.region_notices().await.unwrap();
    assert!(kinds(&store).is_empty(), "not before the grace period");
    tokio::time::sleep(Duration::from_millis(250)).await;
    for _ in 0..3 {
        hub.region_notices().await.unwrap();
    }
    let offline = (v1::DeliveryKind::RegionOffline as i32, "eu".to_string());
    assert_eq!(
        kinds(&store),
        vec![offline.clone()],
        "one notice, not one per tick"
    );

    // A restart neither repeats the notice nor forgets it was sent.
    drop(hub);
    let hub = Hub::load(store.clone(), settings).unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    hub.region_notices().await.unwrap();
    assert_eq!(kinds(&store), vec![offline.clone()]);
    let (tx, _rx) = mpsc::unbounded_channel();
    hub.agent_connected("eu", agent, tx);
    hub.region_notices().await.unwrap();
    hub.region_notices().await.unwrap();
    assert_eq!(
        kinds(&store),
        [
            offline,
            (v1::DeliveryKind::RegionOnline as i32, "eu".to_string())
        ]
    );
    let keys: Vec<String> = store
        .list_deliveries()
        .unwrap()
        .into_iter()
        .filter_map(|r| r.delivery.map(|d| d.idempotency_key))
        .collect();
    let outage = keys[0].split(':').next().unwrap().to_string();
    assert!(
        keys.contains(&format!("{outage}:offline:ch-op")),
        "{keys:?}"
    );
    assert!(keys.contains(&format!("{outage}:online:ch-op")), "{keys:?}");
    assert!(store.region_outages().unwrap().is_empty());
}
