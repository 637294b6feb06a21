//! `portwatch tenant add|list|set-plan` (operator).
//!
//! A new tenant's first token is printed once, as the coordinator returns it once.

use portwatch_proto::v1;
use serde_json::{Value, json};

use crate::cli::{OutputFormat, TenantCmd};
use crate::client::Client;
use crate::error::{CliError, Result};
use crate::names;
use crate::output::{self, Table};
use crate::views;

pub async fn run(c: &mut Client, cmd: TenantCmd, out: OutputFormat) -> Result<()> {
    match cmd {
        TenantCmd::Add { id, name, plan } => {
            let name = match (name, &id) {
                (Some(n), _) => n,
                (None, Some(id)) => id.clone(),
                (None, None) => {
                    return Err(CliError::usage(
                        "tenant add: give an id or --name (or both)",
                    ));
                }
            };
            let r = c
                .admin
                .create_tenant(v1::CreateTenantRequest {
                    id: id.unwrap_or_default(),
                    name,
                    plan: plan.wire(),
                })
                .await?
                .into_inner();
            let tenant = r.tenant.unwrap_or_default();
            match out {
                OutputFormat::Json => output::json(&json!({
                    "tenant": views::tenant(&tenant),
                    "token_id": r.token_id,
                    "token": r.token,
                })),
                OutputFormat::Table => output::print(&format!(
                    "created tenant {} ({}) on plan {}\ntoken: {}\n(the secret is shown once; the tenant uses it as PORTWATCH_TOKEN)\n",
                    tenant.id,
                    tenant.name,
                    names::text(names::plan(tenant.plan)),
                    r.token
                )),
            }
        }
        TenantCmd::List => {
            let tenants = c
                .admin
                .list_tenants(v1::ListTenantsRequest {})
                .await?
                .into_inner()
                .tenants;
            let v = Value::Array(tenants.iter().map(views::tenant).collect());
            output::either(out, &v, &table(&tenants), "no tenants")
        }
        TenantCmd::SetPlan { id, plan } => {
            let tenant = c
                .admin
                .set_tenant_plan(v1::SetTenantPlanRequest {
                    tenant_id: id,
                    plan: plan.wire(),
                })
                .await?
                .into_inner();
            match out {
                OutputFormat::Json => output::json(&views::tenant(&tenant)),
                OutputFormat::Table => output::line(&format!(
                    "tenant {} is now on plan {} (at most {} monitors, interval at least {})",
                    tenant.id,
                    names::text(names::plan(tenant.plan)),
                    tenant.max_monitors,
                    output::millis(tenant.min_interval_ms)
                )),
            }
        }
    }
}

/// Tenants as a table, with their plan and quota use.
pub fn table(tenants: &[v1::Tenant]) -> Table {
    let mut t = Table::new(&["ID", "NAME", "PLAN", "MONITORS", "MIN INTERVAL", "CREATED"]);
    for x in tenants {
        t.row(vec![
            x.id.clone(),
            x.name.clone(),
            names::text(names::plan(x.plan)).to_string(),
            format!("{}/{}", x.monitor_count, x.max_monitors),
            output::millis(x.min_interval_ms),
            output::ts(x.created_at.as_ref()),
        ]);
    }
    t
}
