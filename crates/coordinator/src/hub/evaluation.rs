//! Evaluation: the consensus rule applied to a monitor on the live view, and
//! what its verdict sets off.
//!
//! A monitor is evaluated when one of its results becomes a region's latest
//! and again when its verdict may change without traffic (a result going
//! stale, an offline grace ending, a held incident's stability time ending),
//! which `recheck_at` computes so that the periodic pass skips steady
//! monitors. The decision is taken under the state lock, together with the
//! flap state's step, so evaluations racing on one monitor each see the
//! other's; the transition it decides is carried out afterwards
//! (`incidents`), under the transitions lock, which re-checks it.

use std::time::{Duration, Instant, SystemTime};

use portwatch_check::Outcome;
use portwatch_proto::convert::OutcomeFromWire;
use portwatch_proto::time::from_timestamp;
use portwatch_proto::v1;

use super::{AgentTx, Hub, Key, State, event, now, slowness};
use crate::consensus::{self, Decision, Observation, Policy, RegionInput, RegionState, Rules};
use crate::flapping::{self, Action, Flap, Signal};
use crate::store::StoreError;

/// The monitor's consensus settings.
pub fn rules_for(m: &v1::Monitor, offline_grace: Duration) -> Rules {
    let interval = Duration::from_millis(m.interval_ms.max(1));
    let timeout = Duration::from_millis(u64::from(m.timeout_ms.max(1)));
    Rules {
        policy: if m.consensus == v1::ConsensusPolicy::Unanimous as i32 {
            Policy::Unanimous
        } else {
            Policy::Quorum
        },
        interval,
        timeout,
        // A region must not count as "offline past grace" while its last result is
        // still fresh: that would let a fresh down stop holding recovery back.
        offline_grace: offline_grace.max(consensus::freshness_window(interval, timeout)),
    }
}

fn wire_state(s: &RegionState) -> v1::RegionState {
    match s {
        RegionState::Up => v1::RegionState::Up,
        RegionState::Down(_) => v1::RegionState::Down,
        RegionState::Unknown(_) => v1::RegionState::Unknown,
    }
}

pub(super) fn outcome_of(r: &v1::CheckResult) -> Option<Outcome> {
    Outcome::from_wire(r.outcome, "outcome").ok()
}

/// What an outcome means for the consensus rule of `m`. For a monitor that
/// expects its port closed, connecting is the failure (given to the rule as
/// `Refused`, a stand-in: the incident says "open") and any way of not
/// reaching the port is success; a probe that could not check (blocked, probe
/// error) stays what it is.
pub(super) fn judged(m: &v1::Monitor, o: Outcome) -> Outcome {
    if !m.expect_closed {
        return o;
    }
    match o {
        Outcome::Ok => Outcome::Refused,
        o if o.is_target_failure() => Outcome::Ok,
        o => o,
    }
}

impl Hub {
    /// Results that became their region's latest (already durable): update the
    /// view, evaluate consensus, ask for confirmation when a region turns down.
    pub async fn results_stored(&self, results: Vec<v1::CheckResult>) -> Result<(), StoreError> {
        let mut touched: Vec<String> = Vec::new();
        {
            let mut st = self.lock();
            for r in results {
                let key = (r.monitor_id.clone(), r.region.clone());
                let (Some(o), Some(at)) = (
                    outcome_of(&r),
                    r.checked_at.as_ref().and_then(from_timestamp),
                ) else {
                    continue;
                };
                if o == Outcome::Ok || o.is_target_failure() {
                    let e = st.last_decisive.entry(key.clone()).or_insert(at);
                    if at > *e {
                        *e = at;
                    }
                }
                // Only results that became the region's latest arrive here,
                // so each one is newer than the last counted.
                // Counted only for monitors that use them, so a coordinator
                // of monitors without `recover_after` or slowness keeps no
                // entry per monitor and region for them.
                let counts = st.monitors.get(&r.monitor_id).map(|m| {
                    let up = (m.recover_after > 1).then(|| judged(m, o) == Outcome::Ok);
                    let pace = (m.degraded_after_ms > 0).then(|| slowness::step(m, &r, o));
                    (up, pace)
                });
                match counts.and_then(|(up, _)| up) {
                    Some(up) => {
                        let streak = st.up_streak.entry(key.clone()).or_insert(0);
                        *streak = if up { streak.saturating_add(1) } else { 0 };
                    }
                    None => {
                        st.up_streak.remove(&key);
                    }
                }
                match counts.and_then(|(_, pace)| pace) {
                    Some(pace) => {
                        let speed = st.speed.entry(key.clone()).or_default();
                        *speed = speed.next(pace);
                    }
                    None => {
                        st.speed.remove(&key);
                    }
                }
                if !touched.contains(&r.monitor_id) {
                    touched.push(r.monitor_id.clone());
                }
                st.latest.insert(key, r);
            }
        }
        for m in touched {
            self.evaluate(&m).await?;
        }
        Ok(())
    }

    /// Re-evaluates every monitor (results going stale, agents gone, grace passed).
    ///
    /// Only monitors whose recheck time has come are evaluated: in steady state,
    /// with results arriving every interval, that is none of them.
    pub async fn evaluate_all(&self) -> Result<(), StoreError> {
        let t = now();
        let ids: Vec<String> = {
            let st = self.lock();
            st.monitors
                .keys()
                .filter(|id| st.recheck.get(*id).is_none_or(|at| *at <= t))
                .cloned()
                .collect()
        };
        for id in ids {
            self.evaluate(&id).await?;
        }
        Ok(())
    }

    /// Since when a region of `m` counts as unknown, for the offline grace: its
    /// last decisive result, or the incident's opening if it has none — but
    /// never before this coordinator started. The coordinator's own downtime is
    /// not a region's silence: after a start, every region gets a fresh grace,
    /// so a restart after a long outage cannot close an incident because the
    /// regions that were down have not yet reconnected.
    fn unknown_since(&self, st: &State, key: &Key, m: &v1::Monitor) -> Option<SystemTime> {
        let opened = st
            .open
            .get(&m.id)
            .and_then(|i| i.opened_at.as_ref().and_then(from_timestamp));
        let since = st.last_decisive.get(key).copied().or(opened)?;
        Some(since.max(self.started))
    }

    fn inputs(
        &self,
        st: &State,
        m: &v1::Monitor,
    ) -> Vec<(String, Option<Observation>, bool, Option<SystemTime>)> {
        m.regions
            .iter()
            .map(|r| {
                let key = (m.id.clone(), r.clone());
                let latest = st.latest.get(&key).and_then(|res| {
                    Some(Observation {
                        checked_at: res.checked_at.as_ref().and_then(from_timestamp)?,
                        outcome: judged(m, outcome_of(res)?),
                    })
                });
                let online = st.sessions.get(r).is_some_and(|v| !v.is_empty());
                let since = self.unknown_since(st, &key, m);
                (r.clone(), latest, online, since)
            })
            .collect()
    }

    /// The consensus rule applied to `m` on the current view, with each
    /// region's agent liveness (in the monitor's region order).
    fn consensus_for(
        &self,
        st: &State,
        m: &v1::Monitor,
        now: SystemTime,
    ) -> (consensus::Evaluation, Vec<bool>) {
        let raw = self.inputs(st, m);
        let inputs: Vec<RegionInput> = raw
            .iter()
            .map(|(r, latest, online, last)| RegionInput {
                region: r,
                latest: *latest,
                agent_online: *online,
                last_decisive_at: *last,
            })
            .collect();
        let opened_at = st
            .open
            .get(&m.id)
            .map(|i| i.opened_at.as_ref().and_then(from_timestamp).unwrap_or(now));
        let rules = rules_for(m, self.settings.offline_grace);
        let eval = consensus::evaluate(&inputs, &rules, opened_at, now);
        (eval, raw.iter().map(|(_, _, online, _)| *online).collect())
    }

    /// The earliest time `m`'s evaluation can change without a new result: a
    /// result going stale, or (incident open) an unknown region's grace ending.
    fn recheck_at(
        &self,
        st: &State,
        m: &v1::Monitor,
        eval: &consensus::Evaluation,
        now: SystemTime,
    ) -> SystemTime {
        let rules = rules_for(m, self.settings.offline_grace);
        let window = consensus::freshness_window(rules.interval, rules.timeout);
        let tick = Duration::from_millis(1);
        let open = st.open.contains_key(&m.id);
        let mut next: Option<SystemTime> = None;
        // Checked arithmetic: a time that cannot be reached is never due.
        let mut consider = |at: Option<SystemTime>| {
            if let Some(at) = at
                && at > now
                && next.is_none_or(|n| at < n)
            {
                next = Some(at);
            }
        };
        for v in &eval.regions {
            let key = (m.id.clone(), v.region.clone());
            if let Some(at) = st
                .latest
                .get(&key)
                .and_then(|r| r.checked_at.as_ref())
                .and_then(from_timestamp)
            {
                consider(at.checked_add(window + tick));
            }
            if let (true, RegionState::Unknown(_)) = (open, v.state)
                && let Some(since) = self.unknown_since(st, &key, m)
            {
                consider(since.checked_add(rules.offline_grace + tick));
            }
        }
        // A held incident closes once its stability time ends, result or not.
        if open && let Some(f) = st.flaps.get(&m.id) {
            consider(
                flapping::stable_at(f, &flapping::Settings::of(m))
                    .and_then(|at| at.checked_add(tick)),
            );
        }
        // Nothing pending: look again in a minute anyway (cheap, and a safety net).
        next.unwrap_or(now + Duration::from_secs(60))
    }

    /// Evaluates one monitor and acts on the decision, in four steps: the
    /// verdict on the live view (`judge`, under the state lock), the region
    /// changes announced (`announce_region_changes`), the other regions asked
    /// to confirm a region turning down (`ask_to_confirm`), and the incident
    /// transition carried out (`carry_out`, under the transitions lock).
    pub async fn evaluate(&self, monitor_id: &str) -> Result<(), StoreError> {
        self.count(|c| c.evaluations += 1);
        let t = now();
        let Some(verdict) = self.judge(monitor_id, t) else {
            return Ok(());
        };
        let Verdict {
            monitor,
            eval,
            open,
            changes,
            confirm,
            action,
        } = verdict;
        self.announce_region_changes(&monitor, changes);
        self.ask_to_confirm(&monitor, confirm);
        self.carry_out(&monitor, &eval, open, action, t).await?;
        self.carry_out_slowness(&monitor, &eval, t).await
    }

    /// The verdict on `monitor_id` as the live view stands, with everything
    /// that must move with it under one hold of the state lock: the flap
    /// state's step, the time of the next evaluation, each region's state,
    /// and the agents asked to confirm. None for a monitor that is gone or
    /// paused (a paused one is not due again for an hour: resuming goes
    /// through `monitor_changed`, which makes it due).
    fn judge(&self, monitor_id: &str, t: SystemTime) -> Option<Verdict> {
        let mut st = self.lock();
        let m = st.monitors.get(monitor_id).cloned()?;
        if m.paused {
            st.recheck
                .insert(m.id.clone(), t + Duration::from_secs(3600));
            return None;
        }
        let open = st.open.get(monitor_id).cloned();
        let (eval, _) = self.consensus_for(&st, &m, t);
        let action = step_flap(&mut st, &m, &eval, open.is_some(), t);
        let recheck = self.recheck_at(&st, &m, &eval, t);
        st.recheck.insert(m.id.clone(), recheck);
        let (changes, newly_down) = record_region_states(&mut st, &m, &eval);
        let confirm = if self.settings.fast_confirmation
            && newly_down
            && open.is_none()
            && eval.decision == Decision::Stay
        {
            confirmers(&mut st, &m, &eval)
        } else {
            Vec::new()
        };
        Some(Verdict {
            monitor: m,
            eval,
            open,
            changes,
            confirm,
            action,
        })
    }

    /// One event per region whose state changed, with its latest result.
    fn announce_region_changes(&self, monitor: &v1::Monitor, changes: Vec<RegionChange>) {
        for RegionChange { region, from, to } in changes {
            let latest = self
                .lock()
                .latest
                .get(&(monitor.id.clone(), region.clone()))
                .cloned();
            self.emit(event(v1::event::Kind::RegionState(
                v1::RegionStateChanged {
                    monitor_id: monitor.id.clone(),
                    region,
                    from: from.map_or(v1::RegionState::Unspecified, |p| wire_state(&p)) as i32,
                    to: wire_state(&to) as i32,
                    outcome: latest.as_ref().map_or(0, |r| r.outcome),
                    detail: latest.map(|r| r.detail).unwrap_or_default(),
                },
            )));
        }
    }

    /// Asks the agents `judge` chose to check `monitor` now (counted as one
    /// confirmation, however many regions are asked).
    fn ask_to_confirm(&self, monitor: &v1::Monitor, confirm: Vec<AgentTx>) {
        if confirm.is_empty() {
            return;
        }
        self.count(|c| c.confirmations += 1);
        for tx in confirm {
            let _ = tx.send(v1::CoordinatorMessage {
                msg: Some(v1::coordinator_message::Msg::CheckNow(v1::CheckNow {
                    monitor_ids: vec![monitor.id.clone()],
                    reason: "confirm: another region reports the port down".into(),
                })),
            });
        }
    }

    /// The incident transition the flap rule and the consensus rule agree on,
    /// given the incident open when the verdict was taken: open one (none was
    /// open), close it, or hold it open while it flaps. Anything else changes
    /// no incident. Each transition re-checks under the transitions lock that
    /// the incident is still the one judged.
    async fn carry_out(
        &self,
        monitor: &v1::Monitor,
        eval: &consensus::Evaluation,
        open: Option<v1::Incident>,
        action: Action,
        t: SystemTime,
    ) -> Result<(), StoreError> {
        match (action, &eval.decision, open) {
            (Action::Open { flapping }, Decision::Open { reason, .. }, None) => {
                self.open_incident(monitor, eval, *reason, flapping, t)
                    .await?;
            }
            (Action::Close, Decision::Close { ignored }, Some(open))
                if self.recovered_enough(monitor, ignored) =>
            {
                self.close_incident(monitor, eval, ignored, &open.id, t)
                    .await?;
            }
            (Action::Hold { began }, _, Some(open)) => {
                self.hold_incident(monitor, &open.id, began, t).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether every region of `monitor` (but those `ignored`, offline past
    /// their grace) has had its last `recover_after` results up: that many
    /// all-up rounds. With the default (1) the consensus rule's "every region
    /// up" is already enough. Until then the incident stays open; each new
    /// result evaluates it again.
    fn recovered_enough(&self, monitor: &v1::Monitor, ignored: &[String]) -> bool {
        let rounds = monitor.recover_after.max(1);
        if rounds <= 1 {
            return true;
        }
        let st = self.lock();
        monitor
            .regions
            .iter()
            .filter(|r| !ignored.contains(r))
            .all(|r| {
                st.up_streak
                    .get(&(monitor.id.clone(), r.clone()))
                    .is_some_and(|n| *n >= rounds)
            })
    }

    pub(super) fn evidence(
        &self,
        m: &v1::Monitor,
        eval: &consensus::Evaluation,
    ) -> Vec<v1::RegionEvidence> {
        let st = self.lock();
        eval.regions
            .iter()
            .map(|v| {
                let latest = st.latest.get(&(m.id.clone(), v.region.clone()));
                let detail = match (&v.state, latest) {
                    (RegionState::Unknown(why), _) => why.text().to_string(),
                    (_, Some(r)) => r.detail.clone(),
                    (_, None) => String::new(),
                };
                v1::RegionEvidence {
                    region: v.region.clone(),
                    state: wire_state(&v.state) as i32,
                    outcome: latest.map_or(0, |r| r.outcome),
                    detail,
                    connect_us: latest.map_or(0, |r| r.connect_us),
                    checked_at: latest.and_then(|r| r.checked_at),
                    ignored_offline: v.ignored_offline,
                }
            })
            .collect()
    }

    /// The live status of a monitor.
    pub fn status(&self, m: &v1::Monitor) -> v1::MonitorStatus {
        let st = self.lock();
        let t = now();
        let open = st.open.get(&m.id);
        let (eval, online) = self.consensus_for(&st, m, t);
        let regions: Vec<v1::RegionStatus> = eval
            .regions
            .iter()
            .zip(online.iter())
            .map(|(v, online)| v1::RegionStatus {
                region: v.region.clone(),
                state: wire_state(&v.state) as i32,
                last_result: st.latest.get(&(m.id.clone(), v.region.clone())).cloned(),
                unknown_reason: match v.state {
                    RegionState::Unknown(why) => why.text().to_string(),
                    _ => String::new(),
                },
                agent_online: *online,
            })
            .collect();
        let overall = if m.paused {
            v1::OverallState::Paused
        } else if open.is_some() {
            v1::OverallState::Down
        } else if st.slow.contains_key(&m.id) {
            v1::OverallState::Degraded
        } else if eval.up == regions.len() && !regions.is_empty() {
            v1::OverallState::Up
        } else if eval.unknown == regions.len() {
            v1::OverallState::Unknown
        } else {
            v1::OverallState::Degraded
        };
        v1::MonitorStatus {
            monitor: Some(m.clone()),
            overall: overall as i32,
            regions,
            open_incident_id: open.map(|i| i.id.clone()).unwrap_or_default(),
            quorum: u32::try_from(eval.quorum).unwrap_or(u32::MAX),
            maintenance_window_id: crate::maintenance::covering(&st.windows, m, t)
                .map(|w| w.record.id.clone())
                .unwrap_or_default(),
        }
    }
}

/// What one evaluation of a monitor decided under the state lock, to be acted
/// on after it.
struct Verdict {
    monitor: v1::Monitor,
    eval: consensus::Evaluation,
    /// The incident open when the verdict was taken.
    open: Option<v1::Incident>,
    /// Regions whose state changed, for the event stream.
    changes: Vec<RegionChange>,
    /// The agents to ask to check the monitor now.
    confirm: Vec<AgentTx>,
    /// What the flap rule makes of the verdict.
    action: Action,
}

/// One region of a monitor whose state changed (`from` is None the first
/// time the region is evaluated).
struct RegionChange {
    region: String,
    from: Option<RegionState>,
    to: RegionState,
}

/// Moves the monitor's flap state one step on the verdict and returns what
/// the flap rule makes of it. It moves here, under the state lock, so
/// evaluations racing on one monitor each see the other's step; what must be
/// written is written later, under the transitions lock.
fn step_flap(
    st: &mut State,
    m: &v1::Monitor,
    eval: &consensus::Evaluation,
    open: bool,
    t: SystemTime,
) -> Action {
    let prev = st.flaps.get(&m.id).cloned().unwrap_or_default();
    let settings = flapping::Settings::of(m);
    let (flap, action) = flapping::step(&prev, &settings, Signal::of(eval), open, t);
    if flap == Flap::default() {
        st.flaps.remove(&m.id);
    } else {
        st.flaps.insert(m.id.clone(), flap);
    }
    action
}

/// Records each region's state of the verdict and returns those that changed
/// (as the wire tells them apart), and whether one of them turned down.
fn record_region_states(
    st: &mut State,
    m: &v1::Monitor,
    eval: &consensus::Evaluation,
) -> (Vec<RegionChange>, bool) {
    let mut changes = Vec::new();
    let mut newly_down = false;
    for v in &eval.regions {
        let key = (m.id.clone(), v.region.clone());
        let prev = st.region_state.insert(key, v.state);
        if prev.map(|p| wire_state(&p)) != Some(wire_state(&v.state)) {
            changes.push(RegionChange {
                region: v.region.clone(),
                from: prev,
                to: v.state,
            });
            if matches!(v.state, RegionState::Down(_)) {
                newly_down = true;
            }
        }
    }
    (changes, newly_down)
}

/// The agents that should confirm a region turning down: the monitor's
/// owner in every region not down, at most once per check interval of the
/// monitor, so a region that keeps turning down does not keep the others
/// checking.
fn confirmers(st: &mut State, m: &v1::Monitor, eval: &consensus::Evaluation) -> Vec<AgentTx> {
    let interval = Duration::from_millis(m.interval_ms);
    let due = st
        .last_confirm
        .get(&m.id)
        .is_none_or(|at| at.elapsed() >= interval);
    if !due {
        return Vec::new();
    }
    st.last_confirm.insert(m.id.clone(), Instant::now());
    eval.regions
        .iter()
        .filter(|v| !matches!(v.state, RegionState::Down(_)))
        .filter_map(|v| {
            st.sessions
                .get(&v.region)
                .and_then(|ss| ss.iter().find(|s| s.assigned.contains(&m.id)))
                .map(|s| s.tx.clone())
        })
        .collect()
}
