//! Flap detection, as a pure rule: from each consensus verdict, decide whether
//! the monitor's incident opens, closes, or is held open because the monitor
//! is flapping.
//!
//! Why: a target that goes down and comes back every few seconds met the
//! consensus rule each time, so every flip became an incident and a page pair
//! (measured: 15 incidents, 30 notices a minute at 3 regions). With this rule
//! it costs at most a couple of pairs, one "flapping" notice and one recovery.
//!
//! # The rule
//!
//! - A **state change** is the monitor's verdict flipping between failing (at
//!   least a quorum of regions down: what opens an incident) and recovered
//!   (every region up: what closes one). Verdicts in between (some regions down
//!   below the quorum, or unknown) change nothing: the verdict is latched, so
//!   a region wavering at the quorum's edge does not count twice. Without a
//!   hold the changes are exactly the incidents' openings and closings; while
//!   held they are the would-be closings and reopenings.
//! - The monitor is **flapping** when at least `threshold` changes fall within
//!   the last `window` (defaults 4 within 20 intervals: a 1 s target flipping
//!   every 2 s within 8 s; a 60 s target needs four flips within 20 minutes).
//!   Detection happens at a change: an opening (the incident opens already
//!   flapping) or a would-be closing (the incident stays open).
//! - A flapping incident is **held**: a recovered verdict does not close it;
//!   it closes only once the verdict has been recovered without a break for
//!   `stable_for` (default 5 intervals). Any other verdict stops that clock, and
//!   the next recovered verdict starts it again; nothing is sent meanwhile.
//! - Flap detection turned off (or an incident that is not flapping) closes on
//!   the first recovered verdict, as the consensus rule alone would.
//!
//! Nothing here touches the clock, the store or the network: the hub feeds it
//! each evaluation, stores what it must with the incident, and acts on the
//! [`Action`]. The table test below covers every path.

use std::time::{Duration, SystemTime};

use crate::consensus::{Decision, Evaluation};

pub use portwatch_proto::flap::Settings;

/// What one consensus evaluation says, as flap detection reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// At least a quorum of regions down: what opens an incident.
    Failing,
    /// Every region up (or unknown past the offline grace): what closes one.
    Recovered,
    /// Neither: some regions down below the quorum, or unknown.
    Neither,
}

impl Signal {
    /// The signal of an evaluation (made with or without an open incident).
    pub fn of(eval: &Evaluation) -> Signal {
        match eval.decision {
            Decision::Open { .. } => Signal::Failing,
            Decision::Close { .. } => Signal::Recovered,
            // With an incident open the rule never says Open; a quorum down
            // is still the failing verdict.
            Decision::Stay if eval.quorum > 0 && eval.down >= eval.quorum => Signal::Failing,
            Decision::Stay => Signal::Neither,
        }
    }
}

/// One monitor's flap state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flap {
    /// Recent state changes, oldest first: those within the window, at most
    /// [`portwatch_proto::flap::MAX_THRESHOLD`].
    pub changes: Vec<SystemTime>,
    /// The latched verdict: failing since the last change to failing.
    pub failing: bool,
    /// While the open incident is flapping: since when.
    pub flapping_since: Option<SystemTime>,
    /// While held: since when the verdict has been recovered without a break.
    pub stable_since: Option<SystemTime>,
}

/// What to do with the monitor's incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do or write.
    Nothing,
    /// Open an incident; `flapping`: it opens flapping (its notice goes too).
    Open { flapping: bool },
    /// Close the open incident: one recovery notice.
    Close,
    /// The open incident stays open and its flap state changed (write it);
    /// `began`: the monitor was just found flapping (its notice goes now).
    Hold { began: bool },
}

impl Flap {
    /// The state change counted at `now`.
    fn change(&mut self, now: SystemTime, failing: bool) {
        self.failing = failing;
        self.changes.push(now);
        let cap = portwatch_proto::flap::MAX_THRESHOLD as usize;
        let excess = self.changes.len().saturating_sub(cap);
        self.changes.drain(..excess);
    }

    fn flapping_by_count(&self, s: &Settings) -> bool {
        s.enabled && self.changes.len() >= s.threshold as usize
    }
}

/// Whether `at` lies within `window` before `now` (a time in the future does).
fn within(at: SystemTime, window: Duration, now: SystemTime) -> bool {
    now.duration_since(at).map_or(true, |age| age <= window)
}

/// Applies one evaluation's signal at `now` to the monitor's flap state.
/// `incident_open`: whether the monitor has an open incident.
pub fn step(
    prev: &Flap,
    s: &Settings,
    signal: Signal,
    incident_open: bool,
    now: SystemTime,
) -> (Flap, Action) {
    let mut next = prev.clone();
    next.changes.retain(|at| within(*at, s.window, now));
    if !incident_open {
        next.flapping_since = None;
        next.stable_since = None;
        if signal != Signal::Failing {
            next.failing = false;
            return (next, Action::Nothing);
        }
        if !next.failing {
            next.change(now, true);
        }
        let flapping = next.flapping_by_count(s);
        if flapping {
            next.flapping_since = Some(now);
        }
        return (next, Action::Open { flapping });
    }
    match signal {
        Signal::Failing | Signal::Neither => {
            let mut changed = false;
            if signal == Signal::Failing && !next.failing {
                next.change(now, true);
                // Written only while held: otherwise the incident is not
                // flapping and the change is kept in memory until its close.
                changed = next.flapping_since.is_some();
            }
            // Any verdict but "recovered" stops the stability clock.
            changed |= next.stable_since.take().is_some();
            let action = if changed {
                Action::Hold { began: false }
            } else {
                Action::Nothing
            };
            (next, action)
        }
        Signal::Recovered => {
            let recorded = next.failing;
            if recorded {
                next.change(now, false);
            }
            let flapping =
                s.enabled && (next.flapping_since.is_some() || next.flapping_by_count(s));
            if !flapping {
                next.flapping_since = None;
                next.stable_since = None;
                return (next, Action::Close);
            }
            let began = next.flapping_since.is_none();
            if began {
                next.flapping_since = Some(now);
            }
            let clock_started = next.stable_since.is_none();
            let since = *next.stable_since.get_or_insert(now);
            let stable = now.duration_since(since).unwrap_or_default() >= s.stable_for;
            // The notice first: a monitor just found flapping is held at least
            // until the next evaluation, never closed in the same breath.
            if stable && !began {
                next.flapping_since = None;
                next.stable_since = None;
                return (next, Action::Close);
            }
            let action = if began || clock_started || recorded {
                Action::Hold { began }
            } else {
                Action::Nothing
            };
            (next, action)
        }
    }
}

/// When a held incident's stability time ends (the hub evaluates it then,
/// even without a new result); `None` when not held with the clock running.
pub fn stable_at(f: &Flap, s: &Settings) -> Option<SystemTime> {
    match (s.enabled, f.flapping_since, f.stable_since) {
        (true, Some(_), Some(since)) => since.checked_add(s.stable_for),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
