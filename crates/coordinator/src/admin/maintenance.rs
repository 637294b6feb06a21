//! A tenant's maintenance windows: create (one-off or weekly), list with
//! their occurrence in progress or next, delete; and muting one monitor for
//! a while (a one-off window from now). The hub reads the windows again after
//! each change, so a window is in force from the moment the call returns.

use std::time::{Duration, SystemTime};

use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, Scope, internal, not_found, now_ts};
use crate::ids::new_id;
use crate::maintenance::{self, MAX_DURATION, MAX_NAME, MAX_PER_TENANT, MIN_DURATION};
use crate::validate;

impl AdminApi {
    fn tenant_windows(&self, tenant_id: &str) -> Result<Vec<v1::MaintenanceWindow>, Status> {
        Ok(self
            .store()
            .list_maintenance()
            .map_err(internal)?
            .into_iter()
            .filter(|w| w.tenant_id == tenant_id)
            .collect())
    }

    /// Stores a checked window for `tenant_id`, within the tenant's limit of
    /// windows with an occurrence left, and makes the hub follow it.
    async fn add_window(
        &self,
        tenant_id: &str,
        mut w: v1::MaintenanceWindow,
    ) -> Result<v1::MaintenanceWindow, Status> {
        let t = SystemTime::now();
        let live = self
            .tenant_windows(tenant_id)?
            .into_iter()
            .filter(|x| {
                maintenance::schedule(x)
                    .ok()
                    .and_then(|s| maintenance::occurrence(&s, t))
                    .is_some()
            })
            .count();
        if live >= MAX_PER_TENANT {
            return Err(Status::failed_precondition(format!(
                "window: the tenant already has {live} maintenance windows to come; at most {MAX_PER_TENANT} (delete some first)"
            )));
        }
        w.id = new_id("mw");
        w.tenant_id = tenant_id.to_string();
        w.created_at = Some(now_ts());
        w.next_start = None;
        w.next_end = None;
        w.active = false;
        self.store().put_maintenance(&w).map_err(internal)?;
        self.store().flush().await.map_err(|e| e.into_status())?;
        self.hub.reload_windows().map_err(internal)?;
        Ok(maintenance::with_occurrence(w, t))
    }

    pub(super) async fn create_maintenance_window(
        &self,
        request: Request<v1::CreateMaintenanceWindowRequest>,
    ) -> Result<Response<v1::MaintenanceWindow>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let tenant_id = call.tenant.clone();
        let req = request.into_inner();
        let Some(mut w) = req.window else {
            return Err(Status::invalid_argument("window: required"));
        };
        validate::text("window.name", &w.name, MAX_NAME, false)?;
        if w.name.is_empty() {
            w.name = "maintenance".into();
        }
        maintenance::schedule(&w)?;
        w.tags = validate::tags("window.tags", &w.tags)?;
        let mut ids: Vec<String> = Vec::with_capacity(w.monitor_ids.len());
        for id in &w.monitor_ids {
            self.owned_monitor(&tenant_id, "window.monitor_ids", id)?;
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        w.monitor_ids = ids;
        if w.monitor_ids.is_empty() && w.tags.is_empty() && !w.all_monitors {
            return Err(Status::invalid_argument(
                "window.monitor_ids: choose what the window covers: monitor ids, tags, or all_monitors",
            ));
        }
        Ok(Response::new(self.add_window(&tenant_id, w).await?))
    }

    pub(super) async fn list_maintenance_windows(
        &self,
        request: Request<v1::ListMaintenanceWindowsRequest>,
    ) -> Result<Response<v1::ListMaintenanceWindowsResponse>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let t = SystemTime::now();
        let mut windows: Vec<v1::MaintenanceWindow> = self
            .tenant_windows(&tenant_id)?
            .into_iter()
            .map(|w| maintenance::with_occurrence(w, t))
            .collect();
        // In force first, then by the next start; those with none left last.
        windows.sort_by_key(|w| {
            (
                !w.active,
                w.next_start.is_none(),
                w.next_start.map(|s| (s.seconds, s.nanos)),
            )
        });
        Ok(Response::new(v1::ListMaintenanceWindowsResponse {
            windows,
        }))
    }

    pub(super) async fn delete_maintenance_window(
        &self,
        request: Request<v1::DeleteMaintenanceWindowRequest>,
    ) -> Result<Response<v1::DeleteMaintenanceWindowResponse>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let req = request.get_ref();
        validate::id("id", &req.id)?;
        if !self
            .tenant_windows(&call.tenant)?
            .iter()
            .any(|w| w.id == req.id)
        {
            return Err(not_found("id", "maintenance window"));
        }
        self.store().delete_maintenance(&req.id).map_err(internal)?;
        self.store().flush().await.map_err(|e| e.into_status())?;
        self.hub.reload_windows().map_err(internal)?;
        Ok(Response::new(v1::DeleteMaintenanceWindowResponse {}))
    }

    pub(super) async fn mute_monitor(
        &self,
        request: Request<v1::MuteMonitorRequest>,
    ) -> Result<Response<v1::MaintenanceWindow>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let tenant_id = call.tenant.clone();
        let req = request.into_inner();
        let m = self.owned_monitor(&tenant_id, "monitor_id", &req.monitor_id)?;
        let d = Duration::from_millis(req.duration_ms);
        if d < MIN_DURATION || d > MAX_DURATION {
            return Err(Status::invalid_argument(format!(
                "duration_ms: {} ms is out of range; a mute lasts 1 minute to 7 days",
                req.duration_ms
            )));
        }
        let now = SystemTime::now();
        let w = v1::MaintenanceWindow {
            name: format!("mute {}", m.name),
            monitor_ids: vec![m.id],
            starts_at: Some(to_timestamp(now)),
            ends_at: Some(to_timestamp(now + d)),
            ..Default::default()
        };
        Ok(Response::new(self.add_window(&tenant_id, w).await?))
    }
}
