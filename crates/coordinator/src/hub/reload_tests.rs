//! Reloading the live view from a reopened store: its monitors and open
//! incidents are taken, and the agents are told what changed for them.

use super::assignment_tests::monitor;
use super::*;

/// The assignment updates queued for one agent: (upserts, removals).
fn updates(
    rx: &mut mpsc::UnboundedReceiver<v1::CoordinatorMessage>,
) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let Some(v1::coordinator_message::Msg::Update(u)) = m.msg {
            out.push((
                u.upserts.into_iter().map(|a| a.monitor_id).collect(),
                u.removals,
            ));
        }
    }
    out
}

fn region(name: &str) -> v1::Region {
    v1::Region {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn reload_takes_the_reopened_stores_monitors_and_incidents_and_tells_agents() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put_region(&region("eu")).unwrap();
    let kept = monitor("kept", &["eu"], "acme");
    store.put_monitor(&kept).unwrap();
    store
        .put_monitor(&monitor("gone", &["eu"], "acme"))
        .unwrap();
    let hub = Hub::load(store.clone(), HubSettings::default()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let info = v1::Agent {
        agent_id: "a".into(),
        ..Default::default()
    };
    hub.agent_connected("eu", info, tx);
    updates(&mut rx);

    // What a reopened store may hold that the view does not: writes whose
    // flush reported a failure but which reached the disk after all.
    store
        .put_monitor(&monitor("arrived", &["eu"], "acme"))
        .unwrap();
    store.delete_monitor("gone").unwrap();
    store
        .put_incident(&v1::Incident {
            id: "inc-1".into(),
            monitor_id: "kept".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(hub.open_incident_count(), 0);

    hub.reload().await.unwrap();
    assert_eq!(hub.open_incident_count(), 1, "the store's open incident");
    assert_eq!(hub.status(&kept).open_incident_id, "inc-1");
    let (ups, rems): (Vec<_>, Vec<_>) = updates(&mut rx).into_iter().unzip();
    assert_eq!(ups.concat(), ["arrived"], "the new monitor is assigned");
    assert_eq!(rems.concat(), ["gone"], "the deleted one is taken away");
    assert!(hub.monitored_in("arrived", "eu") && !hub.monitored_in("gone", "eu"));
}
