//! The agents the operator sees: the live sessions from the hub, plus every
//! agent the store remembers that is not connected now (shown offline).

use std::collections::HashSet;

use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, Scope, internal};
use crate::validate;

impl AdminApi {
    pub(super) async fn list_agents(
        &self,
        request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        self.begin(&request, Scope::Operator("list agents"))?;
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
}
