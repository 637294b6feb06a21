//! Figure 5, coordinator ingest: results per second from 5 regions through the
//! real agent stream (gRPC over TLS) of a real coordinator process, in batches
//! of 500 with a window of batches in flight, every result durably stored
//! (flushed) before its ack and every one that becomes its region's latest
//! evaluated by consensus. Measured: results acknowledged per second of wall
//! time, and each batch's send→ack latency (p50/p99).
//!
//! The baseline, in the same run: the coordinator's own `Store::ingest` on the
//! same batches, in this process, 5 concurrent writers, no gRPC, no TLS, no
//! consensus: the storage engine's limit. Goal: ≥ 25,000 results/s.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use portwatch_coordinator::store::{Ingest, Store};
use portwatch_proto::v1;
use serde_json::json;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::link::{BIG_MESSAGES, Link, Plan, Pumped};
use crate::report::{Table, emit, f, met, note};
use crate::stats::{median, p50_p99_max, round};
use crate::usage::{cpu_of, cpu_self, rss_kib};
use crate::world::World;

const GOAL: f64 = 25_000.0;
const REGIONS: usize = 5;
pub const BATCH: usize = 500;
pub const WINDOW: usize = 8;

/// One measured round over every region.
pub struct Round {
    pub acked: u64,
    pub wall: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Coordinator CPU over the round (None when not read).
    pub server_cpu: Option<Duration>,
    pub client_cpu: Duration,
}

impl Round {
    pub fn rate(&self) -> f64 {
        self.acked as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Every link sends `per_link` results at once; returns the links and the round.
pub async fn send_round(
    links: Vec<Link>,
    monitors: &[String],
    per_link: u64,
    pace: Option<f64>,
    server_pid: Option<u32>,
) -> anyhow::Result<(Vec<Link>, Round)> {
    let s0 = server_pid.and_then(cpu_of);
    let c0 = cpu_self();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut tasks = Vec::new();
    for (i, mut link) in links.into_iter().enumerate() {
        let monitors = monitors.to_vec();
        // Regions start at different monitors, as real agents would be out of step.
        let start = i * monitors.len() / REGIONS;
        tasks.push(tokio::spawn(async move {
            let plan = Plan {
                start,
                total: per_link,
                batch: BATCH,
                window: WINDOW,
                pace,
                deadline,
            };
            let r = link.pump(&monitors, &plan).await;
            (link, r)
        }));
    }
    let mut links = Vec::new();
    let mut all: Vec<Pumped> = Vec::new();
    for t in tasks {
        let (link, r) = t.await.context("a sending task failed")?;
        links.push(link);
        all.push(r?);
    }
    let client_cpu = cpu_self().saturating_sub(c0);
    let server_cpu = match (s0, server_pid.and_then(cpu_of)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let first = all.iter().filter_map(|p| p.first_send).min();
    let last = all.iter().filter_map(|p| p.last_ack).max();
    let wall = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a),
        _ => Duration::ZERO,
    };
    let mut lat: Vec<u64> = all
        .iter()
        .flat_map(|p| p.latencies_us.iter().copied())
        .collect();
    let (p50, p99, _) = p50_p99_max(&mut lat);
    Ok((
        links,
        Round {
            acked: all.iter().map(|p| p.acked).sum(),
            wall,
            p50_us: p50,
            p99_us: p99,
            server_cpu,
            client_cpu,
        },
    ))
}

/// Connects one link per region of `world` (decode limit raised for big snapshots).
pub async fn links(world: &World) -> anyhow::Result<Vec<Link>> {
    let mut out = Vec::new();
    for (i, token) in world.tokens.iter().enumerate() {
        out.push(
            Link::connect(
                &world.coord,
                token,
                &format!("bench-agent-{i}"),
                Some(BIG_MESSAGES),
            )
            .await
            .with_context(|| format!("connecting the agent of region r{i}"))?,
        );
    }
    Ok(out)
}

/// The baseline: `Store::ingest` in-process, one concurrent writer per region.
async fn store_only(monitors: &[String], per_region: u64) -> anyhow::Result<Round> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let store = Store::open(dir.path()).context("opening a scratch store")?;
    store_only_on(store, monitors, per_region, 0).await
}

/// The store-only baseline on any backend: 5 concurrent writers, batches of [`BATCH`].
pub async fn store_only_on(
    store: Store,
    monitors: &[String],
    per_region: u64,
    run: usize,
) -> anyhow::Result<Round> {
    let c0 = cpu_self();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..REGIONS {
        let store = store.clone();
        let monitors = monitors.to_vec();
        tasks.push(tokio::spawn(async move {
            let region = format!("r{r}");
            // Agents of their own per run: a store acknowledges an agent's
            // sequence number once, so a second run under the same names
            // would measure the duplicate check, not the writes.
            let agent = format!("bench-agent-{run}-{r}");
            let mut seq = 0u64;
            let mut cursor = r * monitors.len() / REGIONS;
            let mut lat = Vec::new();
            let mut sent = 0u64;
            while sent < per_region {
                let n = (per_region - sent).min(BATCH as u64) as usize;
                let at = SystemTime::now();
                let results: Vec<v1::CheckResult> = (0..n)
                    .map(|_| {
                        let id = &monitors[cursor % monitors.len()];
                        cursor += 1;
                        portwatch_e2e::result(id, v1::Outcome::Ok, at)
                    })
                    .collect();
                let items: Vec<Ingest> = results
                    .iter()
                    .map(|result| {
                        seq += 1;
                        Ingest { seq, result }
                    })
                    .collect();
                let b0 = Instant::now();
                store.ingest(&agent, &region, &items, seq).await?;
                lat.push(u64::try_from(b0.elapsed().as_micros()).unwrap_or(u64::MAX));
                sent += n as u64;
            }
            Ok::<_, anyhow::Error>((sent, lat))
        }));
    }
    let mut acked = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (n, l) = t.await.context("a writer failed")??;
        acked += n;
        lat.extend(l);
    }
    let wall = t0.elapsed();
    let (p50, p99, _) = p50_p99_max(&mut lat);
    Ok(Round {
        acked,
        wall,
        p50_us: p50,
        p99_us: p99,
        server_cpu: None,
        client_cpu: cpu_self().saturating_sub(c0),
    })
}

pub fn run(rt: &Runtime, opts: &Opts) -> anyhow::Result<()> {
    let bin = opts.daemon("portwatch-coordinator")?;
    let runs = opts.runs.unwrap_or(if opts.quick { 1 } else { 3 });
    let monitors = if opts.quick { 1_000 } else { 10_000 };
    let per_region: u64 = if opts.quick { 5_000 } else { 20_000 };
    rt.block_on(async move {
        let world = World::start(&bin, REGIONS, monitors, 60_000).await?;
        let pid = world.pid();
        let mut links = links(&world).await?;
        note(format!(
            "ingest: {runs} runs × {REGIONS} regions × {per_region} results, batches of {BATCH}, {WINDOW} in flight, {monitors} monitors"
        ));
        // Warm-up: one batch window per region.
        let (l, _) = send_round(links, &world.monitors, (BATCH * WINDOW) as u64, None, Some(pid)).await?;
        links = l;
        let mut rows = Vec::new();
        for i in 0..runs {
            let base = store_only(&world.monitors, per_region).await?;
            let (l, r) = send_round(links, &world.monitors, per_region, None, Some(pid)).await?;
            links = l;
            note(format!(
                "ingest run {}: {:.0} results/s (p99 ack {} µs); store only {:.0}/s",
                i + 1,
                r.rate(),
                r.p99_us,
                base.rate()
            ));
            rows.push((base, r));
        }
        // Ack latency below saturation: half the goal rate, spread over the regions.
        let paced_secs: u64 = if opts.quick { 1 } else { 5 };
        let per_link_rate = GOAL / 2.0 / REGIONS as f64;
        let (l, paced) = send_round(
            links,
            &world.monitors,
            (per_link_rate * paced_secs as f64) as u64,
            Some(per_link_rate),
            Some(pid),
        )
        .await?;
        links = l;
        note(format!(
            "ingest paced at {:.0}/s: {:.0}/s acknowledged, ack p50 {} µs, p99 {} µs",
            GOAL / 2.0,
            paced.rate(),
            paced.p50_us,
            paced.p99_us
        ));
        let rss = rss_kib(pid).unwrap_or(0);
        drop(links);

        let mut table = Table::new(
            format!(
                "ingest: results/s durably acknowledged, {REGIONS} regions, batches of {BATCH}, {WINDOW} batches in flight per region"
            ),
            &[
                "run",
                "coordinator /s",
                "ack p50 ms",
                "ack p99 ms",
                "coord CPU µs/result",
                "bench CPU µs/result",
                "store only /s",
                "coordinator/store",
            ],
        );
        let mut ratios = Vec::new();
        for (i, (b, r)) in rows.iter().enumerate() {
            let ratio = r.rate() / b.rate().max(1e-9);
            ratios.push(ratio);
            table.row(vec![
                (i + 1).to_string(),
                f(r.rate(), 0),
                f(r.p50_us as f64 / 1000.0, 1),
                f(r.p99_us as f64 / 1000.0, 1),
                r.server_cpu.map_or("?".into(), |c| {
                    f(c.as_secs_f64() * 1e6 / r.acked.max(1) as f64, 1)
                }),
                f(r.client_cpu.as_secs_f64() * 1e6 / r.acked.max(1) as f64, 1),
                f(b.rate(), 0),
                f(ratio, 2),
            ]);
        }
        let rates: Vec<f64> = rows.iter().map(|r| r.1.rate()).collect();
        let base_rates: Vec<f64> = rows.iter().map(|r| r.0.rate()).collect();
        let p99s: Vec<f64> = rows.iter().map(|r| r.1.p99_us as f64).collect();
        let med = median(&rates);
        table.row(vec![
            "median".into(),
            f(med, 0),
            f(median(&rows.iter().map(|r| r.1.p50_us as f64).collect::<Vec<_>>()) / 1000.0, 1),
            f(median(&p99s) / 1000.0, 1),
            String::new(),
            String::new(),
            f(median(&base_rates), 0),
            f(median(&ratios), 2),
        ]);
        table.row(vec![
            format!("paced {:.0}/s", GOAL / 2.0),
            f(paced.rate(), 0),
            f(paced.p50_us as f64 / 1000.0, 1),
            f(paced.p99_us as f64 / 1000.0, 1),
            paced.server_cpu.map_or("?".into(), |c| {
                f(c.as_secs_f64() * 1e6 / paced.acked.max(1) as f64, 1)
            }),
            f(paced.client_cpu.as_secs_f64() * 1e6 / paced.acked.max(1) as f64, 1),
            String::new(),
            String::new(),
        ]);
        let mut goal = Table::new("ingest: goal", &["goal", "measured", "met"]);
        goal.row(vec![
            format!("≥ {GOAL:.0} results/s"),
            format!("{}/s (p99 ack {} ms)", f(med, 0), f(median(&p99s) / 1000.0, 1)),
            met(med >= GOAL),
        ]);
        let server_us: Vec<f64> = rows
            .iter()
            .filter_map(|(_, r)| {
                r.server_cpu
                    .map(|c| c.as_secs_f64() * 1e6 / r.acked.max(1) as f64)
            })
            .collect();
        emit(
            "ingest",
            &[table, goal],
            json!({
                "unit": "results_per_s",
                "runs": runs,
                "regions": REGIONS,
                "monitors": monitors,
                "results_per_region_per_run": per_region,
                "batch": BATCH,
                "window": WINDOW,
                "per_s": rates.iter().map(|x| round(*x, 0)).collect::<Vec<_>>(),
                "ack_p99_us": rows.iter().map(|r| r.1.p99_us).collect::<Vec<_>>(),
                "ack_p50_us": rows.iter().map(|r| r.1.p50_us).collect::<Vec<_>>(),
                "store_only_per_s": base_rates.iter().map(|x| round(*x, 0)).collect::<Vec<_>>(),
                "median_per_s": round(med, 0),
                "median_ack_p99_us": round(median(&p99s), 0),
                "median_store_only_per_s": round(median(&base_rates), 0),
                "ratio_to_store_only": round(median(&ratios), 3),
                "coordinator_cpu_us_per_result": round(median(&server_us), 2),
                "coordinator_rss_kib": rss,
                "paced_per_s": round(paced.rate(), 0),
                "paced_ack_p50_us": paced.p50_us,
                "paced_ack_p99_us": paced.p99_us,
                "goal_per_s": GOAL,
                "met": med >= GOAL,
            }),
        );
        Ok(())
    })
}
