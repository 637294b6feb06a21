//! A change and its consequence land together or not at all.

use std::time::SystemTime;

use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;

use super::Changes;
use crate::auth::Auth;
use crate::hub::{Hub, HubSettings};
use crate::store::{SledStore, Store, StoreError};

/// A store with monitor `m1` and its open incident `inc-1`, a hub loaded
/// from it (so the incident is open in the live view too), and the layer.
fn world(dir: &std::path::Path) -> (SledStore, Store, std::sync::Arc<Hub>, Changes) {
    let sled = SledStore::open(dir).unwrap();
    let store = Store::new(sled.clone());
    store
        .put_monitor(&v1::Monitor {
            id: "m1".into(),
            tenant_id: "acme".into(),
            host: "db.example.com".into(),
            port: 5432,
            regions: vec!["eu".into()],
            ..Default::default()
        })
        .unwrap();
    store
        .put_incident(&v1::Incident {
            id: "inc-1".into(),
            tenant_id: "acme".into(),
            monitor_id: "m1".into(),
            opened_at: Some(to_timestamp(SystemTime::now())),
            ..Default::default()
        })
        .unwrap();
    let hub = Hub::load(store.clone(), HubSettings::default()).unwrap();
    let changes = Changes::new(hub.clone(), Auth::new("operator-secret", store.clone()));
    (sled, store, hub, changes)
}

#[tokio::test]
async fn deleting_a_monitor_closes_its_incident_in_the_same_write_or_changes_nothing() {
    // Both: the monitor is gone and its incident closed, in the store and live.
    let dir = tempfile::tempdir().unwrap();
    let (_, store, hub, changes) = world(dir.path());
    assert!(hub.open_incident_of("m1").is_some());
    assert!(changes.delete_monitor("m1").await.unwrap());
    assert!(store.get_monitor("m1").unwrap().is_none());
    assert!(store.open_incident("m1").unwrap().is_none());
    let closed = store.get_incident("inc-1").unwrap().unwrap();
    assert!(closed.closed_at.is_some(), "closed, not left open");
    assert!(hub.open_incident_of("m1").is_none());
    assert_eq!(store.tenant_monitor_count("acme").unwrap(), 0);

    // Neither: with the store refusing writes, the call fails and nothing
    // changed, neither in the store nor in the live view.
    let dir = tempfile::tempdir().unwrap();
    let (sled, store, hub, changes) = world(dir.path());
    sled.fail_for_test("test: the disk is full");
    let err = changes.delete_monitor("m1").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(store.get_monitor("m1").unwrap().is_some());
    let open = store.open_incident("m1").unwrap().unwrap();
    assert_eq!(open.id, "inc-1");
    assert!(open.closed_at.is_none());
    assert_eq!(
        hub.open_incident_of("m1").map(|i| i.id),
        Some("inc-1".into())
    );
    assert_eq!(store.tenant_monitor_count("acme").unwrap(), 1);
}
