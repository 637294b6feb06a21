//! A tenant's routing rules: which channels the notices of its monitors that
//! name no channels go to, by tag and severity, first match wins, the
//! tenant's default channels as the fallback (`outbox::routed`). Kept with the
//! tenant's record.

use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, Scope, internal};
use crate::validate;

/// Most rules a tenant may keep.
pub const MAX_RULES: usize = 50;

impl AdminApi {
    pub(super) async fn get_routing_rules(
        &self,
        request: Request<v1::GetRoutingRulesRequest>,
    ) -> Result<Response<v1::RoutingRules>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let t = self.tenant(&tenant_id)?;
        Ok(Response::new(v1::RoutingRules {
            tenant_id: t.id,
            rules: t.routing_rules,
        }))
    }

    pub(super) async fn set_routing_rules(
        &self,
        request: Request<v1::SetRoutingRulesRequest>,
    ) -> Result<Response<v1::RoutingRules>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let tenant_id = call.tenant.clone();
        let req = request.into_inner();
        if req.rules.len() > MAX_RULES {
            return Err(Status::invalid_argument(format!(
                "rules: {} rules; at most {MAX_RULES}",
                req.rules.len()
            )));
        }
        let mut rules = Vec::with_capacity(req.rules.len());
        for r in req.rules {
            let tags = validate::tags("rules.tags", &r.tags)?;
            if !matches!(r.severity.as_str(), "" | "critical" | "warning") {
                return Err(Status::invalid_argument(format!(
                    "rules.severity: {:?} is not a severity; use critical, warning or leave it empty (any)",
                    r.severity
                )));
            }
            if r.channel_ids.is_empty() {
                return Err(Status::invalid_argument(
                    "rules.channel_ids: at least one channel per rule",
                ));
            }
            self.check_monitor_channels(&tenant_id, &r.channel_ids)
                .map_err(|e| {
                    Status::new(
                        e.code(),
                        e.message().replacen("channel_ids", "rules.channel_ids", 1),
                    )
                })?;
            rules.push(v1::RoutingRule {
                tags,
                severity: r.severity,
                channel_ids: r.channel_ids,
            });
        }
        let mut t = self.tenant(&tenant_id)?;
        t.routing_rules = rules;
        self.store().put_tenant(&t).map_err(internal)?;
        self.store().flush().await.map_err(|e| e.into_status())?;
        Ok(Response::new(v1::RoutingRules {
            tenant_id: t.id,
            rules: t.routing_rules,
        }))
    }
}
