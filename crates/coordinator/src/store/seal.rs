//! The store's seal: how an open tells a damaged store from a healthy one.
//!
//! Why: when sled finds a damaged part of its log (a flipped byte, a truncated
//! file) it usually does not fail; it takes the damage for the torn end of a
//! crash and opens what comes before it. A store truncated to nothing opens as
//! a new, empty store, and a coordinator started on it would tell every agent
//! that it has nothing to check. The seal makes that loss visible.
//!
//! How: a counter, the epoch, is kept twice: in the store (`meta`) and in a
//! small file beside it (`portwatch.seal`). Each open and each clean stop
//! writes epoch + 1 into the store, flushes, and only then writes the file. So
//! the store's epoch is never below the file's, whatever crashes when; if it
//! is, the files lost writes that were durable before the last open or clean
//! stop, and the store is refused as damaged (restore it from a backup).
//!
//! What it cannot see: damage that only takes away what was written after the
//! last open or clean stop (as a crash would), and a store without its file (a
//! new one, or one written before the seal existed).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::{Result, StoreError, Trees};

/// The file beside sled's, in the data directory.
pub const SEAL_FILE: &str = "portwatch.seal";
/// The epoch's key in `meta` (u64, big-endian).
const EPOCH_KEY: &[u8] = b"seal_epoch";
const HEADER: &str = "portwatch store seal";

fn damaged(reason: String) -> StoreError {
    StoreError::Damaged(reason)
}

/// The epoch recorded in the store (0 when it has none).
pub fn stored_epoch(t: &Trees) -> Result<u64> {
    match t.meta.get(EPOCH_KEY)? {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| damaged(format!("its seal epoch is {} bytes long, not 8", v.len()))),
    }
}

/// The epoch in the seal file, if there is one.
pub fn sidecar_epoch(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(SEAL_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(damaged(format!("{}: {e}", path.display())));
        }
    };
    let mut lines = text.lines();
    let epoch = (lines.next() == Some(HEADER))
        .then(|| lines.next()?.strip_prefix("epoch ")?.parse::<u64>().ok())
        .flatten();
    epoch
        .map(Some)
        .ok_or_else(|| damaged(format!("{}: not a seal file", path.display())))
}

/// Checks that the store holds at least the epoch its file records; returns
/// the epoch to continue from.
pub fn check(t: &Trees, dir: &Path) -> Result<u64> {
    let inside = stored_epoch(t)?;
    let beside = sidecar_epoch(dir)?;
    match beside {
        Some(b) if inside < b => Err(damaged(format!(
            "the store reads as of seal epoch {inside}, but {SEAL_FILE} beside it records \
             epoch {b}: sled dropped a damaged part of its log, and with it writes that \
             had been made durable"
        ))),
        _ => Ok(inside.max(beside.unwrap_or(0))),
    }
}

/// Writes `epoch` into the store (not yet flushed).
pub fn record(t: &Trees, epoch: u64) -> Result<()> {
    t.meta.insert(EPOCH_KEY, &epoch.to_be_bytes())?;
    Ok(())
}

/// Records `epoch`, flushes (blocking) and writes the file: at open.
pub fn advance_now(t: &Trees, dir: &Path, epoch: u64) -> Result<()> {
    record(t, epoch)?;
    t.db.flush()?;
    write_sidecar(dir, epoch)
}

/// Replaces the seal file (write, sync, rename, sync the directory), after
/// `epoch` is durable in the store.
pub fn write_sidecar(dir: &Path, epoch: u64) -> Result<()> {
    let io = |e: std::io::Error| StoreError::Sled(sled::Error::Io(e));
    let tmp = dir.join(format!("{SEAL_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(format!("{HEADER}\nepoch {epoch}\n").as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, dir.join(SEAL_FILE)).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}
