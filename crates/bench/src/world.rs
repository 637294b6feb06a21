//! A real coordinator process (TLS, temp data dir, the e2e harness's process
//! and certificate helpers) holding many monitors, for the ingest and
//! memory-disk figures.
//!
//! The coordinator runs with the production defaults for every timer
//! (heartbeats 5 s/15 s, consensus re-evaluation of every monitor each 1 s):
//! the harness's own launcher shortens them for tests (re-evaluation every
//! 200 ms), which would charge five times the background work to the figures.
//!
//! Tenant, regions and agent tokens go through the admin API. So does one
//! monitor, the template; the rest are copies of it written straight into the
//! stopped coordinator's sled store with its own `Store`, then the coordinator
//! is started again on that store. Why: `CreateMonitor` flushes once per
//! monitor, so 100k monitors through the API take over a minute even now that
//! it no longer re-reads every monitor (it used to take hours; see "CreateMonitor
//! at scale" in BENCHMARKS.md); what the figures measure (ingest, consensus,
//! memory, disk) does not depend on how the monitors got there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use portwatch_coordinator::store::Store;
use portwatch_e2e::{Coordinator, OPERATOR_TOKEN, Proc, Setup, TestCert};
use portwatch_proto::v1;

use crate::report::note;

/// Plan limits high enough for any figure.
pub const PLANS: &str =
    "[plans.enterprise]\nport_monitors = true\nmax_monitors = 1000000\nmin_interval = \"1s\"\n";

/// A coordinator with a tenant, public regions `r0…`, and monitors in all of them.
pub struct World {
    pub coord: Coordinator,
    pub dir: tempfile::TempDir,
    /// One agent token per region.
    pub tokens: Vec<String>,
    pub monitors: Vec<String>,
}

impl World {
    /// The coordinator's sled directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("coordinator").join("data")
    }

    pub fn pid(&self) -> u32 {
        self.coord.proc.child.id()
    }

    pub async fn start(
        bin: &Path,
        regions: usize,
        monitors: usize,
        interval_ms: u64,
    ) -> anyhow::Result<World> {
        if monitors == 0 {
            bail!("at least one monitor");
        }
        let dir = tempfile::tempdir().context("temp dir")?;
        let coord_dir = dir.path().join("coordinator");
        std::fs::create_dir_all(&coord_dir).context("coordinator dir")?;
        let mut coord = launch(bin, &coord_dir, None)?;
        let mut op = coord.admin(OPERATOR_TOKEN).await;
        let (_, tenant_token) = Setup::tenant(&mut op, "bench", v1::Plan::Enterprise).await;
        let names: Vec<String> = (0..regions).map(|i| format!("r{i}")).collect();
        let mut tokens = Vec::new();
        for r in &names {
            Setup::region(&mut op, r, "").await;
            tokens.push(Setup::agent_token(&mut op, r).await);
        }
        let mut tenant = coord.admin(&tenant_token).await;
        let template = tenant
            .create_monitor(v1::CreateMonitorRequest {
                name: "bench template".into(),
                // Never checked (the agents are the bench's links): any public name.
                host: "db-0.bench.portwatch.net".into(),
                port: 5432,
                regions: names.clone(),
                interval_ms,
                timeout_ms: 3_000,
                ..Default::default()
            })
            .await
            .context("creating the template monitor")?
            .into_inner();
        drop(op);
        drop(tenant);

        // Stop, write the copies, start again on the same store.
        if coord.proc.terminate(Duration::from_secs(30)).is_none() {
            bail!("the coordinator did not stop within 30 s");
        }
        let began = std::time::Instant::now();
        let mut ids = vec![template.id.clone()];
        ids.extend(write_copies(&coord_dir.join("data"), &template, monitors - 1).await?);
        note(format!(
            "world: {monitors} monitors × {regions} regions written in {:.1} s",
            began.elapsed().as_secs_f64()
        ));
        let coord = launch(bin, &coord_dir, Some((coord.cert, coord.addr)))?;
        Ok(World {
            coord,
            dir,
            tokens,
            monitors: ids,
        })
    }
}

/// Writes `n` copies of `template` (ids `mon-bench-0000001`…, distinct names
/// and hosts, same tenant) into the sled store at `data`, which no running
/// coordinator may hold, with the coordinator's own `Store`; flushes. Returns
/// their ids.
pub async fn write_copies(
    data: &Path,
    template: &v1::Monitor,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let store = Store::open(data).context("opening the stopped coordinator's store")?;
    let mut ids = Vec::with_capacity(n);
    let mut chunk = Vec::with_capacity(1_000);
    for i in 1..=n {
        let mut m = template.clone();
        m.id = format!("mon-bench-{i:07}");
        m.name = format!("bench {i}");
        m.host = format!("db-{i}.bench.portwatch.net");
        ids.push(m.id.clone());
        chunk.push(m);
        if chunk.len() == chunk.capacity() || i == n {
            // One transaction per thousand: per monitor, a transaction costs
            // more than its writes.
            store.put_monitors(&chunk).context("writing monitors")?;
            chunk.clear();
        }
    }
    store.flush().await.context("flushing the store")?;
    Ok(ids)
}

/// Starts a coordinator on `dir` with production timer defaults; `again` reuses
/// the certificate and address of a previous run on the same directory.
pub fn launch(
    bin: &Path,
    dir: &Path,
    again: Option<(TestCert, std::net::SocketAddr)>,
) -> anyhow::Result<Coordinator> {
    let (cert, listen) = match again {
        Some((cert, addr)) => (cert, addr.to_string()),
        None => (TestCert::generate(dir), "127.0.0.1:0".to_string()),
    };
    let config = dir.join("coordinator.toml");
    let text = format!(
        "listen = \"{listen}\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\noperator_token = \"{OPERATOR_TOKEN}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{PLANS}",
        dir.join("data").display(),
        cert.cert.display(),
        cert.key.display(),
    );
    std::fs::write(&config, text).context("writing the coordinator config")?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--config")
        .arg(&config)
        .env("PORTWATCH_LOG", "warn");
    let mut proc = Proc::spawn("coordinator", cmd);
    // Loading 100k monitors takes a while on a busy machine.
    let metrics_line = proc.wait_line("metrics on http://", Duration::from_secs(120));
    let metrics = metrics_line
        .rsplit("http://")
        .next()
        .and_then(|s| s.trim_end_matches("/metrics").parse().ok());
    let line = proc.wait_line("listening on https://", Duration::from_secs(120));
    let addr = line
        .rsplit("https://")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .context("no listen address in the coordinator's output")?;
    Ok(Coordinator {
        bin: bin.to_path_buf(),
        dir: dir.to_path_buf(),
        cert,
        addr,
        metrics,
        extra: PLANS.to_string(),
        proc,
        tmpfs_mib: None,
        database: None,
    })
}
