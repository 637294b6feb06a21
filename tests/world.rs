//! One way to set up "a coordinator with a tenant, some regions, their agent
//! tokens, maybe agents and monitors", shared by every test crate.
//!
//! Each suite used to write this set-up itself, each a little differently (its
//! own plans, its own token lists); a builder keeps the differences where a
//! reader can see them (`.plans(..)`, `.public_regions(..)`) and the sameness
//! in one place:
//!
//! ```ignore
//! let w = World::builder()
//!     .public_regions(&["eu", "us", "ap"])
//!     .agents()
//!     .start()
//!     .await;
//! ```
//!
//! The coordinator is a real process in a temp dir (removed when the world is
//! dropped); the operator and the first tenant get admin clients, the others a
//! token each.

use std::path::{Path, PathBuf};

use portwatch_proto::v1;

use crate::{Admin, Coordinator, FakeAgent, OPERATOR_TOKEN, Setup};

/// Plans for fast tests: the enterprise plan allows 1 s intervals and many
/// monitors.
pub const FAST_PLANS: &str =
    "[plans.enterprise]\nport_monitors = true\nmax_monitors = 1000\nmin_interval = \"1s\"\n";

/// The tenant every world creates first.
pub const TENANT: &str = "acme";

/// A binary of this workspace in the target directory the running test was
/// built into (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
/// `cargo test --workspace` builds it; a narrower build may need
/// `cargo build --bins` first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: run `cargo build --workspace --bins` first \
         (`cargo test --workspace` builds it)",
        path.display()
    );
    path
}

/// One region of a world.
pub struct RegionInfo {
    pub name: String,
    /// An agent token for this region.
    pub token: String,
    /// Owned by the first tenant: its agents may probe loopback targets.
    pub private: bool,
}

/// A tenant beyond the first, with its token.
pub struct TenantInfo {
    pub id: String,
    pub token: String,
}

/// A running coordinator and what the builder set up in it.
pub struct World {
    pub coord: Coordinator,
    /// The operator's admin client.
    pub op: Admin,
    /// The first tenant's admin client.
    pub tenant: Admin,
    pub tenant_id: String,
    pub tenant_token: String,
    /// Further tenants, in the order they were asked for.
    pub others: Vec<TenantInfo>,
    /// Private regions first (`r0`, `r1`, …), then public ones, in order.
    pub regions: Vec<RegionInfo>,
    /// One connected fake agent per region (`agent-{region}`), when asked for.
    pub agents: Vec<FakeAgent>,
    /// The monitors asked for with [`WorldBuilder::monitors`].
    pub monitors: Vec<v1::Monitor>,
    /// The world's temp dir; the coordinator's data lives in `coordinator/`.
    pub dir: tempfile::TempDir,
}

/// What [`World::builder`] will set up; see the module docs.
pub struct WorldBuilder {
    coordinator_bin: Option<PathBuf>,
    config: String,
    plans: String,
    tenant: (String, v1::Plan),
    others: Vec<(String, v1::Plan)>,
    private_regions: usize,
    public_regions: Vec<String>,
    agents: bool,
    monitors: Option<(usize, String, u16, u64)>,
    open_file_limit: Option<u64>,
    tmpfs_mib: Option<u64>,
}

impl World {
    /// A coordinator with the tenant `acme` (enterprise) and [`FAST_PLANS`],
    /// unless the builder is told otherwise.
    pub fn builder() -> WorldBuilder {
        WorldBuilder {
            coordinator_bin: None,
            config: String::new(),
            plans: FAST_PLANS.to_string(),
            tenant: (TENANT.to_string(), v1::Plan::Enterprise),
            others: Vec::new(),
            private_regions: 0,
            public_regions: Vec::new(),
            agents: false,
            monitors: None,
            open_file_limit: None,
            tmpfs_mib: None,
        }
    }

    /// The end-to-end suite's usual world: `private_regions` regions owned by
    /// the tenant, `extra` top-level keys in the coordinator's config.
    pub async fn start(private_regions: usize, extra: &str) -> World {
        World::builder()
            .config(extra)
            .private_regions(private_regions)
            .start()
            .await
    }

    /// Creates a region (public when `owner` is empty) and an agent token for
    /// it; returns its index in [`World::regions`].
    pub async fn add_region(&mut self, name: &str, owner: &str) -> usize {
        Setup::region(&mut self.op, name, owner).await;
        let token = Setup::agent_token(&mut self.op, name).await;
        self.regions.push(RegionInfo {
            name: name.to_string(),
            token,
            private: !owner.is_empty(),
        });
        self.regions.len() - 1
    }

    /// The names of the first `n` regions.
    pub fn names(&self, n: usize) -> Vec<String> {
        self.regions
            .iter()
            .take(n)
            .map(|r| r.name.clone())
            .collect()
    }

    /// The token of a tenant created by the builder (the first one included).
    pub fn token_of(&self, tenant: &str) -> &str {
        if tenant == self.tenant_id {
            return &self.tenant_token;
        }
        self.others
            .iter()
            .find(|t| t.id == tenant)
            .map(|t| t.token.as_str())
            .unwrap_or_else(|| panic!("no tenant {tenant:?} in this world"))
    }

    /// A fresh admin client presenting `token`.
    pub async fn admin(&self, token: &str) -> Admin {
        self.coord.admin(token).await
    }

    /// Connects one fake agent per region (`agent-{region}`), each sending
    /// heartbeats until dropped.
    pub async fn connect_agents(&self) -> Vec<FakeAgent> {
        let mut v = Vec::new();
        for r in &self.regions {
            let a = FakeAgent::connect(&self.coord, &r.token, &format!("agent-{}", r.name))
                .await
                .expect("agent connects");
            a.keepalive();
            v.push(a);
        }
        v
    }

    /// Creates `n` monitors `m0..` of `host:port` in every region of the world,
    /// checked every `interval_ms` with a 1 s timeout, as the first tenant.
    pub async fn create_monitors(
        &mut self,
        n: usize,
        host: &str,
        port: u16,
        interval_ms: u64,
    ) -> Vec<v1::Monitor> {
        let regions: Vec<String> = self.regions.iter().map(|r| r.name.clone()).collect();
        let mut out = Vec::new();
        for i in 0..n {
            let m = self
                .tenant
                .create_monitor(v1::CreateMonitorRequest {
                    name: format!("m{i}"),
                    host: host.into(),
                    port: u32::from(port),
                    regions: regions.clone(),
                    interval_ms,
                    timeout_ms: 1_000,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("create monitor m{i}: {:?} {}", e.code(), e.message()))
                .into_inner();
            out.push(m);
        }
        out
    }

    /// Fresh admin clients for the operator and the first tenant (after the
    /// coordinator was restarted).
    pub async fn reconnect(&mut self) {
        self.op = self.coord.admin(OPERATOR_TOKEN).await;
        self.tenant = self.coord.admin(&self.tenant_token).await;
    }
}

impl WorldBuilder {
    /// The coordinator binary (default: `portwatch-coordinator` beside the
    /// test, see [`workspace_bin`]).
    pub fn coordinator_bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.coordinator_bin = Some(bin.into());
        self
    }

    /// Top-level keys of the coordinator's TOML (written before the plans).
    pub fn config(mut self, extra: &str) -> Self {
        self.config = extra.to_string();
        self
    }

    /// The `[plans.*]` tables (instead of [`FAST_PLANS`]).
    pub fn plans(mut self, plans: &str) -> Self {
        self.plans = plans.to_string();
        self
    }

    /// The first tenant (instead of `acme` on enterprise).
    pub fn tenant(mut self, id: &str, plan: v1::Plan) -> Self {
        self.tenant = (id.to_string(), plan);
        self
    }

    /// A further tenant; its token is in [`World::others`].
    pub fn other_tenant(mut self, id: &str, plan: v1::Plan) -> Self {
        self.others.push((id.to_string(), plan));
        self
    }

    /// `n` regions `r0..r{n-1}` owned by the first tenant (self-hosted
    /// probes, whose agents may check loopback targets).
    pub fn private_regions(mut self, n: usize) -> Self {
        self.private_regions = n;
        self
    }

    /// Public regions with these names.
    pub fn public_regions(mut self, names: &[&str]) -> Self {
        self.public_regions = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// One connected fake agent per region, in [`World::agents`].
    pub fn agents(mut self) -> Self {
        self.agents = true;
        self
    }

    /// `n` monitors of `host:port` in every region (see
    /// [`World::create_monitors`]), in [`World::monitors`].
    pub fn monitors(mut self, n: usize, host: &str, port: u16, interval_ms: u64) -> Self {
        self.monitors = Some((n, host.to_string(), port, interval_ms));
        self
    }

    /// Starts the coordinator with this open-file limit (see
    /// [`Coordinator::start_with_open_file_limit`]).
    pub fn open_file_limit(mut self, limit: u64) -> Self {
        self.open_file_limit = Some(limit);
        self
    }

    /// Keeps the coordinator's store on a tmpfs of `mib` MiB (see
    /// [`Coordinator::start_in_tmpfs`]).
    pub fn tmpfs(mut self, mib: u64) -> Self {
        self.tmpfs_mib = Some(mib);
        self
    }

    /// Starts the coordinator and sets everything up.
    pub async fn start(self) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let coord_dir = dir.path().join("coordinator");
        std::fs::create_dir_all(&coord_dir).expect("coordinator dir");
        let bin = self
            .coordinator_bin
            .unwrap_or_else(|| workspace_bin("portwatch-coordinator"));
        let config = format!("{}\n{}", self.config, self.plans);
        let coord = match (self.open_file_limit, self.tmpfs_mib) {
            (Some(limit), _) => {
                Coordinator::start_with_open_file_limit(&bin, &coord_dir, &config, limit)
            }
            (None, Some(mib)) => Coordinator::start_in_tmpfs(&bin, &coord_dir, &config, mib),
            (None, None) => Coordinator::start(&bin, &coord_dir, &config),
        };
        let mut op = coord.admin(OPERATOR_TOKEN).await;
        let (tenant_id, tenant_token) = Setup::tenant(&mut op, &self.tenant.0, self.tenant.1).await;
        let mut others = Vec::new();
        for (id, plan) in &self.others {
            let (id, token) = Setup::tenant(&mut op, id, *plan).await;
            others.push(TenantInfo { id, token });
        }
        let tenant = coord.admin(&tenant_token).await;
        let mut w = World {
            coord,
            op,
            tenant,
            tenant_id,
            tenant_token,
            others,
            regions: Vec::new(),
            agents: Vec::new(),
            monitors: Vec::new(),
            dir,
        };
        for i in 0..self.private_regions {
            let owner = w.tenant_id.clone();
            w.add_region(&format!("r{i}"), &owner).await;
        }
        for name in &self.public_regions {
            w.add_region(name, "").await;
        }
        if self.agents {
            w.agents = w.connect_agents().await;
        }
        if let Some((n, host, port, interval_ms)) = self.monitors {
            w.monitors = w.create_monitors(n, &host, port, interval_ms).await;
        }
        w
    }
}
