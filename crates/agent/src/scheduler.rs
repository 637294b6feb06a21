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
mod tests;
