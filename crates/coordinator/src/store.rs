//! The coordinator's durable state, on sled.
//!
//! One typed API; no sled call lives outside this file, so a second backend
//! only has to provide these methods. Values are the protocol's own messages,
//! prost-encoded (one schema, already versioned by its field numbers), except
//! token records, which have no wire form and are JSON.
//!
//! Guarantees:
//! - `ingest` writes a batch's results, the latest-result index and the agent's
//!   acknowledged sequence number in one transaction, and returns only after
//!   `flush`: the caller may acknowledge what it returns.
//! - History keys are derived from (monitor, checked_at, region, agent, seq), so
//!   a replayed result overwrites itself instead of being stored twice.
//! - The latest-result index only moves forward in `checked_at`: a replayed old
//!   result lands in history but never hides a newer one.
//! - An incident change (or a probe region's outage change) and the deliveries it
//!   causes are written in one transaction: after a crash either both exist or
//!   neither does, so a notification is never lost and never invented.
//! - A delivery is in the pending index exactly while its state is PENDING; the
//!   outbox worker reads only that index to find work.
//! - A monitor is in the per-tenant index (`tenant_monitors`, keyed
//!   `tenant_id \0 monitor_id`) exactly while it is stored, and each tenant's
//!   count (`tenant_monitor_counts`) is the number of its index entries: the
//!   monitor, its index entry and the count change in one transaction. So a
//!   tenant's monitors are listed, and counted for its plan quota, without
//!   reading any other tenant's. A store written before the index existed gets
//!   it built when opened (see `Trees::open`).
//! - A token and its id index entry are written in one transaction, and a new
//!   tenant with its first token (`put_tenant_with_token`): no tenant without
//!   the token it was created with.
//!
//! The coordinator holds a [`Store`] (`handle`), which guards every call into
//! these trees: writes wait out a failed disk, a panic inside sled becomes an
//! error, and a database that failed is replaced by a fresh open of its files.
//! An open refuses files that lost durable writes (`seal`). `backup` writes and
//! restores the whole store as one file.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, Instant};

use portwatch_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Db, Tree};

pub mod backup;
mod handle;
pub mod postgres;
mod seal;
mod storage;

pub use handle::{FLUSH_TIMEOUT, SledStore, StoreState};
pub use seal::SEAL_FILE;
pub use storage::{Storage, Store};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage: corrupt record in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    /// The store cannot take writes now (its disk failed or is full, or it is
    /// being reopened); the coordinator retries on its own.
    #[error("store: not writable: {0}")]
    Unavailable(String),
    /// sled panicked inside a call (a damaged file, or a sled bug).
    #[error("storage: sled failed inside {call}: {message}")]
    Panicked { call: &'static str, message: String },
    /// The files in the data directory do not hold a store this coordinator
    /// can trust (see `seal`).
    #[error("storage: damaged: {0}")]
    Damaged(String),
    /// The database refused one call (a constraint, a statement the schema
    /// does not fit): that call failed, the store goes on (PostgreSQL only;
    /// a lost connection is `Unavailable`).
    #[error("storage: database: {0}")]
    Database(String),
    /// A deciding write of a coordinator whose term as the active one is
    /// over (PostgreSQL leases): refused, nothing written.
    #[error("storage: fenced: {0}")]
    Fenced(String),
}

impl StoreError {
    /// Whether this error means the open database can no longer be trusted to
    /// write (an I/O error, which sled keeps for the life of the handle, or a
    /// panic inside sled): the store stops taking writes and reopens itself.
    pub fn is_store_failure(&self) -> bool {
        match self {
            StoreError::Sled(e) => matches!(e, sled::Error::Io(_) | sled::Error::ReportableBug(_)),
            StoreError::Unavailable(_) | StoreError::Panicked { .. } => true,
            StoreError::Corrupt { .. }
            | StoreError::Damaged(_)
            | StoreError::Database(_)
            | StoreError::Fenced(_) => false,
        }
    }

    /// Whether the files themselves are damaged, so that only a restore from a
    /// backup helps (as opposed to a full disk, which heals when freed).
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::Sled(e) => matches!(e, sled::Error::Corruption { .. }),
            StoreError::Corrupt { .. } | StoreError::Damaged(_) | StoreError::Panicked { .. } => {
                true
            }
            StoreError::Unavailable(_) | StoreError::Database(_) | StoreError::Fenced(_) => false,
        }
    }

    /// The gRPC status a caller of the API gets: DATA_LOSS for damaged files
    /// (waiting will not help), UNAVAILABLE while the store cannot write
    /// (retry later: nothing acknowledged is lost), INTERNAL otherwise.
    pub fn into_status(self) -> tonic::Status {
        if let StoreError::Fenced(_) = self {
            return tonic::Status::unavailable(format!(
                "{self}; retry: the active coordinator answers"
            ));
        }
        if self.is_damage() {
            tonic::Status::data_loss(format!(
                "{self}; the coordinator's store is damaged: its operator must restore it \
                 from a backup"
            ))
        } else if self.is_store_failure() {
            tonic::Status::unavailable(format!(
                "{self}; the coordinator reopens its store on its own once the disk \
                 can be written again: retry later"
            ))
        } else {
            tonic::Status::internal(self.to_string())
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What a token grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenScope {
    Tenant { tenant_id: String },
    Agent { region: String },
}

/// A stored token: only the SHA-256 of the secret is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub hash: String,
    pub scope: TokenScope,
    pub description: String,
    pub created_at_us: u64,
    pub revoked: bool,
}

/// One result to ingest, with the agent's sequence number.
pub struct Ingest<'a> {
    pub seq: u64,
    pub result: &'a v1::CheckResult,
}

/// What `ingest` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Results newly stored.
    pub stored: usize,
    /// Results dropped because their sequence number was already acknowledged.
    pub duplicates: usize,
    /// Results that became the latest for their (monitor, region).
    pub became_latest: Vec<usize>,
    /// The agent's acknowledged sequence number after the batch.
    pub acked_seq: u64,
}

/// A page of history.
pub struct HistoryPage {
    pub results: Vec<v1::CheckResult>,
    /// Resume after this key (hex), when there is more.
    pub next: Option<String>,
}

/// One notification to send: the delivery as the admin API shows it, plus what the
/// outbox worker needs to render it on every attempt. The subject is a snapshot
/// taken when the delivery was planned, so every retry says what the first
/// attempt said. Stored prost-encoded like the protocol's own messages.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxRecord {
    #[prost(message, optional, tag = "1")]
    pub delivery: Option<v1::Delivery>,
    /// The channel's tenant; empty for the operator's channels.
    #[prost(string, tag = "2")]
    pub tenant_id: String,
    /// The incident when the delivery was planned (opened/resolved deliveries).
    #[prost(message, optional, tag = "3")]
    pub incident: Option<v1::Incident>,
    /// The probe region's outage (region offline/online deliveries).
    #[prost(message, optional, tag = "4")]
    pub outage: Option<RegionOutage>,
    /// The monitor's flap detection when a "flapping" delivery was planned.
    #[prost(message, optional, tag = "5")]
    pub flap: Option<FlapTerms>,
}

/// The flap-detection settings a "flapping" notice quotes ("4 changes within
/// 20s; closes after 5s up"), as they were when it was planned, so every retry
/// says the same.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct FlapTerms {
    #[prost(uint32, tag = "1")]
    pub threshold: u32,
    #[prost(uint64, tag = "2")]
    pub window_ms: u64,
    #[prost(uint64, tag = "3")]
    pub stable_for_ms: u64,
}

impl OutboxRecord {
    /// The delivery id (empty only for a corrupt record).
    pub fn id(&self) -> &str {
        self.delivery.as_ref().map_or("", |d| d.id.as_str())
    }
}

/// A probe region that has had no live agent for longer than the grace period
/// and whose operator has been told so. Kept until the "back online" notice is
/// planned, so that notice is sent only after an offline notice, even across a
/// restart.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegionOutage {
    /// Names this outage in idempotency keys and PagerDuty dedup keys.
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub region: String,
    /// Since when the region has had no live agent.
    #[prost(message, optional, tag = "3")]
    pub offline_since: Option<prost_types::Timestamp>,
    /// When the offline notice was planned.
    #[prost(message, optional, tag = "4")]
    pub noticed_at: Option<prost_types::Timestamp>,
    /// When an agent came back (set only in the online notice's snapshot).
    #[prost(message, optional, tag = "5")]
    pub online_at: Option<prost_types::Timestamp>,
    /// The channels told of the outage: only they hear that it ended.
    #[prost(string, repeated, tag = "6")]
    pub channel_ids: Vec<String>,
}

/// One open sled database and its trees: the typed API itself. The rest of
/// the coordinator reaches it only through [`Store`], which decides whether a
/// call may run (writes wait out a failed disk), turns a panic inside sled into
/// an error, and swaps in a freshly opened `Trees` after an I/O failure.
pub(crate) struct Trees {
    db: Db,
    tenants: Tree,
    tokens: Tree,
    token_ids: Tree,
    regions: Tree,
    agents: Tree,
    agent_seq: Tree,
    monitors: Tree,
    /// `tenant_id \0 monitor_id` -> empty, for every stored monitor.
    ///
    /// Why an index in the store rather than counting the hub's in-memory
    /// monitors: the store is what the admin API reads and writes under its
    /// write lock, and it is durable; the hub learns of a monitor only after it
    /// is flushed (and is not told of monitors written straight into the store),
    /// and holds them in one map keyed by id behind the mutex that ingestion
    /// takes, so counting or listing one tenant there would still walk every
    /// monitor. Written in the same transaction as the monitor, the index cannot
    /// disagree with it, even after a crash.
    tenant_monitors: Tree,
    /// `tenant_id` -> number of its entries in `tenant_monitors` (u64, BE); absent = 0.
    tenant_monitor_counts: Tree,
    /// Store-format markers (`TENANT_INDEX_KEY`: the per-tenant index is complete).
    meta: Tree,
    latest: Tree,
    history: Tree,
    incidents: Tree,
    open_incidents: Tree,
    channels: Tree,
    /// Maintenance windows by id.
    maintenance: Tree,
    outbox: Tree,
    /// Delivery id -> next attempt (unix µs, BE) for every PENDING delivery.
    outbox_pending: Tree,
    region_outages: Tree,
    /// Delivery id -> the outbox worker attempting it and until when
    /// (`claim_delivery`); in memory, as one process is the only writer.
    claims: std::sync::Mutex<HashMap<String, (String, Instant)>>,
}

const SEP: u8 = 0;

/// Set in `meta` once `tenant_monitors` and `tenant_monitor_counts` hold every
/// monitor; absent in stores written before they existed.
const TENANT_INDEX_KEY: &[u8] = b"tenant_monitors_v1";

fn decode<M: Message + Default>(tree: &'static str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    })
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(SEP);
    k.extend_from_slice(b.as_bytes());
    k
}

fn prefix(a: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(SEP);
    k
}

/// History key: monitor \0 checked_at_us(BE) region \0 agent \0 seq(BE).
fn history_key(monitor: &str, at_us: u64, region: &str, agent: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(monitor);
    k.extend_from_slice(&at_us.to_be_bytes());
    k.extend_from_slice(region.as_bytes());
    k.push(SEP);
    k.extend_from_slice(agent.as_bytes());
    k.push(SEP);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn checked_at_us(r: &v1::CheckResult) -> u64 {
    r.checked_at
        .as_ref()
        .and_then(portwatch_proto::time::from_timestamp)
        .map_or(0, portwatch_proto::time::unix_micros)
}

fn ts_micros(ts: Option<&prost_types::Timestamp>) -> u64 {
    ts.and_then(portwatch_proto::time::from_timestamp)
        .map_or(0, portwatch_proto::time::unix_micros)
}

type TxResult = std::result::Result<(), ConflictableTransactionError<StoreError>>;

/// Writes deliveries and keeps the pending index in step, inside a transaction.
fn write_deliveries(
    outbox: &sled::transaction::TransactionalTree,
    pending: &sled::transaction::TransactionalTree,
    records: &[OutboxRecord],
) -> TxResult {
    for r in records {
        let Some(d) = &r.delivery else {
            return Err(ConflictableTransactionError::Abort(StoreError::Corrupt {
                tree: "outbox",
                reason: "a delivery record without its delivery".into(),
            }));
        };
        outbox.insert(d.id.as_bytes(), r.encode_to_vec())?;
        if d.state == v1::DeliveryState::Pending as i32 {
            let at = ts_micros(d.next_attempt_at.as_ref());
            pending.insert(d.id.as_bytes(), &at.to_be_bytes())?;
        } else {
            pending.remove(d.id.as_bytes())?;
        }
    }
    Ok(())
}

fn seq_of(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

/// A tenant's monitor count as stored; anything but 8 bytes is corruption (not
/// zero: a count read too low would let a tenant past its quota).
fn count_of(bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            tree: "tenant_monitor_counts",
            reason: format!("a count of {} bytes", bytes.len()),
        })
}

/// Adds one to (`up`) or takes one from a tenant's monitor count, inside a
/// transaction; a count of zero is removed.
fn bump_count(counts: &sled::transaction::TransactionalTree, tenant: &str, up: bool) -> TxResult {
    let now = match counts.get(tenant.as_bytes())? {
        Some(v) => count_of(&v).map_err(ConflictableTransactionError::Abort)?,
        None => 0,
    };
    let next = if up {
        now.saturating_add(1)
    } else {
        now.saturating_sub(1)
    };
    if next == 0 {
        counts.remove(tenant.as_bytes())?;
    } else {
        counts.insert(tenant.as_bytes(), &next.to_be_bytes())?;
    }
    Ok(())
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

/// sled's page cache unless configured (`store_cache_mib`), MiB. sled's own
/// default is 1 GiB, and its resident memory is a few times its setting.
pub const DEFAULT_CACHE_MIB: u64 = 256;

impl Trees {
    /// Opens (or creates) the store in `dir`, giving sled a page cache of
    /// `cache_bytes`. sled releases its file lock a little after a previous
    /// handle is dropped, so a reopen retries for a bounded time.
    ///
    /// A store written before the per-tenant monitor index existed (no marker
    /// in `meta`) gets the index built here, once, from the `monitors` tree: a
    /// full read of every monitor, at start only. Going back to an older
    /// coordinator afterwards is not supported: it would write monitors without
    /// index entries, and the marker would keep this from noticing.
    fn open(dir: &Path, cache_bytes: u64) -> Result<Trees> {
        let mut attempt = 0;
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if attempt < 50 && e.to_string().contains("could not acquire lock") =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let store = Trees {
            tenants: db.open_tree("tenants")?,
            tokens: db.open_tree("tokens")?,
            token_ids: db.open_tree("token_ids")?,
            regions: db.open_tree("regions")?,
            agents: db.open_tree("agents")?,
            agent_seq: db.open_tree("agent_seq")?,
            monitors: db.open_tree("monitors")?,
            tenant_monitors: db.open_tree("tenant_monitors")?,
            tenant_monitor_counts: db.open_tree("tenant_monitor_counts")?,
            meta: db.open_tree("meta")?,
            latest: db.open_tree("latest")?,
            history: db.open_tree("history")?,
            incidents: db.open_tree("incidents")?,
            open_incidents: db.open_tree("open_incidents")?,
            channels: db.open_tree("channels")?,
            maintenance: db.open_tree("maintenance")?,
            outbox: db.open_tree("outbox")?,
            outbox_pending: db.open_tree("outbox_pending")?,
            region_outages: db.open_tree("region_outages")?,
            claims: std::sync::Mutex::default(),
            db,
        };
        if store.meta.get(TENANT_INDEX_KEY)?.is_none() {
            store.build_tenant_index()?;
        }
        Ok(store)
    }

    /// Builds the per-tenant index and counts from the `monitors` tree (the
    /// migration of a store written before they existed). Safe to repeat: it
    /// starts from empty, and the marker is written only after the index is
    /// durable, so a crash half-way means it runs again at the next open.
    fn build_tenant_index(&self) -> Result<()> {
        self.tenant_monitors.clear()?;
        self.tenant_monitor_counts.clear()?;
        let mut index = sled::Batch::default();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for v in self.monitors.iter().values() {
            let m: v1::Monitor = decode("monitors", &v?)?;
            index.insert(key2(&m.tenant_id, &m.id), &[]);
            *counts.entry(m.tenant_id).or_default() += 1;
        }
        let mut batch = sled::Batch::default();
        for (tenant, n) in &counts {
            batch.insert(tenant.as_bytes(), &n.to_be_bytes());
        }
        self.tenant_monitors.apply_batch(index)?;
        self.tenant_monitor_counts.apply_batch(batch)?;
        self.db.flush()?;
        self.meta.insert(TENANT_INDEX_KEY, &[1])?;
        self.db.flush()?;
        Ok(())
    }

    /// Reads and decodes every record of every tree the coordinator runs on
    /// (all but `history`, the bulk, which `verify_history` reads): at open,
    /// so that damage there stops the start instead of surfacing as odd
    /// behaviour later. Costs one read of the state, not of the history.
    fn verify_state(&self) -> Result<()> {
        fn all<M: Message + Default>(tree: &Tree, name: &'static str) -> Result<()> {
            for kv in tree.iter() {
                let (_, v) = kv?;
                decode::<M>(name, &v)?;
            }
            Ok(())
        }
        fn sized(tree: &Tree, name: &'static str, len: Option<usize>) -> Result<()> {
            for kv in tree.iter() {
                let (k, v) = kv?;
                if std::str::from_utf8(&k).is_err() {
                    return Err(StoreError::Corrupt {
                        tree: name,
                        reason: "a key that is not UTF-8".into(),
                    });
                }
                if len.is_some_and(|n| v.len() != n) {
                    return Err(StoreError::Corrupt {
                        tree: name,
                        reason: format!("a value of {} bytes", v.len()),
                    });
                }
            }
            Ok(())
        }
        all::<v1::Tenant>(&self.tenants, "tenants")?;
        for kv in self.tokens.iter() {
            Self::decode_token(&kv?.1)?;
        }
        sized(&self.token_ids, "token_ids", None)?;
        all::<v1::Region>(&self.regions, "regions")?;
        all::<v1::Agent>(&self.agents, "agents")?;
        sized(&self.agent_seq, "agent_seq", Some(8))?;
        all::<v1::Monitor>(&self.monitors, "monitors")?;
        sized(&self.tenant_monitors, "tenant_monitors", Some(0))?;
        sized(
            &self.tenant_monitor_counts,
            "tenant_monitor_counts",
            Some(8),
        )?;
        sized(&self.meta, "meta", None)?;
        all::<v1::CheckResult>(&self.latest, "latest")?;
        all::<v1::Incident>(&self.incidents, "incidents")?;
        sized(&self.open_incidents, "open_incidents", None)?;
        all::<v1::Channel>(&self.channels, "channels")?;
        all::<v1::MaintenanceWindow>(&self.maintenance, "maintenance")?;
        all::<OutboxRecord>(&self.outbox, "outbox")?;
        sized(&self.outbox_pending, "outbox_pending", Some(8))?;
        all::<RegionOutage>(&self.region_outages, "region_outages")?;
        Ok(())
    }

    /// Reads and decodes every history row; returns how many.
    fn verify_history(&self) -> Result<u64> {
        let mut n = 0;
        for kv in self.history.iter() {
            decode::<v1::CheckResult>("history", &kv?.1)?;
            n += 1;
        }
        Ok(n)
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    // ------------------------------------------------------------ tenants

    pub fn put_tenant(&self, t: &v1::Tenant) -> Result<()> {
        self.tenants.insert(t.id.as_bytes(), t.encode_to_vec())?;
        Ok(())
    }

    pub fn get_tenant(&self, id: &str) -> Result<Option<v1::Tenant>> {
        self.tenants
            .get(id.as_bytes())?
            .map(|v| decode("tenants", &v))
            .transpose()
    }

    pub fn list_tenants(&self) -> Result<Vec<v1::Tenant>> {
        self.tenants
            .iter()
            .values()
            .map(|v| decode("tenants", &v?))
            .collect()
    }

    // ------------------------------------------------------------ tokens

    fn encode_token(rec: &TokenRecord) -> Result<Vec<u8>> {
        serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt {
            tree: "tokens",
            reason: e.to_string(),
        })
    }

    /// Writes a token with its id index entry, in one transaction.
    pub fn put_token(&self, rec: &TokenRecord) -> Result<()> {
        let json = Self::encode_token(rec)?;
        (&self.tokens, &self.token_ids).transaction(|(tokens, ids)| {
            tokens.insert(rec.hash.as_bytes(), json.as_slice())?;
            ids.insert(rec.id.as_bytes(), rec.hash.as_bytes())?;
            Ok(())
        })?;
        Ok(())
    }

    /// A new tenant and its first token (with its id index entry) in one
    /// transaction: a tenant is never stored without the token it was created
    /// with, nor the token without its tenant.
    pub fn put_tenant_with_token(&self, t: &v1::Tenant, rec: &TokenRecord) -> Result<()> {
        let json = Self::encode_token(rec)?;
        (&self.tenants, &self.tokens, &self.token_ids).transaction(|(tenants, tokens, ids)| {
            tenants.insert(t.id.as_bytes(), t.encode_to_vec())?;
            tokens.insert(rec.hash.as_bytes(), json.as_slice())?;
            ids.insert(rec.id.as_bytes(), rec.hash.as_bytes())?;
            Ok(())
        })?;
        Ok(())
    }

    fn decode_token(v: &[u8]) -> Result<TokenRecord> {
        serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
            tree: "tokens",
            reason: e.to_string(),
        })
    }

    /// The token with this secret hash.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        self.tokens
            .get(hash.as_bytes())?
            .map(|v| Self::decode_token(&v))
            .transpose()
    }

    pub fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        match self.token_ids.get(id.as_bytes())? {
            Some(hash) => match std::str::from_utf8(&hash) {
                Ok(h) => self.token_by_hash(h),
                Err(e) => Err(StoreError::Corrupt {
                    tree: "token_ids",
                    reason: e.to_string(),
                }),
            },
            None => Ok(None),
        }
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.tokens
            .iter()
            .values()
            .map(|v| Self::decode_token(&v?))
            .collect()
    }

    // ------------------------------------------------------------ regions

    pub fn put_region(&self, r: &v1::Region) -> Result<()> {
        self.regions.insert(r.name.as_bytes(), r.encode_to_vec())?;
        Ok(())
    }

    pub fn get_region(&self, name: &str) -> Result<Option<v1::Region>> {
        self.regions
            .get(name.as_bytes())?
            .map(|v| decode("regions", &v))
            .transpose()
    }

    pub fn list_regions(&self) -> Result<Vec<v1::Region>> {
        self.regions
            .iter()
            .values()
            .map(|v| decode("regions", &v?))
            .collect()
    }

    pub fn delete_region(&self, name: &str) -> Result<bool> {
        Ok(self.regions.remove(name.as_bytes())?.is_some())
    }

    // ------------------------------------------------------------ agents

    pub fn put_agent(&self, a: &v1::Agent) -> Result<()> {
        self.agents
            .insert(a.agent_id.as_bytes(), a.encode_to_vec())?;
        Ok(())
    }

    pub fn get_agent(&self, id: &str) -> Result<Option<v1::Agent>> {
        self.agents
            .get(id.as_bytes())?
            .map(|v| decode("agents", &v))
            .transpose()
    }

    pub fn list_agents(&self) -> Result<Vec<v1::Agent>> {
        self.agents
            .iter()
            .values()
            .map(|v| decode("agents", &v?))
            .collect()
    }

    /// The highest sequence number durable for this agent (0 = none).
    pub fn acked_seq(&self, agent_id: &str) -> Result<u64> {
        Ok(self
            .agent_seq
            .get(agent_id.as_bytes())?
            .map_or(0, |v| seq_of(&v)))
    }

    // ------------------------------------------------------------ monitors

    /// Writes a monitor (new or changed) with its per-tenant index entry and
    /// count, in one transaction.
    pub fn put_monitor(&self, m: &v1::Monitor) -> Result<()> {
        self.put_monitors(std::slice::from_ref(m))
    }

    /// Writes monitors as `put_monitor` does, all in one transaction (cheaper
    /// per monitor when loading many: a sled transaction costs far more than
    /// the writes in it).
    pub fn put_monitors(&self, ms: &[v1::Monitor]) -> Result<()> {
        (
            &self.monitors,
            &self.tenant_monitors,
            &self.tenant_monitor_counts,
        )
            .transaction(|(monitors, index, counts)| {
                for m in ms {
                    let entry = key2(&m.tenant_id, &m.id);
                    if index.get(&entry)?.is_none() {
                        // New to this tenant: a new monitor, or (never through
                        // the admin API) one that belonged to another tenant.
                        if let Some(old) = monitors.get(m.id.as_bytes())? {
                            let old: v1::Monitor = decode("monitors", &old).map_err(abort)?;
                            if index.remove(key2(&old.tenant_id, &m.id))?.is_some() {
                                bump_count(counts, &old.tenant_id, false)?;
                            }
                        }
                        index.insert(entry, &[])?;
                        bump_count(counts, &m.tenant_id, true)?;
                    }
                    monitors.insert(m.id.as_bytes(), m.encode_to_vec())?;
                }
                Ok(())
            })?;
        Ok(())
    }

    pub fn get_monitor(&self, id: &str) -> Result<Option<v1::Monitor>> {
        self.monitors
            .get(id.as_bytes())?
            .map(|v| decode("monitors", &v))
            .transpose()
    }

    /// Every monitor of every tenant (start-up, and checks that span tenants).
    pub fn list_monitors(&self) -> Result<Vec<v1::Monitor>> {
        self.monitors
            .iter()
            .values()
            .map(|v| decode("monitors", &v?))
            .collect()
    }

    /// How many monitors a tenant has: one read, whatever the store holds.
    pub fn tenant_monitor_count(&self, tenant_id: &str) -> Result<usize> {
        let n = match self.tenant_monitor_counts.get(tenant_id.as_bytes())? {
            Some(v) => count_of(&v)?,
            None => 0,
        };
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Every tenant's monitor count (tenants without monitors are absent).
    pub fn tenant_monitor_counts(&self) -> Result<BTreeMap<String, usize>> {
        self.tenant_monitor_counts
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let tenant = String::from_utf8(k.to_vec()).map_err(|e| StoreError::Corrupt {
                    tree: "tenant_monitor_counts",
                    reason: e.to_string(),
                })?;
                let n = usize::try_from(count_of(&v)?).unwrap_or(usize::MAX);
                Ok((tenant, n))
            })
            .collect()
    }

    /// Up to `limit` of a tenant's monitors in id order, those with an id after
    /// `after` (all when empty). Reads only this tenant's index entries and
    /// monitors.
    pub fn tenant_monitors(
        &self,
        tenant_id: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<v1::Monitor>> {
        let start = if after.is_empty() {
            Bound::Included(prefix(tenant_id))
        } else {
            Bound::Excluded(key2(tenant_id, after))
        };
        // Every key of this tenant is below `tenant_id \x01`.
        let mut end = tenant_id.as_bytes().to_vec();
        end.push(SEP + 1);
        let skip = tenant_id.len() + 1;
        let mut out = Vec::new();
        for k in self
            .tenant_monitors
            .range::<Vec<u8>, _>((start, Bound::Excluded(end)))
            .keys()
            .take(limit)
        {
            let k = k?;
            let corrupt = |reason: String| StoreError::Corrupt {
                tree: "tenant_monitors",
                reason,
            };
            let id = k.get(skip..).unwrap_or_default();
            let m: v1::Monitor = match self.monitors.get(id)? {
                Some(v) => decode("monitors", &v)?,
                None => {
                    return Err(corrupt(format!(
                        "an entry for missing monitor {}",
                        String::from_utf8_lossy(id)
                    )));
                }
            };
            if m.tenant_id != tenant_id {
                return Err(corrupt(format!(
                    "monitor {} is filed under tenant {tenant_id} but belongs to {}",
                    m.id, m.tenant_id
                )));
            }
            out.push(m);
        }
        Ok(out)
    }

    /// Removes a monitor (with its index entry and count, in one transaction)
    /// and its latest results; its history ages out with retention.
    pub fn delete_monitor(&self, id: &str) -> Result<bool> {
        self.delete_monitor_closing(id, None)
    }

    /// Deletes a monitor and, in the same transaction, writes its open incident
    /// as closed (`closing`, with `closed_at` set): after a crash either the
    /// monitor still exists with its incident open, or both changes are there.
    /// Never a deleted monitor whose incident stays open forever.
    pub fn delete_monitor_closing(&self, id: &str, closing: Option<&v1::Incident>) -> Result<bool> {
        let existed = (
            &self.monitors,
            &self.tenant_monitors,
            &self.tenant_monitor_counts,
            &self.incidents,
            &self.open_incidents,
        )
            .transaction(|(monitors, index, counts, incidents, open_idx)| {
                let Some(old) = monitors.remove(id.as_bytes())? else {
                    return Ok(false);
                };
                let old: v1::Monitor = decode("monitors", &old).map_err(abort)?;
                if index.remove(key2(&old.tenant_id, id))?.is_some() {
                    bump_count(counts, &old.tenant_id, false)?;
                }
                if let Some(i) = closing.filter(|i| i.monitor_id == id) {
                    incidents.insert(i.id.as_bytes(), i.encode_to_vec())?;
                    if open_idx.get(id.as_bytes())?.as_deref() == Some(i.id.as_bytes()) {
                        open_idx.remove(id.as_bytes())?;
                    }
                }
                Ok(true)
            })?;
        for key in self.latest.scan_prefix(prefix(id)).keys() {
            self.latest.remove(key?)?;
        }
        Ok(existed)
    }

    // ------------------------------------------------------------ results

    /// Stores a batch from one agent in one transaction (not yet flushed:
    /// `Store::ingest` flushes before it returns); the agent's acknowledged
    /// sequence becomes at least `up_to`.
    /// Results with `seq <= acked` are duplicates of a replay and are skipped.
    /// `region` is the agent's region from its token; it overwrites whatever the
    /// result says.
    fn ingest(
        &self,
        agent_id: &str,
        region: &str,
        batch: &[Ingest<'_>],
        up_to: u64,
    ) -> Result<Ingested> {
        let out = (&self.history, &self.latest, &self.agent_seq).transaction(
            |(history, latest, agent_seq)| {
                let mut acked = agent_seq
                    .get(agent_id.as_bytes())?
                    .map_or(0, |v| seq_of(&v));
                let mut out = Ingested::default();
                for (i, item) in batch.iter().enumerate() {
                    if item.seq <= acked {
                        out.duplicates += 1;
                        continue;
                    }
                    let mut r = item.result.clone();
                    r.region = region.to_string();
                    let at = checked_at_us(&r);
                    let bytes = r.encode_to_vec();
                    history.insert(
                        history_key(&r.monitor_id, at, region, agent_id, item.seq),
                        bytes.clone(),
                    )?;
                    let lkey = key2(&r.monitor_id, region);
                    let newer = match latest.get(&lkey)? {
                        Some(prev) => {
                            let prev: v1::CheckResult =
                                v1::CheckResult::decode(&*prev).map_err(|e| {
                                    ConflictableTransactionError::Abort(StoreError::Corrupt {
                                        tree: "latest",
                                        reason: e.to_string(),
                                    })
                                })?;
                            at >= checked_at_us(&prev)
                        }
                        None => true,
                    };
                    if newer {
                        latest.insert(lkey, bytes)?;
                        out.became_latest.push(i);
                    }
                    out.stored += 1;
                    acked = acked.max(item.seq);
                }
                // Refused results are acknowledged too (they must leave the agent's spool).
                acked = acked.max(up_to);
                agent_seq.insert(agent_id.as_bytes(), &acked.to_be_bytes())?;
                out.acked_seq = acked;
                Ok(out)
            },
        )?;
        Ok(out)
    }

    /// The latest result of every region for a monitor.
    pub fn latest_for(&self, monitor_id: &str) -> Result<Vec<v1::CheckResult>> {
        self.latest
            .scan_prefix(prefix(monitor_id))
            .values()
            .map(|v| decode("latest", &v?))
            .collect()
    }

    /// Every latest result (startup: rebuild the consensus state).
    pub fn all_latest(&self) -> Result<Vec<v1::CheckResult>> {
        self.latest
            .iter()
            .values()
            .map(|v| decode("latest", &v?))
            .collect()
    }

    /// History of a monitor in `[since_us, until_us)`, oldest first, optionally one region.
    pub fn history(
        &self,
        monitor_id: &str,
        since_us: u64,
        until_us: u64,
        region: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage> {
        let mut start = prefix(monitor_id);
        start.extend_from_slice(&since_us.to_be_bytes());
        if let Some(after) = after {
            let mut k = hex::decode(after).map_err(|e| StoreError::Corrupt {
                tree: "history",
                reason: format!("page token: {e}"),
            })?;
            // Strictly after the last key returned.
            k.push(0);
            if k > start {
                start = k;
            }
        }
        let mut end = prefix(monitor_id);
        end.extend_from_slice(&until_us.to_be_bytes());
        let mut results: Vec<(Vec<u8>, v1::CheckResult)> = Vec::new();
        let mut more = false;
        for item in self.history.range(start..end) {
            let (k, v) = item?;
            let r: v1::CheckResult = decode("history", &v)?;
            if region.is_some_and(|want| want != r.region) {
                continue;
            }
            if results.len() == limit {
                more = true;
                break;
            }
            results.push((k.to_vec(), r));
        }
        // The page token is the last returned key; the next page starts after it.
        let next = if more {
            results.last().map(|(k, _)| hex::encode(k))
        } else {
            None
        };
        Ok(HistoryPage {
            results: results.into_iter().map(|(_, r)| r).collect(),
            next,
        })
    }

    /// Number of stored history rows (all monitors).
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Deletes history older than `cutoff_us`. Returns how many rows went.
    pub fn prune_history(&self, cutoff_us: u64) -> Result<usize> {
        let mut removed = 0;
        let monitors: Vec<String> = self
            .monitors
            .iter()
            .keys()
            .filter_map(|k| k.ok().and_then(|k| String::from_utf8(k.to_vec()).ok()))
            .collect();
        // Deleted monitors' history too: walk every distinct prefix in the tree.
        let mut prefixes: Vec<Vec<u8>> = monitors.iter().map(|m| prefix(m)).collect();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let next = match &cursor {
                None => self.history.iter().next(),
                Some(c) => self.history.range(c.clone()..).next(),
            };
            let Some(item) = next else { break };
            let (k, _) = item?;
            let Some(pos) = k.iter().position(|b| *b == SEP) else {
                break;
            };
            let p = k[..=pos].to_vec();
            if !prefixes.contains(&p) {
                prefixes.push(p.clone());
            }
            let mut after = p;
            after.push(0xff);
            cursor = Some(after);
        }
        for p in prefixes {
            let mut end = p.clone();
            end.extend_from_slice(&cutoff_us.to_be_bytes());
            let keys: Vec<_> = self
                .history
                .range(p..end)
                .keys()
                .collect::<std::result::Result<_, _>>()?;
            for k in keys {
                self.history.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    // ------------------------------------------------------------ incidents

    /// Writes an incident; keeps the one-open-incident-per-monitor index in step.
    pub fn put_incident(&self, i: &v1::Incident) -> Result<()> {
        self.put_incident_with_deliveries(i, &[])
    }

    /// Writes an incident and the deliveries its opening or closing causes in one
    /// transaction (the outbox invariant: both or neither survive a crash). The
    /// caller flushes, then wakes the outbox worker.
    pub fn put_incident_with_deliveries(
        &self,
        i: &v1::Incident,
        deliveries: &[OutboxRecord],
    ) -> Result<()> {
        let open = i.closed_at.is_none();
        (
            &self.incidents,
            &self.open_incidents,
            &self.outbox,
            &self.outbox_pending,
        )
            .transaction(|(incidents, open_idx, outbox, pending)| {
                incidents.insert(i.id.as_bytes(), i.encode_to_vec())?;
                if open {
                    open_idx.insert(i.monitor_id.as_bytes(), i.id.as_bytes())?;
                } else if open_idx.get(i.monitor_id.as_bytes())?.as_deref() == Some(i.id.as_bytes())
                {
                    open_idx.remove(i.monitor_id.as_bytes())?;
                }
                write_deliveries(outbox, pending, deliveries)
            })?;
        Ok(())
    }

    pub fn get_incident(&self, id: &str) -> Result<Option<v1::Incident>> {
        self.incidents
            .get(id.as_bytes())?
            .map(|v| decode("incidents", &v))
            .transpose()
    }

    /// The open incident of a monitor, if any.
    pub fn open_incident(&self, monitor_id: &str) -> Result<Option<v1::Incident>> {
        match self.open_incidents.get(monitor_id.as_bytes())? {
            Some(id) => match std::str::from_utf8(&id) {
                Ok(id) => self.get_incident(id),
                Err(e) => Err(StoreError::Corrupt {
                    tree: "open_incidents",
                    reason: e.to_string(),
                }),
            },
            None => Ok(None),
        }
    }

    /// Every incident, newest first (ids sort by creation time).
    pub fn list_incidents(&self) -> Result<Vec<v1::Incident>> {
        self.incidents
            .iter()
            .rev()
            .map(|kv| decode("incidents", &kv?.1))
            .collect()
    }

    // ------------------------------------------------------------ channels

    /// Writes a channel (with its secrets: they never leave through the API).
    pub fn put_channel(&self, c: &v1::Channel) -> Result<()> {
        self.channels.insert(c.id.as_bytes(), c.encode_to_vec())?;
        Ok(())
    }

    pub fn get_channel(&self, id: &str) -> Result<Option<v1::Channel>> {
        self.channels
            .get(id.as_bytes())?
            .map(|v| decode("channels", &v))
            .transpose()
    }

    /// Every channel, oldest first (ids sort by creation time).
    pub fn list_channels(&self) -> Result<Vec<v1::Channel>> {
        self.channels
            .iter()
            .values()
            .map(|v| decode("channels", &v?))
            .collect()
    }

    pub fn delete_channel(&self, id: &str) -> Result<bool> {
        Ok(self.channels.remove(id.as_bytes())?.is_some())
    }

    // ------------------------------------------------------------ maintenance

    pub fn put_maintenance(&self, w: &v1::MaintenanceWindow) -> Result<()> {
        self.maintenance
            .insert(w.id.as_bytes(), w.encode_to_vec())?;
        Ok(())
    }

    /// Every maintenance window, oldest first (ids sort by creation time).
    pub fn list_maintenance(&self) -> Result<Vec<v1::MaintenanceWindow>> {
        self.maintenance
            .iter()
            .values()
            .map(|v| decode("maintenance", &v?))
            .collect()
    }

    pub fn delete_maintenance(&self, id: &str) -> Result<bool> {
        Ok(self.maintenance.remove(id.as_bytes())?.is_some())
    }

    // ------------------------------------------------------------ outbox

    /// Number of deliveries stored (every state).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub fn get_delivery(&self, id: &str) -> Result<Option<OutboxRecord>> {
        self.outbox
            .get(id.as_bytes())?
            .map(|v| decode("outbox", &v))
            .transpose()
    }

    /// Updates one delivery (after an attempt) and its place in the pending
    /// index, and lets go of its claim.
    pub fn put_delivery(&self, r: &OutboxRecord) -> Result<()> {
        (&self.outbox, &self.outbox_pending).transaction(|(outbox, pending)| {
            write_deliveries(outbox, pending, std::slice::from_ref(r))
        })?;
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(r.id());
        Ok(())
    }

    /// The delivery, claimed by `worker` for `claim_for_ms`, if it is PENDING,
    /// due, and not claimed by another worker whose claim still holds.
    pub fn claim_delivery(
        &self,
        id: &str,
        worker: &str,
        claim_for_ms: u64,
    ) -> Result<Option<OutboxRecord>> {
        let Some(due_us) = self.outbox_pending.get(id.as_bytes())?.map(|v| seq_of(&v)) else {
            return Ok(None);
        };
        let now_us = portwatch_proto::time::unix_micros(std::time::SystemTime::now());
        if due_us > now_us {
            return Ok(None);
        }
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((holder, until)) = claims.get(id)
            && holder != worker
            && *until > now
        {
            return Ok(None);
        }
        let Some(rec) = self.get_delivery(id)? else {
            return Ok(None);
        };
        claims.insert(
            id.to_string(),
            (
                worker.to_string(),
                now + Duration::from_millis(claim_for_ms),
            ),
        );
        Ok(Some(rec))
    }

    /// Every delivery, newest first (ids sort by creation time).
    pub fn list_deliveries(&self) -> Result<Vec<OutboxRecord>> {
        self.outbox
            .iter()
            .rev()
            .map(|kv| decode("outbox", &kv?.1))
            .collect()
    }

    /// The channels that deliveries of `kind` about `subject_id` went (or go) to.
    pub fn delivery_channels(
        &self,
        subject_id: &str,
        kind: v1::DeliveryKind,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for v in self.outbox.iter().values() {
            let r: OutboxRecord = decode("outbox", &v?)?;
            if let Some(d) = r.delivery
                && d.subject_id == subject_id
                && d.kind == kind as i32
                && !out.contains(&d.channel_id)
            {
                out.push(d.channel_id);
            }
        }
        Ok(out)
    }

    /// Every pending delivery: (id, next attempt in unix µs).
    pub fn pending_deliveries(&self) -> Result<Vec<(String, u64)>> {
        self.outbox_pending
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let id = String::from_utf8(k.to_vec()).map_err(|e| StoreError::Corrupt {
                    tree: "outbox_pending",
                    reason: e.to_string(),
                })?;
                Ok((id, seq_of(&v)))
            })
            .collect()
    }

    /// Deletes delivered and failed deliveries created before `cutoff_us`;
    /// pending ones stay whatever their age. Returns how many went.
    pub fn prune_deliveries(&self, cutoff_us: u64) -> Result<usize> {
        let mut removed = 0;
        for kv in self.outbox.iter() {
            let (k, v) = kv?;
            let r: OutboxRecord = decode("outbox", &v)?;
            let Some(d) = &r.delivery else { continue };
            if d.state != v1::DeliveryState::Pending as i32
                && ts_micros(d.created_at.as_ref()) < cutoff_us
                && !self.outbox_pending.contains_key(&k)?
            {
                self.outbox.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    // ------------------------------------------------------------ probe region outages

    /// Records (`Some`) or ends (`None`) a region's outage together with the
    /// notices that go with it, in one transaction.
    pub fn put_outage_with_deliveries(
        &self,
        region: &str,
        outage: Option<&RegionOutage>,
        deliveries: &[OutboxRecord],
    ) -> Result<()> {
        (&self.region_outages, &self.outbox, &self.outbox_pending).transaction(
            |(outages, outbox, pending)| {
                match outage {
                    Some(o) => {
                        outages.insert(region.as_bytes(), o.encode_to_vec())?;
                    }
                    None => {
                        outages.remove(region.as_bytes())?;
                    }
                }
                write_deliveries(outbox, pending, deliveries)
            },
        )?;
        Ok(())
    }

    /// Every region outage whose operator has been told and not yet told it ended.
    pub fn region_outages(&self) -> Result<Vec<RegionOutage>> {
        self.region_outages
            .iter()
            .values()
            .map(|v| decode("region_outages", &v?))
            .collect()
    }
}

#[cfg(test)]
mod tests;
