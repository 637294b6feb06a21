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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn rules(policy: Policy) -> Rules {
        Rules {
            policy,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            offline_grace: Rules::DEFAULT_OFFLINE_GRACE,
        }
    }

    const NAMES: [&str; 10] = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"];

    fn fresh(name: &'static str, outcome: Outcome, now: SystemTime) -> RegionInput<'static> {
        let checked_at = now - Duration::from_secs(3);
        let decisive = outcome == Outcome::Ok || outcome.is_target_failure();
        RegionInput {
            region: name,
            latest: Some(Observation {
                checked_at,
                outcome,
            }),
            agent_online: true,
            last_decisive_at: decisive.then_some(checked_at),
        }
    }

    /// An unknown region of one of five kinds (cycled by `kind`), unknown since
    /// `last_decisive_at`.
    fn unknown(
        name: &'static str,
        kind: usize,
        last_decisive_at: Option<SystemTime>,
        now: SystemTime,
        r: &Rules,
    ) -> RegionInput<'static> {
        let window = freshness_window(r.interval, r.timeout);
        let obs = |checked_at, outcome| {
            Some(Observation {
                checked_at,
                outcome,
            })
        };
        let (latest, agent_online) = match kind % 5 {
            0 => (None, true),
            1 => (
                obs(now - window - Duration::from_secs(1), Outcome::Ok),
                true,
            ),
            2 => (obs(now, Outcome::Blocked), true),
            3 => (obs(now, Outcome::ProbeError), true),
            _ => (obs(now, Outcome::Ok), false),
        };
        RegionInput {
            region: name,
            latest,
            agent_online,
            last_decisive_at,
        }
    }

    #[test]
    fn quorum_table() {
        let expected = [1, 2, 2, 3, 4, 4, 5, 6, 6, 7];
        for (i, k) in expected.into_iter().enumerate() {
            let n = i + 1;
            assert_eq!(quorum(n, Policy::Quorum), k, "quorum n={n}");
            assert_eq!(quorum(n, Policy::Unanimous), n, "unanimous n={n}");
        }
        assert_eq!(quorum(0, Policy::Quorum), 0);
        assert_eq!(quorum(0, Policy::Unanimous), 0);
        assert_eq!(Policy::default(), Policy::Quorum);
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Incident {
        None,
        OpenWithinGrace,
        OpenPastGrace,
    }

    /// Builds `up` up regions, then `down` down, then `unknown` unknown ones.
    fn scenario(
        up: usize,
        down: usize,
        unknown_n: usize,
        incident: Incident,
        r: &Rules,
        now: SystemTime,
    ) -> (Vec<RegionInput<'static>>, Option<SystemTime>) {
        let min = |m: u64| Duration::from_secs(60 * m);
        // Unknown regions alternate between "has a decisive result" and "never
        // had one" (so their unknown time counts from the incident's opening).
        let (opened_at, decisive_at) = match incident {
            Incident::None => (None, now - min(1)),
            Incident::OpenWithinGrace => (Some(now - min(9)), now - min(2)),
            Incident::OpenPastGrace => (Some(now - min(30)), now - min(11)),
        };
        let mut inputs = Vec::new();
        for (i, &name) in NAMES.iter().enumerate().take(up + down + unknown_n) {
            inputs.push(if i < up {
                fresh(name, Outcome::Ok, now)
            } else if i < up + down {
                fresh(name, Outcome::TimedOut, now)
            } else {
                let last = (i % 2 == 0).then_some(decisive_at);
                unknown(name, i, last, now, r)
            });
        }
        (inputs, opened_at)
    }

    #[test]
    fn exhaustive_decision_table() {
        let now = t0();
        let mut rows = 0;
        for n in 1..=10usize {
            for up in 0..=n {
                for down in 0..=n - up {
                    let unknown_n = n - up - down;
                    for policy in [Policy::Quorum, Policy::Unanimous] {
                        for incident in [
                            Incident::None,
                            Incident::OpenWithinGrace,
                            Incident::OpenPastGrace,
                        ] {
                            let r = rules(policy);
                            let (inputs, opened) = scenario(up, down, unknown_n, incident, &r, now);
                            let eval = evaluate(&inputs, &r, opened, now);
                            let ctx = format!(
                                "n={n} up={up} down={down} unknown={unknown_n} {policy:?} {incident:?}"
                            );

                            let expected = match incident {
                                Incident::None => {
                                    let opens = match policy {
                                        Policy::Quorum => down * 100 >= 66 * n,
                                        Policy::Unanimous => down == n,
                                    };
                                    if opens {
                                        let k = match policy {
                                            Policy::Quorum => (66 * n).div_ceil(100),
                                            Policy::Unanimous => n,
                                        };
                                        Decision::Open {
                                            reason: Outcome::TimedOut,
                                            down,
                                            quorum: k,
                                        }
                                    } else {
                                        Decision::Stay
                                    }
                                }
                                Incident::OpenWithinGrace => {
                                    if up == n {
                                        Decision::Close { ignored: vec![] }
                                    } else {
                                        Decision::Stay
                                    }
                                }
                                Incident::OpenPastGrace => {
                                    if down == 0 && up >= 1 {
                                        Decision::Close {
                                            ignored: NAMES[up..n]
                                                .iter()
                                                .map(|s| s.to_string())
                                                .collect(),
                                        }
                                    } else {
                                        Decision::Stay
                                    }
                                }
                            };
                            assert_eq!(eval.decision, expected, "{ctx}");
                            assert_eq!(
                                (eval.up, eval.down, eval.unknown),
                                (up, down, unknown_n),
                                "{ctx}"
                            );
                            assert_eq!(eval.regions.len(), n, "{ctx}");
                            rows += 1;
                        }
                    }
                }
            }
        }
        // sum over n of (n+1)(n+2)/2 splits, × 2 policies × 3 incident states.
        assert_eq!(rows, 285 * 6);
    }

    fn decide(up: usize, down: usize, unknown_n: usize) -> Decision {
        let now = t0();
        let r = rules(Policy::Quorum);
        let (inputs, opened) = scenario(up, down, unknown_n, Incident::None, &r, now);
        evaluate(&inputs, &r, opened, now).decision
    }

    fn is_open(d: &Decision) -> bool {
        matches!(d, Decision::Open { .. })
    }

    #[test]
    fn spot_rows() {
        assert_eq!(decide(2, 1, 0), Decision::Stay, "1 of 3");
        assert!(is_open(&decide(1, 2, 0)), "2 of 3");
        assert_eq!(decide(2, 2, 0), Decision::Stay, "2 of 4");
        assert!(is_open(&decide(1, 3, 0)), "3 of 4");
        assert_eq!(decide(2, 3, 0), Decision::Stay, "3 of 5");
        assert!(is_open(&decide(1, 4, 0)), "4 of 5");
        assert_eq!(
            decide(0, 2, 1),
            Decision::Open {
                reason: Outcome::TimedOut,
                down: 2,
                quorum: 2
            },
            "2 down + 1 unknown of 3"
        );
        assert_eq!(decide(0, 1, 2), Decision::Stay, "1 down + 2 unknown of 3");
    }

    #[test]
    fn empty_region_list_never_opens_or_closes() {
        let now = t0();
        let r = rules(Policy::Quorum);
        let eval = evaluate(&[], &r, None, now);
        assert_eq!((eval.quorum, eval.decision), (0, Decision::Stay));
        let eval = evaluate(&[], &r, Some(now - Duration::from_secs(3600)), now);
        assert_eq!(eval.decision, Decision::Stay);
    }

    #[test]
    fn freshness_window_edge() {
        let now = t0();
        let r = rules(Policy::Quorum);
        let window = freshness_window(r.interval, r.timeout);
        assert_eq!(window, Duration::from_secs(2 * 60 + 10 + 5));

        let at = |checked_at| RegionInput {
            region: "r",
            latest: Some(Observation {
                checked_at,
                outcome: Outcome::Ok,
            }),
            agent_online: true,
            last_decisive_at: Some(checked_at),
        };
        assert_eq!(region_state(&at(now - window), &r, now), RegionState::Up);
        assert_eq!(
            region_state(&at(now - window - Duration::from_micros(1)), &r, now),
            RegionState::Unknown(UnknownReason::Stale)
        );
        // From the future (agent clock ahead): fresh.
        assert_eq!(
            region_state(&at(now + Duration::from_secs(30)), &r, now),
            RegionState::Up
        );
    }

    #[test]
    fn region_state_per_outcome() {
        let now = t0();
        let r = rules(Policy::Quorum);
        let state = |outcome| region_state(&fresh("r", outcome, now), &r, now);
        assert_eq!(state(Outcome::Ok), RegionState::Up);
        for failure in REASON_ORDER {
            assert_eq!(state(failure), RegionState::Down(failure));
        }
        assert_eq!(
            state(Outcome::Blocked),
            RegionState::Unknown(UnknownReason::Blocked)
        );
        assert_eq!(
            state(Outcome::ProbeError),
            RegionState::Unknown(UnknownReason::ProbeError)
        );

        let offline = RegionInput {
            agent_online: false,
            ..fresh("r", Outcome::Ok, now)
        };
        assert_eq!(
            region_state(&offline, &r, now),
            RegionState::Unknown(UnknownReason::NoAgent)
        );
        let none = RegionInput {
            latest: None,
            ..fresh("r", Outcome::Ok, now)
        };
        assert_eq!(
            region_state(&none, &r, now),
            RegionState::Unknown(UnknownReason::NoResult)
        );
    }

    #[test]
    fn unknown_reason_text() {
        assert_eq!(UnknownReason::NoResult.text(), "no result yet");
        assert_eq!(UnknownReason::Stale.text(), "no fresh result");
        assert_eq!(UnknownReason::Blocked.text(), "blocked");
        assert_eq!(UnknownReason::ProbeError.text(), "probe error");
        assert_eq!(UnknownReason::NoAgent.text(), "no live agent");
    }

    #[test]
    fn close_rules() {
        let now = t0();
        let r = rules(Policy::Quorum);
        let opened = Some(now - Duration::from_secs(3600));
        let within = Some(now - Duration::from_secs(5 * 60));
        let past = Some(now - Duration::from_secs(10 * 60) - Duration::from_secs(1));
        let up = |name| fresh(name, Outcome::Ok, now);
        let offline = |name, last| RegionInput {
            region: name,
            latest: None,
            agent_online: false,
            last_decisive_at: last,
        };
        let decision = |inputs: &[RegionInput]| evaluate(inputs, &r, opened, now).decision;

        assert_eq!(
            decision(&[up("a"), up("b"), fresh("c", Outcome::Refused, now)]),
            Decision::Stay
        );
        assert_eq!(
            decision(&[up("a"), up("b"), up("c")]),
            Decision::Close { ignored: vec![] }
        );
        assert_eq!(
            decision(&[up("a"), up("b"), offline("c", within)]),
            Decision::Stay
        );
        assert_eq!(
            decision(&[up("a"), up("b"), offline("c", past)]),
            Decision::Close {
                ignored: vec!["c".to_string()]
            }
        );
        // Exactly at the grace edge still holds recovery back.
        let edge = Some(now - Rules::DEFAULT_OFFLINE_GRACE);
        assert_eq!(
            decision(&[up("a"), up("b"), offline("c", edge)]),
            Decision::Stay
        );
        // Never had a decisive result: unknown since the incident opened (1 h).
        assert_eq!(
            decision(&[up("a"), up("b"), offline("c", None)]),
            Decision::Close {
                ignored: vec!["c".to_string()]
            }
        );
        assert_eq!(
            decision(&[offline("a", past), offline("b", past), offline("c", None)]),
            Decision::Stay
        );
        // A down region never counts as ignored, however long the incident.
        let eval = evaluate(
            &[up("a"), fresh("b", Outcome::DnsFailed, now)],
            &r,
            opened,
            now,
        );
        assert!(eval.regions.iter().all(|v| !v.ignored_offline));
    }

    #[test]
    fn no_ignored_regions_without_an_open_incident() {
        let now = t0();
        let r = rules(Policy::Quorum);
        let inputs = [
            fresh("a", Outcome::Ok, now),
            RegionInput {
                region: "b",
                latest: None,
                agent_online: false,
                last_decisive_at: None,
            },
        ];
        let eval = evaluate(&inputs, &r, None, now);
        assert!(eval.regions.iter().all(|v| !v.ignored_offline));
    }

    fn reason_of(outcomes: &[Outcome]) -> Decision {
        let now = t0();
        let inputs: Vec<_> = outcomes
            .iter()
            .enumerate()
            .map(|(i, &o)| fresh(NAMES[i], o, now))
            .collect();
        evaluate(&inputs, &rules(Policy::Quorum), None, now).decision
    }

    fn open_for(reason: Outcome, down: usize, quorum: usize) -> Decision {
        Decision::Open {
            reason,
            down,
            quorum,
        }
    }

    #[test]
    fn dominant_reason_with_ties() {
        use Outcome::*;
        // Most frequent wins regardless of the order.
        assert_eq!(
            reason_of(&[DnsFailed, DnsFailed, Refused]),
            open_for(DnsFailed, 3, 2)
        );
        // Ties: Refused > TimedOut > Unreachable > DnsFailed.
        assert_eq!(reason_of(&[DnsFailed, Refused]), open_for(Refused, 2, 2));
        assert_eq!(
            reason_of(&[DnsFailed, TimedOut, Unreachable]),
            open_for(TimedOut, 3, 2)
        );
        assert_eq!(
            reason_of(&[DnsFailed, Unreachable, Ok]),
            open_for(Unreachable, 2, 2)
        );
        assert_eq!(
            reason_of(&[DnsFailed, DnsFailed, Unreachable, Unreachable, TimedOut]),
            open_for(Unreachable, 5, 4)
        );
        assert_eq!(
            reason_of(&[Refused, TimedOut, TimedOut, Refused, DnsFailed, DnsFailed]),
            open_for(Refused, 6, 4)
        );
        // Blocked and probe errors are not reasons.
        assert_eq!(
            reason_of(&[Blocked, Blocked, DnsFailed, DnsFailed]),
            Decision::Stay
        );
    }

    // ---- state machine property ----

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            4 => Just(Outcome::Ok),
            2 => Just(Outcome::Refused),
            2 => Just(Outcome::TimedOut),
            1 => Just(Outcome::DnsFailed),
            1 => Just(Outcome::Unreachable),
            1 => Just(Outcome::Blocked),
            1 => Just(Outcome::ProbeError),
        ]
    }

    /// One region's news at one step: maybe a result (outcome, seconds before
    /// `now`, negative meaning from the future), and whether its agent is live.
    type Report = (Option<(Outcome, i64)>, bool);

    fn report() -> impl Strategy<Value = Report> {
        (
            proptest::option::weighted(0.7, (outcome(), -5i64..=200)),
            proptest::bool::weighted(0.85),
        )
    }

    /// (n, rules, steps); a step is (seconds to advance, one report per region).
    fn history() -> impl Strategy<Value = (usize, Rules, Vec<(u64, Vec<Report>)>)> {
        (1usize..=7).prop_flat_map(|n| {
            let rules = (
                prop_oneof![Just(Policy::Quorum), Just(Policy::Unanimous)],
                10u64..=60,
                1u64..=10,
                // Kept above the largest freshness window (135 s): see below.
                150u64..=900,
            )
                .prop_map(|(policy, interval, timeout, grace)| Rules {
                    policy,
                    interval: Duration::from_secs(interval),
                    timeout: Duration::from_secs(timeout),
                    offline_grace: Duration::from_secs(grace),
                });
            let step = (0u64..=120, proptest::collection::vec(report(), n));
            (Just(n), rules, proptest::collection::vec(step, 1..60))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn state_machine_invariants((n, rules, steps) in history()) {
            let names: Vec<String> = (0..n).map(|i| format!("region-{i}")).collect();
            let mut latest: Vec<Option<Observation>> = vec![None; n];
            let mut online = vec![true; n];
            let mut decisive: Vec<Option<SystemTime>> = vec![None; n];
            let mut incident: Option<SystemTime> = None;
            let mut now = t0();
            let window = freshness_window(rules.interval, rules.timeout);

            for (advance, reports) in steps {
                now += Duration::from_secs(advance);
                for (i, (result, live)) in reports.into_iter().enumerate() {
                    online[i] = live;
                    if let Some((outcome, lag)) = result {
                        let checked_at = if lag >= 0 {
                            now - Duration::from_secs(lag.unsigned_abs())
                        } else {
                            now + Duration::from_secs(lag.unsigned_abs())
                        };
                        // The store keeps the newest result, like the coordinator's.
                        if latest[i].is_none_or(|o| o.checked_at <= checked_at) {
                            latest[i] = Some(Observation { checked_at, outcome });
                        }
                        if (outcome == Outcome::Ok || outcome.is_target_failure())
                            && decisive[i].is_none_or(|d| d <= checked_at)
                        {
                            decisive[i] = Some(checked_at);
                        }
                    }
                }

                let inputs: Vec<RegionInput> = (0..n)
                    .map(|i| RegionInput {
                        region: &names[i],
                        latest: latest[i],
                        agent_online: online[i],
                        last_decisive_at: decisive[i],
                    })
                    .collect();
                let eval = evaluate(&inputs, &rules, incident, now);

                // Independent views of the same inputs.
                let is_fresh = |o: &Observation| o.checked_at + window >= now;
                let fresh_down_live = (0..n)
                    .filter(|&i| online[i])
                    .filter(|&i| latest[i].is_some_and(|o| is_fresh(&o) && o.outcome.is_target_failure()))
                    .count();
                // Any fresh down result at all, live agent or not. Because grace
                // exceeds the window here, such a region is still within grace.
                let any_fresh_down = latest
                    .iter()
                    .flatten()
                    .any(|o| is_fresh(o) && o.outcome.is_target_failure());
                let fresh_up_live = (0..n)
                    .filter(|&i| online[i])
                    .any(|i| latest[i].is_some_and(|o| is_fresh(&o) && o.outcome == Outcome::Ok));
                let enough = match rules.policy {
                    Policy::Quorum => fresh_down_live * 100 >= 66 * n,
                    Policy::Unanimous => fresh_down_live == n,
                };

                prop_assert_eq!(eval.up + eval.down + eval.unknown, n);
                prop_assert_eq!(eval.down, fresh_down_live);
                match eval.decision {
                    Decision::Open { down, quorum, .. } => {
                        prop_assert!(enough, "opened below quorum");
                        prop_assert!(incident.is_none(), "opened twice");
                        prop_assert_eq!(down, fresh_down_live);
                        prop_assert!(quorum >= 1 && down >= quorum);
                        incident = Some(now);
                    }
                    Decision::Close { ignored } => {
                        prop_assert!(incident.is_some(), "closed with nothing open");
                        prop_assert!(!any_fresh_down, "closed with a fresh down result");
                        prop_assert!(fresh_up_live, "closed with no region up");
                        for name in &ignored {
                            let v = eval.regions.iter().find(|v| &v.region == name);
                            prop_assert!(v.is_some_and(|v| matches!(v.state, RegionState::Unknown(_))));
                        }
                        incident = None;
                    }
                    Decision::Stay => {
                        if incident.is_none() {
                            prop_assert!(!enough, "quorum reached but stayed closed");
                        }
                    }
                }
            }
        }
    }
}
