//! What only the PostgreSQL backend has: retention by whole day partitions, a database restart
//! ridden out (writes refused while it is down, healed without a restart of the coordinator), and
//! a coordinator that refuses to start on a database it cannot use, naming the key to fix and
//! never the password. Each test starts a private server (`portwatch_e2e::external::postgres`).
//! The contract both backends keep is tested on both in `store::tests` and by the suites that
//! run again on PostgreSQL (`*_on_postgres.rs`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portwatch_coordinator::store::postgres::{self, PgSettings, PgStore};
use portwatch_coordinator::store::{Ingest, OutboxRecord, Store, StoreError};
use portwatch_e2e::external::{Postgres, postgres as start_postgres};
use portwatch_proto::time::{from_unix_micros, to_timestamp};
use portwatch_proto::v1;

const DAY_US: u64 = 86_400_000_000;

fn settings(pg: &Postgres) -> PgSettings {
    PgSettings {
        url: pg.url(),
        ca_file: None,
        password: Some(pg.password().to_string()),
        pool_size: 4,
    }
}

async fn open(pg: &Postgres) -> Store {
    Store::new(
        PgStore::open(settings(pg))
            .await
            .unwrap_or_else(|e| panic!("opening the store: {e}\n{}", pg.log_tail())),
    )
}

async fn client(pg: &Postgres) -> tokio_postgres::Client {
    postgres::connect(&pg.url(), None, Some(pg.password()))
        .await
        .expect("a connection of the test's own")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

fn result(monitor: &str, at_us: u64) -> v1::CheckResult {
    v1::CheckResult {
        monitor_id: monitor.into(),
        checked_at: Some(to_timestamp(from_unix_micros(at_us))),
        outcome: v1::Outcome::Ok as i32,
        ..Default::default()
    }
}

async fn partitions(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'history'::regclass ORDER BY 1",
        &[],
    )
    .await
    .expect("the partitions")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// `history_YYYYMMDD` of the UTC day holding `us`, computed by the database.
async fn partition_of(c: &tokio_postgres::Client, us: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(us);
    c.query_one(
        "SELECT 'history_' || to_char($1::timestamptz AT TIME ZONE 'UTC', 'YYYYMMDD')",
        &[&at],
    )
    .await
    .expect("a partition name")
    .get(0)
}

#[tokio::test]
async fn retention_drops_whole_day_partitions_and_keeps_the_rest() {
    let pg = start_postgres();
    let store = open(&pg).await;
    let c = client(&pg).await;
    let now = now_us();
    let start_of_today = now - now % DAY_US;
    let yesterday = start_of_today - DAY_US / 2;

    let have = partitions(&c).await;
    let (p_yesterday, p_today, p_ahead) = (
        partition_of(&c, yesterday).await,
        partition_of(&c, now).await,
        partition_of(&c, now + 3 * DAY_US).await,
    );
    for p in [&p_today, &p_ahead] {
        assert!(have.contains(p), "{p} is created at open: {have:?}");
    }
    // Yesterday's, as a coordinator running since then created it ahead of time.
    let from = UNIX_EPOCH + Duration::from_micros(start_of_today - DAY_US);
    let to = UNIX_EPOCH + Duration::from_micros(start_of_today);
    c.batch_execute(&format!(
        "CREATE TABLE {p_yesterday} PARTITION OF history FOR VALUES FROM ('{}') TO ('{}')",
        humantime::format_rfc3339(from),
        humantime::format_rfc3339(to)
    ))
    .await
    .unwrap();

    let rs = [
        result("m1", yesterday),
        result("m1", yesterday + 1),
        result("m1", now),
    ];
    let batch: Vec<Ingest> = rs
        .iter()
        .enumerate()
        .map(|(i, r)| Ingest {
            seq: i as u64 + 1,
            result: r,
        })
        .collect();
    store.ingest("a1", "eu", &batch, 0).await.unwrap();
    let in_yesterday: i64 = c
        .query_one(&format!("SELECT count(*) FROM {p_yesterday}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_yesterday, 2, "rows land in their day's partition");

    let removed = store.prune_history(start_of_today).unwrap();
    assert_eq!(removed, 2, "the rows of the dropped partition are counted");
    let after = partitions(&c).await;
    assert!(
        !after.contains(&p_yesterday),
        "yesterday's partition is dropped whole: {after:?}"
    );
    assert!(after.contains(&p_today), "{after:?}");
    assert_eq!(store.history_len(), 1);
    let left = store.history("m1", 0, u64::MAX, None, None, 10).unwrap();
    assert_eq!(left.results.len(), 1, "today's result stays");
}

#[tokio::test]
async fn a_database_restart_refuses_writes_until_the_store_heals() {
    let pg = start_postgres();
    let store = open(&pg).await;
    let tenant = |id: &str| v1::Tenant {
        id: id.into(),
        name: id.into(),
        ..Default::default()
    };
    store.put_tenant(&tenant("before")).unwrap();
    assert!(store.is_writable());

    pg.stop();
    let err = store
        .put_tenant(&tenant("during"))
        .expect_err("no write while the database is down");
    assert!(
        matches!(err, StoreError::Unavailable(_)),
        "a lost database is UNAVAILABLE (retry), not an internal error: {err:?}"
    );
    let state = store.state();
    assert!(!state.writable, "{state:?}");
    assert!(!state.cause.is_empty(), "{state:?}");
    // Refused at once now, without waiting for the database.
    let started = Instant::now();
    assert!(store.put_tenant(&tenant("during")).is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(store.try_reopen().is_err(), "nothing to reconnect to yet");

    pg.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.try_reopen() {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "still not healed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(store.is_writable());
    store.put_tenant(&tenant("after")).unwrap();
    let ids: Vec<String> = store
        .list_tenants()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["after", "before"], "nothing committed was lost");
}

#[tokio::test]
async fn coordinators_sharing_the_database_never_claim_one_delivery_twice() {
    let pg = start_postgres();
    let (a, b) = (open(&pg).await, open(&pg).await);
    let ids: Vec<String> = (0..120).map(|i| format!("d{i:03}")).collect();
    let records: Vec<OutboxRecord> = ids
        .iter()
        .map(|id| OutboxRecord {
            delivery: Some(v1::Delivery {
                id: id.clone(),
                channel_id: "ch".into(),
                subject_id: "i1".into(),
                kind: v1::DeliveryKind::Opened as i32,
                state: v1::DeliveryState::Pending as i32,
                created_at: Some(to_timestamp(from_unix_micros(1))),
                next_attempt_at: Some(to_timestamp(from_unix_micros(1))),
                ..Default::default()
            }),
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .collect();
    let incident = v1::Incident {
        id: "i1".into(),
        monitor_id: "m1".into(),
        ..Default::default()
    };
    a.put_incident_with_deliveries(&incident, &records).unwrap();

    // Four workers, two per coordinator, all going after every delivery at once.
    let mut workers = Vec::new();
    for (n, store) in [a.clone(), a, b.clone(), b].into_iter().enumerate() {
        let ids = ids.clone();
        workers.push(tokio::task::spawn_blocking(move || {
            let me = format!("worker-{n}");
            ids.iter()
                .filter(|id| {
                    store
                        .claim_delivery(id, &me, 60_000)
                        .expect("claim")
                        .is_some()
                })
                .cloned()
                .collect::<Vec<String>>()
        }));
    }
    let mut claimed: Vec<String> = Vec::new();
    for w in workers {
        claimed.extend(w.await.unwrap());
    }
    claimed.sort();
    assert_eq!(claimed, ids, "each delivery claimed exactly once");
}

#[tokio::test]
async fn a_former_active_coordinator_is_fenced_by_the_database() {
    let pg = start_postgres();
    let (a_pg, b_pg) = (
        PgStore::open(settings(&pg)).await.unwrap(),
        PgStore::open(settings(&pg)).await.unwrap(),
    );
    let (a, b) = (Store::new(a_pg.clone()), Store::new(b_pg.clone()));
    a_pg.join_lease("coord-a");
    b_pg.join_lease("coord-b");
    let incident = |id: &str| v1::Incident {
        id: id.into(),
        monitor_id: format!("m-{id}"),
        ..Default::default()
    };

    // Before any term, nothing decides.
    assert!(matches!(
        a.put_incident(&incident("early")),
        Err(StoreError::Fenced(_))
    ));

    let ttl = Duration::from_millis(600);
    let term_a = a_pg
        .acquire_lease("coord-a", ttl)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(term_a.epoch, 1);
    assert!(
        b_pg.acquire_lease("coord-b", ttl).await.unwrap().is_none(),
        "taken and not expired"
    );
    a.put_incident(&incident("i1"))
        .expect("the active one writes");
    assert!(
        matches!(b.put_incident(&incident("i2")), Err(StoreError::Fenced(_))),
        "a standby's deciding writes are refused"
    );

    // A pauses past its lease; B takes over with the next epoch.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let term_b = b_pg
        .acquire_lease("coord-b", ttl)
        .await
        .unwrap()
        .expect("expired");
    assert_eq!(term_b.epoch, 2);
    let holder = b_pg.lease_holder().await.unwrap().expect("held");
    assert_eq!((holder.owner.as_str(), holder.epoch), ("coord-b", 2));
    assert!(holder.expires_in_ms > 0);

    // A wakes up believing it is active: its writes, all of them in one transaction, are
    // refused, and nothing of them lands.
    let stale = a.put_incident_with_deliveries(&incident("i3"), &[]);
    assert!(matches!(stale, Err(StoreError::Fenced(_))), "{stale:?}");
    assert!(a.get_incident("i3").unwrap().is_none());
    assert!(
        !a_pg.renew_lease(&term_a, ttl).await.unwrap(),
        "its renewal is refused: it must stand down"
    );
    assert!(
        a.is_writable(),
        "fencing is no store failure: reads and undecided writes go on"
    );
    b.put_incident(&incident("i4"))
        .expect("the new active one writes");

    // A clean stop hands over at once.
    b_pg.release_lease(&term_b).await.unwrap();
    let term_a2 = a_pg
        .acquire_lease("coord-a", ttl)
        .await
        .unwrap()
        .expect("released");
    assert_eq!(term_a2.epoch, 3);
    // A restarted coordinator of the same name takes its own unexpired term back (new epoch).
    let again = a_pg
        .acquire_lease("coord-a", ttl)
        .await
        .unwrap()
        .expect("its own");
    assert_eq!(again.epoch, 4);
    assert!(matches!(
        a.put_incident(&incident("i5")).map_err(|e| e.to_string()),
        Ok(())
    ));
}

/// Runs the coordinator on `config` and returns its exit code and stderr.
fn run_coordinator(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let path = dir.join("c.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portwatch-coordinator"));
    cmd.arg("--config")
        .arg(&path)
        .env_remove("PORTWATCH_OPERATOR_TOKEN")
        .env_remove("PORTWATCH_POSTGRES_PASSWORD")
        .env_remove("PORTWATCH_STORE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_database_it_cannot_use_stops_the_coordinator_at_start_naming_the_key() {
    let pg = start_postgres();
    let dir = tempfile::tempdir().unwrap();
    let base = "listen = \"127.0.0.1:0\"\noperator_token = \"0123456789abcdefg\"\ninsecure_plaintext = true\n";
    let secret = pg.password().to_string();
    let pwfile = dir.path().join("pw");

    // Configuration errors: exit 2, the key named.
    let cases: Vec<(String, &str)> = vec![
        (format!("{base}store = \"mysql\"\n"), "config: store"),
        (
            format!("{base}store = \"postgres\"\n"),
            "config: postgres_url",
        ),
        (
            format!(
                "{base}store = \"postgres\"\npostgres_url = \"{}\"\npostgres_password_file = \"{}/missing\"\n",
                pg.url(),
                dir.path().display()
            ),
            "config: postgres_password_file",
        ),
        (
            format!("{base}data_dir = \"/tmp/x\"\npostgres_password = \"{secret}\"\n"),
            "config file",
        ),
    ];
    for (config, needle) in &cases {
        let (code, stderr) = run_coordinator(dir.path(), config, &[]);
        assert_eq!(code, 2, "{config}\n{stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
        assert!(!stderr.contains(&secret), "the password leaked: {stderr}");
    }

    // The database: unreachable, a wrong password, a newer schema. Exit 1 before anything
    // listens, the key named, the password never shown.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(&pwfile, "not-the-password\n").unwrap();
    let with = |url: String, pw: &str| {
        format!(
            "{base}store = \"postgres\"\npostgres_url = \"{url}\"\npostgres_password_file = \"{}\"\n{pw}",
            pwfile.display()
        )
    };
    let unreachable = with(
        format!("postgres://portwatch:{secret}@127.0.0.1:{closed_port}/postgres"),
        "",
    );
    let (code, stderr) = run_coordinator(dir.path(), &unreachable, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("postgres_url"), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(!stderr.contains(&secret), "the password leaked: {stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");

    let (code, stderr) = run_coordinator(dir.path(), &with(pg.url(), ""), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("postgres_url"), "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");

    // The right password (from the environment this time) against a database a newer release
    // migrated.
    let newer = format!(
        "{base}store = \"postgres\"\npostgres_url = \"{}\"\n",
        pg.url()
    );
    {
        let mut c = client(&pg).await;
        postgres::migrate(&mut c).await.unwrap();
        c.execute(
            "INSERT INTO portwatch_schema (version, name) VALUES (9999, 'from the future')",
            &[],
        )
        .await
        .unwrap();
    }
    let (code, stderr) = run_coordinator(
        dir.path(),
        &newer,
        &[("PORTWATCH_POSTGRES_PASSWORD", secret.as_str())],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("postgres_url"), "{stderr}");
    assert!(stderr.contains("newer"), "{stderr}");
    assert!(!stderr.contains(&secret), "the password leaked: {stderr}");
}

/// The hub calls the store synchronously from inside a task of its own runtime, hundreds of
/// times in a row at a start (a lookup per monitor). Each call must finish however many came
/// before it in the same task: the task's cooperative budget, spent after ~128 operations, must
/// not make the store's waits spin (found by the benchmark: a standby with 500 monitors never
/// finished starting). The calls run on a thread and runtime of their own, so that a spin fails
/// the test at the deadline instead of hanging it.
#[tokio::test]
async fn a_thousand_synchronous_calls_in_one_task_all_finish() {
    let pg = start_postgres();
    let store = open(&pg).await;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let open = rt.block_on(async move {
            let mut open = 0;
            for i in 0..1000 {
                if store.open_incident(&format!("mon-{i}")).unwrap().is_some() {
                    open += 1;
                }
            }
            open
        });
        let _ = tx.send(open);
    });
    let open = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("1000 lookups in one task finish within a minute");
    assert_eq!(open, 0);
}
