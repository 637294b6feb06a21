//! The spool's cache of this agent's assignments, so that a restarted agent
//! keeps probing while the coordinator is unreachable.
//!
//! Guarantees: the cached set and its revision change atomically (a snapshot
//! replaces the whole set, an update patches it); saving a snapshot of any size
//! holds at most one chunk of it encoded at a time; a crash anywhere leaves
//! either the old set or the new one.
//!
//! Layout: a base and a log, both keyed by a generation (8 bytes big-endian)
//! and a number (8 bytes): tree `assignment_base` (chunk number → prost
//! `v1::AssignmentSnapshot` of up to [`CHUNK_ASSIGNMENTS`] assignments) and
//! tree `assignment_log` (entry number → prost `v1::AssignmentUpdate`, replayed
//! over the base in order); `meta` holds the current generation and revision.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use portwatch_proto::v1;
use prost::Message;
use sled::transaction::Transactional;
use sled::{Batch, IVec, Tree};

use super::{
    ASSIGN_BASE, ASSIGN_GENERATION, ASSIGN_LOG, LEGACY_ASSIGNMENTS, REMOVE_BATCH, REVISION, Spool,
    SpoolError, Trees, get_u64,
};

/// Assignments per base chunk (≈ 70 B each encoded: chunks of ≈ 140 KB).
pub const CHUNK_ASSIGNMENTS: usize = 2048;
/// Updates logged before they are folded into a new base.
pub const LOG_MAX_ENTRIES: u64 = 1024;
/// A log smaller than this is never folded for its size alone.
const LOG_MIN_FOLD_BYTES: u64 = 256 * 1024;

/// At open: removes leftovers of a save or a fold that a crash interrupted and
/// returns the current generation, the byte size of its base, and the number
/// of entries and bytes of its log.
pub(super) fn load(t: &Trees) -> Result<(u64, u64, u64, u64), SpoolError> {
    let generation = get_u64(&t.meta, ASSIGN_GENERATION)?.unwrap_or(0);
    remove_other_generations(&t.assign_base, generation)?;
    remove_other_generations(&t.assign_log, generation)?;
    let base_bytes = byte_size(t.assign_base.scan_prefix(generation.to_be_bytes()))?;
    let log_bytes = byte_size(t.assign_log.scan_prefix(generation.to_be_bytes()))?;
    let log_entries = match t.assign_log.scan_prefix(generation.to_be_bytes()).last() {
        Some(entry) => entry_of(ASSIGN_LOG, &entry?.0)?.saturating_add(1),
        None => 0,
    };
    Ok((generation, base_bytes, log_entries, log_bytes))
}

impl Spool {
    /// Moves a set cached one key per monitor (the layout before chunks) into
    /// a generation, then drops the old tree. The old tree is deleted only
    /// after the new generation is current, so a crash in between converts
    /// again at the next open.
    pub(super) fn convert_legacy_assignments(&self) -> Result<(), SpoolError> {
        let t = self.trees()?;
        if !t
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == LEGACY_ASSIGNMENTS.as_bytes())
        {
            return Ok(());
        }
        let legacy = t.db.open_tree(LEGACY_ASSIGNMENTS)?;
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
            let revision = get_u64(&t.meta, REVISION)?.unwrap_or(0);
            let _writer = self.lock();
            self.replace_assignments(&t, &set, revision)?;
            tracing::info!(
                assignments = set.len(),
                "converted the cached assignments to the chunked layout"
            );
        }
        drop(legacy);
        t.db.drop_tree(LEGACY_ASSIGNMENTS)?;
        t.db.flush()?;
        Ok(())
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
        let saved = {
            let _writer = self.lock();
            self.trees().and_then(|t| {
                self.replace_assignments(&t, &snapshot.assignments, snapshot.revision)
            })
        };
        self.noted(saved)
    }

    /// Applies `update` to the cached assignment set: upserts, then removals
    /// (an id in both ends up removed), then the new revision. Not flushed.
    ///
    /// The update is appended to the current generation's log with the new
    /// revision in one transaction; a log grown past [`LOG_MAX_ENTRIES`] or
    /// past the size of the base is folded into a new generation.
    pub fn apply_update(&self, update: &v1::AssignmentUpdate) -> Result<(), SpoolError> {
        check_assignments(&update.upserts)?;
        let applied = {
            let _writer = self.lock();
            self.trees().and_then(|t| self.log_update(&t, update))
        };
        self.noted(applied)
    }

    /// Callers hold the writer lock.
    fn log_update(&self, t: &Trees, update: &v1::AssignmentUpdate) -> Result<(), SpoolError> {
        let state = &self.shared.state;
        let encoded = update.encode_to_vec();
        let generation = state.generation.load(Ordering::Relaxed);
        let entry = state.log_entries.load(Ordering::Relaxed);
        let key = gen_key(generation, entry);
        (&t.assign_log, &t.meta).transaction(|(lt, mt)| {
            lt.insert(&key, encoded.as_slice())?;
            mt.insert(REVISION, &update.revision.to_be_bytes())?;
            Ok(())
        })?;
        state.log_entries.store(entry + 1, Ordering::Relaxed);
        let log_bytes = state
            .log_bytes
            .fetch_add(encoded.len() as u64, Ordering::Relaxed)
            + encoded.len() as u64;
        let base_bytes = state.base_bytes.load(Ordering::Relaxed);
        if entry + 1 >= LOG_MAX_ENTRIES || log_bytes > base_bytes.max(LOG_MIN_FOLD_BYTES) {
            let (revision, set) = self.read_assignments(t)?;
            self.replace_assignments(t, &set, revision)?;
        }
        Ok(())
    }

    /// The cached revision (0 = none).
    pub fn revision(&self) -> Result<u64, SpoolError> {
        let read = self
            .trees()
            .and_then(|t| Ok(get_u64(&t.meta, REVISION)?.unwrap_or(0)));
        self.noted(read)
    }

    /// The cached revision (0 = none) and assignments, ordered by monitor id.
    pub fn assignments(&self) -> Result<(u64, Vec<v1::Assignment>), SpoolError> {
        let read = {
            let _writer = self.lock();
            self.trees().and_then(|t| self.read_assignments(&t))
        };
        self.noted(read)
    }

    /// The base chunks of the current generation, then its log replayed.
    /// Callers hold the writer lock.
    fn read_assignments(&self, t: &Trees) -> Result<(u64, Vec<v1::Assignment>), SpoolError> {
        let revision = get_u64(&t.meta, REVISION)?.unwrap_or(0);
        let generation = self.shared.state.generation.load(Ordering::Relaxed);
        let mut set = BTreeMap::new();
        for entry in t.assign_base.scan_prefix(generation.to_be_bytes()) {
            let (key, value) = entry?;
            let chunk = v1::AssignmentSnapshot::decode(&*value)
                .map_err(|e| corrupt_chunk(ASSIGN_BASE, &key, &e))?;
            for a in chunk.assignments {
                set.insert(a.monitor_id.clone(), a);
            }
        }
        for entry in t.assign_log.scan_prefix(generation.to_be_bytes()) {
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
    fn replace_assignments(
        &self,
        t: &Trees,
        set: &[v1::Assignment],
        revision: u64,
    ) -> Result<(), SpoolError> {
        let state = &self.shared.state;
        let old = state.generation.load(Ordering::Relaxed);
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
            t.assign_base.insert(gen_key(generation, i), bytes)?;
        }
        let mut flip = Batch::default();
        flip.insert(ASSIGN_GENERATION, &generation.to_be_bytes());
        flip.insert(REVISION, &revision.to_be_bytes());
        t.meta.apply_batch(flip)?;
        state.generation.store(generation, Ordering::Relaxed);
        state.base_bytes.store(base_bytes, Ordering::Relaxed);
        state.log_entries.store(0, Ordering::Relaxed);
        state.log_bytes.store(0, Ordering::Relaxed);
        remove_other_generations(&t.assign_base, generation)?;
        remove_other_generations(&t.assign_log, generation)?;
        Ok(())
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
pub(super) fn gen_key(generation: u64, n: u64) -> [u8; 16] {
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
