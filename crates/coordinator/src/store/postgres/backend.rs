//! `PgStore`: the PostgreSQL backend of [`Storage`], for coordinators that share one database.
//!
//! Every call is one statement or one transaction on a pooled connection, committed before it
//! returns: PostgreSQL makes a commit durable (its write-ahead log is flushed at COMMIT), so
//! `ingest` may be acknowledged as soon as it returns and `flush` has nothing left to do.
//!
//! Why a runtime of its own: the interface is synchronous except the calls that wait for
//! durability (see `store::storage`), and the driver is asynchronous. The connections' driver
//! tasks run on a small runtime owned by the store (two threads, `portwatch-pg`), so a caller
//! may block its own thread on a query — as it does on a sled call — without stopping the task
//! that reads the query's answer, even on a single-threaded runtime. Client futures are
//! executor-agnostic (they talk to the driver task over channels), so a blocking call polls its
//! query on the caller's thread ([`block_on`]) and every time limit is taken from the store's
//! runtime.
//!
//! Failures follow the contract of the interface: an error that says the database cannot be
//! reached (the connection broke, the server is shutting down or refuses connections, a call
//! outlived [`CALL_TIMEOUT`]) marks the store not writable; writes then fail at once with
//! `StoreError::Unavailable` while reads are still tried; the recovery loop's `try_reopen`
//! makes it writable again once a fresh connection answers. Any other database error (a
//! constraint, a statement the schema does not fit) is `StoreError::Database` and fails only
//! the call.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime};

use portwatch_proto::v1;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, SemaphorePermit, watch};
use tokio_postgres::Client;
use tracing::{error, info};

use super::super::storage::{Storage, storage_calls};
use super::super::{
    HistoryPage, Ingest, Ingested, OutboxRecord, RegionOutage, Result, StoreError, StoreState,
    TokenRecord,
};
use super::connect::{ConnectError, connect, redact_url};
use super::migrate::{MigrateError, migrate};

/// Longest a call may wait for the database (a connection from the pool included) before the
/// store counts as not responding.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the pool opens at most when the configuration does not say.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Days of history partitions created ahead of today.
const PARTITIONS_AHEAD: i32 = 3;

/// How to reach the database (the `postgres_*` configuration keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgSettings {
    /// `postgres_url`: libpq URL or `key=value` form.
    pub url: String,
    /// `postgres_ca_file`: TLS to the database, verified against this CA.
    pub ca_file: Option<PathBuf>,
    /// The password, kept out of the URL (from `postgres_password_file` or the environment).
    pub password: Option<String>,
    /// `postgres_pool_size`: connections at most.
    pub pool_size: usize,
}

/// The database could not be opened for the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not reachable with these settings (the text names the key).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Its schema cannot be brought to ours (a newer one, a failed migration).
    #[error("postgres_url: {0}")]
    Migrate(#[from] MigrateError),
    /// The store's own preparation failed.
    #[error("postgres_url: {0}")]
    Prepare(String),
}

/// Polls `fut` to completion on this thread, parking between wake-ups. The future must be
/// driven by something other than this thread (here: the store's runtime runs the connection
/// tasks and the timers).
pub(super) fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// The term a coordinator holds in the active lease (`lease`): its name and the epoch the
/// database gave it. Writes that must be fenced carry it and are checked against the lease in
/// their own transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub owner: String,
    pub epoch: i64,
}

/// The store's runtime, on a thread of its own; it stops when the last handle to the store is
/// dropped (the sender below), and is dropped on that thread, never inside an async context.
struct Runtime {
    handle: Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Runtime {
    fn start() -> std::io::Result<Runtime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("portwatch-pg")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("portwatch-pg-rt".into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
                rt.shutdown_background();
            })?;
        Ok(Runtime {
            handle,
            _stop: stop,
        })
    }
}

/// Connections to the database, at most `permits` at once, reused while they work.
pub(super) struct Pool {
    settings: PgSettings,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
    handle: Handle,
}

/// A connection taken from the pool; it goes back when dropped, unless it broke.
pub(super) struct Conn<'p> {
    client: Option<Client>,
    /// The term deciding writes on this connection are fenced with.
    pub(super) term: Option<Term>,
    pool: &'p Pool,
    _permit: SemaphorePermit<'p>,
}

impl Conn<'_> {
    /// The connection (there until the drop).
    pub(super) fn client(&mut self) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("a connection used after its return".into()))
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(client);
        }
    }
}

impl Pool {
    /// A working connection: an idle one, or a new one opened on the store's runtime.
    async fn get(&self) -> Result<Conn<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match reused {
            Some(c) => c,
            None => self.open().await?,
        };
        Ok(Conn {
            client: Some(client),
            term: None,
            pool: self,
            _permit: permit,
        })
    }

    async fn open(&self) -> Result<Client> {
        let s = self.settings.clone();
        let job = self.handle.spawn(async move {
            connect(&s.url, s.ca_file.as_deref(), s.password.as_deref()).await
        });
        match job.await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(e) => Err(StoreError::Unavailable(format!(
                "connecting to PostgreSQL: {e}"
            ))),
        }
    }

    /// Forgets every idle connection (after a failure: the next call opens fresh ones).
    fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

struct Shared {
    pool: Pool,
    /// The active coordinator's term this store's deciding writes are fenced with
    /// (`lease.rs`); None: not fenced (a coordinator that never took part in leasing).
    term: std::sync::RwLock<Option<Term>>,
    state: watch::Sender<StoreState>,
    closed: AtomicBool,
    /// Where, for logs and errors: the URL without its password.
    shown: String,
    // Last: the runtime stops after the pool's connections are gone.
    runtime: Runtime,
}

/// The coordinator's durable state in PostgreSQL; clones share one pool.
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

/// Turns a driver error into the store's: a broken or refused connection is `Unavailable`
/// (the store stops taking writes until it reconnects), anything else a `Database` error of
/// the call alone.
pub(super) fn classify(e: &tokio_postgres::Error) -> StoreError {
    let text = super::connect::chain(e);
    if let Some(code) = e.code() {
        let code = code.code();
        // 08: connection exception; 57P0x: admin/crash shutdown, cannot connect now;
        // 53: insufficient resources (disk full, too many connections); 58: system error.
        if code.starts_with("08")
            || code.starts_with("57P")
            || code.starts_with("53")
            || code.starts_with("58")
        {
            return StoreError::Unavailable(format!("PostgreSQL: {text}"));
        }
        let detail = e
            .as_db_error()
            .map(|d| match d.detail() {
                Some(detail) => format!("{} ({detail})", d.message()),
                None => d.message().to_string(),
            })
            .unwrap_or(text);
        return StoreError::Database(format!("{detail} [{code}]"));
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        StoreError::Unavailable(format!("PostgreSQL connection: {text}"))
    } else {
        StoreError::Database(text)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        classify(&e)
    }
}

impl PgStore {
    /// Connects, brings the schema to this release's (refusing a newer one) and creates the
    /// history partitions ahead. Every error names the key to fix; the password never appears.
    pub async fn open(settings: PgSettings) -> std::result::Result<PgStore, OpenError> {
        let runtime = Runtime::start()
            .map_err(|e| OpenError::Prepare(format!("starting the store's threads: {e}")))?;
        let s = settings.clone();
        let prepared = runtime
            .handle
            .spawn(async move {
                let mut client = connect(&s.url, s.ca_file.as_deref(), s.password.as_deref())
                    .await
                    .map_err(OpenError::Connect)?;
                let applied = migrate(&mut client).await?;
                if !applied.is_empty() {
                    info!(versions = ?applied, "PostgreSQL: schema migrations applied");
                }
                client
                    .query_one(
                        "SELECT portwatch_history_partitions($1)",
                        &[&PARTITIONS_AHEAD],
                    )
                    .await
                    .map_err(|e| {
                        OpenError::Prepare(format!("creating history partitions: {}", classify(&e)))
                    })?;
                Ok::<_, OpenError>(client)
            })
            .await
            .map_err(|e| OpenError::Prepare(format!("preparing the database: {e}")))??;
        let shown = redact_url(&settings.url);
        let pool = Pool {
            permits: Semaphore::new(settings.pool_size.max(1)),
            settings,
            idle: Mutex::new(vec![prepared]),
            handle: runtime.handle.clone(),
        };
        Ok(PgStore {
            shared: Arc::new(Shared {
                pool,
                state: watch::Sender::new(StoreState {
                    writable: true,
                    ..StoreState::default()
                }),
                closed: AtomicBool::new(false),
                term: std::sync::RwLock::new(None),
                shown,
                runtime,
            }),
        })
    }

    /// Runs a future the caller blocks on, within [`CALL_TIMEOUT`] (timed by the store's
    /// runtime).
    fn block<T>(&self, call: &'static str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let _in = self.shared.runtime.handle.enter();
        // Unconstrained: the caller may be a task of another runtime (the
        // hub's calls are synchronous), whose cooperative budget this thread
        // carries. Once spent, every budget-aware poll (the pool's semaphore,
        // the sockets) would answer Pending and wake itself, and since the
        // caller never yields back to its scheduler, the budget would never
        // be refilled: a start loading a few hundred monitors spun forever.
        let timed = tokio::task::unconstrained(tokio::time::timeout(CALL_TIMEOUT, fut));
        match block_on(timed) {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL did not answer {call} within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Marks the store not writable (once; later causes are logged only).
    fn fail(&self, cause: String) {
        self.shared.pool.clear();
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
            error!(database = %self.shared.shown, %cause, "store: not writable; writes fail with UNAVAILABLE until the database answers again");
        }
    }

    /// Notes a failure the call ran into.
    fn observe<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_damage() {
                let text = e.to_string();
                let first = self.shared.state.send_if_modified(|s| {
                    if !s.damage.is_empty() {
                        return false;
                    }
                    s.damage = text.clone();
                    true
                });
                if first {
                    error!(database = %self.shared.shown, error = %text, "store: a record does not decode");
                }
            }
            if e.is_store_failure() {
                self.fail(e.to_string());
            }
        }
        r
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        Ok(())
    }

    /// A connection for a read: tried even while not writable.
    fn read(&self, call: &'static str) -> Result<Conn<'_>> {
        self.check_open()?;
        let conn = self.block(call, self.shared.pool.get());
        self.observe(conn)
    }

    /// A connection for a write: refused at once while not writable; its deciding
    /// writes are fenced with the current term.
    fn write(&self, call: &'static str) -> Result<Conn<'_>> {
        self.check_open()?;
        let state = self.shared.state.borrow().clone();
        if !state.writable {
            return Err(StoreError::Unavailable(state.cause));
        }
        let mut conn = self.observe(self.block(call, self.shared.pool.get()))?;
        conn.term = self.term();
        Ok(conn)
    }

    /// The term deciding writes are fenced with now.
    pub(super) fn term(&self) -> Option<Term> {
        self.shared
            .term
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_term(&self, term: Option<Term>) {
        *self.shared.term.write().unwrap_or_else(|e| e.into_inner()) = term;
    }

    /// A connection for the lease calls: taken whether or not the store is writable.
    pub(super) async fn conn_async(&self, call: &'static str) -> Result<Conn<'_>> {
        self.check_open()?;
        let conn = match tokio::time::timeout(CALL_TIMEOUT, self.shared.pool.get()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no connection to PostgreSQL for {call} within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        };
        self.observe(conn)
    }

    /// Awaits a query within [`CALL_TIMEOUT`], its failure noted.
    pub(super) async fn timed<T>(
        &self,
        call: &'static str,
        fut: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let r = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL did not answer {call} within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        };
        self.observe(r)
    }

    /// A connection for an async write, within [`CALL_TIMEOUT`].
    async fn write_async(&self, call: &'static str) -> Result<Conn<'_>> {
        self.check_open()?;
        let state = self.shared.state.borrow().clone();
        if !state.writable {
            return Err(StoreError::Unavailable(state.cause));
        }
        let mut conn = match tokio::time::timeout(CALL_TIMEOUT, self.shared.pool.get()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no connection to PostgreSQL for {call} within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        };
        if let Ok(c) = &mut conn {
            c.term = self.term();
        }
        self.observe(conn)
    }

    /// Runs a counting query for the size calls (0 when it fails).
    fn count(&self, call: &'static str, sql: &'static str) -> u64 {
        let Ok(mut conn) = self.read(call) else {
            return 0;
        };
        let r = self.block(call, async {
            let row = conn.client()?.query_one(sql, &[]).await?;
            Ok(row.try_get::<_, i64>(0)?)
        });
        self.observe(r)
            .map_or(0, |n| u64::try_from(n).unwrap_or_default())
    }

    /// Whether writes are accepted now, and if not why.
    pub fn state(&self) -> StoreState {
        self.shared.state.borrow().clone()
    }

    /// Makes the store refuse writes, as a broken connection would (tests).
    pub fn fail_for_test(&self, cause: &str) {
        self.fail(cause.to_string());
    }

    fn try_reopen(&self) -> Result<()> {
        self.check_open()?;
        if self.state().writable {
            return Ok(());
        }
        self.shared.pool.clear();
        let r = self.block("reopen", async {
            let mut conn = self.shared.pool.get().await?;
            conn.client()?.simple_query("SELECT 1").await?;
            conn.client()?
                .query_one(
                    "SELECT portwatch_history_partitions($1)",
                    &[&PARTITIONS_AHEAD],
                )
                .await?;
            Ok(())
        });
        r?;
        let mut was = StoreState::default();
        self.shared.state.send_modify(|s| {
            was = s.clone();
            s.writable = true;
            s.cause.clear();
            s.since = None;
        });
        info!(database = %self.shared.shown, down_since = ?was.since, "store: PostgreSQL answers again; writable");
        Ok(())
    }
}

/// The calls of [`Storage`] on PostgreSQL: each takes a connection as a read or a write (see
/// `PgStore::read`, `PgStore::write`) and runs the query of the same name (`tables.rs`).
macro_rules! pg_storage {
    ($( $kind:ident fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )*) => {
        #[tonic::async_trait]
        impl Storage for PgStore {
            fn location(&self) -> String {
                self.shared.shown.clone()
            }
            fn state(&self) -> StoreState {
                PgStore::state(self)
            }
            fn subscribe(&self) -> watch::Receiver<StoreState> {
                self.shared.state.subscribe()
            }
            fn try_reopen(&self) -> Result<()> {
                PgStore::try_reopen(self)
            }
            async fn verify_history(&self) -> Result<u64> {
                // PostgreSQL checks its own pages; what can fail here is a record this
                // release cannot decode, and every read decodes what it returns.
                let mut conn = self.write_async("verify_history").await?;
                let r = tokio::time::timeout(CALL_TIMEOUT, conn.verify_history()).await;
                drop(conn);
                self.observe(r.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable("verify_history timed out".into()))
                }))
            }
            async fn flush(&self) -> Result<()> {
                self.check_open()?;
                let state = self.state();
                if !state.writable {
                    return Err(StoreError::Unavailable(state.cause));
                }
                // Every call committed before it returned.
                Ok(())
            }
            async fn ingest(
                &self,
                agent_id: &str,
                region: &str,
                batch: &[Ingest<'_>],
                up_to: u64,
            ) -> Result<Ingested> {
                let mut conn = self.write_async("ingest").await?;
                let r = tokio::time::timeout(
                    CALL_TIMEOUT,
                    conn.ingest(agent_id, region, batch, up_to),
                )
                .await;
                drop(conn);
                self.observe(r.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(format!(
                        "PostgreSQL did not commit a result batch within {} s",
                        CALL_TIMEOUT.as_secs()
                    )))
                }))
            }
            async fn seal(&self) -> Result<()> {
                // Nothing to seal: a commit is durable when it returns.
                Ok(())
            }
            fn close_detached(&self) {
                self.shared.closed.store(true, Ordering::Release);
                self.shared.pool.clear();
                self.shared.state.send_if_modified(|s| {
                    let was = s.writable;
                    s.writable = false;
                    s.cause = "the store is closed".into();
                    s.since = Some(SystemTime::now());
                    was
                });
            }
            fn size_on_disk(&self) -> u64 {
                self.count("size_on_disk", "SELECT pg_database_size(current_database())")
            }
            fn history_len(&self) -> usize {
                usize::try_from(self.count("history_len", "SELECT count(*) FROM history"))
                    .unwrap_or(usize::MAX)
            }
            fn outbox_len(&self) -> usize {
                usize::try_from(self.count("outbox_len", "SELECT count(*) FROM deliveries"))
                    .unwrap_or(usize::MAX)
            }
            $(
                fn $name(&self $(, $arg: $ty)*) -> $ret {
                    let call = stringify!($name);
                    let mut conn = self.$kind(call)?;
                    let r = self.block(call, conn.$name($($arg),*));
                    drop(conn);
                    self.observe(r)
                }
            )*
        }
    };
}

storage_calls!(pg_storage);

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.shared.shown)
            .field("state", &self.state())
            .finish()
    }
}
