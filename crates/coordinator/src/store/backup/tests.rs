//! Backup and restore on real sled files: a round trip keeps every record, and
//! a damaged file, an occupied target or a running store change nothing.

use super::*;
use crate::store::Ingest;
use crate::store::SEAL_FILE;
use portwatch_proto::time::{from_unix_micros, to_timestamp};
use portwatch_proto::v1;

/// A store with monitors, results, an incident and a token, flushed and closed.
async fn populated(dir: &Path) {
    let store = Store::open(dir).unwrap();
    for i in 0..20 {
        store
            .put_monitor(&v1::Monitor {
                id: format!("mon-{i:02}"),
                tenant_id: "acme".into(),
                host: "db.example.com".into(),
                port: 5432,
                ..Default::default()
            })
            .unwrap();
    }
    let results: Vec<v1::CheckResult> = (0..500u64)
        .map(|i| v1::CheckResult {
            monitor_id: format!("mon-{:02}", i % 20),
            checked_at: Some(to_timestamp(from_unix_micros(1_000_000 * (i + 1)))),
            outcome: v1::Outcome::Ok as i32,
            ..Default::default()
        })
        .collect();
    let batch: Vec<Ingest> = results
        .iter()
        .enumerate()
        .map(|(i, r)| Ingest {
            seq: i as u64 + 1,
            result: r,
        })
        .collect();
    store.ingest("agent-1", "eu", &batch, 0).await.unwrap();
    store
        .put_incident(&v1::Incident {
            id: "inc-1".into(),
            monitor_id: "mon-03".into(),
            ..Default::default()
        })
        .unwrap();
    store.seal().await.unwrap();
}

/// A tree's name and its keys and values.
type Contents = BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;

/// Every key and value of every tree, as sled holds them.
fn contents(dir: &Path) -> Contents {
    let db = sled::Config::new().path(dir).open().unwrap();
    let mut out = BTreeMap::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        let kvs = tree
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            // The seal epoch moves on with every open; it is not data.
            .filter(|(k, _)| k != b"seal_epoch")
            .collect();
        out.insert(name.to_vec(), kvs);
    }
    out
}

#[tokio::test]
async fn a_restored_store_holds_every_record_of_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, file, dst) = (
        tmp.path().join("src"),
        tmp.path().join("store.backup"),
        tmp.path().join("restored"),
    );
    populated(&src).await;
    let taken = backup(&src, &file).unwrap();
    assert_eq!(taken.count("monitors"), 20);
    assert_eq!(taken.count("history"), 500);
    assert_eq!(taken.count("incidents"), 1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600,
        "secrets inside: owner only"
    );

    let restored = restore(&file, &dst).unwrap();
    assert_eq!(restored, taken);
    assert!(dst.join(SEAL_FILE).is_file(), "opened and sealed once");
    let (a, b) = (contents(&src), contents(&dst));
    assert_eq!(a, b, "every tree, key and value");

    let store = Store::open(&dst).unwrap();
    assert_eq!(store.acked_seq("agent-1").unwrap(), 500);
    assert_eq!(store.open_incident("mon-03").unwrap().unwrap().id, "inc-1");
    assert_eq!(store.tenant_monitor_count("acme").unwrap(), 20);
}

#[tokio::test]
async fn a_damaged_backup_or_an_occupied_target_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, file) = (tmp.path().join("src"), tmp.path().join("store.backup"));
    populated(&src).await;
    backup(&src, &file).unwrap();
    let good = std::fs::read(&file).unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped byte", {
            let mut b = good.clone();
            let i = b.len() / 2;
            b[i] ^= 0x40;
            b
        }),
        ("truncated", good[..good.len() * 2 / 3].to_vec()),
        ("without its checksum", good[..good.len() - 33].to_vec()),
        ("bytes after the checksum", [good.as_slice(), b"x"].concat()),
        ("another file", b"hello\n".to_vec()),
    ];
    for (what, bytes) in cases {
        let bad = tmp.path().join("bad.backup");
        std::fs::write(&bad, bytes).unwrap();
        let target = tmp.path().join("target");
        let e = restore(&bad, &target).unwrap_err();
        assert!(matches!(e, BackupError::NotABackup { .. }), "{what}: {e}");
        assert!(
            e.to_string().contains("bad.backup"),
            "{what}: names the file: {e}"
        );
        assert!(!target.exists(), "{what}: nothing written");
    }

    // A directory that holds anything is never written into.
    let occupied = tmp.path().join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("note"), "keep").unwrap();
    let e = restore(&file, &occupied).unwrap_err();
    assert!(matches!(e, BackupError::TargetNotEmpty { .. }), "{e}");
    assert_eq!(std::fs::read_dir(&occupied).unwrap().count(), 1);

    // An existing output file is never overwritten.
    let e = backup(&src, &file).unwrap_err();
    assert!(matches!(e, BackupError::OutputExists { .. }), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), good);
}

#[tokio::test]
async fn a_store_in_use_is_not_backed_up() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    populated(&src).await;
    let running = Store::open(&src).unwrap();
    let out = tmp.path().join("store.backup");
    let e = backup(&src, &out).unwrap_err();
    assert!(matches!(e, BackupError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("stop the coordinator"), "{e}");
    assert!(!out.exists() && !out.with_extension("partial").exists());
    drop(running);
}
