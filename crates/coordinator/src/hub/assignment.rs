//! Assignment: which agent checks which monitor in each region, and the agent
//! sessions it is computed from.
//!
//! Ownership is rendezvous hashing on the monitor id over a region's live
//! agents, so an agent leaving moves only its own monitors and an agent
//! arriving takes only its share. Every agent holds exactly what it owns:
//! a change of agents or regions recomputes the region (`sync_region`), a
//! change of one monitor touches only that monitor (`sync_monitor`), and each
//! agent is sent its difference. A private region only ever gets its owner
//! tenant's monitors (`eligible`). Any change here makes the monitors
//! concerned due for evaluation at the next tick, since a region's agents
//! decide whether its silence counts.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime};

use portwatch_proto::time::{from_timestamp, to_timestamp};
use portwatch_proto::v1;
use tracing::{info, warn};

use super::{AgentTx, Hub, Session, State, event, now};

/// A stable 64-bit mix of two strings (FNV-1a then a finalizer), for rendezvous hashing.
fn weight(agent: &str, monitor: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in agent.bytes().chain([0u8]).chain(monitor.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The agent (index into `agents`) that owns `monitor` in a region.
pub fn rendezvous<'a>(agents: impl IntoIterator<Item = &'a str>, monitor: &str) -> Option<&'a str> {
    agents.into_iter().max_by_key(|a| (weight(a, monitor), *a))
}

fn eligible(m: &v1::Monitor, region: &v1::Region) -> bool {
    !m.paused
        && m.regions.contains(&region.name)
        && (region.owner_tenant_id.is_empty() || region.owner_tenant_id == m.tenant_id)
}

fn assignment(m: &v1::Monitor) -> v1::Assignment {
    v1::Assignment {
        monitor_id: m.id.clone(),
        spec: Some(v1::CheckSpec {
            host: m.host.clone(),
            port: m.port,
            timeout_ms: m.timeout_ms,
            family: m.family,
            address_policy: m.address_policy,
            close_mode: m.close_mode,
        }),
        interval_ms: m.interval_ms,
        generation: m.generation,
    }
}

fn update(
    upserts: Vec<v1::Assignment>,
    removals: Vec<String>,
    revision: u64,
) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage {
        msg: Some(v1::coordinator_message::Msg::Update(v1::AssignmentUpdate {
            upserts,
            removals,
            revision,
        })),
    }
}

/// `sent` minus `received`, in milliseconds (negative: the agent's clock is behind).
fn clock_offset_ms(sent: SystemTime, received: SystemTime) -> i64 {
    match sent.duration_since(received) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

impl Hub {
    // ------------------------------------------------------------ monitors and regions

    /// A monitor was created or changed (already stored): push it to the agents.
    pub fn monitor_changed(&self, m: v1::Monitor) {
        let id = m.id.clone();
        let mut st = self.lock();
        let mut regions: HashSet<String> = m.regions.iter().cloned().collect();
        if let Some(old) = st.monitors.insert(id.clone(), m) {
            regions.extend(old.regions);
        }
        for r in regions {
            Self::sync_monitor(&mut st, &r, &id);
        }
    }

    /// A monitor is gone from the store: forget it here and take it from its
    /// agents. `delete_monitor` is the way to delete one.
    pub fn monitor_removed(&self, id: &str) {
        let mut st = self.lock();
        if let Some(old) = st.monitors.remove(id) {
            for r in &old.regions {
                Self::sync_monitor(&mut st, r, id);
            }
        }
        st.latest.retain(|(m, _), _| m != id);
        st.last_decisive.retain(|(m, _), _| m != id);
        st.up_streak.retain(|(m, _), _| m != id);
        st.speed.retain(|(m, _), _| m != id);
        st.slow.remove(id);
        st.region_state.retain(|(m, _), _| m != id);
        st.open.remove(id);
        st.flaps.remove(id);
    }

    /// A region was created or deleted (already in the store).
    pub fn region_changed(&self, r: Option<v1::Region>, name: &str) {
        let mut st = self.lock();
        match r {
            Some(r) => {
                st.offline_since.entry(name.to_string()).or_insert_with(now);
                st.regions.insert(name.to_string(), r);
            }
            None => {
                st.regions.remove(name);
                st.offline_since.remove(name);
            }
        }
        Self::sync_region(&mut st, name);
    }

    /// Number of live agents in a region and since when it has had none.
    pub fn region_liveness(&self, name: &str) -> (u32, Option<SystemTime>) {
        let st = self.lock();
        let online = st.sessions.get(name).map_or(0, Vec::len);
        let since = if online == 0 {
            st.offline_since.get(name).copied()
        } else {
            None
        };
        (u32::try_from(online).unwrap_or(u32::MAX), since)
    }

    /// One monitor of `region` was created, changed or removed (already in, or
    /// gone from, `st.monitors`): sends it to its owner there (again, changed or
    /// not) and its removal to any other agent there that had it.
    ///
    /// What `sync_region` would send for this monitor, but touching nothing
    /// else, so its cost does not grow with the monitors the coordinator holds:
    /// a monitor's owner depends only on its id and the region's agents, and
    /// every change of agents or regions goes through `sync_region`, so no other
    /// monitor's assignment can be out of date. Other monitors' verdicts do not
    /// depend on this one, so only its own re-evaluation is due.
    pub(super) fn sync_monitor(st: &mut State, region: &str, id: &str) {
        st.recheck.remove(id);
        let State {
            monitors,
            regions,
            sessions,
            revision,
            ..
        } = st;
        let Some(sessions) = sessions.get_mut(region) else {
            return;
        };
        let wanted = monitors
            .get(id)
            .filter(|m| regions.get(region).is_some_and(|reg| eligible(m, reg)));
        let owner = wanted
            .and_then(|_| rendezvous(sessions.iter().map(|s| s.agent_id.as_str()), id))
            .map(str::to_string);
        for s in sessions.iter_mut() {
            let (upserts, removals) = match wanted {
                Some(m) if owner.as_deref() == Some(s.agent_id.as_str()) => {
                    s.assigned.insert(id.to_string());
                    (vec![assignment(m)], Vec::new())
                }
                _ if s.assigned.remove(id) => (Vec::new(), vec![id.to_string()]),
                _ => continue,
            };
            *revision += 1;
            s.info.assignments = u32::try_from(s.assigned.len()).unwrap_or(u32::MAX);
            let _ = s.tx.send(update(upserts, removals, *revision));
        }
    }

    /// Recomputes which agent of `region` owns which monitor and sends each agent
    /// its difference. Walks every monitor: for changes of agents and regions;
    /// a change of one monitor goes through `sync_monitor`.
    pub(super) fn sync_region(st: &mut State, region: &str) {
        // This region's agents or monitors changed: its monitors' verdicts may
        // change without a new result, so they are evaluated at the next tick.
        let touched: Vec<String> = st
            .monitors
            .values()
            .filter(|m| m.regions.iter().any(|r| r == region))
            .map(|m| m.id.clone())
            .collect();
        for id in touched {
            st.recheck.remove(&id);
        }
        let Some(reg) = st.regions.get(region).cloned() else {
            // A deleted region: its agents lose everything.
            if let Some(sessions) = st.sessions.get_mut(region) {
                for s in sessions.iter_mut() {
                    let removals: Vec<String> = s.assigned.drain().collect();
                    if !removals.is_empty() {
                        st.revision += 1;
                        let _ = s.tx.send(update(Vec::new(), removals, st.revision));
                    }
                }
            }
            return;
        };
        let Some(sessions) = st.sessions.get(region) else {
            return;
        };
        let agents: Vec<String> = sessions.iter().map(|s| s.agent_id.clone()).collect();
        let mut desired: HashMap<&str, Vec<&v1::Monitor>> = HashMap::new();
        for m in st.monitors.values().filter(|m| eligible(m, &reg)) {
            if let Some(owner) = rendezvous(agents.iter().map(String::as_str), &m.id) {
                desired.entry(owner).or_default().push(m);
            }
        }
        let mut messages = Vec::new();
        for (i, s) in sessions.iter().enumerate() {
            let want: HashMap<&str, &v1::Monitor> = desired
                .get(s.agent_id.as_str())
                .map(|ms| ms.iter().map(|m| (m.id.as_str(), *m)).collect())
                .unwrap_or_default();
            let upserts: Vec<v1::Assignment> = want
                .iter()
                .filter(|(id, _)| !s.assigned.contains(**id))
                .map(|(_, m)| assignment(m))
                .collect();
            let removals: Vec<String> = s
                .assigned
                .iter()
                .filter(|id| !want.contains_key(id.as_str()))
                .cloned()
                .collect();
            let now_assigned: HashSet<String> = want.keys().map(|k| k.to_string()).collect();
            messages.push((i, upserts, removals, now_assigned));
        }
        for (i, upserts, removals, now_assigned) in messages {
            if upserts.is_empty() && removals.is_empty() {
                continue;
            }
            st.revision += 1;
            let rev = st.revision;
            if let Some(s) = st.sessions.get_mut(region).and_then(|v| v.get_mut(i)) {
                s.info.assignments = u32::try_from(now_assigned.len()).unwrap_or(u32::MAX);
                s.assigned = now_assigned;
                let _ = s.tx.send(update(upserts, removals, rev));
            }
        }
    }

    // ------------------------------------------------------------ agents

    /// Registers a connected agent; sends it the full snapshot. Returns the session id.
    pub fn agent_connected(&self, region: &str, mut info: v1::Agent, tx: AgentTx) -> u64 {
        let mut st = self.lock();
        st.next_session += 1;
        let session = st.next_session;
        info.online = true;
        info.region = region.to_string();
        let agent_id = info.agent_id.clone();
        // A reconnect of the same agent replaces its old session.
        if let Some(v) = st.sessions.get_mut(region) {
            v.retain(|s| s.agent_id != agent_id);
        }
        let was_offline = st.sessions.get(region).is_none_or(Vec::is_empty);
        st.sessions
            .entry(region.to_string())
            .or_default()
            .push(Session {
                agent_id: agent_id.clone(),
                session,
                tx: tx.clone(),
                assigned: HashSet::new(),
                last_seen: Instant::now(),
                info,
                skew_warned: false,
            });
        // The snapshot first, then the others' removals: a monitor may briefly be
        // checked twice, never not at all.
        let reg = st.regions.get(region).cloned();
        let snapshot: Vec<v1::Assignment> = match &reg {
            Some(reg) => {
                let agents: Vec<String> = st
                    .sessions
                    .get(region)
                    .map(|v| v.iter().map(|s| s.agent_id.clone()).collect())
                    .unwrap_or_default();
                st.monitors
                    .values()
                    .filter(|m| eligible(m, reg))
                    .filter(|m| {
                        rendezvous(agents.iter().map(String::as_str), &m.id)
                            == Some(agent_id.as_str())
                    })
                    .map(assignment)
                    .collect()
            }
            None => Vec::new(),
        };
        st.revision += 1;
        let rev = st.revision;
        if let Some(s) = st
            .sessions
            .get_mut(region)
            .and_then(|v| v.iter_mut().find(|s| s.session == session))
        {
            s.assigned = snapshot.iter().map(|a| a.monitor_id.clone()).collect();
            s.info.assignments = u32::try_from(s.assigned.len()).unwrap_or(u32::MAX);
        }
        let _ = tx.send(v1::CoordinatorMessage {
            msg: Some(v1::coordinator_message::Msg::Snapshot(
                v1::AssignmentSnapshot {
                    assignments: snapshot,
                    revision: rev,
                },
            )),
        });
        Self::sync_region(&mut st, region);
        if was_offline {
            st.offline_since.remove(region);
            drop(st);
            info!(region, "probe region online");
            self.emit(event(v1::event::Kind::ProbeRegion(
                v1::ProbeRegionChanged {
                    region: region.to_string(),
                    online: true,
                },
            )));
        }
        session
    }

    /// Unregisters a session (stream closed or heartbeat timeout); its monitors
    /// move to the region's other agents.
    pub fn agent_disconnected(&self, region: &str, session: u64) {
        let mut st = self.lock();
        let Some(v) = st.sessions.get_mut(region) else {
            return;
        };
        let before = v.len();
        v.retain(|s| s.session != session);
        if v.len() == before {
            return;
        }
        let now_empty = v.is_empty();
        Self::sync_region(&mut st, region);
        if now_empty {
            st.sessions.remove(region);
            st.offline_since.insert(region.to_string(), now());
            drop(st);
            warn!(region, "probe region has no live agent");
            self.emit(event(v1::event::Kind::ProbeRegion(
                v1::ProbeRegionChanged {
                    region: region.to_string(),
                    online: false,
                },
            )));
        }
    }

    /// Records a heartbeat (or any message) from a session. A heartbeat also
    /// tells the agent's clock offset (its `sent_at` against our clock; transit
    /// time is not subtracted, so the offset is at most that much too high),
    /// warned about once it reaches half the clock-skew allowance.
    pub fn agent_seen(&self, region: &str, session: u64, hb: Option<&v1::Heartbeat>) {
        let t = now();
        let mut st = self.lock();
        if let Some(s) = st
            .sessions
            .get_mut(region)
            .and_then(|v| v.iter_mut().find(|s| s.session == session))
        {
            s.last_seen = Instant::now();
            s.info.last_seen = Some(to_timestamp(t));
            if let Some(hb) = hb {
                s.info.spool_depth = hb.spool_depth;
                s.info.dropped_total = hb.dropped_total;
                if let Some(sent) = hb.sent_at.as_ref().and_then(from_timestamp) {
                    let offset_ms = clock_offset_ms(sent, t);
                    s.info.clock_offset_ms = offset_ms;
                    metrics::gauge!("portwatch_agent_clock_offset_seconds", "region" => region.to_string(), "agent" => s.agent_id.clone())
                        .set(offset_ms as f64 / 1000.0);
                    let warn_at = self.settings.clock_skew_allowance / 2;
                    let large = u128::from(offset_ms.unsigned_abs()) > warn_at.as_millis();
                    if large && !s.skew_warned {
                        warn!(region, agent_id = %s.agent_id, offset_ms, allowance_ms = self.settings.clock_skew_allowance.as_millis() as u64,
                            "agent clock is off; results stamped beyond the clock-skew allowance are refused");
                    }
                    s.skew_warned = large;
                }
                // Agent-supplied text: bounded before it is kept and shown.
                s.info.spool_error = hb.spool_error.chars().take(512).collect();
                s.info.unstored_total = hb.unstored_total;
                s.info.loop_errors_total = hb.loop_errors_total;
            }
        }
    }

    /// Asks every connected agent to drain: finish, flush, close, reconnect later.
    pub fn drain_all(&self, reason: &str) {
        let st = self.lock();
        for s in st.sessions.values().flatten() {
            let _ = s.tx.send(v1::CoordinatorMessage {
                msg: Some(v1::coordinator_message::Msg::Drain(v1::Drain {
                    reason: reason.to_string(),
                    reconnect_after_ms: 1000,
                })),
            });
        }
    }

    /// Whether a session is still registered.
    pub fn session_alive(&self, region: &str, session: u64) -> bool {
        let st = self.lock();
        st.sessions
            .get(region)
            .is_some_and(|v| v.iter().any(|s| s.session == session))
    }

    /// A batch of one session was stored: its acknowledged sequence number and
    /// how many of its results were refused.
    pub fn batch_stored(&self, region: &str, session: u64, acked_seq: u64, refused: u64) {
        self.count(|c| c.refused_results += refused);
        let mut st = self.lock();
        if let Some(s) = st
            .sessions
            .get_mut(region)
            .and_then(|v| v.iter_mut().find(|s| s.session == session))
        {
            s.info.acked_seq = s.info.acked_seq.max(acked_seq);
            s.info.refused_results = s.info.refused_results.saturating_add(refused);
        }
    }

    /// Sessions silent for longer than the heartbeat timeout.
    pub fn expired_sessions(&self) -> Vec<(String, u64)> {
        let st = self.lock();
        let limit = self.settings.heartbeat_timeout;
        st.sessions
            .iter()
            .flat_map(|(r, v)| {
                v.iter()
                    .filter(|s| s.last_seen.elapsed() > limit)
                    .map(move |s| (r.clone(), s.session))
            })
            .collect()
    }

    /// Whether `monitor` is currently assigned to this session.
    pub fn is_assigned(&self, region: &str, session: u64, monitor: &str) -> bool {
        let st = self.lock();
        st.sessions
            .get(region)
            .and_then(|v| v.iter().find(|s| s.session == session))
            .is_some_and(|s| s.assigned.contains(monitor))
    }

    /// Whether `monitor` exists and is checked from `region` (assigned there at all).
    pub fn monitored_in(&self, monitor: &str, region: &str) -> bool {
        self.monitor_created_in(monitor, region).is_some()
    }

    /// When `monitor` was created, provided it exists and is checked from
    /// `region` (the epoch for a monitor stored without a creation time).
    pub fn monitor_created_in(&self, monitor: &str, region: &str) -> Option<SystemTime> {
        let st = self.lock();
        match (st.monitors.get(monitor), st.regions.get(region)) {
            (Some(m), Some(r)) if eligible(m, r) => Some(
                m.created_at
                    .as_ref()
                    .and_then(from_timestamp)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            ),
            _ => None,
        }
    }

    /// Live agents (online) plus the stored ones that are offline.
    pub fn live_agents(&self) -> Vec<v1::Agent> {
        let st = self.lock();
        st.sessions
            .values()
            .flatten()
            .map(|s| s.info.clone())
            .collect()
    }

    /// Regions whose agents are connected, with counts (for metrics).
    pub fn agents_per_region(&self) -> Vec<(String, usize)> {
        let st = self.lock();
        st.regions
            .keys()
            .map(|r| (r.clone(), st.sessions.get(r).map_or(0, Vec::len)))
            .collect()
    }
}
