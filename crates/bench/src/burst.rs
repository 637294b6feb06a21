//! Figure 2, burst throughput: successful checks per second with 1024 checks in
//! flight, the engine driven like the agent's runner, against the raw epoll loop
//! with the same 1024 in flight, on listeners spread over 127.0.0.1–127.0.0.64
//! so that neither the 4-tuple space nor one accept queue is the limit.
//! Goal: engine ≥ 20,000 checks/s (median of the runs).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::cpu_per_check::{Measured, raw_run, tokio_run};
use crate::drive::Probe;
use crate::raw;
use crate::report::{Table, emit, f, met, note};
use crate::stats::{median, round};
use crate::targets::Targets;

const GOAL_RATE: f64 = 20_000.0;
const IN_FLIGHT: usize = 1024;
const LISTENERS: usize = 64;

pub fn run(rt: &Runtime, opts: &Opts) -> anyhow::Result<()> {
    let runs = opts.runs.unwrap_or(if opts.quick { 1 } else { 3 });
    let total: u64 = if opts.quick { 5_000 } else { 60_000 };
    let limit = Duration::from_secs(if opts.quick { 10 } else { 30 });
    let targets = Targets::spawn(LISTENERS, 600)?;
    let v4 = raw::v4(&targets.addrs);
    let engine = Arc::new({
        let _enter = rt.enter();
        Probe::engine(&targets.addrs)?
    });
    note(format!(
        "burst: {runs} runs × {total} checks, {IN_FLIGHT} in flight, {LISTENERS} listeners"
    ));
    // Warm-up: the first 1024 sockets and tasks allocate.
    tokio_run(rt, &engine, 4_096.min(total), IN_FLIGHT, limit);

    let mut rows: Vec<(Measured, Measured)> = Vec::new();
    for i in 0..runs {
        let r = raw_run(&v4, total, IN_FLIGHT, limit)?;
        let e = tokio_run(rt, &engine, total, IN_FLIGHT, limit);
        note(format!(
            "burst run {}: raw {:.0}/s, engine {:.0}/s",
            i + 1,
            r.rate(),
            e.rate()
        ));
        for (name, m) in [("raw", &r), ("engine", &e)] {
            if let Some(err) = &m.stats.first_error {
                note(format!(
                    "burst: {name}: {} failed; first: {err}",
                    m.stats.failed
                ));
            }
        }
        rows.push((r, e));
    }
    let mut table = Table::new(
        format!("burst: successful checks/s with {IN_FLIGHT} in flight, {total} checks per run"),
        &[
            "run",
            "raw epoll /s",
            "engine /s",
            "engine/raw",
            "engine CPU µs/check",
            "failed (r/e)",
        ],
    );
    let mut ratios = Vec::new();
    for (i, (r, e)) in rows.iter().enumerate() {
        let ratio = e.rate() / r.rate().max(1e-9);
        ratios.push(ratio);
        table.row(vec![
            (i + 1).to_string(),
            f(r.rate(), 0),
            f(e.rate(), 0),
            f(ratio, 2),
            f(e.us_per_check(), 1),
            format!("{}/{}", r.stats.failed, e.stats.failed),
        ]);
    }
    let raw_rates: Vec<f64> = rows.iter().map(|r| r.0.rate()).collect();
    let eng_rates: Vec<f64> = rows.iter().map(|r| r.1.rate()).collect();
    let med = median(&eng_rates);
    table.row(vec![
        "median".into(),
        f(median(&raw_rates), 0),
        f(med, 0),
        f(median(&ratios), 2),
        f(
            median(&rows.iter().map(|r| r.1.us_per_check()).collect::<Vec<_>>()),
            1,
        ),
        String::new(),
    ]);
    let mut goal = Table::new("burst: goal", &["goal", "measured", "met"]);
    goal.row(vec![
        format!("engine ≥ {GOAL_RATE:.0} checks/s"),
        format!("{}/s", f(med, 0)),
        met(med >= GOAL_RATE),
    ]);
    let r0 = |v: &[f64]| v.iter().map(|x| round(*x, 0)).collect::<Vec<_>>();
    let failed: u64 = rows
        .iter()
        .map(|(r, e)| r.stats.failed + e.stats.failed)
        .sum();
    emit(
        "burst",
        &[table, goal],
        json!({
            "unit": "checks_per_s",
            "runs": runs,
            "checks_per_run": total,
            "in_flight": IN_FLIGHT,
            "listeners": LISTENERS,
            "raw_per_s": r0(&raw_rates),
            "engine_per_s": r0(&eng_rates),
            "median_raw_per_s": round(median(&raw_rates), 0),
            "median_engine_per_s": round(med, 0),
            "ratio_engine_raw": round(median(&ratios), 3),
            "goal_per_s": GOAL_RATE,
            "met": med >= GOAL_RATE,
            "failed": failed,
        }),
    );
    drop(targets);
    Ok(())
}
