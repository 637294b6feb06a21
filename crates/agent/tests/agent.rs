//! `portwatch-agent run` as real processes against a real coordinator process
//! on loopback (TLS, temp dirs), checking real listeners. Private regions are
//! used so the agents may probe loopback, as a self-hosted probe would.

use std::path::Path;
use std::time::{Duration, SystemTime};

use portwatch_e2e::{
    Admin, AgentProc, Coordinator, CountingListener, FAST_PLANS as PLANS, OPERATOR_TOKEN, Setup,
    World, all_results, checked_at_ms, eventually, metric_value,
};
use portwatch_proto::v1;
use portwatch_testdns::{Answer, DnsServer};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portwatch-agent"))
}

fn coordinator_bin() -> std::path::PathBuf {
    // The coordinator binary sits beside ours in the target directory.
    let mut p = agent_bin().to_path_buf();
    p.set_file_name("portwatch-coordinator");
    p
}

/// A coordinator, a tenant, and `n` private regions (r0, r1, ...) with a token each.
async fn world(n: usize) -> World {
    World::builder()
        .coordinator_bin(coordinator_bin())
        .private_regions(n)
        .start()
        .await
}

fn agent(w: &World, i: usize, extra: &str) -> AgentProc {
    let extra = format!("allow_private_targets = true\n{extra}");
    AgentProc::start(
        agent_bin(),
        &w.coord,
        &w.regions[i].token,
        &w.dir.path().join(format!("agent{i}")),
        &extra,
    )
}

fn monitor(host: &str, port: u16, regions: usize, interval_ms: u64) -> v1::CreateMonitorRequest {
    v1::CreateMonitorRequest {
        host: host.into(),
        port: u32::from(port),
        regions: (0..regions).map(|i| format!("r{i}")).collect(),
        interval_ms,
        timeout_ms: 1000,
        ..Default::default()
    }
}

async fn results(admin: &mut Admin, monitor: &str) -> Vec<v1::CheckResult> {
    all_results(admin, monitor).await
}

fn at_ms(r: &v1::CheckResult) -> u64 {
    checked_at_ms(r)
}

fn no_duplicates(rs: &[v1::CheckResult]) {
    let mut keys: Vec<(String, u64)> = rs.iter().map(|r| (r.region.clone(), at_ms(r))).collect();
    let before = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), before, "a result was stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_check_runs_at_once_and_phases_align_across_regions() {
    let mut w = world(2).await;
    let target = CountingListener::start().await;
    let _a0 = agent(&w, 0, "");
    let _a1 = agent(&w, 1, "");
    let created = SystemTime::now();
    // A 60 s interval: only an immediate first check can produce a result quickly.
    let slow = w
        .tenant
        .create_monitor(monitor("127.0.0.1", target.addr.port(), 2, 60_000))
        .await
        .unwrap()
        .into_inner();
    let first = eventually(
        "first results from both regions",
        Duration::from_secs(10),
        || {
            let mut t = w.tenant.clone();
            let id = slow.id.clone();
            async move {
                let rs = results(&mut t, &id).await;
                (rs.iter().any(|r| r.region == "r0") && rs.iter().any(|r| r.region == "r1"))
                    .then_some(rs)
            }
        },
    )
    .await;
    assert!(
        first.iter().all(|r| r.outcome == v1::Outcome::Ok as i32),
        "{first:?}"
    );
    assert!(
        first.iter().all(|r| r.immediate),
        "the first check is the immediate one"
    );
    let latency =
        first.iter().map(at_ms).max().unwrap() - portwatch_proto::time::unix_micros(created) / 1000;
    assert!(latency < 5_000, "first check {latency} ms after creation");

    // A 1 s monitor: the scheduled checks of both regions land on the same phase.
    let fast = w
        .tenant
        .create_monitor(monitor("127.0.0.1", target.addr.port(), 2, 1_000))
        .await
        .unwrap()
        .into_inner();
    let rs = eventually(
        "scheduled results from both regions",
        Duration::from_secs(15),
        || {
            let mut t = w.tenant.clone();
            let id = fast.id.clone();
            async move {
                let rs = results(&mut t, &id).await;
                let scheduled = |region: &str| {
                    rs.iter()
                        .filter(|r| r.region == region && !r.immediate)
                        .count()
                };
                (scheduled("r0") >= 3 && scheduled("r1") >= 3).then_some(rs)
            }
        },
    )
    .await;
    let phases: Vec<(String, u64)> = rs
        .iter()
        .filter(|r| !r.immediate)
        .map(|r| (r.region.clone(), at_ms(r) % 1000))
        .collect();
    let p0: Vec<u64> = phases
        .iter()
        .filter(|(r, _)| r == "r0")
        .map(|(_, p)| *p)
        .collect();
    let p1: Vec<u64> = phases
        .iter()
        .filter(|(r, _)| r == "r1")
        .map(|(_, p)| *p)
        .collect();
    let dist = |a: u64, b: u64| a.abs_diff(b).min(1000 - a.abs_diff(b));
    for a in &p0 {
        for b in &p1 {
            assert!(
                dist(*a, *b) < 150,
                "r0 phase {a} ms vs r1 phase {b} ms: not aligned ({phases:?})"
            );
        }
    }
    no_duplicates(&rs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_check_into_the_coordinator_exactly_once() {
    let mut w = world(1).await;
    let target = CountingListener::start().await;
    let mut a = agent(&w, 0, "");
    let m = w
        .tenant
        .create_monitor(monitor("127.0.0.1", target.addr.port(), 1, 1_000))
        .await
        .unwrap()
        .into_inner();
    eventually("a few checks", Duration::from_secs(10), || {
        let n = target.count();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    let status = a
        .proc
        .terminate(Duration::from_secs(20))
        .expect("agent exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let checks = target.count();
    let rs = results(&mut w.tenant, &m.id).await;
    assert_eq!(
        rs.len() as u64,
        checks,
        "every check the target saw is stored, once"
    );
    no_duplicates(&rs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_outage_and_agent_kill_lose_nothing_acknowledged_and_store_nothing_twice() {
    let mut w = world(1).await;
    let target = CountingListener::start().await;
    let mut a = agent(&w, 0, "");
    let m = w
        .tenant
        .create_monitor(monitor("127.0.0.1", target.addr.port(), 1, 1_000))
        .await
        .unwrap()
        .into_inner();
    eventually("checks flowing", Duration::from_secs(10), || {
        let mut t = w.tenant.clone();
        let id = m.id.clone();
        async move { (results(&mut t, &id).await.len() >= 2).then_some(()) }
    })
    .await;

    // Coordinator gone: the agent keeps checking from its cached assignments.
    w.coord.proc.kill9();
    let outage_start = SystemTime::now();
    let before = target.count();
    eventually(
        "checks continue during the outage",
        Duration::from_secs(10),
        || {
            let n = target.count();
            async move { (n >= before + 3).then_some(()) }
        },
    )
    .await;
    // The agent itself is killed too, and restarted while the coordinator is still away.
    a.proc.kill9();
    a.restart();
    let resumed = target.count();
    eventually(
        "the restarted agent checks from its cached assignments",
        Duration::from_secs(10),
        || {
            let n = target.count();
            async move { (n >= resumed + 2).then_some(()) }
        },
    )
    .await;
    let outage_end = SystemTime::now();

    w.coord.restart();
    let mut tenant = w.coord.admin(&fresh_token(&w).await).await;
    let out_ms = (
        portwatch_proto::time::unix_micros(outage_start) / 1000,
        portwatch_proto::time::unix_micros(outage_end) / 1000,
    );
    let rs = eventually(
        "results from the outage arrive",
        Duration::from_secs(15),
        || {
            let mut t = tenant.clone();
            let id = m.id.clone();
            async move {
                let rs = results(&mut t, &id).await;
                let during = rs
                    .iter()
                    .filter(|r| (out_ms.0..out_ms.1).contains(&at_ms(r)))
                    .count();
                (during >= 4).then_some(rs)
            }
        },
    )
    .await;
    no_duplicates(&rs);
    assert!(
        rs.len() as u64 <= target.count(),
        "never more results than checks"
    );
    // Nothing left unacknowledged once the agent caught up.
    let metrics = eventually("spool drained", Duration::from_secs(10), || {
        let a = &a;
        async move {
            let text = a.metrics_text().await;
            (metric_value(&text, "portwatch_agent_spool_depth") == Some(0.0)).then_some(text)
        }
    })
    .await;
    assert!(
        metrics.contains("portwatch_agent_checks_total"),
        "{metrics}"
    );
    let _ = tenant
        .list_monitors(v1::ListMonitorsRequest::default())
        .await
        .unwrap();
}

async fn fresh_token(w: &World) -> String {
    let mut op = w.coord.admin(OPERATOR_TOKEN).await;
    op.create_tenant_token(v1::CreateTenantTokenRequest {
        tenant_id: "acme".into(),
        description: "test".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_bound_drops_the_oldest_and_counts_them() {
    let mut w = world(1).await;
    let target = CountingListener::start().await;
    let a = agent(&w, 0, "spool_max = 100\n");
    for i in 0..40 {
        let mut req = monitor("127.0.0.1", target.addr.port(), 1, 1_000);
        req.name = format!("m{i}");
        w.tenant.create_monitor(req).await.unwrap();
    }
    eventually("all monitors checked", Duration::from_secs(10), || {
        let n = target.count();
        async move { (n >= 80).then_some(()) }
    })
    .await;
    w.coord.proc.kill9();
    let text = eventually(
        "results dropped past the bound",
        Duration::from_secs(20),
        || {
            let a = &a;
            async move {
                let text = a.metrics_text().await;
                metric_value(&text, "portwatch_agent_spool_dropped_total")
                    .filter(|v| *v > 0.0)
                    .map(|_| text)
            }
        },
    )
    .await;
    let depth = metric_value(&text, "portwatch_agent_spool_depth").unwrap_or(f64::MAX);
    assert!(depth <= 100.0, "spool depth {depth} over its bound of 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_now_confirms_within_one_timeout_and_removal_stops_checks() {
    let mut w = world(2).await;
    let target = CountingListener::start().await;
    // The same name resolves differently per region: r0 gets 127.0.0.2, where
    // nothing listens on the target's port; r1 gets the listener.
    let dns0 = DnsServer::start().await.unwrap();
    let dns1 = DnsServer::start().await.unwrap();
    dns0.set(
        "db.internal",
        Answer::Addrs(vec!["127.0.0.2".parse().unwrap()]),
    );
    dns1.set(
        "db.internal",
        Answer::Addrs(vec!["127.0.0.1".parse().unwrap()]),
    );
    let _a0 = agent(&w, 0, &format!("nameservers = [\"{}\"]\n", dns0.addr()));
    let _a1 = agent(&w, 1, &format!("nameservers = [\"{}\"]\n", dns1.addr()));
    let m = w
        .tenant
        .create_monitor(monitor("db.internal", target.addr.port(), 2, 60_000))
        .await
        .unwrap()
        .into_inner();
    // r0 sees "refused" at once; the coordinator asks r1 to confirm now, long before
    // its next scheduled check a minute away.
    let rs = eventually(
        "a confirmation check from r1",
        Duration::from_secs(3),
        || {
            let mut t = w.tenant.clone();
            let id = m.id.clone();
            async move {
                let rs = results(&mut t, &id).await;
                (rs.iter().filter(|r| r.region == "r1").count() >= 2).then_some(rs)
            }
        },
    )
    .await;
    let down_at = rs
        .iter()
        .filter(|r| r.region == "r0" && r.outcome == v1::Outcome::Refused as i32)
        .map(at_ms)
        .min()
        .expect("r0 saw the port refused");
    let confirm_at = rs
        .iter()
        .filter(|r| r.region == "r1")
        .map(at_ms)
        .max()
        .unwrap_or(0);
    assert!(
        confirm_at >= down_at && confirm_at - down_at < 1_000,
        "r1 confirmed {} ms after r0 saw it down; must be within one timeout (1000 ms)",
        confirm_at.saturating_sub(down_at)
    );

    // Removal stops checks.
    w.tenant
        .delete_monitor(v1::DeleteMonitorRequest {
            id: m.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let fast = w
        .tenant
        .create_monitor(monitor("127.0.0.1", target.addr.port(), 1, 1_000))
        .await
        .unwrap()
        .into_inner();
    eventually("fast monitor checked", Duration::from_secs(5), || {
        let n = target.count();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    w.tenant
        .delete_monitor(v1::DeleteMonitorRequest {
            id: fast.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = target.count();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        target.count(),
        after,
        "no check after the monitor was removed"
    );
}

/// A snapshot far over gRPC's default 4 MiB message limit (70k assignments, ~7 MB)
/// reaches the agent, which checks every monitor from it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_four_mebibytes_reaches_the_agent() {
    const N: usize = 70_000;
    let dir = tempfile::tempdir().unwrap();
    let coord_dir = dir.path().join("coordinator");
    std::fs::create_dir_all(&coord_dir).unwrap();
    // Slow periodic evaluation: this test is about the stream, not consensus at scale.
    let extra = format!("evaluate_every = \"30s\"\n{PLANS}")
        .replace("max_monitors = 1000", "max_monitors = 100000");
    let mut coord = Coordinator::start(&coordinator_bin(), &coord_dir, &extra);
    let mut op = coord.admin(OPERATOR_TOKEN).await;
    let (tenant_id, _) = Setup::tenant(&mut op, "acme", v1::Plan::Enterprise).await;
    for r in ["r0", "r1"] {
        Setup::region(&mut op, r, &tenant_id).await;
    }
    let token = Setup::agent_token(&mut op, "r0").await;
    drop(op);
    // Monitors go straight into the stopped coordinator's store (the admin API
    // would take minutes for 70k); r1 has no agent, so 1 of 2 down never pages.
    assert!(
        coord
            .proc
            .terminate(Duration::from_secs(15))
            .is_some_and(|s| s.success())
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    {
        let store = portwatch_coordinator::store::Store::open(&coord_dir.join("data")).unwrap();
        for i in 0..N {
            let m = v1::Monitor {
                // Long ids make the snapshot ~7 MB.
                id: format!("mon-bulk-{i:06}-{}", "x".repeat(40)),
                tenant_id: tenant_id.clone(),
                name: format!("bulk {i}"),
                host: "127.0.0.1".into(),
                port: u32::from(closed),
                regions: vec!["r0".into(), "r1".into()],
                interval_ms: 3_600_000,
                timeout_ms: 1000,
                consensus: v1::ConsensusPolicy::Quorum as i32,
                family: v1::IpFamily::Any as i32,
                address_policy: v1::AddressPolicy::Any as i32,
                close_mode: v1::CloseMode::Fin as i32,
                generation: 1,
                ..Default::default()
            };
            store.put_monitor(&m).unwrap();
        }
        store.flush().await.unwrap();
    }
    coord.restart();
    let agent_dir = dir.path().join("agent0");
    let a = AgentProc::start(
        agent_bin(),
        &coord,
        &token,
        &agent_dir,
        "allow_private_targets = true\n",
    );
    // Every assignment arrived: the agent checked every monitor once, at once.
    let text = eventually(
        "all 70k monitors checked from the snapshot",
        Duration::from_secs(90),
        || {
            let a = &a;
            async move {
                let text = a.try_metrics_text().await?;
                let refused =
                    metric_value(&text, "portwatch_agent_checks_total{outcome=\"refused\"}")
                        .unwrap_or(0.0);
                (refused >= N as f64).then_some(text)
            }
        },
    )
    .await;
    assert!(!text.is_empty());
}
