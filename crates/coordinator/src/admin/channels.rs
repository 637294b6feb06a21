//! Notification channels and their deliveries. A channel belongs to one
//! tenant, or to the operator (empty tenant id); its secrets are write-only,
//! so every answer is `channels::redacted`. A channel still named by a monitor
//! cannot be deleted; a deleted channel's pending deliveries fail at their
//! next attempt.

use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, MAX_CHANNELS_PER_OWNER, Scope, internal, not_found, now_ts, page};
use crate::channels::{kind, redacted};
use crate::ids::new_id;
use crate::validate::{self, ChannelPolicy, quote};

impl AdminApi {
    /// A channel of this owner; another owner's is as missing as none.
    pub(super) fn owned_channel(&self, owner: &str, id: &str) -> Result<v1::Channel, Status> {
        validate::id("id", id)?;
        match self.store().get_channel(id).map_err(internal)? {
            Some(c) if c.tenant_id == owner => Ok(c),
            _ => Err(not_found("id", "channel")),
        }
    }

    pub(super) async fn create_channel(
        &self,
        request: Request<v1::CreateChannelRequest>,
    ) -> Result<Response<v1::Channel>, Status> {
        let scope = Scope::Channels(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let owner = call.tenant.clone();
        let req = request.into_inner();
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
        self.changes.put_channel(&channel).await.map_err(internal)?;
        Ok(Response::new(redacted(&channel)))
    }

    pub(super) async fn list_channels(
        &self,
        request: Request<v1::ListChannelsRequest>,
    ) -> Result<Response<v1::ListChannelsResponse>, Status> {
        let scope = Scope::Channels(&request.get_ref().tenant_id);
        let owner = self.begin(&request, scope)?.tenant;
        let channels = self
            .store()
            .list_channels()
            .map_err(internal)?
            .iter()
            .filter(|c| c.tenant_id == owner)
            .map(redacted)
            .collect();
        Ok(Response::new(v1::ListChannelsResponse { channels }))
    }

    pub(super) async fn delete_channel(
        &self,
        request: Request<v1::DeleteChannelRequest>,
    ) -> Result<Response<v1::DeleteChannelResponse>, Status> {
        let scope = Scope::Channels(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let owner = call.tenant.clone();
        let req = request.get_ref();
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
        if !owner.is_empty()
            && let Some(t) = self.store().get_tenant(&owner).map_err(internal)?
            && let Some(n) = t
                .routing_rules
                .iter()
                .position(|r| r.channel_ids.contains(&c.id))
        {
            return Err(Status::failed_precondition(format!(
                "id: channel {} is named by routing rule {}; change the rules first",
                quote(&c.id),
                n + 1
            )));
        }
        // Its pending deliveries fail at their next attempt ("the channel was deleted").
        self.changes.delete_channel(&c.id).await.map_err(internal)?;
        Ok(Response::new(v1::DeleteChannelResponse {}))
    }

    pub(super) async fn test_channel(
        &self,
        request: Request<v1::TestChannelRequest>,
    ) -> Result<Response<v1::TestChannelResponse>, Status> {
        let scope = Scope::Channels(&request.get_ref().tenant_id);
        let owner = self.begin(&request, scope)?.tenant;
        let req = request.get_ref();
        let c = self.owned_channel(&owner, &req.id)?;
        let (ok, detail) = match self.senders.test(&c).await {
            Ok(a) => (true, a.detail),
            Err(f) => (false, f.detail),
        };
        tracing::info!(channel_id = %c.id, kind = kind(&c), ok, %detail, "test notification sent");
        Ok(Response::new(v1::TestChannelResponse { ok, detail }))
    }

    pub(super) async fn list_deliveries(
        &self,
        request: Request<v1::ListDeliveriesRequest>,
    ) -> Result<Response<v1::ListDeliveriesResponse>, Status> {
        let scope = Scope::Channels(&request.get_ref().tenant_id);
        let owner = self.begin(&request, scope)?.tenant;
        let req = request.into_inner();
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
}
