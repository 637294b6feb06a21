//! Tenant and agent tokens. A token's secret is shown once, when it is
//! issued, and only its hash is stored; revoking is durable before the open
//! streams that use the token are told to end (`Auth::announce_revocation`).
//! A tenant sees and revokes only its own tokens; agent tokens are the
//! operator's.

use std::time::SystemTime;

use portwatch_proto::time::{from_unix_micros, to_timestamp, unix_micros};
use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, Scope, internal, not_found};
use crate::auth::{Caller, hash_token, new_secret};
use crate::ids::new_id;
use crate::store::{TokenRecord, TokenScope};
use crate::validate;

fn agent_token(t: TokenRecord) -> Option<v1::AgentToken> {
    match t.scope {
        TokenScope::Agent { region } => Some(v1::AgentToken {
            id: t.id,
            region,
            description: t.description,
            created_at: Some(to_timestamp(from_unix_micros(t.created_at_us))),
            revoked: t.revoked,
        }),
        TokenScope::Tenant { .. } => None,
    }
}

/// A new token's record and its secret. Only the record (with the secret's
/// hash) is ever stored; the secret is shown once.
pub(super) fn new_token(
    scope: TokenScope,
    description: &str,
    prefix: &str,
) -> (TokenRecord, String) {
    let secret = new_secret(prefix);
    let rec = TokenRecord {
        id: new_id("tok"),
        hash: hash_token(&secret),
        scope,
        description: description.to_string(),
        created_at_us: unix_micros(SystemTime::now()),
        revoked: false,
    };
    (rec, secret)
}

impl AdminApi {
    /// Stores a new token; returns (token id, secret).
    async fn issue_token(
        &self,
        scope: TokenScope,
        description: &str,
        prefix: &str,
    ) -> Result<(String, String), Status> {
        let (rec, secret) = new_token(scope, description, prefix);
        self.changes.issue_token(&rec).await.map_err(internal)?;
        Ok((rec.id, secret))
    }

    pub(super) async fn create_tenant_token(
        &self,
        request: Request<v1::CreateTenantTokenRequest>,
    ) -> Result<Response<v1::CreateTenantTokenResponse>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin_write(&request, scope).await?;
        let tenant_id = call.tenant.clone();
        let req = request.into_inner();
        validate::text(
            "description",
            &req.description,
            validate::MAX_DESCRIPTION,
            false,
        )?;
        let (token_id, token) = self
            .issue_token(TokenScope::Tenant { tenant_id }, &req.description, "pwt_")
            .await?;
        Ok(Response::new(v1::CreateTenantTokenResponse {
            token_id,
            token,
        }))
    }

    pub(super) async fn revoke_tenant_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let call = self.begin_write(&request, Scope::Anyone).await?;
        let id = &request.get_ref().token_id;
        validate::id("token_id", id)?;
        let rec = match self.store().token_by_id(id).map_err(internal)? {
            Some(rec) => match (&rec.scope, &call.caller) {
                (TokenScope::Tenant { .. }, Caller::Operator) => rec,
                (TokenScope::Tenant { tenant_id }, Caller::Tenant(own)) if tenant_id == own => rec,
                _ => return Err(not_found("token_id", "tenant token")),
            },
            None => return Err(not_found("token_id", "tenant token")),
        };
        if !rec.revoked {
            // Durable, then the streams still using it end.
            self.changes.revoke_token(rec).await.map_err(internal)?;
        }
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }

    pub(super) async fn create_agent_token(
        &self,
        request: Request<v1::CreateAgentTokenRequest>,
    ) -> Result<Response<v1::CreateAgentTokenResponse>, Status> {
        let _call = self
            .begin_write(&request, Scope::Operator("create agent tokens"))
            .await?;
        let req = request.into_inner();
        validate::slug("region", &req.region)?;
        validate::text(
            "description",
            &req.description,
            validate::MAX_DESCRIPTION,
            false,
        )?;
        if self
            .store()
            .get_region(&req.region)
            .map_err(internal)?
            .is_none()
        {
            return Err(not_found("region", "region"));
        }
        let (token_id, token) = self
            .issue_token(
                TokenScope::Agent { region: req.region },
                &req.description,
                "pwa_",
            )
            .await?;
        Ok(Response::new(v1::CreateAgentTokenResponse {
            token_id,
            token,
        }))
    }

    pub(super) async fn list_agent_tokens(
        &self,
        request: Request<v1::ListAgentTokensRequest>,
    ) -> Result<Response<v1::ListAgentTokensResponse>, Status> {
        self.begin(&request, Scope::Operator("list agent tokens"))?;
        let region = request.into_inner().region;
        if !region.is_empty() {
            validate::slug("region", &region)?;
        }
        let mut tokens: Vec<v1::AgentToken> = self
            .store()
            .list_tokens()
            .map_err(internal)?
            .into_iter()
            .filter_map(agent_token)
            .filter(|t| region.is_empty() || t.region == region)
            .collect();
        tokens.sort_by(|a, b| {
            let at = |t: &v1::AgentToken| t.created_at.map(|c| (c.seconds, c.nanos));
            at(a).cmp(&at(b)).then_with(|| a.id.cmp(&b.id))
        });
        Ok(Response::new(v1::ListAgentTokensResponse { tokens }))
    }

    pub(super) async fn revoke_agent_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let _call = self
            .begin_write(&request, Scope::Operator("revoke agent tokens"))
            .await?;
        let id = &request.get_ref().token_id;
        validate::id("token_id", id)?;
        let rec = match self.store().token_by_id(id).map_err(internal)? {
            Some(rec) if matches!(rec.scope, TokenScope::Agent { .. }) => rec,
            _ => return Err(not_found("token_id", "agent token")),
        };
        if !rec.revoked {
            // Durable, then the streams still using it end.
            self.changes.revoke_token(rec).await.map_err(internal)?;
        }
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }
}
