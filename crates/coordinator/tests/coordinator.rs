//! The coordinator as a real process on loopback (TLS, temp sled dir), driven by
//! real gRPC clients: an operator, tenants, and hand-driven agents in three
//! regions. Each test asserts what an operator or on-call engineer would see.

use std::time::{Duration, SystemTime};

use portwatch_e2e::{
    Admin, FakeAgent, OPERATOR_TOKEN, Setup, World, eventually, metric_value, result,
};
use portwatch_proto::v1;
use tonic::Code;

const ENTERPRISE_FAST: &str = "[plans.enterprise]\nport_monitors = true\nmax_monitors = 100\nmin_interval = \"1s\"\n\n[plans.free]\nport_monitors = false\nmax_monitors = 5\nmin_interval = \"5m\"\n\n[plans.basic]\nport_monitors = true\nmax_monitors = 2\nmin_interval = \"1s\"\n";

async fn world() -> World {
    world_with("").await
}

/// Three public regions, a tenant, and one agent token per region; the
/// coordinator's config has the top-level keys `extra` too.
async fn world_with(extra: &str) -> World {
    World::builder()
        .coordinator_bin(env!("CARGO_BIN_EXE_portwatch-coordinator"))
        .config(extra)
        .plans(ENTERPRISE_FAST)
        .public_regions(&["eu", "us", "ap"])
        .start()
        .await
}

fn monitor_req(host: &str, regions: &[&str]) -> v1::CreateMonitorRequest {
    v1::CreateMonitorRequest {
        name: format!("db {host}"),
        host: host.into(),
        port: 5432,
        regions: regions.iter().map(|r| r.to_string()).collect(),
        interval_ms: 2000,
        timeout_ms: 1000,
        ..Default::default()
    }
}

async fn incidents(admin: &mut Admin, open_only: bool) -> Vec<v1::Incident> {
    admin
        .list_incidents(v1::ListIncidentsRequest {
            open_only,
            ..Default::default()
        })
        .await
        .expect("list incidents")
        .into_inner()
        .incidents
}

/// The monitor's live status as its tenant sees it.
async fn status(admin: &mut Admin, id: &str) -> v1::MonitorStatus {
    admin
        .get_monitor_status(v1::GetMonitorStatusRequest {
            id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn history(admin: &mut Admin, monitor: &str) -> Vec<v1::CheckResult> {
    admin
        .list_results(v1::ListResultsRequest {
            monitor_id: monitor.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list results")
        .into_inner()
        .results
}

#[tokio::test]
async fn snapshot_then_live_updates_reach_the_right_agents() {
    let mut w = world().await;
    let m1 = w
        .tenant
        .create_monitor(monitor_req("db1.example.com", &["eu", "us", "ap"]))
        .await
        .unwrap()
        .into_inner();
    let mut ag = w.connect_agents().await;
    for a in &ag {
        assert!(
            a.assigned.contains_key(&m1.id),
            "{} got the monitor in its snapshot",
            a.agent_id
        );
        let spec = a.assigned[&m1.id].spec.clone().unwrap();
        assert_eq!(
            (spec.host.as_str(), spec.port, spec.timeout_ms),
            ("db1.example.com", 5432, 1000)
        );
    }
    // A monitor in two regions reaches only those two agents.
    let m2 = w
        .tenant
        .create_monitor(monitor_req("db2.example.com", &["eu", "us"]))
        .await
        .unwrap()
        .into_inner();
    for a in ag.iter_mut().take(2) {
        a.pump_until(Duration::from_secs(5), |a| a.assigned.contains_key(&m2.id))
            .await
            .unwrap();
    }
    // Pause removes it everywhere; delete of m1 too.
    w.tenant
        .pause_monitor(v1::PauseMonitorRequest {
            id: m2.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    w.tenant
        .delete_monitor(v1::DeleteMonitorRequest {
            id: m1.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    for a in ag.iter_mut() {
        a.pump_until(Duration::from_secs(5), |a| a.assigned.is_empty())
            .await
            .unwrap();
    }
    assert!(!ag[2].assigned.contains_key(&m2.id));
    drop(w.op);
}

#[tokio::test]
async fn quorum_two_of_three_opens_one_does_not_and_all_clear_closes() {
    let mut w = world().await;
    let m = w
        .tenant
        .create_monitor(monitor_req("db.example.com", &["eu", "us", "ap"]))
        .await
        .unwrap()
        .into_inner();
    let mut ag = w.connect_agents().await;
    let mut events = w
        .tenant
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    for a in ag.iter_mut() {
        a.report_acked(&m.id, v1::Outcome::Ok).await;
    }
    let status = status(&mut w.tenant, &m.id).await;
    assert_eq!(status.overall, v1::OverallState::Up as i32);
    assert_eq!(status.quorum, 2);

    // 1 of 3 down: no incident, but the other regions are asked to confirm now.
    ag[0].report_acked(&m.id, v1::Outcome::Refused).await;
    assert!(
        incidents(&mut w.tenant, true).await.is_empty(),
        "1 of 3 must not open"
    );
    for a in ag.iter_mut().skip(1) {
        a.pump_until(Duration::from_secs(5), |a| a.check_now.contains(&m.id))
            .await
            .expect("check-now for confirmation");
    }
    assert!(
        ag[0].check_now.is_empty(),
        "the region that saw it down is not asked again"
    );
    eventually(
        "portwatch_fast_confirmations = 1",
        Duration::from_secs(5),
        || async {
            let text = w.coord.metrics_text().await;
            (metric_value(&text, "portwatch_fast_confirmations") == Some(1.0)).then_some(())
        },
    )
    .await;

    // 2 of 3 down: incident.
    ag[1].report_acked(&m.id, v1::Outcome::TimedOut).await;
    let open = incidents(&mut w.tenant, true).await;
    assert_eq!(open.len(), 1, "2 of 3 opens exactly one incident");
    let inc = &open[0];
    assert_eq!(inc.monitor_id, m.id);
    assert_eq!(inc.severity, "critical");
    assert!(
        inc.reason == v1::Outcome::Refused as i32 || inc.reason == v1::Outcome::TimedOut as i32
    );
    let states: Vec<(String, i32)> = inc
        .open_evidence
        .iter()
        .map(|e| (e.region.clone(), e.state))
        .collect();
    assert!(
        states.contains(&("eu".into(), v1::RegionState::Down as i32)),
        "{states:?}"
    );
    assert!(
        states.contains(&("us".into(), v1::RegionState::Down as i32)),
        "{states:?}"
    );
    assert!(
        states.contains(&("ap".into(), v1::RegionState::Up as i32)),
        "{states:?}"
    );

    // More down results do not open a second incident.
    ag[2].report_acked(&m.id, v1::Outcome::Refused).await;
    assert_eq!(incidents(&mut w.tenant, false).await.len(), 1);

    // Two regions recover: still open (one is down). All clear: closed.
    ag[0].report_acked(&m.id, v1::Outcome::Ok).await;
    ag[1].report_acked(&m.id, v1::Outcome::Ok).await;
    assert_eq!(
        incidents(&mut w.tenant, true).await.len(),
        1,
        "closes only when every region is up"
    );
    ag[2].report_acked(&m.id, v1::Outcome::Ok).await;
    assert!(incidents(&mut w.tenant, true).await.is_empty());
    let all = incidents(&mut w.tenant, false).await;
    assert_eq!(all.len(), 1);
    assert!(all[0].closed_at.is_some());
    assert!(
        all[0]
            .close_evidence
            .iter()
            .all(|e| e.state == v1::RegionState::Up as i32)
    );

    // The event stream saw the opening and the closing.
    let mut saw = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(saw.0 && saw.1) {
        let e = tokio::time::timeout_at(deadline, events.message())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        match e.kind {
            Some(v1::event::Kind::IncidentOpened(_)) => saw.0 = true,
            Some(v1::event::Kind::IncidentClosed(_)) => saw.1 = true,
            _ => {}
        }
    }
}

#[tokio::test]
async fn with_fast_confirmation_off_a_region_turning_down_sends_no_check_now() {
    let mut w = world_with("fast_confirmation = false\n").await;
    let m = w
        .tenant
        .create_monitor(monitor_req("db.example.com", &["eu", "us", "ap"]))
        .await
        .unwrap()
        .into_inner();
    let mut ag = w.connect_agents().await;
    for a in ag.iter_mut() {
        a.report_acked(&m.id, v1::Outcome::Ok).await;
    }

    // 1 of 3 down. The result is evaluated before it is acknowledged, so a
    // check-now would already be on its way (with the key on, the quorum test
    // above gets it); a second of quiet on every stream is a wide margin.
    ag[0].report_acked(&m.id, v1::Outcome::Refused).await;
    let status = status(&mut w.tenant, &m.id).await;
    let down: Vec<&str> = status
        .regions
        .iter()
        .filter(|r| r.state == v1::RegionState::Down as i32)
        .map(|r| r.region.as_str())
        .collect();
    assert_eq!(down, ["eu"]);
    for a in ag.iter_mut() {
        let waited = a
            .pump_until(Duration::from_millis(1000), |a| !a.check_now.is_empty())
            .await;
        assert!(waited.is_err(), "{}: {:?}", a.agent_id, a.check_now);
    }
    let text = w.coord.metrics_text().await;
    assert_eq!(
        metric_value(&text, "portwatch_fast_confirmations"),
        Some(0.0),
        "{text}"
    );
    assert!(incidents(&mut w.tenant, true).await.is_empty());

    // The rule itself is unchanged: a second region down on its own opens it.
    ag[1].report_acked(&m.id, v1::Outcome::TimedOut).await;
    assert_eq!(incidents(&mut w.tenant, true).await.len(), 1);
    for a in &ag {
        assert!(a.check_now.is_empty(), "{}: {:?}", a.agent_id, a.check_now);
    }
}

#[tokio::test]
async fn blocked_and_probe_errors_never_open_an_incident() {
    let mut w = world().await;
    let m = w
        .tenant
        .create_monitor(monitor_req("db.example.com", &["eu", "us", "ap"]))
        .await
        .unwrap()
        .into_inner();
    let mut ag = w.connect_agents().await;
    ag[0].report_acked(&m.id, v1::Outcome::ProbeError).await;
    ag[1].report_acked(&m.id, v1::Outcome::Blocked).await;
    ag[2].report_acked(&m.id, v1::Outcome::Refused).await;
    assert!(
        incidents(&mut w.tenant, false).await.is_empty(),
        "unknown regions never make an alert easier"
    );
    let status = status(&mut w.tenant, &m.id).await;
    let unknown: Vec<&str> = status
        .regions
        .iter()
        .filter(|r| r.state == v1::RegionState::Unknown as i32)
        .map(|r| r.unknown_reason.as_str())
        .collect();
    assert_eq!(unknown.len(), 2, "{:?}", status.regions);
    assert!(
        unknown.contains(&"probe error") && unknown.contains(&"blocked"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn acks_follow_durability_replays_are_deduplicated_and_foreign_results_refused() {
    let mut w = world().await;
    let m = w
        .tenant
        .create_monitor(monitor_req("db.example.com", &["eu", "us"]))
        .await
        .unwrap()
        .into_inner();
    let mut ag = w.connect_agents().await;
    let now = SystemTime::now();
    let batch: Vec<(u64, v1::CheckResult)> = (1..=5u64)
        .map(|i| {
            (
                i,
                result(
                    &m.id,
                    v1::Outcome::Ok,
                    now - Duration::from_millis(100 * (6 - i)),
                ),
            )
        })
        .collect();
    ag[0].send_batch(batch.clone()).await;
    ag[0]
        .pump_until(Duration::from_secs(5), |a| a.acked >= 5)
        .await
        .unwrap();
    // Replay: same sequence numbers again.
    ag[0].send_batch(batch).await;
    ag[0]
        .send_batch(vec![(6, result(&m.id, v1::Outcome::Ok, now))])
        .await;
    ag[0]
        .pump_until(Duration::from_secs(5), |a| a.acked >= 6)
        .await
        .unwrap();
    let h = history(&mut w.tenant, &m.id).await;
    assert_eq!(h.len(), 6, "every result exactly once");
    assert!(
        h.iter().all(|r| r.region == "eu"),
        "the region comes from the token, not the result"
    );

    // ap does not monitor it: refused, counted, acknowledged, not stored.
    ag[2]
        .send_batch(vec![(1, result(&m.id, v1::Outcome::Refused, now))])
        .await;
    ag[2]
        .pump_until(Duration::from_secs(5), |a| a.acked >= 1)
        .await
        .unwrap();
    assert_eq!(history(&mut w.tenant, &m.id).await.len(), 6);
    let metrics = w.coord.metrics_text().await;
    assert!(
        metrics.contains("portwatch_results_refused_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portwatch_results_ingested_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn agent_tokens_are_checked_and_bound_to_their_region() {
    let mut w = world().await;
    let err = FakeAgent::connect(&w.coord, "pwa_not-a-token", "x")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    let tenant_token_err = FakeAgent::connect(&w.coord, OPERATOR_TOKEN, "x")
        .await
        .err()
        .expect("refused");
    assert!(matches!(
        tenant_token_err.code(),
        Code::Unauthenticated | Code::PermissionDenied
    ));

    let a = FakeAgent::connect(&w.coord, &w.regions[0].token, "eu-1")
        .await
        .unwrap();
    assert_eq!(a.welcome.as_ref().unwrap().region, "eu");
    drop(a);

    let list =
        w.op.list_agent_tokens(v1::ListAgentTokensRequest {
            region: "eu".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let id = list.tokens[0].id.clone();
    w.op.revoke_agent_token(v1::RevokeTokenRequest { token_id: id })
        .await
        .unwrap();
    let err = FakeAgent::connect(&w.coord, &w.regions[0].token, "eu-1")
        .await
        .err()
        .expect("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn monitors_move_to_the_remaining_agent_when_one_goes_away() {
    let mut w = world().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            w.tenant
                .create_monitor(monitor_req(&format!("db{i}.example.com"), &["eu"]))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    let token = w.regions[0].token.clone();
    let mut a1 = FakeAgent::connect(&w.coord, &token, "eu-1").await.unwrap();
    a1.keepalive();
    let a2 = FakeAgent::connect(&w.coord, &token, "eu-2").await.unwrap();
    a2.keepalive();
    a1.pump_until(Duration::from_secs(5), |a| a.assigned.len() < 12)
        .await
        .unwrap();
    let (n1, n2) = (a1.assigned.len(), a2.assigned.len());
    assert_eq!(
        n1 + n2,
        12,
        "each monitor has exactly one agent in the region"
    );
    assert!(n1 > 0 && n2 > 0, "shared: {n1}/{n2}");
    assert!(a1.assigned.keys().all(|k| !a2.assigned.contains_key(k)));

    // Stream closed: a1 takes everything.
    drop(a2);
    a1.pump_until(Duration::from_secs(5), |a| a.assigned.len() == 12)
        .await
        .unwrap();

    // Heartbeat timeout: a silent agent loses its monitors within the timeout (2 s).
    let mut a3 = FakeAgent::connect(&w.coord, &token, "eu-3").await.unwrap();
    a1.pump_until(Duration::from_secs(5), |a| a.assigned.len() < 12)
        .await
        .unwrap();
    a3.pump_until(Duration::from_secs(1), |a| !a.assigned.is_empty())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    a1.pump_until(Duration::from_secs(6), |a| a.assigned.len() == 12)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "moved within the heartbeat timeout plus a tick"
    );
    let _ = a3.heartbeat().await;
    drop(w.op);
}

#[tokio::test]
async fn tenants_are_isolated_and_private_regions_stay_private() {
    let mut w = world().await;
    let (_b_id, b_token) = Setup::tenant(&mut w.op, "bravo", v1::Plan::Enterprise).await;
    let mut bravo = w.coord.admin(&b_token).await;
    Setup::region(&mut w.op, "acme-dc", &w.tenant_id).await;
    let private_token = Setup::agent_token(&mut w.op, "acme-dc").await;

    let m = w
        .tenant
        .create_monitor(monitor_req("db.example.com", &["eu"]))
        .await
        .unwrap()
        .into_inner();
    let err = bravo
        .get_monitor(v1::GetMonitorRequest {
            id: m.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = bravo
        .delete_monitor(v1::DeleteMonitorRequest {
            id: m.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = bravo
        .get_monitor_status(v1::GetMonitorStatusRequest {
            id: m.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = bravo
        .list_results(v1::ListResultsRequest {
            monitor_id: m.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let list = bravo
        .list_monitors(v1::ListMonitorsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.monitors.is_empty());
    let err = bravo
        .list_monitors(v1::ListMonitorsRequest {
            tenant_id: w.tenant_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "naming another tenant reveals nothing"
    );
    let err = bravo
        .create_tenant(v1::CreateTenantRequest {
            id: "x".into(),
            name: "x".into(),
            plan: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Bravo cannot use acme's private region; acme can, even for a private address.
    let err = bravo
        .create_monitor(monitor_req("db.example.com", &["acme-dc"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("regions"), "{}", err.message());
    let mut private = monitor_req("10.1.2.3", &["acme-dc"]);
    private.name = "internal".into();
    let pm = w.tenant.create_monitor(private).await.unwrap().into_inner();
    let err = w
        .tenant
        .create_monitor(monitor_req("10.1.2.3", &["eu"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("host"), "{}", err.message());
    let err = w
        .tenant
        .create_monitor(monitor_req("localhost", &["eu", "acme-dc"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "a public region among the regions is enough to refuse"
    );

    // The private region's agent only ever gets acme's monitors; a bravo monitor in
    // a public region never reaches it.
    bravo
        .create_monitor(monitor_req("db.example.org", &["eu"]))
        .await
        .unwrap();
    let agent = FakeAgent::connect(&w.coord, &private_token, "dc-1")
        .await
        .unwrap();
    assert!(agent.welcome.as_ref().unwrap().allow_private_targets);
    let got: Vec<&String> = agent.assigned.keys().collect();
    assert_eq!(got, vec![&pm.id]);
}

#[tokio::test]
async fn plans_gate_port_monitors_and_limits() {
    let mut w = world().await;
    let (_, free_token) = Setup::tenant(&mut w.op, "freeloader", v1::Plan::Free).await;
    let mut free = w.coord.admin(&free_token).await;
    let err = free
        .create_monitor(monitor_req("db.example.com", &["eu"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("free"), "{}", err.message());

    let (_, basic_token) = Setup::tenant(&mut w.op, "smallco", v1::Plan::Basic).await;
    let mut basic = w.coord.admin(&basic_token).await;
    basic
        .create_monitor(monitor_req("a.example.com", &["eu"]))
        .await
        .unwrap();
    basic
        .create_monitor(monitor_req("b.example.com", &["eu"]))
        .await
        .unwrap();
    let err = basic
        .create_monitor(monitor_req("c.example.com", &["eu"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "max_monitors = 2 for basic here"
    );
    assert!(err.message().contains("basic"), "{}", err.message());

    // Upgrading the plan lifts the gate.
    w.op.set_tenant_plan(v1::SetTenantPlanRequest {
        tenant_id: "freeloader".into(),
        plan: v1::Plan::Basic as i32,
    })
    .await
    .unwrap();
    free.create_monitor(monitor_req("db.example.com", &["eu"]))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_monitor_requests_name_the_field_and_change_nothing() {
    let mut w = world().await;
    let ok = monitor_req("db.example.com", &["eu"]);
    let cases: Vec<(v1::CreateMonitorRequest, &str)> = vec![
        (
            v1::CreateMonitorRequest {
                port: 0,
                ..ok.clone()
            },
            "port",
        ),
        (
            v1::CreateMonitorRequest {
                port: 65536,
                ..ok.clone()
            },
            "port",
        ),
        (
            v1::CreateMonitorRequest {
                host: String::new(),
                ..ok.clone()
            },
            "host",
        ),
        (
            v1::CreateMonitorRequest {
                host: "a".repeat(254),
                ..ok.clone()
            },
            "host",
        ),
        (
            v1::CreateMonitorRequest {
                host: "*.example.com".into(),
                ..ok.clone()
            },
            "host",
        ),
        (
            v1::CreateMonitorRequest {
                host: "db\n.example.com".into(),
                ..ok.clone()
            },
            "host",
        ),
        (
            v1::CreateMonitorRequest {
                host: "127.0.0.1".into(),
                ..ok.clone()
            },
            "host",
        ),
        (
            v1::CreateMonitorRequest {
                regions: vec![],
                ..ok.clone()
            },
            "regions",
        ),
        (
            v1::CreateMonitorRequest {
                regions: vec!["mars".into()],
                ..ok.clone()
            },
            "regions",
        ),
        (
            v1::CreateMonitorRequest {
                regions: vec!["eu".into(), "eu".into()],
                ..ok.clone()
            },
            "regions",
        ),
        (
            v1::CreateMonitorRequest {
                timeout_ms: 50,
                ..ok.clone()
            },
            "timeout_ms",
        ),
        (
            v1::CreateMonitorRequest {
                timeout_ms: 60_000,
                ..ok.clone()
            },
            "timeout_ms",
        ),
        (
            v1::CreateMonitorRequest {
                interval_ms: 1,
                ..ok.clone()
            },
            "interval_ms",
        ),
        (
            v1::CreateMonitorRequest {
                interval_ms: u64::MAX,
                ..ok.clone()
            },
            "interval_ms",
        ),
        (
            v1::CreateMonitorRequest {
                family: 9,
                ..ok.clone()
            },
            "family",
        ),
        (
            v1::CreateMonitorRequest {
                consensus: 9,
                ..ok.clone()
            },
            "consensus",
        ),
    ];
    for (req, field) in cases {
        let err = w.tenant.create_monitor(req.clone()).await.unwrap_err();
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::FailedPrecondition),
            "{field}: {:?} {}",
            err.code(),
            err.message()
        );
        assert!(
            err.message().starts_with(field),
            "expected the message to name {field}: {}",
            err.message()
        );
    }
    let list = w
        .tenant
        .list_monitors(v1::ListMonitorsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.monitors.is_empty(),
        "no rejected request created anything"
    );
    drop(w.op);
}

#[tokio::test]
async fn restart_after_kill_keeps_monitors_results_and_the_open_incident() {
    let mut w = world().await;
    let m = w
        .tenant
        .create_monitor(monitor_req("db.example.com", &["eu", "us", "ap"]))
        .await
        .unwrap()
        .into_inner();
    let mut ag = w.connect_agents().await;
    ag[0].report_acked(&m.id, v1::Outcome::Refused).await;
    ag[1].report_acked(&m.id, v1::Outcome::Refused).await;
    let last = ag[2].report_acked(&m.id, v1::Outcome::Ok).await;
    let open = incidents(&mut w.tenant, true).await;
    assert_eq!(open.len(), 1);

    drop(ag);
    w.coord.proc.kill9();
    w.coord.restart();
    let token = portwatch_e2e_token(&mut w).await;
    let mut tenant = w.coord.admin(&token).await;
    let got = tenant
        .get_monitor(v1::GetMonitorRequest {
            id: m.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.host, "db.example.com");
    assert_eq!(
        history(&mut tenant, &m.id).await.len(),
        3,
        "every acknowledged result survived kill -9"
    );
    let still_open = incidents(&mut tenant, true).await;
    assert_eq!(still_open.len(), 1);
    assert_eq!(still_open[0].id, open[0].id);

    // Agents reconnect and learn what is already durable; recovery closes the incident.
    let mut ag = w.connect_agents().await;
    assert_eq!(ag[2].welcome.as_ref().unwrap().acked_seq, last);
    assert!(ag[0].assigned.contains_key(&m.id), "snapshot after restart");
    for a in ag.iter_mut() {
        a.report_acked(&m.id, v1::Outcome::Ok).await;
    }
    eventually(
        "incident closed after restart",
        Duration::from_secs(5),
        || {
            let mut t = tenant.clone();
            async move { incidents(&mut t, true).await.is_empty().then_some(()) }
        },
    )
    .await;
}

/// A fresh tenant token for acme (the old client's channel died with the process).
async fn portwatch_e2e_token(w: &mut World) -> String {
    let mut op = w.coord.admin(OPERATOR_TOKEN).await;
    op.create_tenant_token(v1::CreateTenantTokenRequest {
        tenant_id: w.tenant_id.clone(),
        description: "after restart".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

#[tokio::test]
async fn health_and_reflection_answer_stock_clients() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let w = world().await;
    let channel = w.coord.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "portwatch.v1.AdminService", "portwatch.v1.AgentService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service}");
    }
    let mut refl = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("no list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "portwatch.v1.AdminService",
        "portwatch.v1.AgentService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}

#[test]
fn malformed_config_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_portwatch-coordinator");
    let cases = [
        ("listen = \"not an address\"\n", "config"),
        (
            "data_dir = \"/tmp/x\"\noperator_token = \"short\"\ninsecure_plaintext = true\n",
            "operator_token",
        ),
        (
            "data_dir = \"/tmp/x\"\noperator_token = \"0123456789abcdefg\"\n",
            "tls_cert",
        ),
        (
            "data_dir = \"/tmp/x\"\noperator_token = \"0123456789abcdefg\"\ninsecure_plaintext = true\nretention = \"forever\"\n",
            "retention",
        ),
        ("surprise = 1\n", "config"),
        // The file's parse error names the file, and its excerpt the key.
        ("fast_confirmation = \"off\"\n", "config"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(bin)
            .arg("--config")
            .arg(&path)
            .env_remove("PORTWATCH_OPERATOR_TOKEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The file itself: "config file PATH: …", never "config: config: …".
        let needle = if key == "config" {
            "config file ".to_string()
        } else {
            format!("config: {key}")
        };
        assert!(stderr.contains(&needle), "{key}: {stderr}");
        assert!(!stderr.contains("config: config:"), "{stderr}");
        if text.starts_with("fast_confirmation") {
            assert!(stderr.contains("fast_confirmation"), "{stderr}");
        }
    }
}

#[tokio::test]
async fn sigterm_drains_agents_and_exits_cleanly_with_state_flushed() {
    let mut w = world().await;
    let m = w
        .tenant
        .create_monitor(monitor_req("db.example.com", &["eu"]))
        .await
        .unwrap()
        .into_inner();
    let mut agent = FakeAgent::connect(&w.coord, &w.regions[0].token, "eu-1")
        .await
        .unwrap();
    agent.keepalive();
    let seq = agent.report_acked(&m.id, v1::Outcome::Ok).await;
    let status = w
        .coord
        .proc
        .terminate(Duration::from_secs(15))
        .expect("coordinator exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    // The agent was asked to drain before the coordinator went away.
    let _ = agent
        .pump_until(Duration::from_secs(2), |a| a.drained)
        .await;
    assert!(agent.drained, "agents get a Drain on shutdown");
    w.coord.restart();
    let again = FakeAgent::connect(&w.coord, &w.regions[0].token, "eu-1")
        .await
        .unwrap();
    assert_eq!(
        again.welcome.as_ref().unwrap().acked_seq,
        seq,
        "acknowledged state survived the restart"
    );
}

#[tokio::test]
async fn deleting_a_monitor_closes_its_open_incident() {
    let mut w = world().await;
    let m = w
        .tenant
        .create_monitor(monitor_req("db.example.com", &["eu"]))
        .await
        .unwrap()
        .into_inner();
    let mut ag = w.connect_agents().await;
    ag[0].report_acked(&m.id, v1::Outcome::Refused).await;
    assert_eq!(incidents(&mut w.tenant, true).await.len(), 1);
    w.tenant
        .delete_monitor(v1::DeleteMonitorRequest {
            id: m.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        incidents(&mut w.tenant, true).await.is_empty(),
        "no incident stays open for a deleted monitor"
    );
    let all = incidents(&mut w.tenant, false).await;
    assert_eq!(all.len(), 1);
    assert!(all[0].closed_at.is_some());
}
