//! Incident transitions of the hub: opening, closing, and holding a flapping
//! incident open, each decided by `Hub::evaluate` and carried out here under
//! the `transitions` lock; and deleting a monitor, which closes its open
//! incident in the same write, under the same lock.
//!
//! Guarantees: each transition re-checks, under the lock, that the incident is
//! still the one evaluated (or that none is open, for an opening), so racing
//! evaluations never open, close or mark one twice; an incident and the
//! deliveries its change causes are written in one transaction and flushed
//! before they are announced or the outbox is woken; a "flapping" notice is
//! planned only in the write that first sets the stored incident's
//! `flapping_since`, so it goes once per incident, across restarts.

use std::time::{Duration, SystemTime};

use portwatch_check::Outcome;
use portwatch_proto::time::{from_timestamp, to_timestamp};
use portwatch_proto::v1;
use tracing::info;

use super::{Hub, event};
use crate::consensus;
use crate::first_steps;
use crate::flapping::{self, Flap};
use crate::ids::new_id;
use crate::outbox;
use crate::store::{FlapTerms, StoreError};

/// The reason of an incident of a monitor that expects its port closed.
pub const EXPECTED_CLOSED: &str = "Port accepts connections (expected closed)";

/// The flap terms a "flapping" notice about `m` quotes.
fn flap_terms(m: &v1::Monitor) -> FlapTerms {
    let s = flapping::Settings::of(m);
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    FlapTerms {
        threshold: s.threshold,
        window_ms: ms(s.window),
        stable_for_ms: ms(s.stable_for),
    }
}

/// The flap state an open incident recorded, as a restart finds it: its
/// changes and flapping mark as written, and a stability clock that starts
/// no earlier than this start (the downtime is not stability anybody saw).
pub(super) fn restored_flap(i: &v1::Incident, started: SystemTime) -> Flap {
    let flapping_since = i.flapping_since.as_ref().and_then(from_timestamp);
    let stable_since = flapping_since
        .and(i.stable_since.as_ref().and_then(from_timestamp))
        .map(|at| at.max(started));
    Flap {
        changes: i.state_changes.iter().filter_map(from_timestamp).collect(),
        failing: stable_since.is_none(),
        flapping_since,
        stable_since,
    }
}

impl Hub {
    /// Writes an incident (or slowness record) with the deliveries its change
    /// causes in one transaction, makes it durable, and only then lets the
    /// outbox see them.
    pub(super) async fn commit_incident(
        &self,
        incident: &v1::Incident,
        deliveries: &[crate::store::OutboxRecord],
    ) -> Result<(), StoreError> {
        self.store
            .put_incident_with_deliveries(incident, deliveries)?;
        self.store.flush().await?;
        outbox::count_planned(deliveries.len());
        self.outbox_wake.notify_one();
        Ok(())
    }

    /// The routing rules of a tenant (none for a tenant that is gone).
    pub(super) fn routing_rules(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<v1::RoutingRule>, StoreError> {
        Ok(self
            .store
            .get_tenant(tenant_id)?
            .map(|t| t.routing_rules)
            .unwrap_or_default())
    }

    /// The monitor's flap state as the incident records it.
    fn flap_of(&self, monitor_id: &str) -> Flap {
        self.lock()
            .flaps
            .get(monitor_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Opens an incident for `monitor` (none is open): the incident and the
    /// "unreachable" deliveries (and, when it opens flapping, the "flapping"
    /// ones to the same channels) in one transaction, flushed before it is
    /// announced and before the outbox may send them.
    pub(super) async fn open_incident(
        &self,
        monitor: &v1::Monitor,
        eval: &consensus::Evaluation,
        reason: Outcome,
        flapping: bool,
        t: SystemTime,
    ) -> Result<(), StoreError> {
        let _transition = self.transitions.lock().await;
        {
            let st = self.lock();
            if st.open.contains_key(&monitor.id) || !st.monitors.contains_key(&monitor.id) {
                // Another evaluation opened it meanwhile, or it was deleted.
                return Ok(());
            }
        }
        let evidence = self.evidence(monitor, eval);
        let flap = self.flap_of(&monitor.id);
        let mut incident = v1::Incident {
            id: new_id("inc"),
            tenant_id: monitor.tenant_id.clone(),
            monitor_id: monitor.id.clone(),
            monitor_name: monitor.name.clone(),
            host: monitor.host.clone(),
            port: monitor.port,
            opened_at: Some(to_timestamp(t)),
            closed_at: None,
            reason: v1::Outcome::from(if monitor.expect_closed {
                Outcome::Ok
            } else {
                reason
            }) as i32,
            reason_text: if monitor.expect_closed {
                EXPECTED_CLOSED.to_string()
            } else {
                reason.text().to_string()
            },
            expect_closed: monitor.expect_closed,
            open_evidence: evidence,
            close_evidence: Vec::new(),
            severity: "critical".into(),
            flapping_since: flap.flapping_since.filter(|_| flapping).map(to_timestamp),
            stable_since: None,
            state_changes: flap.changes.iter().copied().map(to_timestamp).collect(),
            ..Default::default()
        };
        incident.first_steps = first_steps::for_incident(&incident);
        // An outage supersedes slowness: its record closes first.
        let slow = self.lock().slow.get(&monitor.id).cloned();
        if let Some(rec) = slow {
            self.close_slowness(monitor, Some(eval), &rec, Some(&incident.id), t)
                .await?;
        }
        // In maintenance: recorded, nobody told (until the window ends with
        // the port still down: `release_maintenance`).
        let held = self.maintenance_for(monitor, t);
        if let Some(window) = &held {
            incident.maintenance_window_id = window.clone();
            incident.in_maintenance_since = Some(to_timestamp(t));
        }
        let channels = self.store.list_channels()?;
        let rules = self.routing_rules(&monitor.tenant_id)?;
        let routed = outbox::routed(monitor, &rules, &incident.severity);
        let monitor = &*routed;
        let mut deliveries = if held.is_some() {
            Vec::new()
        } else {
            outbox::plan_incident(
                monitor,
                &channels,
                &[],
                &incident,
                v1::DeliveryKind::Opened,
                t,
            )
        };
        let flapping = incident.flapping_since.is_some();
        if flapping && held.is_none() {
            let told: Vec<String> = deliveries
                .iter()
                .filter_map(|r| r.delivery.as_ref().map(|d| d.channel_id.clone()))
                .collect();
            deliveries.extend(outbox::plan_flapping(
                monitor,
                &channels,
                &told,
                &incident,
                flap_terms(monitor),
                t,
            ));
        }
        self.commit_incident(&incident, &deliveries).await?;
        info!(monitor_id = %monitor.id, incident_id = %incident.id, reason = %reason, flapping, deliveries = deliveries.len(), "incident opened");
        self.lock()
            .open
            .insert(monitor.id.clone(), incident.clone());
        if flapping {
            self.emit(event(v1::event::Kind::IncidentOpened(incident.clone())));
            self.emit(event(v1::event::Kind::IncidentFlapping(incident)));
        } else {
            self.emit(event(v1::event::Kind::IncidentOpened(incident)));
        }
        Ok(())
    }

    /// Closes the open incident `incident_id` of `monitor`: one "reachable
    /// again" per channel told of the opening, in the incident's transaction.
    pub(super) async fn close_incident(
        &self,
        monitor: &v1::Monitor,
        eval: &consensus::Evaluation,
        ignored: &[String],
        incident_id: &str,
        t: SystemTime,
    ) -> Result<(), StoreError> {
        let _transition = self.transitions.lock().await;
        // The incident as it is now (a hold may have written it since the
        // evaluation began), unless another evaluation closed it meanwhile.
        let Some(mut incident) = self
            .lock()
            .open
            .get(&monitor.id)
            .filter(|i| i.id == incident_id)
            .cloned()
        else {
            return Ok(());
        };
        let mut evidence = self.evidence(monitor, eval);
        for e in &mut evidence {
            e.ignored_offline = ignored.contains(&e.region);
        }
        incident.closed_at = Some(to_timestamp(t));
        incident.close_evidence = evidence;
        incident.state_changes = self
            .flap_of(&monitor.id)
            .changes
            .iter()
            .copied()
            .map(to_timestamp)
            .collect();
        // Whoever heard of the opening hears of the end; an incident held
        // back by maintenance the whole time was heard of by nobody.
        let earlier = self
            .store
            .delivery_channels(&incident.id, v1::DeliveryKind::Opened)?;
        let rules = self.routing_rules(&monitor.tenant_id)?;
        let routed = outbox::routed(monitor, &rules, &incident.severity);
        let deliveries = if incident.maintenance_window_id.is_empty() {
            outbox::plan_incident(
                &routed,
                &self.store.list_channels()?,
                &earlier,
                &incident,
                v1::DeliveryKind::Resolved,
                t,
            )
        } else {
            Vec::new()
        };
        self.commit_incident(&incident, &deliveries).await?;
        let was_flapping = incident.flapping_since.is_some();
        info!(monitor_id = %monitor.id, incident_id = %incident.id, was_flapping, deliveries = deliveries.len(), "incident closed");
        self.lock().open.remove(&monitor.id);
        self.emit(event(v1::event::Kind::IncidentClosed(incident)));
        Ok(())
    }

    /// Writes the flap state of a held incident. The first time it is marked
    /// flapping, its "flapping" deliveries (to the channels told of the
    /// opening) go in the same transaction, flushed before the outbox is
    /// woken: once per incident, across restarts, since the stored mark is
    /// what is checked. A change of the stability clock alone is written
    /// without a flush: a crash losing it only restarts the clock, as every
    /// restart does.
    pub(super) async fn hold_incident(
        &self,
        monitor: &v1::Monitor,
        incident_id: &str,
        began: bool,
        t: SystemTime,
    ) -> Result<(), StoreError> {
        let _transition = self.transitions.lock().await;
        let Some(stored) = self
            .lock()
            .open
            .get(&monitor.id)
            .filter(|i| i.id == incident_id)
            .cloned()
        else {
            return Ok(());
        };
        let flap = self.flap_of(&monitor.id);
        let mut incident = stored.clone();
        incident.flapping_since = flap.flapping_since.map(to_timestamp);
        incident.stable_since = flap.stable_since.map(to_timestamp);
        incident.state_changes = flap.changes.iter().copied().map(to_timestamp).collect();
        let notify = stored.flapping_since.is_none() && incident.flapping_since.is_some();
        let deliveries = if notify {
            let told = self
                .store
                .delivery_channels(&incident.id, v1::DeliveryKind::Opened)?;
            outbox::plan_flapping(
                monitor,
                &self.store.list_channels()?,
                &told,
                &incident,
                flap_terms(monitor),
                t,
            )
        } else {
            Vec::new()
        };
        self.store
            .put_incident_with_deliveries(&incident, &deliveries)?;
        if notify {
            self.store.flush().await?;
            outbox::count_planned(deliveries.len());
            self.outbox_wake.notify_one();
            info!(monitor_id = %monitor.id, incident_id = %incident.id, began, deliveries = deliveries.len(), "monitor flapping: incident held open until stable");
        }
        self.lock()
            .open
            .insert(monitor.id.clone(), incident.clone());
        if notify {
            self.emit(event(v1::event::Kind::IncidentFlapping(incident)));
        }
        Ok(())
    }
}

/// What `Hub::acknowledge_incident` found.
#[derive(Debug)]
pub enum Acknowledged {
    /// Acknowledged now (and its PagerDuty `acknowledge` events planned).
    Now(v1::Incident),
    /// It already was; nothing changed.
    Already(v1::Incident),
    /// It is not open (any more).
    NotOpen,
}

/// An open incident whose next reminder may be due.
struct ReminderDue {
    monitor: v1::Monitor,
    incident_id: String,
}

/// Whether `i` of `m` is due a reminder at `t`: reminders on, the incident
/// neither acknowledged nor flapping (a flapping incident is held quietly
/// until its recovery), fewer sent than the maximum, and the period passed
/// since the opening or the last reminder.
fn reminder_due(m: &v1::Monitor, i: &v1::Incident, t: SystemTime) -> bool {
    if m.remind_every_ms == 0 || m.paused {
        return false;
    }
    if i.acknowledged_at.is_some()
        || i.flapping_since.is_some()
        || i.closed_at.is_some()
        || !i.maintenance_window_id.is_empty()
    {
        return false;
    }
    let max = if m.remind_max == 0 {
        crate::validate::DEFAULT_REMIND_MAX
    } else {
        m.remind_max
    };
    if i.reminders_sent >= max {
        return false;
    }
    let base = i
        .last_reminded_at
        .as_ref()
        .or(i.opened_at.as_ref())
        .and_then(from_timestamp);
    base.and_then(|b| b.checked_add(Duration::from_millis(m.remind_every_ms)))
        .is_some_and(|due| t >= due)
}

impl Hub {
    /// Acknowledges the open incident `incident_id` of monitor `monitor_id`:
    /// who, when and the note are written with one PagerDuty `acknowledge`
    /// delivery per PagerDuty channel told of the opening, in one transaction,
    /// flushed before the outbox is woken. Acknowledging twice changes nothing.
    pub async fn acknowledge_incident(
        &self,
        monitor_id: &str,
        incident_id: &str,
        by: String,
        note: String,
        t: SystemTime,
    ) -> Result<Acknowledged, StoreError> {
        let _transition = self.transitions.lock().await;
        let (monitor, stored) = {
            let st = self.lock();
            let open = st.open.get(monitor_id).filter(|i| i.id == incident_id);
            match (st.monitors.get(monitor_id), open) {
                (Some(m), Some(i)) => (m.clone(), i.clone()),
                _ => return Ok(Acknowledged::NotOpen),
            }
        };
        if stored.acknowledged_at.is_some() {
            return Ok(Acknowledged::Already(stored));
        }
        let mut incident = stored;
        incident.acknowledged_at = Some(to_timestamp(t));
        incident.acknowledged_by = by;
        incident.acknowledged_note = note;
        let told = self
            .store
            .delivery_channels(&incident.id, v1::DeliveryKind::Opened)?;
        let deliveries =
            outbox::plan_acknowledged(&monitor, &self.store.list_channels()?, &told, &incident, t);
        self.commit_incident(&incident, &deliveries).await?;
        info!(monitor_id = %monitor.id, incident_id = %incident.id, by = %incident.acknowledged_by, deliveries = deliveries.len(), "incident acknowledged");
        self.lock()
            .open
            .insert(monitor.id.clone(), incident.clone());
        self.emit(event(v1::event::Kind::IncidentAcknowledged(
            incident.clone(),
        )));
        Ok(Acknowledged::Now(incident))
    }

    /// Plans the reminders that are due at `t` (see `reminder_due`): for each,
    /// the incident's count and time of the last reminder are written with one
    /// delivery per channel told of the opening but PagerDuty, in one
    /// transaction, flushed before the outbox is woken. Returns how many
    /// incidents were reminded.
    pub async fn remind_due(&self, t: SystemTime) -> Result<usize, StoreError> {
        let due: Vec<ReminderDue> = {
            let st = self.lock();
            st.open
                .iter()
                .filter_map(|(mid, i)| {
                    let m = st.monitors.get(mid)?;
                    // Nobody is reminded during maintenance either.
                    let quiet = crate::maintenance::covering(&st.windows, m, t).is_some();
                    (!quiet && reminder_due(m, i, t)).then(|| ReminderDue {
                        monitor: m.clone(),
                        incident_id: i.id.clone(),
                    })
                })
                .collect()
        };
        let mut reminded = 0;
        for d in due {
            if self.remind(&d.monitor, &d.incident_id, t).await? {
                reminded += 1;
            }
        }
        Ok(reminded)
    }

    async fn remind(
        &self,
        monitor: &v1::Monitor,
        incident_id: &str,
        t: SystemTime,
    ) -> Result<bool, StoreError> {
        let _transition = self.transitions.lock().await;
        // Still open, still the same, still due (an acknowledgement or a close
        // may have come in between).
        let Some(mut incident) = self
            .lock()
            .open
            .get(&monitor.id)
            .filter(|i| i.id == incident_id && reminder_due(monitor, i, t))
            .cloned()
        else {
            return Ok(false);
        };
        let told = self
            .store
            .delivery_channels(&incident.id, v1::DeliveryKind::Opened)?;
        incident.reminders_sent += 1;
        incident.last_reminded_at = Some(to_timestamp(t));
        let deliveries =
            outbox::plan_reminder(monitor, &self.store.list_channels()?, &told, &incident, t);
        self.commit_incident(&incident, &deliveries).await?;
        info!(monitor_id = %monitor.id, incident_id = %incident.id, reminder = incident.reminders_sent, deliveries = deliveries.len(), "incident still open: reminder planned");
        self.lock().open.insert(monitor.id.clone(), incident);
        Ok(true)
    }
}

impl Hub {
    /// Open incidents held back by a maintenance window whose monitor no
    /// window covers any more at `t`: the port is still down after the
    /// maintenance, so its "Unreachable" goes now (same keys as it would have
    /// had), in one transaction with the incident's release, flushed before
    /// the outbox is woken. Returns how many were released.
    pub async fn release_maintenance(&self, t: SystemTime) -> Result<usize, StoreError> {
        let held: Vec<(v1::Monitor, String)> = {
            let st = self.lock();
            st.open
                .iter()
                .filter(|(_, i)| !i.maintenance_window_id.is_empty())
                .filter_map(|(mid, i)| {
                    let m = st.monitors.get(mid)?;
                    crate::maintenance::covering(&st.windows, m, t)
                        .is_none()
                        .then(|| (m.clone(), i.id.clone()))
                })
                .collect()
        };
        let mut released = 0;
        for (monitor, incident_id) in held {
            let _transition = self.transitions.lock().await;
            let Some(mut incident) = self
                .lock()
                .open
                .get(&monitor.id)
                .filter(|i| i.id == incident_id && !i.maintenance_window_id.is_empty())
                .cloned()
            else {
                continue;
            };
            if self.maintenance_for(&monitor, t).is_some() {
                continue;
            }
            incident.maintenance_window_id = String::new();
            incident.released_at = Some(to_timestamp(t));
            let rules = self.routing_rules(&monitor.tenant_id)?;
            let deliveries = outbox::plan_incident(
                &outbox::routed(&monitor, &rules, &incident.severity),
                &self.store.list_channels()?,
                &[],
                &incident,
                v1::DeliveryKind::Opened,
                t,
            );
            self.commit_incident(&incident, &deliveries).await?;
            info!(monitor_id = %monitor.id, incident_id = %incident.id, deliveries = deliveries.len(), "maintenance over with the port still down: incident notified");
            self.lock().open.insert(monitor.id.clone(), incident);
            released += 1;
        }
        Ok(released)
    }
}
