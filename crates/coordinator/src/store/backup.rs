//! Backup and restore of the coordinator's store as one file
//! (`portwatch-coordinator backup` / `restore`).
//!
//! A backup is taken from a stopped coordinator's data directory: sled keeps
//! its files locked while the coordinator runs, so a backup then fails with a
//! message instead of copying a store in the middle of a write. Every tree is
//! copied key by key, so the file is one consistent moment of the store.
//!
//! The file: a header line (`portwatch-store-backup v1`), then per tree a
//! `T` record (its name) followed by `K` records (key and value, each a
//! big-endian u32 length and the bytes), and last a `Z` record holding the
//! SHA-256 of everything before it. A restore reads the whole file and checks
//! that digest before it writes anything, writes only into an empty or new
//! directory, flushes, and then opens the result as the coordinator would
//! (seal included), so a restore that reports success can be started.
//!
//! The file holds everything the store does, token hashes and channel secrets
//! included: it is created readable by its owner only.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::handle::open_trees;
use super::{DEFAULT_CACHE_MIB, Store, StoreError, seal};

const HEADER: &[u8] = b"portwatch-store-backup v1\n";
/// Writes per sled batch during a restore.
const BATCH: usize = 4_096;
/// Longest key or value a backup may hold (sled's own limit is far above
/// anything the coordinator writes; this only stops a damaged length field
/// from asking for gigabytes).
const MAX_FIELD: u32 = 64 * 1024 * 1024;

/// Why a backup or restore failed; each names the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir}: the store is in use (stop the coordinator before a backup or restore): {source}"
    )]
    InUse { dir: PathBuf, source: StoreError },
    #[error("{dir}: {source}")]
    Store { dir: PathBuf, source: StoreError },
    #[error("{path}: not a usable portwatch store backup: {reason}")]
    NotABackup { path: PathBuf, reason: String },
    #[error("{path}: already exists; choose a new file (a backup never overwrites one)")]
    OutputExists { path: PathBuf },
    #[error(
        "{dir}: not empty; restore into a new or empty directory (move the damaged one aside first)"
    )]
    TargetNotEmpty { dir: PathBuf },
}

/// What a backup or restore held: records per tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub trees: BTreeMap<String, u64>,
    /// SHA-256 of the backup file's contents (hex).
    pub sha256: String,
}

impl Summary {
    pub fn records(&self) -> u64 {
        self.trees.values().sum()
    }

    /// Records in one tree (0 when absent).
    pub fn count(&self, tree: &str) -> u64 {
        self.trees.get(tree).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} trees, {} records (monitors {}, results {}, incidents {}, channels {}, tokens {}); sha256 {}",
            self.trees.len(),
            self.records(),
            self.count("monitors"),
            self.count("history"),
            self.count("incidents"),
            self.count("channels"),
            self.count("tokens"),
            self.sha256
        )
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn store_err(dir: &Path, e: StoreError) -> BackupError {
    let locked = matches!(&e, StoreError::Sled(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock"));
    if locked {
        BackupError::InUse {
            dir: dir.to_path_buf(),
            source: e,
        }
    } else {
        BackupError::Store {
            dir: dir.to_path_buf(),
            source: e,
        }
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.inner.write_all(bytes)
    }

    fn field(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|n| *n <= MAX_FIELD)
            .ok_or_else(|| std::io::Error::other("a key or value larger than 64 MiB"))?;
        self.put(&len.to_be_bytes())?;
        self.put(bytes)
    }
}

/// Writes a backup of the (stopped) store in `data_dir` to `out`, a new file.
pub fn backup(data_dir: &Path, out: &Path) -> Result<Summary, BackupError> {
    if out.exists() {
        return Err(BackupError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    if !data_dir.join("db").is_file() {
        return Err(BackupError::Io {
            path: data_dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no store here (no sled `db` file)",
            ),
        });
    }
    let trees = open_trees(data_dir, DEFAULT_CACHE_MIB * 1024 * 1024)
        .map_err(|e| store_err(data_dir, e))?;
    // A store that lost durable writes is not what anyone wants to restore.
    seal::check(&trees, data_dir).map_err(|e| store_err(data_dir, e))?;
    let partial = out.with_extension("partial");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io(&partial))?;
    let mut w = Hashing {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
    };
    let mut summary = Summary::default();
    let result = (|| -> Result<(), BackupError> {
        w.put(HEADER).map_err(io(&partial))?;
        for name in trees.db.tree_names() {
            let tree = trees
                .db
                .open_tree(&name)
                .map_err(|e| store_err(data_dir, e.into()))?;
            w.put(b"T").map_err(io(&partial))?;
            w.field(&name).map_err(io(&partial))?;
            let mut n = 0u64;
            for kv in tree.iter() {
                let (k, v) = kv.map_err(|e| store_err(data_dir, e.into()))?;
                w.put(b"K").map_err(io(&partial))?;
                w.field(&k).map_err(io(&partial))?;
                w.field(&v).map_err(io(&partial))?;
                n += 1;
            }
            summary
                .trees
                .insert(String::from_utf8_lossy(&name).into_owned(), n);
        }
        let digest = w.hash.clone().finalize();
        w.inner.write_all(b"Z").map_err(io(&partial))?;
        w.inner.write_all(&digest).map_err(io(&partial))?;
        summary.sha256 = hex::encode(digest);
        let file = w
            .inner
            .into_inner()
            .map_err(|e| io(&partial)(e.into_error()))?;
        file.sync_all().map_err(io(&partial))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, out).map_err(io(out))?;
    Ok(summary)
}

/// One record of a backup file.
enum Record {
    Tree(Vec<u8>),
    Kv(Vec<u8>, Vec<u8>),
}

/// Reads a backup file record by record, hashing as it goes.
struct BackupReader {
    path: PathBuf,
    inner: BufReader<File>,
    hash: Sha256,
}

impl BackupReader {
    fn open(path: &Path) -> Result<BackupReader, BackupError> {
        let file = File::open(path).map_err(io(path))?;
        let mut r = BackupReader {
            path: path.to_path_buf(),
            inner: BufReader::new(file),
            hash: Sha256::new(),
        };
        let mut header = vec![0u8; HEADER.len()];
        r.exact(&mut header)?;
        if header != HEADER {
            return Err(r.bad("it does not start with the portwatch backup header".into()));
        }
        Ok(r)
    }

    fn bad(&self, reason: String) -> BackupError {
        BackupError::NotABackup {
            path: self.path.clone(),
            reason,
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.bad("it ends early (truncated)".into())
            } else {
                io(&self.path)(e)
            }
        })?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn field(&mut self) -> Result<Vec<u8>, BackupError> {
        let mut len = [0u8; 4];
        self.exact(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_FIELD {
            return Err(self.bad(format!("a field claims {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.exact(&mut buf)?;
        Ok(buf)
    }

    /// The next record; `None` after the digest, which it checks.
    fn next(&mut self) -> Result<Option<Record>, BackupError> {
        let mut tag = [0u8; 1];
        let before = self.hash.clone();
        self.exact(&mut tag)?;
        match tag[0] {
            b'T' => Ok(Some(Record::Tree(self.field()?))),
            b'K' => {
                let k = self.field()?;
                let v = self.field()?;
                Ok(Some(Record::Kv(k, v)))
            }
            b'Z' => {
                let expected = before.clone().finalize();
                let mut got = [0u8; 32];
                self.inner
                    .read_exact(&mut got)
                    .map_err(|_| self.bad("its checksum is cut off (truncated)".into()))?;
                if got[..] != expected[..] {
                    return Err(self.bad("its SHA-256 does not match its contents".into()));
                }
                let mut rest = [0u8; 1];
                if self.inner.read(&mut rest).map_err(io(&self.path))? != 0 {
                    return Err(self.bad("bytes follow its checksum".into()));
                }
                self.hash = before;
                Ok(None)
            }
            other => Err(self.bad(format!("an unknown record type {other:#04x}"))),
        }
    }

    fn digest(&self) -> String {
        hex::encode(self.hash.clone().finalize())
    }
}

/// Reads a whole backup and checks it (structure and digest) without writing.
pub fn verify(input: &Path) -> Result<Summary, BackupError> {
    let mut r = BackupReader::open(input)?;
    let mut summary = Summary::default();
    let mut current: Option<String> = None;
    while let Some(rec) = r.next()? {
        match rec {
            Record::Tree(name) => {
                let name = String::from_utf8_lossy(&name).into_owned();
                summary.trees.insert(name.clone(), 0);
                current = Some(name);
            }
            Record::Kv(..) => match current.as_ref().and_then(|t| summary.trees.get_mut(t)) {
                Some(n) => *n += 1,
                None => return Err(r.bad("a record before any tree".into())),
            },
        }
    }
    summary.sha256 = r.digest();
    Ok(summary)
}

/// Restores the backup `input` into `data_dir`, which must be new or empty.
/// Checks the whole file first; writes nothing if it is damaged.
pub fn restore(input: &Path, data_dir: &Path) -> Result<Summary, BackupError> {
    let summary = verify(input)?;
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::TargetNotEmpty {
                    dir: data_dir.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        }
        Err(e) => return Err(io(data_dir)(e)),
    }
    {
        let db = super::handle::guarded("restore", || {
            Ok(sled::Config::new().path(data_dir).create_new(true).open()?)
        })
        .map_err(|e| store_err(data_dir, e))?;
        let sled_err = |e: sled::Error| store_err(data_dir, e.into());
        let mut r = BackupReader::open(input)?;
        let mut tree: Option<sled::Tree> = None;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        while let Some(rec) = r.next()? {
            match rec {
                Record::Tree(name) => {
                    if let Some(t) = &tree {
                        t.apply_batch(std::mem::take(&mut batch))
                            .map_err(sled_err)?;
                        in_batch = 0;
                    }
                    tree = Some(db.open_tree(name).map_err(sled_err)?);
                }
                Record::Kv(k, v) => {
                    batch.insert(k, v);
                    in_batch += 1;
                    if in_batch == BATCH
                        && let Some(t) = &tree
                    {
                        t.apply_batch(std::mem::take(&mut batch))
                            .map_err(sled_err)?;
                        in_batch = 0;
                    }
                }
            }
        }
        if let Some(t) = &tree {
            t.apply_batch(batch).map_err(sled_err)?;
        }
        db.flush().map_err(sled_err)?;
    }
    // Opened as the coordinator opens it: the seal starts here, and a restore
    // that cannot be opened is reported now rather than at the next start.
    let store = Store::open(data_dir).map_err(|e| store_err(data_dir, e))?;
    let restored = store.history_len() as u64;
    if restored != summary.count("history") {
        return Err(store_err(
            data_dir,
            StoreError::Damaged(format!(
                "restored {restored} results, the backup holds {}",
                summary.count("history")
            )),
        ));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests;
