//! `portwatch routing list|set|clear`: which channels the notices of monitors
//! that name no channels go to, by tag and severity.

use portwatch_proto::v1;
use serde_json::{Value, json};

use crate::cli::{OutputFormat, RoutingCmd};
use crate::client::Client;
use crate::error::{CliError, Result};
use crate::output::{self, Table};

pub async fn run(c: &mut Client, cmd: RoutingCmd, out: OutputFormat) -> Result<()> {
    let rules = match cmd {
        RoutingCmd::List => {
            c.admin
                .get_routing_rules(v1::GetRoutingRulesRequest {
                    tenant_id: c.tenant.clone(),
                })
                .await?
                .into_inner()
                .rules
        }
        RoutingCmd::Set { rules } => {
            let rules = rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    parse_rule(r).map_err(|e| CliError::usage(format!("--rule {}: {e}", i + 1)))
                })
                .collect::<Result<Vec<_>>>()?;
            set(c, rules).await?
        }
        RoutingCmd::Clear => set(c, Vec::new()).await?,
    };
    let v = Value::Array(rules.iter().map(rule_json).collect());
    output::either(
        out,
        &v,
        &table(&rules),
        "no routing rules: the tenant's default channels get every notice",
    )
}

async fn set(c: &mut Client, rules: Vec<v1::RoutingRule>) -> Result<Vec<v1::RoutingRule>> {
    Ok(c.admin
        .set_routing_rules(v1::SetRoutingRulesRequest {
            tenant_id: c.tenant.clone(),
            rules,
        })
        .await?
        .into_inner()
        .rules)
}

/// "tags=a,b;severity=critical;channels=ch-1,ch-2".
pub fn parse_rule(s: &str) -> std::result::Result<v1::RoutingRule, String> {
    let mut rule = v1::RoutingRule::default();
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        match k.trim() {
            "tags" => rule.tags = list(v),
            "severity" => rule.severity = v.trim().to_string(),
            "channels" => rule.channel_ids = list(v),
            other => {
                return Err(format!(
                    "unknown key {other:?}; use tags, severity and channels"
                ));
            }
        }
    }
    if rule.channel_ids.is_empty() {
        return Err("channels=… is required".into());
    }
    Ok(rule)
}

fn rule_json(r: &v1::RoutingRule) -> Value {
    json!({ "tags": r.tags, "severity": r.severity, "channel_ids": r.channel_ids })
}

fn table(rules: &[v1::RoutingRule]) -> Table {
    let mut t = Table::new(&["#", "TAGS", "SEVERITY", "CHANNELS"]);
    for (i, r) in rules.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            if r.tags.is_empty() {
                "any".to_string()
            } else {
                r.tags.join(",")
            },
            if r.severity.is_empty() {
                "any".to_string()
            } else {
                r.severity.clone()
            },
            r.channel_ids.join(","),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_bad_ones_say_why() {
        let r = parse_rule("tags=db, cache;severity=critical;channels=ch-1,ch-2").unwrap();
        assert_eq!(r.tags, ["db", "cache"]);
        assert_eq!(r.severity, "critical");
        assert_eq!(r.channel_ids, ["ch-1", "ch-2"]);
        let any = parse_rule("channels=ch-9").unwrap();
        assert!(any.tags.is_empty() && any.severity.is_empty());
        assert!(parse_rule("tags=db").unwrap_err().contains("channels"));
        assert!(
            parse_rule("color=red;channels=x")
                .unwrap_err()
                .contains("color")
        );
        assert!(parse_rule("channels").unwrap_err().contains("key=value"));
    }
}
