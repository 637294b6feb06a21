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
//!   yields `blocked` and never a connection;
//! - every RPC of `AdminService` answers the owning tenant, another tenant, an
//!   agent token, the operator and an unknown token as one row of `rpc_table`
//!   says (another tenant's objects do not exist for it; operator-only calls are
//!   refused to everyone else; a refusal changes nothing and names nothing of
//!   the owner). The table is checked against the service's descriptor, so a new
//!   RPC without a row fails the suite.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portwatch_e2e::{Admin, FakeAgent, HttpReceiver, OPERATOR_TOKEN, Setup, eventually, result};
use portwatch_proto::v1;
use prost::Message;
use support::*;
use tonic::{Code, Status};

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

    // Every RPC as another tenant (NOT_FOUND, revealing nothing) is a row of
    // `rpc_table`, tried by `every_admin_rpc_answers_each_kind_of_token_as_the_table_says`.
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
    w.add_region("pub1", "").await;
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
    // An agent token on the admin API: the "agent token" column of `rpc_table`.
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

// ---------------------------------------------------------------- every RPC, every caller

/// The callers every row of [`rpc_table`] is tried with, in the order of
/// [`Row::expect`]: the tenant that owns the objects, another tenant, an agent
/// token, the operator.
const CALLERS: [&str; 4] = ["tenant", "other tenant", "agent token", "operator"];

/// What a tenant may do with its own objects (another tenant finds none of them).
const TENANT_OWN: [Code; 4] = [Code::Ok, Code::NotFound, Code::PermissionDenied, Code::Ok];
/// Calls only the operator may make.
const OPERATOR_ONLY: [Code; 4] = [
    Code::PermissionDenied,
    Code::PermissionDenied,
    Code::PermissionDenied,
    Code::Ok,
];
/// Calls every admin token may make, each about itself.
const ANY_ADMIN: [Code; 4] = [Code::Ok, Code::Ok, Code::PermissionDenied, Code::Ok];

/// One call of a row, as one caller.
#[derive(Clone)]
struct Caller {
    admin: Admin,
    /// The `tenant_id` a call about one object names: empty for a tenant token
    /// (its own tenant), the owner for the operator. Calls about a tenant as a
    /// whole name the owner (`TENANT`) whoever calls.
    scope: String,
    fx: Arc<Fixture>,
}

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// One RPC of `AdminService`: its name as the proto spells it, the call, and
/// the code each of [`CALLERS`] must get (`Code::Ok` for success).
struct Row {
    rpc: &'static str,
    expect: [Code; 4],
    call: Box<dyn Fn(Caller) -> Call + Send + Sync>,
}

fn row<F, Fut>(rpc: &'static str, expect: [Code; 4], f: F) -> Row
where
    F: Fn(Caller) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    Row {
        rpc,
        expect,
        call: Box::new(move |c| Box::pin(f(c))),
    }
}

/// The owner's objects the rows act on, and fresh ones for the calls that
/// delete or revoke (each caller gets its own, so one success cannot turn the
/// next caller's answer into NOT_FOUND).
struct Fixture {
    op: Admin,
    owner: Admin,
    region: String,
    monitor: String,
    incident: String,
    channel: String,
    hook_url: String,
    next: AtomicU64,
}

impl Fixture {
    fn fresh_name(&self, what: &str) -> String {
        format!("tbl-{what}-{}", self.next.fetch_add(1, Ordering::SeqCst))
    }

    fn monitor_request(&self, name: String) -> v1::CreateMonitorRequest {
        monitor(
            &name,
            HOST,
            5432,
            std::slice::from_ref(&self.region),
            60_000,
        )
    }

    async fn fresh_monitor(&self) -> String {
        let req = self.monitor_request(self.fresh_name("monitor"));
        create_monitor(&mut self.owner.clone(), req).await.id
    }

    async fn fresh_channel(&self) -> String {
        let c = webhook_channel(&self.fresh_name("channel"), self.hook_url.clone(), false);
        create_channel(&mut self.owner.clone(), c).await.id
    }

    /// A weekly maintenance window over the row's monitor, to delete.
    async fn fresh_window(&self) -> String {
        self.owner
            .clone()
            .create_maintenance_window(v1::CreateMaintenanceWindowRequest {
                tenant_id: String::new(),
                window: Some(self.window()),
            })
            .await
            .expect("a maintenance window to delete")
            .into_inner()
            .id
    }

    fn window(&self) -> v1::MaintenanceWindow {
        v1::MaintenanceWindow {
            name: self.fresh_name("window"),
            monitor_ids: vec![self.monitor.clone()],
            weekly: Some(v1::WeeklyRecurrence {
                days: vec!["sun".into()],
                start: "03:00".into(),
                duration_ms: 3_600_000,
                time_zone: "UTC".into(),
            }),
            ..Default::default()
        }
    }

    async fn fresh_tenant_token(&self) -> String {
        self.op
            .clone()
            .create_tenant_token(v1::CreateTenantTokenRequest {
                tenant_id: TENANT.into(),
                description: "table".into(),
            })
            .await
            .expect("a tenant token to revoke")
            .into_inner()
            .token_id
    }

    async fn fresh_region(&self) -> String {
        let name = self.fresh_name("region");
        Setup::region(&mut self.op.clone(), &name, "").await;
        name
    }

    async fn fresh_agent_token(&self) -> String {
        self.op
            .clone()
            .create_agent_token(v1::CreateAgentTokenRequest {
                region: self.region.clone(),
                description: "table".into(),
            })
            .await
            .expect("an agent token to revoke")
            .into_inner()
            .token_id
    }

    /// What a refused call must not change about the owner's monitor.
    async fn monitor_state(&self) -> (u32, bool, u64) {
        let m = self
            .owner
            .clone()
            .get_monitor(v1::GetMonitorRequest {
                id: self.monitor.clone(),
                ..Default::default()
            })
            .await
            .expect("the owner reads its monitor")
            .into_inner();
        (m.port, m.paused, m.generation)
    }
}

/// One row per RPC of `AdminService`, in the proto's order.
fn rpc_table() -> Vec<Row> {
    vec![
        row("WhoAmI", ANY_ADMIN, |mut c| async move {
            c.admin.who_am_i(v1::WhoAmIRequest {}).await.map(drop)
        }),
        row("CreateTenant", OPERATOR_ONLY, |mut c| async move {
            let id = c.fx.fresh_name("tenant");
            c.admin
                .create_tenant(v1::CreateTenantRequest {
                    id,
                    name: "table".into(),
                    plan: v1::Plan::Basic as i32,
                })
                .await
                .map(drop)
        }),
        row("ListTenants", OPERATOR_ONLY, |mut c| async move {
            c.admin
                .list_tenants(v1::ListTenantsRequest {})
                .await
                .map(drop)
        }),
        row("GetTenant", TENANT_OWN, |mut c| async move {
            c.admin
                .get_tenant(v1::GetTenantRequest {
                    tenant_id: TENANT.into(),
                })
                .await
                .map(drop)
        }),
        row("SetTenantPlan", OPERATOR_ONLY, |mut c| async move {
            c.admin
                .set_tenant_plan(v1::SetTenantPlanRequest {
                    tenant_id: TENANT.into(),
                    plan: v1::Plan::Enterprise as i32,
                })
                .await
                .map(drop)
        }),
        row("CreateTenantToken", TENANT_OWN, |mut c| async move {
            c.admin
                .create_tenant_token(v1::CreateTenantTokenRequest {
                    tenant_id: TENANT.into(),
                    description: "table".into(),
                })
                .await
                .map(drop)
        }),
        row("RevokeTenantToken", TENANT_OWN, |mut c| async move {
            let token_id = c.fx.fresh_tenant_token().await;
            c.admin
                .revoke_tenant_token(v1::RevokeTokenRequest { token_id })
                .await
                .map(drop)
        }),
        row("CreateRegion", OPERATOR_ONLY, |mut c| async move {
            c.admin
                .create_region(v1::CreateRegionRequest {
                    name: c.fx.fresh_name("region"),
                    ..Default::default()
                })
                .await
                .map(drop)
        }),
        row("ListRegions", ANY_ADMIN, |mut c| async move {
            c.admin
                .list_regions(v1::ListRegionsRequest {})
                .await
                .map(drop)
        }),
        row("DeleteRegion", OPERATOR_ONLY, |mut c| async move {
            let name = c.fx.fresh_region().await;
            c.admin
                .delete_region(v1::DeleteRegionRequest { name })
                .await
                .map(drop)
        }),
        row("CreateAgentToken", OPERATOR_ONLY, |mut c| async move {
            c.admin
                .create_agent_token(v1::CreateAgentTokenRequest {
                    region: c.fx.region.clone(),
                    description: "table".into(),
                })
                .await
                .map(drop)
        }),
        row("ListAgentTokens", OPERATOR_ONLY, |mut c| async move {
            c.admin
                .list_agent_tokens(v1::ListAgentTokensRequest::default())
                .await
                .map(drop)
        }),
        row("RevokeAgentToken", OPERATOR_ONLY, |mut c| async move {
            let token_id = c.fx.fresh_agent_token().await;
            c.admin
                .revoke_agent_token(v1::RevokeTokenRequest { token_id })
                .await
                .map(drop)
        }),
        row("ListAgents", OPERATOR_ONLY, |mut c| async move {
            c.admin
                .list_agents(v1::ListAgentsRequest::default())
                .await
                .map(drop)
        }),
        row("CreateMonitor", TENANT_OWN, |mut c| async move {
            let mut req = c.fx.monitor_request(c.fx.fresh_name("monitor"));
            req.tenant_id = TENANT.into();
            c.admin.create_monitor(req).await.map(drop)
        }),
        row("GetMonitor", TENANT_OWN, |mut c| async move {
            c.admin
                .get_monitor(v1::GetMonitorRequest {
                    tenant_id: c.scope,
                    id: c.fx.monitor.clone(),
                })
                .await
                .map(drop)
        }),
        row("ListMonitors", TENANT_OWN, |mut c| async move {
            c.admin
                .list_monitors(v1::ListMonitorsRequest {
                    tenant_id: TENANT.into(),
                    ..Default::default()
                })
                .await
                .map(drop)
        }),
        row("UpdateMonitor", TENANT_OWN, |mut c| async move {
            c.admin
                .update_monitor(v1::UpdateMonitorRequest {
                    tenant_id: c.scope,
                    id: c.fx.monitor.clone(),
                    port: Some(22),
                    ..Default::default()
                })
                .await
                .map(drop)
        }),
        row("DeleteMonitor", TENANT_OWN, |mut c| async move {
            let id = c.fx.fresh_monitor().await;
            c.admin
                .delete_monitor(v1::DeleteMonitorRequest {
                    tenant_id: c.scope,
                    id,
                })
                .await
                .map(drop)
        }),
        row("PauseMonitor", TENANT_OWN, |mut c| async move {
            c.admin
                .pause_monitor(v1::PauseMonitorRequest {
                    tenant_id: c.scope,
                    id: c.fx.monitor.clone(),
                })
                .await
                .map(drop)
        }),
        row("ResumeMonitor", TENANT_OWN, |mut c| async move {
            c.admin
                .resume_monitor(v1::ResumeMonitorRequest {
                    tenant_id: c.scope,
                    id: c.fx.monitor.clone(),
                })
                .await
                .map(drop)
        }),
        row("GetMonitorStatus", TENANT_OWN, |mut c| async move {
            c.admin
                .get_monitor_status(v1::GetMonitorStatusRequest {
                    tenant_id: c.scope,
                    id: c.fx.monitor.clone(),
                })
                .await
                .map(drop)
        }),
        row("ListResults", TENANT_OWN, |mut c| async move {
            c.admin
                .list_results(v1::ListResultsRequest {
                    tenant_id: c.scope,
                    monitor_id: c.fx.monitor.clone(),
                    ..Default::default()
                })
                .await
                .map(drop)
        }),
        row("ListIncidents", TENANT_OWN, |mut c| async move {
            c.admin
                .list_incidents(v1::ListIncidentsRequest {
                    tenant_id: TENANT.into(),
                    monitor_id: c.fx.monitor.clone(),
                    ..Default::default()
                })
                .await
                .map(drop)
        }),
        row("GetIncident", TENANT_OWN, |mut c| async move {
            c.admin
                .get_incident(v1::GetIncidentRequest {
                    tenant_id: c.scope,
                    id: c.fx.incident.clone(),
                })
                .await
                .map(drop)
        }),
        row("AcknowledgeIncident", TENANT_OWN, |mut c| async move {
            c.admin
                .acknowledge_incident(v1::AcknowledgeIncidentRequest {
                    tenant_id: c.scope,
                    id: c.fx.incident.clone(),
                    note: "table".into(),
                })
                .await
                .map(drop)
        }),
        row("CreateMaintenanceWindow", TENANT_OWN, |mut c| async move {
            c.admin
                .create_maintenance_window(v1::CreateMaintenanceWindowRequest {
                    tenant_id: c.scope.clone(),
                    window: Some(c.fx.window()),
                })
                .await
                .map(drop)
        }),
        row("ListMaintenanceWindows", TENANT_OWN, |mut c| async move {
            c.admin
                .list_maintenance_windows(v1::ListMaintenanceWindowsRequest {
                    tenant_id: TENANT.into(),
                })
                .await
                .map(drop)
        }),
        row("DeleteMaintenanceWindow", TENANT_OWN, |mut c| async move {
            let id = c.fx.fresh_window().await;
            c.admin
                .delete_maintenance_window(v1::DeleteMaintenanceWindowRequest {
                    tenant_id: c.scope,
                    id,
                })
                .await
                .map(drop)
        }),
        row("MuteMonitor", TENANT_OWN, |mut c| async move {
            c.admin
                .mute_monitor(v1::MuteMonitorRequest {
                    tenant_id: c.scope,
                    monitor_id: c.fx.monitor.clone(),
                    duration_ms: 60_000,
                })
                .await
                .map(drop)
        }),
        row("CreateChannel", TENANT_OWN, |mut c| async move {
            let channel =
                webhook_channel(&c.fx.fresh_name("channel"), c.fx.hook_url.clone(), false);
            c.admin
                .create_channel(v1::CreateChannelRequest {
                    tenant_id: TENANT.into(),
                    channel: Some(channel),
                })
                .await
                .map(drop)
        }),
        row("ListChannels", TENANT_OWN, |mut c| async move {
            c.admin
                .list_channels(v1::ListChannelsRequest {
                    tenant_id: TENANT.into(),
                })
                .await
                .map(drop)
        }),
        row("DeleteChannel", TENANT_OWN, |mut c| async move {
            let id = c.fx.fresh_channel().await;
            c.admin
                .delete_channel(v1::DeleteChannelRequest {
                    tenant_id: c.scope,
                    id,
                })
                .await
                .map(drop)
        }),
        row("GetRoutingRules", TENANT_OWN, |mut c| async move {
            c.admin
                .get_routing_rules(v1::GetRoutingRulesRequest {
                    tenant_id: TENANT.into(),
                })
                .await
                .map(drop)
        }),
        row("SetRoutingRules", TENANT_OWN, |mut c| async move {
            c.admin
                .set_routing_rules(v1::SetRoutingRulesRequest {
                    tenant_id: TENANT.into(),
                    rules: vec![v1::RoutingRule {
                        tags: vec!["table".into()],
                        severity: "critical".into(),
                        channel_ids: vec![c.fx.channel.clone()],
                    }],
                })
                .await
                .map(drop)
        }),
        row("TestChannel", TENANT_OWN, |mut c| async move {
            c.admin
                .test_channel(v1::TestChannelRequest {
                    tenant_id: c.scope,
                    id: c.fx.channel.clone(),
                })
                .await
                .map(drop)
        }),
        row("ListDeliveries", TENANT_OWN, |mut c| async move {
            c.admin
                .list_deliveries(v1::ListDeliveriesRequest {
                    tenant_id: TENANT.into(),
                    incident_id: c.fx.incident.clone(),
                    ..Default::default()
                })
                .await
                .map(drop)
        }),
        row("WatchEvents", TENANT_OWN, |mut c| async move {
            c.admin
                .watch_events(v1::WatchEventsRequest {
                    tenant_id: c.scope,
                    monitor_id: c.fx.monitor.clone(),
                })
                .await
                .map(drop)
        }),
    ]
}

/// Runs every row as every caller, and as a token nobody issued (always
/// UNAUTHENTICATED); returns one line per answer that differs from the table.
/// A refusal must not change the owner's monitor, and another tenant's refusal
/// must not name the owner or its host.
async fn run_table(rows: &[Row], callers: [Caller; 4], stranger: Caller) -> Vec<String> {
    let mut failures = Vec::new();
    for row in rows {
        let mut answers = Vec::new();
        let before = stranger.fx.monitor_state().await;
        let got = (row.call)(stranger.clone()).await;
        answers.push(("unknown token", Code::Unauthenticated, got));
        // The callers expected to be refused go first, so the check that they
        // changed nothing is not confused by a permitted change.
        let mut order: Vec<usize> = (0..CALLERS.len()).collect();
        order.sort_by_key(|&i| row.expect[i] == Code::Ok);
        let mut checked = false;
        for i in order {
            if row.expect[i] == Code::Ok && !checked {
                checked = true;
                let after = stranger.fx.monitor_state().await;
                if after != before {
                    failures.push(format!(
                        "{}: the refused calls changed the monitor: {before:?} → {after:?}",
                        row.rpc
                    ));
                }
            }
            let got = (row.call)(callers[i].clone()).await;
            answers.push((CALLERS[i], row.expect[i], got));
        }
        for (who, expected, got) in answers {
            let (code, message) = match got {
                Ok(()) => (Code::Ok, String::new()),
                Err(e) => (e.code(), e.message().to_string()),
            };
            if code != expected {
                failures.push(format!(
                    "{} as {who}: expected {expected:?}, got {code:?} {message:?}",
                    row.rpc
                ));
            } else if who == "other tenant" && (message.contains(TENANT) || message.contains(HOST))
            {
                failures.push(format!(
                    "{} as {who}: the refusal reveals the owner: {message:?}",
                    row.rpc
                ));
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_rpc_answers_each_kind_of_token_as_the_table_says() {
    let mut w = World::start(1, NOTIFY).await;
    let (_, bravo_token) = Setup::tenant(&mut w.op, "bravo", v1::Plan::Enterprise).await;
    let hook = HttpReceiver::ok().await;
    let region = w.regions[0].name.clone();
    let m = create_monitor(
        &mut w.tenant,
        monitor(
            "orders db",
            HOST,
            5432,
            std::slice::from_ref(&region),
            60_000,
        ),
    )
    .await;
    let channel = create_channel(
        &mut w.tenant,
        webhook_channel("table hook", hook.url("/hook"), false),
    )
    .await;
    // One region: a single refusal opens an incident.
    let mut agent = FakeAgent::connect(&w.coord, &w.regions[0].token, "table-agent")
        .await
        .expect("the region's agent connects");
    agent.keepalive();
    agent.report_acked(&m.id, v1::Outcome::Refused).await;
    let incident = eventually("the owner's incident opens", WAIT, || async {
        incidents(&w.tenant, true).await.into_iter().next()
    })
    .await;

    let fx = Arc::new(Fixture {
        op: w.op.clone(),
        owner: w.tenant.clone(),
        region,
        monitor: m.id.clone(),
        incident: incident.id,
        channel: channel.id,
        hook_url: hook.url("/hook"),
        next: AtomicU64::new(0),
    });
    let caller = |admin: Admin, scope: &str| Caller {
        admin,
        scope: scope.into(),
        fx: fx.clone(),
    };
    let callers = [
        caller(w.tenant.clone(), ""),
        caller(w.coord.admin(&bravo_token).await, ""),
        caller(w.coord.admin(&w.regions[0].token).await, ""),
        caller(w.op.clone(), TENANT),
    ];
    let stranger = caller(w.coord.admin("pwt_nobody-issued-this-token").await, "");
    let failures = run_table(&rpc_table(), callers, stranger).await;
    assert!(
        failures.is_empty(),
        "{} answer(s) differ from the table:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_table_has_a_row_for_every_admin_rpc() {
    let set = prost_types::FileDescriptorSet::decode(portwatch_proto::FILE_DESCRIPTOR_SET)
        .expect("the protocol's descriptor set decodes");
    let service: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "portwatch.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "AdminService")
        .flat_map(|s| &s.method)
        .map(|m| m.name().to_string())
        .collect();
    assert!(!service.is_empty(), "AdminService has no methods?");
    let table: Vec<String> = rpc_table().iter().map(|r| r.rpc.to_string()).collect();
    assert_eq!(
        table, service,
        "one row per AdminService RPC, in the proto's order"
    );
}
