//! `postgres`: the PostgreSQL backend beside sled, in the same run, on a private server with
//! `fsync` on (what a durable commit costs is the figure; the test suites run theirs with it off).
//!
//! Measured:
//! 1. store ingest: `Store::ingest` from 5 concurrent writers in batches of 500, each batch
//!    durable before the call returns — sled (flushed) and PostgreSQL (committed), the same
//!    batches; results per second and per-batch latency;
//! 2. bytes per stored result: PostgreSQL's `history` partitions (heap, TOAST and indexes) over
//!    their rows; sled's whole store over its history rows;
//! 3. `CreateMonitor` calls per second through the admin API of a real coordinator process, on
//!    sled and on PostgreSQL;
//! 4. takeover: two coordinator processes on one database (`lease_ttl` 2 s), the active one
//!    killed with SIGKILL, time until the standby answers the admin API as the active one.
//!
//! What one machine cannot show: more coordinators do not add throughput here (one is active;
//! ARCHITECTURE.md, "The PostgreSQL backend"), and the database shares the two cores with the
//! coordinator and the load generator.

use std::time::{Duration, Instant};

use anyhow::Context;
use portwatch_coordinator::store::Store;
use portwatch_coordinator::store::postgres::{PgSettings, PgStore};
use portwatch_e2e::external::{Postgres, postgres_durable};
use portwatch_e2e::{Admin, Coordinator, OPERATOR_TOKEN, Setup};
use portwatch_proto::v1;
use serde_json::json;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::ingest::{Round, store_only_on};
use crate::report::{Table, emit, f, note};

const LEASE_TTL_MS: u64 = 2_000;

fn settings(pg: &Postgres) -> PgSettings {
    PgSettings {
        url: pg.url(),
        ca_file: None,
        password: Some(pg.password().to_string()),
        pool_size: 8,
    }
}

async fn history_bytes(pg: &Postgres) -> anyhow::Result<(i64, i64)> {
    let client =
        portwatch_coordinator::store::postgres::connect(&pg.url(), None, Some(pg.password()))
            .await
            .context("connecting")?;
    let bytes: i64 = client
        .query_one(
            "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'history'::regclass",
            &[],
        )
        .await?
        .get(0);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM history", &[])
        .await?
        .get(0);
    Ok((bytes, rows))
}

/// `n` sequential CreateMonitor calls; calls per second.
async fn creates(admin: &mut Admin, tag: &str, n: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    for i in 0..n {
        admin
            .create_monitor(v1::CreateMonitorRequest {
                name: format!("{tag} {i}"),
                host: format!("{tag}-{i}.bench.portwatch.net"),
                port: 443,
                regions: vec!["r0".into()],
                interval_ms: 60_000,
                timeout_ms: 3_000,
                ..Default::default()
            })
            .await
            .with_context(|| format!("CreateMonitor {} ({tag})", i + 1))?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}

/// A tenant and a region on `coord`; the tenant's admin client.
async fn tenant_on(coord: &Coordinator) -> anyhow::Result<Admin> {
    let mut op = coord.admin(OPERATOR_TOKEN).await;
    let (_, token) = Setup::tenant(&mut op, "bench", v1::Plan::Enterprise).await;
    Setup::region(&mut op, "r0", "").await;
    Ok(coord.admin(&token).await)
}

fn plans() -> &'static str {
    crate::world::PLANS
}

fn pg_config(pg: &Postgres, dir: &std::path::Path, id: &str) -> anyhow::Result<String> {
    let pw = dir.join("pg-password");
    std::fs::write(&pw, pg.password()).context("password file")?;
    Ok(format!(
        "store = \"postgres\"\npostgres_url = \"{}\"\npostgres_password_file = \"{}\"\ncoordinator_id = \"{id}\"\nlease_ttl = \"{LEASE_TTL_MS}ms\"\n{}",
        pg.url(),
        pw.display(),
        plans()
    ))
}

/// Waits until `coord` answers the admin API (it is the active one); None after `limit`.
async fn answers_within(coord: &Coordinator, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let mut op = coord.admin(OPERATOR_TOKEN).await;
        if op
            .list_regions(v1::ListRegionsRequest::default())
            .await
            .is_ok()
        {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

pub fn run(rt: &Runtime, opts: &Opts) -> anyhow::Result<()> {
    let bin = opts.daemon("portwatch-coordinator")?;
    let runs = opts.runs.unwrap_or(if opts.quick { 1 } else { 3 });
    let per_region: u64 = if opts.quick { 2_000 } else { 20_000 };
    let n_creates = opts.creates.unwrap_or(if opts.quick { 50 } else { 500 });
    let monitors: Vec<String> = (0..10_000).map(|i| format!("mon-bench-{i:07}")).collect();
    rt.block_on(async move {
        let pg = postgres_durable();
        let pg_store = Store::new(
            PgStore::open(settings(&pg))
                .await
                .context("opening the PostgreSQL store")?,
        );

        // 1. Store ingest, sled and PostgreSQL, interleaved.
        let mut rows: Vec<(Round, Round)> = Vec::new();
        let mut sled_bytes = (0u64, 0usize);
        for i in 0..runs {
            let dir = tempfile::tempdir().context("temp dir")?;
            let sled = Store::open(dir.path()).context("scratch sled store")?;
            let s = store_only_on(sled.clone(), &monitors, per_region, i).await?;
            sled.flush().await?;
            sled_bytes = (sled.size_on_disk(), sled.history_len());
            sled.close_detached();
            let p = store_only_on(pg_store.clone(), &monitors, per_region, i).await?;
            note(format!(
                "postgres run {}: sled {:.0} results/s, PostgreSQL {:.0} results/s",
                i + 1,
                s.rate(),
                p.rate()
            ));
            rows.push((s, p));
        }
        let (pg_hist_bytes, pg_hist_rows) = history_bytes(&pg).await?;
        pg_store.close_detached();

        // 3. CreateMonitor through the API, sled then PostgreSQL.
        let dir = tempfile::tempdir().context("temp dir")?;
        let sled_dir = dir.path().join("sled");
        std::fs::create_dir_all(&sled_dir)?;
        let sled_coord = Coordinator::start(&bin, &sled_dir, plans());
        let mut t = tenant_on(&sled_coord).await?;
        let sled_creates = creates(&mut t, "sled", n_creates).await?;
        drop(sled_coord);
        let a_dir = dir.path().join("a");
        std::fs::create_dir_all(&a_dir)?;
        let mut a = Coordinator::start(&bin, &a_dir, &pg_config(&pg, &a_dir, "bench-a")?);
        let mut t = tenant_on(&a).await?;
        let pg_creates = creates(&mut t, "pg", n_creates).await?;
        note(format!(
            "CreateMonitor: sled {sled_creates:.0}/s, PostgreSQL {pg_creates:.0}/s"
        ));

        // 4. Takeover: a standby beside the active one; kill the active one.
        let b_dir = dir.path().join("b");
        std::fs::create_dir_all(&b_dir)?;
        let mut b = Coordinator::start_with_cert(
            &bin,
            &b_dir,
            &pg_config(&pg, &b_dir, "bench-b")?,
            &a.cert,
        );
        let mut takeovers = Vec::new();
        for round in 0..runs.max(3) {
            let (active, standby) = if round % 2 == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            answers_within(active, Duration::from_secs(30))
                .await
                .context("the active coordinator does not answer")?;
            active.proc.kill9();
            let took = answers_within(standby, Duration::from_secs(60))
                .await
                .context("no takeover within 60 s")?;
            takeovers.push(took);
            note(format!(
                "takeover {}: {:.2} s",
                round + 1,
                took.as_secs_f64()
            ));
            active.restart();
        }
        drop((a, b));

        let mut table = Table::new(
            "postgres: the PostgreSQL backend beside sled (fsync on, 2 cores shared with the load)",
            &["what", "sled", "PostgreSQL"],
        );
        for (i, (s, p)) in rows.iter().enumerate() {
            table.row(vec![
                format!("store ingest run {}, results/s (batch p99 ms)", i + 1),
                format!("{:.0} ({})", s.rate(), f(s.p99_us as f64 / 1000.0, 1)),
                format!("{:.0} ({})", p.rate(), f(p.p99_us as f64 / 1000.0, 1)),
            ]);
        }
        let sled_bpr = sled_bytes.0 as f64 / sled_bytes.1.max(1) as f64;
        let pg_bpr = pg_hist_bytes as f64 / pg_hist_rows.max(1) as f64;
        table.row(vec![
            "bytes per stored result".into(),
            format!("{sled_bpr:.0} (whole store)"),
            format!("{pg_bpr:.0} (history partitions with indexes)"),
        ]);
        table.row(vec![
            format!("CreateMonitor calls/s ({n_creates} sequential)"),
            format!("{sled_creates:.0}"),
            format!("{pg_creates:.0}"),
        ]);
        let ms: Vec<String> = takeovers
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect();
        table.row(vec![
            format!(
                "kill -9 of the active coordinator → standby active, s (lease_ttl {} s)",
                LEASE_TTL_MS / 1000
            ),
            "—".into(),
            ms.join(", "),
        ]);
        let json = json!({
            "sled_ingest_per_s": rows.iter().map(|(s, _)| s.rate().round()).collect::<Vec<_>>(),
            "postgres_ingest_per_s": rows.iter().map(|(_, p)| p.rate().round()).collect::<Vec<_>>(),
            "sled_bytes_per_result": sled_bpr.round(),
            "postgres_bytes_per_result": pg_bpr.round(),
            "sled_create_monitor_per_s": sled_creates.round(),
            "postgres_create_monitor_per_s": pg_creates.round(),
            "takeover_s": takeovers.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "lease_ttl_ms": LEASE_TTL_MS,
        });
        emit("postgres", &[table], json);
        Ok(())
    })
}
