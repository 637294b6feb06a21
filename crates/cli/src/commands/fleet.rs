//! The probe fleet: `regions`, `agents`, `region add|rm` and
//! `agent-token create|revoke|list` (the last three are operator calls).
//!
//! A new agent token's secret is printed once, as the coordinator returns it
//! once; only its hash is stored.

use std::time::SystemTime;

use portwatch_proto::v1;
use serde_json::{Value, json};

use crate::cli::{AgentTokenCmd, AgentsArgs, OutputFormat, RegionCmd};
use crate::client::Client;
use crate::error::Result;
use crate::output::{self, Table};
use crate::views;

pub async fn regions(c: &mut Client, out: OutputFormat) -> Result<()> {
    let regions = c
        .admin
        .list_regions(v1::ListRegionsRequest {})
        .await?
        .into_inner()
        .regions;
    let now = SystemTime::now();
    let mut t = Table::new(&[
        "NAME",
        "KIND",
        "OWNER",
        "AGENTS",
        "OFFLINE SINCE",
        "DESCRIPTION",
    ]);
    for r in &regions {
        t.row(vec![
            r.name.clone(),
            if r.owner_tenant_id.is_empty() {
                "public"
            } else {
                "private"
            }
            .to_string(),
            r.owner_tenant_id.clone(),
            r.agents_online.to_string(),
            match r.offline_since.as_ref() {
                Some(ts) => format!("{} ({})", output::ts(Some(ts)), output::ago(Some(ts), now)),
                None => String::new(),
            },
            r.description.clone(),
        ]);
    }
    let v = Value::Array(regions.iter().map(views::region).collect());
    output::either(out, &v, &t, "no regions")
}

pub async fn agents(c: &mut Client, a: AgentsArgs, out: OutputFormat) -> Result<()> {
    let agents = c
        .admin
        .list_agents(v1::ListAgentsRequest {
            region: a.region.unwrap_or_default(),
        })
        .await?
        .into_inner()
        .agents;
    let now = SystemTime::now();
    let mut t = Table::new(&[
        "AGENT",
        "REGION",
        "ONLINE",
        "HOST",
        "VERSION",
        "MONITORS",
        "LAST SEEN",
        "SPOOL",
        "DROPPED",
        "UNSTORED",
        "SPOOL ERROR",
    ]);
    for a in &agents {
        t.row(vec![
            a.agent_id.clone(),
            a.region.clone(),
            if a.online { "yes" } else { "no" }.to_string(),
            a.hostname.clone(),
            a.version.clone(),
            a.assignments.to_string(),
            output::ago(a.last_seen.as_ref(), now),
            a.spool_depth.to_string(),
            a.dropped_total.to_string(),
            a.unstored_total.to_string(),
            if a.spool_error.is_empty() {
                "-".to_string()
            } else {
                a.spool_error.clone()
            },
        ]);
    }
    let v = Value::Array(agents.iter().map(views::agent).collect());
    output::either(out, &v, &t, "no agents")
}

pub async fn region(c: &mut Client, cmd: RegionCmd, out: OutputFormat) -> Result<()> {
    match cmd {
        RegionCmd::Add {
            name,
            description,
            owner,
        } => {
            let r = c
                .admin
                .create_region(v1::CreateRegionRequest {
                    name,
                    description,
                    owner_tenant_id: owner.unwrap_or_default(),
                })
                .await?
                .into_inner();
            match out {
                OutputFormat::Json => output::json(&views::region(&r)),
                OutputFormat::Table if r.owner_tenant_id.is_empty() => {
                    output::line(&format!("created public region {}", r.name))
                }
                OutputFormat::Table => output::line(&format!(
                    "created private region {} of tenant {} (its agents may probe private addresses)",
                    r.name, r.owner_tenant_id
                )),
            }
        }
        RegionCmd::Rm { name } => {
            c.admin
                .delete_region(v1::DeleteRegionRequest { name: name.clone() })
                .await?;
            match out {
                OutputFormat::Json => output::json(&json!({ "deleted": name })),
                OutputFormat::Table => output::line(&format!("deleted region {name}")),
            }
        }
    }
}

pub async fn agent_token(c: &mut Client, cmd: AgentTokenCmd, out: OutputFormat) -> Result<()> {
    match cmd {
        AgentTokenCmd::Create {
            region,
            description,
        } => {
            let r = c
                .admin
                .create_agent_token(v1::CreateAgentTokenRequest {
                    region: region.clone(),
                    description,
                })
                .await?
                .into_inner();
            match out {
                OutputFormat::Json => output::json(&json!({
                    "token_id": r.token_id,
                    "token": r.token,
                    "region": region,
                })),
                OutputFormat::Table => output::print(&format!(
                    "created agent token {} for region {region}\ntoken: {}\n(the secret is shown once; give it to the agent as token or token_file)\n",
                    r.token_id, r.token
                )),
            }
        }
        AgentTokenCmd::Revoke { id } => {
            c.admin
                .revoke_agent_token(v1::RevokeTokenRequest {
                    token_id: id.clone(),
                })
                .await?;
            match out {
                OutputFormat::Json => output::json(&json!({ "revoked": id })),
                OutputFormat::Table => output::line(&format!("revoked agent token {id}")),
            }
        }
        AgentTokenCmd::List { region } => {
            let tokens = c
                .admin
                .list_agent_tokens(v1::ListAgentTokensRequest {
                    region: region.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .tokens;
            let mut t = Table::new(&["ID", "REGION", "CREATED", "REVOKED", "DESCRIPTION"]);
            for tok in &tokens {
                t.row(vec![
                    tok.id.clone(),
                    tok.region.clone(),
                    output::ts(tok.created_at.as_ref()),
                    if tok.revoked { "yes" } else { "" }.to_string(),
                    tok.description.clone(),
                ]);
            }
            let v = Value::Array(tokens.iter().map(views::agent_token).collect());
            output::either(out, &v, &t, "no agent tokens")
        }
    }
}
