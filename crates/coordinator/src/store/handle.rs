//! `SledStore`: the embedded backend of [`Storage`], the one the coordinator
//! runs on by default. It wraps one open sled database (`Trees`) and keeps the
//! coordinator going when that database fails under it.
//!
//! Why a handle: sled 0.34 keeps the first I/O error (a full disk, say) for
//! the life of its `Db`, so every later write fails even after space is freed;
//! only a new `Db` writes again. The handle is cheap to clone and shared by the
//! hub, the admin API, the agent streams, auth and the outbox, so the database
//! behind it is swapped in one place.
//!
//! Guarantees:
//! - a write runs only while the store is writable; otherwise it fails at once
//!   with [`StoreError::Unavailable`] and touches nothing;
//! - an I/O error from sled, a flush that does not finish within
//!   [`FLUSH_TIMEOUT`], or a panic inside sled marks the store not writable
//!   (subscribers of [`SledStore::subscribe`] see it) and the caller gets an error:
//!   a panic never unwinds out of a store call;
//! - [`SledStore::try_reopen`] first proves the disk takes writes again (a probe
//!   file), then drops the failed database and opens a new one, which sees
//!   exactly what was flushed: what was acknowledged is there, what failed may
//!   or may not be (so the hub reloads its view from it, `Hub::reload`);
//! - `ingest` returns only after the batch is flushed, so its caller may
//!   acknowledge what it returns;
//! - damage a call runs into (a record that does not decode, sled reporting
//!   corruption or panicking) is kept in [`StoreState::damage`] until restart;
//! - an open refuses files that lost durable writes (`seal`) or whose state
//!   does not decode (`Trees::verify_state`).

use std::fs::File;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use portwatch_proto::v1;
use tokio::sync::watch;
use tracing::{error, info};

use super::storage::{Storage, storage_calls};
use super::{
    DEFAULT_CACHE_MIB, HistoryPage, Ingest, Ingested, OutboxRecord, RegionOutage, Result,
    StoreError, TokenRecord, Trees, seal,
};

/// Longest a flush may take before the store counts as not responding.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes the space probe writes (and removes): enough for sled to start a new
/// log segment and write its snapshot when it reopens.
const PROBE_BYTES: usize = 2 * 1024 * 1024;
/// The probe file, in the data directory (sled ignores other files there).
const PROBE_FILE: &str = ".portwatch-space-probe";

/// Whether the store takes writes (and if not, why and since when), and
/// whether damage was found in its files.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StoreState {
    pub writable: bool,
    /// Why it does not (empty while writable).
    pub cause: String,
    pub since: Option<SystemTime>,
    /// The first damage a call ran into (empty: none found). It stays until
    /// the coordinator restarts on restored files: damage does not heal.
    pub damage: String,
}

impl StoreState {
    fn writable() -> StoreState {
        StoreState {
            writable: true,
            ..StoreState::default()
        }
    }
}

struct Shared {
    dir: PathBuf,
    cache_bytes: u64,
    /// The open database; `None` only while a reopen is between dropping the
    /// failed one and opening the next.
    current: RwLock<Option<Arc<Trees>>>,
    state: watch::Sender<StoreState>,
}

/// The coordinator's durable state in sled: the typed API of `Trees`, guarded
/// as the module docs describe. Clones share one database.
#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
}

/// The text of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `f`, turning a panic into an error. Sound because a database that
/// panicked is never written again: the caller marks the store failed, and
/// only a fresh open (which re-reads the files) makes it writable.
pub(super) fn guarded<T>(call: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(StoreError::Panicked {
            call,
            message: panic_text(p.as_ref()),
        })
    })
}

/// Opens the sled files of `dir`, with sled's panics (some damaged files make
/// it panic while recovering) turned into errors.
pub(super) fn open_trees(dir: &Path, cache_bytes: u64) -> Result<Trees> {
    guarded("open", || Trees::open(dir, cache_bytes))
}

/// Writes and removes a probe file in `dir`: proof that the disk takes writes.
fn probe_space(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let result = (|| {
        let mut f = File::create(&path)?;
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..PROBE_BYTES / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with the default cache.
    pub fn open(dir: &Path) -> Result<SledStore> {
        SledStore::open_with_cache(dir, DEFAULT_CACHE_MIB * 1024 * 1024)
    }

    /// Opens (or creates) the store in `dir` with a page cache of
    /// `cache_bytes`, and checks its seal (`seal`): files that lost what they
    /// had made durable are refused as damaged. If the disk is full already,
    /// the store opens not writable (reads work; `try_reopen` heals it).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore> {
        let trees = open_trees(dir, cache_bytes)?;
        let epoch = guarded("open", || seal::check(&trees, dir))?;
        guarded("open", || trees.verify_state())?;
        let store = SledStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                cache_bytes,
                current: RwLock::new(Some(Arc::new(trees))),
                state: watch::Sender::new(StoreState::writable()),
            }),
        };
        match store.write("seal", |t| seal::advance_now(t, dir, epoch + 1)) {
            Ok(()) => Ok(store),
            // Already marked not writable: the coordinator starts and heals.
            Err(e) if e.is_store_failure() => Ok(store),
            Err(e) => Err(e),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Whether writes are accepted now.
    pub fn is_writable(&self) -> bool {
        self.shared.state.borrow().writable
    }

    /// The current state.
    pub fn state(&self) -> StoreState {
        self.shared.state.borrow().clone()
    }

    /// Follows the state (health, the recovery loop).
    pub fn subscribe(&self) -> watch::Receiver<StoreState> {
        self.shared.state.subscribe()
    }

    /// Records damage a call ran into (the first one; it is sticky).
    fn damaged(&self, e: &StoreError) {
        let changed = self.shared.state.send_if_modified(|s| {
            if !s.damage.is_empty() {
                return false;
            }
            s.damage = e.to_string();
            true
        });
        if changed {
            error!(data_dir = %self.shared.dir.display(), error = %e, "store: damaged; restore it from a backup");
        }
    }

    /// Makes the store refuse writes, as a failed write would (tests of
    /// what a change leaves behind when the store fails).
    #[cfg(test)]
    pub(crate) fn fail_for_test(&self, cause: &str) {
        self.fail(cause.to_string());
    }

    /// Marks the store not writable (once; later causes are logged only).
    fn fail(&self, cause: String) {
        let changed = self.shared.state.send_if_modified(|s| {
            if !s.writable {
                return false;
            }
            s.writable = false;
            s.cause = cause.clone();
            s.since = Some(SystemTime::now());
            true
        });
        if changed {
            error!(data_dir = %self.shared.dir.display(), %cause, "store: not writable; writes fail with UNAVAILABLE until it is reopened");
        }
    }

    fn trees(&self) -> Result<Arc<Trees>> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is being reopened".into()))
    }

    /// Notes a failure the call ran into.
    fn observe<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_damage() {
                self.damaged(e);
            }
            if e.is_store_failure() {
                self.fail(e.to_string());
            }
        }
        r
    }

    /// Reads every history row (the trees the coordinator runs on were read at
    /// open). Run once after a start, off the runtime: damage in the history
    /// is then reported (`StoreState::damage`) before anyone stumbles on it.
    pub async fn verify_history(&self) -> Result<u64> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read("verify_history", |t| t.verify_history()))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Panicked {
                    call: "verify_history",
                    message: e.to_string(),
                })
            })
    }

    /// A read: served even while not writable (from the failed database,
    /// which still answers from its cache and files).
    fn read<T>(&self, call: &'static str, f: impl FnOnce(&Trees) -> Result<T>) -> Result<T> {
        let trees = self.trees()?;
        self.observe(guarded(call, || f(&trees)))
    }

    /// A write: refused at once while not writable.
    fn write<T>(&self, call: &'static str, f: impl FnOnce(&Trees) -> Result<T>) -> Result<T> {
        let state = self.state();
        if !state.writable {
            return Err(StoreError::Unavailable(state.cause));
        }
        let trees = self.trees()?;
        self.observe(guarded(call, || f(&trees)))
    }

    /// Makes everything written so far durable, within [`FLUSH_TIMEOUT`].
    pub async fn flush(&self) -> Result<()> {
        let state = self.state();
        if !state.writable {
            return Err(StoreError::Unavailable(state.cause));
        }
        let trees = self.trees()?;
        match tokio::time::timeout(FLUSH_TIMEOUT, trees.flush()).await {
            Ok(r) => self.observe(r),
            Err(_) => {
                let e = StoreError::Unavailable(format!(
                    "sled did not finish a flush within {} s",
                    FLUSH_TIMEOUT.as_secs()
                ));
                self.fail(e.to_string());
                Err(e)
            }
        }
    }

    /// Stores a batch from one agent (see `Trees::ingest`) and flushes it:
    /// what this returns is durable and may be acknowledged.
    ///
    /// The transaction runs on a blocking thread and is given [`FLUSH_TIMEOUT`]
    /// too: results are what agents send, the bulk of all writes, and a sled
    /// write that never returns must neither hold a runtime thread nor leave
    /// the store looking healthy.
    pub async fn ingest(
        &self,
        agent_id: &str,
        region: &str,
        batch: &[Ingest<'_>],
        up_to: u64,
    ) -> Result<Ingested> {
        let state = self.state();
        if !state.writable {
            return Err(StoreError::Unavailable(state.cause));
        }
        let trees = self.trees()?;
        let owned: Vec<(u64, v1::CheckResult)> =
            batch.iter().map(|i| (i.seq, i.result.clone())).collect();
        let (agent_id, region) = (agent_id.to_string(), region.to_string());
        let job = tokio::task::spawn_blocking(move || {
            guarded("ingest", || {
                let items: Vec<Ingest> = owned
                    .iter()
                    .map(|(seq, result)| Ingest { seq: *seq, result })
                    .collect();
                trees.ingest(&agent_id, &region, &items, up_to)
            })
        });
        let out = match tokio::time::timeout(FLUSH_TIMEOUT, job).await {
            Ok(Ok(r)) => self.observe(r)?,
            Ok(Err(e)) => self.observe(Err(StoreError::Panicked {
                call: "ingest",
                message: e.to_string(),
            }))?,
            Err(_) => {
                let e = StoreError::Unavailable(format!(
                    "sled did not finish a write within {} s",
                    FLUSH_TIMEOUT.as_secs()
                ));
                self.fail(e.to_string());
                return Err(e);
            }
        };
        // Ack only after flush: the agent deletes what we acknowledge.
        self.flush().await?;
        Ok(out)
    }

    /// A clean stop: records a new seal epoch and flushes, so a later open can
    /// tell whether the files still hold everything written before it.
    pub async fn seal(&self) -> Result<()> {
        let epoch = self.read("seal", seal::stored_epoch)?;
        self.write("seal", |t| seal::record(t, epoch + 1))?;
        self.flush().await?;
        seal::write_sidecar(&self.shared.dir, epoch + 1)
    }

    /// Tries to make a failed store writable again: proves with a probe file
    /// that the disk takes writes, drops the failed database and opens the
    /// files anew (what was flushed, nothing else). Blocking: sled's open reads
    /// its files. Errors say why it is still not writable; a damaged store
    /// ([`StoreError::is_damage`]) will not heal by waiting.
    pub fn try_reopen(&self) -> Result<()> {
        if self.is_writable() {
            return Ok(());
        }
        probe_space(&self.shared.dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "the disk holding {} does not take writes yet: {e}",
                self.shared.dir.display()
            ))
        })?;
        let old = self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(old) = old {
            // Dropping a sled database waits for its flusher thread; a wedged
            // one must not hold up the caller (the lock retry below waits).
            let _ = std::thread::Builder::new()
                .name("portwatch-store-close".into())
                .spawn(move || drop(old));
        }
        let trees = open_trees(&self.shared.dir, self.shared.cache_bytes)?;
        let epoch = guarded("reopen", || seal::check(&trees, &self.shared.dir))?;
        guarded("reopen", || trees.verify_state())?;
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(trees));
        let mut was = StoreState::default();
        self.shared.state.send_modify(|s| {
            was = s.clone();
            s.writable = true;
            s.cause.clear();
            s.since = None;
        });
        info!(data_dir = %self.shared.dir.display(), epoch, down_since = ?was.since, "store: reopened; writable again");
        Ok(())
    }

    /// Lets go of the open database on a thread of its own, which the caller
    /// does not wait for: sled's drop waits for its flusher thread, which a
    /// database that failed under a full disk may never finish. For the end of
    /// the process, after the last flush; every later call fails.
    pub fn close_detached(&self) {
        let old = self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.shared.state.send_if_modified(|s| {
            let was = s.writable;
            s.writable = false;
            s.cause = "the store is closed".into();
            s.since = Some(SystemTime::now());
            was
        });
        if let Some(old) = old {
            let _ = std::thread::Builder::new()
                .name("portwatch-store-close".into())
                .spawn(move || drop(old));
        }
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.read("size_on_disk", |t| Ok(t.size_on_disk()))
            .unwrap_or(0)
    }

    /// Number of stored history rows (all monitors).
    pub fn history_len(&self) -> usize {
        self.read("history_len", |t| Ok(t.history_len()))
            .unwrap_or(0)
    }

    /// Number of deliveries stored (every state).
    pub fn outbox_len(&self) -> usize {
        self.read("outbox_len", |t| Ok(t.outbox_len())).unwrap_or(0)
    }
}

/// The typed API of `Trees` as the [`Storage`] interface, each call run as a
/// read or a write (see `SledStore::read`, `SledStore::write`). The list of
/// calls is written once, in `store/storage.rs`, which hands it to this macro.
macro_rules! sled_storage {
    ($( $kind:ident fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )*) => {
        #[tonic::async_trait]
        impl Storage for SledStore {
            fn location(&self) -> String {
                self.shared.dir.display().to_string()
            }
            fn state(&self) -> StoreState {
                SledStore::state(self)
            }
            fn subscribe(&self) -> watch::Receiver<StoreState> {
                SledStore::subscribe(self)
            }
            fn try_reopen(&self) -> Result<()> {
                SledStore::try_reopen(self)
            }
            async fn verify_history(&self) -> Result<u64> {
                SledStore::verify_history(self).await
            }
            async fn flush(&self) -> Result<()> {
                SledStore::flush(self).await
            }
            async fn ingest(
                &self,
                agent_id: &str,
                region: &str,
                batch: &[Ingest<'_>],
                up_to: u64,
            ) -> Result<Ingested> {
                SledStore::ingest(self, agent_id, region, batch, up_to).await
            }
            async fn seal(&self) -> Result<()> {
                SledStore::seal(self).await
            }
            fn close_detached(&self) {
                SledStore::close_detached(self)
            }
            fn size_on_disk(&self) -> u64 {
                SledStore::size_on_disk(self)
            }
            fn history_len(&self) -> usize {
                SledStore::history_len(self)
            }
            fn outbox_len(&self) -> usize {
                SledStore::outbox_len(self)
            }
            $(
                fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.$kind(stringify!($name), |tr| tr.$name($($arg),*))
                }
            )*
        }
    };
}
storage_calls!(sled_storage);

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.shared.dir)
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests;
