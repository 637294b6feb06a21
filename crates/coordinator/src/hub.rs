//! The coordinator's live state: monitors, connected agents, latest results,
//! open incidents, and the decisions that tie them together.
//!
//! Everything durable goes through `Store` first; this is the in-memory view
//! rebuilt from it at start. Invariants enforced here:
//! - a monitor is assigned to exactly one live agent per monitored region
//!   (rendezvous hashing on the monitor id), and a private region only ever gets
//!   its owner tenant's monitors;
//! - consensus runs on every result that becomes a region's latest, and on a
//!   timer so that results going stale are noticed without new traffic;
//! - at most one open incident per monitor, written and flushed before it is
//!   announced; incident transitions are serialised, so two evaluations racing
//!   cannot open (or close) the same incident twice;
//! - an incident that opens or closes is written in one transaction with the
//!   deliveries it causes (`outbox::plan_incident`), flushed, and only then is
//!   the outbox worker woken: ingestion never waits on a notification send;
//! - a flapping monitor (`flapping`) gets one "flapping" notice per incident,
//!   written with the incident's flap state in one transaction, and its
//!   incident is held open until every region has been up for its stability
//!   time; the flap state of open incidents survives a restart, and a restart
//!   starts the stability clock again (the coordinator's downtime is not
//!   stability anybody saw);
//! - a probe region without a live agent for `region_offline_grace` gets one
//!   offline notice (operator channels), recorded durably with it, and one
//!   "back online" notice only after that offline notice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use portwatch_check::Outcome;
use portwatch_proto::convert::OutcomeFromWire;
use portwatch_proto::time::{from_timestamp, to_timestamp};
use portwatch_proto::v1;
use tokio::sync::{Notify, broadcast, mpsc};
use tracing::{info, warn};

use crate::consensus::{self, Decision, Observation, Policy, RegionInput, RegionState, Rules};
use crate::flapping::{self, Action, Flap, Signal};
use crate::outbox;
use crate::store::{RegionOutage, Store, StoreError};
use incidents::restored_flap;

/// Messages queued for one agent's stream.
pub type AgentTx = mpsc::UnboundedSender<v1::CoordinatorMessage>;

/// Settings the hub needs from the coordinator's config.
#[derive(Clone, Debug)]
pub struct HubSettings {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub offline_grace: Duration,
    /// A region with no live agent this long gets one "Probe region offline" notice.
    pub region_offline_grace: Duration,
    /// Ask the other regions to check now when one turns down (the config's
    /// `fast_confirmation`). Off: they confirm at their next scheduled check.
    pub fast_confirmation: bool,
    /// How far ahead of our clock (or before its monitor existed) a result may
    /// be stamped and still be accepted; also where an agent's clock offset
    /// starts being warned about (at half of it).
    pub clock_skew_allowance: Duration,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            offline_grace: consensus::Rules::DEFAULT_OFFLINE_GRACE,
            region_offline_grace: Duration::from_secs(600),
            fast_confirmation: true,
            clock_skew_allowance: Duration::from_secs(10),
        }
    }
}

/// One connected agent.
struct Session {
    agent_id: String,
    session: u64,
    tx: AgentTx,
    assigned: HashSet<String>,
    last_seen: Instant,
    info: v1::Agent,
    /// A warning about this agent's clock offset was logged and the offset has
    /// stayed large since (one warning per episode, not one per heartbeat).
    skew_warned: bool,
}

type Key = (String, String); // (monitor id, region)

#[derive(Default)]
struct State {
    monitors: HashMap<String, v1::Monitor>,
    regions: HashMap<String, v1::Region>,
    sessions: HashMap<String, Vec<Session>>,
    offline_since: HashMap<String, SystemTime>,
    latest: HashMap<Key, v1::CheckResult>,
    last_decisive: HashMap<Key, SystemTime>,
    region_state: HashMap<Key, RegionState>,
    open: HashMap<String, v1::Incident>,
    last_confirm: HashMap<String, Instant>,
    /// When each monitor's verdict may next change without a new result (a result
    /// going stale, an offline grace ending). Absent = evaluate at the next tick.
    recheck: HashMap<String, SystemTime>,
    /// Regions whose operator was told they are offline (mirrors the store).
    outages: HashMap<String, RegionOutage>,
    /// Flap state per monitor (absent = nothing recent); for monitors with an
    /// open incident, mirrored into the incident when it is written.
    flaps: HashMap<String, Flap>,
    next_session: u64,
    revision: u64,
}

/// Counters for `/metrics` and tests.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct HubCounters {
    pub refused_results: u64,
    pub evaluations: u64,
    pub confirmations: u64,
}

/// The shared coordinator state.
pub struct Hub {
    store: Store,
    settings: HubSettings,
    state: Mutex<State>,
    events: broadcast::Sender<v1::Event>,
    counters: Mutex<HubCounters>,
    started: SystemTime,
    /// Wakes the outbox worker after deliveries were made durable.
    outbox_wake: Arc<Notify>,
    /// Held across an incident's (or region outage's) decide-write-flush, so a
    /// transition is decided against the state the previous one left.
    transitions: tokio::sync::Mutex<()>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn event(kind: v1::event::Kind) -> v1::Event {
    v1::Event {
        at: Some(to_timestamp(now())),
        kind: Some(kind),
    }
}

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

/// `sent` minus `received`, in milliseconds (negative: the agent's clock is behind).
fn clock_offset_ms(sent: SystemTime, received: SystemTime) -> i64 {
    match sent.duration_since(received) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn outcome_of(r: &v1::CheckResult) -> Option<Outcome> {
    Outcome::from_wire(r.outcome, "outcome").ok()
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

/// A new id: a prefix, the creation time (so ids sort by age), and randomness.
pub fn new_id(prefix: &str) -> String {
    let micros = portwatch_proto::time::unix_micros(now());
    format!(
        "{prefix}-{micros:013x}{:06x}",
        rand::random::<u32>() & 0xff_ffff
    )
}

impl Hub {
    /// Loads the live state from the store.
    pub fn load(store: Store, settings: HubSettings) -> Result<Arc<Hub>, StoreError> {
        let mut state = State::default();
        for m in store.list_monitors()? {
            state.monitors.insert(m.id.clone(), m);
        }
        let started = now();
        for r in store.list_regions()? {
            // Every region starts with no live agent; the grace period counts from now.
            state.offline_since.insert(r.name.clone(), started);
            state.regions.insert(r.name.clone(), r);
        }
        for r in store.all_latest()? {
            let key = (r.monitor_id.clone(), r.region.clone());
            if let (Some(o), Some(at)) = (
                outcome_of(&r),
                r.checked_at.as_ref().and_then(from_timestamp),
            ) && (o == Outcome::Ok || o.is_target_failure())
            {
                state.last_decisive.insert(key.clone(), at);
            }
            state.latest.insert(key, r);
        }
        for m in state.monitors.keys() {
            if let Some(i) = store.open_incident(m)? {
                state.open.insert(m.clone(), i);
            }
        }
        for (m, i) in &state.open {
            let flap = restored_flap(i, started);
            if flap != Flap::default() {
                state.flaps.insert(m.clone(), flap);
            }
        }
        for o in store.region_outages()? {
            state.outages.insert(o.region.clone(), o);
        }
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Hub {
            store,
            settings,
            state: Mutex::new(state),
            events,
            counters: Mutex::new(HubCounters::default()),
            started,
            outbox_wake: Arc::new(Notify::new()),
            transitions: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// What the outbox worker waits on between rounds.
    pub fn outbox_wake(&self) -> Arc<Notify> {
        self.outbox_wake.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counters(&self) -> HubCounters {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, f: impl FnOnce(&mut HubCounters)) {
        f(&mut self.counters.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Subscribes to the live event stream.
    pub fn subscribe(&self) -> broadcast::Receiver<v1::Event> {
        self.events.subscribe()
    }

    fn emit(&self, e: v1::Event) {
        // No subscriber is fine.
        let _ = self.events.send(e);
    }

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

    /// Deletes a monitor: durably, with its open incident closed in the same
    /// transaction (without a "reachable again" notice: nobody checks the port
    /// any more, and it must not stay open forever), then from the live state.
    /// Held under the transitions lock, so no evaluation opens or closes an
    /// incident for it in between. Returns whether it existed.
    pub async fn delete_monitor(&self, id: &str) -> Result<bool, StoreError> {
        let _transition = self.transitions.lock().await;
        let closing = self.lock().open.get(id).cloned().map(|mut incident| {
            incident.closed_at = Some(to_timestamp(now()));
            incident
        });
        let existed = self.store.delete_monitor_closing(id, closing.as_ref())?;
        self.store.flush().await?;
        self.monitor_removed(id);
        if let Some(incident) = closing {
            info!(monitor_id = %id, incident_id = %incident.id, "incident closed: monitor deleted");
        }
        Ok(existed)
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
    fn sync_monitor(st: &mut State, region: &str, id: &str) {
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
    fn sync_region(st: &mut State, region: &str) {
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

    // ------------------------------------------------------------ results and consensus

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
                        outcome: outcome_of(res)?,
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

    /// Evaluates one monitor and acts on the decision.
    pub async fn evaluate(&self, monitor_id: &str) -> Result<(), StoreError> {
        self.count(|c| c.evaluations += 1);
        let t = now();
        let (monitor, eval, open, changes, confirm, action) = {
            let mut st = self.lock();
            let Some(m) = st.monitors.get(monitor_id).cloned() else {
                return Ok(());
            };
            if m.paused {
                // Resuming goes through `monitor_changed`, which makes it due again.
                st.recheck
                    .insert(m.id.clone(), t + Duration::from_secs(3600));
                return Ok(());
            }
            let open = st.open.get(monitor_id).cloned();
            let (eval, _) = self.consensus_for(&st, &m, t);
            // The flap state moves here, under the state lock, so evaluations
            // racing on one monitor each see the other's step; what must be
            // written is written below under the transitions lock.
            let prev = st.flaps.get(monitor_id).cloned().unwrap_or_default();
            let settings = flapping::Settings::of(&m);
            let (flap, action) =
                flapping::step(&prev, &settings, Signal::of(&eval), open.is_some(), t);
            if flap == Flap::default() {
                st.flaps.remove(monitor_id);
            } else {
                st.flaps.insert(m.id.clone(), flap);
            }
            let recheck = self.recheck_at(&st, &m, &eval, t);
            st.recheck.insert(m.id.clone(), recheck);
            // Region state changes, for the event stream and fast confirmation.
            let mut changes = Vec::new();
            let mut newly_down = false;
            for v in &eval.regions {
                let key = (m.id.clone(), v.region.clone());
                let prev = st.region_state.insert(key, v.state);
                if prev.map(|p| wire_state(&p)) != Some(wire_state(&v.state)) {
                    changes.push((v.region.clone(), prev, v.state));
                    if matches!(v.state, RegionState::Down(_)) {
                        newly_down = true;
                    }
                }
            }
            let mut confirm = Vec::new();
            if self.settings.fast_confirmation
                && newly_down
                && open.is_none()
                && eval.decision == Decision::Stay
            {
                let interval = Duration::from_millis(m.interval_ms);
                let due = st
                    .last_confirm
                    .get(&m.id)
                    .is_none_or(|at| at.elapsed() >= interval);
                if due {
                    st.last_confirm.insert(m.id.clone(), Instant::now());
                    for v in eval
                        .regions
                        .iter()
                        .filter(|v| !matches!(v.state, RegionState::Down(_)))
                    {
                        if let Some(s) = st
                            .sessions
                            .get(&v.region)
                            .and_then(|ss| ss.iter().find(|s| s.assigned.contains(&m.id)))
                        {
                            confirm.push(s.tx.clone());
                        }
                    }
                }
            }
            (m, eval, open, changes, confirm, action)
        };
        for (region, prev, to) in changes {
            let latest = self
                .lock()
                .latest
                .get(&(monitor.id.clone(), region.clone()))
                .cloned();
            self.emit(event(v1::event::Kind::RegionState(
                v1::RegionStateChanged {
                    monitor_id: monitor.id.clone(),
                    region,
                    from: prev.map_or(v1::RegionState::Unspecified, |p| wire_state(&p)) as i32,
                    to: wire_state(&to) as i32,
                    outcome: latest.as_ref().map_or(0, |r| r.outcome),
                    detail: latest.map(|r| r.detail).unwrap_or_default(),
                },
            )));
        }
        if !confirm.is_empty() {
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
        match (action, &eval.decision, open) {
            (Action::Open { flapping }, Decision::Open { reason, .. }, None) => {
                self.open_incident(&monitor, &eval, *reason, flapping, t)
                    .await?;
            }
            (Action::Close, Decision::Close { ignored }, Some(open)) => {
                self.close_incident(&monitor, &eval, ignored, &open.id, t)
                    .await?;
            }
            (Action::Hold { began }, _, Some(open)) => {
                self.hold_incident(&monitor, &open.id, began, t).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Probe-region notices (called from the maintenance loop): a region with no
    /// live agent for `region_offline_grace` and no notice yet gets one offline
    /// notice on every operator channel; a region with such a notice whose agent
    /// is back gets one "back online" notice. Each change is written with its
    /// deliveries in one transaction, so a restart neither repeats nor loses one.
    pub async fn region_notices(&self) -> Result<(), StoreError> {
        let _transition = self.transitions.lock().await;
        let t = now();
        let grace = self.settings.region_offline_grace;
        let (went_offline, came_back, deleted) = {
            let st = self.lock();
            let live = |r: &str| st.sessions.get(r).is_some_and(|v| !v.is_empty());
            let went_offline: Vec<(String, SystemTime)> = st
                .regions
                .keys()
                .filter(|r| !live(r) && !st.outages.contains_key(*r))
                .filter_map(|r| {
                    let since = *st.offline_since.get(r)?;
                    (t.duration_since(since).unwrap_or_default() >= grace)
                        .then(|| (r.clone(), since))
                })
                .collect();
            let came_back: Vec<RegionOutage> = st
                .outages
                .values()
                .filter(|o| st.regions.contains_key(&o.region) && live(&o.region))
                .cloned()
                .collect();
            let deleted: Vec<String> = st
                .outages
                .keys()
                .filter(|r| !st.regions.contains_key(*r))
                .cloned()
                .collect();
            (went_offline, came_back, deleted)
        };
        if went_offline.is_empty() && came_back.is_empty() && deleted.is_empty() {
            return Ok(());
        }
        let channels = self.store.list_channels()?;
        let mut planned = 0;
        for (region, since) in went_offline {
            let mut outage = RegionOutage {
                id: new_id("out"),
                region: region.clone(),
                offline_since: Some(to_timestamp(since)),
                noticed_at: Some(to_timestamp(t)),
                online_at: None,
                channel_ids: Vec::new(),
            };
            let deliveries =
                outbox::plan_region(&channels, &outage, v1::DeliveryKind::RegionOffline, t);
            outage.channel_ids = deliveries
                .iter()
                .filter_map(|r| r.delivery.as_ref().map(|d| d.channel_id.clone()))
                .collect();
            self.store
                .put_outage_with_deliveries(&region, Some(&outage), &deliveries)?;
            planned += deliveries.len();
            warn!(%region, outage_id = %outage.id, deliveries = deliveries.len(), "probe region offline past the grace period; operator notified");
            self.lock().outages.insert(region, outage);
        }
        for mut outage in came_back {
            outage.online_at = Some(to_timestamp(t));
            let deliveries =
                outbox::plan_region(&channels, &outage, v1::DeliveryKind::RegionOnline, t);
            self.store
                .put_outage_with_deliveries(&outage.region, None, &deliveries)?;
            planned += deliveries.len();
            info!(region = %outage.region, outage_id = %outage.id, deliveries = deliveries.len(), "probe region back online; operator notified");
            self.lock().outages.remove(&outage.region);
        }
        for region in deleted {
            self.store.put_outage_with_deliveries(&region, None, &[])?;
            self.lock().outages.remove(&region);
        }
        self.store.flush().await?;
        outbox::count_planned(planned);
        if planned > 0 {
            self.outbox_wake.notify_one();
        }
        Ok(())
    }

    fn evidence(&self, m: &v1::Monitor, eval: &consensus::Evaluation) -> Vec<v1::RegionEvidence> {
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
        }
    }

    /// When the coordinator started (regions count as offline from here).
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Regions whose agents are connected, with counts (for metrics).
    pub fn agents_per_region(&self) -> Vec<(String, usize)> {
        let st = self.lock();
        st.regions
            .keys()
            .map(|r| (r.clone(), st.sessions.get(r).map_or(0, Vec::len)))
            .collect()
    }

    pub fn open_incident_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Re-reads what this view mirrors from the store, after the store was
    /// reopened (`Store::try_reopen`): a write that failed may have reached the
    /// disk after all, and one the view already holds is there only if it was
    /// flushed. The store is the truth: monitors, regions, open incidents and
    /// region outages are taken from it; its latest results are merged in (the
    /// view only ever held flushed ones). Agents get what changed for them, and
    /// every monitor is evaluated at the next tick. Sessions are kept.
    pub async fn reload(&self) -> Result<(), StoreError> {
        // No incident or outage transition runs half on the old view.
        let _transition = self.transitions.lock().await;
        let monitors: HashMap<String, v1::Monitor> = self
            .store
            .list_monitors()?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let regions: HashMap<String, v1::Region> = self
            .store
            .list_regions()?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let latest = self.store.all_latest()?;
        let mut open = HashMap::new();
        for id in monitors.keys() {
            if let Some(i) = self.store.open_incident(id)? {
                open.insert(id.clone(), i);
            }
        }
        let outages: HashMap<String, RegionOutage> = self
            .store
            .region_outages()?
            .into_iter()
            .map(|o| (o.region.clone(), o))
            .collect();

        let mut st = self.lock();
        let changed_monitors: Vec<(String, HashSet<String>)> = monitors
            .keys()
            .chain(st.monitors.keys())
            .filter(|id| monitors.get(*id) != st.monitors.get(*id))
            .map(|id| {
                let regions = [monitors.get(id), st.monitors.get(id)]
                    .into_iter()
                    .flatten()
                    .flat_map(|m| m.regions.iter().cloned())
                    .collect();
                (id.clone(), regions)
            })
            .collect();
        let changed_regions: Vec<String> = regions
            .keys()
            .chain(st.regions.keys())
            .filter(|r| regions.get(*r) != st.regions.get(*r))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        st.monitors = monitors;
        for r in regions.keys() {
            st.offline_since.entry(r.clone()).or_insert_with(now);
        }
        st.offline_since.retain(|r, _| regions.contains_key(r));
        st.regions = regions;
        for r in latest {
            let key = (r.monitor_id.clone(), r.region.clone());
            if let (Some(o), Some(at)) = (
                outcome_of(&r),
                r.checked_at.as_ref().and_then(from_timestamp),
            ) && (o == Outcome::Ok || o.is_target_failure())
            {
                let e = st.last_decisive.entry(key.clone()).or_insert(at);
                if at > *e {
                    *e = at;
                }
            }
            // Only forward: an ingest that finished meanwhile may be newer.
            let at = |r: &v1::CheckResult| r.checked_at.as_ref().and_then(from_timestamp);
            if st.latest.get(&key).is_none_or(|held| at(held) <= at(&r)) {
                st.latest.insert(key, r);
            }
        }
        let State {
            monitors,
            latest,
            last_decisive,
            region_state,
            ..
        } = &mut *st;
        latest.retain(|(m, _), _| monitors.contains_key(m));
        last_decisive.retain(|(m, _), _| monitors.contains_key(m));
        region_state.retain(|(m, _), _| monitors.contains_key(m));
        st.open = open;
        st.outages = outages;
        for (id, regions) in &changed_monitors {
            for r in regions {
                Self::sync_monitor(&mut st, r, id);
            }
        }
        for r in &changed_regions {
            Self::sync_region(&mut st, r);
        }
        st.recheck.clear();
        // Deliveries that waited for the store are due.
        self.outbox_wake.notify_one();
        info!(
            monitors = st.monitors.len(),
            changed_monitors = changed_monitors.len(),
            changed_regions = changed_regions.len(),
            open_incidents = st.open.len(),
            "reloaded the live view from the reopened store"
        );
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_lost_agents_monitors() {
        let monitors: Vec<String> = (0..1000).map(|i| format!("mon-{i}")).collect();
        let three = ["a", "b", "c"];
        let two = ["a", "b"];
        let mut moved = 0;
        let mut per_agent: HashMap<&str, usize> = HashMap::new();
        for m in &monitors {
            let before = rendezvous(three, m).unwrap();
            let after = rendezvous(two, m).unwrap();
            *per_agent.entry(before).or_default() += 1;
            if before != "c" {
                assert_eq!(before, after, "{m} moved although its agent stayed");
            } else {
                moved += 1;
            }
        }
        assert_eq!(moved, per_agent["c"]);
        for (agent, n) in per_agent {
            assert!((250..420).contains(&n), "{agent} owns {n} of 1000: uneven");
        }
        assert_eq!(rendezvous(std::iter::empty(), "x"), None);
    }
}

#[cfg(test)]
mod assignment_tests {
    use super::*;

    pub(super) fn monitor(id: &str, regions: &[&str], tenant: &str) -> v1::Monitor {
        v1::Monitor {
            id: id.into(),
            tenant_id: tenant.into(),
            host: "db.example.com".into(),
            port: 5432,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            interval_ms: 60_000,
            timeout_ms: 3000,
            generation: 1,
            ..Default::default()
        }
    }

    fn region(name: &str, owner: &str) -> v1::Region {
        v1::Region {
            name: name.into(),
            owner_tenant_id: owner.into(),
            ..Default::default()
        }
    }

    fn snapshot_ids(rx: &mut mpsc::UnboundedReceiver<v1::CoordinatorMessage>) -> Vec<String> {
        while let Ok(m) = rx.try_recv() {
            if let Some(v1::coordinator_message::Msg::Snapshot(s)) = m.msg {
                let mut ids: Vec<String> =
                    s.assignments.into_iter().map(|a| a.monitor_id).collect();
                ids.sort();
                return ids;
            }
        }
        panic!("no snapshot")
    }

    #[test]
    fn snapshot_holds_the_regions_monitors_and_private_regions_only_their_owners() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::load(Store::open(dir.path()).unwrap(), HubSettings::default()).unwrap();
        hub.region_changed(Some(region("eu", "")), "eu");
        hub.region_changed(Some(region("dc", "acme")), "dc");
        hub.monitor_changed(monitor("m1", &["eu"], "acme"));
        hub.monitor_changed(monitor("m2", &["eu", "dc"], "acme"));
        hub.monitor_changed(monitor("m3", &["dc"], "bravo"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let info = v1::Agent {
            agent_id: "a".into(),
            ..Default::default()
        };
        hub.agent_connected("eu", info.clone(), tx);
        assert_eq!(snapshot_ids(&mut rx), ["m1", "m2"]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        hub.agent_connected("dc", info, tx);
        assert_eq!(
            snapshot_ids(&mut rx),
            ["m2"],
            "bravo's monitor never reaches acme's private region"
        );
    }

    /// Every update queued for one agent: (upserted ids, removed ids) per message.
    fn updates(
        rx: &mut mpsc::UnboundedReceiver<v1::CoordinatorMessage>,
    ) -> Vec<(Vec<String>, Vec<String>)> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(v1::coordinator_message::Msg::Update(u)) = m.msg {
                let ups = u.upserts.into_iter().map(|a| a.monitor_id).collect();
                out.push((ups, u.removals));
            }
        }
        out
    }

    #[test]
    fn a_monitor_change_reaches_only_its_owner_and_leaves_no_other_assignment_stale() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::load(Store::open(dir.path()).unwrap(), HubSettings::default()).unwrap();
        hub.region_changed(Some(region("eu", "")), "eu");
        hub.region_changed(Some(region("us", "")), "us");
        for i in 0..200 {
            let regions: &[&str] = if i % 3 == 0 { &["us"] } else { &["eu", "us"] };
            hub.monitor_changed(monitor(&format!("m{i:03}"), regions, "acme"));
        }
        let mut rx = HashMap::new();
        let mut session = HashMap::new();
        for agent in ["a", "b", "c"] {
            let (tx, r) = mpsc::unbounded_channel();
            let info = v1::Agent {
                agent_id: agent.into(),
                ..Default::default()
            };
            session.insert(agent, hub.agent_connected("eu", info, tx));
            rx.insert(agent, r);
        }
        let drain = |rx: &mut HashMap<&str, mpsc::UnboundedReceiver<_>>| {
            let mut got: Vec<(&str, Vec<String>, Vec<String>)> = Vec::new();
            for agent in ["a", "b", "c"] {
                if let Some(r) = rx.get_mut(agent) {
                    for (ups, rems) in updates(r) {
                        got.push((agent, ups, rems));
                    }
                }
            }
            got
        };
        drain(&mut rx);
        let owner = |id: &str| rendezvous(["a", "b", "c"], id).unwrap();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

        // Created: one upsert to its owner, nothing to anyone else.
        let mut m = monitor("new", &["eu"], "acme");
        hub.monitor_changed(m.clone());
        assert_eq!(drain(&mut rx), [(owner("new"), s(&["new"]), s(&[]))]);
        // Changed: sent again to the same owner.
        m.port = 22;
        m.generation += 1;
        hub.monitor_changed(m.clone());
        assert_eq!(drain(&mut rx), [(owner("new"), s(&["new"]), s(&[]))]);
        // Paused: removed; resumed: back.
        m.paused = true;
        hub.monitor_changed(m.clone());
        assert_eq!(drain(&mut rx), [(owner("new"), s(&[]), s(&["new"]))]);
        m.paused = false;
        hub.monitor_changed(m.clone());
        assert_eq!(drain(&mut rx), [(owner("new"), s(&["new"]), s(&[]))]);
        // Moved out of the region, and deleted.
        hub.monitor_changed(monitor("m001", &["us"], "acme"));
        assert_eq!(drain(&mut rx), [(owner("m001"), s(&[]), s(&["m001"]))]);
        hub.monitor_removed("m002");
        assert_eq!(drain(&mut rx), [(owner("m002"), s(&[]), s(&["m002"]))]);
        assert!(hub.is_assigned("eu", session[owner("new")], "new"));
        assert!(!hub.is_assigned("eu", session[owner("m002")], "m002"));

        // A full recomputation finds nothing to send: every agent holds exactly
        // what it should.
        Hub::sync_region(&mut hub.lock(), "eu");
        assert!(drain(&mut rx).is_empty());
    }
}

#[cfg(test)]
mod notice_tests {
    use super::*;

    fn operator_channel(store: &Store, id: &str) {
        store
            .put_channel(&v1::Channel {
                id: id.into(),
                name: "ops".into(),
                ..Default::default()
            })
            .unwrap();
    }

    fn kinds(store: &Store) -> Vec<(i32, String)> {
        let mut v: Vec<(i32, String)> = store
            .list_deliveries()
            .unwrap()
            .into_iter()
            .filter_map(|r| r.delivery)
            .map(|d| (d.kind, d.subject_id))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn one_offline_notice_per_region_and_back_online_only_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let settings = HubSettings {
            region_offline_grace: Duration::from_millis(200),
            ..HubSettings::default()
        };
        let hub = Hub::load(store.clone(), settings.clone()).unwrap();
        let eu = v1::Region {
            name: "eu".into(),
            ..Default::default()
        };
        store.put_region(&eu).unwrap();
        hub.region_changed(Some(eu), "eu");
        // Told nobody (no channel yet): the region comes back without a notice.
        tokio::time::sleep(Duration::from_millis(250)).await;
        hub.region_notices().await.unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let agent = v1::Agent {
            agent_id: "eu-1".into(),
            ..Default::default()
        };
        let session = hub.agent_connected("eu", agent.clone(), tx);
        hub.region_notices().await.unwrap();
        assert!(kinds(&store).is_empty());

        operator_channel(&store, "ch-op");
        hub.agent_disconnected("eu", session);
        hub.region_notices().await.unwrap();
        assert!(kinds(&store).is_empty(), "not before the grace period");
        tokio::time::sleep(Duration::from_millis(250)).await;
        for _ in 0..3 {
            hub.region_notices().await.unwrap();
        }
        let offline = (v1::DeliveryKind::RegionOffline as i32, "eu".to_string());
        assert_eq!(
            kinds(&store),
            vec![offline.clone()],
            "one notice, not one per tick"
        );

        // A restart neither repeats the notice nor forgets it was sent.
        drop(hub);
        let hub = Hub::load(store.clone(), settings).unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        hub.region_notices().await.unwrap();
        assert_eq!(kinds(&store), vec![offline.clone()]);
        let (tx, _rx) = mpsc::unbounded_channel();
        hub.agent_connected("eu", agent, tx);
        hub.region_notices().await.unwrap();
        hub.region_notices().await.unwrap();
        assert_eq!(
            kinds(&store),
            [
                offline,
                (v1::DeliveryKind::RegionOnline as i32, "eu".to_string())
            ]
        );
        let keys: Vec<String> = store
            .list_deliveries()
            .unwrap()
            .into_iter()
            .filter_map(|r| r.delivery.map(|d| d.idempotency_key))
            .collect();
        let outage = keys[0].split(':').next().unwrap().to_string();
        assert!(
            keys.contains(&format!("{outage}:offline:ch-op")),
            "{keys:?}"
        );
        assert!(keys.contains(&format!("{outage}:online:ch-op")), "{keys:?}");
        assert!(store.region_outages().unwrap().is_empty());
    }
}

mod incidents;

#[cfg(test)]
mod flap_tests;

#[cfg(test)]
mod recheck_tests {
    use super::*;

    /// A result going stale changes the verdict with no new traffic: the
    /// periodic evaluation must notice it, though it skips monitors not yet due.
    #[tokio::test]
    async fn a_result_going_stale_is_noticed_without_new_results() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::load(Store::open(dir.path()).unwrap(), HubSettings::default()).unwrap();
        hub.region_changed(
            Some(v1::Region {
                name: "eu".into(),
                ..Default::default()
            }),
            "eu",
        );
        let m = v1::Monitor {
            id: "m1".into(),
            tenant_id: "t".into(),
            host: "db.example.com".into(),
            port: 5432,
            regions: vec!["eu".into()],
            interval_ms: 1000,
            timeout_ms: 1000,
            generation: 1,
            ..Default::default()
        };
        hub.monitor_changed(m.clone());
        let (tx, _rx) = mpsc::unbounded_channel();
        hub.agent_connected(
            "eu",
            v1::Agent {
                agent_id: "a".into(),
                ..Default::default()
            },
            tx,
        );
        // Fresh for another 300 ms (window = 2 × 1 s + 1 s + 5 s).
        let window = consensus::freshness_window(Duration::from_secs(1), Duration::from_secs(1));
        let at = SystemTime::now() - window + Duration::from_millis(300);
        let r = v1::CheckResult {
            monitor_id: "m1".into(),
            region: "eu".into(),
            checked_at: Some(to_timestamp(at)),
            outcome: v1::Outcome::Ok as i32,
            ..Default::default()
        };
        hub.results_stored(vec![r]).await.unwrap();
        let state = |hub: &Hub| hub.status(&m).regions[0].state;
        assert_eq!(state(&hub), v1::RegionState::Up as i32);
        let mut events = hub.subscribe();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut saw_stale = false;
        while std::time::Instant::now() < deadline && !saw_stale {
            hub.evaluate_all().await.unwrap();
            while let Ok(e) = events.try_recv() {
                if let Some(v1::event::Kind::RegionState(c)) = e.kind {
                    saw_stale |= c.to == v1::RegionState::Unknown as i32;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            saw_stale,
            "the periodic evaluation announced the region unknown once its result went stale"
        );
        assert_eq!(state(&hub), v1::RegionState::Unknown as i32);
        // Not due again for a while: a second pass right away evaluates nothing.
        let before = hub.counters().evaluations;
        hub.evaluate_all().await.unwrap();
        assert_eq!(
            hub.counters().evaluations,
            before,
            "steady monitors are skipped"
        );
    }
}

#[cfg(test)]
mod confirm_tests {
    use super::*;

    fn result(region: &str, outcome: v1::Outcome) -> v1::CheckResult {
        v1::CheckResult {
            monitor_id: "m1".into(),
            region: region.into(),
            checked_at: Some(to_timestamp(SystemTime::now())),
            outcome: outcome as i32,
            ..Default::default()
        }
    }

    /// The check-now messages each region's agent got, by region.
    fn check_nows(
        rxs: &mut [(&str, mpsc::UnboundedReceiver<v1::CoordinatorMessage>)],
    ) -> Vec<(String, Vec<String>)> {
        let mut got = Vec::new();
        for (region, rx) in rxs.iter_mut() {
            while let Ok(m) = rx.try_recv() {
                if let Some(v1::coordinator_message::Msg::CheckNow(c)) = m.msg {
                    got.push((region.to_string(), c.monitor_ids));
                }
            }
        }
        got
    }

    /// One region of three turns down: with `fast_confirmation` the other two
    /// are asked to check now; without it nobody is, and the incident still
    /// opens once a second region reports down on its own schedule.
    #[tokio::test]
    async fn fast_confirmation_sends_check_now_only_when_on() {
        for on in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let settings = HubSettings {
                fast_confirmation: on,
                ..HubSettings::default()
            };
            let hub = Hub::load(Store::open(dir.path()).unwrap(), settings).unwrap();
            let regions = ["eu", "us", "ap"];
            for r in regions {
                hub.region_changed(
                    Some(v1::Region {
                        name: r.into(),
                        ..Default::default()
                    }),
                    r,
                );
            }
            hub.monitor_changed(super::assignment_tests::monitor("m1", &regions, "t"));
            let mut rxs = Vec::new();
            for r in regions {
                let (tx, rx) = mpsc::unbounded_channel();
                let agent = v1::Agent {
                    agent_id: format!("{r}-1"),
                    ..Default::default()
                };
                hub.agent_connected(r, agent, tx);
                rxs.push((r, rx));
            }
            let all_up = regions.iter().map(|r| result(r, v1::Outcome::Ok)).collect();
            hub.results_stored(all_up).await.unwrap();
            assert_eq!(check_nows(&mut rxs), vec![]);

            // `results_stored` evaluates before it returns: whatever check-now
            // this causes is already queued.
            hub.results_stored(vec![result("eu", v1::Outcome::Refused)])
                .await
                .unwrap();
            let got = check_nows(&mut rxs);
            if on {
                let want = vec![
                    ("us".to_string(), vec!["m1".to_string()]),
                    ("ap".to_string(), vec!["m1".to_string()]),
                ];
                assert_eq!(got, want, "the two other regions confirm now");
                assert_eq!(hub.counters().confirmations, 1);
            } else {
                assert_eq!(got, vec![], "fast_confirmation = false: no check-now");
                assert_eq!(hub.counters().confirmations, 0);
            }
            assert_eq!(hub.open_incident_count(), 0, "1 of 3 down does not open");

            hub.results_stored(vec![result("us", v1::Outcome::TimedOut)])
                .await
                .unwrap();
            assert_eq!(hub.open_incident_count(), 1, "2 of 3 down opens (on: {on})");
            assert_eq!(check_nows(&mut rxs), vec![], "no check-now once open");
        }
    }
}

#[cfg(test)]
mod reload_tests {
    use super::assignment_tests::monitor;
    use super::*;

    /// The assignment updates queued for one agent: (upserts, removals).
    fn updates(
        rx: &mut mpsc::UnboundedReceiver<v1::CoordinatorMessage>,
    ) -> Vec<(Vec<String>, Vec<String>)> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(v1::coordinator_message::Msg::Update(u)) = m.msg {
                out.push((
                    u.upserts.into_iter().map(|a| a.monitor_id).collect(),
                    u.removals,
                ));
            }
        }
        out
    }

    fn region(name: &str) -> v1::Region {
        v1::Region {
            name: name.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn reload_takes_the_reopened_stores_monitors_and_incidents_and_tells_agents() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_region(&region("eu")).unwrap();
        let kept = monitor("kept", &["eu"], "acme");
        store.put_monitor(&kept).unwrap();
        store
            .put_monitor(&monitor("gone", &["eu"], "acme"))
            .unwrap();
        let hub = Hub::load(store.clone(), HubSettings::default()).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let info = v1::Agent {
            agent_id: "a".into(),
            ..Default::default()
        };
        hub.agent_connected("eu", info, tx);
        updates(&mut rx);

        // What a reopened store may hold that the view does not: writes whose
        // flush reported a failure but which reached the disk after all.
        store
            .put_monitor(&monitor("arrived", &["eu"], "acme"))
            .unwrap();
        store.delete_monitor("gone").unwrap();
        store
            .put_incident(&v1::Incident {
                id: "inc-1".into(),
                monitor_id: "kept".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(hub.open_incident_count(), 0);

        hub.reload().await.unwrap();
        assert_eq!(hub.open_incident_count(), 1, "the store's open incident");
        assert_eq!(hub.status(&kept).open_incident_id, "inc-1");
        let (ups, rems): (Vec<_>, Vec<_>) = updates(&mut rx).into_iter().unzip();
        assert_eq!(ups.concat(), ["arrived"], "the new monitor is assigned");
        assert_eq!(rems.concat(), ["gone"], "the deleted one is taken away");
        assert!(hub.monitored_in("arrived", "eu") && !hub.monitored_in("gone", "eu"));
    }
}
