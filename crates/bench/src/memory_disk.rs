//! Figure 7, memory and disk: a real coordinator process holding 100k monitors ×
//! 5 regions, its RSS and its sled store's size on disk, idle, with one agent
//! per region connected, and after rounds of simulated history (every monitor
//! reported once per region per round through the agent stream, as in the
//! ingest figure). One round is one minute of history at the template's 60 s
//! interval: `--history-rounds 60` writes a whole hour (30M results at 100k
//! monitors), sampling RSS and disk along the way. Bytes per stored result come
//! from the store's growth over the rounds; a day of history is extrapolated
//! from them (the store keeps 30 days by default).
//!
//! Also recorded: the coordinator's CPU while idle (agents connected, no
//! results: heartbeats and the re-evaluation of monitors whose verdict can go
//! stale), the encoded size of one region's assignment snapshot, and whether
//! an agent stream with tonic's default 4 MiB decode limit can receive it
//! (`portwatch-agent` raises its limit to 256 MiB).

use std::time::Duration;

use serde_json::json;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::ingest;
use crate::link::Link;
use crate::report::{Table, emit, f, note};
use crate::stats::round;
use crate::usage::{cpu_of, disk_usage, rss_kib};
use crate::world::World;

const REGIONS: usize = 5;
const INTERVAL_MS: u64 = 60_000;
/// tonic's default decode limit, which the agent keeps.
const DEFAULT_DECODE_LIMIT: usize = 4 * 1024 * 1024;

fn mib(bytes: u64) -> String {
    f(bytes as f64 / (1024.0 * 1024.0), 1)
}

pub fn run(rt: &Runtime, opts: &Opts) -> anyhow::Result<()> {
    let bin = opts.daemon("portwatch-coordinator")?;
    let monitors = opts
        .monitors
        .unwrap_or(if opts.quick { 5_000 } else { 100_000 });
    // One round is 500k results at 100k monitors: enough for bytes per result.
    let rounds: u64 = opts.history_rounds.unwrap_or(1).max(1);
    // RSS and disk are sampled about ten times along the way.
    let sample_every = rounds.div_ceil(10).max(1);
    rt.block_on(async move {
        let world = World::start(&bin, REGIONS, monitors, INTERVAL_MS).await?;
        let pid = world.pid();
        let data = world.data_dir();
        // Give the restarted coordinator a moment to load and settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle = rss_kib(pid).unwrap_or(0);
        let (disk_idle, _) = disk_usage(&data);
        note(format!(
            "memory-disk: {monitors} monitors loaded: RSS {} MiB, store {} MiB",
            mib(rss_idle * 1024),
            mib(disk_idle)
        ));

        let mut links = ingest::links(&world).await?;
        let snapshot_bytes = links.iter().map(|l| l.snapshot_bytes).max().unwrap_or(0);
        let rss_agents = rss_kib(pid).unwrap_or(0);
        // Background work with no traffic: heartbeats and the periodic
        // re-evaluation of every monitor (each second by default).
        let idle_secs = if opts.quick { 2 } else { 5 };
        let c0 = cpu_of(pid);
        let t0 = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(idle_secs)).await;
        let idle_cpu_pct = match (c0, cpu_of(pid)) {
            (Some(a), Some(b)) => {
                b.saturating_sub(a).as_secs_f64() * 100.0 / t0.elapsed().as_secs_f64()
            }
            _ => f64::NAN,
        };
        note(format!(
            "memory-disk: idle coordinator with {monitors} monitors and {REGIONS} agents: {idle_cpu_pct:.1} % of one core"
        ));
        let (disk_before, apparent_before) = disk_usage(&data);

        let mut acked = 0u64;
        let mut rates = Vec::new();
        let mut samples: Vec<(u64, u64, u64, u64)> = Vec::new();
        let history_started = std::time::Instant::now();
        for i in 0..rounds {
            let (l, r) = ingest::send_round(links, &world.monitors, monitors as u64, None, Some(pid)).await?;
            links = l;
            note(format!(
                "memory-disk round {}: {} results at {:.0}/s (p99 ack {} ms)",
                i + 1,
                r.acked,
                r.rate(),
                r.p99_us / 1000
            ));
            acked += r.acked;
            rates.push(r.rate());
            if (i + 1) % sample_every == 0 && i + 1 < rounds {
                let (disk, _) = disk_usage(&data);
                samples.push((i + 1, acked, rss_kib(pid).unwrap_or(0), disk));
            }
        }
        let history_secs = history_started.elapsed().as_secs_f64();
        // Let sled's background flusher finish before reading sizes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_history = rss_kib(pid).unwrap_or(0);
        let (disk_after, apparent_after) = disk_usage(&data);
        samples.push((rounds, acked, rss_history, disk_after));
        drop(links);

        // Can an agent with the default decode limit take this snapshot?
        tokio::time::sleep(Duration::from_secs(3)).await;
        let default_limit = match Link::connect(
            &world.coord,
            world.tokens.first().map_or("", String::as_str),
            "bench-default-limit",
            None,
        )
        .await
        {
            Ok(_) => "received".to_string(),
            Err(e) => format!("failed: {e:#}"),
        };
        note(format!(
            "memory-disk: a {snapshot_bytes}-byte snapshot with the default 4 MiB limit: {default_limit}"
        ));

        let per_result = disk_after.saturating_sub(disk_before) as f64 / acked.max(1) as f64;
        let per_result_apparent =
            apparent_after.saturating_sub(apparent_before) as f64 / acked.max(1) as f64;
        let per_hour = (monitors * REGIONS) as f64 * 3_600_000.0 / INTERVAL_MS as f64;
        let per_day = per_hour * 24.0;
        let mut table = Table::new(
            format!(
                "memory-disk: coordinator with {monitors} monitors × {REGIONS} regions ({} s interval)",
                INTERVAL_MS / 1000
            ),
            &["state", "RSS MiB", "store on disk MiB", "history rows"],
        );
        table.row(vec!["monitors loaded, no agent".into(), mib(rss_idle * 1024), mib(disk_idle), "0".into()]);
        table.row(vec![
            format!("{REGIONS} agents connected"),
            mib(rss_agents * 1024),
            mib(disk_before),
            "0".into(),
        ]);
        table.row(vec![
            format!("after {rounds} round(s) of history"),
            mib(rss_history * 1024),
            mib(disk_after),
            acked.to_string(),
        ]);
        let mut along = Table::new(
            "memory-disk: along the history (one round = one minute of results)",
            &["rounds", "results", "RSS MiB", "store on disk MiB"],
        );
        for (r, n, rss, disk) in &samples {
            along.row(vec![r.to_string(), n.to_string(), mib(rss * 1024), mib(*disk)]);
        }
        let mut growth = Table::new(
            "memory-disk: history growth (extrapolated from bytes per stored result)",
            &["quantity", "value"],
        );
        growth.row(vec![
            "coordinator CPU idle (agents connected, no results)".into(),
            format!("{} % of one core", f(idle_cpu_pct, 1)),
        ]);
        growth.row(vec!["bytes per result (allocated)".into(), f(per_result, 0)]);
        growth.row(vec!["bytes per result (apparent)".into(), f(per_result_apparent, 0)]);
        growth.row(vec!["results per hour".into(), f(per_hour, 0)]);
        growth.row(vec![
            "history per hour".into(),
            format!("{} GiB", f(per_hour * per_result / 1024f64.powi(3), 2)),
        ]);
        growth.row(vec![
            "history per day".into(),
            format!("{} GiB", f(per_day * per_result / 1024f64.powi(3), 1)),
        ]);
        growth.row(vec![
            "snapshot per region (encoded)".into(),
            format!("{} MiB ({} bytes)", mib(snapshot_bytes as u64), snapshot_bytes),
        ]);
        growth.row(vec![
            "snapshot through the default 4 MiB limit".into(),
            if snapshot_bytes > DEFAULT_DECODE_LIMIT {
                "too large".into()
            } else {
                "fits".into()
            },
        ]);
        emit(
            "memory-disk",
            &[table, along, growth],
            json!({
                "monitors": monitors,
                "regions": REGIONS,
                "interval_ms": INTERVAL_MS,
                "rounds": rounds,
                "history_results": acked,
                "history_write_s": round(history_secs, 1),
                "samples": samples
                    .iter()
                    .map(|(r, n, rss, disk)| json!({"rounds": r, "results": n, "rss_kib": rss, "disk_bytes": disk}))
                    .collect::<Vec<_>>(),
                "rss_idle_kib": rss_idle,
                "rss_agents_kib": rss_agents,
                "rss_history_kib": rss_history,
                "idle_cpu_pct": round(idle_cpu_pct, 1),
                "disk_idle_bytes": disk_idle,
                "disk_before_history_bytes": disk_before,
                "disk_after_history_bytes": disk_after,
                "bytes_per_result": round(per_result, 1),
                "bytes_per_result_apparent": round(per_result_apparent, 1),
                "history_bytes_per_hour": round(per_hour * per_result, 0),
                "history_bytes_per_day": round(per_day * per_result, 0),
                "ingest_per_s": rates.iter().map(|x| round(*x, 0)).collect::<Vec<_>>(),
                "snapshot_bytes": snapshot_bytes,
                "snapshot_over_default_decode_limit": snapshot_bytes > DEFAULT_DECODE_LIMIT,
                "default_limit_agent": default_limit,
            }),
        );
        Ok(())
    })
}
