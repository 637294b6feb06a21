//! The schema migrations and the connection helper against a real PostgreSQL server, started
//! privately for each test by the harness (`portwatch_e2e::external::postgres`, which installs
//! the server from the distribution's packages when it is missing).

use std::collections::BTreeSet;

use portwatch_coordinator::store::postgres::migrate::{self, latest_version};
use portwatch_coordinator::store::postgres::{self, MigrateError, Migration};
use portwatch_e2e::external::{Postgres, postgres as start_postgres, postgres_with_tls};
use tokio_postgres::Client;

/// Every table the initial schema must create (`store::Storage`'s records, the leases, and the
/// version table).
const TABLES: &[&str] = &[
    "tenants",
    "tokens",
    "regions",
    "agents",
    "monitors",
    "latest_results",
    "history",
    "incidents",
    "channels",
    "deliveries",
    "region_outages",
    "leases",
    "portwatch_schema",
];

async fn client(pg: &Postgres) -> Client {
    postgres::connect(&pg.url(), None, Some(pg.password()))
        .await
        .unwrap_or_else(|e| panic!("connecting to the test server: {e}\n{}", pg.log_tail()))
}

async fn versions(client: &Client) -> Vec<(i32, String)> {
    client
        .query(
            "SELECT version, name FROM portwatch_schema ORDER BY version",
            &[],
        )
        .await
        .expect("the version table")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn all_versions() -> Vec<i32> {
    (1..=latest_version()).collect()
}

#[tokio::test]
async fn migrations_create_the_schema_once_and_then_apply_nothing() {
    let pg = start_postgres();
    let mut c = client(&pg).await;

    let applied = postgres::migrate(&mut c).await.expect("first run");
    assert_eq!(applied, all_versions());
    let tables: BTreeSet<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .expect("listing tables")
        .iter()
        .map(|row| row.get(0))
        .collect();
    for table in TABLES {
        assert!(tables.contains(*table), "{table} missing from {tables:?}");
    }
    // History is partitioned by time (retention drops partitions).
    let strategy: String = c
        .query_one(
            "SELECT p.partstrat::text FROM pg_partitioned_table p \
             JOIN pg_class c ON c.oid = p.partrelid WHERE c.relname = 'history'",
            &[],
        )
        .await
        .expect("history is a partitioned table")
        .get(0);
    assert_eq!(strategy, "r", "RANGE partitioning");
    let recorded = versions(&c).await;
    assert_eq!(
        recorded.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        all_versions()
    );
    assert_eq!(recorded[0].1, "initial");

    // Idempotent: a second run (a restart) applies nothing and records nothing more.
    let again = postgres::migrate(&mut c).await.expect("second run");
    assert!(again.is_empty(), "applied again: {again:?}");
    assert_eq!(versions(&c).await, recorded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_coordinators_apply_each_migration_once() {
    let pg = start_postgres();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let url = pg.url();
            let password = pg.password().to_string();
            tokio::spawn(async move {
                let mut c = postgres::connect(&url, None, Some(&password))
                    .await
                    .expect("connecting");
                postgres::migrate(&mut c).await.expect("migrating")
            })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.expect("no panic"));
    }
    applied.sort_unstable();
    assert_eq!(
        applied,
        all_versions(),
        "each migration applied exactly once"
    );
    let c = client(&pg).await;
    assert_eq!(
        versions(&c)
            .await
            .iter()
            .map(|(v, _)| *v)
            .collect::<Vec<_>>(),
        all_versions()
    );
}

#[tokio::test]
async fn a_database_with_a_newer_schema_is_refused_untouched() {
    let pg = start_postgres();
    let mut c = client(&pg).await;
    postgres::migrate(&mut c).await.expect("first run");
    let newer = latest_version() + 1;
    c.execute(
        "INSERT INTO portwatch_schema (version, name) VALUES ($1, 'from the future')",
        &[&newer],
    )
    .await
    .expect("recording a newer version");
    let before = versions(&c).await;

    let err = postgres::migrate(&mut c).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::Newer { database, ours } if database == newer && ours == latest_version()),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("version {newer}"))
            && text.contains(&format!("version {}", latest_version())),
        "names both versions: {text}"
    );
    assert_eq!(versions(&c).await, before, "nothing changed");
}

#[tokio::test]
async fn connection_errors_name_the_key_and_never_the_password() {
    let pg = start_postgres();

    // A wrong password, given apart from the URL (as from a file or the environment).
    let wrong = "wrong-Pa55word-xyzzy";
    let err = postgres::connect(&pg.url(), None, Some(wrong))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("postgres_url ("), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(wrong), "{text}");

    // A wrong password inside the URL.
    let in_url = pg
        .url()
        .replace("portwatch@", &format!("portwatch:{wrong}@"));
    let text = postgres::connect(&in_url, None, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(text.starts_with("postgres_url ("), "{text}");
    assert!(text.contains("portwatch:***@"), "{text}");
    assert!(!text.contains(wrong), "{text}");

    // The right password in the URL, but nobody listening on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let unreachable = format!(
        "postgres://portwatch:{}@127.0.0.1:{closed}/postgres",
        pg.password()
    );
    let text = postgres::connect(&unreachable, None, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(text.starts_with("postgres_url ("), "{text}");
    assert!(text.contains(&closed.to_string()), "{text}");
    assert!(!text.contains(pg.password()), "{text}");

    // And the right password works.
    let c = postgres::connect(&pg.url(), None, Some(pg.password()))
        .await
        .expect("the right password");
    let one: i32 = c.query_one("SELECT 1", &[]).await.expect("a query").get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn tls_to_the_database_is_verified_against_the_ca_file() {
    let certs = tempfile::tempdir().expect("a temporary directory");
    let server_cert = portwatch_e2e::TestCert::generate_named(certs.path(), "postgres");
    let other_ca = portwatch_e2e::TestCert::generate_named(certs.path(), "other");
    let pg = postgres_with_tls(&server_cert.cert, &server_cert.key);

    let c = postgres::connect(&pg.url(), Some(&server_cert.cert), Some(pg.password()))
        .await
        .unwrap_or_else(|e| panic!("TLS with the server's CA: {e}\n{}", pg.log_tail()));
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("the connection's TLS state")
        .get(0);
    assert!(ssl, "the connection uses TLS");

    // A server certificate the CA file does not vouch for is refused.
    let err = postgres::connect(&pg.url(), Some(&other_ca.cert), Some(pg.password()))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("postgres_url ("), "{text}");
    assert!(text.contains("TLS"), "{text}");
    assert!(!text.contains(pg.password()), "{text}");
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_of_itself() {
    let pg = start_postgres();
    let mut c = client(&pg).await;
    let broken = [
        Migration {
            version: 1,
            name: "first",
            sql: "CREATE TABLE first_table (id int PRIMARY KEY);",
        },
        Migration {
            version: 2,
            name: "half",
            sql: "CREATE TABLE half_table (id int); SELECT no_such_function();",
        },
    ];
    let err = migrate::apply(&mut c, &broken).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::Apply { version: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no_such_function"), "{err}");
    // Version 1 is in and recorded; nothing of version 2 is, not even its first statement.
    assert_eq!(versions(&c).await, vec![(1, "first".to_string())]);
    let half: Option<String> = c
        .query_one("SELECT to_regclass('half_table')::text", &[])
        .await
        .expect("a query")
        .get(0);
    assert_eq!(half, None, "the failed migration was rolled back");
}
