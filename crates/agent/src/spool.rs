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
//!   replaces the whole set, an update patches it. Saving a snapshot of any
//!   size holds at most one chunk of it encoded at a time.
//! - The agent id is generated once and persisted; a configured id wins.
//!
//! Layout: tree `results` (seq, 8 bytes big-endian → prost `v1::CheckResult`);
//! the assignment set as a base and a log, both keyed by a generation (8 bytes
//! big-endian) and a number (8 bytes): tree `assignment_base` (chunk number →
//! prost `v1::AssignmentSnapshot` holding up to [`CHUNK_ASSIGNMENTS`]
//! assignments) and tree `assignment_log` (entry number → prost
//! `v1::AssignmentUpdate`, replayed over the base in order); tree `meta`
//! (`next_seq`, `dropped_total`, `revision`, `assignment_generation` as 8 bytes
//! big-endian; `agent_id` as UTF-8). One sled key per chunk rather than per
//! monitor: a snapshot of 100k assignments written key by key in one sled
//! transaction held ≈ 5 KB of heap per monitor (see BENCHMARKS.md, figure 3).
//! Spools written before this layout (tree `assignments`, monitor id → prost
//! `v1::Assignment`) are converted at open.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use portwatch_proto::v1;
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Batch, Db, IVec, Tree};

const RESULTS: &str = "results";
/// The layout before chunks: one key per monitor (converted at open).
const LEGACY_ASSIGNMENTS: &str = "assignments";
const ASSIGN_BASE: &str = "assignment_base";
const ASSIGN_LOG: &str = "assignment_log";
const META: &str = "meta";

const NEXT_SEQ: &[u8] = b"next_seq";
const DROPPED_TOTAL: &[u8] = b"dropped_total";
const AGENT_ID: &[u8] = b"agent_id";
const REVISION: &[u8] = b"revision";
const ASSIGN_GENERATION: &[u8] = b"assignment_generation";

/// Assignments per base chunk (≈ 70 B each encoded: chunks of ≈ 140 KB).
pub const CHUNK_ASSIGNMENTS: usize = 2048;
/// Updates logged before they are folded into a new base.
pub const LOG_MAX_ENTRIES: u64 = 1024;
/// A log smaller than this is never folded for its size alone.
const LOG_MIN_FOLD_BYTES: u64 = 256 * 1024;
/// Keys deleted per sled batch when a generation is dropped.
const REMOVE_BATCH: usize = 4096;

/// How long `open` waits for a previous handle on the same dir to let go.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Errors from the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    // Not a `source`: the message already carries sled's, and `{:#}` would
    // print it twice.
    #[error("spool storage: {0}")]
    Sled(sled::Error),
    /// The directory (the field) is shown by the caller's context.
    #[error(
        "another agent is using this directory (its spool is locked): stop that agent, \
         or give each agent a data_dir of its own"
    )]
    Locked(std::path::PathBuf),
    #[error("spool: corrupt record {key} in tree {tree}: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("spool: invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<sled::Error> for SpoolError {
    fn from(e: sled::Error) -> Self {
        SpoolError::Sled(e)
    }
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
    assign_base: Tree,
    assign_log: Tree,
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
    // The current assignment generation and the size of its base and log.
    generation: AtomicU64,
    base_bytes: AtomicU64,
    log_entries: AtomicU64,
    log_bytes: AtomicU64,
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
        let assign_base = db.open_tree(ASSIGN_BASE)?;
        let assign_log = db.open_tree(ASSIGN_LOG)?;
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

        let generation = get_u64(&meta, ASSIGN_GENERATION)?.unwrap_or(0);
        // Leftovers of a save or a fold that a crash interrupted.
        remove_other_generations(&assign_base, generation)?;
        remove_other_generations(&assign_log, generation)?;
        let base_bytes = byte_size(assign_base.scan_prefix(generation.to_be_bytes()))?;
        let log_bytes = byte_size(assign_log.scan_prefix(generation.to_be_bytes()))?;
        let log_entries = match assign_log.scan_prefix(generation.to_be_bytes()).last() {
            Some(entry) => entry_of(ASSIGN_LOG, &entry?.0)?.saturating_add(1),
            None => 0,
        };

        let spool = Spool {
            db,
            results,
            assign_base,
            assign_log,
            meta,
            max_results,
            state: Arc::new(State {
                write: Mutex::new(()),
                depth: AtomicU64::new(depth),
                next_seq: AtomicU64::new(next_seq),
                dropped_total: AtomicU64::new(dropped_total),
                generation: AtomicU64::new(generation),
                base_bytes: AtomicU64::new(base_bytes),
                log_entries: AtomicU64::new(log_entries),
                log_bytes: AtomicU64::new(log_bytes),
            }),
        };
        spool.convert_legacy_assignments()?;
        Ok(spool)
    }

    /// Moves a set cached one key per monitor (the layout before chunks) into
    /// a generation, then drops the old tree. The old tree is deleted only
    /// after the new generation is current, so a crash in between converts
    /// again at the next open.
    fn convert_legacy_assignments(&self) -> Result<(), SpoolError> {
        if !self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == LEGACY_ASSIGNMENTS.as_bytes())
        {
            return Ok(());
        }
        let legacy = self.db.open_tree(LEGACY_ASSIGNMENTS)?;
        let set: Vec<v1::Assignment> = legacy
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                v1::Assignment::decode(&*value).map_err(|e| SpoolError::Corrupt {
                    tree: LEGACY_ASSIGNMENTS,
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        if !set.is_empty() {
            let revision = get_u64(&self.meta, REVISION)?.unwrap_or(0);
            let _writer = self.lock();
            self.replace_assignments(&set, revision)?;
            tracing::info!(
                assignments = set.len(),
                "converted the cached assignments to the chunked layout"
            );
        }
        drop(legacy);
        self.db.drop_tree(LEGACY_ASSIGNMENTS)?;
        self.db.flush()?;
        Ok(())
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
        drop(_writer);
        // In bounded batches, letting appends in between: a backlog
        // acknowledged at once after a reconnect can be 100k results.
        let mut removed = 0;
        loop {
            let _writer = self.lock();
            let keys: Vec<IVec> = self
                .results
                .range(..=up_to.to_be_bytes())
                .keys()
                .take(REMOVE_BATCH)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                return Ok(removed);
            }
            let mut batch = Batch::default();
            for key in &keys {
                batch.remove(key);
            }
            self.results.apply_batch(batch)?;
            let n = u64::try_from(keys.len()).unwrap_or(u64::MAX);
            let depth = self.state.depth.load(Ordering::Relaxed);
            self.state
                .depth
                .store(depth.saturating_sub(n), Ordering::Relaxed);
            removed += keys.len();
        }
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
    ///
    /// The set is written as a new generation of chunks, then one small batch
    /// on `meta` makes it current, then the previous generation is deleted: a
    /// crash anywhere leaves either the old set or the new one (leftovers of
    /// the other are removed at open), and memory stays bounded by a chunk.
    pub fn save_snapshot(&self, snapshot: &v1::AssignmentSnapshot) -> Result<(), SpoolError> {
        check_assignments(&snapshot.assignments)?;
        let _writer = self.lock();
        self.replace_assignments(&snapshot.assignments, snapshot.revision)
    }

    /// Applies `update` to the cached assignment set: upserts, then removals
    /// (an id in both ends up removed), then the new revision. Not flushed.
    ///
    /// The update is appended to the current generation's log with the new
    /// revision in one transaction; a log grown past [`LOG_MAX_ENTRIES`] or
    /// past the size of the base is folded into a new generation.
    pub fn apply_update(&self, update: &v1::AssignmentUpdate) -> Result<(), SpoolError> {
        check_assignments(&update.upserts)?;
        let encoded = update.encode_to_vec();
        let _writer = self.lock();
        let generation = self.state.generation.load(Ordering::Relaxed);
        let entry = self.state.log_entries.load(Ordering::Relaxed);
        let key = gen_key(generation, entry);
        (&self.assign_log, &self.meta).transaction(|(lt, mt)| {
            lt.insert(&key, encoded.as_slice())?;
            mt.insert(REVISION, &update.revision.to_be_bytes())?;
            Ok(())
        })?;
        self.state.log_entries.store(entry + 1, Ordering::Relaxed);
        let log_bytes = self
            .state
            .log_bytes
            .fetch_add(encoded.len() as u64, Ordering::Relaxed)
            + encoded.len() as u64;
        let base_bytes = self.state.base_bytes.load(Ordering::Relaxed);
        if entry + 1 >= LOG_MAX_ENTRIES || log_bytes > base_bytes.max(LOG_MIN_FOLD_BYTES) {
            let (revision, set) = self.read_assignments()?;
            self.replace_assignments(&set, revision)?;
        }
        Ok(())
    }

    /// The cached revision (0 = none).
    pub fn revision(&self) -> Result<u64, SpoolError> {
        Ok(get_u64(&self.meta, REVISION)?.unwrap_or(0))
    }

    /// The cached revision (0 = none) and assignments, ordered by monitor id.
    pub fn assignments(&self) -> Result<(u64, Vec<v1::Assignment>), SpoolError> {
        let _writer = self.lock();
        self.read_assignments()
    }

    /// The base chunks of the current generation, then its log replayed.
    /// Callers hold the writer lock.
    fn read_assignments(&self) -> Result<(u64, Vec<v1::Assignment>), SpoolError> {
        let revision = self.revision()?;
        let generation = self.state.generation.load(Ordering::Relaxed);
        let mut set = BTreeMap::new();
        for entry in self.assign_base.scan_prefix(generation.to_be_bytes()) {
            let (key, value) = entry?;
            let chunk = v1::AssignmentSnapshot::decode(&*value)
                .map_err(|e| corrupt_chunk(ASSIGN_BASE, &key, &e))?;
            for a in chunk.assignments {
                set.insert(a.monitor_id.clone(), a);
            }
        }
        for entry in self.assign_log.scan_prefix(generation.to_be_bytes()) {
            let (key, value) = entry?;
            let update = v1::AssignmentUpdate::decode(&*value)
                .map_err(|e| corrupt_chunk(ASSIGN_LOG, &key, &e))?;
            for a in update.upserts {
                set.insert(a.monitor_id.clone(), a);
            }
            for id in &update.removals {
                set.remove(id);
            }
        }
        Ok((revision, set.into_values().collect()))
    }

    /// Writes `set` as the next generation and makes it current. Callers hold
    /// the writer lock and have checked the assignments.
    fn replace_assignments(&self, set: &[v1::Assignment], revision: u64) -> Result<(), SpoolError> {
        let old = self.state.generation.load(Ordering::Relaxed);
        let generation = old.checked_add(1).ok_or_else(|| SpoolError::Invalid {
            field: "assignment generation",
            reason: "exhausted".into(),
        })?;
        let mut base_bytes = 0u64;
        for (i, chunk) in (0u64..).zip(set.chunks(CHUNK_ASSIGNMENTS)) {
            let bytes = v1::AssignmentSnapshot {
                assignments: chunk.to_vec(),
                revision,
            }
            .encode_to_vec();
            base_bytes += bytes.len() as u64;
            self.assign_base.insert(gen_key(generation, i), bytes)?;
        }
        let mut flip = Batch::default();
        flip.insert(ASSIGN_GENERATION, &generation.to_be_bytes());
        flip.insert(REVISION, &revision.to_be_bytes());
        self.meta.apply_batch(flip)?;
        self.state.generation.store(generation, Ordering::Relaxed);
        self.state.base_bytes.store(base_bytes, Ordering::Relaxed);
        self.state.log_entries.store(0, Ordering::Relaxed);
        self.state.log_bytes.store(0, Ordering::Relaxed);
        remove_other_generations(&self.assign_base, generation)?;
        remove_other_generations(&self.assign_log, generation)?;
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
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(SpoolError::Locked(dir.to_path_buf()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Checks assignments up front, so bad input changes nothing.
fn check_assignments(assignments: &[v1::Assignment]) -> Result<(), SpoolError> {
    if assignments.iter().any(|a| a.monitor_id.is_empty()) {
        return Err(SpoolError::Invalid {
            field: "assignment.monitor_id",
            reason: "must not be empty".into(),
        });
    }
    Ok(())
}

/// A key of the assignment trees: generation, then chunk or log entry number.
fn gen_key(generation: u64, n: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&generation.to_be_bytes());
    key[8..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The chunk or entry number of a key of the assignment trees.
fn entry_of(tree: &'static str, key: &[u8]) -> Result<u64, SpoolError> {
    <[u8; 16]>::try_from(key)
        .ok()
        .and_then(|k| <[u8; 8]>::try_from(&k[8..]).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| SpoolError::Corrupt {
            tree,
            key: format!("{key:02x?}"),
            reason: format!("expected a 16-byte key, found {} bytes", key.len()),
        })
}

/// Total size of the values under a prefix.
fn byte_size(entries: sled::Iter) -> Result<u64, SpoolError> {
    entries.values().try_fold(0u64, |sum, v| {
        Ok(sum.saturating_add(u64::try_from(v?.len()).unwrap_or(u64::MAX)))
    })
}

/// Deletes every key of `tree` outside `generation`, in bounded batches.
fn remove_other_generations(tree: &Tree, generation: u64) -> Result<(), SpoolError> {
    let prefix = generation.to_be_bytes();
    loop {
        let stale: Vec<IVec> = tree
            .iter()
            .keys()
            .filter(|k| k.as_ref().map_or(true, |k| !k.starts_with(&prefix)))
            .take(REMOVE_BATCH)
            .collect::<Result<_, _>>()?;
        if stale.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for key in &stale {
            batch.remove(key);
        }
        tree.apply_batch(batch)?;
    }
}

fn corrupt_chunk(tree: &'static str, key: &[u8], e: &prost::DecodeError) -> SpoolError {
    SpoolError::Corrupt {
        tree,
        key: format!("{key:02x?}"),
        reason: e.to_string(),
    }
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
            spool.assign_base.len(),
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
            spool.assign_log.len() < 20,
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
        let generation = spool.state.generation.load(Ordering::Relaxed);
        for key in spool.assign_base.iter().keys() {
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
        let generation = spool.state.generation.load(Ordering::Relaxed);
        let orphan = v1::AssignmentSnapshot {
            assignments: many(100..200, 9),
            revision: 6,
        };
        spool
            .assign_base
            .insert(gen_key(generation + 1, 0), orphan.encode_to_vec())
            .unwrap();
        spool
            .assign_log
            .insert(gen_key(generation + 1, 0), b"not even protobuf".to_vec())
            .unwrap();
        spool.flush().await.unwrap();
        drop(spool);

        let spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(spool.assignments().unwrap(), (5, many(0..3, 1)));
        assert_eq!(spool.assign_base.len(), 1);
        assert_eq!(spool.assign_log.len(), 0);
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
}
