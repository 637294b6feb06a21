//! Versioned schema migrations, applied when a coordinator starts.
//!
//! The migrations are SQL files in the repository (`crates/coordinator/migrations/NNNN_name.sql`),
//! compiled into the binary, so a coordinator always carries exactly the schema it was built
//! for. The database records what it has in `portwatch_schema` (one row per applied version).
//!
//! Rules, and why:
//! - Each migration runs in one transaction together with its row in `portwatch_schema`: after a
//!   crash a migration is either wholly there and recorded, or not there at all.
//! - Each transaction first takes a transaction-scoped advisory lock ([`LOCK_KEY`]) and only then
//!   reads the version: coordinators starting together queue on the lock, and the later ones
//!   find the work done, so every migration is applied exactly once. The lock is released by
//!   the commit (or by the connection dying), never left behind.
//! - Running again applies nothing: only versions above the database's are applied.
//! - A database whose version is above ours was written by a newer release; this binary could
//!   misread what that release stores, so it refuses, naming both versions, and changes nothing.

use tokio_postgres::Client;

use super::connect::chain;

/// One schema step: applied to a database whose version is `version - 1`.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its number, from its file name; consecutive from 1.
    pub version: i32,
    /// Its name, from its file name (recorded in `portwatch_schema`).
    pub name: &'static str,
    /// The SQL, run as one batch inside the migration's transaction.
    pub sql: &'static str,
}

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "maintenance",
        sql: include_str!("../../../migrations/0002_maintenance.sql"),
    },
];

/// The advisory lock the migrations of every coordinator serialise on ("portwatc" in ASCII, so
/// that it is recognisable in `pg_locks`).
pub const LOCK_KEY: i64 = 0x706f_7274_7761_7463;

/// The schema version this binary expects: the last migration's.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The database's schema cannot be brought to ours.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database is ahead of this binary.
    #[error(
        "the database's schema is version {database}, newer than version {ours}, the newest this \
         portwatch knows: it was written by a newer release; run that release (or a newer one), \
         or point postgres_url at another database"
    )]
    Newer { database: i32, ours: i32 },
    /// A migration failed (and was rolled back).
    #[error("applying schema migration {version} ({name}): {reason}")]
    Apply {
        version: i32,
        name: &'static str,
        reason: String,
    },
    /// The version table could not be read or the lock taken.
    #[error("reading the database's schema version: {0}")]
    Database(String),
}

/// Brings the database's schema to [`latest_version`]; returns the versions this call applied
/// (empty when the database was already there). See the module doc for the rules.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    apply(client, MIGRATIONS).await
}

/// [`migrate`] with the given list instead of [`MIGRATIONS`] (consecutive versions from 1): how
/// the tests show what a failing migration leaves behind.
pub async fn apply(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<i32>, MigrateError> {
    let ours = migrations.last().map_or(0, |m| m.version);
    let mut applied = Vec::new();
    loop {
        let db = |e: tokio_postgres::Error| MigrateError::Database(describe(&e));
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS portwatch_schema (
                 version     integer PRIMARY KEY,
                 applied_at  timestamptz NOT NULL DEFAULT now(),
                 name        text NOT NULL
             )",
        )
        .await
        .map_err(db)?;
        let database: i32 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM portwatch_schema",
                &[],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db)?;
        if database > ours {
            return Err(MigrateError::Newer { database, ours });
        }
        let Some(next) = migrations.iter().find(|m| m.version > database) else {
            tx.commit().await.map_err(db)?;
            return Ok(applied);
        };
        let failed = |e: tokio_postgres::Error| MigrateError::Apply {
            version: next.version,
            name: next.name,
            reason: describe(&e),
        };
        tx.batch_execute(next.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO portwatch_schema (version, applied_at, name) VALUES ($1, now(), $2)",
            &[&next.version, &next.name],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        applied.push(next.version);
    }
}

/// A driver error in words: the database's own message when it sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty(), "{}", m.name);
        }
        assert_eq!(latest_version(), MIGRATIONS.len() as i32);
    }
}
