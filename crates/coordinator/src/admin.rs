//! The admin API (`portwatch.v1.AdminService`): tenants, regions, agent tokens,
//! monitors, status, history, incidents, notification channels and their
//! deliveries, and the live event stream.
//!
//! This is the one door through which operators and tenants change what the
//! coordinator stores, so the rules of tenancy live here:
//! - every call first resolves its caller from the bearer token;
//! - a tenant token acts only on its own tenant: another tenant's objects, and
//!   another tenant's very existence, answer NOT_FOUND with the same message as
//!   an id that does not exist, never PERMISSION_DENIED and never their data;
//! - operator-only calls answer PERMISSION_DENIED to tenants;
//! - a request is checked whole (`validate`) before anything is written, so a
//!   rejected request changes nothing; check-then-write sequences (duplicate ids,
//!   plan quotas, a region still in use) run under one lock so two concurrent
//!   requests cannot both pass the same check;
//! - a monitor change is stored and flushed before the hub pushes it to agents;
//! - channel secrets (webhook secret, SMTP password, PagerDuty routing key, the
//!   Slack URL's path) are write-only: every answer carries
//!   `channels::redacted`; the operator's own channels have an empty tenant id.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use portwatch_check::Host;
use portwatch_proto::time::{from_timestamp, from_unix_micros, to_timestamp, unix_micros};
use portwatch_proto::v1;
use portwatch_proto::v1::admin_service_server::AdminService;
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Caller, hash_token, new_secret};
use crate::channels::{self, Senders};
use crate::hub::{Hub, new_id};
use crate::plans::{PlanLimits, Plans};
use crate::store::{Store, StoreError, TokenRecord, TokenScope};
use crate::validate::{self, ChannelPolicy, MonitorDraft, Tenancy, quote};

/// The stream `WatchEvents` answers with.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

const NO_SUCH_TENANT: &str = "tenant_id: no such tenant";
/// Most channels one tenant (or the operator) may have.
pub const MAX_CHANNELS_PER_OWNER: usize = 100;

/// The admin service.
pub struct AdminApi {
    hub: Arc<Hub>,
    auth: Auth,
    plans: Plans,
    /// Sends `TestChannel` samples; knows whether private targets are allowed.
    senders: Arc<Senders>,
    /// Held from the first check of a writing request to its last write.
    writes: Mutex<()>,
}

/// A store error as the caller sees it: UNAVAILABLE while the store takes no
/// writes (a full disk; retry later), INTERNAL otherwise.
fn internal(e: StoreError) -> Status {
    e.into_status()
}

fn now_ts() -> prost_types::Timestamp {
    to_timestamp(SystemTime::now())
}

fn operator_only(caller: &Caller, what: &str) -> Result<(), Status> {
    match caller {
        Caller::Operator => Ok(()),
        Caller::Tenant(_) => Err(Status::permission_denied(format!(
            "only the operator may {what}"
        ))),
    }
}

fn not_found(field: &str, what: &str) -> Status {
    Status::not_found(format!("{field}: no such {what}"))
}

fn agent_token(t: TokenRecord) -> Option<v1::AgentToken> {
    match t.scope {
        TokenScope::Agent { region } => Some(v1::AgentToken {
            id: t.id,
            region,
            description: t.description,
            created_at: Some(to_timestamp(from_unix_micros(t.created_at_us))),
            revoked: t.revoked,
        }),
        TokenScope::Tenant { .. } => None,
    }
}

/// A history page token: the hex of the last key returned, which starts with the
/// monitor id, a NUL and the result's time (8 bytes, big-endian). Returns that time.
fn history_token_time(monitor_id: &str, token: &str) -> Result<u64, Status> {
    let bad = || Status::invalid_argument("page_token: not a token from this listing");
    if token.len() > 4 * validate::MAX_ID + 64 {
        return Err(bad());
    }
    let key = hex::decode(token).map_err(|_| bad())?;
    let rest = key
        .strip_prefix(monitor_id.as_bytes())
        .and_then(|r| r.strip_prefix(&[0u8]))
        .ok_or_else(bad)?;
    let at: [u8; 8] = rest
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    Ok(u64::from_be_bytes(at))
}

/// Who may see which live events.
struct EventFilter {
    /// `None`: every tenant (the operator without a tenant_id).
    tenant: Option<String>,
    monitor: Option<String>,
    /// Probe-region changes are the operator's business only.
    probe_regions: bool,
}

impl EventFilter {
    fn admit(&self, store: &Store, e: v1::Event) -> Option<Result<v1::Event, Status>> {
        use v1::event::Kind;
        let tenant_ok = |t: &str| self.tenant.as_deref().is_none_or(|want| want == t);
        let monitor_ok = |m: &str| self.monitor.as_deref().is_none_or(|want| want == m);
        let keep = match &e.kind {
            Some(Kind::IncidentOpened(i) | Kind::IncidentClosed(i) | Kind::IncidentFlapping(i)) => {
                tenant_ok(&i.tenant_id) && monitor_ok(&i.monitor_id)
            }
            Some(Kind::RegionState(c)) => {
                monitor_ok(&c.monitor_id)
                    && match &self.tenant {
                        None => true,
                        // The event names only the monitor; its owner decides.
                        Some(t) => match store.get_monitor(&c.monitor_id) {
                            Ok(Some(m)) => &m.tenant_id == t,
                            Ok(None) => false,
                            Err(err) => return Some(Err(internal(err))),
                        },
                    }
            }
            Some(Kind::ProbeRegion(_)) => self.probe_regions,
            None => false,
        };
        keep.then_some(Ok(e))
    }
}

impl AdminApi {
    pub fn new(hub: Arc<Hub>, auth: Auth, plans: Plans, senders: Arc<Senders>) -> AdminApi {
        AdminApi {
            hub,
            auth,
            plans,
            senders,
            writes: Mutex::new(()),
        }
    }

    fn store(&self) -> &Store {
        self.hub.store()
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.auth.admin(request.metadata())
    }

    async fn flush(&self) -> Result<(), Status> {
        self.store().flush().await.map_err(internal)
    }

    /// The tenant a call acts on. A tenant token may leave `requested` empty or
    /// name itself; naming anyone else answers as if no such tenant existed. The
    /// operator must name an existing tenant.
    fn tenant_scope(&self, caller: &Caller, requested: &str) -> Result<String, Status> {
        match caller {
            Caller::Tenant(own) if requested.is_empty() || requested == own => Ok(own.clone()),
            Caller::Tenant(_) => Err(Status::not_found(NO_SUCH_TENANT)),
            Caller::Operator if requested.is_empty() => Err(Status::invalid_argument(
                "tenant_id: required for the operator",
            )),
            Caller::Operator => {
                validate::slug("tenant_id", requested)?;
                self.tenant(requested).map(|t| t.id)
            }
        }
    }

    fn tenant(&self, id: &str) -> Result<v1::Tenant, Status> {
        self.store()
            .get_tenant(id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(NO_SUCH_TENANT))
    }

    /// A stored tenant with its plan's limits and its monitor count filled in.
    fn tenant_view(&self, mut t: v1::Tenant, monitor_count: usize) -> v1::Tenant {
        if let Some(l) = self.plans.limits(t.plan) {
            t.max_monitors = l.max_monitors;
            t.min_interval_ms = u64::try_from(l.min_interval.as_millis()).unwrap_or(u64::MAX);
        }
        t.monitor_count = u32::try_from(monitor_count).unwrap_or(u32::MAX);
        t
    }

    /// How many monitors a tenant has, from the store's per-tenant count (one
    /// read: creating a monitor costs the same whatever other tenants hold).
    /// The store, not the hub's in-memory map, is the authority here: it is what
    /// this API writes under `writes`, so a count read under that lock is exact
    /// for the quota check (see `Store::tenant_monitor_count`).
    fn monitor_count(&self, tenant_id: &str) -> Result<usize, Status> {
        self.store()
            .tenant_monitor_count(tenant_id)
            .map_err(internal)
    }

    /// A monitor of this tenant. Another tenant's monitor is as missing as one
    /// that never existed.
    fn owned_monitor(
        &self,
        tenant_id: &str,
        field: &'static str,
        id: &str,
    ) -> Result<v1::Monitor, Status> {
        validate::id(field, id)?;
        match self.store().get_monitor(id).map_err(internal)? {
            Some(m) if m.tenant_id == tenant_id => Ok(m),
            _ => Err(not_found(field, "monitor")),
        }
    }

    /// The tenant's plan limits, provided the plan includes port monitors.
    fn port_plan(&self, tenant: &v1::Tenant) -> Result<PlanLimits, Status> {
        Ok(validate::port_monitors_allowed(&self.plans, tenant.plan)?)
    }

    fn region_view(&self, mut r: v1::Region) -> v1::Region {
        let (online, since) = self.hub.region_liveness(&r.name);
        r.agents_online = online;
        r.offline_since = since.map(to_timestamp);
        r
    }

    /// Stores a new token; returns (token id, secret). The secret is never stored.
    fn issue_token(
        &self,
        scope: TokenScope,
        description: &str,
        prefix: &str,
    ) -> Result<(String, String), Status> {
        let secret = new_secret(prefix);
        let rec = TokenRecord {
            id: new_id("tok"),
            hash: hash_token(&secret),
            scope,
            description: description.to_string(),
            created_at_us: unix_micros(SystemTime::now()),
            revoked: false,
        };
        self.store().put_token(&rec).map_err(internal)?;
        Ok((rec.id, secret))
    }

    /// Durable first, then pushed to the agents.
    async fn persist_monitor(&self, m: &v1::Monitor) -> Result<(), Status> {
        self.store().put_monitor(m).map_err(internal)?;
        self.flush().await?;
        self.hub.monitor_changed(m.clone());
        Ok(())
    }

    async fn set_paused(
        &self,
        caller: &Caller,
        tenant_id: &str,
        id: &str,
        paused: bool,
    ) -> Result<v1::Monitor, Status> {
        let tenant_id = self.tenant_scope(caller, tenant_id)?;
        let _w = self.writes.lock().await;
        let mut m = self.owned_monitor(&tenant_id, "id", id)?;
        if !paused {
            // Resuming starts port checks again, which the plan must include.
            self.port_plan(&self.tenant(&tenant_id)?)?;
        }
        if m.paused == paused {
            return Ok(m);
        }
        m.paused = paused;
        m.generation += 1;
        m.updated_at = Some(now_ts());
        self.persist_monitor(&m).await?;
        Ok(m)
    }

    /// Whose channels a call acts on: the operator without a tenant id acts on
    /// the operator's own channels (owner ""); otherwise as `tenant_scope`.
    fn channel_owner(&self, caller: &Caller, requested: &str) -> Result<String, Status> {
        match caller {
            Caller::Operator if requested.is_empty() => Ok(String::new()),
            _ => self.tenant_scope(caller, requested),
        }
    }

    /// A channel of this owner; another owner's is as missing as none.
    fn owned_channel(&self, owner: &str, id: &str) -> Result<v1::Channel, Status> {
        validate::id("id", id)?;
        match self.store().get_channel(id).map_err(internal)? {
            Some(c) if c.tenant_id == owner => Ok(c),
            _ => Err(not_found("id", "channel")),
        }
    }

    /// Every channel a monitor names must be one of its tenant's.
    fn check_monitor_channels(&self, tenant_id: &str, ids: &[String]) -> Result<(), Status> {
        for id in ids {
            match self.store().get_channel(id).map_err(internal)? {
                Some(c) if c.tenant_id == tenant_id => {}
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "channel_ids: unknown channel {}",
                        quote(id)
                    )));
                }
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let coordinator_version = env!("CARGO_PKG_VERSION").to_string();
        Ok(Response::new(match self.caller(&request)? {
            Caller::Operator => v1::WhoAmIResponse {
                operator: true,
                tenant_id: String::new(),
                coordinator_version,
            },
            Caller::Tenant(id) => v1::WhoAmIResponse {
                operator: false,
                tenant_id: id,
                coordinator_version,
            },
        }))
    }

    // ------------------------------------------------------------ tenants

    async fn create_tenant(
        &self,
        request: Request<v1::CreateTenantRequest>,
    ) -> Result<Response<v1::CreateTenantResponse>, Status> {
        operator_only(&self.caller(&request)?, "create tenants")?;
        let req = request.into_inner();
        let id = if req.id.is_empty() {
            new_id("t")
        } else {
            validate::slug("id", &req.id)?;
            req.id
        };
        validate::text("name", &req.name, validate::MAX_TENANT_NAME, true)?;
        let plan = validate::plan(req.plan)?;

        let _w = self.writes.lock().await;
        if self.store().get_tenant(&id).map_err(internal)?.is_some() {
            return Err(Status::already_exists(format!(
                "id: tenant {} already exists",
                quote(&id)
            )));
        }
        let tenant = v1::Tenant {
            id: id.clone(),
            name: req.name,
            plan: plan as i32,
            created_at: Some(now_ts()),
            ..Default::default()
        };
        self.store().put_tenant(&tenant).map_err(internal)?;
        let (token_id, token) =
            self.issue_token(TokenScope::Tenant { tenant_id: id }, "first token", "pwt_")?;
        self.flush().await?;
        Ok(Response::new(v1::CreateTenantResponse {
            tenant: Some(self.tenant_view(tenant, 0)),
            token,
            token_id,
        }))
    }

    async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        operator_only(&self.caller(&request)?, "list tenants")?;
        let counts = self.store().tenant_monitor_counts().map_err(internal)?;
        let mut tenants: Vec<v1::Tenant> = self
            .store()
            .list_tenants()
            .map_err(internal)?
            .into_iter()
            .map(|t| {
                let n = counts.get(&t.id).copied().unwrap_or(0);
                self.tenant_view(t, n)
            })
            .collect();
        tenants.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(v1::ListTenantsResponse { tenants }))
    }

    async fn get_tenant(
        &self,
        request: Request<v1::GetTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let caller = self.caller(&request)?;
        let id = self.tenant_scope(&caller, &request.get_ref().tenant_id)?;
        let tenant = self.tenant(&id)?;
        let count = self.monitor_count(&id)?;
        Ok(Response::new(self.tenant_view(tenant, count)))
    }

    async fn set_tenant_plan(
        &self,
        request: Request<v1::SetTenantPlanRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let caller = self.caller(&request)?;
        operator_only(&caller, "change plans")?;
        let req = request.into_inner();
        let id = self.tenant_scope(&caller, &req.tenant_id)?;
        let plan = validate::plan(req.plan)?;
        let _w = self.writes.lock().await;
        let mut tenant = self.tenant(&id)?;
        tenant.plan = plan as i32;
        self.store().put_tenant(&tenant).map_err(internal)?;
        self.flush().await?;
        let count = self.monitor_count(&id)?;
        Ok(Response::new(self.tenant_view(tenant, count)))
    }

    async fn create_tenant_token(
        &self,
        request: Request<v1::CreateTenantTokenRequest>,
    ) -> Result<Response<v1::CreateTenantTokenResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        validate::text(
            "description",
            &req.description,
            validate::MAX_DESCRIPTION,
            false,
        )?;
        let (token_id, token) =
            self.issue_token(TokenScope::Tenant { tenant_id }, &req.description, "pwt_")?;
        self.flush().await?;
        Ok(Response::new(v1::CreateTenantTokenResponse {
            token_id,
            token,
        }))
    }

    async fn revoke_tenant_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = &request.get_ref().token_id;
        validate::id("token_id", id)?;
        let _w = self.writes.lock().await;
        let mut rec = match self.store().token_by_id(id).map_err(internal)? {
            Some(rec) => match (&rec.scope, &caller) {
                (TokenScope::Tenant { .. }, Caller::Operator) => rec,
                (TokenScope::Tenant { tenant_id }, Caller::Tenant(own)) if tenant_id == own => rec,
                _ => return Err(not_found("token_id", "tenant token")),
            },
            None => return Err(not_found("token_id", "tenant token")),
        };
        if !rec.revoked {
            rec.revoked = true;
            self.store().put_token(&rec).map_err(internal)?;
            self.flush().await?;
            // Durable: now end the streams still using it.
            self.auth.announce_revocation();
        }
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }

    // ------------------------------------------------------------ regions and agents

    async fn create_region(
        &self,
        request: Request<v1::CreateRegionRequest>,
    ) -> Result<Response<v1::Region>, Status> {
        operator_only(&self.caller(&request)?, "create regions")?;
        let req = request.into_inner();
        validate::slug("name", &req.name)?;
        validate::text(
            "description",
            &req.description,
            validate::MAX_DESCRIPTION,
            false,
        )?;
        if !req.owner_tenant_id.is_empty() {
            validate::slug("owner_tenant_id", &req.owner_tenant_id)?;
        }
        let _w = self.writes.lock().await;
        if !req.owner_tenant_id.is_empty()
            && self
                .store()
                .get_tenant(&req.owner_tenant_id)
                .map_err(internal)?
                .is_none()
        {
            return Err(not_found("owner_tenant_id", "tenant"));
        }
        if self
            .store()
            .get_region(&req.name)
            .map_err(internal)?
            .is_some()
        {
            return Err(Status::already_exists(format!(
                "name: region {} already exists",
                quote(&req.name)
            )));
        }
        let region = v1::Region {
            name: req.name,
            description: req.description,
            owner_tenant_id: req.owner_tenant_id,
            agents_online: 0,
            offline_since: None,
        };
        self.store().put_region(&region).map_err(internal)?;
        self.flush().await?;
        self.hub.region_changed(Some(region.clone()), &region.name);
        Ok(Response::new(self.region_view(region)))
    }

    async fn list_regions(
        &self,
        request: Request<v1::ListRegionsRequest>,
    ) -> Result<Response<v1::ListRegionsResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut regions: Vec<v1::Region> = self
            .store()
            .list_regions()
            .map_err(internal)?
            .into_iter()
            .filter(|r| match &caller {
                Caller::Operator => true,
                Caller::Tenant(t) => r.owner_tenant_id.is_empty() || &r.owner_tenant_id == t,
            })
            .map(|r| self.region_view(r))
            .collect();
        regions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(v1::ListRegionsResponse { regions }))
    }

    async fn delete_region(
        &self,
        request: Request<v1::DeleteRegionRequest>,
    ) -> Result<Response<v1::DeleteRegionResponse>, Status> {
        operator_only(&self.caller(&request)?, "delete regions")?;
        let name = request.into_inner().name;
        validate::slug("name", &name)?;
        let _w = self.writes.lock().await;
        if self.store().get_region(&name).map_err(internal)?.is_none() {
            return Err(not_found("name", "region"));
        }
        let users = self
            .store()
            .list_monitors()
            .map_err(internal)?
            .iter()
            .filter(|m| m.regions.contains(&name))
            .count();
        if users > 0 {
            return Err(Status::failed_precondition(format!(
                "name: region {} is still used by {users} monitor(s); remove it from them first",
                quote(&name)
            )));
        }
        self.store().delete_region(&name).map_err(internal)?;
        self.flush().await?;
        self.hub.region_changed(None, &name);
        Ok(Response::new(v1::DeleteRegionResponse {}))
    }

    async fn create_agent_token(
        &self,
        request: Request<v1::CreateAgentTokenRequest>,
    ) -> Result<Response<v1::CreateAgentTokenResponse>, Status> {
        operator_only(&self.caller(&request)?, "create agent tokens")?;
        let req = request.into_inner();
        validate::slug("region", &req.region)?;
        validate::text(
            "description",
            &req.description,
            validate::MAX_DESCRIPTION,
            false,
        )?;
        if self
            .store()
            .get_region(&req.region)
            .map_err(internal)?
            .is_none()
        {
            return Err(not_found("region", "region"));
        }
        let (token_id, token) = self.issue_token(
            TokenScope::Agent { region: req.region },
            &req.description,
            "pwa_",
        )?;
        self.flush().await?;
        Ok(Response::new(v1::CreateAgentTokenResponse {
            token_id,
            token,
        }))
    }

    async fn list_agent_tokens(
        &self,
        request: Request<v1::ListAgentTokensRequest>,
    ) -> Result<Response<v1::ListAgentTokensResponse>, Status> {
        operator_only(&self.caller(&request)?, "list agent tokens")?;
        let region = request.into_inner().region;
        if !region.is_empty() {
            validate::slug("region", &region)?;
        }
        let mut tokens: Vec<v1::AgentToken> = self
            .store()
            .list_tokens()
            .map_err(internal)?
            .into_iter()
            .filter_map(agent_token)
            .filter(|t| region.is_empty() || t.region == region)
            .collect();
        tokens.sort_by(|a, b| {
            let at = |t: &v1::AgentToken| t.created_at.map(|c| (c.seconds, c.nanos));
            at(a).cmp(&at(b)).then_with(|| a.id.cmp(&b.id))
        });
        Ok(Response::new(v1::ListAgentTokensResponse { tokens }))
    }

    async fn revoke_agent_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        operator_only(&self.caller(&request)?, "revoke agent tokens")?;
        let id = &request.get_ref().token_id;
        validate::id("token_id", id)?;
        let _w = self.writes.lock().await;
        let mut rec = match self.store().token_by_id(id).map_err(internal)? {
            Some(rec) if matches!(rec.scope, TokenScope::Agent { .. }) => rec,
            _ => return Err(not_found("token_id", "agent token")),
        };
        if !rec.revoked {
            rec.revoked = true;
            self.store().put_token(&rec).map_err(internal)?;
            self.flush().await?;
            // Durable: now end the streams still using it.
            self.auth.announce_revocation();
        }
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }

    async fn list_agents(
        &self,
        request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        operator_only(&self.caller(&request)?, "list agents")?;
        let region = request.into_inner().region;
        if !region.is_empty() {
            validate::slug("region", &region)?;
        }
        let mut agents = self.hub.live_agents();
        let online: HashSet<String> = agents.iter().map(|a| a.agent_id.clone()).collect();
        for mut a in self.store().list_agents().map_err(internal)? {
            if !online.contains(&a.agent_id) {
                a.online = false;
                agents.push(a);
            }
        }
        agents.retain(|a| region.is_empty() || a.region == region);
        agents.sort_by(|a, b| (&a.region, &a.agent_id).cmp(&(&b.region, &b.agent_id)));
        Ok(Response::new(v1::ListAgentsResponse { agents }))
    }

    // ------------------------------------------------------------ monitors

    async fn create_monitor(
        &self,
        request: Request<v1::CreateMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        let _w = self.writes.lock().await;
        let tenant = self.tenant(&tenant_id)?;
        let limits = self.port_plan(&tenant)?;
        let count = self.monitor_count(&tenant_id)?;
        validate::monitor_quota(tenant.plan, &limits, count)?;
        let regions = self.store().list_regions().map_err(internal)?;
        let spec = validate::monitor(
            &MonitorDraft::from(&req),
            &Tenancy {
                tenant_id: &tenant_id,
                plan: tenant.plan,
                limits: &limits,
                regions: &regions,
            },
        )?;
        self.check_monitor_channels(&tenant_id, &spec.channel_ids)?;
        let now = now_ts();
        let mut m = v1::Monitor {
            id: new_id("mon"),
            tenant_id,
            paused: req.paused,
            created_at: Some(now),
            updated_at: Some(now),
            generation: 1,
            ..Default::default()
        };
        spec.write_to(&mut m);
        self.persist_monitor(&m).await?;
        Ok(Response::new(m))
    }

    async fn get_monitor(
        &self,
        request: Request<v1::GetMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let caller = self.caller(&request)?;
        let req = request.get_ref();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        Ok(Response::new(
            self.owned_monitor(&tenant_id, "id", &req.id)?,
        ))
    }

    async fn list_monitors(
        &self,
        request: Request<v1::ListMonitorsRequest>,
    ) -> Result<Response<v1::ListMonitorsResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        let limit = validate::page_size("page_size", req.page_size)?;
        validate::optional_id("page_token", &req.page_token)?;
        // Ids in order, after the page token: one more than a page says whether
        // another follows.
        let (monitors, next_page_token) = page(
            self.store()
                .tenant_monitors(&tenant_id, &req.page_token, limit.saturating_add(1))
                .map_err(internal)?
                .into_iter(),
            limit,
            |x| x.id.clone(),
        );
        Ok(Response::new(v1::ListMonitorsResponse {
            monitors,
            next_page_token,
        }))
    }

    async fn update_monitor(
        &self,
        request: Request<v1::UpdateMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        let _w = self.writes.lock().await;
        let mut m = self.owned_monitor(&tenant_id, "id", &req.id)?;
        let tenant = self.tenant(&tenant_id)?;
        let limits = self.port_plan(&tenant)?;

        let mut d = MonitorDraft::from(&m);
        // A name that was only the default follows a new host or port.
        let was_default = Host::parse(&m.host)
            .ok()
            .zip(u16::try_from(m.port).ok())
            .is_some_and(|(h, p)| validate::default_name(&h, p) == m.name);
        if was_default && req.name.is_none() && (req.host.is_some() || req.port.is_some()) {
            d.name.clear();
        }
        if let Some(v) = req.name {
            d.name = v;
        }
        if let Some(v) = req.host {
            d.host = v;
        }
        if let Some(v) = req.port {
            d.port = v;
        }
        if req.set_regions {
            d.regions = req.regions;
        }
        if let Some(v) = req.interval_ms {
            d.interval_ms = v;
        }
        if let Some(v) = req.timeout_ms {
            d.timeout_ms = v;
        }
        if let Some(v) = req.consensus {
            d.consensus = v;
        }
        if let Some(v) = req.family {
            d.family = v;
        }
        if let Some(v) = req.address_policy {
            d.address_policy = v;
        }
        if let Some(v) = req.close_mode {
            d.close_mode = v;
        }
        if req.set_channel_ids {
            d.channel_ids = req.channel_ids;
        }
        if let Some(v) = req.flap_detection {
            d.flap_detection = v;
        }
        if let Some(v) = req.flap_threshold {
            d.flap_threshold = v;
        }
        if let Some(v) = req.flap_window_ms {
            d.flap_window_ms = v;
        }
        if let Some(v) = req.flap_stable_for_ms {
            d.flap_stable_for_ms = v;
        }
        let regions = self.store().list_regions().map_err(internal)?;
        let spec = validate::monitor(
            &d,
            &Tenancy {
                tenant_id: &tenant_id,
                plan: tenant.plan,
                limits: &limits,
                regions: &regions,
            },
        )?;
        if req.set_channel_ids {
            self.check_monitor_channels(&tenant_id, &spec.channel_ids)?;
        }
        spec.write_to(&mut m);
        m.generation += 1;
        m.updated_at = Some(now_ts());
        self.persist_monitor(&m).await?;
        Ok(Response::new(m))
    }

    async fn delete_monitor(
        &self,
        request: Request<v1::DeleteMonitorRequest>,
    ) -> Result<Response<v1::DeleteMonitorResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.get_ref();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        let _w = self.writes.lock().await;
        let m = self.owned_monitor(&tenant_id, "id", &req.id)?;
        self.hub.delete_monitor(&m.id).await.map_err(internal)?;
        Ok(Response::new(v1::DeleteMonitorResponse {}))
    }

    async fn pause_monitor(
        &self,
        request: Request<v1::PauseMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let caller = self.caller(&request)?;
        let req = request.get_ref();
        let m = self
            .set_paused(&caller, &req.tenant_id, &req.id, true)
            .await?;
        Ok(Response::new(m))
    }

    async fn resume_monitor(
        &self,
        request: Request<v1::ResumeMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let caller = self.caller(&request)?;
        let req = request.get_ref();
        let m = self
            .set_paused(&caller, &req.tenant_id, &req.id, false)
            .await?;
        Ok(Response::new(m))
    }

    async fn get_monitor_status(
        &self,
        request: Request<v1::GetMonitorStatusRequest>,
    ) -> Result<Response<v1::MonitorStatus>, Status> {
        let caller = self.caller(&request)?;
        let req = request.get_ref();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        let m = self.owned_monitor(&tenant_id, "id", &req.id)?;
        Ok(Response::new(self.hub.status(&m)))
    }

    async fn list_results(
        &self,
        request: Request<v1::ListResultsRequest>,
    ) -> Result<Response<v1::ListResultsResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        let m = self.owned_monitor(&tenant_id, "monitor_id", &req.monitor_id)?;
        let micros = |field: &str, ts: Option<prost_types::Timestamp>, default: u64| match ts {
            None => Ok(default),
            Some(ts) => from_timestamp(&ts).map(unix_micros).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{field}: not a valid timestamp (before 1970 or nanos out of range)"
                ))
            }),
        };
        let since_us = micros("since", req.since, 0)?;
        let until_us = micros("until", req.until, unix_micros(SystemTime::now()))?;
        if since_us > until_us {
            return Err(Status::invalid_argument("since: is after until"));
        }
        let limit = validate::page_size("page_size", req.page_size)?;
        if !req.region.is_empty() {
            validate::slug("region", &req.region)?;
        }
        let after = if req.page_token.is_empty() {
            None
        } else {
            // A token past the window has nothing after it (and would make the
            // store's key range run backwards).
            if history_token_time(&m.id, &req.page_token)? >= until_us {
                return Ok(Response::new(v1::ListResultsResponse::default()));
            }
            Some(req.page_token.as_str())
        };
        let region = (!req.region.is_empty()).then_some(req.region.as_str());
        let page = self
            .store()
            .history(&m.id, since_us, until_us, region, after, limit)
            .map_err(internal)?;
        Ok(Response::new(v1::ListResultsResponse {
            results: page.results,
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    // ------------------------------------------------------------ incidents

    async fn list_incidents(
        &self,
        request: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        validate::optional_id("monitor_id", &req.monitor_id)?;
        let limit = validate::page_size("page_size", req.page_size)?;
        validate::optional_id("page_token", &req.page_token)?;
        // Newest first: ids sort by creation time, so the next page has smaller ids.
        let (incidents, next_page_token) = page(
            self.store()
                .list_incidents()
                .map_err(internal)?
                .into_iter()
                .filter(|i| i.tenant_id == tenant_id)
                .filter(|i| req.monitor_id.is_empty() || i.monitor_id == req.monitor_id)
                .filter(|i| !req.open_only || i.closed_at.is_none())
                .filter(|i| req.page_token.is_empty() || i.id < req.page_token),
            limit,
            |x| x.id.clone(),
        );
        Ok(Response::new(v1::ListIncidentsResponse {
            incidents,
            next_page_token,
        }))
    }

    async fn get_incident(
        &self,
        request: Request<v1::GetIncidentRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        let caller = self.caller(&request)?;
        let req = request.get_ref();
        let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
        validate::id("id", &req.id)?;
        match self.store().get_incident(&req.id).map_err(internal)? {
            Some(i) if i.tenant_id == tenant_id => Ok(Response::new(i)),
            _ => Err(not_found("id", "incident")),
        }
    }

    // ------------------------------------------------------------ channels

    async fn create_channel(
        &self,
        request: Request<v1::CreateChannelRequest>,
    ) -> Result<Response<v1::Channel>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let owner = self.channel_owner(&caller, &req.tenant_id)?;
        let Some(draft) = req.channel else {
            return Err(Status::invalid_argument("channel: required"));
        };
        let mut channel = validate::channel(
            &draft,
            &ChannelPolicy {
                operator: owner.is_empty(),
                allow_private: self.senders.allow_private(),
            },
        )?;
        let _w = self.writes.lock().await;
        let count = self
            .store()
            .list_channels()
            .map_err(internal)?
            .iter()
            .filter(|c| c.tenant_id == owner)
            .count();
        if count >= MAX_CHANNELS_PER_OWNER {
            return Err(Status::failed_precondition(format!(
                "channel: at most {MAX_CHANNELS_PER_OWNER} channels per tenant; delete one first"
            )));
        }
        channel.id = new_id("ch");
        channel.tenant_id = owner;
        channel.created_at = Some(now_ts());
        self.store().put_channel(&channel).map_err(internal)?;
        self.flush().await?;
        Ok(Response::new(channels::redacted(&channel)))
    }

    async fn list_channels(
        &self,
        request: Request<v1::ListChannelsRequest>,
    ) -> Result<Response<v1::ListChannelsResponse>, Status> {
        let caller = self.caller(&request)?;
        let owner = self.channel_owner(&caller, &request.get_ref().tenant_id)?;
        let channels = self
            .store()
            .list_channels()
            .map_err(internal)?
            .iter()
            .filter(|c| c.tenant_id == owner)
            .map(channels::redacted)
            .collect();
        Ok(Response::new(v1::ListChannelsResponse { channels }))
    }

    async fn delete_channel(
        &self,
        request: Request<v1::DeleteChannelRequest>,
    ) -> Result<Response<v1::DeleteChannelResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.get_ref();
        let owner = self.channel_owner(&caller, &req.tenant_id)?;
        let _w = self.writes.lock().await;
        let c = self.owned_channel(&owner, &req.id)?;
        let users = self
            .store()
            .list_monitors()
            .map_err(internal)?
            .iter()
            .filter(|m| m.channel_ids.contains(&c.id))
            .count();
        if users > 0 {
            return Err(Status::failed_precondition(format!(
                "id: channel {} is still named by {users} monitor(s); remove it from them first",
                quote(&c.id)
            )));
        }
        // Its pending deliveries fail at their next attempt ("the channel was deleted").
        self.store().delete_channel(&c.id).map_err(internal)?;
        self.flush().await?;
        Ok(Response::new(v1::DeleteChannelResponse {}))
    }

    async fn test_channel(
        &self,
        request: Request<v1::TestChannelRequest>,
    ) -> Result<Response<v1::TestChannelResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.get_ref();
        let owner = self.channel_owner(&caller, &req.tenant_id)?;
        let c = self.owned_channel(&owner, &req.id)?;
        let (ok, detail) = match self.senders.test(&c).await {
            Ok(a) => (true, a.detail),
            Err(f) => (false, f.detail),
        };
        tracing::info!(channel_id = %c.id, kind = channels::kind(&c), ok, %detail, "test notification sent");
        Ok(Response::new(v1::TestChannelResponse { ok, detail }))
    }

    async fn list_deliveries(
        &self,
        request: Request<v1::ListDeliveriesRequest>,
    ) -> Result<Response<v1::ListDeliveriesResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let owner = self.channel_owner(&caller, &req.tenant_id)?;
        validate::optional_id("incident_id", &req.incident_id)?;
        let limit = validate::page_size("page_size", req.page_size)?;
        validate::optional_id("page_token", &req.page_token)?;
        // Newest first: ids sort by creation time, so the next page has smaller ids.
        let (deliveries, next_page_token) = page(
            self.store()
                .list_deliveries()
                .map_err(internal)?
                .into_iter()
                .filter(|r| r.tenant_id == owner)
                .filter_map(|r| r.delivery)
                .filter(|d| req.incident_id.is_empty() || d.subject_id == req.incident_id)
                .filter(|d| req.page_token.is_empty() || d.id < req.page_token),
            limit,
            |x| x.id.clone(),
        );
        Ok(Response::new(v1::ListDeliveriesResponse {
            deliveries,
            next_page_token,
        }))
    }

    // ------------------------------------------------------------ events

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (caller, hash) = self.auth.admin_with_hash(request.metadata())?;
        let req = request.into_inner();
        let filter = if caller == Caller::Operator
            && req.tenant_id.is_empty()
            && req.monitor_id.is_empty()
        {
            EventFilter {
                tenant: None,
                monitor: None,
                probe_regions: true,
            }
        } else {
            let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
            let monitor = if req.monitor_id.is_empty() {
                None
            } else {
                Some(
                    self.owned_monitor(&tenant_id, "monitor_id", &req.monitor_id)?
                        .id,
                )
            };
            EventFilter {
                tenant: Some(tenant_id),
                probe_regions: caller == Caller::Operator && monitor.is_none(),
                monitor,
            }
        };
        let store = self.store().clone();
        // Subscribed now: every event after this call is considered. A receiver
        // that falls behind skips what it missed rather than ending the stream.
        let mut events = self.hub.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let auth = self.auth.clone();
        tokio::spawn(async move {
            // A revoked token's stream ends within a second of the revocation.
            let revoked = auth.revoked(&hash);
            tokio::pin!(revoked);
            loop {
                let item = tokio::select! {
                    status = &mut revoked => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    () = tx.closed() => return,
                    e = events.recv() => match e {
                        Ok(e) => filter.admit(&store, e),
                        Err(broadcast::error::RecvError::Lagged(_)) => None,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if let Some(item) = item
                    && tx.send(item).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One page of `items` (already in page order, after the page token): at most
/// `limit`, and the token of the next page (the last id returned) when more follow.
fn page<T>(
    items: impl Iterator<Item = T>,
    limit: usize,
    id: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let mut page: Vec<T> = items.take(limit + 1).collect();
    if page.len() > limit {
        page.truncate(limit);
        let next = page.last().map(&id).unwrap_or_default();
        (page, next)
    } else {
        (page, String::new())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;
    use tokio_stream::StreamExt;

    use tonic::Code;

    use super::*;
    use crate::hub::HubSettings;
    use crate::store::Ingest;

    const OP: &str = "operator-secret";

    struct Fixture {
        api: AdminApi,
        hub: Arc<Hub>,
        auth: Auth,
        _dir: tempfile::TempDir,
    }

    fn req<T>(token: &str, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    fn fixture_with(plans: Plans) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hub = Hub::load(store.clone(), HubSettings::default()).unwrap();
        let auth = Auth::new(OP, store);
        Fixture {
            api: AdminApi::new(hub.clone(), auth.clone(), plans, senders()),
            hub,
            auth,
            _dir: dir,
        }
    }

    fn fixture() -> Fixture {
        fixture_with(Plans::default())
    }

    fn senders() -> Arc<Senders> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Senders::new(false, Duration::from_secs(2)).unwrap()
    }

    fn monitor_req(host: &str, port: u32, regions: &[&str]) -> v1::CreateMonitorRequest {
        v1::CreateMonitorRequest {
            host: host.into(),
            port,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    fn code<T>(r: Result<Response<T>, Status>) -> (Code, String) {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => (e.code(), e.message().to_string()),
        }
    }

    impl Fixture {
        /// Creates a tenant; returns its token.
        async fn tenant(&self, id: &str, plan: v1::Plan) -> String {
            let r = self
                .api
                .create_tenant(req(
                    OP,
                    v1::CreateTenantRequest {
                        id: id.into(),
                        name: format!("{id} Inc."),
                        plan: plan as i32,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(r.token.starts_with("pwt_"));
            r.token
        }

        async fn region(&self, name: &str, owner: &str) {
            self.api
                .create_region(req(
                    OP,
                    v1::CreateRegionRequest {
                        name: name.into(),
                        description: String::new(),
                        owner_tenant_id: owner.into(),
                    },
                ))
                .await
                .unwrap();
        }

        async fn create(
            &self,
            token: &str,
            m: v1::CreateMonitorRequest,
        ) -> Result<Response<v1::Monitor>, Status> {
            self.api.create_monitor(req(token, m)).await
        }

        async fn get(&self, token: &str, id: &str) -> Result<Response<v1::Monitor>, Status> {
            self.api
                .get_monitor(req(
                    token,
                    v1::GetMonitorRequest {
                        tenant_id: String::new(),
                        id: id.into(),
                    },
                ))
                .await
        }

        async fn list(&self, token: &str, tenant_id: &str) -> Vec<v1::Monitor> {
            self.api
                .list_monitors(req(
                    token,
                    v1::ListMonitorsRequest {
                        tenant_id: tenant_id.into(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .monitors
        }

        fn stored_monitors(&self) -> Vec<v1::Monitor> {
            self.hub.store().list_monitors().unwrap()
        }
    }

    #[tokio::test]
    async fn operator_manages_tenants_regions_and_tokens() {
        let f = fixture();
        let who = f.api.who_am_i(req(OP, v1::WhoAmIRequest {})).await.unwrap();
        assert!(who.get_ref().operator);

        // A generated id, then an explicit one.
        let r = f
            .api
            .create_tenant(req(
                OP,
                v1::CreateTenantRequest {
                    id: String::new(),
                    name: "Generated".into(),
                    plan: v1::Plan::Basic as i32,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let generated = r.tenant.unwrap();
        assert!(
            validate::slug("id", &generated.id).is_ok(),
            "{}",
            generated.id
        );
        assert_eq!(generated.max_monitors, 50);
        assert_eq!(generated.min_interval_ms, 60_000);
        let acme = f.tenant("acme", v1::Plan::Pro).await;
        let who = f
            .api
            .who_am_i(req(&acme, v1::WhoAmIRequest {}))
            .await
            .unwrap();
        assert_eq!(who.get_ref().tenant_id, "acme");

        let create = |id: &str, name: &str, plan: v1::Plan| {
            req(
                OP,
                v1::CreateTenantRequest {
                    id: id.into(),
                    name: name.into(),
                    plan: plan as i32,
                },
            )
        };
        let (c, _) = code(
            f.api
                .create_tenant(create("acme", "Again", v1::Plan::Pro))
                .await,
        );
        assert_eq!(c, Code::AlreadyExists);
        let (c, m) = code(
            f.api
                .create_tenant(create("Bad_Id", "X", v1::Plan::Pro))
                .await,
        );
        assert_eq!((c, m.starts_with("id: ")), (Code::InvalidArgument, true));
        let (c, m) = code(
            f.api
                .create_tenant(create("x", "X", v1::Plan::Unspecified))
                .await,
        );
        assert_eq!((c, m.as_str()), (Code::InvalidArgument, "plan: required"));
        let (c, m) = code(f.api.create_tenant(create("x", "", v1::Plan::Pro)).await);
        assert_eq!((c, m.as_str()), (Code::InvalidArgument, "name: required"));
        let (c, m) = code(
            f.api
                .create_tenant(create("x", &"n".repeat(101), v1::Plan::Pro))
                .await,
        );
        assert_eq!((c, m.starts_with("name: ")), (Code::InvalidArgument, true));

        // Tenants cannot do operator things.
        let mut as_tenant = create("y", "Y", v1::Plan::Pro);
        as_tenant
            .metadata_mut()
            .insert("authorization", format!("Bearer {acme}").parse().unwrap());
        assert_eq!(
            code(f.api.create_tenant(as_tenant).await).0,
            Code::PermissionDenied
        );
        assert_eq!(
            code(
                f.api
                    .list_tenants(req(&acme, v1::ListTenantsRequest {}))
                    .await
            )
            .0,
            Code::PermissionDenied
        );
        let set_plan = |token: &str, tenant: &str| {
            req(
                token,
                v1::SetTenantPlanRequest {
                    tenant_id: tenant.into(),
                    plan: v1::Plan::Enterprise as i32,
                },
            )
        };
        assert_eq!(
            code(f.api.set_tenant_plan(set_plan(&acme, "acme")).await).0,
            Code::PermissionDenied
        );
        let t = f
            .api
            .set_tenant_plan(set_plan(OP, "acme"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (t.plan, t.max_monitors),
            (v1::Plan::Enterprise as i32, 10_000)
        );
        assert_eq!(
            code(f.api.set_tenant_plan(set_plan(OP, "nobody")).await).0,
            Code::NotFound
        );

        let tenants = f
            .api
            .list_tenants(req(OP, v1::ListTenantsRequest {}))
            .await
            .unwrap();
        assert_eq!(tenants.get_ref().tenants.len(), 2);

        // GetTenant: the operator names one; a tenant sees only itself.
        let get = |token: &str, id: &str| {
            req(
                token,
                v1::GetTenantRequest {
                    tenant_id: id.into(),
                },
            )
        };
        assert_eq!(
            f.api
                .get_tenant(get(OP, "acme"))
                .await
                .unwrap()
                .get_ref()
                .id,
            "acme"
        );
        assert_eq!(
            f.api.get_tenant(get(&acme, "")).await.unwrap().get_ref().id,
            "acme"
        );
        let (c, m) = code(f.api.get_tenant(get(&acme, &generated.id)).await);
        assert_eq!((c, m.as_str()), (Code::NotFound, NO_SUCH_TENANT));
        let (c, m) = code(f.api.get_tenant(get(OP, "")).await);
        assert_eq!(
            (c, m.as_str()),
            (
                Code::InvalidArgument,
                "tenant_id: required for the operator"
            )
        );
        assert_eq!(
            code(f.api.get_tenant(get(OP, "nobody")).await).0,
            Code::NotFound
        );

        // Regions.
        f.region("eu", "").await;
        f.region("acme-lab", "acme").await;
        let region = |name: &str, owner: &str| {
            req(
                OP,
                v1::CreateRegionRequest {
                    name: name.into(),
                    description: String::new(),
                    owner_tenant_id: owner.into(),
                },
            )
        };
        assert_eq!(
            code(f.api.create_region(region("eu", "")).await).0,
            Code::AlreadyExists
        );
        assert_eq!(
            code(f.api.create_region(region("EU West", "")).await).0,
            Code::InvalidArgument
        );
        let (c, m) = code(f.api.create_region(region("x", "nobody")).await);
        assert_eq!(
            (c, m.as_str()),
            (Code::NotFound, "owner_tenant_id: no such tenant")
        );
        let regions = f
            .api
            .list_regions(req(OP, v1::ListRegionsRequest {}))
            .await
            .unwrap();
        let eu = &regions.get_ref().regions[1];
        assert_eq!((eu.name.as_str(), eu.agents_online), ("eu", 0));
        assert!(eu.offline_since.is_some(), "no agent yet");

        // Agent tokens: bound to an existing region, listed without secrets, revocable.
        let t = f
            .api
            .create_agent_token(req(
                OP,
                v1::CreateAgentTokenRequest {
                    region: "eu".into(),
                    description: "eu-1".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(t.token.starts_with("pwa_"));
        let md = req(&t.token, ()).metadata().clone();
        assert_eq!(f.auth.agent_region(&md).unwrap(), "eu");
        let (c, m) = code(
            f.api
                .create_agent_token(req(
                    OP,
                    v1::CreateAgentTokenRequest {
                        region: "mars".into(),
                        description: String::new(),
                    },
                ))
                .await,
        );
        assert_eq!((c, m.as_str()), (Code::NotFound, "region: no such region"));
        let listed = f
            .api
            .list_agent_tokens(req(
                OP,
                v1::ListAgentTokensRequest {
                    region: "eu".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .tokens;
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].id.as_str(), listed[0].description.as_str()),
            (t.token_id.as_str(), "eu-1")
        );
        assert!(
            !format!("{listed:?}").contains(&t.token),
            "secrets are never listed"
        );
        assert_eq!(
            code(
                f.api
                    .list_agent_tokens(req(&acme, v1::ListAgentTokensRequest::default()))
                    .await
            )
            .0,
            Code::PermissionDenied
        );

        let revoke = |token: &str, id: &str| {
            req(
                token,
                v1::RevokeTokenRequest {
                    token_id: id.into(),
                },
            )
        };
        f.api
            .revoke_agent_token(revoke(OP, &t.token_id))
            .await
            .unwrap();
        assert_eq!(
            f.auth.agent_region(&md).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            code(f.api.revoke_agent_token(revoke(OP, "tok-nope")).await).0,
            Code::NotFound
        );

        // Tenant tokens: a tenant makes and revokes its own; the agent RPC refuses them.
        let tt = f
            .api
            .create_tenant_token(req(
                &acme,
                v1::CreateTenantTokenRequest {
                    tenant_id: String::new(),
                    description: "ci".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            code(f.api.revoke_agent_token(revoke(OP, &tt.token_id)).await).0,
            Code::NotFound
        );
        let other = f
            .api
            .create_tenant_token(req(
                OP,
                v1::CreateTenantTokenRequest {
                    tenant_id: generated.id.clone(),
                    description: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            code(
                f.api
                    .revoke_tenant_token(revoke(&acme, &other.token_id))
                    .await
            )
            .0,
            Code::NotFound,
            "another tenant's token is not acme's to revoke"
        );
        f.api
            .revoke_tenant_token(revoke(&acme, &tt.token_id))
            .await
            .unwrap();
        let (c, _) = code(f.api.who_am_i(req(&tt.token, v1::WhoAmIRequest {})).await);
        assert_eq!(c, Code::Unauthenticated);
        assert!(
            f.api
                .who_am_i(req(&acme, v1::WhoAmIRequest {}))
                .await
                .is_ok()
        );

        // Deleting a region in use is refused; an unused one goes.
        f.create(&acme, monitor_req("example.com", 443, &["eu"]))
            .await
            .unwrap();
        let del = |name: &str| req(OP, v1::DeleteRegionRequest { name: name.into() });
        assert_eq!(
            code(f.api.delete_region(del("eu")).await).0,
            Code::FailedPrecondition
        );
        f.api.delete_region(del("acme-lab")).await.unwrap();
        assert_eq!(
            code(f.api.delete_region(del("acme-lab")).await).0,
            Code::NotFound
        );
        assert_eq!(
            code(
                f.api
                    .delete_region(req(&acme, v1::DeleteRegionRequest { name: "eu".into() }))
                    .await
            )
            .0,
            Code::PermissionDenied
        );
        let t = f
            .api
            .get_tenant(get(&acme, "acme"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.monitor_count, 1);

        // No token, or a bad one.
        let anon = Request::new(v1::WhoAmIRequest {});
        assert_eq!(
            f.api.who_am_i(anon).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert!(
            f.api
                .list_channels(req(&acme, v1::ListChannelsRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .channels
                .is_empty()
        );
        let (c, _) = code(
            f.api
                .list_channels(req("wrong", v1::ListChannelsRequest::default()))
                .await,
        );
        assert_eq!(c, Code::Unauthenticated);
    }

    #[tokio::test]
    async fn a_tenant_creates_lists_updates_pauses_and_deletes_its_monitors() {
        let f = fixture();
        let acme = f.tenant("acme", v1::Plan::Pro).await;
        f.region("eu", "").await;
        f.region("us", "").await;
        f.region("acme-lab", "acme").await;

        let m = f
            .create(&acme, monitor_req("DB.Example.com", 5432, &["eu", "us"]))
            .await
            .unwrap()
            .into_inner();
        assert!(m.id.starts_with("mon-"));
        assert_eq!(m.tenant_id, "acme");
        assert_eq!(m.host, "db.example.com");
        assert_eq!(m.name, "db.example.com:5432");
        assert_eq!(
            (m.interval_ms, m.timeout_ms, m.generation),
            (60_000, 3_000, 1)
        );
        assert_eq!(m.consensus, v1::ConsensusPolicy::Quorum as i32);
        assert!(m.created_at.is_some() && m.updated_at.is_some());
        assert_eq!(f.hub.store().get_monitor(&m.id).unwrap().as_ref(), Some(&m));
        assert_eq!(f.get(&acme, &m.id).await.unwrap().into_inner(), m);

        // Private targets go to the tenant's own private region.
        let private = f
            .create(&acme, monitor_req("10.0.0.5", 22, &["acme-lab"]))
            .await
            .unwrap()
            .into_inner();
        let third = f
            .create(&acme, monitor_req("example.org", 443, &["eu"]))
            .await
            .unwrap()
            .into_inner();

        // Paging by id.
        let page = |token: &str| {
            req(
                &acme,
                v1::ListMonitorsRequest {
                    tenant_id: String::new(),
                    page_size: 2,
                    page_token: token.into(),
                },
            )
        };
        let p1 = f.api.list_monitors(page("")).await.unwrap().into_inner();
        assert_eq!(p1.monitors.len(), 2);
        assert!(!p1.next_page_token.is_empty());
        let p2 = f
            .api
            .list_monitors(page(&p1.next_page_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p2.monitors.len(), 1);
        assert!(p2.next_page_token.is_empty());
        let mut ids: Vec<String> = p1
            .monitors
            .iter()
            .chain(&p2.monitors)
            .map(|m| m.id.clone())
            .collect();
        let mut want = vec![m.id.clone(), private.id.clone(), third.id.clone()];
        want.sort();
        assert_eq!(ids, want, "sorted by id, each once");
        ids.dedup();
        assert_eq!(ids.len(), 3);
        let (c, _) = code(
            f.api
                .list_monitors(req(
                    &acme,
                    v1::ListMonitorsRequest {
                        page_size: 1001,
                        ..Default::default()
                    },
                ))
                .await,
        );
        assert_eq!(c, Code::InvalidArgument);

        // Update: only set fields change; a default name follows the port.
        let u = f
            .api
            .update_monitor(req(
                &acme,
                v1::UpdateMonitorRequest {
                    id: m.id.clone(),
                    port: Some(6432),
                    interval_ms: Some(30_000),
                    regions: vec!["us".into()],
                    set_regions: true,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((u.port, u.interval_ms, u.generation), (6432, 30_000, 2));
        assert_eq!(u.name, "db.example.com:6432");
        assert_eq!(u.regions, ["us"]);
        assert_eq!((u.host.as_str(), u.timeout_ms), ("db.example.com", 3_000));
        assert_eq!(u.created_at, m.created_at);
        let u = f
            .api
            .update_monitor(req(
                &acme,
                v1::UpdateMonitorRequest {
                    id: m.id.clone(),
                    name: Some("primary".into()),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (u.name.as_str(), u.port, u.generation),
            ("primary", 6432, 3)
        );

        // A rejected update changes nothing.
        let (c, m_) = code(
            f.api
                .update_monitor(req(
                    &acme,
                    v1::UpdateMonitorRequest {
                        id: m.id.clone(),
                        name: Some("renamed".into()),
                        host: Some("127.0.0.1".into()),
                        ..Default::default()
                    },
                ))
                .await,
        );
        assert_eq!(
            (c, m_.starts_with("host: 127.0.0.1 is non-public")),
            (Code::InvalidArgument, true)
        );
        let (c, _) = code(
            f.api
                .update_monitor(req(
                    &acme,
                    v1::UpdateMonitorRequest {
                        id: m.id.clone(),
                        family: Some(42),
                        ..Default::default()
                    },
                ))
                .await,
        );
        assert_eq!(c, Code::InvalidArgument);
        assert_eq!(f.get(&acme, &m.id).await.unwrap().into_inner(), u);

        // Pause and resume.
        let pr = |id: &str| v1::PauseMonitorRequest {
            tenant_id: String::new(),
            id: id.into(),
        };
        let p = f
            .api
            .pause_monitor(req(&acme, pr(&m.id)))
            .await
            .unwrap()
            .into_inner();
        assert!(p.paused);
        assert_eq!(p.generation, 4);
        let again = f
            .api
            .pause_monitor(req(&acme, pr(&m.id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            again.generation, 4,
            "pausing a paused monitor changes nothing"
        );
        let status = f
            .api
            .get_monitor_status(req(
                &acme,
                v1::GetMonitorStatusRequest {
                    tenant_id: String::new(),
                    id: m.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.overall, v1::OverallState::Paused as i32);
        assert_eq!(status.regions.len(), 1);
        let r = f
            .api
            .resume_monitor(req(
                &acme,
                v1::ResumeMonitorRequest {
                    tenant_id: String::new(),
                    id: m.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.paused);
        assert_eq!(r.generation, 5);
        assert!(!f.hub.store().get_monitor(&m.id).unwrap().unwrap().paused);

        // Delete.
        f.api
            .delete_monitor(req(
                &acme,
                v1::DeleteMonitorRequest {
                    tenant_id: String::new(),
                    id: m.id.clone(),
                },
            ))
            .await
            .unwrap();
        let (c, msg) = code(f.get(&acme, &m.id).await);
        assert_eq!((c, msg.as_str()), (Code::NotFound, "id: no such monitor"));
        assert_eq!(f.list(&acme, "").await.len(), 2);
        assert_eq!(
            f.list(OP, "acme").await.len(),
            2,
            "the operator names the tenant"
        );
        let (c, msg) = code(
            f.api
                .list_monitors(req(OP, v1::ListMonitorsRequest::default()))
                .await,
        );
        assert_eq!(
            (c, msg.as_str()),
            (
                Code::InvalidArgument,
                "tenant_id: required for the operator"
            )
        );
    }

    #[tokio::test]
    async fn tenants_never_see_or_touch_each_other() {
        let f = fixture();
        let a = f.tenant("alpha", v1::Plan::Pro).await;
        let b = f.tenant("beta", v1::Plan::Pro).await;
        f.region("eu", "").await;
        f.region("alpha-home", "alpha").await;
        let m = f
            .create(&a, monitor_req("example.com", 443, &["eu"]))
            .await
            .unwrap()
            .into_inner();

        let missing = code(f.get(&b, "mon-does-not-exist").await);
        assert_eq!(missing, (Code::NotFound, "id: no such monitor".to_string()));
        assert_eq!(
            code(f.get(&b, &m.id).await),
            missing,
            "exactly like a missing id"
        );
        let upd = v1::UpdateMonitorRequest {
            id: m.id.clone(),
            port: Some(80),
            ..Default::default()
        };
        assert_eq!(code(f.api.update_monitor(req(&b, upd)).await), missing);
        let pr = v1::PauseMonitorRequest {
            tenant_id: String::new(),
            id: m.id.clone(),
        };
        assert_eq!(code(f.api.pause_monitor(req(&b, pr)).await), missing);
        let del = v1::DeleteMonitorRequest {
            tenant_id: String::new(),
            id: m.id.clone(),
        };
        assert_eq!(code(f.api.delete_monitor(req(&b, del)).await), missing);
        let st = v1::GetMonitorStatusRequest {
            tenant_id: String::new(),
            id: m.id.clone(),
        };
        assert_eq!(code(f.api.get_monitor_status(req(&b, st)).await), missing);
        let lr = v1::ListResultsRequest {
            monitor_id: m.id.clone(),
            ..Default::default()
        };
        assert_eq!(
            code(f.api.list_results(req(&b, lr)).await),
            (Code::NotFound, "monitor_id: no such monitor".to_string())
        );
        assert_eq!(f.get(&a, &m.id).await.unwrap().into_inner(), m, "untouched");

        // Naming the other tenant reveals nothing, not even that it exists.
        assert!(f.list(&b, "").await.is_empty());
        let named = code(
            f.api
                .list_monitors(req(
                    &b,
                    v1::ListMonitorsRequest {
                        tenant_id: "alpha".into(),
                        ..Default::default()
                    },
                ))
                .await,
        );
        let nobody = code(
            f.api
                .list_monitors(req(
                    &b,
                    v1::ListMonitorsRequest {
                        tenant_id: "nobody".into(),
                        ..Default::default()
                    },
                ))
                .await,
        );
        assert_eq!(named, (Code::NotFound, NO_SUCH_TENANT.to_string()));
        assert_eq!(named, nobody);
        let mut cross = monitor_req("example.net", 443, &["eu"]);
        cross.tenant_id = "alpha".into();
        assert_eq!(code(f.create(&b, cross).await).0, Code::NotFound);

        // Alpha's private region is invisible and unusable for beta.
        let names = |token: &str| {
            let api = &f.api;
            let token = token.to_string();
            async move {
                api.list_regions(req(&token, v1::ListRegionsRequest {}))
                    .await
                    .unwrap()
                    .into_inner()
                    .regions
                    .into_iter()
                    .map(|r| r.name)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(names(&b).await, ["eu"]);
        assert_eq!(names(&a).await, ["alpha-home", "eu"]);
        assert_eq!(names(OP).await, ["alpha-home", "eu"]);
        let (c, msg) = code(
            f.create(&b, monitor_req("10.0.0.1", 22, &["alpha-home"]))
                .await,
        );
        assert_eq!(
            (c, msg.as_str()),
            (
                Code::InvalidArgument,
                "regions: unknown region \"alpha-home\""
            )
        );
        let (c2, msg2) = code(
            f.create(&b, monitor_req("10.0.0.1", 22, &["nowhere"]))
                .await,
        );
        assert_eq!(
            (c2, msg2.as_str()),
            (Code::InvalidArgument, "regions: unknown region \"nowhere\"")
        );
        f.create(&a, monitor_req("10.0.0.1", 22, &["alpha-home"]))
            .await
            .unwrap();
        assert_eq!(f.list(&a, "").await.len(), 2);
        assert!(f.list(&b, "").await.is_empty());
    }

    #[tokio::test]
    async fn plans_gate_port_monitors_and_their_number() {
        let mut plans = Plans::default();
        plans.basic.max_monitors = 2;
        let f = fixture_with(plans);
        let free = f.tenant("freeloader", v1::Plan::Free).await;
        let basic = f.tenant("small", v1::Plan::Basic).await;
        f.region("eu", "").await;

        let (c, msg) = code(
            f.create(&free, monitor_req("example.com", 443, &["eu"]))
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition);
        assert_eq!(
            msg,
            "plan: the free plan does not include port monitors; basic or above is required"
        );

        f.create(&basic, monitor_req("a.example.com", 443, &["eu"]))
            .await
            .unwrap();
        let mut fast = monitor_req("b.example.com", 443, &["eu"]);
        fast.interval_ms = 10_000;
        let (c, msg) = code(f.create(&basic, fast).await);
        assert_eq!(c, Code::FailedPrecondition);
        assert_eq!(
            msg,
            "interval_ms: 10000 ms is below the basic plan's minimum of 60 s"
        );
        f.create(&basic, monitor_req("b.example.com", 443, &["eu"]))
            .await
            .unwrap();
        let (c, msg) = code(
            f.create(&basic, monitor_req("c.example.com", 443, &["eu"]))
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition);
        assert!(
            msg.starts_with("plan: the basic plan allows at most 2 monitors"),
            "{msg}"
        );

        // Upgrading lifts the limit; downgrading to free stops resumes and updates.
        let plan = |p: v1::Plan| {
            req(
                OP,
                v1::SetTenantPlanRequest {
                    tenant_id: "small".into(),
                    plan: p as i32,
                },
            )
        };
        f.api.set_tenant_plan(plan(v1::Plan::Pro)).await.unwrap();
        let third = f
            .create(&basic, monitor_req("c.example.com", 443, &["eu"]))
            .await
            .unwrap()
            .into_inner();
        f.api
            .pause_monitor(req(
                &basic,
                v1::PauseMonitorRequest {
                    tenant_id: String::new(),
                    id: third.id.clone(),
                },
            ))
            .await
            .unwrap();
        f.api.set_tenant_plan(plan(v1::Plan::Free)).await.unwrap();
        let (c, msg) = code(
            f.api
                .resume_monitor(req(
                    &basic,
                    v1::ResumeMonitorRequest {
                        tenant_id: String::new(),
                        id: third.id.clone(),
                    },
                ))
                .await,
        );
        assert_eq!((c, msg.contains("free")), (Code::FailedPrecondition, true));
    }

    /// The quota, the counts and the listing come from the store's per-tenant
    /// index: exact at the limit, after deletes, under concurrent creates, and
    /// unaffected by another tenant's monitors.
    #[tokio::test]
    async fn quota_counts_and_listing_are_per_tenant_and_exact() {
        let mut plans = Plans::default();
        plans.basic.max_monitors = 3;
        let f = fixture_with(plans);
        let busy = f.tenant("busy", v1::Plan::Pro).await;
        let small = f.tenant("small", v1::Plan::Basic).await;
        f.region("eu", "").await;
        // Another tenant's monitors, written straight into the store.
        for i in 0..25 {
            f.hub
                .store()
                .put_monitor(&v1::Monitor {
                    id: format!("mon-busy-{i:02}"),
                    tenant_id: "busy".into(),
                    host: format!("h{i}.example.com"),
                    port: 443,
                    regions: vec!["eu".into()],
                    ..Default::default()
                })
                .unwrap();
        }
        let api = &f.api;
        let count = |tenant: &'static str| async move {
            api.get_tenant(req(
                OP,
                v1::GetTenantRequest {
                    tenant_id: tenant.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .monitor_count
        };
        let mut mine = Vec::new();
        for host in ["a.example.com", "b.example.com", "c.example.com"] {
            let m = f
                .create(&small, monitor_req(host, 443, &["eu"]))
                .await
                .unwrap();
            mine.push(m.into_inner().id);
        }
        let (c, msg) = code(
            f.create(&small, monitor_req("d.example.com", 443, &["eu"]))
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition);
        assert!(
            msg.contains("allows at most 3 monitors and this tenant has 3"),
            "{msg}"
        );
        assert_eq!((count("small").await, count("busy").await), (3, 25));
        let tenants = f
            .api
            .list_tenants(req(OP, v1::ListTenantsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .tenants;
        let counts: Vec<(&str, u32)> = tenants
            .iter()
            .map(|t| (t.id.as_str(), t.monitor_count))
            .collect();
        assert_eq!(counts, [("busy", 25), ("small", 3)]);

        // A delete frees one place; of four racing creates exactly one gets it.
        f.api
            .delete_monitor(req(
                &small,
                v1::DeleteMonitorRequest {
                    tenant_id: String::new(),
                    id: mine[1].clone(),
                },
            ))
            .await
            .unwrap();
        assert_eq!(count("small").await, 2);
        let (r1, r2, r3, r4) = tokio::join!(
            f.create(&small, monitor_req("e.example.com", 443, &["eu"])),
            f.create(&small, monitor_req("f.example.com", 443, &["eu"])),
            f.create(&small, monitor_req("g.example.com", 443, &["eu"])),
            f.create(&small, monitor_req("h.example.com", 443, &["eu"])),
        );
        let won = [r1, r2, r3, r4].into_iter().filter(Result::is_ok).count();
        assert_eq!(won, 1);
        assert_eq!(count("small").await, 3);
        let listed = f.list(&small, "").await;
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|m| m.tenant_id == "small"));
        assert!(listed.windows(2).all(|w| w[0].id < w[1].id), "sorted by id");

        // Pages of the other tenant: sorted by id, each page after the last.
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let r = f
                .api
                .list_monitors(req(
                    &busy,
                    v1::ListMonitorsRequest {
                        tenant_id: String::new(),
                        page_size: 10,
                        page_token: token.clone(),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(r.monitors.len() <= 10);
            seen.extend(r.monitors.into_iter().map(|m| m.id));
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        let want: Vec<String> = (0..25).map(|i| format!("mon-busy-{i:02}")).collect();
        assert_eq!(seen, want);

        // Deleting every monitor of a tenant leaves it at zero, listing nothing.
        for m in f.list(&small, "").await {
            f.api
                .delete_monitor(req(
                    &small,
                    v1::DeleteMonitorRequest {
                        tenant_id: String::new(),
                        id: m.id,
                    },
                ))
                .await
                .unwrap();
        }
        assert_eq!((count("small").await, count("busy").await), (0, 25));
        assert!(f.list(&small, "").await.is_empty());
    }

    #[tokio::test]
    async fn a_rejected_create_leaves_the_store_unchanged() {
        let mut plans = Plans::default();
        plans.pro.max_monitors = 1;
        let f = fixture_with(plans);
        let acme = f.tenant("acme", v1::Plan::Pro).await;
        let free = f.tenant("gratis", v1::Plan::Free).await;
        f.region("eu", "").await;
        f.region("theirs", "gratis").await;

        let with = |edit: fn(&mut v1::CreateMonitorRequest)| {
            let mut r = monitor_req("example.com", 443, &["eu"]);
            edit(&mut r);
            r
        };
        let bad = vec![
            (monitor_req("", 443, &["eu"]), "host"),
            (monitor_req("example.com", 0, &["eu"]), "port"),
            (monitor_req("example.com", 443, &[]), "regions"),
            (monitor_req("example.com", 443, &["eu", "eu"]), "regions"),
            (monitor_req("example.com", 443, &["theirs"]), "regions"),
            (monitor_req("127.0.0.1", 443, &["eu"]), "host"),
            (monitor_req("localhost", 443, &["eu"]), "host"),
            (with(|r| r.timeout_ms = 60_000), "timeout_ms"),
            (with(|r| r.close_mode = 9), "close_mode"),
            (with(|r| r.name = "x".repeat(201)), "name"),
            (with(|r| r.channel_ids = vec![String::new()]), "channel_ids"),
        ];

        let before = f.stored_monitors();
        for (r, field) in bad {
            let (c, msg) = code(f.create(&acme, r).await);
            assert_eq!(c, Code::InvalidArgument, "{msg}");
            assert!(msg.starts_with(&format!("{field}: ")), "{field}: {msg}");
        }
        let (c, _) = code(
            f.create(&free, monitor_req("example.com", 443, &["eu"]))
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition);
        assert_eq!(f.stored_monitors(), before, "nothing written");
        assert!(before.is_empty());

        f.create(&acme, monitor_req("example.com", 443, &["eu"]))
            .await
            .unwrap();
        let one = f.stored_monitors();
        assert_eq!(one.len(), 1);
        let (c, _) = code(
            f.create(&acme, monitor_req("example.org", 443, &["eu"]))
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition);
        assert_eq!(f.stored_monitors(), one);
    }

    #[tokio::test]
    async fn results_page_and_bad_windows_are_refused() {
        let f = fixture();
        let acme = f.tenant("acme", v1::Plan::Pro).await;
        f.region("eu", "").await;
        let m = f
            .create(&acme, monitor_req("example.com", 443, &["eu"]))
            .await
            .unwrap()
            .into_inner();
        let results: Vec<v1::CheckResult> = (1..=5u64)
            .map(|i| v1::CheckResult {
                monitor_id: m.id.clone(),
                checked_at: Some(to_timestamp(from_unix_micros(i * 1_000_000))),
                outcome: v1::Outcome::Ok as i32,
                ..Default::default()
            })
            .collect();
        let batch: Vec<Ingest> = results
            .iter()
            .enumerate()
            .map(|(i, r)| Ingest {
                seq: i as u64 + 1,
                result: r,
            })
            .collect();
        f.hub
            .store()
            .ingest("agent-1", "eu", &batch, 0)
            .await
            .unwrap();

        let list = |page_size: u32, token: &str| {
            req(
                &acme,
                v1::ListResultsRequest {
                    monitor_id: m.id.clone(),
                    page_size,
                    page_token: token.into(),
                    ..Default::default()
                },
            )
        };
        let p1 = f.api.list_results(list(3, "")).await.unwrap().into_inner();
        assert_eq!(p1.results.len(), 3);
        let p2 = f
            .api
            .list_results(list(3, &p1.next_page_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p2.results.len(), 2);
        assert!(p2.next_page_token.is_empty());

        let (c, msg) = code(f.api.list_results(list(3, "zz-not-hex")).await);
        assert_eq!(
            (c, msg.starts_with("page_token: ")),
            (Code::InvalidArgument, true)
        );
        let (c, msg) = code(f.api.list_results(list(3, "00ff")).await);
        assert_eq!(
            (c, msg.starts_with("page_token: ")),
            (Code::InvalidArgument, true)
        );
        let (c, msg) = code(f.api.list_results(list(1001, "")).await);
        assert_eq!(
            (c, msg.starts_with("page_size: ")),
            (Code::InvalidArgument, true)
        );

        let window = |since: prost_types::Timestamp, until: prost_types::Timestamp| {
            req(
                &acme,
                v1::ListResultsRequest {
                    monitor_id: m.id.clone(),
                    since: Some(since),
                    until: Some(until),
                    ..Default::default()
                },
            )
        };
        let ts = |s: i64, n: i32| prost_types::Timestamp {
            seconds: s,
            nanos: n,
        };
        let got = f
            .api
            .list_results(window(ts(2, 0), ts(4, 0)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.results.len(), 2, "since inclusive, until exclusive");
        let (c, msg) = code(f.api.list_results(window(ts(4, 0), ts(2, 0))).await);
        assert_eq!(
            (c, msg.as_str()),
            (Code::InvalidArgument, "since: is after until")
        );
        let (c, msg) = code(f.api.list_results(window(ts(-5, 0), ts(2, 0))).await);
        assert_eq!(
            (c, msg.starts_with("since: ")),
            (Code::InvalidArgument, true)
        );
        let (c, msg) = code(
            f.api
                .list_results(window(ts(1, 0), ts(2, 2_000_000_000)))
                .await,
        );
        assert_eq!(
            (c, msg.starts_with("until: ")),
            (Code::InvalidArgument, true)
        );
        // A token from a wider window past this one's end: an empty page, no error.
        let mut narrow = window(ts(0, 0), ts(2, 0));
        narrow.get_mut().page_token = p1.next_page_token.clone();
        let got = f.api.list_results(narrow).await.unwrap().into_inner();
        assert!(got.results.is_empty());
    }

    async fn next_event(s: &mut EventStream) -> Option<v1::Event> {
        tokio::time::timeout(Duration::from_millis(300), s.next())
            .await
            .ok()
            .flatten()
            .map(|r| r.unwrap())
    }

    #[tokio::test]
    async fn events_and_incidents_reach_only_their_tenant() {
        let f = fixture();
        let a = f.tenant("alpha", v1::Plan::Pro).await;
        let b = f.tenant("beta", v1::Plan::Pro).await;
        f.region("eu", "").await;
        let m = f
            .create(&a, monitor_req("example.com", 443, &["eu"]))
            .await
            .unwrap()
            .into_inner();

        let watch = |token: &str| req(token, v1::WatchEventsRequest::default());
        let mut op = f.api.watch_events(watch(OP)).await.unwrap().into_inner();
        let mut sa = f.api.watch_events(watch(&a)).await.unwrap().into_inner();
        let mut sb = f.api.watch_events(watch(&b)).await.unwrap().into_inner();
        let other = v1::WatchEventsRequest {
            tenant_id: String::new(),
            monitor_id: m.id.clone(),
        };
        assert_eq!(
            code(f.api.watch_events(req(&b, other)).await).0,
            Code::NotFound
        );

        // An agent comes online in eu (operator-only news) and reports the port refused.
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        f.hub.agent_connected(
            "eu",
            v1::Agent {
                agent_id: "eu-1".into(),
                ..Default::default()
            },
            tx,
        );
        let refused = v1::CheckResult {
            monitor_id: m.id.clone(),
            region: "eu".into(),
            checked_at: Some(now_ts()),
            outcome: v1::Outcome::Refused as i32,
            detail: "Connection refused".into(),
            ..Default::default()
        };
        f.hub.store().put_monitor(&m).unwrap();
        f.hub.results_stored(vec![refused]).await.unwrap();

        let mut kinds = Vec::new();
        while let Some(e) = next_event(&mut op).await {
            kinds.push(match e.kind.unwrap() {
                v1::event::Kind::ProbeRegion(_) => "probe_region",
                v1::event::Kind::RegionState(_) => "region_state",
                v1::event::Kind::IncidentOpened(_) => "incident_opened",
                v1::event::Kind::IncidentClosed(_) => "incident_closed",
                v1::event::Kind::IncidentFlapping(_) => "incident_flapping",
            });
        }
        assert_eq!(kinds, ["probe_region", "region_state", "incident_opened"]);
        let mut seen_by_a = 0;
        while let Some(e) = next_event(&mut sa).await {
            assert!(!matches!(e.kind, Some(v1::event::Kind::ProbeRegion(_))));
            seen_by_a += 1;
        }
        assert_eq!(seen_by_a, 2);
        assert!(
            next_event(&mut sb).await.is_none(),
            "beta sees nothing of alpha's"
        );

        // Incidents: alpha lists and reads its own; beta gets NOT_FOUND.
        let list = |token: &str, open_only: bool| {
            req(
                token,
                v1::ListIncidentsRequest {
                    open_only,
                    ..Default::default()
                },
            )
        };
        let mine = f
            .api
            .list_incidents(list(&a, true))
            .await
            .unwrap()
            .into_inner()
            .incidents;
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].monitor_id, m.id);
        assert!(
            f.api
                .list_incidents(list(&b, false))
                .await
                .unwrap()
                .into_inner()
                .incidents
                .is_empty()
        );
        let get = |token: &str, id: &str| {
            req(
                token,
                v1::GetIncidentRequest {
                    tenant_id: String::new(),
                    id: id.into(),
                },
            )
        };
        assert_eq!(
            f.api
                .get_incident(get(&a, &mine[0].id))
                .await
                .unwrap()
                .into_inner(),
            mine[0]
        );
        let hidden = code(f.api.get_incident(get(&b, &mine[0].id)).await);
        assert_eq!(hidden, code(f.api.get_incident(get(&b, "inc-nope")).await));
        assert_eq!(hidden.0, Code::NotFound);
        let status = f
            .api
            .get_monitor_status(req(
                &a,
                v1::GetMonitorStatusRequest {
                    tenant_id: String::new(),
                    id: m.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.overall, v1::OverallState::Down as i32);
        assert_eq!(status.open_incident_id, mine[0].id);

        // Agents: the live one is listed online, for the operator only.
        let agents = f
            .api
            .list_agents(req(
                OP,
                v1::ListAgentsRequest {
                    region: "eu".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .agents;
        assert_eq!(agents.len(), 1);
        assert!(agents[0].online);
        assert_eq!(
            code(
                f.api
                    .list_agents(req(&a, v1::ListAgentsRequest::default()))
                    .await
            )
            .0,
            Code::PermissionDenied
        );
    }

    fn webhook_channel(url: &str, default: bool) -> v1::Channel {
        v1::Channel {
            name: "ops hook".into(),
            is_default: default,
            config: Some(v1::channel::Config::Webhook(v1::WebhookConfig {
                url: url.into(),
                secret: "0123456789abcdef-secret".into(),
            })),
            ..Default::default()
        }
    }

    async fn create_channel(
        f: &Fixture,
        token: &str,
        tenant_id: &str,
        c: v1::Channel,
    ) -> Result<Response<v1::Channel>, Status> {
        f.api
            .create_channel(req(
                token,
                v1::CreateChannelRequest {
                    tenant_id: tenant_id.into(),
                    channel: Some(c),
                },
            ))
            .await
    }

    #[tokio::test]
    async fn channels_are_per_tenant_write_only_and_validated() {
        let f = fixture();
        let a = f.tenant("alpha", v1::Plan::Pro).await;
        let b = f.tenant("beta", v1::Plan::Pro).await;
        f.region("eu", "").await;

        let ch = create_channel(
            &f,
            &a,
            "",
            webhook_channel("https://hooks.example.com/x", true),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(ch.tenant_id, "alpha");
        assert!(ch.id.starts_with("ch-"));
        let Some(v1::channel::Config::Webhook(w)) = &ch.config else {
            panic!("webhook config")
        };
        assert!(w.secret.is_empty(), "the secret is never returned");
        let stored = f.hub.store().get_channel(&ch.id).unwrap().unwrap();
        let Some(v1::channel::Config::Webhook(w)) = &stored.config else {
            panic!()
        };
        assert_eq!(w.secret, "0123456789abcdef-secret", "but it is stored");

        // Bad config: INVALID_ARGUMENT naming the field, nothing stored.
        let before = f.hub.store().list_channels().unwrap().len();
        for (c, field) in [
            (
                webhook_channel("http://127.0.0.1:9/x", false),
                "channel.webhook.url",
            ),
            (
                webhook_channel("ftp://example.com/x", false),
                "channel.webhook.url",
            ),
            (webhook_channel("::not a url", false), "channel.webhook.url"),
            (
                v1::Channel {
                    config: Some(v1::channel::Config::Email(v1::EmailConfig {
                        from: "a@example.com".into(),
                        to: vec!["b@example.com".into()],
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                "channel.email.smtp_host",
            ),
        ] {
            let (c, msg) = code(create_channel(&f, &a, "", c).await);
            assert_eq!(c, Code::InvalidArgument, "{msg}");
            assert!(msg.starts_with(&format!("{field}: ")), "{msg}");
        }
        let (c, msg) = code(
            f.api
                .create_channel(req(&a, v1::CreateChannelRequest::default()))
                .await,
        );
        assert_eq!(
            (c, msg.as_str()),
            (Code::InvalidArgument, "channel: required")
        );
        assert_eq!(f.hub.store().list_channels().unwrap().len(), before);

        // The operator's own channel may reach internal systems; tenants never see it.
        let op_ch = create_channel(&f, OP, "", webhook_channel("http://127.0.0.1:9/x", false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(op_ch.tenant_id, "");
        let list = |token: &str, tenant: &str| {
            req(
                token,
                v1::ListChannelsRequest {
                    tenant_id: tenant.into(),
                },
            )
        };
        let ids = |r: v1::ListChannelsResponse| -> Vec<String> {
            r.channels.into_iter().map(|c| c.id).collect()
        };
        assert_eq!(
            ids(f
                .api
                .list_channels(list(&a, ""))
                .await
                .unwrap()
                .into_inner()),
            vec![ch.id.clone()]
        );
        assert_eq!(
            ids(f
                .api
                .list_channels(list(OP, ""))
                .await
                .unwrap()
                .into_inner()),
            vec![op_ch.id.clone()]
        );
        assert_eq!(
            ids(f
                .api
                .list_channels(list(OP, "alpha"))
                .await
                .unwrap()
                .into_inner()),
            vec![ch.id.clone()]
        );
        assert!(
            ids(f
                .api
                .list_channels(list(&b, ""))
                .await
                .unwrap()
                .into_inner())
            .is_empty()
        );
        let delete = |token: &str, id: &str| {
            req(
                token,
                v1::DeleteChannelRequest {
                    tenant_id: String::new(),
                    id: id.into(),
                },
            )
        };
        assert_eq!(
            code(f.api.delete_channel(delete(&b, &ch.id)).await).0,
            Code::NotFound
        );
        let test = req(
            &b,
            v1::TestChannelRequest {
                tenant_id: String::new(),
                id: ch.id.clone(),
            },
        );
        assert_eq!(code(f.api.test_channel(test).await).0, Code::NotFound);

        // A monitor names only its tenant's channels; a named channel cannot go.
        let mut m = monitor_req("example.com", 443, &["eu"]);
        m.channel_ids = vec![op_ch.id.clone()];
        let (c, msg) = code(f.create(&a, m.clone()).await);
        assert_eq!(c, Code::InvalidArgument);
        assert!(msg.starts_with("channel_ids: unknown channel"), "{msg}");
        m.channel_ids = vec![ch.id.clone()];
        let mon = f.create(&a, m).await.unwrap().into_inner();
        let (c, msg) = code(f.api.delete_channel(delete(&a, &ch.id)).await);
        assert_eq!(c, Code::FailedPrecondition, "{msg}");
        f.api
            .delete_monitor(req(
                &a,
                v1::DeleteMonitorRequest {
                    tenant_id: String::new(),
                    id: mon.id,
                },
            ))
            .await
            .unwrap();
        f.api.delete_channel(delete(&a, &ch.id)).await.unwrap();
        assert!(f.hub.store().get_channel(&ch.id).unwrap().is_none());
    }

    #[tokio::test]
    async fn an_incident_plans_one_delivery_per_default_channel_in_its_transaction() {
        let f = fixture();
        let a = f.tenant("alpha", v1::Plan::Pro).await;
        let b = f.tenant("beta", v1::Plan::Pro).await;
        f.region("eu", "").await;
        let d1 = create_channel(
            &f,
            &a,
            "",
            webhook_channel("https://one.example.com/x", true),
        )
        .await
        .unwrap()
        .into_inner();
        create_channel(
            &f,
            &a,
            "",
            webhook_channel("https://two.example.com/x", false),
        )
        .await
        .unwrap();
        create_channel(
            &f,
            &b,
            "",
            webhook_channel("https://three.example.com/x", true),
        )
        .await
        .unwrap();
        let m = f
            .create(&a, monitor_req("example.com", 443, &["eu"]))
            .await
            .unwrap()
            .into_inner();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        f.hub.agent_connected(
            "eu",
            v1::Agent {
                agent_id: "eu-1".into(),
                ..Default::default()
            },
            tx,
        );
        let refused = v1::CheckResult {
            monitor_id: m.id.clone(),
            region: "eu".into(),
            checked_at: Some(now_ts()),
            outcome: v1::Outcome::Refused as i32,
            ..Default::default()
        };
        f.hub.results_stored(vec![refused]).await.unwrap();
        let incident = f.hub.store().open_incident(&m.id).unwrap().unwrap();

        let list = |token: &str| {
            req(
                token,
                v1::ListDeliveriesRequest {
                    incident_id: incident.id.clone(),
                    ..Default::default()
                },
            )
        };
        let ds = f
            .api
            .list_deliveries(list(&a))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        assert_eq!(ds.len(), 1, "one default channel of alpha: {ds:?}");
        assert_eq!(ds[0].channel_id, d1.id);
        assert_eq!(ds[0].kind, v1::DeliveryKind::Opened as i32);
        assert_eq!(ds[0].state, v1::DeliveryState::Pending as i32);
        assert_eq!(
            ds[0].idempotency_key,
            format!("{}:opened:{}", incident.id, d1.id)
        );
        assert!(
            f.api
                .list_deliveries(list(&b))
                .await
                .unwrap()
                .into_inner()
                .deliveries
                .is_empty(),
            "beta sees none of alpha's deliveries"
        );
        assert_eq!(f.hub.store().pending_deliveries().unwrap().len(), 1);

        // Recovery: the resolve goes to the channel told of the opening.
        let ok = v1::CheckResult {
            monitor_id: m.id.clone(),
            region: "eu".into(),
            checked_at: Some(now_ts()),
            outcome: v1::Outcome::Ok as i32,
            ..Default::default()
        };
        f.hub.results_stored(vec![ok]).await.unwrap();
        let ds = f
            .api
            .list_deliveries(list(&a))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        let kinds: Vec<i32> = ds.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                v1::DeliveryKind::Resolved as i32,
                v1::DeliveryKind::Opened as i32
            ],
            "newest first"
        );
        assert_eq!(ds[0].channel_id, d1.id);
    }
}
