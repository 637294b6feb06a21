//! Probe regions (operator only to change; a tenant lists the public ones and
//! its own private ones). A region shows its live agent count from the hub.
//! Deleting a region that monitors still name is refused, so no monitor is
//! ever left checked from a region that no longer exists.

use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, Scope, internal, not_found};
use crate::auth::Caller;
use crate::validate::{self, quote};

impl AdminApi {
    pub(super) fn region_view(&self, mut r: v1::Region) -> v1::Region {
        let (online, since) = self.hub.region_liveness(&r.name);
        r.agents_online = online;
        r.offline_since = since.map(to_timestamp);
        r
    }

    pub(super) async fn create_region(
        &self,
        request: Request<v1::CreateRegionRequest>,
    ) -> Result<Response<v1::Region>, Status> {
        let _call = self
            .begin_write(&request, Scope::Operator("create regions"))
            .await?;
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
        self.changes.put_region(&region).await.map_err(internal)?;
        Ok(Response::new(self.region_view(region)))
    }

    pub(super) async fn list_regions(
        &self,
        request: Request<v1::ListRegionsRequest>,
    ) -> Result<Response<v1::ListRegionsResponse>, Status> {
        let caller = self.begin(&request, Scope::Anyone)?.caller;
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

    pub(super) async fn delete_region(
        &self,
        request: Request<v1::DeleteRegionRequest>,
    ) -> Result<Response<v1::DeleteRegionResponse>, Status> {
        let _call = self
            .begin_write(&request, Scope::Operator("delete regions"))
            .await?;
        let name = request.into_inner().name;
        validate::slug("name", &name)?;
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
        self.changes.delete_region(&name).await.map_err(internal)?;
        Ok(Response::new(v1::DeleteRegionResponse {}))
    }
}
