//! Figure 4, timing truth: how much of a reported connect time is the agent's own
//! delay rather than the network's. For each successful check on loopback,
//! `connect_us − tcp_rtt_us` from the engine's `CheckResult` (userspace clock
//! versus the kernel's handshake RTT), one check at a time, first on an idle
//! machine, then with both cores kept busy by a child process spinning two
//! threads. The raw epoll loop is measured the same way for reference (its span,
//! socket() to close, is the span the engine's `connect_us` covers).
//! Goals: engine p50 ≤ 150 µs idle, p99 ≤ 3 ms busy.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::drive::{self, spec_for};
use crate::raw;
use crate::report::{Table, emit, met, note};
use crate::stats::p50_p99_max;
use crate::targets::{Targets, spawn_spinner};

const GOAL_IDLE_P50_US: u64 = 150;
const GOAL_BUSY_P99_US: u64 = 3_000;

/// (p50, p99, max, samples) of connect − rtt.
#[derive(Clone, Copy, Debug, Default)]
struct Gap {
    p50: u64,
    p99: u64,
    max: u64,
    n: usize,
}

fn gap(pairs: &[(u64, u64)]) -> Gap {
    let mut d: Vec<u64> = pairs.iter().map(|(c, r)| c.saturating_sub(*r)).collect();
    let (p50, p99, max) = p50_p99_max(&mut d);
    Gap {
        p50,
        p99,
        max,
        n: d.len(),
    }
}

/// Engine checks one at a time: (connect_us, tcp_rtt_us) of each successful one.
async fn engine_pairs(
    addr: std::net::SocketAddr,
    count: usize,
    limit: Duration,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let checker = drive::checker()?;
    let spec = spec_for(addr);
    let until = Instant::now() + limit;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if Instant::now() >= until {
            break;
        }
        let r = checker.check(&spec).await;
        if let Some(rtt) = r.tcp_rtt_us {
            out.push((r.connect_us, rtt));
        }
    }
    Ok(out)
}

fn measure(rt: &Runtime, targets: &Targets, count: usize) -> anyhow::Result<(Gap, Gap)> {
    let addr = *targets.addrs.first().context("no listener")?;
    let limit = Duration::from_secs(30);
    let engine = rt.block_on(async move {
        tokio::spawn(engine_pairs(addr, count, limit))
            .await
            .map_err(anyhow::Error::from)?
    })?;
    let v4 = raw::v4(&targets.addrs);
    let first = *v4.first().context("no IPv4 listener")?;
    let raw = raw::timings(first, count, Instant::now() + limit)?;
    Ok((gap(&engine), gap(&raw)))
}

pub fn run(rt: &Runtime, opts: &Opts) -> anyhow::Result<()> {
    let count = if opts.quick { 500 } else { 5_000 };
    let targets = Targets::spawn(1, 600)?;
    note(format!(
        "timing-truth: {count} sequential checks idle, then {count} with 2 busy threads"
    ));
    // Warm-up.
    measure(rt, &targets, 100)?;
    let (e_idle, r_idle) = measure(rt, &targets, count)?;
    let spinner = spawn_spinner(2, 120)?;
    let busy = measure(rt, &targets, count);
    drop(spinner);
    let (e_busy, r_busy) = busy?;

    let mut table = Table::new(
        "timing-truth: connect_us − tcpi_rtt on loopback, µs (one check at a time)",
        &["probe", "load", "samples", "p50", "p99", "max"],
    );
    for (probe, load, g) in [
        ("engine", "idle", e_idle),
        ("engine", "2 cores busy", e_busy),
        ("raw epoll", "idle", r_idle),
        ("raw epoll", "2 cores busy", r_busy),
    ] {
        table.row(vec![
            probe.into(),
            load.into(),
            g.n.to_string(),
            g.p50.to_string(),
            g.p99.to_string(),
            g.max.to_string(),
        ]);
    }
    let mut goal = Table::new("timing-truth: goals", &["goal", "measured", "met"]);
    goal.row(vec![
        format!("idle p50 ≤ {GOAL_IDLE_P50_US} µs"),
        format!("{} µs", e_idle.p50),
        met(e_idle.p50 <= GOAL_IDLE_P50_US),
    ]);
    goal.row(vec![
        format!("busy p99 ≤ {} ms", GOAL_BUSY_P99_US / 1000),
        format!("{} µs", e_busy.p99),
        met(e_busy.p99 <= GOAL_BUSY_P99_US),
    ]);
    let j = |g: &Gap| json!({"samples": g.n, "p50_us": g.p50, "p99_us": g.p99, "max_us": g.max});
    emit(
        "timing-truth",
        &[table, goal],
        json!({
            "unit": "us_connect_minus_tcpi_rtt",
            "checks": count,
            "engine_idle": j(&e_idle),
            "engine_busy": j(&e_busy),
            "raw_idle": j(&r_idle),
            "raw_busy": j(&r_busy),
            "goal_idle_p50_us": GOAL_IDLE_P50_US,
            "goal_busy_p99_us": GOAL_BUSY_P99_US,
            "met": e_idle.p50 <= GOAL_IDLE_P50_US && e_busy.p99 <= GOAL_BUSY_P99_US,
        }),
    );
    Ok(())
}
