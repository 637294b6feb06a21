//! A tenant's incidents, newest first. Read only: incidents are opened and
//! closed by the hub's evaluation, never by a request.

use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, Scope, internal, not_found, page};
use crate::validate;

impl AdminApi {
    pub(super) async fn list_incidents(
        &self,
        request: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsResponse>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let req = request.into_inner();
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

    pub(super) async fn get_incident(
        &self,
        request: Request<v1::GetIncidentRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let req = request.get_ref();
        validate::id("id", &req.id)?;
        match self.store().get_incident(&req.id).map_err(internal)? {
            Some(i) if i.tenant_id == tenant_id => Ok(Response::new(i)),
            _ => Err(not_found("id", "incident")),
        }
    }
}
