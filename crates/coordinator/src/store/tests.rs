//! The store on a temporary directory: ingestion and its dedup, history
//! paging and pruning, incidents written with their deliveries, the tenant
//! index and its migration, and that all of it survives a reopen. Each test of
//! the contract runs on both backends (`on_sled::…`, `on_postgres::…`, a
//! private PostgreSQL server per test); the sled file-format tests at the end
//! run on sled.

use super::*;
use portwatch_proto::time::{from_unix_micros, to_timestamp};

/// Where a test's store lives.
enum Place {
    Sled(tempfile::TempDir),
    Postgres(portwatch_e2e::external::Postgres),
}

impl Place {
    fn sled() -> Place {
        Place::Sled(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Place {
        Place::Postgres(portwatch_e2e::external::postgres())
    }

    /// Opens the store there (again: a reopen sees what was written).
    async fn open(&self) -> Store {
        match self {
            Place::Sled(dir) => Store::open(dir.path()).unwrap(),
            Place::Postgres(pg) => Store::new(
                postgres::PgStore::open(postgres::PgSettings {
                    url: pg.url(),
                    ca_file: None,
                    password: Some(pg.password().to_string()),
                    pool_size: 4,
                })
                .await
                .unwrap(),
            ),
        }
    }
}

/// Runs each named test once on sled and once on PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Place::sled()).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Place::postgres()).await
                }
            )*
        }
    };
}

on_both_backends!(
    ingest_dedups_replays_and_keeps_latest_moving_forward,
    history_pages_by_time_and_region_and_prunes,
    state_survives_reopen,
    an_incident_and_its_deliveries_are_written_together_and_survive_reopen,
    the_tenant_index_counts_and_lists_each_tenant_apart,
    a_batch_of_monitors_counts_each_once,
    a_monitor_moved_to_another_tenant_leaves_the_first_ones_index,
    one_outbox_worker_at_a_time_holds_a_due_delivery,
);

fn result(monitor: &str, at_us: u64, outcome: v1::Outcome) -> v1::CheckResult {
    v1::CheckResult {
        monitor_id: monitor.into(),
        region: "ignored".into(),
        checked_at: Some(to_timestamp(from_unix_micros(at_us))),
        outcome: outcome as i32,
        ..Default::default()
    }
}

async fn ingest_dedups_replays_and_keeps_latest_moving_forward(place: Place) {
    let store = place.open().await;
    let (a, b, c) = (
        result("m1", 2_000_000, v1::Outcome::Ok),
        result("m1", 3_000_000, v1::Outcome::Refused),
        result("m1", 1_000_000, v1::Outcome::Ok),
    );
    let batch = [Ingest { seq: 1, result: &a }, Ingest { seq: 2, result: &b }];
    let out = store.ingest("agent-1", "eu", &batch, 0).await.unwrap();
    assert_eq!((out.stored, out.duplicates, out.acked_seq), (2, 0, 2));

    // A replay of the same batch stores nothing twice.
    let out = store.ingest("agent-1", "eu", &batch, 0).await.unwrap();
    assert_eq!((out.stored, out.duplicates), (0, 2));
    assert_eq!(store.history_len(), 2);

    // An old result (replayed late) goes to history but not to latest.
    let out = store
        .ingest("agent-1", "eu", &[Ingest { seq: 3, result: &c }], 0)
        .await
        .unwrap();
    assert_eq!(out.stored, 1);
    assert!(out.became_latest.is_empty());
    let latest = store.latest_for("m1").unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].outcome, v1::Outcome::Refused as i32);
    assert_eq!(
        latest[0].region, "eu",
        "the region comes from the caller, not the result"
    );
    assert_eq!(store.acked_seq("agent-1").unwrap(), 3);
}

async fn history_pages_by_time_and_region_and_prunes(place: Place) {
    let store = place.open().await;
    let rs: Vec<_> = (0..10u64)
        .map(|i| result("m1", (i + 1) * 1_000_000, v1::Outcome::Ok))
        .collect();
    let batch: Vec<_> = rs
        .iter()
        .enumerate()
        .map(|(i, r)| Ingest {
            seq: i as u64 + 1,
            result: r,
        })
        .collect();
    store.ingest("a", "eu", &batch[..5], 0).await.unwrap();
    store.ingest("b", "us", &batch[5..], 0).await.unwrap();

    let page = store.history("m1", 0, u64::MAX, None, None, 4).unwrap();
    assert_eq!(page.results.len(), 4);
    let next = page.next.clone().expect("more pages");
    let page2 = store
        .history("m1", 0, u64::MAX, None, Some(&next), 4)
        .unwrap();
    assert_eq!(checked_at_us(&page2.results[0]), 5_000_000);
    let page3 = store
        .history("m1", 0, u64::MAX, None, page2.next.as_deref(), 4)
        .unwrap();
    assert_eq!(page3.results.len(), 2);
    assert!(page3.next.is_none());

    let window = store
        .history("m1", 3_000_000, 6_000_000, None, None, 100)
        .unwrap();
    assert_eq!(window.results.len(), 3, "since inclusive, until exclusive");
    let us = store
        .history("m1", 0, u64::MAX, Some("us"), None, 100)
        .unwrap();
    assert_eq!(us.results.len(), 5);

    assert_eq!(store.prune_history(4_000_000).unwrap(), 3);
    assert_eq!(store.history_len(), 7);
}

async fn state_survives_reopen(place: Place) {
    {
        let store = place.open().await;
        store
            .put_monitor(&v1::Monitor {
                id: "m1".into(),
                port: 22,
                ..Default::default()
            })
            .unwrap();
        let open = v1::Incident {
            id: "i1".into(),
            monitor_id: "m1".into(),
            ..Default::default()
        };
        store.put_incident(&open).unwrap();
        let r = result("m1", 1, v1::Outcome::Ok);
        store
            .ingest("a", "eu", &[Ingest { seq: 7, result: &r }], 0)
            .await
            .unwrap();
    }
    let store = place.open().await;
    assert_eq!(store.get_monitor("m1").unwrap().map(|m| m.port), Some(22));
    assert_eq!(
        store.open_incident("m1").unwrap().map(|i| i.id),
        Some("i1".into())
    );
    assert_eq!(store.acked_seq("a").unwrap(), 7);

    let mut closed = store.get_incident("i1").unwrap().unwrap();
    closed.closed_at = Some(to_timestamp(from_unix_micros(5)));
    store.put_incident(&closed).unwrap();
    assert!(store.open_incident("m1").unwrap().is_none());
}

fn delivery(id: &str, state: v1::DeliveryState, next_us: u64) -> OutboxRecord {
    OutboxRecord {
        delivery: Some(v1::Delivery {
            id: id.into(),
            channel_id: "ch-1".into(),
            subject_id: "i1".into(),
            kind: v1::DeliveryKind::Opened as i32,
            state: state as i32,
            created_at: Some(to_timestamp(from_unix_micros(1))),
            next_attempt_at: Some(to_timestamp(from_unix_micros(next_us))),
            ..Default::default()
        }),
        tenant_id: "acme".into(),
        incident: None,
        outage: None,
        flap: None,
    }
}

async fn an_incident_and_its_deliveries_are_written_together_and_survive_reopen(place: Place) {
    {
        let store = place.open().await;
        let open = v1::Incident {
            id: "i1".into(),
            monitor_id: "m1".into(),
            ..Default::default()
        };
        let ds = [
            delivery("d1", v1::DeliveryState::Pending, 10),
            delivery("d2", v1::DeliveryState::Pending, 20),
        ];
        store.put_incident_with_deliveries(&open, &ds).unwrap();
        store.flush().await.unwrap();
        // A corrupt record aborts the whole transaction: no incident without its deliveries.
        let other = v1::Incident {
            id: "i2".into(),
            monitor_id: "m2".into(),
            ..Default::default()
        };
        let broken = OutboxRecord::default();
        assert!(
            store
                .put_incident_with_deliveries(&other, &[broken])
                .is_err()
        );
        assert!(store.get_incident("i2").unwrap().is_none());
    }
    let store = place.open().await;
    assert!(store.open_incident("m1").unwrap().is_some());
    assert_eq!(
        store.pending_deliveries().unwrap(),
        [("d1".to_string(), 10), ("d2".to_string(), 20)]
    );
    // Delivered leaves the pending index; a retry moves its time.
    store
        .put_delivery(&delivery("d1", v1::DeliveryState::Delivered, 0))
        .unwrap();
    store
        .put_delivery(&delivery("d2", v1::DeliveryState::Pending, 99))
        .unwrap();
    assert_eq!(
        store.pending_deliveries().unwrap(),
        [("d2".to_string(), 99)]
    );
    assert_eq!(
        store
            .delivery_channels("i1", v1::DeliveryKind::Opened)
            .unwrap(),
        ["ch-1"]
    );
    assert_eq!(
        store.list_deliveries().unwrap()[0].id(),
        "d2",
        "newest first"
    );
    assert_eq!(
        store.prune_deliveries(u64::MAX).unwrap(),
        1,
        "only the finished one"
    );
    assert!(store.get_delivery("d1").unwrap().is_none());
    assert!(store.get_delivery("d2").unwrap().is_some());
}

async fn one_outbox_worker_at_a_time_holds_a_due_delivery(place: Place) {
    let store = place.open().await;
    let now_us = portwatch_proto::time::unix_micros(std::time::SystemTime::now());
    let later = now_us + 3_600_000_000;
    let open = v1::Incident {
        id: "i1".into(),
        monitor_id: "m1".into(),
        ..Default::default()
    };
    let ds = [
        delivery("d1", v1::DeliveryState::Pending, 1),
        delivery("d2", v1::DeliveryState::Pending, later),
        delivery("d3", v1::DeliveryState::Delivered, 1),
        delivery("d4", v1::DeliveryState::Pending, 1),
    ];
    store.put_incident_with_deliveries(&open, &ds).unwrap();
    let claim = |id: &str, worker: &str, ms: u64| {
        store
            .claim_delivery(id, worker, ms)
            .unwrap()
            .map(|r| r.id().to_string())
    };

    assert_eq!(claim("d1", "w1", 60_000).as_deref(), Some("d1"));
    assert_eq!(claim("d1", "w2", 60_000), None, "held by w1");
    assert_eq!(
        claim("d1", "w1", 60_000).as_deref(),
        Some("d1"),
        "its holder may renew it"
    );
    assert_eq!(claim("d2", "w1", 60_000), None, "not due yet");
    assert_eq!(claim("d3", "w1", 60_000), None, "already delivered");
    assert_eq!(claim("nope", "w1", 60_000), None);

    // Recording the attempt lets go of the claim: due again, anyone may take it.
    store
        .put_delivery(&delivery("d1", v1::DeliveryState::Pending, 2))
        .unwrap();
    assert_eq!(claim("d1", "w2", 60_000).as_deref(), Some("d1"));

    // A claim whose holder vanished runs out.
    assert_eq!(claim("d4", "w1", 100).as_deref(), Some("d4"));
    assert_eq!(claim("d4", "w2", 100), None);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(claim("d4", "w2", 60_000).as_deref(), Some("d4"));
}

fn monitor(tenant: &str, id: &str) -> v1::Monitor {
    v1::Monitor {
        id: id.into(),
        tenant_id: tenant.into(),
        host: format!("{id}.example.com"),
        port: 443,
        ..Default::default()
    }
}

fn ids(ms: &[v1::Monitor]) -> Vec<&str> {
    ms.iter().map(|m| m.id.as_str()).collect()
}

async fn the_tenant_index_counts_and_lists_each_tenant_apart(place: Place) {
    {
        let store = place.open().await;
        // Written out of order, interleaved with another tenant's.
        for id in ["m3", "m1", "m5", "m2", "m4"] {
            store.put_monitor(&monitor("acme", id)).unwrap();
            store
                .put_monitor(&monitor("other", &format!("o-{id}")))
                .unwrap();
        }
        assert_eq!(store.tenant_monitor_count("acme").unwrap(), 5);
        assert_eq!(store.tenant_monitor_count("nobody").unwrap(), 0);

        // An update is not a second monitor.
        let mut m = monitor("acme", "m2");
        m.port = 22;
        store.put_monitor(&m).unwrap();
        assert_eq!(store.tenant_monitor_count("acme").unwrap(), 5);
        let all = store.tenant_monitors("acme", "", 100).unwrap();
        assert_eq!(ids(&all), ["m1", "m2", "m3", "m4", "m5"], "sorted by id");
        assert_eq!(all[1].port, 22, "the listing reads the monitor as stored");

        // Pages: strictly after the token, at most `limit`.
        assert_eq!(
            ids(&store.tenant_monitors("acme", "", 2).unwrap()),
            ["m1", "m2"]
        );
        assert_eq!(
            ids(&store.tenant_monitors("acme", "m2", 2).unwrap()),
            ["m3", "m4"]
        );
        assert_eq!(
            ids(&store.tenant_monitors("acme", "m4", 2).unwrap()),
            ["m5"]
        );
        assert!(store.tenant_monitors("acme", "m5", 2).unwrap().is_empty());
        // A token between ids (a deleted monitor's) still resumes in order.
        assert_eq!(
            ids(&store.tenant_monitors("acme", "m2a", 9).unwrap()),
            ["m3", "m4", "m5"]
        );

        assert!(store.delete_monitor("m3").unwrap());
        assert!(!store.delete_monitor("m3").unwrap(), "already gone");
        assert!(!store.delete_monitor("never").unwrap());
        assert_eq!(store.tenant_monitor_count("acme").unwrap(), 4);
        assert_eq!(
            ids(&store.tenant_monitors("acme", "", 100).unwrap()),
            ["m1", "m2", "m4", "m5"]
        );
        store.flush().await.unwrap();
    }
    // Durable, and not rebuilt (the marker is set) but still exact.
    let store = place.open().await;
    assert_eq!(store.tenant_monitor_count("acme").unwrap(), 4);
    assert_eq!(store.tenant_monitor_count("other").unwrap(), 5);
    for id in ["m1", "m2", "m4", "m5"] {
        store.delete_monitor(id).unwrap();
    }
    assert_eq!(store.tenant_monitor_count("acme").unwrap(), 0);
    assert!(store.tenant_monitors("acme", "", 100).unwrap().is_empty());
    let counts = store.tenant_monitor_counts().unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [("other".to_string(), 5)],
        "a tenant with no monitors has no count left behind"
    );
    assert_eq!(store.tenant_monitors("other", "", 100).unwrap().len(), 5);
}

async fn a_batch_of_monitors_counts_each_once(place: Place) {
    let store = place.open().await;
    let mut batch: Vec<v1::Monitor> = (0..50)
        .map(|i| monitor("acme", &format!("m{i:02}")))
        .collect();
    // The same monitor twice in one batch is one monitor.
    batch.push(monitor("acme", "m07"));
    batch.push(monitor("zeta", "z1"));
    store.put_monitors(&batch).unwrap();
    assert_eq!(store.tenant_monitor_count("acme").unwrap(), 50);
    assert_eq!(store.tenant_monitor_count("zeta").unwrap(), 1);
    assert_eq!(store.tenant_monitors("acme", "m47", 10).unwrap().len(), 2);
}

async fn a_monitor_moved_to_another_tenant_leaves_the_first_ones_index(place: Place) {
    let store = place.open().await;
    store.put_monitor(&monitor("a", "m1")).unwrap();
    store.put_monitor(&monitor("a", "m2")).unwrap();
    store.put_monitor(&monitor("b", "m1")).unwrap();
    assert_eq!(store.tenant_monitor_count("a").unwrap(), 1);
    assert_eq!(store.tenant_monitor_count("b").unwrap(), 1);
    assert_eq!(ids(&store.tenant_monitors("a", "", 10).unwrap()), ["m2"]);
    assert_eq!(ids(&store.tenant_monitors("b", "", 10).unwrap()), ["m1"]);
}

/// Writes monitors the way the coordinator did before the per-tenant index:
/// straight into the `monitors` tree, nothing else.
fn write_old_store(dir: &Path, monitors: &[v1::Monitor]) {
    let db = sled::Config::new().path(dir).open().unwrap();
    let tree = db.open_tree("monitors").unwrap();
    for m in monitors {
        tree.insert(m.id.as_bytes(), m.encode_to_vec()).unwrap();
    }
    db.flush().unwrap();
}

#[tokio::test]
async fn a_store_written_before_the_index_gets_it_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut old: Vec<v1::Monitor> = (0..30)
        .map(|i| monitor("big", &format!("mon-{i:03}")))
        .collect();
    old.push(monitor("small", "mon-z"));
    old.push(monitor("small", "mon-a"));
    write_old_store(dir.path(), &old);

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.tenant_monitor_count("big").unwrap(), 30);
    assert_eq!(store.tenant_monitor_count("small").unwrap(), 2);
    assert_eq!(
        ids(&store.tenant_monitors("small", "", 10).unwrap()),
        ["mon-a", "mon-z"]
    );
    let page = store.tenant_monitors("big", "mon-009", 3).unwrap();
    assert_eq!(ids(&page), ["mon-010", "mon-011", "mon-012"]);
    // The migrated index is kept exact by what follows.
    store.put_monitor(&monitor("small", "mon-m")).unwrap();
    store.delete_monitor("mon-000").unwrap();
    assert_eq!(store.tenant_monitor_count("small").unwrap(), 3);
    assert_eq!(store.tenant_monitor_count("big").unwrap(), 29);
    store.flush().await.unwrap();
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.tenant_monitor_count("small").unwrap(), 3);
    assert_eq!(store.tenant_monitor_count("big").unwrap(), 29);
}

#[tokio::test]
async fn an_interrupted_migration_is_redone_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    write_old_store(dir.path(), &[monitor("acme", "m1"), monitor("acme", "m2")]);
    {
        // A crash half-way: some index entries and a wrong count, no marker.
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree("tenant_monitors")
            .unwrap()
            .insert(key2("ghost", "m9"), &[])
            .unwrap();
        db.open_tree("tenant_monitor_counts")
            .unwrap()
            .insert("acme", &7u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.tenant_monitor_count("acme").unwrap(), 2);
    assert_eq!(store.tenant_monitor_count("ghost").unwrap(), 0);
    assert!(store.tenant_monitors("ghost", "", 10).unwrap().is_empty());
    assert_eq!(
        ids(&store.tenant_monitors("acme", "", 10).unwrap()),
        ["m1", "m2"]
    );
}
