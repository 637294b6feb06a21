//! `Storage`: everything the coordinator persists, as one interface, and
//! `Store`, the handle to it that the hub, the admin API, the agent streams,
//! auth and the outbox share.
//!
//! The interface is the seam between what the coordinator decides and where it
//! keeps it. Its first backend is the embedded sled database
//! ([`SledStore`](super::SledStore), the one-machine default); a backend for a
//! shared database implements the same calls with the same contract:
//!
//! - every write is all or nothing, and a multi-record call
//!   (`put_incident_with_deliveries`, `delete_monitor_closing`,
//!   `put_outage_with_deliveries`, `ingest`) is one transaction: a change and
//!   its consequences land together or not at all;
//! - `ingest` returns only once the batch is durable (its caller acknowledges
//!   what it returns to the agent); other writes are durable after `flush`;
//! - while the backend cannot take writes, writes fail at once with
//!   `StoreError::Unavailable` and touch nothing, reads go on where the backend
//!   can serve them, `state`/`subscribe` say why, and `try_reopen` heals it;
//! - a record that does not decode is `StoreError::Corrupt` (damage), never a
//!   panic;
//! - `claim_delivery` gives a due PENDING delivery to one outbox worker at a
//!   time, for `claim_for_ms` or until that worker records its attempt
//!   (`put_delivery`): several coordinators sharing one database never attempt
//!   the same delivery at once. A claim is not durable: after a crash it is
//!   simply free once its time is up.
//!
//! The calls are synchronous except those that wait for durability: the hub
//! takes its decisions under one lock and writes their consequences before it
//! lets go of it, so an incident and the deliveries it causes are ordered the
//! same way in the store as in the hub. The list of calls is written once, in
//! [`storage_calls`], which both declares the trait and implements it for sled.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use portwatch_proto::v1;
use tokio::sync::watch;

use super::{
    HistoryPage, Ingest, Ingested, OutboxRecord, RegionOutage, Result, SledStore, StoreState,
    TokenRecord,
};

/// Hands the list of the interface's data calls to `$m` (declared once, used
/// for the trait and for each backend). `read` calls are served while the
/// backend takes no writes; `write` calls are refused then.
macro_rules! storage_calls {
    ($m:ident) => {
        $m! {
            write fn put_tenant(&self, t: &v1::Tenant) -> Result<()>;
            read fn get_tenant(&self, id: &str) -> Result<Option<v1::Tenant>>;
            read fn list_tenants(&self) -> Result<Vec<v1::Tenant>>;
            write fn put_token(&self, rec: &TokenRecord) -> Result<()>;
            write fn put_tenant_with_token(&self, t: &v1::Tenant, rec: &TokenRecord) -> Result<()>;
            read fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;
            read fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>>;
            read fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
            write fn put_region(&self, r: &v1::Region) -> Result<()>;
            read fn get_region(&self, name: &str) -> Result<Option<v1::Region>>;
            read fn list_regions(&self) -> Result<Vec<v1::Region>>;
            write fn delete_region(&self, name: &str) -> Result<bool>;
            write fn put_agent(&self, a: &v1::Agent) -> Result<()>;
            read fn get_agent(&self, id: &str) -> Result<Option<v1::Agent>>;
            read fn list_agents(&self) -> Result<Vec<v1::Agent>>;
            read fn acked_seq(&self, agent_id: &str) -> Result<u64>;
            write fn put_monitor(&self, m: &v1::Monitor) -> Result<()>;
            write fn put_monitors(&self, ms: &[v1::Monitor]) -> Result<()>;
            read fn get_monitor(&self, id: &str) -> Result<Option<v1::Monitor>>;
            read fn list_monitors(&self) -> Result<Vec<v1::Monitor>>;
            read fn tenant_monitor_count(&self, tenant_id: &str) -> Result<usize>;
            read fn tenant_monitor_counts(&self) -> Result<std::collections::BTreeMap<String, usize>>;
            read fn tenant_monitors(&self, tenant_id: &str, after: &str, limit: usize) -> Result<Vec<v1::Monitor>>;
            write fn delete_monitor(&self, id: &str) -> Result<bool>;
            write fn delete_monitor_closing(&self, id: &str, closing: Option<&v1::Incident>) -> Result<bool>;
            read fn latest_for(&self, monitor_id: &str) -> Result<Vec<v1::CheckResult>>;
            read fn all_latest(&self) -> Result<Vec<v1::CheckResult>>;
            read fn history(&self, monitor_id: &str, since_us: u64, until_us: u64, region: Option<&str>, after: Option<&str>, limit: usize) -> Result<HistoryPage>;
            write fn prune_history(&self, cutoff_us: u64) -> Result<usize>;
            write fn put_incident(&self, i: &v1::Incident) -> Result<()>;
            write fn put_incident_with_deliveries(&self, i: &v1::Incident, deliveries: &[OutboxRecord]) -> Result<()>;
            read fn get_incident(&self, id: &str) -> Result<Option<v1::Incident>>;
            read fn open_incident(&self, monitor_id: &str) -> Result<Option<v1::Incident>>;
            read fn list_incidents(&self) -> Result<Vec<v1::Incident>>;
            write fn put_channel(&self, c: &v1::Channel) -> Result<()>;
            read fn get_channel(&self, id: &str) -> Result<Option<v1::Channel>>;
            read fn list_channels(&self) -> Result<Vec<v1::Channel>>;
            write fn delete_channel(&self, id: &str) -> Result<bool>;
            read fn get_delivery(&self, id: &str) -> Result<Option<OutboxRecord>>;
            write fn put_delivery(&self, r: &OutboxRecord) -> Result<()>;
            write fn claim_delivery(&self, id: &str, worker: &str, claim_for_ms: u64) -> Result<Option<OutboxRecord>>;
            read fn list_deliveries(&self) -> Result<Vec<OutboxRecord>>;
            read fn delivery_channels(&self, subject_id: &str, kind: v1::DeliveryKind) -> Result<Vec<String>>;
            read fn pending_deliveries(&self) -> Result<Vec<(String, u64)>>;
            write fn prune_deliveries(&self, cutoff_us: u64) -> Result<usize>;
            write fn put_outage_with_deliveries(&self, region: &str, outage: Option<&RegionOutage>, deliveries: &[OutboxRecord]) -> Result<()>;
            read fn region_outages(&self) -> Result<Vec<RegionOutage>>;
            write fn put_maintenance(&self, w: &v1::MaintenanceWindow) -> Result<()>;
            read fn list_maintenance(&self) -> Result<Vec<v1::MaintenanceWindow>>;
            write fn delete_maintenance(&self, id: &str) -> Result<bool>;
        }
    };
}
pub(super) use storage_calls;

/// Declares the `Storage` trait from the list of calls.
macro_rules! storage_trait {
    ($( $kind:ident fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )*) => {
        /// Everything the coordinator persists; see the module docs for the
        /// contract every backend keeps.
        #[tonic::async_trait]
        pub trait Storage: Send + Sync + 'static {
            /// Where the data lives, for logs and errors (a directory, a
            /// database address without its password).
            fn location(&self) -> String;
            /// Whether writes are accepted now, and if not why and since when.
            fn state(&self) -> StoreState;
            /// Whether writes are accepted now.
            fn is_writable(&self) -> bool {
                self.state().writable
            }
            /// Follows the state (health, the recovery loop).
            fn subscribe(&self) -> watch::Receiver<StoreState>;
            /// Tries to make a backend that failed writable again (blocking).
            fn try_reopen(&self) -> Result<()>;
            /// Reads every history row once after a start, so damage is
            /// reported before anyone stumbles on it. Returns the rows read.
            async fn verify_history(&self) -> Result<u64>;
            /// Makes everything written so far durable.
            async fn flush(&self) -> Result<()>;
            /// Stores a batch from one agent and makes it durable: what this
            /// returns may be acknowledged. Results already stored (same
            /// agent and sequence number) are not stored twice.
            async fn ingest(
                &self,
                agent_id: &str,
                region: &str,
                batch: &[Ingest<'_>],
                up_to: u64,
            ) -> Result<Ingested>;
            /// A clean stop: the last flush, and whatever lets the next start
            /// tell that nothing durable was lost.
            async fn seal(&self) -> Result<()>;
            /// Lets go of the backend without waiting for it (the end of the
            /// process, after the last flush); every later call fails.
            fn close_detached(&self);
            /// Bytes the backend uses (0 when it cannot tell).
            fn size_on_disk(&self) -> u64;
            /// Stored history rows, every monitor (tests and benchmarks).
            fn history_len(&self) -> usize;
            /// Stored deliveries, every state (tests and benchmarks).
            fn outbox_len(&self) -> usize;
            $(
                #[allow(missing_docs)]
                fn $name(&self $(, $arg: $ty)*) -> $ret;
            )*
        }
    };
}

storage_calls!(storage_trait);

/// The handle every part of the coordinator holds: cheap to clone, clones
/// share one backend. It dereferences to [`Storage`].
#[derive(Clone)]
pub struct Store(Arc<dyn Storage>);

impl Store {
    /// Wraps a backend.
    pub fn new(backend: impl Storage) -> Store {
        Store(Arc::new(backend))
    }

    /// Opens (or creates) the embedded sled store in `dir`, default cache.
    pub fn open(dir: &Path) -> Result<Store> {
        SledStore::open(dir).map(Store::new)
    }

    /// Opens (or creates) the embedded sled store in `dir` with a page cache
    /// of `cache_bytes` (see [`SledStore::open_with_cache`]).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Store> {
        SledStore::open_with_cache(dir, cache_bytes).map(Store::new)
    }
}

impl Deref for Store {
    type Target = dyn Storage;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.0.location())
            .field("state", &self.0.state())
            .finish()
    }
}
