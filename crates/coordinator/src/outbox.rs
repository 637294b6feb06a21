//! The durable outbox: which deliveries an incident (opened, flapping,
//! resolved) or a probe-region outage causes, and the worker that sends them.
//!
//! Why it exists: a notification must survive a coordinator crash and a
//! receiver that is down, without ever holding up result ingestion. So the hub
//! only *plans* deliveries ([`plan_incident`], [`plan_region`]) and writes them
//! in the same sled transaction as the incident change, flushes, and wakes the
//! [`Worker`]; the worker, a separate task, sends them.
//!
//! Guarantees:
//! - at least once: a delivery stays PENDING (and in the store's pending index)
//!   until an attempt succeeded or it gave up; after a crash the worker finds
//!   it again at start. A crash between a successful send and the write of
//!   DELIVERED sends it again, with the same `Idempotency-Key`;
//! - one attempt at a time per delivery (the in-flight set), at most
//!   `CONCURRENCY` attempts at once overall;
//! - retries back off exponentially with jitter, capped at `retry_max`, and
//!   stop after `retry_horizon` from the delivery's creation (state FAILED), or
//!   at once when the receiver refused the message itself;
//! - every attempt is recorded (attempts, last error, next attempt) and flushed
//!   before the next one is considered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portwatch_proto::time::{from_timestamp, to_timestamp, unix_micros};
use portwatch_proto::v1;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::channels::{self, Answer, Failure, Senders};
use crate::ids::new_id;
use crate::render::{Notice, Notification};
use crate::store::{FlapTerms, OutboxRecord, RegionOutage, Store};

/// Attempts in flight at once.
const CONCURRENCY: usize = 8;
/// The worker looks at the pending index at least this often, even unwoken.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long shutdown lets attempts in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Retry settings (from the coordinator's config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxSettings {
    /// Delay after the first failed attempt.
    pub retry_initial: Duration,
    /// Longest delay between two attempts.
    pub retry_max: Duration,
    /// Give up this long after the delivery was created.
    pub retry_horizon: Duration,
    /// How long a worker holds a delivery it attempts (`Storage::claim_delivery`):
    /// longer than one attempt may take, so that no other coordinator's worker
    /// starts the same delivery meanwhile; after a crash, how long the
    /// delivery waits before another worker takes it.
    pub claim_for: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(3600),
            retry_horizon: Duration::from_secs(24 * 3600),
            claim_for: Duration::from_secs(35),
        }
    }
}

/// The delay after `attempts` failed attempts: `initial · 2^(attempts-1)`,
/// capped at `max`, then "equal jitter" (half fixed, half random, `jitter` in
/// [0, 1]) so that many deliveries failing together do not retry in lockstep.
pub fn backoff(attempts: u32, s: &OutboxSettings, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = s
        .retry_initial
        .checked_mul(1u32 << exp)
        .unwrap_or(s.retry_max)
        .min(s.retry_max);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The word of a delivery kind in idempotency keys.
pub fn kind_word(kind: v1::DeliveryKind) -> &'static str {
    match kind {
        v1::DeliveryKind::Opened => "opened",
        v1::DeliveryKind::Resolved => "resolved",
        v1::DeliveryKind::RegionOffline => "offline",
        v1::DeliveryKind::RegionOnline => "online",
        v1::DeliveryKind::Flapping => "flapping",
        v1::DeliveryKind::Reminder => "reminder",
        v1::DeliveryKind::Acknowledged => "acknowledged",
        v1::DeliveryKind::Unspecified => "unspecified",
    }
}

/// `{subject}:{opened|resolved|flapping|offline|online}:{channel id}`;
/// receivers dedup on it.
pub fn idempotency_key(subject: &str, kind: v1::DeliveryKind, channel_id: &str) -> String {
    format!("{subject}:{}:{channel_id}", kind_word(kind))
}

fn record(
    channel: &v1::Channel,
    subject: &str,
    kind: v1::DeliveryKind,
    now: SystemTime,
) -> OutboxRecord {
    let at = to_timestamp(now);
    OutboxRecord {
        delivery: Some(v1::Delivery {
            id: new_id("dlv"),
            channel_id: channel.id.clone(),
            subject_id: subject.to_string(),
            kind: kind as i32,
            idempotency_key: idempotency_key(subject, kind, &channel.id),
            state: v1::DeliveryState::Pending as i32,
            attempts: 0,
            last_error: String::new(),
            created_at: Some(at),
            next_attempt_at: Some(at),
            delivered_at: None,
        }),
        tenant_id: channel.tenant_id.clone(),
        incident: None,
        outage: None,
        flap: None,
    }
}

/// The channels an incident of `monitor` notifies: the ones it names (those that
/// still exist and belong to its tenant), or else the tenant's default channels.
/// For a resolve, `earlier` lists the channels told of the opening: the same
/// receivers hear that it is over (PagerDuty needs the resolve for its trigger).
pub fn incident_channels<'a>(
    monitor: &v1::Monitor,
    channels: &'a [v1::Channel],
    earlier: &[String],
) -> Vec<&'a v1::Channel> {
    let tenant = |c: &&v1::Channel| c.tenant_id == monitor.tenant_id && !c.tenant_id.is_empty();
    if !earlier.is_empty() {
        return channels
            .iter()
            .filter(tenant)
            .filter(|c| earlier.contains(&c.id))
            .collect();
    }
    if monitor.channel_ids.is_empty() {
        channels
            .iter()
            .filter(tenant)
            .filter(|c| c.is_default)
            .collect()
    } else {
        channels
            .iter()
            .filter(tenant)
            .filter(|c| monitor.channel_ids.contains(&c.id))
            .collect()
    }
}

/// The monitor as routing makes it for a notice of `severity`: a monitor that
/// names channels keeps them; otherwise the first of the tenant's `rules`
/// that matches (any of its tags on the monitor, or none given; its severity,
/// or none given) names them. No rule matching: unchanged (the tenant's
/// default channels).
pub fn routed<'m>(
    monitor: &'m v1::Monitor,
    rules: &[v1::RoutingRule],
    severity: &str,
) -> std::borrow::Cow<'m, v1::Monitor> {
    if !monitor.channel_ids.is_empty() {
        return std::borrow::Cow::Borrowed(monitor);
    }
    let rule = rules.iter().find(|r| {
        (r.tags.is_empty() || r.tags.iter().any(|t| monitor.tags.contains(t)))
            && (r.severity.is_empty() || r.severity == severity)
    });
    match rule {
        Some(r) => std::borrow::Cow::Owned(v1::Monitor {
            channel_ids: r.channel_ids.clone(),
            ..monitor.clone()
        }),
        None => std::borrow::Cow::Borrowed(monitor),
    }
}

/// One delivery per channel for an incident that opened or resolved; each
/// carries a snapshot of the incident.
pub fn plan_incident(
    monitor: &v1::Monitor,
    channels: &[v1::Channel],
    earlier: &[String],
    incident: &v1::Incident,
    kind: v1::DeliveryKind,
    now: SystemTime,
) -> Vec<OutboxRecord> {
    incident_channels(monitor, channels, earlier)
        .into_iter()
        .map(|c| OutboxRecord {
            incident: Some(incident.clone()),
            ..record(c, &incident.id, kind, now)
        })
        .collect()
}

/// One "flapping" delivery for each channel told of the incident's opening
/// (`told`), each carrying the incident and the flap terms it quotes. Nobody
/// told, nobody notified: the notice qualifies a page, it is not one. PagerDuty
/// channels get none: their alert (dedup key = incident id) is already
/// triggered and stays so until the recovery resolves it; a second trigger
/// would add nothing there, or page again if a responder had resolved it.
pub fn plan_flapping(
    monitor: &v1::Monitor,
    channels: &[v1::Channel],
    told: &[String],
    incident: &v1::Incident,
    terms: FlapTerms,
    now: SystemTime,
) -> Vec<OutboxRecord> {
    told_channels(monitor, channels, told, false)
        .map(|c| OutboxRecord {
            incident: Some(incident.clone()),
            flap: Some(terms),
            ..record(c, &incident.id, v1::DeliveryKind::Flapping, now)
        })
        .collect()
}

/// Whether a channel is a PagerDuty one (its alert has a life of its own:
/// triggered, acknowledged, resolved on one dedup key).
pub fn is_pagerduty(c: &v1::Channel) -> bool {
    matches!(c.config, Some(v1::channel::Config::Pagerduty(_)))
}

/// The channels told of an incident's opening (`told`) that a follow-up
/// notice goes to: the PagerDuty ones when `pagerduty`, else all the others.
/// Nobody told, nobody notified: a follow-up qualifies a page, it is not one.
fn told_channels<'a>(
    monitor: &v1::Monitor,
    channels: &'a [v1::Channel],
    told: &[String],
    pagerduty: bool,
) -> impl Iterator<Item = &'a v1::Channel> {
    let chosen = if told.is_empty() {
        Vec::new()
    } else {
        incident_channels(monitor, channels, told)
    };
    chosen
        .into_iter()
        .filter(move |c| is_pagerduty(c) == pagerduty)
}

/// The `incident.reminders_sent`-th reminder of an open incident: one delivery
/// for each channel told of its opening (`told`) except PagerDuty (its alert
/// stays triggered and PagerDuty escalates by its own rules). Each reminder has
/// keys of its own: `{incident}:reminder-{n}:{channel}`.
pub fn plan_reminder(
    monitor: &v1::Monitor,
    channels: &[v1::Channel],
    told: &[String],
    incident: &v1::Incident,
    now: SystemTime,
) -> Vec<OutboxRecord> {
    told_channels(monitor, channels, told, false)
        .map(|c| {
            let mut r = OutboxRecord {
                incident: Some(incident.clone()),
                ..record(c, &incident.id, v1::DeliveryKind::Reminder, now)
            };
            if let Some(d) = &mut r.delivery {
                d.idempotency_key = format!(
                    "{}:reminder-{}:{}",
                    incident.id, incident.reminders_sent, c.id
                );
            }
            r
        })
        .collect()
}

/// An acknowledgement: one `acknowledge` event for each PagerDuty channel told
/// of the opening (the other channels see it in the recovery notice and the
/// incident's timeline).
pub fn plan_acknowledged(
    monitor: &v1::Monitor,
    channels: &[v1::Channel],
    told: &[String],
    incident: &v1::Incident,
    now: SystemTime,
) -> Vec<OutboxRecord> {
    told_channels(monitor, channels, told, true)
        .map(|c| OutboxRecord {
            incident: Some(incident.clone()),
            ..record(c, &incident.id, v1::DeliveryKind::Acknowledged, now)
        })
        .collect()
}

/// One delivery per operator channel for a probe region that went offline; for
/// its return, one per channel that was told of the outage (`outage.channel_ids`),
/// so "back online" is only ever sent after an offline notice.
pub fn plan_region(
    channels: &[v1::Channel],
    outage: &RegionOutage,
    kind: v1::DeliveryKind,
    now: SystemTime,
) -> Vec<OutboxRecord> {
    let online = kind == v1::DeliveryKind::RegionOnline;
    channels
        .iter()
        .filter(|c| c.tenant_id.is_empty())
        .filter(|c| !online || outage.channel_ids.contains(&c.id))
        .map(|c| {
            let mut r = record(c, &outage.region, kind, now);
            // The subject shown is the region; the key names this outage, so a
            // later outage of the same region is a new message.
            if let Some(d) = &mut r.delivery {
                d.idempotency_key = idempotency_key(&outage.id, kind, &c.id);
            }
            r.outage = Some(outage.clone());
            r
        })
        .collect()
}

/// Counts deliveries that were just planned (and made durable).
pub fn count_planned(n: usize) {
    if n > 0 {
        metrics::counter!("portwatch_deliveries_total", "state" => "pending").increment(n as u64);
    }
}

/// The notification a stored delivery renders to.
pub fn notification(r: &OutboxRecord) -> Option<Notification<'_>> {
    let d = r.delivery.as_ref()?;
    let notice = match v1::DeliveryKind::try_from(d.kind).ok()? {
        v1::DeliveryKind::Opened => Notice::Opened(r.incident.as_ref()?),
        v1::DeliveryKind::Resolved => Notice::Resolved(r.incident.as_ref()?),
        v1::DeliveryKind::RegionOffline => Notice::RegionOffline(r.outage.as_ref()?),
        v1::DeliveryKind::RegionOnline => Notice::RegionOnline(r.outage.as_ref()?),
        v1::DeliveryKind::Flapping => Notice::Flapping(r.incident.as_ref()?, r.flap.as_ref()?),
        v1::DeliveryKind::Reminder => Notice::Reminder(r.incident.as_ref()?),
        v1::DeliveryKind::Acknowledged => Notice::Acknowledged(r.incident.as_ref()?),
        v1::DeliveryKind::Unspecified => return None,
    };
    Some(Notification {
        notice,
        key: &d.idempotency_key,
        test: false,
    })
}

/// Sends what the outbox holds.
pub struct Worker {
    /// Names this worker's claims: unique per process.
    id: String,
    store: Store,
    senders: Arc<Senders>,
    settings: OutboxSettings,
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(
        store: Store,
        senders: Arc<Senders>,
        settings: OutboxSettings,
        wake: Arc<Notify>,
    ) -> Worker {
        Worker {
            id: format!(
                "outbox-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ),
            store,
            senders,
            settings,
            wake,
        }
    }

    /// Runs until `shutdown`; lets attempts in flight finish for a moment, then
    /// abandons them (they stay PENDING and are sent after the restart).
    pub async fn run(self, shutdown: CancellationToken, beat: crate::loops::Beat) {
        let me = Arc::new(self);
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut by_task: HashMap<tokio::task::Id, String> = HashMap::new();
        loop {
            beat.tick();
            let now_us = unix_micros(SystemTime::now());
            let mut next_due: Option<u64> = None;
            // Nothing is sent while the store cannot record an attempt: an
            // unrecorded send would be repeated every round until it can.
            let pending = if me.store.is_writable() {
                me.store.pending_deliveries().map(Some)
            } else {
                Ok(None)
            };
            match pending {
                Ok(None) => {}
                Ok(Some(pending)) => {
                    metrics::gauge!("portwatch_deliveries_pending").set(pending.len() as f64);
                    for (id, at) in pending {
                        if in_flight.contains(&id) {
                            continue;
                        }
                        if at > now_us {
                            next_due = Some(next_due.map_or(at, |n| n.min(at)));
                        } else if tasks.len() < CONCURRENCY {
                            let w = me.clone();
                            let handle = tasks.spawn({
                                let id = id.clone();
                                async move { w.attempt(&id).await }
                            });
                            by_task.insert(handle.id(), id.clone());
                            in_flight.insert(id);
                        }
                    }
                }
                Err(e) => error!(error = %e, "outbox: reading pending deliveries failed"),
            }
            let wait = next_due.map_or(IDLE_POLL, |at| {
                Duration::from_micros(at.saturating_sub(now_us)).min(IDLE_POLL)
            });
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = me.wake.notified() => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            error!(error = %e, "outbox: an attempt task failed");
                            e.id()
                        }
                    };
                    if let Some(d) = by_task.remove(&id) {
                        in_flight.remove(&d);
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
        if !tasks.is_empty() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            tasks.abort_all();
        }
    }

    /// One attempt for one delivery, claimed first (another coordinator's
    /// worker may hold it, or have attempted it since the pending list was
    /// read), then recorded and flushed.
    async fn attempt(&self, id: &str) {
        let claim_ms = u64::try_from(self.settings.claim_for.as_millis()).unwrap_or(u64::MAX);
        let mut rec = match self.store.claim_delivery(id, &self.id, claim_ms) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                error!(delivery_id = %id, error = %e, "outbox: reading a delivery failed");
                return;
            }
        };
        if rec
            .delivery
            .as_ref()
            .is_none_or(|d| d.state != v1::DeliveryState::Pending as i32)
        {
            return;
        }
        let channel_id = rec
            .delivery
            .as_ref()
            .map(|d| d.channel_id.clone())
            .unwrap_or_default();
        let (kind, result) = match self.store.get_channel(&channel_id) {
            Ok(Some(ch)) => {
                let kind = channels::kind(&ch);
                let result = match notification(&rec) {
                    Some(n) => self.senders.send(&ch, &n).await,
                    None => Err(Failure {
                        detail: "the delivery record is incomplete".into(),
                        permanent: true,
                    }),
                };
                (kind, result)
            }
            Ok(None) => (
                "none",
                Err(Failure {
                    detail: "the channel was deleted".into(),
                    permanent: true,
                }),
            ),
            Err(e) => (
                "none",
                Err(Failure {
                    detail: format!("reading the channel: {e}"),
                    permanent: false,
                }),
            ),
        };
        metrics::counter!(
            "portwatch_delivery_attempts_total",
            "channel_kind" => kind,
            "result" => if result.is_ok() { "ok" } else { "error" },
        )
        .increment(1);
        let now = SystemTime::now();
        let jitter = rand::random::<f64>();
        let Some(d) = rec.delivery.as_mut() else {
            return;
        };
        apply(d, result, now, &self.settings, jitter);
        let state = d.state;
        if let Err(e) = self.store.put_delivery(&rec) {
            error!(delivery_id = %id, error = %e, "outbox: recording an attempt failed");
            return;
        }
        if let Err(e) = self.store.flush().await {
            error!(delivery_id = %id, error = %e, "outbox: flushing an attempt failed");
        }
        match v1::DeliveryState::try_from(state) {
            Ok(v1::DeliveryState::Delivered) => {
                metrics::counter!("portwatch_deliveries_total", "state" => "delivered")
                    .increment(1);
            }
            Ok(v1::DeliveryState::Failed) => {
                metrics::counter!("portwatch_deliveries_total", "state" => "failed").increment(1);
            }
            _ => {}
        }
    }
}

/// Records one attempt's result in the delivery: DELIVERED, or PENDING with the
/// next attempt, or FAILED when the receiver refused the message or the retry
/// horizon would be passed.
pub fn apply(
    d: &mut v1::Delivery,
    result: Result<Answer, Failure>,
    now: SystemTime,
    s: &OutboxSettings,
    jitter: f64,
) {
    d.attempts = d.attempts.saturating_add(1);
    match result {
        Ok(answer) => {
            d.state = v1::DeliveryState::Delivered as i32;
            d.delivered_at = Some(to_timestamp(now));
            d.next_attempt_at = None;
            info!(
                delivery_id = %d.id,
                channel_id = %d.channel_id,
                key = %d.idempotency_key,
                attempts = d.attempts,
                answer = %answer.detail,
                "notification delivered"
            );
        }
        Err(f) => {
            d.last_error = f.detail;
            let created = d
                .created_at
                .as_ref()
                .and_then(from_timestamp)
                .unwrap_or(now);
            let next = now + backoff(d.attempts, s, jitter);
            let give_up_at = created + s.retry_horizon;
            if f.permanent || next > give_up_at {
                d.state = v1::DeliveryState::Failed as i32;
                d.next_attempt_at = None;
                warn!(
                    delivery_id = %d.id,
                    channel_id = %d.channel_id,
                    attempts = d.attempts,
                    error = %d.last_error,
                    permanent = f.permanent,
                    "notification failed; giving up"
                );
            } else {
                d.next_attempt_at = Some(to_timestamp(next));
                warn!(
                    delivery_id = %d.id,
                    channel_id = %d.channel_id,
                    attempts = d.attempts,
                    error = %d.last_error,
                    "notification attempt failed; will retry"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
