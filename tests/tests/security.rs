//! Security boundaries, with the real binaries as separate processes: tenants,
//! agent tokens, private regions and the non-public address guard.
//!
//! What it proves (scenario 12):
//! - a tenant token cannot read, change, watch or be notified about another
//!   tenant's monitors, incidents or channels, nor route its own monitor into
//!   another tenant's channel;
//! - an agent token for one region cannot deliver results as another region:
//!   the region comes from the token, and results for monitors not checked from
//!   the token's region are refused and never stored;
//! - a private region's agent is never assigned (never even resolves) another
//!   tenant's monitors, and other tenants cannot name the region;
//! - a monitor on a public region to a non-public address is refused at
//!   creation, and a name that resolves to 127.0.0.1 at a public region's agent
//!   yields `blocked` and never a connection.

mod support;

use std::time::Duration;

use portwatch_e2e::{FakeAgent, OPERATOR_TOKEN, Setup, eventually, result};
use portwatch_proto::v1;
use support::*;
use tonic::Code;

const HOST: &str = "db.acme.test";

fn code_and_message<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> (Code, String) {
    match r {
        Ok(ok) => panic!("expected a refusal, got {ok:?}"),
        Err(e) => (e.code(), e.message().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_read_change_watch_or_be_notified_about_another_tenants_monitors() {
    let mut w = World::start(1, NOTIFY).await;
    w.add_region("pub1", "").await;
    let (_, bravo_token) = Setup::tenant(&mut w.op, "bravo", v1::Plan::Enterprise).await;
    let mut bravo = w.coord.admin(&bravo_token).await;
    let mut door = doors(&["127.0.0.1"]).remove(0);
    door.open().await;
    let probe = w.probe(0, "r0").await;
    probe.answer(HOST, door.ip());
    let acme_inbox = Inbox::create(&mut w.tenant, "acme").await;
    let bravo_inbox = Inbox::create(&mut bravo, "bravo").await;
    let req = monitor("orders db", HOST, door.port(), &w.names(1), 1000);
    let m = create_monitor(&mut w.tenant, req).await;
    let id = m.id.clone();

    let checks: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "GetMonitor",
            bravo
                .get_monitor(v1::GetMonitorRequest {
                    id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "UpdateMonitor",
            bravo
                .update_monitor(v1::UpdateMonitorRequest {
                    id: id.clone(),
                    port: Some(22),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "PauseMonitor",
            bravo
                .pause_monitor(v1::PauseMonitorRequest {
                    id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "ResumeMonitor",
            bravo
                .resume_monitor(v1::ResumeMonitorRequest {
                    id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "GetMonitorStatus",
            bravo
                .get_monitor_status(v1::GetMonitorStatusRequest {
                    id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "ListResults",
            bravo
                .list_results(v1::ListResultsRequest {
                    monitor_id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "WatchEvents",
            bravo
                .watch_events(v1::WatchEventsRequest {
                    monitor_id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "ListMonitors of acme",
            bravo
                .list_monitors(v1::ListMonitorsRequest {
                    tenant_id: "acme".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "DeleteChannel of acme",
            bravo
                .delete_channel(v1::DeleteChannelRequest {
                    id: acme_inbox.hook_channel.id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "TestChannel of acme",
            bravo
                .test_channel(v1::TestChannelRequest {
                    id: acme_inbox.mail_channel.id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "DeleteMonitor",
            bravo
                .delete_monitor(v1::DeleteMonitorRequest {
                    id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
    ];
    for (what, r) in checks {
        let e = r
            .err()
            .unwrap_or_else(|| panic!("bravo's {what} on acme's objects succeeded"));
        assert_eq!(e.code(), Code::NotFound, "{what}: {}", e.message());
        assert!(
            !e.message().contains("acme") && !e.message().contains(HOST),
            "{what} reveals nothing: {}",
            e.message()
        );
    }
    // Its own monitor cannot notify acme's channel.
    let mut req = monitor("sneaky", "db.example.com", 5432, &["pub1".into()], 60_000);
    req.channel_ids = vec![acme_inbox.hook_channel.id.clone()];
    let (c, msg) = code_and_message(bravo.create_monitor(req).await);
    assert_eq!(c, Code::InvalidArgument, "{msg}");
    assert!(msg.starts_with("channel_ids: unknown channel"), "{msg}");
    let listed = bravo
        .list_monitors(v1::ListMonitorsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.monitors.is_empty(), "{:?}", listed.monitors);
    let channels = bravo
        .list_channels(v1::ListChannelsRequest::default())
        .await
        .expect("list channels")
        .into_inner()
        .channels;
    assert_eq!(channels.len(), 2, "only bravo's own: {channels:?}");
    assert!(channels.iter().all(|c| c.tenant_id == "bravo"));

    // acme's port fails: acme is paged, bravo hears nothing, sees nothing.
    let mut bravo_events = bravo
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .expect("bravo watches its events")
        .into_inner();
    door.refuse().await;
    let inc = eventually("acme's incident opens", WAIT, || async {
        incidents(&w.tenant, true).await.into_iter().next()
    })
    .await;
    acme_inbox.wait(2, WAIT).await;
    assert_eq!(acme_inbox.count(&inc.id, "opened"), (1, 1));
    let (c, _) = code_and_message(
        bravo
            .get_incident(v1::GetIncidentRequest {
                id: inc.id.clone(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let theirs = bravo
        .list_incidents(v1::ListIncidentsRequest {
            monitor_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("list incidents")
        .into_inner()
        .incidents;
    assert!(theirs.is_empty(), "{theirs:?}");
    let deliveries = bravo
        .list_deliveries(v1::ListDeliveriesRequest {
            incident_id: inc.id.clone(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().deliveries)
        .unwrap_or_default();
    assert!(deliveries.is_empty(), "{deliveries:?}");
    door.open().await;
    eventually("acme's incident closes", WAIT, || async {
        incidents(&w.tenant, true).await.is_empty().then_some(())
    })
    .await;
    acme_inbox.wait(4, WAIT).await;
    more_results(&w.tenant, &id, &w.names(1), 2).await;
    assert!(
        bravo_inbox.notices().is_empty(),
        "bravo was notified about acme's monitor: {:?}",
        bravo_inbox.notices()
    );
    let leaked = tokio::time::timeout(Duration::from_millis(300), bravo_events.message()).await;
    assert!(
        !matches!(leaked, Ok(Ok(Some(_)))),
        "bravo's event stream carried acme's events: {leaked:?}"
    );

    // acme's monitor is as acme left it.
    let after = w
        .tenant
        .get_monitor(v1::GetMonitorRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("acme still has its monitor")
        .into_inner();
    assert_eq!(
        (after.port, after.paused, after.generation),
        (m.port, false, m.generation)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_token_delivers_results_only_as_its_own_region() {
    let mut w = World::start(0, "").await;
    let pub1 = w.add_region("pub1", "").await;
    let pub2 = w.add_region("pub2", "").await;
    let only1 = create_monitor(
        &mut w.tenant,
        monitor(
            "only pub1",
            "db.example.com",
            5432,
            &["pub1".into()],
            60_000,
        ),
    )
    .await;
    let both = create_monitor(
        &mut w.tenant,
        monitor(
            "both",
            "db.example.com",
            5433,
            &["pub1".into(), "pub2".into()],
            60_000,
        ),
    )
    .await;

    // An agent holding pub2's token claims to be pub1 in every result.
    let mut agent = FakeAgent::connect(&w.coord, &w.regions[pub2].token, "impostor")
        .await
        .expect("pub2's agent connects");
    agent.keepalive();
    assert_eq!(
        agent.welcome.as_ref().map(|w| w.region.as_str()),
        Some("pub2"),
        "the coordinator says which region the token is for"
    );
    assert!(
        !agent.assigned.contains_key(&only1.id),
        "pub2 is not assigned a pub1-only monitor"
    );
    let now = std::time::SystemTime::now();
    let mut forged = result(&only1.id, v1::Outcome::Refused, now);
    forged.region = "pub1".into();
    let mut claimed = result(&both.id, v1::Outcome::Refused, now);
    claimed.region = "pub1".into();
    let seq = agent.next_seq;
    agent.next_seq += 2;
    agent
        .send_batch(vec![(seq, forged), (seq + 1, claimed)])
        .await;
    agent
        .pump_until(Duration::from_secs(5), |a| a.acked > seq)
        .await
        .expect("the batch is acknowledged");

    let stored_only1 = results(&w.tenant, &only1.id).await;
    assert!(
        stored_only1.is_empty(),
        "a result for a monitor not checked from pub2 was stored: {stored_only1:?}"
    );
    let stored_both = results(&w.tenant, &both.id).await;
    assert_eq!(stored_both.len(), 1, "{stored_both:?}");
    assert_eq!(
        stored_both[0].region, "pub2",
        "the region comes from the token, not from the result"
    );
    let s = status(&w.tenant, &both.id).await;
    assert_eq!(
        states(&s).get("pub1"),
        Some(&v1::RegionState::Unknown),
        "nothing counted for pub1"
    );
    let metrics = w.coord.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portwatch_results_refused_total") && !l.ends_with(" 0")),
        "the refusal is counted:\n{metrics}"
    );

    // Tokens are not interchangeable.
    let err = FakeAgent::connect(&w.coord, &w.tenant_token, "tenant-as-agent")
        .await
        .err()
        .expect("a tenant token is not an agent token");
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );
    let mut as_admin = w.coord.admin(&w.regions[pub1].token).await;
    let (c, msg) = code_and_message(
        as_admin
            .list_monitors(v1::ListMonitorsRequest {
                tenant_id: "acme".into(),
                ..Default::default()
            })
            .await,
    );
    assert!(
        matches!(c, Code::Unauthenticated | Code::PermissionDenied),
        "an agent token on the admin API: {c:?} {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_region_never_receives_another_tenants_monitors() {
    // A public name (a monitor that also uses a public region must have one).
    const ACME_PUBLIC: &str = "db.acme.example.com";
    let mut w = World::start(1, "").await;
    w.add_region("pub1", "").await;
    let (_, bravo_token) = Setup::tenant(&mut w.op, "bravo", v1::Plan::Enterprise).await;
    let mut bravo = w.coord.admin(&bravo_token).await;
    let mut door = doors(&["127.0.0.1"]).remove(0);
    door.open().await;
    let probe = w.probe(0, "r0").await;
    probe.answer(ACME_PUBLIC, door.ip());

    let mut bravo_hosts = Vec::new();
    for i in 0..5 {
        let host = format!("svc{i}.bravo.example.com");
        probe.answer(&host, door.ip());
        create_monitor(
            &mut bravo,
            monitor(&host, &host, door.port(), &["pub1".into()], 1000),
        )
        .await;
        bravo_hosts.push(host);
    }
    let mut mine = Vec::new();
    for (name, regions) in [
        ("a", vec!["r0".to_string()]),
        ("b", vec!["r0".into()]),
        ("c", vec!["r0".into(), "pub1".into()]),
    ] {
        mine.push(
            create_monitor(
                &mut w.tenant,
                monitor(name, ACME_PUBLIC, door.port(), &regions, 1000),
            )
            .await,
        );
    }
    // bravo cannot put a monitor there, nor even see the region.
    let (c, msg) = code_and_message(
        bravo
            .create_monitor(monitor("x", "db.example.com", 5432, &["r0".into()], 60_000))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert_eq!(msg, "regions: unknown region \"r0\"");
    let some = bravo
        .list_monitors(v1::ListMonitorsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .monitors
        .remove(0);
    let (c, msg) = code_and_message(
        bravo
            .update_monitor(v1::UpdateMonitorRequest {
                id: some.id.clone(),
                regions: vec!["pub1".into(), "r0".into()],
                set_regions: true,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(msg.starts_with("regions: unknown region"), "{msg}");
    let visible: Vec<String> = bravo
        .list_regions(v1::ListRegionsRequest {})
        .await
        .expect("list regions")
        .into_inner()
        .regions
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(visible, vec!["pub1".to_string()]);

    // The private agent checks acme's three monitors, and only those.
    for m in &mine {
        more_results(&w.tenant, &m.id, &["r0".to_string()], 3).await;
    }
    let agents =
        w.op.list_agents(v1::ListAgentsRequest {
            region: "r0".into(),
        })
        .await
        .expect("list agents")
        .into_inner()
        .agents;
    let online: Vec<&v1::Agent> = agents.iter().filter(|a| a.online).collect();
    assert_eq!(online.len(), 1, "{agents:?}");
    assert_eq!(online[0].assignments, 3, "{:?}", online[0]);
    for host in &bravo_hosts {
        assert_eq!(
            probe.dns.queries(host),
            0,
            "the private region's agent resolved bravo's {host}"
        );
    }
    let stored: usize = {
        let mut n = 0;
        for m in &mine {
            n += results(&w.tenant, &m.id)
                .await
                .iter()
                .filter(|r| r.region == "r0")
                .count();
        }
        n
    };
    assert!(
        door.accepted() >= stored as u64,
        "every handshake is one of acme's checks"
    );
    let mut op = w.coord.admin(OPERATOR_TOKEN).await;
    let bravo_monitors = op
        .list_monitors(v1::ListMonitorsRequest {
            tenant_id: "bravo".into(),
            ..Default::default()
        })
        .await
        .expect("operator lists bravo's monitors")
        .into_inner()
        .monitors;
    for m in &bravo_monitors {
        let rs = op
            .list_results(v1::ListResultsRequest {
                tenant_id: "bravo".into(),
                monitor_id: m.id.clone(),
                ..Default::default()
            })
            .await
            .expect("bravo's results")
            .into_inner()
            .results;
        assert!(
            rs.iter().all(|r| r.region != "r0"),
            "{} has results from acme's private region",
            m.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_regions_refuse_private_targets_and_block_a_name_resolving_to_loopback() {
    let mut w = World::start(1, "").await;
    let pub1 = w.add_region("pub1", "").await;
    let mut door = doors(&["127.0.0.1"]).remove(0);
    door.open().await;
    let public_probe = w.probe(pub1, "pub1").await;
    let private_probe = w.probe(0, "r0").await;
    const REBIND: &str = "rebind.example.com";
    public_probe.answer(REBIND, door.ip());
    private_probe.answer(REBIND, door.ip());

    for host in [
        "127.0.0.1",
        "10.0.0.5",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "[::1]",
        "fe80::1",
        "::ffff:127.0.0.1",
        "localhost",
        "db.localhost",
        "nas.home.arpa",
        "db.internal",
        "db.acme.test",
    ] {
        for regions in [vec!["pub1".to_string()], vec!["r0".into(), "pub1".into()]] {
            let (c, msg) = code_and_message(
                w.tenant
                    .create_monitor(monitor("private", host, 5432, &regions, 60_000))
                    .await,
            );
            assert_eq!(c, Code::InvalidArgument, "{host} on {regions:?}: {msg}");
            assert!(msg.starts_with("host: "), "{host}: {msg}");
            assert!(msg.contains("non-public"), "{host}: {msg}");
        }
    }

    // A name is allowed at creation; what it resolves to is checked at connect time.
    let m = create_monitor(
        &mut w.tenant,
        monitor("rebinding", REBIND, door.port(), &["pub1".into()], 1000),
    )
    .await;
    more_results(&w.tenant, &m.id, &["pub1".to_string()], 3).await;
    let rs = results(&w.tenant, &m.id).await;
    assert!(
        rs.iter().all(|r| r.outcome == v1::Outcome::Blocked as i32),
        "{rs:?}"
    );
    assert!(rs[0].detail.contains("127.0.0.1"), "{}", rs[0].detail);
    assert_eq!(
        door.accepted(),
        0,
        "a public region's agent connected to loopback"
    );
    let s = status(&w.tenant, &m.id).await;
    let pub1_status = &s.regions[0];
    assert_eq!(pub1_status.state, v1::RegionState::Unknown as i32);
    assert_eq!(pub1_status.unknown_reason, "blocked");
    assert!(incidents(&w.tenant, false).await.is_empty());

    // The same target is reachable from the tenant's own private region.
    let control = create_monitor(
        &mut w.tenant,
        monitor("control", REBIND, door.port(), &["r0".into()], 1000),
    )
    .await;
    more_results(&w.tenant, &control.id, &["r0".to_string()], 1).await;
    assert!(
        results(&w.tenant, &control.id)
            .await
            .iter()
            .all(|r| r.outcome == v1::Outcome::Ok as i32)
    );
    assert!(door.accepted() > 0);
    assert!(
        results(&w.tenant, &m.id)
            .await
            .iter()
            .all(|r| r.outcome == v1::Outcome::Blocked as i32)
    );
}
