//! Groundwork for the PostgreSQL backend of [`Storage`](super::Storage) (issue 16): how the
//! coordinator reaches the database (`connect`) and how the database gets the schema this binary
//! expects (`migrate`). The backend itself, and the configuration key that chooses it, come
//! later; nothing in the running coordinator uses this module yet.
//!
//! Why a schema under version control rather than tables created on demand: several
//! coordinators of different releases share one database during a rolling upgrade, so the
//! schema must move in numbered steps that each coordinator can recognise. A coordinator applies
//! the steps it knows and the database lacks, and refuses to start against a database that is
//! further along than it knows — it could not read what a newer release writes.
//!
//! The password is a secret: it reaches the driver but never a log line or an error message
//! (every text built here from the URL or from the driver's errors is redacted).

mod connect;
pub mod migrate;

pub use connect::{ConnectError, POSTGRES_URL_KEY, connect, redact_url};
pub use migrate::{MIGRATIONS, MigrateError, Migration, migrate};
