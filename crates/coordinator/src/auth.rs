//! Bearer tokens: who is calling.
//!
//! Only the SHA-256 of a secret is stored or compared, so a copy of the store
//! does not hand out working tokens. The operator token comes from the config;
//! tenant and agent tokens are created through the admin API. An agent's region
//! is the one its token is bound to, whatever the agent says about itself.
//!
//! [`ConnectionMarker`] is the hook the listener's unauthenticated deadline
//! relies on: it marks a connection authenticated once a request on it
//! carries a token that the API it calls accepts.
//!
//! Revocation reaches open streams too: a revoked token's agent stream or
//! event stream ends within a second (`Auth::revoked`), not at its next call.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::listener::ConnInfo;
use crate::store::{Store, TokenScope};

/// Who an admin call comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Operator,
    Tenant(String),
}

/// SHA-256 of a token secret, hex.
pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh random secret with a readable prefix ("pwt_" tenant, "pwa_" agent).
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// The bearer token of a request, or UNAUTHENTICATED.
pub fn bearer(md: &MetadataMap) -> Result<&str, Status> {
    let value = md.get("authorization").ok_or_else(|| {
        Status::unauthenticated("authorization: missing; send `authorization: Bearer <token>`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization: not valid ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization: expected `Bearer <token>`"))?
        .trim();
    if token.is_empty() {
        return Err(Status::unauthenticated("authorization: empty token"));
    }
    Ok(token)
}

/// What an agent token grants: one region, under one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentGrant {
    pub region: String,
    /// The token's id (for `agents` and for revocation).
    pub token_id: String,
    /// The token's hash, to look it up again when a revocation is announced.
    pub hash: String,
}

/// Resolves tokens against the operator token and the store.
#[derive(Clone)]
pub struct Auth {
    operator_hash: String,
    store: Store,
    /// Bumped after every durable revocation; open streams watch it and look
    /// their token up again when it moves.
    revocations: Arc<watch::Sender<u64>>,
}

impl Auth {
    pub fn new(operator_token: &str, store: Store) -> Auth {
        Auth {
            operator_hash: hash_token(operator_token),
            store,
            revocations: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The caller of an admin RPC.
    pub fn admin(&self, md: &MetadataMap) -> Result<Caller, Status> {
        self.admin_with_hash(md).map(|(caller, _)| caller)
    }

    /// The caller of an admin RPC and its token's hash (for `revoked`).
    pub fn admin_with_hash(&self, md: &MetadataMap) -> Result<(Caller, String), Status> {
        let hash = hash_token(bearer(md)?);
        self.admin_by_hash(&hash).map(|caller| (caller, hash))
    }

    fn admin_by_hash(&self, hash: &str) -> Result<Caller, Status> {
        if constant_time_eq(hash.as_bytes(), self.operator_hash.as_bytes()) {
            return Ok(Caller::Operator);
        }
        match self.store.token_by_hash(hash) {
            Ok(Some(t)) if !t.revoked => match t.scope {
                TokenScope::Tenant { tenant_id } => Ok(Caller::Tenant(tenant_id)),
                TokenScope::Agent { .. } => Err(Status::permission_denied(
                    "an agent token cannot call the admin API",
                )),
            },
            Ok(_) => Err(Status::unauthenticated(
                "authorization: unknown or revoked token",
            )),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    /// The region of an agent's token.
    pub fn agent_region(&self, md: &MetadataMap) -> Result<String, Status> {
        self.agent(md).map(|g| g.region)
    }

    /// What an agent's token grants.
    pub fn agent(&self, md: &MetadataMap) -> Result<AgentGrant, Status> {
        let hash = hash_token(bearer(md)?);
        match self.store.token_by_hash(&hash) {
            Ok(Some(t)) if !t.revoked => match t.scope {
                TokenScope::Agent { region } => Ok(AgentGrant {
                    region,
                    token_id: t.id,
                    hash,
                }),
                TokenScope::Tenant { .. } => Err(Status::permission_denied(
                    "a tenant token cannot connect as an agent",
                )),
            },
            Ok(_) => Err(Status::unauthenticated(
                "authorization: unknown or revoked agent token",
            )),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

impl Auth {
    /// Tells open streams that a token was revoked (call after the revocation
    /// is durable). Each looks its own token up again.
    pub fn announce_revocation(&self) {
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Resolves once the token with this hash is no longer valid (revoked,
    /// deleted, or the store cannot say), with the status to end the stream
    /// with. Never resolves for the operator token, which lives in the config.
    pub async fn revoked(&self, hash: &str) -> Status {
        let mut rx = self.revocations.subscribe();
        loop {
            if constant_time_eq(hash.as_bytes(), self.operator_hash.as_bytes()) {
                return std::future::pending().await;
            }
            match self.store.token_by_hash(hash) {
                Ok(Some(t)) if !t.revoked => {}
                Ok(_) => {
                    return Status::unauthenticated("authorization: this token was revoked");
                }
                Err(e) => return Status::unavailable(format!("authorization: {e}")),
            }
            if rx.changed().await.is_err() {
                // The coordinator is going away; its shutdown ends the stream.
                return std::future::pending().await;
            }
        }
    }
}

/// The API a request is for: which kind of token authenticates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `AdminService`: the operator's or a tenant's token.
    Admin,
    /// `AgentService`: an agent token.
    Agent,
}

/// An interceptor in front of an API's service: when a request carries a
/// token that API accepts (the same check the service itself makes), its
/// connection is marked authenticated and outlives the listener's
/// unauthenticated deadline. It never refuses a request: the service does,
/// with its own message. Health and reflection have no marker, so they never
/// keep a connection open.
#[derive(Clone)]
pub struct ConnectionMarker {
    auth: Auth,
    api: Api,
}

impl Auth {
    pub fn connection_marker(&self, api: Api) -> ConnectionMarker {
        ConnectionMarker {
            auth: self.clone(),
            api,
        }
    }
}

impl tonic::service::Interceptor for ConnectionMarker {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let Some(conn) = request.extensions().get::<ConnInfo>().cloned() else {
            return Ok(request);
        };
        // tonic's own connection info, for handlers that use `remote_addr()`.
        request.extensions_mut().insert(conn.tcp_connect_info());
        if !conn.is_authenticated() {
            let accepted = match self.api {
                Api::Admin => self.auth.admin(request.metadata()).is_ok(),
                Api::Agent => self.auth.agent_region(request.metadata()).is_ok(),
            };
            if accepted {
                conn.mark_authenticated();
            }
        }
        Ok(request)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
