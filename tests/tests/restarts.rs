//! The coordinator's own downtime, with real processes: a real coordinator
//! stopped and started (or killed with SIGKILL), agents as real gRPC clients
//! whose reconnection order the test controls, and a real webhook receiver and
//! SMTP server counting notices.
//!
//! What it proves:
//! - the coordinator's downtime never counts as a region's silence: after a
//!   start longer than `offline_grace` after the stop, the region that was up
//!   reconnecting first does not close an incident that the down regions still
//!   hold open (no false "TCP Port Reachable Again", no second incident);
//! - deleting a monitor with an open incident closes the incident in the same
//!   durable write: a SIGKILL right after the call leaves no incident open.

mod support;

use std::time::{Duration, SystemTime};

use portwatch_e2e::FakeAgent;
use portwatch_proto::time::from_timestamp;
use portwatch_proto::v1;
use support::*;

async fn agent(w: &World, region: usize) -> FakeAgent {
    let id = format!("probe-{}", w.regions[region].name);
    let a = FakeAgent::connect(&w.coord, &w.regions[region].token, &id)
        .await
        .unwrap_or_else(|e| panic!("agent {id}: {:?} {}", e.code(), e.message()));
    a.keepalive();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_long_outage_is_no_recovery() {
    // The grace is at least the freshness window: 2 × 1 s + 1 s + 5 s = 8 s.
    let mut w = World::start(3, &format!("{NOTIFY}offline_grace = \"1s\"\n")).await;
    let inbox = Inbox::create(&mut w.tenant, "oncall").await;
    let req = monitor("orders db", "127.0.0.1", 5432, &w.names(3), 1000);
    let m = create_monitor(&mut w.tenant, req).await;
    let mut agents = Vec::new();
    for r in 0..3 {
        agents.push(agent(&w, r).await);
    }
    agents[0].report_acked(&m.id, v1::Outcome::Ok).await;
    agents[1].report_acked(&m.id, v1::Outcome::Refused).await;
    agents[2].report_acked(&m.id, v1::Outcome::Refused).await;
    let s = wait_status(
        &w.tenant,
        &m.id,
        "two of three down open an incident",
        WAIT,
        |s| !s.open_incident_id.is_empty(),
    )
    .await;
    let incident = s.open_incident_id;
    inbox.wait(2, WAIT).await;

    // The coordinator is away for longer than the grace.
    w.coord.proc.terminate(Duration::from_secs(10));
    drop(agents);
    tokio::time::sleep(Duration::from_secs(9)).await;
    w.coord.restart();
    w.reconnect().await;

    // The region that was up comes back first and keeps reporting up; the two
    // down regions have not reconnected yet.
    let mut up = agent(&w, 0).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        up.report_acked(&m.id, v1::Outcome::Ok).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let s = status(&w.tenant, &m.id).await;
    assert_eq!(
        s.open_incident_id, incident,
        "the incident stays open while the down regions are only unknown since the restart"
    );

    // They reconnect, still refused: the same incident, and nothing more sent.
    let mut down = vec![agent(&w, 1).await, agent(&w, 2).await];
    for a in &mut down {
        a.report_acked(&m.id, v1::Outcome::Refused).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = incidents_of(&w.tenant, &m.id).await;
    assert_eq!(all.len(), 1, "one incident, not a second one: {all:?}");
    assert!(all[0].closed_at.is_none(), "still open");
    assert_eq!(
        inbox.count(&incident, "resolved"),
        (0, 0),
        "no false recovery"
    );
    assert_eq!(inbox.count(&incident, "opened"), (1, 1));
    assert_eq!(inbox.notices().len(), 2, "{:?}", inbox.notices());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_monitors_incident_is_closed_in_the_same_durable_write() {
    let mut w = World::start(1, "").await;
    let req = monitor("smtp", "127.0.0.1", 25, &w.names(1), 1000);
    let m = create_monitor(&mut w.tenant, req).await;
    let mut a = agent(&w, 0).await;
    a.report_acked(&m.id, v1::Outcome::Refused).await;
    let s = wait_status(&w.tenant, &m.id, "the incident opens", WAIT, |s| {
        !s.open_incident_id.is_empty()
    })
    .await;
    let incident = s.open_incident_id;

    w.tenant
        .delete_monitor(v1::DeleteMonitorRequest {
            id: m.id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete the monitor");
    // Killed at once: only what the call made durable survives.
    w.coord.proc.kill9();
    let killed_at = SystemTime::now();
    drop(a);
    w.coord.restart();
    w.reconnect().await;

    let i = w
        .tenant
        .get_incident(v1::GetIncidentRequest {
            id: incident.clone(),
            ..Default::default()
        })
        .await
        .expect("the incident is still readable")
        .into_inner();
    let closed = i
        .closed_at
        .as_ref()
        .and_then(from_timestamp)
        .expect("the deleted monitor's incident is closed after the crash");
    assert!(
        closed <= killed_at,
        "closed by the delete itself, not later"
    );
    assert!(incidents(&w.tenant, true).await.is_empty(), "none open");
}
