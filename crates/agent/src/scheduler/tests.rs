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
