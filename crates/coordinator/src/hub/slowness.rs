//! Slow ports, by consensus: a monitor with `degraded_after_ms` is degraded
//! when the same quorum of regions that would open an incident has connected
//! slower than that for `degraded_checks` consecutive checks each; one slow
//! region is never enough. Degraded, it gets a slowness record (an incident
//! marked `slow`, severity "warning") with its own "TCP Port Slow" notice, and
//! its own recovery once enough regions (all but fewer than a quorum) have
//! been fast for as many checks. An outage supersedes it: the outage's
//! incident opens, the slowness record closes (`superseded_by`) telling only
//! PagerDuty (its warning alert is resolved; nobody else is told "fast again"
//! about a port that is down). While an incident is open no slowness opens.
//!
//! The per-region counts live in memory (a restart counts afresh); the record
//! is stored like an incident, with its deliveries in one transaction.

use std::time::SystemTime;

use portwatch_check::Outcome;
use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;
use tracing::info;

use super::{Hub, event};
use crate::consensus;
use crate::ids::new_id;
use crate::outbox;
use crate::store::StoreError;

/// `degraded_checks` when the monitor leaves it 0.
pub const DEFAULT_CHECKS: u32 = 3;

/// One result's speed, as slowness reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    Slow,
    Fast,
    /// Not a connect (a failure, or slowness off): both counts start over.
    Neither,
}

/// A region's consecutive slow and fast connects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Speed {
    pub slow: u32,
    pub fast: u32,
}

impl Speed {
    pub fn next(self, p: Pace) -> Speed {
        match p {
            Pace::Slow => Speed {
                slow: self.slow.saturating_add(1),
                fast: 0,
            },
            Pace::Fast => Speed {
                slow: 0,
                fast: self.fast.saturating_add(1),
            },
            Pace::Neither => Speed::default(),
        }
    }
}

/// The pace of result `r` (outcome `o`) of monitor `m`.
pub fn step(m: &v1::Monitor, r: &v1::CheckResult, o: Outcome) -> Pace {
    if m.degraded_after_ms == 0 || m.expect_closed || o != Outcome::Ok {
        return Pace::Neither;
    }
    if r.connect_us > u64::from(m.degraded_after_ms) * 1000 {
        Pace::Slow
    } else {
        Pace::Fast
    }
}

fn checks(m: &v1::Monitor) -> u32 {
    if m.degraded_checks == 0 {
        DEFAULT_CHECKS
    } else {
        m.degraded_checks
    }
}

enum SlowAction {
    Open(Vec<String>),
    Close(Box<v1::Incident>),
}

impl Hub {
    /// Opens or closes `monitor`'s slowness record as its regions' counts and
    /// the quorum of `eval` say.
    pub(super) async fn carry_out_slowness(
        &self,
        monitor: &v1::Monitor,
        eval: &consensus::Evaluation,
        t: SystemTime,
    ) -> Result<(), StoreError> {
        let action = {
            let st = self.lock();
            let open = st.slow.get(&monitor.id).cloned();
            let n = checks(monitor);
            let k = eval.quorum;
            let count = |f: &dyn Fn(&Speed) -> bool| -> Vec<String> {
                monitor
                    .regions
                    .iter()
                    .filter(|r| {
                        st.speed
                            .get(&(monitor.id.clone(), (*r).clone()))
                            .is_some_and(f)
                    })
                    .cloned()
                    .collect()
            };
            match open {
                None if monitor.degraded_after_ms == 0
                    || monitor.paused
                    || k == 0
                    || st.open.contains_key(&monitor.id) =>
                {
                    None
                }
                None => {
                    let slow = count(&|s| s.slow >= n);
                    (slow.len() >= k).then_some(SlowAction::Open(slow))
                }
                Some(rec) => {
                    // Fast again when fewer than a quorum can still be slow
                    // (or slowness was turned off).
                    let fast = count(&|s| s.fast >= n).len();
                    let regions = monitor.regions.len();
                    let recovered = monitor.degraded_after_ms == 0 || fast + k > regions || k == 0;
                    recovered.then(|| SlowAction::Close(Box::new(rec)))
                }
            }
        };
        match action {
            Some(SlowAction::Open(regions)) => self.open_slowness(monitor, eval, &regions, t).await,
            Some(SlowAction::Close(rec)) => {
                let _transition = self.transitions.lock().await;
                let still = self
                    .lock()
                    .slow
                    .get(&monitor.id)
                    .is_some_and(|r| r.id == rec.id);
                if still {
                    self.close_slowness(monitor, Some(eval), &rec, None, t)
                        .await?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn open_slowness(
        &self,
        monitor: &v1::Monitor,
        eval: &consensus::Evaluation,
        slow_regions: &[String],
        t: SystemTime,
    ) -> Result<(), StoreError> {
        let _transition = self.transitions.lock().await;
        {
            let st = self.lock();
            if st.open.contains_key(&monitor.id)
                || st.slow.contains_key(&monitor.id)
                || !st.monitors.contains_key(&monitor.id)
            {
                return Ok(());
            }
        }
        let mut record = v1::Incident {
            id: new_id("inc"),
            tenant_id: monitor.tenant_id.clone(),
            monitor_id: monitor.id.clone(),
            monitor_name: monitor.name.clone(),
            host: monitor.host.clone(),
            port: monitor.port,
            opened_at: Some(to_timestamp(t)),
            reason: v1::Outcome::Ok as i32,
            reason_text: format!(
                "Connect time above {} ms for {} checks in {} of {} regions ({})",
                monitor.degraded_after_ms,
                checks(monitor),
                slow_regions.len(),
                monitor.regions.len(),
                slow_regions.join(", ")
            ),
            open_evidence: self.evidence(monitor, eval),
            severity: "warning".into(),
            slow: true,
            ..Default::default()
        };
        record.first_steps = crate::first_steps::for_incident(&record);
        let held = self.maintenance_for(monitor, t);
        if let Some(window) = &held {
            record.maintenance_window_id = window.clone();
            record.in_maintenance_since = Some(to_timestamp(t));
        }
        let deliveries = if held.is_some() {
            Vec::new()
        } else {
            let rules = self.routing_rules(&monitor.tenant_id)?;
            outbox::plan_incident(
                &outbox::routed(monitor, &rules, "warning"),
                &self.store.list_channels()?,
                &[],
                &record,
                v1::DeliveryKind::Opened,
                t,
            )
        };
        self.commit_incident(&record, &deliveries).await?;
        info!(monitor_id = %monitor.id, incident_id = %record.id, regions = ?slow_regions, deliveries = deliveries.len(), "port slow by consensus: degraded");
        self.lock().slow.insert(monitor.id.clone(), record.clone());
        self.emit(event(v1::event::Kind::IncidentOpened(record)));
        Ok(())
    }

    /// Closes the slowness record `rec` (the caller holds the transitions
    /// lock): fast again ("no longer slow" to the channels told of it), or
    /// superseded by the outage `by` (PagerDuty's warning resolved, nobody
    /// else told).
    pub(super) async fn close_slowness(
        &self,
        monitor: &v1::Monitor,
        eval: Option<&consensus::Evaluation>,
        rec: &v1::Incident,
        by: Option<&str>,
        t: SystemTime,
    ) -> Result<(), StoreError> {
        let mut record = rec.clone();
        record.closed_at = Some(to_timestamp(t));
        if let Some(eval) = eval {
            record.close_evidence = self.evidence(monitor, eval);
        }
        record.superseded_by = by.unwrap_or_default().to_string();
        let told = self
            .store
            .delivery_channels(&record.id, v1::DeliveryKind::Opened)?;
        let mut deliveries = if told.is_empty() {
            Vec::new()
        } else {
            outbox::plan_incident(
                monitor,
                &self.store.list_channels()?,
                &told,
                &record,
                v1::DeliveryKind::Resolved,
                t,
            )
        };
        if by.is_some() {
            let channels = self.store.list_channels()?;
            deliveries.retain(|d| {
                d.delivery.as_ref().is_some_and(|d| {
                    channels
                        .iter()
                        .any(|c| c.id == d.channel_id && outbox::is_pagerduty(c))
                })
            });
        }
        self.commit_incident(&record, &deliveries).await?;
        info!(monitor_id = %monitor.id, incident_id = %record.id, superseded_by = by.unwrap_or(""), deliveries = deliveries.len(), "port no longer slow");
        self.lock().slow.remove(&monitor.id);
        self.emit(event(v1::event::Kind::IncidentClosed(record)));
        Ok(())
    }
}
