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
//!   transaction as the results it numbers. Only [`Spool::append`] moves it: an
//!   acknowledgement beyond the last issued number is refused and changes
//!   nothing ([`SpoolError::AckBeyondIssued`]), so no coordinator can exhaust
//!   the counter.
//! - [`Spool::pending`] hands out only results that are durable (flushed):
//!   whatever the coordinator acknowledges is on disk, so after a crash or a
//!   reopen no acknowledged number is ever issued again.
//! - A result stays until a cumulative [`Spool::ack`] covers it, or until the
//!   spool holds more than its bound; then the oldest results go first, are
//!   counted in a persisted `dropped_total`, and a warning is logged.
//! - [`Spool::append`] is atomic but not durable on its own: [`Spool::flush`]
//!   makes everything written so far durable (sled also flushes in the
//!   background about every 500 ms).
//! - A storage failure (a full disk, an I/O error) is remembered
//!   ([`Spool::fault`]) until a flush succeeds again. sled refuses every write
//!   after its first I/O error, for as long as that handle lives, so
//!   [`Spool::reopen`] replaces the handles with fresh ones on the same
//!   directory; whatever was durable is there again, counters included.
//! - The cached assignment set and its revision change atomically: a snapshot
//!   replaces the whole set, an update patches it. Saving a snapshot of any
//!   size holds at most one chunk of it encoded at a time (`assignments.rs`).
//! - The agent id is generated once and persisted; a configured id wins.
//!
//! Layout: tree `results` (seq, 8 bytes big-endian → prost `v1::CheckResult`);
//! the assignment set as a base and a log, both keyed by a generation (8 bytes
//! big-endian) and a number (8 bytes): tree `assignment_base` (chunk number →
//! prost `v1::AssignmentSnapshot` holding up to [`CHUNK_ASSIGNMENTS`]
//! assignments) and tree `assignment_log` (entry number → prost
//! `v1::AssignmentUpdate`, replayed over the base in order); tree `meta`
//! (`next_seq`, `dropped_total`, `unstored_total`, `revision`,
//! `assignment_generation` as 8 bytes big-endian; `agent_id` as UTF-8). One
//! sled key per chunk rather than per monitor: a snapshot of 100k assignments
//! written key by key in one sled transaction held ≈ 5 KB of heap per monitor
//! (see BENCHMARKS.md, figure 3). Spools written before this layout (tree
//! `assignments`, monitor id → prost `v1::Assignment`) are converted at open.

mod assignments;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use portwatch_proto::v1;
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Batch, Db, IVec, Tree};

pub use assignments::{CHUNK_ASSIGNMENTS, LOG_MAX_ENTRIES};

const RESULTS: &str = "results";
/// The layout before chunks: one key per monitor (converted at open).
const LEGACY_ASSIGNMENTS: &str = "assignments";
const ASSIGN_BASE: &str = "assignment_base";
const ASSIGN_LOG: &str = "assignment_log";
const META: &str = "meta";

const NEXT_SEQ: &[u8] = b"next_seq";
const DROPPED_TOTAL: &[u8] = b"dropped_total";
const UNSTORED_TOTAL: &[u8] = b"unstored_total";
const AGENT_ID: &[u8] = b"agent_id";
const REVISION: &[u8] = b"revision";
const ASSIGN_GENERATION: &[u8] = b"assignment_generation";

/// Keys deleted per sled batch (acknowledgements, dropped generations).
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
    #[error(
        "spool: acknowledgement up to {up_to} is beyond the last sequence number issued ({last_seq}); ignored"
    )]
    AckBeyondIssued { up_to: u64, last_seq: u64 },
    #[error("spool: being reopened after a storage failure")]
    Reopening,
}

impl From<sled::Error> for SpoolError {
    fn from(e: sled::Error) -> Self {
        SpoolError::Sled(e)
    }
}

impl SpoolError {
    /// Whether this is the storage failing (rather than bad data or a bad call).
    pub fn is_storage(&self) -> bool {
        matches!(self, SpoolError::Sled(_) | SpoolError::Reopening)
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
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_results: u64,
    /// The open sled handles; `None` only while [`Spool::reopen`] swaps them.
    trees: RwLock<Option<Arc<Trees>>>,
    state: State,
}

/// One opening of the sled database.
#[derive(Debug)]
struct Trees {
    db: Db,
    results: Tree,
    assign_base: Tree,
    assign_log: Tree,
    meta: Tree,
}

#[derive(Debug)]
struct State {
    // Serialises writers: sled transactions cannot iterate, so the oldest keys to
    // drop (and stale assignments) are read before the transaction, and no
    // other writer may change the trees in between. A reopen holds it too.
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
    /// Every result with a number up to this one is durable.
    durable_seq: AtomicU64,
    /// Results that could not be stored (counted by the writer), persisted
    /// with the next append that succeeds.
    unstored_total: AtomicU64,
    /// Bumped by every reopen.
    epoch: AtomicU64,
    /// The storage failure not yet cleared by a successful flush.
    fault: Mutex<Option<String>>,
}

/// What `load` reads back from disk into the mirrors.
struct Mirrors {
    depth: u64,
    next_seq: u64,
    dropped_total: u64,
    unstored_total: u64,
    generation: u64,
    base_bytes: u64,
    log_entries: u64,
    log_bytes: u64,
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
        let (trees, m) = load(dir)?;
        let spool = Spool {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                max_results,
                trees: RwLock::new(Some(Arc::new(trees))),
                state: State {
                    write: Mutex::new(()),
                    depth: AtomicU64::new(m.depth),
                    next_seq: AtomicU64::new(m.next_seq),
                    dropped_total: AtomicU64::new(m.dropped_total),
                    generation: AtomicU64::new(m.generation),
                    base_bytes: AtomicU64::new(m.base_bytes),
                    log_entries: AtomicU64::new(m.log_entries),
                    log_bytes: AtomicU64::new(m.log_bytes),
                    durable_seq: AtomicU64::new(m.next_seq.saturating_sub(1)),
                    unstored_total: AtomicU64::new(m.unstored_total),
                    epoch: AtomicU64::new(0),
                    fault: Mutex::new(None),
                },
            }),
        };
        spool.convert_legacy_assignments()?;
        Ok(spool)
    }

    /// Closes the sled handles and opens the same directory again: the way
    /// out of a storage failure (sled refuses every write after its first I/O
    /// error for as long as a handle lives). What was durable is read back,
    /// counters included; results appended but never flushed are gone (they
    /// were never sent: [`Spool::pending`] hands out durable results only).
    /// The fault stays until a flush succeeds. Fails, changing nothing more,
    /// while the directory cannot be opened (the disk still full).
    pub fn reopen(&self) -> Result<(), SpoolError> {
        let _writer = self.lock();
        let state = &self.shared.state;
        // Our handle must go before sled's file lock can be taken again.
        *self
            .shared
            .trees
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let (trees, m) = match load(&self.shared.dir) {
            Ok(loaded) => loaded,
            Err(e) => {
                self.set_fault(&e);
                return Err(e);
            }
        };
        state.depth.store(m.depth, Ordering::Relaxed);
        state.next_seq.store(m.next_seq, Ordering::Relaxed);
        state
            .dropped_total
            .store(m.dropped_total, Ordering::Relaxed);
        state
            .unstored_total
            .fetch_max(m.unstored_total, Ordering::Relaxed);
        state.generation.store(m.generation, Ordering::Relaxed);
        state.base_bytes.store(m.base_bytes, Ordering::Relaxed);
        state.log_entries.store(m.log_entries, Ordering::Relaxed);
        state.log_bytes.store(m.log_bytes, Ordering::Relaxed);
        state
            .durable_seq
            .store(m.next_seq.saturating_sub(1), Ordering::Relaxed);
        state.epoch.fetch_add(1, Ordering::Relaxed);
        *self
            .shared
            .trees
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(trees));
        tracing::info!(
            dir = %self.shared.dir.display(),
            depth = m.depth,
            last_seq = m.next_seq.saturating_sub(1),
            "spool reopened"
        );
        Ok(())
    }

    /// The storage failure not yet cleared by a successful flush, if any.
    pub fn fault(&self) -> Option<String> {
        self.shared
            .state
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many times the spool was reopened (changes when what is on disk
    /// may differ from what was in memory: acknowledged deletions not yet
    /// flushed come back).
    pub fn epoch(&self) -> u64 {
        self.shared.state.epoch.load(Ordering::Relaxed)
    }

    /// Bytes free for the spool on its file system (for an unprivileged
    /// user), or None when that cannot be read.
    // The statvfs fields are u64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    pub fn free_bytes(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.shared.dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs writes only into the struct we pass; the path is a
        // NUL-terminated string that outlives the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
    }

    /// The bound on unacknowledged results.
    pub fn max_results(&self) -> u64 {
        self.shared.max_results
    }

    /// This installation's agent id.
    ///
    /// `configured` wins when given (and is persisted); otherwise the stored id,
    /// or, on first use, a new `agent-` + 16 random hex digits, flushed at once
    /// so the id the coordinator sees never changes.
    pub fn agent_id(&self, configured: Option<&str>) -> Result<String, SpoolError> {
        let t = self.trees()?;
        let id = agent_id_in(&t, configured);
        self.noted(id)
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
        let appended = self.append_locked(results);
        self.noted(appended)
    }

    fn append_locked(&self, results: &[v1::CheckResult]) -> Result<Vec<u64>, SpoolError> {
        let _writer = self.lock();
        let t = self.trees()?;
        let state = &self.shared.state;
        let n = u64::try_from(results.len()).unwrap_or(u64::MAX);
        let depth = state.depth.load(Ordering::Relaxed);
        let overflow = depth
            .saturating_add(n)
            .saturating_sub(self.shared.max_results);
        let old_keys: Vec<IVec> = t
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
        let unstored = state.unstored_total.load(Ordering::Relaxed);

        let (first, dropped_total) = (&t.results, &t.meta).transaction(|(rt, mt)| {
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
            // Results lost while the spool could not store are counted in
            // memory; the first append that works records them.
            let stored_unstored = match mt.get(UNSTORED_TOTAL)? {
                Some(v) => u64_of(META, UNSTORED_TOTAL, &v).map_err(abort)?,
                None => 0,
            };
            if unstored > stored_unstored {
                mt.insert(UNSTORED_TOTAL, &unstored.to_be_bytes())?;
            }
            Ok((first, dropped_total))
        })?;

        let stored = n - skip_new;
        state
            .depth
            .store(depth - dropped_old + stored, Ordering::Relaxed);
        state.next_seq.store(first + n, Ordering::Relaxed);
        state.dropped_total.store(dropped_total, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                dropped_total,
                max_results = self.shared.max_results,
                "spool full: dropped the oldest unacknowledged results"
            );
        }
        Ok((first..first + n).collect())
    }

    /// Makes everything appended or saved so far durable; a success clears
    /// the fault.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let epoch = self.epoch();
        // Whatever was appended before the flush starts is covered by it.
        let covered = self.last_seq();
        let t = self.trees()?;
        let flushed = t.db.flush_async().await;
        drop(t);
        if let Err(e) = flushed {
            let e = SpoolError::from(e);
            self.set_fault(&e);
            return Err(e);
        }
        let _writer = self.lock();
        // A reopen in between read its own numbers back from disk.
        if self.epoch() == epoch {
            self.shared
                .state
                .durable_seq
                .fetch_max(covered, Ordering::Relaxed);
            *self
                .shared
                .state
                .fault
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        Ok(())
    }

    /// Up to `limit` unacknowledged, durable results with `seq > after`,
    /// oldest first.
    pub fn pending(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<v1::SequencedResult>, SpoolError> {
        let durable = self.durable_seq();
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if start > durable {
            return Ok(Vec::new());
        }
        let t = self.trees()?;
        let read = t
            .results
            .range(start.to_be_bytes()..=durable.to_be_bytes())
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
            .collect();
        self.noted(read)
    }

    /// The oldest unacknowledged result's number, if any.
    pub fn oldest_seq(&self) -> Result<Option<u64>, SpoolError> {
        let t = self.trees()?;
        let first = t.results.first().map_err(SpoolError::from);
        let first = self.noted(first)?;
        first.map(|(k, _)| seq_of(&k)).transpose()
    }

    /// Deletes every result with `seq <= up_to` (a cumulative acknowledgement)
    /// and returns how many were removed. Acknowledging again removes nothing.
    ///
    /// An acknowledgement beyond the last number issued is refused and
    /// changes nothing: the coordinator cannot hold results we never sent, so
    /// it is wrong about this agent, and moving the counter for it would let
    /// it exhaust the counter (every append failing from then on).
    pub fn ack(&self, up_to: u64) -> Result<usize, SpoolError> {
        let last_seq = self.last_seq();
        if up_to > last_seq {
            return Err(SpoolError::AckBeyondIssued { up_to, last_seq });
        }
        let removed = self.ack_locked(up_to);
        self.noted(removed)
    }

    fn ack_locked(&self, up_to: u64) -> Result<usize, SpoolError> {
        // In bounded batches, letting appends in between: a backlog
        // acknowledged at once after a reconnect can be 100k results.
        let mut removed = 0;
        loop {
            let _writer = self.lock();
            let t = self.trees()?;
            let keys: Vec<IVec> = t
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
            t.results.apply_batch(batch)?;
            let n = u64::try_from(keys.len()).unwrap_or(u64::MAX);
            let depth = self.shared.state.depth.load(Ordering::Relaxed);
            self.shared
                .state
                .depth
                .store(depth.saturating_sub(n), Ordering::Relaxed);
            removed += keys.len();
        }
    }

    /// Unacknowledged results held now.
    pub fn depth(&self) -> u64 {
        self.shared.state.depth.load(Ordering::Relaxed)
    }

    /// Results dropped for the bound since this spool was created.
    pub fn dropped_total(&self) -> u64 {
        self.shared.state.dropped_total.load(Ordering::Relaxed)
    }

    /// Results that could not be stored (the spool failing) and were dropped,
    /// since this spool was created.
    pub fn unstored_total(&self) -> u64 {
        self.shared.state.unstored_total.load(Ordering::Relaxed)
    }

    /// Counts `n` results that could not be stored and were dropped.
    pub fn count_unstored(&self, n: u64) {
        self.shared
            .state
            .unstored_total
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The highest sequence number ever issued (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.shared
            .state
            .next_seq
            .load(Ordering::Relaxed)
            .saturating_sub(1)
    }

    /// Every result numbered up to this is durable (on disk).
    pub fn durable_seq(&self) -> u64 {
        self.shared.state.durable_seq.load(Ordering::Relaxed)
    }

    /// The current sled handles.
    fn trees(&self) -> Result<Arc<Trees>, SpoolError> {
        self.shared
            .trees
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(SpoolError::Reopening)
    }

    /// Remembers a storage failure among `result`'s errors.
    fn noted<T>(&self, result: Result<T, SpoolError>) -> Result<T, SpoolError> {
        if let Err(e @ (SpoolError::Sled(_) | SpoolError::Corrupt { .. })) = &result {
            self.set_fault(e);
        }
        result
    }

    fn set_fault(&self, e: &SpoolError) {
        let mut fault = self
            .shared
            .state
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if fault.is_none() {
            tracing::error!(error = %e, "the spool cannot store; results are held in memory until it can");
        }
        *fault = Some(e.to_string());
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panicking holder leaves nothing half-done
        // in memory, and sled transactions are all-or-nothing.
        self.shared
            .state
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens the database in `dir` and reads the mirrors back; removes leftovers
/// of an interrupted assignment save.
fn load(dir: &Path) -> Result<(Trees, Mirrors), SpoolError> {
    let db = open_db(dir)?;
    let trees = Trees {
        results: db.open_tree(RESULTS)?,
        assign_base: db.open_tree(ASSIGN_BASE)?,
        assign_log: db.open_tree(ASSIGN_LOG)?,
        meta: db.open_tree(META)?,
        db,
    };
    let stored_next = get_u64(&trees.meta, NEXT_SEQ)?.unwrap_or(1);
    // The counter is written with the results, so this only matters if the
    // meta tree was lost: never issue a number that is still in the spool.
    let after_last = match trees.results.last()? {
        Some((k, _)) => seq_of(&k)?.saturating_add(1),
        None => 1,
    };
    let (generation, base_bytes, log_entries, log_bytes) = assignments::load(&trees)?;
    let mirrors = Mirrors {
        next_seq: stored_next.max(after_last),
        dropped_total: get_u64(&trees.meta, DROPPED_TOTAL)?.unwrap_or(0),
        unstored_total: get_u64(&trees.meta, UNSTORED_TOTAL)?.unwrap_or(0),
        // One walk at open; the mirror is kept exact from here on.
        depth: u64::try_from(trees.results.len()).unwrap_or(u64::MAX),
        generation,
        base_bytes,
        log_entries,
        log_bytes,
    };
    Ok((trees, mirrors))
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

fn agent_id_in(t: &Trees, configured: Option<&str>) -> Result<String, SpoolError> {
    if let Some(id) = configured {
        if id.trim().is_empty() {
            return Err(SpoolError::Invalid {
                field: "agent_id",
                reason: "must not be empty".into(),
            });
        }
        if t.meta.get(AGENT_ID)?.as_deref() != Some(id.as_bytes()) {
            t.meta.insert(AGENT_ID, id.as_bytes())?;
            t.db.flush()?;
        }
        return Ok(id.to_string());
    }
    if let Some(stored) = t.meta.get(AGENT_ID)? {
        return id_of(&stored);
    }
    let fresh = format!("agent-{:016x}", rand::random::<u64>());
    // Compare-and-swap: two callers racing on first use agree on one id.
    match t
        .meta
        .compare_and_swap(AGENT_ID, None as Option<&[u8]>, Some(fresh.as_bytes()))?
    {
        Ok(()) => {
            t.db.flush()?;
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
