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
//!   plan quotas, a region still in use) run under one lock (`begin_write`) so
//!   two concurrent requests cannot both pass the same check;
//! - every write goes through `changes` (the change and its consequences in
//!   one transaction, flushed, and only then the live state: a monitor change
//!   reaches agents only once it is durable); this module writes nothing
//!   itself, it authenticates, validates and calls `Changes`;
//! - channel secrets (webhook secret, SMTP password, PagerDuty routing key, the
//!   Slack URL's path) are write-only: every answer carries
//!   `channels::redacted`; the operator's own channels have an empty tenant id.
//!
//! One module per resource (`tenants`, `tokens`, `regions`, `agents`,
//! `monitors`, `results`, `incidents`, `channels`, `events`), each an
//! `impl AdminApi` block with the RPCs of its resource; this module holds what
//! they share and the one `AdminService` impl tonic needs, which only hands
//! each RPC to its resource.

mod agents;
mod channels;
mod events;
mod incidents;
mod maintenance;
mod monitors;
mod regions;
mod results;
mod routing;
mod tenants;
mod tokens;

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;
use portwatch_proto::v1::admin_service_server::AdminService;
use tokio::sync::{Mutex, MutexGuard};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Caller};
use crate::changes::Changes;
use crate::channels::Senders;
use crate::hub::Hub;
use crate::plans::Plans;
use crate::store::{Store, StoreError};
use crate::validate;

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
    /// Where every write goes: the change and its consequences in one
    /// transaction, flushed, then the live state.
    changes: Changes,
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

/// Who a call may act for; `AdminApi::begin` checks it before anything else.
#[derive(Clone, Copy)]
enum Scope<'r> {
    /// Anyone the admin API admits; the call decides the rest.
    Anyone,
    /// The operator only; the text completes "only the operator may …".
    Operator(&'static str),
    /// The operator only, acting on the tenant named (`tenant_scope`).
    OperatorOn(&'static str, &'r str),
    /// The tenant named, or the caller's own (`tenant_scope`).
    Tenant(&'r str),
    /// The owner of the channels named (`channel_owner`).
    Channels(&'r str),
}

/// A call that passed its preamble.
struct Call<'a> {
    caller: Caller,
    /// The tenant it acts on: empty for `Scope::Anyone` and `Scope::Operator`,
    /// and for the operator's own channels.
    tenant: String,
    /// The hash of the caller's token (a stream ends when it is revoked).
    token_hash: String,
    /// The write lock, for calls begun with `begin_write`.
    _writes: Option<MutexGuard<'a, ()>>,
}

impl AdminApi {
    pub fn new(hub: Arc<Hub>, auth: Auth, plans: Plans, senders: Arc<Senders>) -> AdminApi {
        AdminApi {
            changes: Changes::new(hub.clone(), auth.clone()),
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

    /// The preamble of every RPC: who calls (from the bearer token), and
    /// whether and for whom it may act (`scope`). Nothing is read from the
    /// request's body here beyond what `scope` names, so the RPC validates
    /// the rest itself, after this.
    fn begin<T>(&self, request: &Request<T>, scope: Scope<'_>) -> Result<Call<'_>, Status> {
        let (caller, token_hash) = self.auth.admin_with_hash(request.metadata())?;
        if !self.hub.is_active() {
            return Err(self.hub.standby_status());
        }
        let tenant = match scope {
            Scope::Anyone => String::new(),
            Scope::Operator(what) => {
                operator_only(&caller, what)?;
                String::new()
            }
            Scope::OperatorOn(what, requested) => {
                operator_only(&caller, what)?;
                self.tenant_scope(&caller, requested)?
            }
            Scope::Tenant(requested) => self.tenant_scope(&caller, requested)?,
            Scope::Channels(requested) => self.channel_owner(&caller, requested)?,
        };
        Ok(Call {
            caller,
            tenant,
            token_hash,
            _writes: None,
        })
    }

    /// `begin` for a call that writes: after the preamble, takes the write
    /// lock, held until the call returns. Its checks (duplicates, quotas, a
    /// region or channel still in use) and its write then see no other
    /// request's write in between.
    async fn begin_write<T>(
        &self,
        request: &Request<T>,
        scope: Scope<'_>,
    ) -> Result<Call<'_>, Status> {
        let mut call = self.begin(request, scope)?;
        call._writes = Some(self.writes.lock().await);
        Ok(call)
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

    /// Whose channels a call acts on: the operator without a tenant id acts on
    /// the operator's own channels (owner ""); otherwise as `tenant_scope`.
    fn channel_owner(&self, caller: &Caller, requested: &str) -> Result<String, Status> {
        match caller {
            Caller::Operator if requested.is_empty() => Ok(String::new()),
            _ => self.tenant_scope(caller, requested),
        }
    }

    fn tenant(&self, id: &str) -> Result<v1::Tenant, Status> {
        self.store()
            .get_tenant(id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(NO_SUCH_TENANT))
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
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    // ------------------------------------------------------------ tenants

    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        AdminApi::who_am_i(self, request).await
    }

    async fn create_tenant(
        &self,
        request: Request<v1::CreateTenantRequest>,
    ) -> Result<Response<v1::CreateTenantResponse>, Status> {
        AdminApi::create_tenant(self, request).await
    }

    async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        AdminApi::list_tenants(self, request).await
    }

    async fn get_tenant(
        &self,
        request: Request<v1::GetTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        AdminApi::get_tenant(self, request).await
    }

    async fn set_tenant_plan(
        &self,
        request: Request<v1::SetTenantPlanRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        AdminApi::set_tenant_plan(self, request).await
    }

    // ------------------------------------------------------------ tokens

    async fn create_tenant_token(
        &self,
        request: Request<v1::CreateTenantTokenRequest>,
    ) -> Result<Response<v1::CreateTenantTokenResponse>, Status> {
        AdminApi::create_tenant_token(self, request).await
    }

    async fn revoke_tenant_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        AdminApi::revoke_tenant_token(self, request).await
    }

    async fn create_agent_token(
        &self,
        request: Request<v1::CreateAgentTokenRequest>,
    ) -> Result<Response<v1::CreateAgentTokenResponse>, Status> {
        AdminApi::create_agent_token(self, request).await
    }

    async fn list_agent_tokens(
        &self,
        request: Request<v1::ListAgentTokensRequest>,
    ) -> Result<Response<v1::ListAgentTokensResponse>, Status> {
        AdminApi::list_agent_tokens(self, request).await
    }

    async fn revoke_agent_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        AdminApi::revoke_agent_token(self, request).await
    }

    // ------------------------------------------------------------ regions and agents

    async fn create_region(
        &self,
        request: Request<v1::CreateRegionRequest>,
    ) -> Result<Response<v1::Region>, Status> {
        AdminApi::create_region(self, request).await
    }

    async fn list_regions(
        &self,
        request: Request<v1::ListRegionsRequest>,
    ) -> Result<Response<v1::ListRegionsResponse>, Status> {
        AdminApi::list_regions(self, request).await
    }

    async fn delete_region(
        &self,
        request: Request<v1::DeleteRegionRequest>,
    ) -> Result<Response<v1::DeleteRegionResponse>, Status> {
        AdminApi::delete_region(self, request).await
    }

    async fn list_agents(
        &self,
        request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        AdminApi::list_agents(self, request).await
    }

    // ------------------------------------------------------------ monitors

    async fn create_monitor(
        &self,
        request: Request<v1::CreateMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        AdminApi::create_monitor(self, request).await
    }

    async fn get_monitor(
        &self,
        request: Request<v1::GetMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        AdminApi::get_monitor(self, request).await
    }

    async fn list_monitors(
        &self,
        request: Request<v1::ListMonitorsRequest>,
    ) -> Result<Response<v1::ListMonitorsResponse>, Status> {
        AdminApi::list_monitors(self, request).await
    }

    async fn update_monitor(
        &self,
        request: Request<v1::UpdateMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        AdminApi::update_monitor(self, request).await
    }

    async fn delete_monitor(
        &self,
        request: Request<v1::DeleteMonitorRequest>,
    ) -> Result<Response<v1::DeleteMonitorResponse>, Status> {
        AdminApi::delete_monitor(self, request).await
    }

    async fn pause_monitor(
        &self,
        request: Request<v1::PauseMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        AdminApi::pause_monitor(self, request).await
    }

    async fn resume_monitor(
        &self,
        request: Request<v1::ResumeMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        AdminApi::resume_monitor(self, request).await
    }

    async fn get_monitor_status(
        &self,
        request: Request<v1::GetMonitorStatusRequest>,
    ) -> Result<Response<v1::MonitorStatus>, Status> {
        AdminApi::get_monitor_status(self, request).await
    }

    // ------------------------------------------------------------ results

    async fn list_results(
        &self,
        request: Request<v1::ListResultsRequest>,
    ) -> Result<Response<v1::ListResultsResponse>, Status> {
        AdminApi::list_results(self, request).await
    }

    // ------------------------------------------------------------ incidents

    async fn list_incidents(
        &self,
        request: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsResponse>, Status> {
        AdminApi::list_incidents(self, request).await
    }

    async fn get_incident(
        &self,
        request: Request<v1::GetIncidentRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        AdminApi::get_incident(self, request).await
    }

    async fn acknowledge_incident(
        &self,
        request: Request<v1::AcknowledgeIncidentRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        AdminApi::acknowledge_incident(self, request).await
    }

    // ------------------------------------------------------------ maintenance

    async fn create_maintenance_window(
        &self,
        request: Request<v1::CreateMaintenanceWindowRequest>,
    ) -> Result<Response<v1::MaintenanceWindow>, Status> {
        AdminApi::create_maintenance_window(self, request).await
    }

    async fn list_maintenance_windows(
        &self,
        request: Request<v1::ListMaintenanceWindowsRequest>,
    ) -> Result<Response<v1::ListMaintenanceWindowsResponse>, Status> {
        AdminApi::list_maintenance_windows(self, request).await
    }

    async fn delete_maintenance_window(
        &self,
        request: Request<v1::DeleteMaintenanceWindowRequest>,
    ) -> Result<Response<v1::DeleteMaintenanceWindowResponse>, Status> {
        AdminApi::delete_maintenance_window(self, request).await
    }

    async fn mute_monitor(
        &self,
        request: Request<v1::MuteMonitorRequest>,
    ) -> Result<Response<v1::MaintenanceWindow>, Status> {
        AdminApi::mute_monitor(self, request).await
    }

    // ------------------------------------------------------------ channels and deliveries

    async fn create_channel(
        &self,
        request: Request<v1::CreateChannelRequest>,
    ) -> Result<Response<v1::Channel>, Status> {
        AdminApi::create_channel(self, request).await
    }

    async fn list_channels(
        &self,
        request: Request<v1::ListChannelsRequest>,
    ) -> Result<Response<v1::ListChannelsResponse>, Status> {
        AdminApi::list_channels(self, request).await
    }

    async fn delete_channel(
        &self,
        request: Request<v1::DeleteChannelRequest>,
    ) -> Result<Response<v1::DeleteChannelResponse>, Status> {
        AdminApi::delete_channel(self, request).await
    }

    async fn get_routing_rules(
        &self,
        request: Request<v1::GetRoutingRulesRequest>,
    ) -> Result<Response<v1::RoutingRules>, Status> {
        AdminApi::get_routing_rules(self, request).await
    }

    async fn set_routing_rules(
        &self,
        request: Request<v1::SetRoutingRulesRequest>,
    ) -> Result<Response<v1::RoutingRules>, Status> {
        AdminApi::set_routing_rules(self, request).await
    }

    async fn test_channel(
        &self,
        request: Request<v1::TestChannelRequest>,
    ) -> Result<Response<v1::TestChannelResponse>, Status> {
        AdminApi::test_channel(self, request).await
    }

    async fn list_deliveries(
        &self,
        request: Request<v1::ListDeliveriesRequest>,
    ) -> Result<Response<v1::ListDeliveriesResponse>, Status> {
        AdminApi::list_deliveries(self, request).await
    }

    // ------------------------------------------------------------ events

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        AdminApi::watch_events(self, request).await
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
mod tests;
