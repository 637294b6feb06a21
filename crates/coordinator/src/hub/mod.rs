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
//!
//! The hub by job, each module adding its part of `impl Hub` on the one
//! `State` behind the one state lock (and, for what writes incidents or
//! outages, the one `transitions` lock), so the locking rules stay in this
//! module while the decisions live apart:
//! - `assignment`: agent sessions, which agent of a region checks which
//!   monitor (rendezvous hashing), and keeping every agent's assignments in
//!   step as monitors, regions and agents come and go;
//! - `evaluation`: results becoming a region's latest, the consensus rule
//!   applied on them (and on a timer), and the transition it decides;
//! - `incidents`: carrying out an incident's opening, closing or hold, with
//!   the deliveries each causes;
//! - `outages`: probe regions left without a live agent, and their notices;
//! - `reload`: the view taken again from a reopened store.
//!
//! This module holds the state, the constructor and the small accessors.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use portwatch_check::Outcome;
use portwatch_proto::time::{from_timestamp, to_timestamp};
use portwatch_proto::v1;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::consensus::{self, RegionState};
use crate::flapping::Flap;
use crate::store::{RegionOutage, Store, StoreError};
use evaluation::outcome_of;
use incidents::restored_flap;

mod assignment;
mod evaluation;
mod incidents;
mod outages;
mod reload;
mod slowness;

pub use assignment::rendezvous;
pub use evaluation::rules_for;
pub use incidents::Acknowledged;
// Ids have a module of their own (`crate::ids`); re-exported here for the
// callers that still name them through the hub (the admin API).

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
    /// Each region's consecutive "up" results, newest last (for
    /// `recover_after`); a result of any other outcome resets it. Not
    /// persisted: after a restart an open incident waits for fresh rounds.
    up_streak: HashMap<Key, u32>,
    /// Each region's consecutive slow and fast connects (`slowness`).
    speed: HashMap<Key, slowness::Speed>,
    /// Open slowness records by monitor (`slowness`); never beside an open
    /// incident of the same monitor (an outage supersedes them).
    slow: HashMap<String, v1::Incident>,
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
    /// Every tenant's maintenance windows (mirrors the store).
    windows: Vec<crate::maintenance::Window>,
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
    /// Whether this coordinator is the active one (always, on sled; on
    /// PostgreSQL while it holds the lease, `cluster`). A standby decides
    /// nothing and refuses agents and admin calls.
    active: watch::Sender<bool>,
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
            match store.open_incident(m)? {
                Some(i) if i.slow => {
                    state.slow.insert(m.clone(), i);
                }
                Some(i) => {
                    state.open.insert(m.clone(), i);
                }
                None => {}
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
        state.windows = store
            .list_maintenance()?
            .into_iter()
            .filter_map(crate::maintenance::Window::new)
            .collect();
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
            active: watch::Sender::new(true),
        }))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes the maintenance windows again from the store (after the admin
    /// API changed them).
    pub fn reload_windows(&self) -> Result<(), StoreError> {
        let windows = self
            .store
            .list_maintenance()?
            .into_iter()
            .filter_map(crate::maintenance::Window::new)
            .collect();
        self.lock().windows = windows;
        Ok(())
    }

    /// The id of the maintenance window covering `m` at `t`, if any.
    fn maintenance_for(&self, m: &v1::Monitor, t: SystemTime) -> Option<String> {
        let st = self.lock();
        crate::maintenance::covering(&st.windows, m, t).map(|w| w.record.id.clone())
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

    /// When the coordinator started (regions count as offline from here).
    pub fn started(&self) -> SystemTime {
        self.started
    }

    pub fn open_incident_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Holds off incident transitions: while the guard lives, no evaluation
    /// opens or closes an incident. `changes` takes it to write a change that
    /// closes an incident (deleting a monitor).
    pub async fn hold_transitions(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.transitions.lock().await
    }

    /// Whether this coordinator decides now (see [`Hub::set_active`]).
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// Follows [`Hub::is_active`].
    pub fn watch_active(&self) -> watch::Receiver<bool> {
        self.active.subscribe()
    }

    /// Makes this coordinator the active one, or a standby. Becoming active,
    /// every region without an agent here counts as offline from now (the
    /// agents are on their way from the previous active coordinator); standing
    /// by, every agent is asked to drain so it moves to the active one.
    pub fn set_active(&self, active: bool) {
        let was = self.active.send_replace(active);
        if was == active {
            return;
        }
        if active {
            let t = now();
            let mut st = self.lock();
            let names: Vec<String> = st.regions.keys().cloned().collect();
            for name in names {
                if st.sessions.get(&name).is_none_or(Vec::is_empty) {
                    st.offline_since.insert(name, t);
                }
            }
        } else {
            self.drain_all("this coordinator is now a standby; the active one takes agents");
        }
    }

    /// The answer of a standby to an agent or an admin call.
    pub fn standby_status(&self) -> tonic::Status {
        tonic::Status::unavailable(
            "this coordinator is a standby: another coordinator holds the active lease; \
             connect to the active one (or retry: a standby takes over when the lease runs out)",
        )
    }

    /// The open incident of a monitor, as the live view holds it.
    /// The monitor's open incident, or else its open slowness record.
    pub fn open_incident_of(&self, monitor_id: &str) -> Option<v1::Incident> {
        let st = self.lock();
        st.open
            .get(monitor_id)
            .or_else(|| st.slow.get(monitor_id))
            .cloned()
    }
}

#[cfg(test)]
mod assignment_tests;
#[cfg(test)]
mod evaluation_tests;
#[cfg(test)]
mod flap_tests;
#[cfg(test)]
mod outage_tests;
#[cfg(test)]
mod reload_tests;
