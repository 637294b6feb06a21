//! When each monitor is due: the agent's check schedule.
//!
//! What this module guarantees:
//!
//! - **Aligned across regions.** A monitor with interval `I` (ms) is due at
//!   every instant `t` (ms since the Unix epoch) with
//!   `t ≡ phase_ms(id, I) (mod I)`. The phase depends only on the monitor id
//!   and the interval, through a hash defined in this file (see
//!   [`stable_hash`]), never std's randomly seeded hasher. So every agent in
//!   every region, on any machine and any Rust version, checks a monitor at
//!   the same instants, and the coordinator compares like with like.
//! - **Spread.** The hash spreads phases evenly over the interval, so
//!   thousands of monitors with one interval do not all fire in the same
//!   second.
//! - **Immediate when new.** A new monitor, a new generation of a monitor and
//!   a check-now request are due at once; afterwards the monitor is back on
//!   its aligned instants (a check-now does not shift them).
//! - **No backlog.** A scheduler that falls behind (a paused VM, a busy
//!   runtime) yields one check per overdue monitor and then realigns: missed
//!   instants are skipped, not replayed. [`Due::due_ms`] keeps the instant it
//!   was due, so the caller measures schedule lag as `now - due_ms`.
//! - **Cheap at scale.** One binary heap of `(due, slot, token)` with lazy
//!   deletion, no task or timer per monitor: `pop_due` costs O(k log n) for k
//!   due checks, and the state per monitor is about 130 bytes plus its id and
//!   the caller's payload.
//!
//! Pure data: no I/O, no clock reads, no async. The caller passes `now_ms`
//! (wall clock, ms since the epoch), sleeps until [`Scheduler::next_due_ms`],
//! and runs what [`Scheduler::pop_due`] returns.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

/// The shortest interval the scheduler runs. Smaller intervals (including 0,
/// which would otherwise divide by zero) are treated as this.
pub const MIN_INTERVAL_MS: u64 = 1_000;

/// Stale heap entries tolerated beyond one per live monitor before the heap
/// is compacted; keeps churn (check-now, re-deploys) from growing it forever.
const COMPACT_SLACK: usize = 1_024;

/// The hash that places a monitor in its interval; part of the cross-region
/// contract, so it must never change (a test pins its values).
///
/// Definition: FNV-1a 64 over the UTF-8 bytes of the id (offset basis
/// `0xcbf29ce484222325`, prime `0x100000001b3`), then MurmurHash3's `fmix64`
/// finalizer (shifts 33, multipliers `0xff51afd7ed558ccd` and
/// `0xc4ceb9fe1a85ec53`). The finalizer mixes FNV's weak low bits so that ids
/// differing only in a trailing counter still spread evenly modulo any
/// interval.
pub fn stable_hash(monitor_id: &str) -> u64 {
    fmix64(fnv1a64(monitor_id.as_bytes()))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

fn effective_interval(interval_ms: u64) -> u64 {
    interval_ms.max(MIN_INTERVAL_MS)
}

/// The monitor's offset within its interval: `stable_hash(id) mod interval`
/// (interval raised to [`MIN_INTERVAL_MS`]).
pub fn phase_ms(monitor_id: &str, interval_ms: u64) -> u64 {
    stable_hash(monitor_id) % effective_interval(interval_ms)
}

/// The first aligned due instant strictly after `after_ms` (saturating at
/// `u64::MAX`).
pub fn next_aligned(monitor_id: &str, interval_ms: u64, after_ms: u64) -> u64 {
    let interval = effective_interval(interval_ms);
    aligned_after(phase_ms(monitor_id, interval), interval, after_ms)
}

/// First `t > after` with `t ≡ phase (mod interval)`; needs `phase < interval`.
fn aligned_after(phase: u64, interval: u64, after: u64) -> u64 {
    let period_start = after - after % interval;
    let candidate = period_start.saturating_add(phase);
    if candidate > after {
        candidate
    } else {
        candidate.saturating_add(interval)
    }
}

/// One check to run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due<T> {
    pub monitor_id: Arc<str>,
    /// The caller's data for the monitor, as of the latest upsert.
    pub payload: T,
    /// The instant the check was due (not when it was popped): lag is
    /// `now - due_ms`.
    pub due_ms: u64,
    /// True for a check outside the aligned schedule: a new monitor, a new
    /// generation, or a check-now request.
    pub immediate: bool,
}

/// The schedule of every monitor this agent runs.
///
/// Monitors live in a slab (`slots`) found by id through `index`; the heap
/// holds `(due, slot, token)`. Each reschedule bumps the slot's token, so the
/// heap entry carrying the current token is the monitor's only live one and
/// every older entry is skipped when it surfaces (lazy deletion).
#[derive(Debug)]
pub struct Scheduler<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
    index: HashMap<Arc<str>, usize>,
    heap: BinaryHeap<Reverse<HeapEntry>>,
}

#[derive(Debug)]
struct Slot<T> {
    /// Outlives the entry so that heap entries of a removed monitor never
    /// match the next monitor stored in the same slot.
    token: u32,
    entry: Option<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    id: Arc<str>,
    /// Already raised to [`MIN_INTERVAL_MS`].
    interval_ms: u64,
    phase_ms: u64,
    generation: u64,
    due_ms: u64,
    /// The pending check is out of schedule (new, new generation, check-now).
    immediate: bool,
    payload: T,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HeapEntry {
    due_ms: u64,
    slot: usize,
    token: u32,
}

fn is_live<T>(slots: &[Slot<T>], e: &HeapEntry) -> bool {
    slots
        .get(e.slot)
        .is_some_and(|s| s.token == e.token && s.entry.is_some())
}

impl<T> Default for Scheduler<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            heap: BinaryHeap::new(),
        }
    }
}

impl<T: Clone> Scheduler<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces. `generation` changed (or new) => due immediately
    /// at `now_ms`; same generation => keeps its schedule (only the
    /// payload/interval is updated; if the interval changed, reschedule
    /// aligned).
    ///
    /// A pending immediate or overdue check survives a same-generation
    /// interval change: the first check of a new monitor is never lost to a
    /// quick second update.
    pub fn upsert(
        &mut self,
        monitor_id: &str,
        interval_ms: u64,
        generation: u64,
        payload: T,
        now_ms: u64,
    ) {
        let interval = effective_interval(interval_ms);
        if let Some(slot) = self.index.get(monitor_id).copied()
            && let Some(entry) = self.slots.get_mut(slot).and_then(|s| s.entry.as_mut())
        {
            entry.payload = payload;
            let reschedule_at = if entry.generation != generation {
                entry.generation = generation;
                entry.interval_ms = interval;
                entry.phase_ms = phase_ms(monitor_id, interval);
                entry.immediate = true;
                Some(now_ms)
            } else if entry.interval_ms != interval {
                entry.interval_ms = interval;
                entry.phase_ms = phase_ms(monitor_id, interval);
                if entry.immediate || entry.due_ms <= now_ms {
                    None
                } else {
                    Some(aligned_after(entry.phase_ms, interval, now_ms))
                }
            } else {
                None
            };
            if let Some(due_ms) = reschedule_at {
                self.schedule(slot, due_ms);
            }
            return;
        }

        let id: Arc<str> = Arc::from(monitor_id);
        let entry = Entry {
            id: Arc::clone(&id),
            interval_ms: interval,
            phase_ms: phase_ms(monitor_id, interval),
            generation,
            due_ms: now_ms,
            immediate: true,
            payload,
        };
        let slot = if let Some(slot) = self.free.pop()
            && let Some(s) = self.slots.get_mut(slot)
        {
            s.entry = Some(entry);
            slot
        } else {
            self.slots.push(Slot {
                token: 0,
                entry: Some(entry),
            });
            self.slots.len() - 1
        };
        self.index.insert(id, slot);
        self.schedule(slot, now_ms);
    }

    /// Forgets the monitor; returns false if it was unknown.
    pub fn remove(&mut self, monitor_id: &str) -> bool {
        let Some(slot) = self.index.remove(monitor_id) else {
            return false;
        };
        self.free_slot(slot);
        self.compact_if_needed();
        true
    }

    /// Makes the monitor due now (if known); returns false if unknown.
    ///
    /// A monitor already due at `now_ms` is left as it is: its pending check
    /// runs at once anyway. After the check it returns to its aligned
    /// instants.
    pub fn check_now(&mut self, monitor_id: &str, now_ms: u64) -> bool {
        let Some(slot) = self.index.get(monitor_id).copied() else {
            return false;
        };
        let Some(entry) = self.slots.get_mut(slot).and_then(|s| s.entry.as_mut()) else {
            return false;
        };
        if entry.due_ms > now_ms {
            entry.immediate = true;
            self.schedule(slot, now_ms);
        }
        true
    }

    /// Keeps only these monitor ids (for applying a full snapshot), removing
    /// the rest.
    pub fn retain(&mut self, keep: &HashSet<&str>) {
        let mut dropped = Vec::new();
        self.index.retain(|id, slot| {
            let kept = keep.contains(&**id);
            if !kept {
                dropped.push(*slot);
            }
            kept
        });
        for slot in dropped {
            self.free_slot(slot);
        }
        self.compact_if_needed();
    }

    /// When the next check is due (None when empty). Skips stale heap
    /// entries.
    pub fn next_due_ms(&mut self) -> Option<u64> {
        while let Some(&Reverse(top)) = self.heap.peek() {
            if is_live(&self.slots, &top) {
                return Some(top.due_ms);
            }
            self.heap.pop();
        }
        None
    }

    /// Pops every check due at or before `now_ms` (up to `max`), each
    /// rescheduled to its next aligned instant after `now_ms` (a late
    /// scheduler does not run a backlog of missed instants: one check per
    /// monitor, then aligned again). `Due::due_ms` is the instant it was due,
    /// so the caller can measure lag = now - due.
    pub fn pop_due(&mut self, now_ms: u64, max: usize) -> Vec<Due<T>> {
        let mut due = Vec::new();
        while due.len() < max {
            let Some(&Reverse(top)) = self.heap.peek() else {
                break;
            };
            if top.due_ms > now_ms {
                break;
            }
            self.heap.pop();
            let Some(slot) = self.slots.get_mut(top.slot) else {
                continue;
            };
            if slot.token != top.token {
                continue;
            }
            let Some(entry) = slot.entry.as_mut() else {
                continue;
            };
            due.push(Due {
                monitor_id: Arc::clone(&entry.id),
                payload: entry.payload.clone(),
                due_ms: top.due_ms,
                immediate: entry.immediate,
            });
            entry.immediate = false;
            let next = aligned_after(entry.phase_ms, entry.interval_ms, now_ms);
            self.schedule(top.slot, next);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, monitor_id: &str) -> bool {
        self.index.contains_key(monitor_id)
    }

    /// Makes `due_ms` the monitor's only live heap entry.
    fn schedule(&mut self, slot: usize, due_ms: u64) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(entry) = s.entry.as_mut() else {
            return;
        };
        entry.due_ms = due_ms;
        s.token = s.token.wrapping_add(1);
        self.heap.push(Reverse(HeapEntry {
            due_ms,
            slot,
            token: s.token,
        }));
        self.compact_if_needed();
    }

    fn free_slot(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.entry = None;
            s.token = s.token.wrapping_add(1);
            self.free.push(slot);
        }
    }

    fn compact_if_needed(&mut self) {
        if self.heap.len() > 2 * self.index.len() + COMPACT_SLACK {
            let slots = &self.slots;
            self.heap.retain(|Reverse(e)| is_live(slots, e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const MINUTE: u64 = 60_000;
    /// A fixed wall-clock instant, so no test depends on the real clock.
    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn hash_is_pinned_across_versions() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // Agents already deployed compute these; changing them splits regions.
        // (Computed independently of this file.)
        assert_eq!(stable_hash("mon-000001"), 0x8a35_fa37_209d_1d0e);
        assert_eq!(phase_ms("mon-000001", MINUTE), 52_718);
    }

    #[test]
    fn phase_is_the_same_in_two_schedulers() {
        let id = "3f1c9a52-7d1e-4b8a-9c3e-1a2b3c4d5e6f";
        let mut a = Scheduler::new();
        let mut b = Scheduler::new();
        a.upsert(id, MINUTE, 1, (), T0);
        b.upsert(id, MINUTE, 9, (), T0 + 12_345);
        assert_eq!(a.pop_due(T0, 10).len(), 1);
        assert_eq!(b.pop_due(T0 + 12_345, 10).len(), 1);
        let next_a = a.next_due_ms().unwrap();
        let next_b = b.next_due_ms().unwrap();
        assert_eq!(next_a % MINUTE, phase_ms(id, MINUTE));
        assert_eq!(next_b % MINUTE, phase_ms(id, MINUTE));
        assert_eq!(next_a, next_b);
    }

    #[test]
    fn phases_spread_evenly() {
        let formats: [fn(usize) -> String; 2] = [
            |i| format!("mon-{i:06}"),
            |i| format!("tenant-{}/db-{}", i % 13, i),
        ];
        for format in formats {
            let mut buckets = [0usize; 60];
            for i in 0..10_000 {
                buckets[(phase_ms(&format(i), MINUTE) / 1_000) as usize] += 1;
            }
            let mean = 10_000 / 60;
            let max = buckets.iter().copied().max().unwrap();
            assert!(max <= 3 * mean, "bucket of {max} (mean {mean})");
        }
    }

    #[test]
    fn two_regions_check_at_the_same_instants() {
        let intervals = [30_000, MINUTE, 300_000, 45_000];
        let monitors: Vec<(String, u64)> = (0..300)
            .map(|i| (format!("tenant-{}/mon-{i}", i % 7), intervals[i % 4]))
            .collect();
        let end = T0 + 3_600_000;
        // Region B starts 7.3 s later, learns the monitors in another order,
        // and ticks at another rate.
        let b_start = T0 + 7_300;
        let mut a = Scheduler::new();
        let mut b = Scheduler::new();
        for (id, interval) in &monitors {
            a.upsert(id, *interval, 1, (), T0);
        }
        for (id, interval) in monitors.iter().rev() {
            b.upsert(id, *interval, 1, (), b_start);
        }
        let run = |s: &mut Scheduler<()>, start: u64, step: u64| {
            let mut instants = BTreeSet::new();
            let mut now = start;
            while now <= end {
                for due in s.pop_due(now, usize::MAX) {
                    if !due.immediate {
                        instants.insert((due.monitor_id.to_string(), due.due_ms));
                    }
                }
                now += step;
            }
            instants
        };
        let window = |set: BTreeSet<(String, u64)>| -> BTreeSet<(String, u64)> {
            set.into_iter()
                .filter(|(_, t)| *t > b_start && *t <= end - 1_000)
                .collect()
        };
        let seen_a = window(run(&mut a, T0, 1_000));
        let seen_b = window(run(&mut b, b_start, 730));
        assert!(seen_a.len() > 300 * 10);
        assert_eq!(seen_a, seen_b);
        for (id, interval) in &monitors {
            let expected: BTreeSet<u64> = (0..)
                .map(|k| next_aligned(id, *interval, b_start) + k * interval)
                .take_while(|t| *t <= end - 1_000)
                .collect();
            let got: BTreeSet<u64> = seen_a
                .iter()
                .filter(|(m, _)| m == id)
                .map(|(_, t)| *t)
                .collect();
            assert_eq!(got, expected, "{id}");
        }
    }

    #[test]
    fn new_monitor_is_due_at_once_then_aligned() {
        let id = "api.example.com:443";
        let mut s = Scheduler::new();
        s.upsert(id, MINUTE, 1, "v1", T0 + 5);
        assert!(s.contains(id));
        assert_eq!(s.len(), 1);
        assert_eq!(s.next_due_ms(), Some(T0 + 5));
        let due = s.pop_due(T0 + 5, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(&*due[0].monitor_id, id);
        assert_eq!(due[0].payload, "v1");
        assert_eq!(due[0].due_ms, T0 + 5);
        assert!(due[0].immediate);

        let next = s.next_due_ms().unwrap();
        assert_eq!(next, next_aligned(id, MINUTE, T0 + 5));
        assert!(next > T0 + 5 && next <= T0 + 5 + MINUTE);
        assert_eq!(next % MINUTE, phase_ms(id, MINUTE));
        assert!(s.pop_due(next - 1, 10).is_empty());
        let due = s.pop_due(next, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].due_ms, next);
        assert!(!due[0].immediate);
        assert_eq!(s.next_due_ms(), Some(next + MINUTE));
    }

    #[test]
    fn same_generation_upsert_keeps_schedule() {
        let id = "db:5432";
        let mut s = Scheduler::new();
        s.upsert(id, MINUTE, 1, "v1", T0);
        s.pop_due(T0, 10);
        let next = s.next_due_ms().unwrap();

        s.upsert(id, MINUTE, 1, "v2", next - 100);
        assert_eq!(s.next_due_ms(), Some(next));
        let due = s.pop_due(next, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].payload, "v2");
        assert!(!due[0].immediate);

        // Same generation, new interval: aligned on the new interval, not immediate.
        let now = next + 10;
        s.upsert(id, 30_000, 1, "v3", now);
        assert_eq!(s.next_due_ms(), Some(next_aligned(id, 30_000, now)));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn interval_change_keeps_a_pending_first_check() {
        let id = "new:22";
        let mut s = Scheduler::new();
        s.upsert(id, MINUTE, 1, (), T0);
        s.upsert(id, 30_000, 1, (), T0 + 1);
        assert_eq!(s.next_due_ms(), Some(T0));
        let due = s.pop_due(T0 + 1, 10);
        assert_eq!(due.len(), 1);
        assert!(due[0].immediate);
        assert_eq!(s.next_due_ms(), Some(next_aligned(id, 30_000, T0 + 1)));
    }

    #[test]
    fn new_generation_is_due_at_once() {
        let id = "web:80";
        let mut s = Scheduler::new();
        s.upsert(id, MINUTE, 1, "v1", T0);
        s.pop_due(T0, 10);
        let next = s.next_due_ms().unwrap();
        let now = next - 1_000;

        s.upsert(id, MINUTE, 2, "v2", now);
        assert_eq!(s.next_due_ms(), Some(now));
        let due = s.pop_due(now, 10);
        assert_eq!(due.len(), 1);
        assert!(due[0].immediate);
        assert_eq!(due[0].payload, "v2");
        assert_eq!(due[0].due_ms, now);
        assert_eq!(s.next_due_ms(), Some(next));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn check_now_is_due_at_once_then_back_to_alignment() {
        let id = "smtp:25";
        let mut s = Scheduler::new();
        assert!(!s.check_now(id, T0));
        s.upsert(id, MINUTE, 1, (), T0);
        s.pop_due(T0, 10);
        let next = s.next_due_ms().unwrap();
        let now = next - 20_000;

        assert!(s.check_now(id, now));
        assert!(s.check_now(id, now), "a second request adds nothing");
        assert_eq!(s.next_due_ms(), Some(now));
        let due = s.pop_due(now, 10);
        assert_eq!(due.len(), 1);
        assert!(due[0].immediate);
        assert_eq!(due[0].due_ms, now);
        assert_eq!(s.next_due_ms(), Some(next));

        // Already due: the pending aligned check serves the request.
        assert!(s.check_now(id, next + 5));
        let due = s.pop_due(next + 5, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].due_ms, next);
        assert_eq!(s.next_due_ms(), Some(next + MINUTE));
    }

    #[test]
    fn remove_stops_checks() {
        let mut s = Scheduler::new();
        s.upsert("a:1", MINUTE, 1, 'a', T0);
        assert!(s.remove("a:1"));
        assert!(!s.remove("a:1"));
        assert!(!s.contains("a:1"));
        assert!(s.is_empty());
        assert_eq!(s.next_due_ms(), None);
        assert!(s.pop_due(T0 + 10 * MINUTE, 10).is_empty());

        // The freed slot is reused; the removed monitor's heap entry stays dead.
        s.upsert("a:1", MINUTE, 1, 'a', T0);
        assert!(s.remove("a:1"));
        s.upsert("b:2", MINUTE, 1, 'b', T0 + 1);
        let due = s.pop_due(T0 + 1, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].payload, 'b');
    }

    #[test]
    fn retain_applies_a_snapshot() {
        let mut s = Scheduler::new();
        for i in 0..10 {
            s.upsert(&format!("m{i}"), MINUTE, 1, i, T0);
        }
        let keep: HashSet<&str> = ["m1", "m4", "m7", "m9", "unknown"].into_iter().collect();
        s.retain(&keep);
        assert_eq!(s.len(), 4);
        assert!(s.contains("m4"));
        assert!(!s.contains("m5"));
        assert!(!s.contains("unknown"));
        let mut payloads: Vec<i32> = s
            .pop_due(T0 + MINUTE, usize::MAX)
            .into_iter()
            .map(|d| d.payload)
            .collect();
        payloads.sort();
        assert_eq!(payloads, [1, 4, 7, 9]);
    }

    #[test]
    fn late_pop_yields_one_check_per_monitor() {
        let interval = 10_000;
        let mut s = Scheduler::new();
        let ids: Vec<String> = (0..50).map(|i| format!("late-{i}")).collect();
        for id in &ids {
            s.upsert(id, interval, 1, (), T0);
        }
        assert_eq!(s.pop_due(T0, usize::MAX).len(), 50);

        let late = T0 + 10 * interval + 5;
        let due = s.pop_due(late, usize::MAX);
        assert_eq!(due.len(), 50);
        let distinct: HashSet<&str> = due.iter().map(|d| &*d.monitor_id).collect();
        assert_eq!(distinct.len(), 50);
        for d in &due {
            assert!(!d.immediate);
            assert_eq!(d.due_ms, next_aligned(&d.monitor_id, interval, T0));
        }
        assert!(s.pop_due(late, usize::MAX).is_empty());
        let next = s.next_due_ms().unwrap();
        assert!(next > late && next <= late + interval);
    }

    #[test]
    fn zero_and_tiny_intervals_do_not_panic() {
        assert!(phase_ms("x", 0) < MIN_INTERVAL_MS);
        assert_eq!(phase_ms("x", 0), phase_ms("x", MIN_INTERVAL_MS));
        let next = next_aligned("x", 0, T0);
        assert!(next > T0 && next <= T0 + MIN_INTERVAL_MS);
        assert_eq!(next_aligned("x", MINUTE, u64::MAX), u64::MAX);
        assert_eq!(next_aligned("mon-000001", MINUTE, 0), 52_718);

        let mut s = Scheduler::new();
        s.upsert("x", 0, 1, (), T0);
        s.upsert("y", 1, 1, (), T0);
        assert_eq!(s.pop_due(T0, 10).len(), 2);
        let next = s.next_due_ms().unwrap();
        assert!(next > T0 && next <= T0 + MIN_INTERVAL_MS);
    }

    #[test]
    fn churn_keeps_the_heap_bounded() {
        let mut s = Scheduler::new();
        for i in 0..10 {
            s.upsert(&format!("c{i}"), MINUTE, 0, (), T0);
        }
        let mut now = T0;
        for round in 0..20_000u64 {
            now += 1;
            let id = format!("c{}", round % 10);
            if round % 2 == 0 {
                s.check_now(&id, now);
            } else {
                s.upsert(&id, MINUTE, round, (), now);
            }
            s.pop_due(now, usize::MAX);
            assert!(s.heap.len() <= 2 * s.len() + COMPACT_SLACK + 1);
        }
        assert_eq!(s.len(), 10);
    }

    #[test]
    fn state_per_monitor_is_small() {
        use std::mem::size_of;
        let fixed = size_of::<Slot<()>>()
            + size_of::<HeapEntry>()
            + size_of::<(Arc<str>, usize)>()
            + 2 * size_of::<usize>(); // the id's Arc counters
        assert!(fixed <= 140, "{fixed} bytes per monitor");
    }

    #[test]
    fn hundred_thousand_monitors_each_once_per_interval() {
        let n = 100_000;
        let mut s = Scheduler::new();
        for i in 0..n {
            s.upsert(&format!("mon-{i}"), MINUTE, 1, i, T0);
        }
        assert_eq!(s.len(), n);
        let first = s.pop_due(T0, usize::MAX);
        assert_eq!(first.len(), n);
        assert!(first.iter().all(|d| d.immediate));

        for interval_index in 0..2u64 {
            let start = T0 + interval_index * MINUTE;
            let mut counts = vec![0u32; n];
            let mut now = start;
            let mut steps = 0;
            while now < start + MINUTE {
                now += 10;
                steps += 1;
                // The second interval pops in small batches, as the agent does.
                let max = if interval_index == 0 { usize::MAX } else { 64 };
                loop {
                    let batch = s.pop_due(now, max);
                    let popped = batch.len();
                    for due in batch {
                        assert!(!due.immediate);
                        assert!(due.due_ms <= now && due.due_ms > now - 10);
                        counts[due.payload] += 1;
                    }
                    if popped < max {
                        break;
                    }
                }
            }
            assert_eq!(steps, 6_000);
            assert!(counts.iter().all(|&c| c == 1));
            assert_eq!(s.heap.len(), n);
        }
    }
}
