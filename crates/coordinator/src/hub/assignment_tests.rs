//! Assignment: rendezvous hashing moves only a lost agent's monitors; an
//! agent's snapshot holds its region's monitors (a private region only its
//! owner's); a monitor's change reaches only its owner there and leaves no
//! other agent's assignment stale.

use super::*;

pub(super) fn monitor(id: &str, regions: &[&str], tenant: &str) -> v1::Monitor {
    v1::Monitor {
        id: id.into(),
        tenant_id: tenant.into(),
        host: "db.example.com".into(),
        port: 5432,
        regions: regions.iter().map(|r| r.to_string()).collect(),
        interval_ms: 60_000,
        timeout_ms: 3000,
        generation: 1,
        ..Default::default()
    }
}

fn region(name: &str, owner: &str) -> v1::Region {
    v1::Region {
        name: name.into(),
        owner_tenant_id: owner.into(),
        ..Default::default()
    }
}

fn snapshot_ids(rx: &mut mpsc::UnboundedReceiver<v1::CoordinatorMessage>) -> Vec<String> {
    while let Ok(m) = rx.try_recv() {
        if let Some(v1::coordinator_message::Msg::Snapshot(s)) = m.msg {
            let mut ids: Vec<String> = s.assignments.into_iter().map(|a| a.monitor_id).collect();
            ids.sort();
            return ids;
        }
    }
    panic!("no snapshot")
}

#[test]
fn snapshot_holds_the_regions_monitors_and_private_regions_only_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::load(Store::open(dir.path()).unwrap(), HubSettings::default()).unwrap();
    hub.region_changed(Some(region("eu", "")), "eu");
    hub.region_changed(Some(region("dc", "acme")), "dc");
    hub.monitor_changed(monitor("m1", &["eu"], "acme"));
    hub.monitor_changed(monitor("m2", &["eu", "dc"], "acme"));
    hub.monitor_changed(monitor("m3", &["dc"], "bravo"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let info = v1::Agent {
        agent_id: "a".into(),
        ..Default::default()
    };
    hub.agent_connected("eu", info.clone(), tx);
    assert_eq!(snapshot_ids(&mut rx), ["m1", "m2"]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    hub.agent_connected("dc", info, tx);
    assert_eq!(
        snapshot_ids(&mut rx),
        ["m2"],
        "bravo's monitor never reaches acme's private region"
    );
}

/// Every update queued for one agent: (upserted ids, removed ids) per message.
fn updates(
    rx: &mut mpsc::UnboundedReceiver<v1::CoordinatorMessage>,
) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let Some(v1::coordinator_message::Msg::Update(u)) = m.msg {
            let ups = u.upserts.into_iter().map(|a| a.monitor_id).collect();
            out.push((ups, u.removals));
        }
    }
    out
}

#[test]
fn a_monitor_change_reaches_only_its_owner_and_leaves_no_other_assignment_stale() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::load(Store::open(dir.path()).unwrap(), HubSettings::default()).unwrap();
    hub.region_changed(Some(region("eu", "")), "eu");
    hub.region_changed(Some(region("us", "")), "us");
    for i in 0..200 {
        let regions: &[&str] = if i % 3 == 0 { &["us"] } else { &["eu", "us"] };
        hub.monitor_changed(monitor(&format!("m{i:03}"), regions, "acme"));
    }
    let mut rx = HashMap::new();
    let mut session = HashMap::new();
    for agent in ["a", "b", "c"] {
        let (tx, r) = mpsc::unbounded_channel();
        let info = v1::Agent {
            agent_id: agent.into(),
            ..Default::default()
        };
        session.insert(agent, hub.agent_connected("eu", info, tx));
        rx.insert(agent, r);
    }
    let drain = |rx: &mut HashMap<&str, mpsc::UnboundedReceiver<_>>| {
        let mut got: Vec<(&str, Vec<String>, Vec<String>)> = Vec::new();
        for agent in ["a", "b", "c"] {
            if let Some(r) = rx.get_mut(agent) {
                for (ups, rems) in updates(r) {
                    got.push((agent, ups, rems));
                }
            }
        }
        got
    };
    drain(&mut rx);
    let owner = |id: &str| rendezvous(["a", "b", "c"], id).unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // Created: one upsert to its owner, nothing to anyone else.
    let mut m = monitor("new", &["eu"], "acme");
    hub.monitor_changed(m.clone());
    assert_eq!(drain(&mut rx), [(owner("new"), s(&["new"]), s(&[]))]);
    // Changed: sent again to the same owner.
    m.port = 22;
    m.generation += 1;
    hub.monitor_changed(m.clone());
    assert_eq!(drain(&mut rx), [(owner("new"), s(&["new"]), s(&[]))]);
    // Paused: removed; resumed: back.
    m.paused = true;
    hub.monitor_changed(m.clone());
    assert_eq!(drain(&mut rx), [(owner("new"), s(&[]), s(&["new"]))]);
    m.paused = false;
    hub.monitor_changed(m.clone());
    assert_eq!(drain(&mut rx), [(owner("new"), s(&["new"]), s(&[]))]);
    // Moved out of the region, and deleted.
    hub.monitor_changed(monitor("m001", &["us"], "acme"));
    assert_eq!(drain(&mut rx), [(owner("m001"), s(&[]), s(&["m001"]))]);
    hub.monitor_removed("m002");
    assert_eq!(drain(&mut rx), [(owner("m002"), s(&[]), s(&["m002"]))]);
    assert!(hub.is_assigned("eu", session[owner("new")], "new"));
    assert!(!hub.is_assigned("eu", session[owner("m002")], "m002"));

    // A full recomputation finds nothing to send: every agent holds exactly
    // what it should.
    Hub::sync_region(&mut hub.lock(), "eu");
    assert!(drain(&mut rx).is_empty());
}

#[test]
fn rendezvous_moves_only_the_lost_agents_monitors() {
    let monitors: Vec<String> = (0..1000).map(|i| format!("mon-{i}")).collect();
    let three = ["a", "b", "c"];
    let two = ["a", "b"];
    let mut moved = 0;
    let mut per_agent: HashMap<&str, usize> = HashMap::new();
    for m in &monitors {
        let before = rendezvous(three, m).unwrap();
        let after = rendezvous(two, m).unwrap();
        *per_agent.entry(before).or_default() += 1;
        if before != "c" {
            assert_eq!(before, after, "{m} moved although its agent stayed");
        } else {
            moved += 1;
        }
    }
    assert_eq!(moved, per_agent["c"]);
    for (agent, n) in per_agent {
        assert!((250..420).contains(&n), "{agent} owns {n} of 1000: uneven");
    }
    assert_eq!(rendezvous(std::iter::empty(), "x"), None);
}
