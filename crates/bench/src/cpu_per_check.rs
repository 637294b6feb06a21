//! Figure 1, CPU per check at saturation: the agent's check engine against the
//! raw epoll baseline and a minimal tokio loop, on the same loopback listeners,
//! in the same run, interleaved (raw, tokio, engine, raw, …) so that machine
//! noise lands on all three alike.
//!
//! CPU is `getrusage(RUSAGE_SELF)` user + system over the measured checks (the
//! listeners run in another process and are not charged). Goal: engine ≤ 1.3×
//! raw, taken as the median of the per-run ratios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::drive::{self, Probe, RunStats};
use crate::raw;
use crate::report::{Table, emit, f, met, note};
use crate::stats::{median, round};
use crate::targets::Targets;
use crate::usage::{cpu_of, cpu_self};

const GOAL_RATIO: f64 = 1.3;
const IN_FLIGHT: usize = 64;
const LISTENERS: usize = 16;

/// One measured run of one probe.
#[derive(Clone, Debug)]
pub struct Measured {
    pub stats: RunStats,
    pub cpu: Duration,
}

impl Measured {
    pub fn checks(&self) -> u64 {
        self.stats.ok + self.stats.failed
    }

    /// CPU µs per check.
    pub fn us_per_check(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.checks().max(1) as f64
    }

    /// Successful checks per second of wall time.
    pub fn rate(&self) -> f64 {
        self.stats.ok as f64 / self.stats.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs a tokio probe on `rt` (the loop itself on a worker, as in the agent).
pub fn tokio_run(
    rt: &Runtime,
    probe: &Arc<Probe>,
    total: u64,
    in_flight: usize,
    limit: Duration,
) -> Measured {
    let probe = probe.clone();
    let c0 = cpu_self();
    let stats = rt.block_on(async move {
        let deadline = Instant::now() + limit;
        tokio::spawn(drive::saturate(probe, total, in_flight, deadline))
            .await
            .unwrap_or_default()
    });
    Measured {
        stats,
        cpu: cpu_self().saturating_sub(c0),
    }
}

/// Runs the raw baseline on this thread.
pub fn raw_run(
    targets: &[std::net::SocketAddrV4],
    total: u64,
    in_flight: usize,
    limit: Duration,
) -> anyhow::Result<Measured> {
    let c0 = cpu_self();
    let stats = raw::saturate(targets, total, in_flight, Instant::now() + limit)?;
    Ok(Measured {
        stats: RunStats {
            ok: stats.ok,
            failed: stats.failed,
            wall: stats.wall,
            first_error: stats
                .first_error
                .map(|e| std::io::Error::from_raw_os_error(e).to_string()),
        },
        cpu: cpu_self().saturating_sub(c0),
    })
}

pub fn run(rt: &Runtime, opts: &Opts) -> anyhow::Result<()> {
    let runs = opts.runs.unwrap_or(if opts.quick { 1 } else { 5 });
    let total: u64 = if opts.quick { 2_000 } else { 40_000 };
    let warmup: u64 = if opts.quick { 200 } else { 2_000 };
    let limit = Duration::from_secs(if opts.quick { 10 } else { 30 });
    let targets = Targets::spawn(LISTENERS, 600)?;
    let v4 = raw::v4(&targets.addrs);
    let engine = Arc::new({
        let _enter = rt.enter();
        Probe::engine(&targets.addrs)?
    });
    let minimal = Arc::new(Probe::tokio_min(&targets.addrs));
    note(format!(
        "cpu-per-check: {runs} runs × {total} checks per probe, {IN_FLIGHT} in flight, {LISTENERS} listeners"
    ));

    raw_run(&v4, warmup, IN_FLIGHT, limit)?;
    tokio_run(rt, &minimal, warmup, IN_FLIGHT, limit);
    tokio_run(rt, &engine, warmup, IN_FLIGHT, limit);

    let listener0 = cpu_of(targets.pid());
    let mut rows: Vec<(Measured, Measured, Measured)> = Vec::new();
    for i in 0..runs {
        let r = raw_run(&v4, total, IN_FLIGHT, limit)?;
        let t = tokio_run(rt, &minimal, total, IN_FLIGHT, limit);
        let e = tokio_run(rt, &engine, total, IN_FLIGHT, limit);
        note(format!(
            "cpu-per-check run {}: raw {:.1} µs, tokio {:.1} µs, engine {:.1} µs",
            i + 1,
            r.us_per_check(),
            t.us_per_check(),
            e.us_per_check()
        ));
        for (name, m) in [("raw", &r), ("tokio", &t), ("engine", &e)] {
            if let Some(err) = &m.stats.first_error {
                note(format!(
                    "cpu-per-check: {name}: {} failed; first: {err}",
                    m.stats.failed
                ));
            }
        }
        rows.push((r, t, e));
    }

    // The accepting side, in its own process: context for the figures, not in them.
    let listener_us = match (listener0, cpu_of(targets.pid())) {
        (Some(a), Some(b)) => {
            let checks: u64 = rows
                .iter()
                .map(|(r, t, e)| r.checks() + t.checks() + e.checks())
                .sum();
            Some(round(
                b.saturating_sub(a).as_secs_f64() * 1e6 / checks.max(1) as f64,
                2,
            ))
        }
        _ => None,
    };
    let mut table = Table::new(
        format!(
            "cpu-per-check: CPU µs per check (user+sys, RUSAGE_SELF), {total} checks per run, {IN_FLIGHT} in flight"
        ),
        &[
            "run",
            "raw epoll",
            "tokio minimal",
            "engine",
            "engine/raw",
            "tokio/raw",
            "engine checks/s",
            "failed (r/t/e)",
        ],
    );
    let us = |m: &Measured| m.us_per_check();
    let mut ratio_e = Vec::new();
    let mut ratio_t = Vec::new();
    for (i, (r, t, e)) in rows.iter().enumerate() {
        let re = us(e) / us(r);
        let rt_ = us(t) / us(r);
        ratio_e.push(re);
        ratio_t.push(rt_);
        table.row(vec![
            (i + 1).to_string(),
            f(us(r), 1),
            f(us(t), 1),
            f(us(e), 1),
            f(re, 2),
            f(rt_, 2),
            f(e.rate(), 0),
            format!("{}/{}/{}", r.stats.failed, t.stats.failed, e.stats.failed),
        ]);
    }
    let col = |pick: fn(&(Measured, Measured, Measured)) -> &Measured| -> Vec<f64> {
        rows.iter().map(|row| pick(row).us_per_check()).collect()
    };
    let raw_us = col(|r| &r.0);
    let tok_us = col(|r| &r.1);
    let eng_us = col(|r| &r.2);
    let med_ratio = median(&ratio_e);
    table.row(vec![
        "median".into(),
        f(median(&raw_us), 1),
        f(median(&tok_us), 1),
        f(median(&eng_us), 1),
        f(med_ratio, 2),
        f(median(&ratio_t), 2),
        f(
            median(&rows.iter().map(|r| r.2.rate()).collect::<Vec<_>>()),
            0,
        ),
        String::new(),
    ]);
    let mut goal = Table::new("cpu-per-check: goal", &["goal", "measured", "met"]);
    goal.row(vec![
        format!("engine ≤ {GOAL_RATIO}× raw"),
        format!("{}×", f(med_ratio, 2)),
        met(med_ratio <= GOAL_RATIO),
    ]);
    let failed: u64 = rows
        .iter()
        .map(|(r, t, e)| r.stats.failed + t.stats.failed + e.stats.failed)
        .sum();
    let r2 = |v: &[f64]| v.iter().map(|x| round(*x, 2)).collect::<Vec<_>>();
    emit(
        "cpu-per-check",
        &[table, goal],
        json!({
            "unit": "cpu_us_per_check",
            "runs": runs,
            "checks_per_run": total,
            "in_flight": IN_FLIGHT,
            "listeners": LISTENERS,
            "raw_us": r2(&raw_us),
            "tokio_us": r2(&tok_us),
            "engine_us": r2(&eng_us),
            "median_raw_us": round(median(&raw_us), 2),
            "median_tokio_us": round(median(&tok_us), 2),
            "median_engine_us": round(median(&eng_us), 2),
            "ratio_engine_raw": round(med_ratio, 3),
            "ratio_tokio_raw": round(median(&ratio_t), 3),
            "goal_ratio": GOAL_RATIO,
            "met": med_ratio <= GOAL_RATIO,
            "failed": failed,
            "listener_process_us_per_check": listener_us,
        }),
    );
    drop(targets);
    Ok(())
}
