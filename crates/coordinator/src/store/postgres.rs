//! The PostgreSQL backend of [`Storage`](super::Storage), chosen with `store = "postgres"`: how
//! the coordinator reaches the database (`connect`), how the database gets the schema this
//! binary expects (`migrate`), the store itself (`backend`: pool, failures, the interface) and
//! the query behind each call (`tables`).
//!
//! Why a schema under version control rather than tables created on demand: several
//! coordinators of different releases share one database during a rolling upgrade, so the
//! schema must move in numbered steps that each coordinator can recognise. A coordinator applies
//! the steps it knows and the database lacks, and refuses to start against a database that is
//! further along than it knows — it could not read what a newer release writes.
//!
//! The password is a secret: it reaches the driver but never a log line or an error message
//! (every text built here from the URL or from the driver's errors is redacted).

mod backend;
mod connect;
mod lease;
pub mod migrate;
mod tables;

pub use backend::{CALL_TIMEOUT, DEFAULT_POOL_SIZE, OpenError, PgSettings, PgStore, Term};
pub use lease::Holder;

pub use connect::{ConnectError, POSTGRES_URL_KEY, connect, redact_url};
pub use migrate::{MIGRATIONS, MigrateError, Migration, migrate};
