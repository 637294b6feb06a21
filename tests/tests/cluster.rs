//! Three coordinator processes on one real PostgreSQL server, agents in three regions that know
//! all three addresses, a real webhook receiver counting idempotency keys. One coordinator is
//! active (it holds the lease); the faults: the active one killed with SIGKILL while its target
//! goes down, and the active one frozen (SIGSTOP) past its lease while the target goes down,
//! then thawed. Each time exactly one incident opens and exactly one "TCP Port Unreachable"
//! key reaches the receiver.

mod support;

use std::time::{Duration, Instant};

use portwatch_e2e::external::{Postgres, postgres};
use portwatch_e2e::{
    AgentProc, Coordinator, FAST_PLANS, HttpReceiver, OPERATOR_TOKEN, World, eventually,
    metric_value,
};
use portwatch_proto::v1;
use support::*;

/// The active lease's time to live in these tests.
const LEASE_TTL: Duration = Duration::from_secs(1);
/// The harness's heartbeat timeout (`fast_timings`).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// The monitors' connect timeout (`support::monitor`).
const MONITOR_TIMEOUT: Duration = Duration::from_secs(1);

struct Cluster {
    _pg: Postgres,
    world: World,
    /// The world's coordinator is `coords[0]`'s slot: `world.coord`; these are the others.
    others: Vec<Coordinator>,
    _agents: Vec<AgentProc>,
    hook: HttpReceiver,
    door: Door,
    monitor: v1::Monitor,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let pg = postgres();
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("pg-password");
        std::fs::write(&password, pg.password()).unwrap();
        let extra = format!(
            "store = \"postgres\"\npostgres_url = \"{}\"\npostgres_password_file = \"{}\"\nlease_ttl = \"{}ms\"\n{NOTIFY}",
            pg.url(),
            password.display(),
            LEASE_TTL.as_millis()
        );
        let mut world = World::builder()
            .config(&extra)
            .private_regions(3)
            .start()
            .await;
        let mut others = Vec::new();
        for i in 1..3 {
            let d = dir.path().join(format!("coordinator-{i}"));
            std::fs::create_dir_all(&d).unwrap();
            others.push(Coordinator::start_with_cert(
                &coordinator_bin(),
                &d,
                &format!("{extra}\n{FAST_PLANS}"),
                &world.coord.cert,
            ));
        }
        let addrs: Vec<String> = std::iter::once(&world.coord)
            .chain(others.iter())
            .map(|c| format!("\"https://{}\"", c.addr))
            .collect();
        let mut agents = Vec::new();
        for r in &world.regions {
            let adir = dir.path().join(format!("agent-{}", r.name));
            std::fs::create_dir_all(&adir).unwrap();
            let config = adir.join("agent.toml");
            std::fs::write(
                &config,
                format!(
                    "coordinator = [{}]\ntoken = \"{}\"\nca = \"{}\"\ntls_server_name = \"localhost\"\ndata_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\nbatch_wait = \"50ms\"\nallow_private_targets = true\n",
                    addrs.join(", "),
                    r.token,
                    world.coord.cert.cert.display(),
                    adir.join("spool").display()
                ),
            )
            .unwrap();
            agents.push(AgentProc::launch(&agent_bin(), &config));
        }
        let hook = HttpReceiver::ok().await;
        create_channel(
            &mut world.tenant,
            webhook_channel("pager", hook.url("/hook"), true),
        )
        .await;
        let mut door = doors(&["127.0.0.1"]).remove(0);
        door.open().await;
        let regions: Vec<String> = world.regions.iter().map(|r| r.name.clone()).collect();
        let monitor = create_monitor(
            &mut world.tenant,
            support::monitor("db", "127.0.0.1", door.port(), &regions, 1000),
        )
        .await;
        let c = Cluster {
            _pg: pg,
            world,
            others,
            _agents: agents,
            hook,
            door,
            monitor,
            _dir: dir,
        };
        c.wait_all_up(&c.world.coord).await;
        c
    }

    fn coordinators(&self) -> Vec<&Coordinator> {
        std::iter::once(&self.world.coord)
            .chain(self.others.iter())
            .collect()
    }

    /// Waits until `coord` answers (is active) and sees every region up.
    async fn wait_all_up(&self, coord: &Coordinator) {
        let admin = coord.admin(&self.world.tenant_token).await;
        eventually("every region up", WAIT, || {
            let mut admin = admin.clone();
            let id = self.monitor.id.clone();
            async move {
                let s = admin
                    .get_monitor_status(v1::GetMonitorStatusRequest {
                        id,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                (s.regions.len() == 3
                    && s.regions
                        .iter()
                        .all(|r| r.state == v1::RegionState::Up as i32))
                .then_some(())
            }
        })
        .await;
    }

    /// The open incidents of the monitor, from whichever coordinator answers (standbys refuse).
    async fn open_incidents(&self, skip: Option<usize>) -> Option<Vec<v1::Incident>> {
        self.incidents(skip, true).await
    }

    /// The monitor's incidents (open ones only, or all), from whichever coordinator answers.
    async fn incidents(&self, skip: Option<usize>, open_only: bool) -> Option<Vec<v1::Incident>> {
        for (i, c) in self.coordinators().into_iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let mut admin = c.admin(OPERATOR_TOKEN).await;
            if let Ok(r) = admin
                .list_incidents(v1::ListIncidentsRequest {
                    tenant_id: self.world.tenant_id.clone(),
                    open_only,
                    page_size: 1000,
                    ..Default::default()
                })
                .await
            {
                return Some(
                    r.into_inner()
                        .incidents
                        .into_iter()
                        .filter(|i| i.monitor_id == self.monitor.id)
                        .collect(),
                );
            }
        }
        None
    }

    /// Distinct "opened" idempotency keys the receiver got.
    fn opened_keys(&self) -> Vec<String> {
        self.keys(":opened:")
    }

    /// Distinct idempotency keys containing `kind` (":opened:", ":resolved:").
    fn keys(&self, kind: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .hook
            .requests()
            .iter()
            .filter_map(|r| r.header("idempotency-key").map(str::to_string))
            .filter(|k| k.contains(kind))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The tenant's admin client on the active coordinator.
    async fn active_admin(&self) -> portwatch_e2e::Admin {
        let i = self.active().await;
        self.coordinators()[i].admin(&self.world.tenant_token).await
    }

    /// Which coordinator holds the lease: the one whose `/metrics` counts a term and no
    /// stand-down after it.
    async fn active(&self) -> usize {
        eventually("an active coordinator", WAIT, || async {
            for (i, c) in self.coordinators().into_iter().enumerate() {
                let mut admin = c.admin(OPERATOR_TOKEN).await;
                if admin
                    .list_regions(v1::ListRegionsRequest::default())
                    .await
                    .is_ok()
                {
                    return Some(i);
                }
            }
            None
        })
        .await
    }

    fn proc_of(&mut self, i: usize) -> &mut portwatch_e2e::Proc {
        if i == 0 {
            &mut self.world.coord.proc
        } else {
            &mut self.others[i - 1].proc
        }
    }
}

#[tokio::test]
async fn killing_the_active_coordinator_during_an_outage_still_pages_once() {
    let mut c = Cluster::start().await;
    let active = c.active().await;
    assert_eq!(active, 0, "the first coordinator took the lease");
    assert!(c.opened_keys().is_empty());

    c.door.refuse().await;
    c.proc_of(active).kill9();
    let killed = Instant::now();

    let opened = eventually("an open incident after the takeover", WAIT, || async {
        c.open_incidents(Some(active))
            .await
            .filter(|v| !v.is_empty())
    })
    .await;
    let took = killed.elapsed();
    eprintln!("kill -9 of the active coordinator to the incident opened: {took:?}");
    assert_eq!(opened.len(), 1, "{opened:?}");
    let bound = HEARTBEAT_TIMEOUT + MONITOR_TIMEOUT + Duration::from_secs(2);
    assert!(
        took <= bound,
        "the incident opened {took:?} after the kill, more than heartbeat_timeout + the \
         monitor's timeout + 2 s = {bound:?}"
    );
    eventually("the Unreachable notice", WAIT, || async {
        (!c.opened_keys().is_empty()).then_some(())
    })
    .await;
    // Later rounds (and the outbox workers of every coordinator) add nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.opened_keys().len(), 1, "{:?}", c.opened_keys());
    assert_eq!(
        c.open_incidents(Some(active)).await.map(|v| v.len()),
        Some(1)
    );
}

#[tokio::test]
async fn a_frozen_active_coordinator_is_fenced_and_the_outage_pages_once() {
    let mut c = Cluster::start().await;
    let active = c.active().await;

    c.proc_of(active).signal(libc::SIGSTOP);
    c.door.refuse().await;
    // Past its lease: a standby takes over meanwhile.
    tokio::time::sleep(LEASE_TTL * 3).await;
    c.proc_of(active).signal(libc::SIGCONT);

    let opened = eventually("an open incident", WAIT, || async {
        c.open_incidents(None).await.filter(|v| !v.is_empty())
    })
    .await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    let new_active = c.active().await;
    assert_ne!(new_active, active, "the thawed coordinator stood down");
    eventually("the Unreachable notice", WAIT, || async {
        (!c.opened_keys().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.opened_keys().len(), 1, "{:?}", c.opened_keys());
    assert_eq!(
        c.incidents(None, false).await.map(|v| v.len()),
        Some(1),
        "no second incident from the coordinator that woke up"
    );

    // The thawed coordinator knows it stood down; a deciding write it tried was refused.
    let coords = c.coordinators();
    let text = coords[active].metrics_text().await;
    assert!(
        metric_value(&text, "portwatch_coordinator_stand_downs_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    let fenced = metric_value(&text, "portwatch_fenced_writes_total").unwrap_or(0.0);
    eprintln!("deciding writes of the frozen coordinator refused after it woke: {fenced}");
}

#[tokio::test]
async fn a_database_restart_under_load_loses_nothing_acknowledged() {
    let c = Cluster::start().await;
    let admin = c.active_admin().await;
    // Results keep coming (three regions, every second) while the database goes away.
    let before = results(&admin, &c.monitor.id).await;
    assert!(!before.is_empty());
    c._pg.stop();
    let stopped = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c._pg.start();
    let started = std::time::SystemTime::now();

    // The coordinators heal on their own; the agents' spools held what could not be stored.
    c.wait_all_up(c.coordinators()[c.active().await]).await;
    let admin = c.active_admin().await;
    let during = eventually("results checked while the database was down", WAIT, || {
        let admin = admin.clone();
        let id = c.monitor.id.clone();
        async move {
            let all = results(&admin, &id).await;
            let during: Vec<v1::CheckResult> = all
                .into_iter()
                .filter(|r| {
                    let at = r
                        .checked_at
                        .as_ref()
                        .and_then(portwatch_proto::time::from_timestamp);
                    at.is_some_and(|t| t > stopped && t < started)
                })
                .collect();
            let regions: std::collections::BTreeSet<String> =
                during.iter().map(|r| r.region.clone()).collect();
            (regions.len() == 3).then_some(during)
        }
    })
    .await;
    assert!(during.len() >= 3, "{during:?}");
    let after = results(&admin, &c.monitor.id).await;
    assert_no_duplicates(&after);
    let keys = |rs: &[v1::CheckResult]| -> std::collections::BTreeSet<(String, u64)> {
        rs.iter()
            .map(|r| (r.region.clone(), ts_ms(r.checked_at.as_ref())))
            .collect()
    };
    let (before, after) = (keys(&before), keys(&after));
    assert!(
        before.is_subset(&after),
        "acknowledged results were lost: {:?}",
        before.difference(&after).collect::<Vec<_>>()
    );
    assert!(
        c.incidents(None, false)
            .await
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn a_rolling_restart_while_the_target_flips_misses_and_repeats_no_notice() {
    let mut c = Cluster::start().await;
    for round in 0..3 {
        // The target goes down, and one coordinator after the other is restarted.
        if round % 2 == 0 {
            c.door.refuse().await;
        } else {
            c.door.open().await;
        }
        let i = (c.active().await + round) % 3;
        let status = c.proc_of(i).terminate(Duration::from_secs(10));
        assert!(status.is_some(), "coordinator {i} stopped on SIGTERM");
        if i == 0 {
            c.world.coord.restart();
        } else {
            c.others[i - 1].restart();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Down after rounds 0 and 2: end up, and let everything settle.
    c.door.open().await;
    let incidents = eventually("every incident closed", WAIT, || async {
        c.incidents(None, false)
            .await
            .filter(|v| !v.is_empty() && v.iter().all(|i| i.closed_at.is_some()))
    })
    .await;
    eventually("a resolved notice per incident", WAIT, || async {
        (c.keys(":resolved:").len() >= incidents.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let opened = c.keys(":opened:");
    let resolved = c.keys(":resolved:");
    for i in &incidents {
        let of = |keys: &[String]| keys.iter().filter(|k| k.starts_with(&i.id)).count();
        assert_eq!(of(&opened), 1, "incident {}: {opened:?}", i.id);
        assert_eq!(of(&resolved), 1, "incident {}: {resolved:?}", i.id);
    }
    assert_eq!(opened.len(), incidents.len(), "{opened:?} {incidents:?}");
    assert_eq!(resolved.len(), incidents.len(), "{resolved:?}");
}
