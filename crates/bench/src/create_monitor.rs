//! `create-monitor`: `CreateMonitor` through the real admin API (gRPC over TLS)
//! of a real coordinator process, one call at a time, into a tenant of its own
//! while the coordinator holds N monitors of another tenant (default 100,000).
//! Measured: calls per second of wall time and each call's latency (p50/p99),
//! request sent → answer received, which includes the flush that makes the
//! monitor durable and the push of its assignment to the region's agent.
//!
//! The baseline, in the same run: the same calls against the same coordinator
//! before the N monitors are written, when it holds only the template. If
//! creating a monitor does not depend on other tenants' monitors, the two
//! rates are about equal.
//!
//! Set-up as in the ingest figure (`world.rs`): tenants, a public region, its
//! agent token and the template go through the admin API; the N monitors are
//! copies written into the stopped coordinator's store with its own `Store`,
//! then the coordinator is started again. One lean agent (`link.rs`) is
//! connected to the region in both phases, as in production, so each new
//! monitor is also assigned and pushed.
//!
//! Bounded: each phase stops after `--creates` calls or `PHASE_LIMIT`, whichever
//! comes first; the table says how many calls were made.

use std::time::{Duration, Instant};

use anyhow::Context;
use portwatch_e2e::{Admin, Coordinator, OPERATOR_TOKEN, Setup};
use portwatch_proto::v1;
use serde_json::json;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::link::{BIG_MESSAGES, Link};
use crate::report::{Table, emit, f, note};
use crate::stats::{p50_p99_max, round};
use crate::world::{launch, write_copies};

const REGION: &str = "r0";
/// Most wall time one phase may take.
const PHASE_LIMIT: Duration = Duration::from_secs(60);

/// One phase: up to `creates` sequential calls.
struct Phase {
    others: usize,
    done: usize,
    wall: Duration,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    /// Stopped by `PHASE_LIMIT` before all calls were made.
    cut: bool,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.done as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// `creates` sequential `CreateMonitor` calls into the client's tenant.
async fn create_many(
    client: &mut Admin,
    tag: &str,
    creates: usize,
    others: usize,
) -> anyhow::Result<Phase> {
    let mut lat = Vec::with_capacity(creates);
    let t0 = Instant::now();
    let mut cut = false;
    for i in 0..creates {
        if t0.elapsed() >= PHASE_LIMIT {
            cut = true;
            break;
        }
        let c0 = Instant::now();
        client
            .create_monitor(v1::CreateMonitorRequest {
                name: format!("{tag} {i}"),
                host: format!("{tag}-{i}.bench.portwatch.net"),
                port: 443,
                regions: vec![REGION.into()],
                interval_ms: 60_000,
                timeout_ms: 3_000,
                ..Default::default()
            })
            .await
            .with_context(|| format!("CreateMonitor call {} of phase {tag}", i + 1))?;
        lat.push(u64::try_from(c0.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let wall = t0.elapsed();
    let done = lat.len();
    let (p50_us, p99_us, max_us) = p50_p99_max(&mut lat);
    Ok(Phase {
        others,
        done,
        wall,
        p50_us,
        p99_us,
        max_us,
        cut,
    })
}

async fn link(coord: &Coordinator, token: &str) -> anyhow::Result<Link> {
    Link::connect(coord, token, "bench-agent-0", Some(BIG_MESSAGES))
        .await
        .context("connecting the region's agent")
}

pub fn run(rt: &Runtime, opts: &Opts) -> anyhow::Result<()> {
    let bin = opts.daemon("portwatch-coordinator")?;
    let others = opts
        .monitors
        .unwrap_or(if opts.quick { 2_000 } else { 100_000 })
        .max(1);
    let creates = opts.creates.unwrap_or(if opts.quick { 50 } else { 1_000 });
    rt.block_on(async move {
        let dir = tempfile::tempdir().context("temp dir")?;
        let coord_dir = dir.path().join("coordinator");
        std::fs::create_dir_all(&coord_dir).context("coordinator dir")?;
        let mut coord = launch(&bin, &coord_dir, None)?;
        let mut op = coord.admin(OPERATOR_TOKEN).await;
        let (_, owner_token) = Setup::tenant(&mut op, "bench", v1::Plan::Enterprise).await;
        let (_, base_token) = Setup::tenant(&mut op, "base", v1::Plan::Enterprise).await;
        let (_, fresh_token) = Setup::tenant(&mut op, "fresh", v1::Plan::Enterprise).await;
        Setup::region(&mut op, REGION, "").await;
        let agent_token = Setup::agent_token(&mut op, REGION).await;
        drop(op);
        let template = coord
            .admin(&owner_token)
            .await
            .create_monitor(v1::CreateMonitorRequest {
                name: "bench template".into(),
                host: "db-0.bench.portwatch.net".into(),
                port: 5432,
                regions: vec![REGION.into()],
                interval_ms: 60_000,
                timeout_ms: 3_000,
                ..Default::default()
            })
            .await
            .context("creating the template monitor")?
            .into_inner();

        // Baseline: the coordinator holds only the template.
        let agent = link(&coord, &agent_token).await?;
        let mut base = coord.admin(&base_token).await;
        let baseline = create_many(&mut base, "base", creates, 1).await?;
        note(format!(
            "create-monitor baseline (1 other monitor): {} calls, {:.0}/s, p99 {} µs",
            baseline.done,
            baseline.rate(),
            baseline.p99_us
        ));
        drop(base);
        drop(agent);

        // Stop, write the other tenant's monitors, start again on the same store.
        if coord.proc.terminate(Duration::from_secs(30)).is_none() {
            anyhow::bail!("the coordinator did not stop within 30 s");
        }
        let began = Instant::now();
        write_copies(&coord_dir.join("data"), &template, others - 1).await?;
        note(format!(
            "create-monitor: {others} monitors written in {:.1} s",
            began.elapsed().as_secs_f64()
        ));
        let began = Instant::now();
        let coord = launch(&bin, &coord_dir, Some((coord.cert, coord.addr)))?;
        let agent = link(&coord, &agent_token).await?;
        note(format!(
            "create-monitor: coordinator up and agent assigned in {:.1} s",
            began.elapsed().as_secs_f64()
        ));
        let mut fresh = coord.admin(&fresh_token).await;
        let scale = create_many(&mut fresh, "fresh", creates, others).await?;
        note(format!(
            "create-monitor with {others} other monitors: {} calls, {:.0}/s, p99 {} µs",
            scale.done,
            scale.rate(),
            scale.p99_us
        ));
        drop(agent);
        report(&[baseline, scale], creates);
        Ok(())
    })
}

fn report(phases: &[Phase; 2], creates: usize) {
    let mut table = Table::new(
        format!(
            "create-monitor: CreateMonitor calls one at a time into a tenant of its own (up to {creates}, at most {} s per row)",
            PHASE_LIMIT.as_secs()
        ),
        &[
            "other monitors in the store",
            "calls made",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
    );
    for p in phases {
        table.row(vec![
            p.others.to_string(),
            if p.cut {
                format!("{} (time bound)", p.done)
            } else {
                p.done.to_string()
            },
            f(p.rate(), 1),
            f(p.p50_us as f64 / 1000.0, 2),
            f(p.p99_us as f64 / 1000.0, 2),
            f(p.max_us as f64 / 1000.0, 2),
        ]);
    }
    let [base, scale] = phases;
    let ratio = scale.rate() / base.rate().max(1e-9);
    let mut goal = Table::new("create-monitor: goal", &["goal", "measured", "met"]);
    // Independent of other tenants' monitors: within a factor of 2 of the baseline.
    let met = ratio >= 0.5;
    goal.row(vec![
        "calls/s with N other monitors ≥ 0.5 × baseline".into(),
        format!(
            "{} × ({:.1}/s vs {:.1}/s)",
            f(ratio, 2),
            scale.rate(),
            base.rate()
        ),
        crate::report::met(met),
    ]);
    let phase_json = |p: &Phase| {
        json!({
            "other_monitors": p.others,
            "calls": p.done,
            "time_bound_hit": p.cut,
            "per_s": round(p.rate(), 1),
            "p50_us": p.p50_us,
            "p99_us": p.p99_us,
            "max_us": p.max_us,
        })
    };
    emit(
        "create-monitor",
        &[table, goal],
        json!({
            "unit": "calls_per_s",
            "creates": creates,
            "phase_limit_s": PHASE_LIMIT.as_secs(),
            "baseline": phase_json(base),
            "with_others": phase_json(scale),
            "per_s": round(scale.rate(), 1),
            "p50_us": scale.p50_us,
            "p99_us": scale.p99_us,
            "ratio_to_baseline": round(ratio, 3),
            "met": met,
        }),
    );
}
