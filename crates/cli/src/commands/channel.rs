//! `portwatch channel add|list|rm|test`: notification channels.
//!
//! Secrets (webhook HMAC keys, SMTP passwords, PagerDuty routing keys) may come
//! from environment variables so they stay out of shell history; the
//! coordinator never returns them. Whatever the coordinator answers, including
//! UNIMPLEMENTED from a coordinator without notifications, is shown verbatim
//! with a non-zero exit code.

use portwatch_proto::v1;
use serde_json::{Value, json};

use crate::cli::{ChannelAdd, ChannelCmd, OutputFormat};
use crate::client::Client;
use crate::error::{CliError, Result};
use crate::names;
use crate::output::{self, Table};
use crate::views;

pub async fn run(c: &mut Client, cmd: ChannelCmd, out: OutputFormat) -> Result<()> {
    match cmd {
        ChannelCmd::Add(add) => {
            let channel = build(add);
            let ch = c
                .admin
                .create_channel(v1::CreateChannelRequest {
                    tenant_id: c.tenant.clone(),
                    channel: Some(channel),
                })
                .await?
                .into_inner();
            match out {
                OutputFormat::Json => output::json(&views::channel(&ch)),
                OutputFormat::Table => {
                    let (kind, target) = views::channel_target(&ch);
                    output::line(&format!(
                        "created {kind} channel {} ({}) -> {target}{}",
                        ch.id,
                        ch.name,
                        if ch.is_default { " [default]" } else { "" }
                    ))
                }
            }
        }
        ChannelCmd::List => {
            let channels = c
                .admin
                .list_channels(v1::ListChannelsRequest {
                    tenant_id: c.tenant.clone(),
                })
                .await?
                .into_inner()
                .channels;
            let v = Value::Array(channels.iter().map(views::channel).collect());
            let t = channels_table(&channels);
            output::either(out, &v, &t, "no channels")
        }
        ChannelCmd::Rm { id } => {
            c.admin
                .delete_channel(v1::DeleteChannelRequest {
                    tenant_id: c.tenant.clone(),
                    id: id.clone(),
                })
                .await?;
            match out {
                OutputFormat::Json => output::json(&json!({ "deleted": id })),
                OutputFormat::Table => output::line(&format!("deleted channel {id}")),
            }
        }
        ChannelCmd::Deliveries { incident, limit } => {
            deliveries(c, incident.unwrap_or_default(), limit, out).await
        }
        ChannelCmd::Test { id } => {
            let r = c
                .admin
                .test_channel(v1::TestChannelRequest {
                    tenant_id: c.tenant.clone(),
                    id: id.clone(),
                })
                .await?
                .into_inner();
            // Said once: on stdout when delivered, as the error when not (JSON
            // keeps its document on stdout for scripts, and the exit code says it).
            match out {
                OutputFormat::Json => {
                    output::json(&json!({ "id": id, "ok": r.ok, "detail": r.detail }))?
                }
                OutputFormat::Table if r.ok => output::line(&format!("delivered: {}", r.detail))?,
                OutputFormat::Table => {}
            }
            if r.ok {
                Ok(())
            } else {
                Err(CliError::refused(format!(
                    "channel {id}: the test notification was not accepted: {}",
                    r.detail
                )))
            }
        }
    }
}

async fn deliveries(
    c: &mut Client,
    incident_id: String,
    limit: usize,
    out: OutputFormat,
) -> Result<()> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .admin
            .list_deliveries(v1::ListDeliveriesRequest {
                tenant_id: c.tenant.clone(),
                incident_id: incident_id.clone(),
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        all.extend(page.deliveries);
        let enough = limit > 0 && all.len() >= limit;
        if enough || page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    if limit > 0 {
        all.truncate(limit);
    }
    let v = Value::Array(all.iter().map(views::delivery).collect());
    let t = deliveries_table(&all);
    output::either(out, &v, &t, "no deliveries")
}

/// Channels as a table (targets only, never secrets).
pub fn channels_table(channels: &[v1::Channel]) -> Table {
    let mut t = Table::new(&["ID", "NAME", "KIND", "DEFAULT", "TARGET"]);
    for ch in channels {
        let (kind, target) = views::channel_target(ch);
        t.row(vec![
            ch.id.clone(),
            ch.name.clone(),
            kind.to_string(),
            if ch.is_default { "yes" } else { "" }.to_string(),
            target,
        ]);
    }
    t
}

/// Deliveries as a table: did the page go out?
pub fn deliveries_table(all: &[v1::Delivery]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "CHANNEL",
        "SUBJECT",
        "KIND",
        "STATE",
        "ATTEMPTS",
        "CREATED",
        "LAST ERROR",
    ]);
    for d in all {
        t.row(vec![
            d.id.clone(),
            d.channel_id.clone(),
            d.subject_id.clone(),
            names::text(names::delivery_kind(d.kind)).to_string(),
            names::text(names::delivery_state(d.state)).to_string(),
            d.attempts.to_string(),
            output::ts(d.created_at.as_ref()),
            d.last_error.clone(),
        ]);
    }
    t
}

fn build(add: ChannelAdd) -> v1::Channel {
    use v1::channel::Config;
    let (common, config) = match add {
        ChannelAdd::Webhook {
            url,
            secret,
            common,
        } => (
            common,
            Config::Webhook(v1::WebhookConfig {
                url,
                secret: secret.unwrap_or_default(),
            }),
        ),
        ChannelAdd::Slack {
            webhook_url,
            common,
        } => (common, Config::Slack(v1::SlackConfig { webhook_url })),
        ChannelAdd::Email {
            smtp_host,
            smtp_port,
            tls,
            username,
            password,
            from,
            to,
            common,
        } => (
            common,
            Config::Email(v1::EmailConfig {
                smtp_host,
                smtp_port: smtp_port.map_or(0, u32::from),
                tls: tls.wire(),
                username: username.unwrap_or_default(),
                password: password.unwrap_or_default(),
                from,
                to,
            }),
        ),
        ChannelAdd::Pagerduty {
            routing_key,
            base_url,
            common,
        } => (
            common,
            Config::Pagerduty(v1::PagerDutyConfig {
                routing_key,
                base_url: base_url.unwrap_or_default(),
            }),
        ),
    };
    v1::Channel {
        name: common.name.unwrap_or_default(),
        is_default: common.default,
        config: Some(config),
        ..Default::default()
    }
}
