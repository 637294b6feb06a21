//! A tenant's monitors: create, read, list, update, pause, resume, delete and
//! live status. Every check that decides whether a write may happen (plan,
//! quota, regions, channels) runs under the write lock and reads the store,
//! which is what the write changes; the hub's copy is only what agents see.
//! An update is a draft of the stored monitor with the request's fields laid
//! over it, validated whole as a create is.

use portwatch_check::Host;
use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, Call, Scope, internal, now_ts, page};
use crate::ids::new_id;
use crate::plans::PlanLimits;
use crate::validate::{self, MonitorDraft, Tenancy, quote};

impl AdminApi {
    /// The tenant's plan limits, provided the plan includes port monitors.
    pub(super) fn port_plan(&self, tenant: &v1::Tenant) -> Result<PlanLimits, Status> {
        Ok(validate::port_monitors_allowed(&self.plans, tenant.plan)?)
    }

    /// Durable first, then pushed to the agents (`Changes::put_monitor`).
    async fn persist_monitor(&self, m: &v1::Monitor) -> Result<(), Status> {
        self.changes.put_monitor(m).await.map_err(internal)
    }

    /// Pauses or resumes a monitor of the call's tenant (begun with
    /// `begin_write`).
    pub(super) async fn set_paused(
        &self,
        call: &Call<'_>,
        id: &str,
        paused: bool,
    ) -> Result<v1::Monitor, Status> {
        let tenant_id = &call.tenant;
        let mut m = self.owned_monitor(tenant_id, "id", id)?;
        if !paused {
            // Resuming starts port checks again, which the plan must include.
            self.port_plan(&self.tenant(tenant_id)?)?;
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

    /// Every channel a monitor names must be one of its tenant's.
    pub(super) fn check_monitor_channels(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<(), Status> {
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

    pub(super) async fn create_monitor(
        &self,
        request: Request<v1::CreateMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let tenant_id = call.tenant.clone();
        let req = request.into_inner();
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

    pub(super) async fn get_monitor(
        &self,
        request: Request<v1::GetMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let req = request.get_ref();
        Ok(Response::new(
            self.owned_monitor(&tenant_id, "id", &req.id)?,
        ))
    }

    pub(super) async fn list_monitors(
        &self,
        request: Request<v1::ListMonitorsRequest>,
    ) -> Result<Response<v1::ListMonitorsResponse>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let req = request.into_inner();
        let limit = validate::page_size("page_size", req.page_size)?;
        validate::optional_id("page_token", &req.page_token)?;
        if !req.tag.is_empty() {
            validate::tag("tag", &req.tag)?;
        }
        // Ids in order, after the page token: one more than a page says whether
        // another follows. With a tag, read on in chunks until that many match.
        let want = limit.saturating_add(1);
        let mut found: Vec<v1::Monitor> = Vec::new();
        let mut after = req.page_token.clone();
        loop {
            let chunk = if req.tag.is_empty() {
                want
            } else {
                want.max(500)
            };
            let batch = self
                .store()
                .tenant_monitors(&tenant_id, &after, chunk)
                .map_err(internal)?;
            let exhausted = batch.len() < chunk;
            if let Some(last) = batch.last() {
                after = last.id.clone();
            }
            found.extend(
                batch
                    .into_iter()
                    .filter(|m| req.tag.is_empty() || m.tags.contains(&req.tag)),
            );
            if exhausted || found.len() >= want {
                break;
            }
        }
        found.truncate(want);
        let (monitors, next_page_token) = page(found.into_iter(), limit, |x| x.id.clone());
        Ok(Response::new(v1::ListMonitorsResponse {
            monitors,
            next_page_token,
        }))
    }

    pub(super) async fn update_monitor(
        &self,
        request: Request<v1::UpdateMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let tenant_id = call.tenant.clone();
        let req = request.into_inner();
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
        if let Some(v) = req.recover_after {
            d.recover_after = v;
        }
        if let Some(v) = req.remind_every_ms {
            d.remind_every_ms = v;
        }
        if let Some(v) = req.remind_max {
            d.remind_max = v;
        }
        if req.set_tags {
            d.tags = req.tags;
        }
        if let Some(v) = req.expect_closed {
            d.expect_closed = v;
        }
        if let Some(v) = req.degraded_after_ms {
            d.degraded_after_ms = v;
        }
        if let Some(v) = req.degraded_checks {
            d.degraded_checks = v;
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

    pub(super) async fn delete_monitor(
        &self,
        request: Request<v1::DeleteMonitorRequest>,
    ) -> Result<Response<v1::DeleteMonitorResponse>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let tenant_id = call.tenant.clone();
        let req = request.get_ref();
        let m = self.owned_monitor(&tenant_id, "id", &req.id)?;
        self.changes.delete_monitor(&m.id).await.map_err(internal)?;
        Ok(Response::new(v1::DeleteMonitorResponse {}))
    }

    pub(super) async fn pause_monitor(
        &self,
        request: Request<v1::PauseMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let m = self.set_paused(&call, &request.get_ref().id, true).await?;
        Ok(Response::new(m))
    }

    pub(super) async fn resume_monitor(
        &self,
        request: Request<v1::ResumeMonitorRequest>,
    ) -> Result<Response<v1::Monitor>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let m = self.set_paused(&call, &request.get_ref().id, false).await?;
        Ok(Response::new(m))
    }

    pub(super) async fn get_monitor_status(
        &self,
        request: Request<v1::GetMonitorStatusRequest>,
    ) -> Result<Response<v1::MonitorStatus>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let req = request.get_ref();
        let m = self.owned_monitor(&tenant_id, "id", &req.id)?;
        Ok(Response::new(self.hub.status(&m)))
    }
}
