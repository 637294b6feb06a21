//! A tenant's incidents, newest first, each with its timeline; and their
//! acknowledgement. Incidents are opened and closed by the hub's evaluation,
//! never by a request: a request may only acknowledge an open one.

use std::time::SystemTime;

use portwatch_proto::time::{from_timestamp, to_timestamp};
use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, Scope, internal, not_found, page};
use crate::auth::Caller;
use crate::hub::Acknowledged;
use crate::store::OutboxRecord;
use crate::validate;

/// Longest acknowledgement note.
pub const MAX_ACK_NOTE: usize = 500;

impl AdminApi {
    pub(super) async fn list_incidents(
        &self,
        request: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsResponse>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let req = request.into_inner();
        validate::optional_id("monitor_id", &req.monitor_id)?;
        let limit = validate::page_size("page_size", req.page_size)?;
        validate::optional_id("page_token", &req.page_token)?;
        // Newest first: ids sort by creation time, so the next page has smaller ids.
        let (incidents, next_page_token) = page(
            self.store()
                .list_incidents()
                .map_err(internal)?
                .into_iter()
                .filter(|i| i.tenant_id == tenant_id)
                .filter(|i| req.monitor_id.is_empty() || i.monitor_id == req.monitor_id)
                .filter(|i| !req.open_only || i.closed_at.is_none())
                .filter(|i| req.page_token.is_empty() || i.id < req.page_token),
            limit,
            |x| x.id.clone(),
        );
        Ok(Response::new(v1::ListIncidentsResponse {
            incidents,
            next_page_token,
        }))
    }

    pub(super) async fn get_incident(
        &self,
        request: Request<v1::GetIncidentRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let req = request.get_ref();
        validate::id("id", &req.id)?;
        let mut incident = match self.store().get_incident(&req.id).map_err(internal)? {
            Some(i) if i.tenant_id == tenant_id => i,
            _ => return Err(not_found("id", "incident")),
        };
        let deliveries: Vec<OutboxRecord> = self
            .store()
            .list_deliveries()
            .map_err(internal)?
            .into_iter()
            .filter(|r| {
                r.delivery
                    .as_ref()
                    .is_some_and(|d| d.subject_id == incident.id)
            })
            .collect();
        let channels = self.store().list_channels().map_err(internal)?;
        incident.timeline = timeline(&incident, &deliveries, &channels);
        Ok(Response::new(incident))
    }

    pub(super) async fn acknowledge_incident(
        &self,
        request: Request<v1::AcknowledgeIncidentRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let call = self.begin(&request, scope)?;
        let req = request.get_ref();
        validate::id("id", &req.id)?;
        let note = req.note.trim().to_string();
        validate::text("note", &note, MAX_ACK_NOTE, false)?;
        let incident = match self.store().get_incident(&req.id).map_err(internal)? {
            Some(i) if i.tenant_id == call.tenant => i,
            _ => return Err(not_found("id", "incident")),
        };
        if incident.closed_at.is_some() {
            return Err(closed(&incident.id));
        }
        let by = match &call.caller {
            Caller::Operator => "operator".to_string(),
            Caller::Tenant(_) => match self
                .store()
                .token_by_hash(&call.token_hash)
                .map_err(internal)?
            {
                Some(t) if t.description.is_empty() => format!("token {}", t.id),
                Some(t) => format!("token {} ({})", t.id, t.description),
                None => "a tenant token".to_string(),
            },
        };
        let outcome = self
            .hub
            .acknowledge_incident(
                &incident.monitor_id,
                &incident.id,
                by,
                note,
                SystemTime::now(),
            )
            .await
            .map_err(|e| e.into_status())?;
        match outcome {
            Acknowledged::Now(i) | Acknowledged::Already(i) => Ok(Response::new(i)),
            Acknowledged::NotOpen => Err(closed(&incident.id)),
        }
    }
}

fn closed(id: &str) -> Status {
    Status::failed_precondition(format!(
        "id: incident {id} is closed; only an open incident can be acknowledged"
    ))
}

fn entry(at: Option<&prost_types::Timestamp>, kind: &str, text: String) -> v1::TimelineEntry {
    v1::TimelineEntry {
        at: at.cloned(),
        kind: kind.into(),
        text,
        ..Default::default()
    }
}

/// What happened to `i`, oldest first: its opening with each region that
/// confirmed it, being found flapping, each reminder, the acknowledgement,
/// each delivery made or given up, and the resolution. Entries at the same
/// instant keep that order.
pub fn timeline(
    i: &v1::Incident,
    deliveries: &[OutboxRecord],
    channels: &[v1::Channel],
) -> Vec<v1::TimelineEntry> {
    let mut out = vec![entry(
        i.opened_at.as_ref(),
        "opened",
        format!("opened: {}", i.reason_text),
    )];
    for e in &i.open_evidence {
        if e.state == v1::RegionState::Down as i32 {
            let mut c = entry(
                e.checked_at.as_ref().or(i.opened_at.as_ref()),
                "confirmed",
                format!("{} down: {}", e.region, e.detail),
            );
            c.region = e.region.clone();
            out.push(c);
        }
    }
    if i.in_maintenance_since.is_some() {
        let window = if i.maintenance_window_id.is_empty() {
            "a maintenance window".to_string()
        } else {
            format!("maintenance window {}", i.maintenance_window_id)
        };
        out.push(entry(
            i.in_maintenance_since.as_ref(),
            "maintenance",
            format!("opened during {window}: nobody notified"),
        ));
    }
    if i.released_at.is_some() {
        out.push(entry(
            i.released_at.as_ref(),
            "released",
            "maintenance over with the port still down: notified now".into(),
        ));
    }
    if i.flapping_since.is_some() {
        out.push(entry(
            i.flapping_since.as_ref(),
            "flapping",
            "found flapping: held open until stable".into(),
        ));
    }
    if i.acknowledged_at.is_some() {
        let mut text = format!("acknowledged by {}", i.acknowledged_by);
        if !i.acknowledged_note.is_empty() {
            text.push_str(": ");
            text.push_str(&i.acknowledged_note);
        }
        out.push(entry(i.acknowledged_at.as_ref(), "acknowledged", text));
    }
    let channel_name = |id: &str| {
        channels.iter().find(|c| c.id == id).map_or_else(
            || id.to_string(),
            |c| format!("{} ({})", c.name, crate::channels::kind(c)),
        )
    };
    for r in deliveries {
        let Some(d) = &r.delivery else { continue };
        let kind = v1::DeliveryKind::try_from(d.kind).unwrap_or(v1::DeliveryKind::Unspecified);
        let word = crate::outbox::kind_word(kind);
        if kind == v1::DeliveryKind::Reminder
            && let Some(snap) = &r.incident
        {
            // One "reminded" entry per reminder, not one per channel.
            let at = snap.last_reminded_at.as_ref();
            let dup = out
                .iter()
                .any(|e| e.kind == "reminded" && e.at.as_ref() == at);
            if !dup {
                out.push(entry(
                    at,
                    "reminded",
                    format!("reminder {} planned", snap.reminders_sent),
                ));
            }
        }
        let state = v1::DeliveryState::try_from(d.state).unwrap_or(v1::DeliveryState::Unspecified);
        let mut e = match state {
            v1::DeliveryState::Delivered => entry(
                d.delivered_at.as_ref(),
                "notified",
                format!("{word} notice delivered to {}", channel_name(&d.channel_id)),
            ),
            v1::DeliveryState::Failed => entry(
                d.next_attempt_at.as_ref().or(d.created_at.as_ref()),
                "delivery_failed",
                format!(
                    "{word} notice to {} failed after {} attempts: {}",
                    channel_name(&d.channel_id),
                    d.attempts,
                    d.last_error
                ),
            ),
            _ => continue,
        };
        e.channel_id = d.channel_id.clone();
        out.push(e);
    }
    if i.closed_at.is_some() {
        out.push(entry(
            i.closed_at.as_ref(),
            "resolved",
            "resolved: every region up".into(),
        ));
    }
    // Every entry has a time (the opening's, when nothing better is known).
    for e in &mut out {
        if e.at.is_none() {
            e.at = i
                .opened_at
                .or_else(|| Some(to_timestamp(SystemTime::UNIX_EPOCH)));
        }
    }
    out.sort_by_key(|e| {
        e.at.as_ref()
            .and_then(from_timestamp)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    });
    out
}
