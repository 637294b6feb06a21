//! The agent's local durable state: a sled database in the agent's data dir.
//!
//! The coordinator can be away for minutes and the agent can be restarted at any
//! time; neither may lose a result silently or stop the probing. So every result
//! is written here before it is sent and deleted only once the coordinator has
//! acknowledged it, and the assignments are cached here so that a restarted agent
//! keeps probing while the coordinator is unreachable.
//!
//! Guarantees:
//! - Sequence numbers are per agent, start at 1, strictly increase and are never
//!   reused, across restarts: the counter is written in the same sled
//!   transaction as the results it numbers. An acknowledgement beyond the last
//!   issued number (the data dir was wiped under a configured agent id) moves
//!   the counter past it, since the coordinator skips numbers it has acknowledged.
//! - A result stays until a cumulative [`Spool::ack`] covers it, or until the
//!   spool holds more than its bound; then the oldest results go first, are
//!   counted in a persisted `dropped_total`, and a warning is logged.
//! - [`Spool::append`] is atomic but not durable on its own: [`Spool::flush`]
//!   makes everything written so far durable (sled also flushes in the
//!   background about every 500 ms).
//! - The cached assignment set and its revision change atomically: a snapshot
//!   replaces the whole set, an update patches it.
//! - The agent id is generated once and persisted; a configured id wins.
//!
//! Layout: tree `results` (seq, 8 bytes big-endian → prost `v1::CheckResult`),
//! tree `assignments` (monitor id → prost `v1::Assignment`) and tree `meta`
//! (`next_seq`, `dropped_total`, `revision` as 8 bytes big-endian; `agent_id`
//! as UTF-8).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use portwatch_proto::v1;
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Batch, Db, IVec, Tree};

const RESULTS: &str = "results";
const ASSIGNMENTS: &str = "assignments";
const META: &str = "meta";

const NEXT_SEQ: &[u8] = b"next_seq";
const DROPPED_TOTAL: &[u8] = b"dropped_total";
const AGENT_ID: &[u8] = b"agent_id";
const REVISION: &[u8] = b"revision";

/// How long `open` waits for a previous handle on the same dir to let go.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Assignments checked and encoded: (monitor id, prost bytes).
type EncodedAssignments = Vec<(Vec<u8>, Vec<u8>)>;

/// Errors from the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("spool: corrupt record {key} in tree {tree}: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("spool: invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<TransactionError<SpoolError>> for SpoolError {
    fn from(e: TransactionError<SpoolError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => SpoolError::Sled(e),
        }
    }
}

/// The agent's spool of unacknowledged results and cached assignments.
///
/// Cheap to clone: clones share the sled handles and the counters.
#[derive(Clone, Debug)]
pub struct Spool {
    db: Db,
    results: Tree,
    assignments: Tree,
    meta: Tree,
    max_results: u64,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    // Serialises writers: sled transactions cannot iterate, so the oldest keys to
    // drop (and stale assignments) are read before the transaction, and no
    // other writer may change the trees in between.
    write: Mutex<()>,
    // Mirrors of what is on disk, kept because sled's `Tree::len` walks the tree.
    depth: AtomicU64,
    next_seq: AtomicU64,
    dropped_total: AtomicU64,
}

impl Spool {
    /// Opens or creates the spool in `dir`, holding at most `max_results`
    /// unacknowledged results.
    ///
    /// sled releases its file lock a little after a previous handle drops (even
    /// in the same process), so a lock conflict is retried for up to 5 s.
    pub fn open(dir: &Path, max_results: u64) -> Result<Spool, SpoolError> {
        if max_results == 0 {
            return Err(SpoolError::Invalid {
                field: "max_results",
                reason: "must be at least 1".into(),
            });
        }
        let db = open_db(dir)?;
        let results = db.open_tree(RESULTS)?;
        let assignments = db.open_tree(ASSIGNMENTS)?;
        let meta = db.open_tree(META)?;

        let stored_next = get_u64(&meta, NEXT_SEQ)?.unwrap_or(1);
        // The counter is written with the results, so this only matters if the
        // meta tree was lost: never issue a number that is still in the spool.
        let after_last = match results.last()? {
            Some((k, _)) => seq_of(&k)?.saturating_add(1),
            None => 1,
        };
        let next_seq = stored_next.max(after_last);
        let dropped_total = get_u64(&meta, DROPPED_TOTAL)?.unwrap_or(0);
        // One walk at open; the mirror is kept exact from here on.
        let depth = u64::try_from(results.len()).unwrap_or(u64::MAX);

        Ok(Spool {
            db,
            results,
            assignments,
            meta,
            max_results,
            state: Arc::new(State {
                write: Mutex::new(()),
                depth: AtomicU64::new(depth),
                next_seq: AtomicU64::new(next_seq),
                dropped_total: AtomicU64::new(dropped_total),
            }),
        })
    }

    /// This installation's agent id.
    ///
    /// `configured` wins when given (and is persisted); otherwise the stored id,
    /// or, on first use, a new `agent-` + 16 random hex digits, flushed at once
    /// so the id the coordinator sees never changes.
    pub fn agent_id(&self, configured: Option<&str>) -> Result<String, SpoolError> {
        if let Some(id) = configured {
            if id.trim().is_empty() {
                return Err(SpoolError::Invalid {
                    field: "agent_id",
                    reason: "must not be empty".into(),
                });
            }
            if self.meta.get(AGENT_ID)?.as_deref() != Some(id.as_bytes()) {
                self.meta.insert(AGENT_ID, id.as_bytes())?;
                self.db.flush()?;
            }
            return Ok(id.to_string());
        }
        if let Some(stored) = self.meta.get(AGENT_ID)? {
            return id_of(&stored);
        }
        let fresh = format!("agent-{:016x}", rand::random::<u64>());
        // Compare-and-swap: two callers racing on first use agree on one id.
        match self
            .meta
            .compare_and_swap(AGENT_ID, None as Option<&[u8]>, Some(fresh.as_bytes()))?
        {
            Ok(()) => {
                self.db.flush()?;
                tracing::info!(agent_id = %fresh, "generated a new agent id");
                Ok(fresh)
            }
            Err(cas) => match cas.current {
                Some(current) => id_of(&current),
                None => Err(SpoolError::Corrupt {
                    tree: META,
                    key: "agent_id".into(),
                    reason: "vanished while being set".into(),
                }),
            },
        }
    }

    /// Appends `results`, giving each the next sequence number, and returns the
    /// numbers in order.
    ///
    /// The results and the counter are written in one transaction. Over the
    /// bound, the oldest unacknowledged results (possibly the oldest of this
    /// batch) are deleted, counted in `dropped_total` and logged. Not flushed.
    pub fn append(&self, results: &[v1::CheckResult]) -> Result<Vec<u64>, SpoolError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let _writer = self.lock();
        let n = u64::try_from(results.len()).unwrap_or(u64::MAX);
        let depth = self.state.depth.load(Ordering::Relaxed);
        let overflow = depth.saturating_add(n).saturating_sub(self.max_results);
        let old_keys: Vec<IVec> = self
            .results
            .iter()
            .keys()
            .take(usize::try_from(overflow.min(depth)).unwrap_or(usize::MAX))
            .collect::<Result<_, _>>()?;
        let dropped_old = u64::try_from(old_keys.len()).unwrap_or(u64::MAX);
        // When the batch alone is over the bound, its oldest are never stored.
        let skip_new = overflow.saturating_sub(dropped_old).min(n);
        let dropped = dropped_old + skip_new;
        let encoded: Vec<Vec<u8>> = results
            .iter()
            .skip(usize::try_from(skip_new).unwrap_or(usize::MAX))
            .map(Message::encode_to_vec)
            .collect();

        let (first, dropped_total) = (&self.results, &self.meta).transaction(|(rt, mt)| {
            let first = match mt.get(NEXT_SEQ)? {
                Some(v) => u64_of(META, NEXT_SEQ, &v).map_err(abort)?,
                None => 1,
            };
            let next = first.checked_add(n).ok_or_else(|| {
                abort(SpoolError::Invalid {
                    field: "seq",
                    reason: "sequence numbers exhausted".into(),
                })
            })?;
            for key in &old_keys {
                rt.remove(key)?;
            }
            for (seq, bytes) in (first + skip_new..).zip(&encoded) {
                rt.insert(&seq.to_be_bytes(), bytes.as_slice())?;
            }
            mt.insert(NEXT_SEQ, &next.to_be_bytes())?;
            let mut dropped_total = match mt.get(DROPPED_TOTAL)? {
                Some(v) => u64_of(META, DROPPED_TOTAL, &v).map_err(abort)?,
                None => 0,
            };
            if dropped > 0 {
                dropped_total = dropped_total.saturating_add(dropped);
                mt.insert(DROPPED_TOTAL, &dropped_total.to_be_bytes())?;
            }
            Ok((first, dropped_total))
        })?;

        let stored = n - skip_new;
        self.state
            .depth
            .store(depth - dropped_old + stored, Ordering::Relaxed);
        self.state.next_seq.store(first + n, Ordering::Relaxed);
        self.state
            .dropped_total
            .store(dropped_total, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                dropped_total,
                max_results = self.max_results,
                "spool full: dropped the oldest unacknowledged results"
            );
        }
        Ok((first..first + n).collect())
    }

    /// Makes everything appended or saved so far durable.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Up to `limit` unacknowledged results with `seq > after`, oldest first.
    pub fn pending(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<v1::SequencedResult>, SpoolError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.results
            .range(start.to_be_bytes()..)
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                let seq = seq_of(&key)?;
                let result = v1::CheckResult::decode(&*value).map_err(|e| SpoolError::Corrupt {
                    tree: RESULTS,
                    key: seq.to_string(),
                    reason: e.to_string(),
                })?;
                Ok(v1::SequencedResult {
                    seq,
                    result: Some(result),
                })
            })
            .collect()
    }

    /// Deletes every result with `seq <= up_to` (a cumulative acknowledgement)
    /// and returns how many were removed. Acknowledging again removes nothing.
    pub fn ack(&self, up_to: u64) -> Result<usize, SpoolError> {
        let _writer = self.lock();
        let next_seq = self.state.next_seq.load(Ordering::Relaxed);
        if up_to >= next_seq {
            // The coordinator treats seq <= up_to as duplicates: never issue them.
            let raised = up_to.saturating_add(1);
            self.meta.insert(NEXT_SEQ, &raised.to_be_bytes())?;
            self.state.next_seq.store(raised, Ordering::Relaxed);
            tracing::warn!(
                up_to,
                last_seq = next_seq.saturating_sub(1),
                "acknowledgement beyond the last issued sequence number; skipping ahead"
            );
        }
        let keys: Vec<IVec> = self
            .results
            .range(..=up_to.to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::default();
        for key in &keys {
            batch.remove(key);
        }
        self.results.apply_batch(batch)?;
        let removed = u64::try_from(keys.len()).unwrap_or(u64::MAX);
        let depth = self.state.depth.load(Ordering::Relaxed);
        self.state
            .depth
            .store(depth.saturating_sub(removed), Ordering::Relaxed);
        Ok(keys.len())
    }

    /// Unacknowledged results held now.
    pub fn depth(&self) -> u64 {
        self.state.depth.load(Ordering::Relaxed)
    }

    /// Results dropped for the bound since this spool was created.
    pub fn dropped_total(&self) -> u64 {
        self.state.dropped_total.load(Ordering::Relaxed)
    }

    /// The highest sequence number ever issued (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.state
            .next_seq
            .load(Ordering::Relaxed)
            .saturating_sub(1)
    }

    /// Replaces the cached assignment set and its revision with `snapshot`.
    /// Not flushed.
    pub fn save_snapshot(&self, snapshot: &v1::AssignmentSnapshot) -> Result<(), SpoolError> {
        let upserts = encode_assignments(&snapshot.assignments)?;
        let keep: HashSet<&[u8]> = upserts.iter().map(|(k, _)| k.as_slice()).collect();
        let _writer = self.lock();
        let stale: Vec<IVec> = self
            .assignments
            .iter()
            .keys()
            .filter(|k| k.as_ref().map_or(true, |k| !keep.contains(k.as_ref())))
            .collect::<Result<_, _>>()?;
        self.write_assignments(&upserts, &stale, snapshot.revision)
    }

    /// Applies `update` to the cached assignment set: upserts, then removals
    /// (an id in both ends up removed), then the new revision. Not flushed.
    pub fn apply_update(&self, update: &v1::AssignmentUpdate) -> Result<(), SpoolError> {
        let upserts = encode_assignments(&update.upserts)?;
        let removals: Vec<IVec> = update
            .removals
            .iter()
            .map(|id| IVec::from(id.as_bytes()))
            .collect();
        let _writer = self.lock();
        self.write_assignments(&upserts, &removals, update.revision)
    }

    /// The cached revision (0 = none) and assignments, ordered by monitor id.
    pub fn assignments(&self) -> Result<(u64, Vec<v1::Assignment>), SpoolError> {
        let revision = get_u64(&self.meta, REVISION)?.unwrap_or(0);
        let assignments = self
            .assignments
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                v1::Assignment::decode(&*value).map_err(|e| SpoolError::Corrupt {
                    tree: ASSIGNMENTS,
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((revision, assignments))
    }

    fn write_assignments(
        &self,
        upserts: &[(Vec<u8>, Vec<u8>)],
        removals: &[IVec],
        revision: u64,
    ) -> Result<(), SpoolError> {
        (&self.assignments, &self.meta).transaction(|(at, mt)| {
            for (key, value) in upserts {
                at.insert(key.as_slice(), value.as_slice())?;
            }
            for key in removals {
                at.remove(key)?;
            }
            mt.insert(REVISION, &revision.to_be_bytes())?;
            Ok(())
        })?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panicking holder leaves nothing half-done
        // in memory, and sled transactions are all-or-nothing.
        self.state
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn open_db(dir: &Path) -> Result<Db, SpoolError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if Instant::now() < deadline
                    && e.to_string().contains("could not acquire lock") =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Checks and encodes assignments up front, so bad input changes nothing.
fn encode_assignments(assignments: &[v1::Assignment]) -> Result<EncodedAssignments, SpoolError> {
    assignments
        .iter()
        .map(|a| {
            if a.monitor_id.is_empty() {
                return Err(SpoolError::Invalid {
                    field: "assignment.monitor_id",
                    reason: "must not be empty".into(),
                });
            }
            Ok((a.monitor_id.as_bytes().to_vec(), a.encode_to_vec()))
        })
        .collect()
}

fn abort(e: SpoolError) -> ConflictableTransactionError<SpoolError> {
    ConflictableTransactionError::Abort(e)
}

fn get_u64(tree: &Tree, key: &'static [u8]) -> Result<Option<u64>, SpoolError> {
    tree.get(key)?.map(|v| u64_of(META, key, &v)).transpose()
}

fn u64_of(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<u64, SpoolError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| SpoolError::Corrupt {
            tree,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: format!("expected 8 bytes, found {}", bytes.len()),
        })
}

fn seq_of(key: &[u8]) -> Result<u64, SpoolError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| SpoolError::Corrupt {
            tree: RESULTS,
            key: format!("{key:02x?}"),
            reason: format!("expected an 8-byte key, found {} bytes", key.len()),
        })
}

fn id_of(bytes: &[u8]) -> Result<String, SpoolError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| SpoolError::Corrupt {
        tree: META,
        key: "agent_id".into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn pending_reads_after_a_cursor_and_ack_is_cumulative_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1000).unwrap();
        spool.append(&results(1, 10)).unwrap();

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
    fn ack_beyond_last_seq_moves_the_counter_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1000).unwrap();
        spool.append(&results(0, 2)).unwrap();
        assert_eq!(spool.ack(100).unwrap(), 2);
        assert_eq!(spool.last_seq(), 100);
        assert_eq!(spool.append(&results(2, 1)).unwrap(), vec![101]);
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

    #[test]
    fn bound_applies_within_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        spool.append(&results(0, 4)).unwrap();
        // 4 held + 25 new: the 4 old ones and the 15 oldest new ones go.
        let seqs = spool.append(&results(4, 25)).unwrap();
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

    #[test]
    fn bound_lowered_on_reopen_trims_on_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 100).unwrap();
        spool.append(&results(0, 20)).unwrap();
        drop(spool);

        let spool = Spool::open(dir.path(), 5).unwrap();
        assert_eq!(spool.depth(), 20);
        spool.append(&results(20, 1)).unwrap();
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
}
