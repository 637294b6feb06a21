//! The one write path for changes a user makes: tenants, tokens, regions,
//! monitors and channels, and the incidents those changes close.
//!
//! Why one layer: a change and its consequence used to be written in two
//! places (the admin API wrote the store, then told the hub, and deleting a
//! monitor closed its incident in a separate write). Here every change is one
//! call, and every call keeps the same contract:
//! 1. the change and all it causes in the store are written in **one store
//!    transaction** (`Store::put_tenant_with_token`,
//!    `Store::delete_monitor_closing`, …);
//! 2. the store is **flushed**;
//! 3. only then is the **live state** told (`Hub::monitor_changed`,
//!    `Hub::monitor_removed`, `Hub::region_changed`, the revocation of open
//!    streams): agents never check, and streams never end, on a change that a
//!    crash could still take back.
//!
//! If the store fails on the way (not writable, an I/O error, a flush that
//! does not finish), the call returns the error before step 3: the live state
//! is unchanged, and the store holds either nothing of the change or, when
//! only the flush failed, the whole of it (which `Hub::reload` picks up after
//! the store is reopened), never a part. (A deleted monitor's latest results
//! are removed after its transaction; left behind, they are never read.)
//!
//! Callers authenticate and validate first, and hold the admin API's write
//! lock across their checks and the call; this layer checks nothing a
//! request says. Reads go to the store directly.

use std::sync::Arc;

use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;
use tracing::info;

use crate::auth::Auth;
use crate::hub::Hub;
use crate::store::{Store, StoreError, TokenRecord};

/// Writes users' changes; see the module docs for the contract.
pub struct Changes {
    hub: Arc<Hub>,
    auth: Auth,
}

impl Changes {
    pub fn new(hub: Arc<Hub>, auth: Auth) -> Changes {
        Changes { hub, auth }
    }

    fn store(&self) -> &Store {
        self.hub.store()
    }

    /// A new tenant with its first token.
    pub async fn create_tenant(
        &self,
        tenant: &v1::Tenant,
        first_token: &TokenRecord,
    ) -> Result<(), StoreError> {
        self.store().put_tenant_with_token(tenant, first_token)?;
        self.store().flush().await
    }

    /// A tenant's new settings (its plan). Nothing live depends on a tenant:
    /// plan limits are read from the store at each request.
    pub async fn put_tenant(&self, tenant: &v1::Tenant) -> Result<(), StoreError> {
        self.store().put_tenant(tenant)?;
        self.store().flush().await
    }

    /// A new token (tenant or agent); usable once this returns.
    pub async fn issue_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.store().put_token(token)?;
        self.store().flush().await
    }

    /// Revokes a token, then ends the streams still using it.
    pub async fn revoke_token(&self, mut token: TokenRecord) -> Result<(), StoreError> {
        token.revoked = true;
        self.store().put_token(&token)?;
        self.store().flush().await?;
        self.auth.announce_revocation();
        Ok(())
    }

    /// A new region; agents may connect to it once this returns.
    pub async fn put_region(&self, region: &v1::Region) -> Result<(), StoreError> {
        self.store().put_region(region)?;
        self.store().flush().await?;
        self.hub.region_changed(Some(region.clone()), &region.name);
        Ok(())
    }

    /// Deletes a region (the caller made sure no monitor names it).
    pub async fn delete_region(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.store().delete_region(name)?;
        self.store().flush().await?;
        self.hub.region_changed(None, name);
        Ok(existed)
    }

    /// A new or changed monitor, then pushed to its agents.
    pub async fn put_monitor(&self, monitor: &v1::Monitor) -> Result<(), StoreError> {
        self.store().put_monitor(monitor)?;
        self.store().flush().await?;
        self.hub.monitor_changed(monitor.clone());
        Ok(())
    }

    /// Deletes a monitor with its open incident closed in the same transaction
    /// (without a "reachable again" notice: nobody checks the port any more,
    /// and it must not stay open forever), then takes it from the live state
    /// and its agents. Incident transitions are held off meanwhile, so no
    /// evaluation opens or closes an incident for it in between. Returns
    /// whether it existed.
    pub async fn delete_monitor(&self, id: &str) -> Result<bool, StoreError> {
        let _transitions = self.hub.hold_transitions().await;
        let closing = self.hub.open_incident_of(id).map(|mut incident| {
            incident.closed_at = Some(to_timestamp(std::time::SystemTime::now()));
            incident
        });
        let existed = self.store().delete_monitor_closing(id, closing.as_ref())?;
        self.store().flush().await?;
        self.hub.monitor_removed(id);
        if let Some(incident) = closing {
            info!(monitor_id = %id, incident_id = %incident.id, "incident closed: monitor deleted");
        }
        Ok(existed)
    }

    /// A new channel.
    pub async fn put_channel(&self, channel: &v1::Channel) -> Result<(), StoreError> {
        self.store().put_channel(channel)?;
        self.store().flush().await
    }

    /// Deletes a channel (the caller made sure no monitor names it). Its
    /// pending deliveries stay, and fail at their next attempt ("the channel
    /// was deleted"), so what was planned is accounted for.
    pub async fn delete_channel(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.store().delete_channel(id)?;
        self.store().flush().await?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests;
