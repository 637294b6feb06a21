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
    let v = Value::Array(regions.iter().map(views::region).collect());
    let t = regions_table(&regions, SystemTime::now());
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
    let v = Value::Array(agents.iter().map(views::agent).collect());
    let t = agents_table(&agents, SystemTime::now());
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
            let v = Value::Array(tokens.iter().map(views::agent_token).collect());
            let t = tokens_table(&tokens);
            output::either(out, &v, &t, "no agent tokens")
        }
    }
}

/// Probe regions: public or private, live agents, offline since when.
pub fn regions_table(regions: &[v1::Region], now: SystemTime) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "KIND",
        "OWNER",
        "AGENTS",
        "OFFLINE SINCE",
        "DESCRIPTION",
    ]);
    for r in regions {
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
            output::when(r.offline_since.as_ref(), now, ""),
            r.description.clone(),
        ]);
    }
    t
}

/// Agents: online, what they check, how far behind their spool is.
pub fn agents_table(agents: &[v1::Agent], now: SystemTime) -> Table {
    let mut t = Table::new(&[
        "AGENT",
        "REGION",
        "ONLINE",
        "HOST",
        "VERSION",
        "MONITORS",
        "LAST SEEN",
        "CLOCK",
        "SPOOL",
        "DROPPED",
        "UNSTORED",
        "REFUSED",
        "SPOOL ERROR",
    ]);
    for a in agents {
        t.row(vec![
            a.agent_id.clone(),
            a.region.clone(),
            if a.online { "yes" } else { "no" }.to_string(),
            a.hostname.clone(),
            a.version.clone(),
            a.assignments.to_string(),
            output::ago(a.last_seen.as_ref(), now),
            clock_offset(a.clock_offset_ms),
            a.spool_depth.to_string(),
            a.dropped_total.to_string(),
            a.unstored_total.to_string(),
            a.refused_results.to_string(),
            if a.spool_error.is_empty() {
                "-".to_string()
            } else {
                a.spool_error.clone()
            },
        ]);
    }
    t
}

/// An agent's clock offset: "+1.250s" ahead, "-80ms" behind, "0ms".
pub fn clock_offset(ms: i64) -> String {
    let sign = if ms > 0 {
        "+"
    } else if ms < 0 {
        "-"
    } else {
        ""
    };
    let abs = ms.unsigned_abs();
    if abs < 1000 {
        format!("{sign}{abs}ms")
    } else {
        format!("{sign}{}.{:03}s", abs / 1000, abs % 1000)
    }
}

/// Agent tokens (never their secrets).
pub fn tokens_table(tokens: &[v1::AgentToken]) -> Table {
    let mut t = Table::new(&["ID", "REGION", "CREATED", "REVOKED", "DESCRIPTION"]);
    for tok in tokens {
        t.row(vec![
            tok.id.clone(),
            tok.region.clone(),
            output::ts(tok.created_at.as_ref()),
            if tok.revoked { "yes" } else { "" }.to_string(),
            tok.description.clone(),
        ]);
    }
    t
}
