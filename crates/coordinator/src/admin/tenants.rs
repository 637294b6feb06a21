//! Tenants and their plans: who the caller is, creating a tenant (with its
//! first token, so it can act at once), listing, reading and re-planning.
//! A tenant is shown with its plan's limits and its monitor count filled in,
//! so the CLI never has to know the plan table.

use tonic::{Request, Response, Status};

use portwatch_proto::v1;

use super::tokens::new_token;
use super::{AdminApi, Scope, internal, now_ts};
use crate::auth::Caller;
use crate::ids::new_id;
use crate::store::TokenScope;
use crate::validate::{self, quote};

impl AdminApi {
    /// A stored tenant with its plan's limits and its monitor count filled in.
    pub(super) fn tenant_view(&self, mut t: v1::Tenant, monitor_count: usize) -> v1::Tenant {
        if let Some(l) = self.plans.limits(t.plan) {
            t.max_monitors = l.max_monitors;
            t.min_interval_ms = u64::try_from(l.min_interval.as_millis()).unwrap_or(u64::MAX);
        }
        t.monitor_count = u32::try_from(monitor_count).unwrap_or(u32::MAX);
        t
    }

    pub(super) async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let coordinator_version = env!("CARGO_PKG_VERSION").to_string();
        Ok(Response::new(
            match self.begin(&request, Scope::Anyone)?.caller {
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
            },
        ))
    }

    pub(super) async fn create_tenant(
        &self,
        request: Request<v1::CreateTenantRequest>,
    ) -> Result<Response<v1::CreateTenantResponse>, Status> {
        let _call = self
            .begin_write(&request, Scope::Operator("create tenants"))
            .await?;
        let req = request.into_inner();
        let id = if req.id.is_empty() {
            new_id("t")
        } else {
            validate::slug("id", &req.id)?;
            req.id
        };
        validate::text("name", &req.name, validate::MAX_TENANT_NAME, true)?;
        let plan = validate::plan(req.plan)?;
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
        let (first, token) = new_token(TokenScope::Tenant { tenant_id: id }, "first token", "pwt_");
        self.changes
            .create_tenant(&tenant, &first)
            .await
            .map_err(internal)?;
        let token_id = first.id;
        Ok(Response::new(v1::CreateTenantResponse {
            tenant: Some(self.tenant_view(tenant, 0)),
            token,
            token_id,
        }))
    }

    pub(super) async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        self.begin(&request, Scope::Operator("list tenants"))?;
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

    pub(super) async fn get_tenant(
        &self,
        request: Request<v1::GetTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let id = self
            .begin(&request, Scope::Tenant(&request.get_ref().tenant_id))?
            .tenant;
        let tenant = self.tenant(&id)?;
        let count = self.monitor_count(&id)?;
        Ok(Response::new(self.tenant_view(tenant, count)))
    }

    pub(super) async fn set_tenant_plan(
        &self,
        request: Request<v1::SetTenantPlanRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let scope = Scope::OperatorOn("change plans", &request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let id = call.tenant.clone();
        let plan = validate::plan(request.get_ref().plan)?;
        let mut tenant = self.tenant(&id)?;
        tenant.plan = plan as i32;
        self.changes.put_tenant(&tenant).await.map_err(internal)?;
        let count = self.monitor_count(&id)?;
        Ok(Response::new(self.tenant_view(tenant, count)))
    }
}
