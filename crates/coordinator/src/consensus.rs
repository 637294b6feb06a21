//! The multi-region consensus rule: from each region's latest result, decide
//! whether a monitor's incident opens, closes, or stays as it is.
//!
//! This is a pure function of (regions, results, policy, open incident, now): no
//! I/O and no clock, so the whole rule is covered by an exhaustive table test
//! beside it. The coordinator feeds it what the store holds and acts on the
//! [`Decision`].
//!
//! # The rule
//!
//! - A region's state comes from its latest result only while that result is
//!   *fresh*: checked within `2 × interval + timeout + 5 s` of `now` (a result
//!   stamped in the future counts as fresh; clocks drift). A fresh `Ok` is
//!   [`RegionState::Up`], a fresh target failure (refused, timed out, DNS failed,
//!   unreachable) is [`RegionState::Down`], and everything else — no result, a
//!   stale one, `blocked`, `probe_error`, or no live agent in the region — is
//!   [`RegionState::Unknown`]. `blocked` and `probe_error` say nothing about the
//!   target, only about the probe.
//! - With `n` monitored regions the quorum is `k(n) = ceil(0.66 · n)`, computed in
//!   integers as the smallest `k` with `100 k ≥ 66 n` (so `n = 3 → 2`, `n = 4 → 3`).
//! - **Open** when no incident is open and at least `k(n)` regions are down.
//!   Unknown regions stay in `n`: losing an agent can only make an alert harder,
//!   never easier, so a half-dead probe fleet does not page anyone by itself.
//! - **Close** when an incident is open and every region is up, except that a
//!   region unknown for longer than `offline_grace` no longer holds recovery back
//!   (otherwise one lost agent would keep an incident open forever); such regions
//!   are named in [`Decision::Close`] so the recovery notice can say so. At least
//!   one region must actually be up: an incident never closes on silence alone.
//!   "Unknown since" is the region's last decisive (up or down) result, or the
//!   incident's opening if it has none.
//!
//! # Why two policies
//!
//! The requirements (DESIGN.md, "Consensus") say both "2 of 3" / "3 of 4"
//! regions failing opens an incident and "if any region still reports success,
//! no incident is opened". These contradict each other (with 2 of 3 down, the
//! third may well report success). The numeric rule is the default
//! ([`Policy::Quorum`]); a monitor may choose [`Policy::Unanimous`] (`k = n`),
//! which is the stricter sentence.

use std::time::{Duration, SystemTime};

use portwatch_check::Outcome;

/// Slack added to the freshness window for transport and clock skew.
const FRESHNESS_SLACK: Duration = Duration::from_secs(5);

/// Tie-break order for the dominant failure reason, strongest first.
const REASON_ORDER: [Outcome; 4] = [
    Outcome::Refused,
    Outcome::TimedOut,
    Outcome::Unreachable,
    Outcome::DnsFailed,
];

/// How many down regions a monitor needs before an incident opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// `k(n) = ceil(0.66 · n)`: the requirements' "2 of 3", "3 of 4".
    #[default]
    Quorum,
    /// `k = n`: the requirements' "if any region still reports success, no incident".
    Unanimous,
}

/// The number of down regions needed to open, out of `n` monitored regions.
///
/// `n = 0` gives 0, which [`evaluate`] treats as "never open".
pub fn quorum(n: usize, policy: Policy) -> usize {
    match policy {
        // Smallest k with 100 k >= 66 n, without floating point.
        Policy::Quorum => n.saturating_mul(66).div_ceil(100),
        Policy::Unanimous => n,
    }
}

/// One result as the consensus rule needs it: when it was taken and what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub checked_at: SystemTime,
    pub outcome: Outcome,
}

/// What the coordinator knows about one monitored region of one monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInput<'a> {
    pub region: &'a str,
    /// The region's latest result for this monitor, if any.
    pub latest: Option<Observation>,
    /// Whether the region has a live agent connected right now.
    pub agent_online: bool,
    /// `checked_at` of the region's latest up or down result (not blocked or
    /// probe error): where "unknown since" starts counting.
    pub last_decisive_at: Option<SystemTime>,
}

/// The monitor's settings that shape the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub policy: Policy,
    pub interval: Duration,
    pub timeout: Duration,
    /// How long a region may stay unknown before it stops holding recovery back.
    pub offline_grace: Duration,
}

impl Rules {
    /// The default `offline_grace`.
    pub const DEFAULT_OFFLINE_GRACE: Duration = Duration::from_secs(10 * 60);
}

/// One region's state for one monitor at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionState {
    Up,
    /// Down, with the target failure that said so.
    Down(Outcome),
    Unknown(UnknownReason),
}

/// Why a region's state is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnknownReason {
    NoResult,
    Stale,
    Blocked,
    ProbeError,
    NoAgent,
}

impl UnknownReason {
    /// The human text, for notifications and the admin API.
    pub fn text(&self) -> &'static str {
        match self {
            UnknownReason::NoResult => "no result yet",
            UnknownReason::Stale => "no fresh result",
            UnknownReason::Blocked => "blocked",
            UnknownReason::ProbeError => "probe error",
            UnknownReason::NoAgent => "no live agent",
        }
    }
}

/// How old a result may be and still count: `2 × interval + timeout + 5 s`.
///
/// Two intervals so that one lost or late result does not make a region unknown.
pub fn freshness_window(interval: Duration, timeout: Duration) -> Duration {
    interval
        .saturating_mul(2)
        .saturating_add(timeout)
        .saturating_add(FRESHNESS_SLACK)
}

/// The state of one region at `now`.
pub fn region_state(input: &RegionInput, rules: &Rules, now: SystemTime) -> RegionState {
    // No live agent wins over any result: nobody is checking there any more.
    if !input.agent_online {
        return RegionState::Unknown(UnknownReason::NoAgent);
    }
    let Some(latest) = input.latest else {
        return RegionState::Unknown(UnknownReason::NoResult);
    };
    let window = freshness_window(rules.interval, rules.timeout);
    // A result from the future (agent clock ahead) is fresh: Err means negative age.
    let fresh = now
        .duration_since(latest.checked_at)
        .map_or(true, |age| age <= window);
    if !fresh {
        return RegionState::Unknown(UnknownReason::Stale);
    }
    match latest.outcome {
        Outcome::Ok => RegionState::Up,
        failure @ (Outcome::Refused
        | Outcome::TimedOut
        | Outcome::DnsFailed
        | Outcome::Unreachable) => RegionState::Down(failure),
        Outcome::Blocked => RegionState::Unknown(UnknownReason::Blocked),
        Outcome::ProbeError => RegionState::Unknown(UnknownReason::ProbeError),
    }
}

/// One region's part in an [`Evaluation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionVerdict {
    pub region: String,
    pub state: RegionState,
    /// Unknown past `offline_grace` while an incident is open: this region does
    /// not hold recovery back. Always false when no incident is open.
    pub ignored_offline: bool,
}

/// What the coordinator should do with the monitor's incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Open an incident for `reason`, the dominant failure among down regions.
    Open {
        reason: Outcome,
        down: usize,
        quorum: usize,
    },
    /// Close the open incident.
    Close {
        /// Regions unknown past grace that did not hold recovery back.
        ignored: Vec<String>,
    },
    /// Nothing changes.
    Stay,
}

/// The rule's full answer: the decision and the evidence behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// One verdict per input region, in input order.
    pub regions: Vec<RegionVerdict>,
    pub quorum: usize,
    pub down: usize,
    pub up: usize,
    pub unknown: usize,
    pub decision: Decision,
}

/// Apply the consensus rule to one monitor.
///
/// `open_incident`: None when no incident is open, Some(opened_at) when one is.
pub fn evaluate(
    regions: &[RegionInput],
    rules: &Rules,
    open_incident: Option<SystemTime>,
    now: SystemTime,
) -> Evaluation {
    let quorum = quorum(regions.len(), rules.policy);
    let verdicts: Vec<RegionVerdict> = regions
        .iter()
        .map(|input| {
            let state = region_state(input, rules, now);
            let ignored_offline = match (state, open_incident) {
                (RegionState::Unknown(_), Some(opened_at)) => {
                    // Counted from the last decisive result, so with `offline_grace`
                    // shorter than the freshness window an agentless region whose
                    // last word was a fresh down could already count as past grace.
                    let since = input.last_decisive_at.unwrap_or(opened_at);
                    // A `since` in the future is not past anything.
                    now.duration_since(since)
                        .is_ok_and(|unknown_for| unknown_for > rules.offline_grace)
                }
                _ => false,
            };
            RegionVerdict {
                region: input.region.to_owned(),
                state,
                ignored_offline,
            }
        })
        .collect();

    let up = count(&verdicts, |s| matches!(s, RegionState::Up));
    let down = count(&verdicts, |s| matches!(s, RegionState::Down(_)));
    let unknown = count(&verdicts, |s| matches!(s, RegionState::Unknown(_)));

    let decision = match open_incident {
        None => match dominant_reason(&verdicts) {
            // quorum 0 (no regions) must never open.
            Some(reason) if quorum > 0 && down >= quorum => Decision::Open {
                reason,
                down,
                quorum,
            },
            _ => Decision::Stay,
        },
        Some(_) => {
            let recovered = verdicts
                .iter()
                .all(|v| v.state == RegionState::Up || v.ignored_offline);
            // Never close on silence alone: someone must see the port answer.
            if recovered && up > 0 {
                Decision::Close {
                    ignored: verdicts
                        .iter()
                        .filter(|v| v.ignored_offline)
                        .map(|v| v.region.clone())
                        .collect(),
                }
            } else {
                Decision::Stay
            }
        }
    };

    Evaluation {
        regions: verdicts,
        quorum,
        down,
        up,
        unknown,
        decision,
    }
}

fn count(verdicts: &[RegionVerdict], pred: impl Fn(&RegionState) -> bool) -> usize {
    verdicts.iter().filter(|v| pred(&v.state)).count()
}

/// The most frequent failure among down regions; ties go to the earlier entry of
/// [`REASON_ORDER`]. None when no region is down.
fn dominant_reason(verdicts: &[RegionVerdict]) -> Option<Outcome> {
    let mut best: Option<(Outcome, usize)> = None;
    for reason in REASON_ORDER {
        let n = count(verdicts, |s| *s == RegionState::Down(reason));
        // Strictly greater: an equal count later in the order loses the tie.
        if n > 0 && best.is_none_or(|(_, m)| n > m) {
            best = Some((reason, n));
        }
    }
    best.map(|(reason, _)| reason)
}

#[cfg(test)]
mod tests;
