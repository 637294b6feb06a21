use super::assignments::gen_key;
use super::*;

fn result(monitor_id: &str, n: u64) -> v1::CheckResult {
    v1::CheckResult {
        monitor_id: monitor_id.to_string(),
        outcome: v1::Outcome::Ok as i32,
        detail: format!("check {n}"),
        address: "192.0.2.1:443".to_string(),
        connect_us: n,
        total_us: n,
        ..Default::default()
    }
}

fn results(from: u64, count: u64) -> Vec<v1::CheckResult> {
    (from..from + count).map(|n| result("m-1", n)).collect()
}

fn assignment(id: &str, generation: u64) -> v1::Assignment {
    v1::Assignment {
        monitor_id: id.to_string(),
        spec: Some(v1::CheckSpec {
            host: "example.net".to_string(),
            port: 443,
            timeout_ms: 3000,
            ..Default::default()
        }),
        interval_ms: 60_000,
        generation,
    }
}

fn details(pending: &[v1::SequencedResult]) -> Vec<String> {
    pending
        .iter()
        .map(|r| {
            r.result
                .as_ref()
                .map(|r| r.detail.clone())
                .unwrap_or_default()
        })
        .collect()
}

fn ids(assignments: &[v1::Assignment]) -> Vec<(&str, u64)> {
    assignments
        .iter()
        .map(|a| (a.monitor_id.as_str(), a.generation))
        .collect()
}

#[tokio::test]
async fn seqs_strictly_increase_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1000).unwrap();
    assert_eq!(spool.last_seq(), 0);
    assert_eq!(spool.append(&results(0, 3)).unwrap(), vec![1, 2, 3]);
    assert_eq!(spool.append(&results(3, 2)).unwrap(), vec![4, 5]);
    assert_eq!(spool.append(&[]).unwrap(), Vec::<u64>::new());
    spool.ack(5).unwrap();
    spool.flush().await.unwrap();
    drop(spool);

    // Even with nothing left in the spool, numbers are never reused.
    let spool = Spool::open(dir.path(), 1000).unwrap();
    assert_eq!(spool.last_seq(), 5);
    assert_eq!(spool.depth(), 0);
    assert_eq!(spool.append(&results(5, 2)).unwrap(), vec![6, 7]);
    assert_eq!(spool.last_seq(), 7);
}

#[tokio::test]
async fn numbers_continue_across_the_bound_acks_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 5).unwrap();
    assert_eq!(spool.append(&results(0, 3)).unwrap(), vec![1, 2, 3]);
    // Over the bound (the transaction path): numbering goes on from 4.
    assert_eq!(spool.append(&results(3, 4)).unwrap(), vec![4, 5, 6, 7]);
    assert_eq!(spool.dropped_total(), 2);
    // Over it again (3 goes): numbering still goes on.
    assert_eq!(spool.append(&results(7, 1)).unwrap(), vec![8]);
    assert_eq!(spool.dropped_total(), 3);
    // Some acknowledged, then a restart: the rest keep their numbers.
    spool.ack(5).unwrap();
    spool.flush().await.unwrap();
    drop(spool);
    let spool = Spool::open(dir.path(), 5).unwrap();
    assert_eq!(
        spool
            .pending(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![6, 7, 8]
    );
    assert_eq!(spool.append(&results(8, 1)).unwrap(), vec![9]);
    // All acknowledged, then a restart: nothing left to count from, and
    // still no number is issued twice.
    spool.ack(9).unwrap();
    spool.flush().await.unwrap();
    drop(spool);
    let spool = Spool::open(dir.path(), 5).unwrap();
    assert_eq!(spool.depth(), 0);
    assert_eq!(spool.append(&results(9, 2)).unwrap(), vec![10, 11]);
    assert_eq!(spool.dropped_total(), 3);
}

#[tokio::test]
async fn results_survive_reopen_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1000).unwrap();
    let batch = results(0, 500);
    spool.append(&batch).unwrap();
    spool.flush().await.unwrap();
    drop(spool);

    let spool = Spool::open(dir.path(), 1000).unwrap();
    assert_eq!(spool.depth(), 500);
    let pending = spool.pending(0, 1000).unwrap();
    assert_eq!(pending.len(), 500);
    for (i, (got, want)) in pending.iter().zip(&batch).enumerate() {
        assert_eq!(got.seq, i as u64 + 1);
        assert_eq!(got.result.as_ref(), Some(want));
    }
}

#[tokio::test]
async fn pending_reads_after_a_cursor_and_ack_is_cumulative_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1000).unwrap();
    spool.append(&results(1, 10)).unwrap();
    spool.flush().await.unwrap();

    let first = spool.pending(0, 4).unwrap();
    assert_eq!(
        first.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(details(&first)[0], "check 1");
    let next = spool.pending(4, 4).unwrap();
    assert_eq!(
        next.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![5, 6, 7, 8]
    );
    assert_eq!(spool.pending(8, 100).unwrap().len(), 2);
    assert!(spool.pending(10, 100).unwrap().is_empty());
    assert!(spool.pending(u64::MAX, 100).unwrap().is_empty());
    assert!(spool.pending(0, 0).unwrap().is_empty());

    // Reading does not consume.
    assert_eq!(spool.depth(), 10);
    assert_eq!(spool.ack(4).unwrap(), 4);
    assert_eq!(spool.depth(), 6);
    assert_eq!(spool.ack(4).unwrap(), 0);
    assert_eq!(spool.ack(2).unwrap(), 0);
    assert_eq!(spool.pending(0, 100).unwrap()[0].seq, 5);
    assert_eq!(spool.ack(7).unwrap(), 3);
    assert_eq!(
        spool
            .pending(0, 100)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert_eq!(spool.ack(10).unwrap(), 3);
    assert_eq!(spool.ack(10).unwrap(), 0);
    assert_eq!(spool.depth(), 0);
    assert_eq!(spool.last_seq(), 10);
}

#[test]
fn an_ack_beyond_the_last_issued_number_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1000).unwrap();
    spool.append(&results(0, 2)).unwrap();
    for bogus in [3, 100, u64::MAX] {
        let err = spool.ack(bogus).unwrap_err();
        assert!(
            matches!(err, SpoolError::AckBeyondIssued { up_to, last_seq: 2 } if up_to == bogus),
            "{err}"
        );
    }
    // Nothing was deleted, the counter did not move, and appends go on.
    assert_eq!(spool.depth(), 2);
    assert_eq!(spool.last_seq(), 2);
    assert_eq!(spool.append(&results(2, 1)).unwrap(), vec![3]);
    assert_eq!(spool.ack(3).unwrap(), 3);
}

#[tokio::test]
async fn bound_keeps_the_newest_and_counts_the_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 10).unwrap();
    for n in 0..25 {
        spool.append(&[result("m-1", n)]).unwrap();
    }
    assert_eq!(spool.depth(), 10);
    assert_eq!(spool.dropped_total(), 15);
    spool.flush().await.unwrap();
    let pending = spool.pending(0, 100).unwrap();
    assert_eq!(
        pending.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (16..=25).collect::<Vec<_>>()
    );
    assert_eq!(details(&pending)[0], "check 15");
    spool.flush().await.unwrap();
    drop(spool);

    let spool = Spool::open(dir.path(), 10).unwrap();
    assert_eq!(spool.depth(), 10);
    assert_eq!(spool.dropped_total(), 15);
    assert_eq!(spool.last_seq(), 25);
    assert_eq!(spool.pending(0, 100).unwrap()[0].seq, 16);
}

#[tokio::test]
async fn bound_applies_within_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 10).unwrap();
    spool.append(&results(0, 4)).unwrap();
    // 4 held + 25 new: the 4 old ones and the 15 oldest new ones go.
    let seqs = spool.append(&results(4, 25)).unwrap();
    spool.flush().await.unwrap();
    assert_eq!(seqs, (5..=29).collect::<Vec<_>>());
    assert_eq!(spool.depth(), 10);
    assert_eq!(spool.dropped_total(), 19);
    let pending = spool.pending(0, 100).unwrap();
    assert_eq!(
        pending.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (20..=29).collect::<Vec<_>>()
    );
    assert_eq!(details(&pending)[0], "check 19");
}

#[tokio::test]
async fn bound_lowered_on_reopen_trims_on_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 100).unwrap();
    spool.append(&results(0, 20)).unwrap();
    drop(spool);

    let spool = Spool::open(dir.path(), 5).unwrap();
    assert_eq!(spool.depth(), 20);
    spool.append(&results(20, 1)).unwrap();
    spool.flush().await.unwrap();
    assert_eq!(spool.depth(), 5);
    assert_eq!(spool.dropped_total(), 16);
    assert_eq!(spool.pending(0, 100).unwrap()[0].seq, 17);
}

#[test]
fn zero_bound_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = Spool::open(dir.path(), 0).unwrap_err();
    assert!(err.to_string().contains("max_results"), "{err}");
}

#[tokio::test]
async fn assignments_snapshot_replaces_update_patches_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 10).unwrap();
    assert_eq!(spool.assignments().unwrap(), (0, Vec::new()));

    spool
        .save_snapshot(&v1::AssignmentSnapshot {
            assignments: vec![assignment("a", 1), assignment("b", 1)],
            revision: 7,
        })
        .unwrap();
    let (revision, got) = spool.assignments().unwrap();
    assert_eq!(revision, 7);
    assert_eq!(ids(&got), vec![("a", 1), ("b", 1)]);
    assert_eq!(got[0], assignment("a", 1));

    // A snapshot replaces: "a" is gone.
    spool
        .save_snapshot(&v1::AssignmentSnapshot {
            assignments: vec![assignment("b", 2), assignment("c", 1)],
            revision: 9,
        })
        .unwrap();
    let (revision, got) = spool.assignments().unwrap();
    assert_eq!(revision, 9);
    assert_eq!(ids(&got), vec![("b", 2), ("c", 1)]);

    // An update upserts and removes; removing an unknown id is fine.
    spool
        .apply_update(&v1::AssignmentUpdate {
            upserts: vec![assignment("c", 2), assignment("d", 1)],
            removals: vec!["b".into(), "zz".into()],
            revision: 10,
        })
        .unwrap();
    spool.flush().await.unwrap();
    drop(spool);

    let spool = Spool::open(dir.path(), 10).unwrap();
    let (revision, got) = spool.assignments().unwrap();
    assert_eq!(revision, 10);
    assert_eq!(ids(&got), vec![("c", 2), ("d", 1)]);

    // An empty snapshot clears the set.
    spool
        .save_snapshot(&v1::AssignmentSnapshot {
            assignments: Vec::new(),
            revision: 11,
        })
        .unwrap();
    assert_eq!(spool.assignments().unwrap(), (11, Vec::new()));
}

fn many(range: std::ops::Range<usize>, generation: u64) -> Vec<v1::Assignment> {
    range
        .map(|i| assignment(&format!("m{i:06}"), generation))
        .collect()
}

#[tokio::test]
async fn a_snapshot_of_many_chunks_and_a_long_update_log_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 10).unwrap();
    let n = CHUNK_ASSIGNMENTS * 2 + 7;
    spool
        .save_snapshot(&v1::AssignmentSnapshot {
            assignments: many(0..n, 1),
            revision: 1,
        })
        .unwrap();
    assert_eq!(
        spool.trees().unwrap().assign_base.len(),
        3,
        "one key per chunk, not per monitor"
    );
    let (revision, got) = spool.assignments().unwrap();
    assert_eq!((revision, got), (1, many(0..n, 1)));

    // More updates than the log holds: each moves one monitor to
    // generation 2 and removes another; the log is folded on the way.
    let updates = usize::try_from(LOG_MAX_ENTRIES).unwrap() + 10;
    for i in 0..updates {
        spool
            .apply_update(&v1::AssignmentUpdate {
                upserts: vec![assignment(&format!("m{i:06}"), 2)],
                removals: vec![format!("m{:06}", n - 1 - i)],
                revision: 2 + i as u64,
            })
            .unwrap();
    }
    assert!(
        spool.trees().unwrap().assign_log.len() < 20,
        "the log was folded into a new base"
    );
    let expected: Vec<v1::Assignment> = many(0..updates, 2)
        .into_iter()
        .chain(many(updates..n - updates, 1))
        .collect();
    let last_revision = 1 + updates as u64;
    assert_eq!(
        spool.assignments().unwrap(),
        (last_revision, expected.clone())
    );
    assert_eq!(spool.revision().unwrap(), last_revision);
    spool.flush().await.unwrap();
    drop(spool);

    let spool = Spool::open(dir.path(), 10).unwrap();
    assert_eq!(spool.assignments().unwrap(), (last_revision, expected));
    // Only the current generation is left on disk.
    let generation = spool.shared.state.generation.load(Ordering::Relaxed);
    for key in spool.trees().unwrap().assign_base.iter().keys() {
        assert!(key.unwrap().starts_with(&generation.to_be_bytes()));
    }
}

#[tokio::test]
async fn leftovers_of_an_interrupted_save_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 10).unwrap();
    spool
        .save_snapshot(&v1::AssignmentSnapshot {
            assignments: many(0..3, 1),
            revision: 5,
        })
        .unwrap();
    // A crash after writing the next generation's chunks, before it
    // became current: the chunks are there, the meta flip is not.
    let generation = spool.shared.state.generation.load(Ordering::Relaxed);
    let orphan = v1::AssignmentSnapshot {
        assignments: many(100..200, 9),
        revision: 6,
    };
    let trees = spool.trees().unwrap();
    trees
        .assign_base
        .insert(gen_key(generation + 1, 0), orphan.encode_to_vec())
        .unwrap();
    trees
        .assign_log
        .insert(gen_key(generation + 1, 0), b"not even protobuf".to_vec())
        .unwrap();
    drop(trees);
    spool.flush().await.unwrap();
    drop(spool);

    let spool = Spool::open(dir.path(), 10).unwrap();
    assert_eq!(spool.assignments().unwrap(), (5, many(0..3, 1)));
    assert_eq!(spool.trees().unwrap().assign_base.len(), 1);
    assert_eq!(spool.trees().unwrap().assign_log.len(), 0);
}

#[tokio::test]
async fn a_spool_cached_one_key_per_monitor_is_converted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The layout written before chunks.
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let legacy = db.open_tree(LEGACY_ASSIGNMENTS).unwrap();
        for a in many(0..50, 3) {
            legacy
                .insert(a.monitor_id.as_bytes(), a.encode_to_vec())
                .unwrap();
        }
        db.open_tree(META)
            .unwrap()
            .insert(REVISION, &42u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let spool = Spool::open(dir.path(), 10).unwrap();
    assert_eq!(spool.assignments().unwrap(), (42, many(0..50, 3)));
    assert!(
        !spool
            .trees()
            .unwrap()
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == LEGACY_ASSIGNMENTS.as_bytes()),
        "the old tree is dropped"
    );
    drop(spool);
    let spool = Spool::open(dir.path(), 10).unwrap();
    assert_eq!(spool.assignments().unwrap(), (42, many(0..50, 3)));
}

#[test]
fn bad_assignment_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 10).unwrap();
    spool
        .save_snapshot(&v1::AssignmentSnapshot {
            assignments: vec![assignment("a", 1)],
            revision: 3,
        })
        .unwrap();
    let err = spool
        .apply_update(&v1::AssignmentUpdate {
            upserts: vec![assignment("b", 1), assignment("", 1)],
            removals: vec!["a".into()],
            revision: 4,
        })
        .unwrap_err();
    assert!(err.to_string().contains("assignment.monitor_id"), "{err}");
    let (revision, got) = spool.assignments().unwrap();
    assert_eq!(revision, 3);
    assert_eq!(ids(&got), vec![("a", 1)]);
}

#[test]
fn agent_id_is_stable_and_configured_id_wins() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 10).unwrap();
    let generated = spool.agent_id(None).unwrap();
    let hex = generated.strip_prefix("agent-").unwrap();
    assert_eq!(hex.len(), 16);
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{generated}");
    assert_eq!(spool.agent_id(None).unwrap(), generated);
    drop(spool);

    let spool = Spool::open(dir.path(), 10).unwrap();
    assert_eq!(spool.agent_id(None).unwrap(), generated);
    assert_eq!(spool.agent_id(Some("edge-fra-1")).unwrap(), "edge-fra-1");
    assert!(spool.agent_id(Some("  ")).is_err());
    drop(spool);

    // The configured id was persisted.
    let spool = Spool::open(dir.path(), 10).unwrap();
    assert_eq!(spool.agent_id(None).unwrap(), "edge-fra-1");
}

#[test]
fn clones_share_counters() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 100).unwrap();
    let other = spool.clone();
    spool.append(&results(0, 3)).unwrap();
    assert_eq!(other.depth(), 3);
    assert_eq!(other.append(&results(3, 1)).unwrap(), vec![4]);
    assert_eq!(spool.last_seq(), 4);
}

#[tokio::test]
async fn pending_hands_out_durable_results_only() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 100).unwrap();
    spool.append(&results(0, 3)).unwrap();
    // Appended, not yet flushed: a crash could still lose them, so they are
    // not handed out to be sent (an acknowledgement of them could outlive them).
    assert!(spool.pending(0, 10).unwrap().is_empty());
    assert_eq!(spool.durable_seq(), 0);
    spool.flush().await.unwrap();
    assert_eq!(spool.durable_seq(), 3);
    spool.append(&results(3, 2)).unwrap();
    let seqs: Vec<u64> = spool
        .pending(0, 10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    spool.flush().await.unwrap();
    assert_eq!(spool.pending(3, 10).unwrap().len(), 2);
}

#[tokio::test]
async fn reopen_reads_back_what_was_durable_and_numbering_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 100).unwrap();
    let other = spool.clone();
    spool.append(&results(0, 5)).unwrap();
    spool.ack(2).unwrap();
    spool.flush().await.unwrap();
    spool
        .save_snapshot(&v1::AssignmentSnapshot {
            assignments: vec![assignment("a", 1)],
            revision: 4,
        })
        .unwrap();
    spool.flush().await.unwrap();
    spool.count_unstored(7);
    assert_eq!(spool.epoch(), 0);

    spool.reopen().unwrap();
    // Every clone sees the new handles and the numbers read back.
    assert_eq!(other.epoch(), 1);
    assert_eq!(other.depth(), 3);
    assert_eq!((other.last_seq(), other.durable_seq()), (5, 5));
    assert_eq!(other.unstored_total(), 7, "counted in memory, kept");
    assert_eq!(other.assignments().unwrap(), (4, vec![assignment("a", 1)]));
    assert_eq!(
        other
            .pending(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(other.append(&results(5, 1)).unwrap(), vec![6]);
    other.flush().await.unwrap();
    assert_eq!(other.fault(), None);
    drop((spool, other));

    // The count of results that could not be stored was written with that append.
    let spool = Spool::open(dir.path(), 100).unwrap();
    assert_eq!(spool.unstored_total(), 7);
    assert_eq!(spool.last_seq(), 6);
}
