//! The handle on real sled files: damaged files are refused with an error
//! (never a panic out of `Store::open`), and the seal notices a store that
//! lost what it had made durable.

use super::*;
use crate::store::{Ingest, SEAL_FILE, Store};
use portwatch_proto::time::{from_unix_micros, to_timestamp};

/// A sealed store of several sled segments: 40 monitors, 20,000 results.
async fn sealed_store(dir: &Path) {
    let store = Store::open(dir).unwrap();
    for i in 0..40 {
        store
            .put_monitor(&v1::Monitor {
                id: format!("mon-{i:03}"),
                tenant_id: "acme".into(),
                host: "db.example.com".into(),
                port: 5432,
                ..Default::default()
            })
            .unwrap();
    }
    let mut seq = 0;
    for round in 0..50u64 {
        let rs: Vec<v1::CheckResult> = (0..400u64)
            .map(|i| v1::CheckResult {
                monitor_id: format!("mon-{:03}", i % 40),
                checked_at: Some(to_timestamp(from_unix_micros(
                    1_000_000 * (round * 400 + i + 1),
                ))),
                outcome: v1::Outcome::Ok as i32,
                detail: "Connected to 203.0.113.10:5432".into(),
                ..Default::default()
            })
            .collect();
        let batch: Vec<Ingest> = rs
            .iter()
            .map(|r| {
                seq += 1;
                Ingest { seq, result: r }
            })
            .collect();
        store.ingest("agent-1", "eu", &batch, 0).await.unwrap();
    }
    store.seal().await.unwrap();
    drop(store);
    wait_until_released(&dir.join("db"));
}

/// Waits (at most 20 s) until no sled instance holds `db` any more: sled's
/// background threads outlive the dropped handle and may still write, and a
/// copy taken meanwhile would not be the sealed store.
fn wait_until_released(db: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(db).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory involved.
        let locked = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            // SAFETY: as above.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sled still holds {} after 20 s",
            db.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `sealed_store` holds: (monitors, history rows).
const SEALED: (usize, u64) = (40, 20_000);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        } else {
            copy_dir(&e.path(), &to.join(e.file_name()));
        }
    }
}

/// Opens the (damaged) copy as a starting coordinator does (open, then read
/// every history row back): `Ok` with what it holds (monitors, history rows)
/// when all of that worked, the first error otherwise. A panic escaping
/// `Store::open` fails the test.
async fn open_copy(dir: &Path) -> std::result::Result<(usize, u64), StoreError> {
    let s = Store::open(dir)?;
    let monitors = s.list_monitors()?.len();
    let rows = s.verify_history().await?;
    Ok((monitors, rows))
}

#[tokio::test]
async fn damaged_files_are_refused_with_an_error_and_never_panic_out() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    sealed_store(&pristine).await;
    let len = std::fs::metadata(pristine.join("db")).unwrap().len();
    assert!(len > 2 * 1024 * 1024, "several segments: {len} bytes");

    let mut refused = 0;
    let flips = [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9];
    for (n, frac) in flips.iter().enumerate() {
        let dir = tmp.path().join(format!("flip-{n}"));
        copy_dir(&pristine, &dir);
        let mut bytes = std::fs::read(dir.join("db")).unwrap();
        let at = ((len as f64) * frac) as usize;
        for b in &mut bytes[at..(at + 16).min(len as usize)] {
            *b ^= 0xa5;
        }
        std::fs::write(dir.join("db"), bytes).unwrap();
        match open_copy(&dir).await {
            Ok(_) => {}
            Err(e) => {
                assert!(e.is_damage(), "flip at {frac}: {e}");
                refused += 1;
            }
        }
    }
    // sled reads some of these as a torn end (the seal sees the loss), and
    // panics on others while recovering (caught): both are refusals.
    assert!(refused >= 2, "only {refused} of the flips were noticed");
    let mut truncations_refused = 0;
    for frac in [0.0, 0.3, 0.6, 0.95] {
        let dir = tmp.path().join(format!("truncate-{frac}"));
        copy_dir(&pristine, &dir);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("db"))
            .unwrap();
        f.set_len(((len as f64) * frac) as u64).unwrap();
        drop(f);
        // Refused, or (when the cut took only segments sled no longer
        // uses) whole: a truncated store never opens having lost anything.
        match open_copy(&dir).await {
            Err(e) => {
                assert!(e.is_damage(), "truncated to {frac}: {e}");
                truncations_refused += 1;
            }
            Ok(held) => assert_eq!(held, SEALED, "truncated to {frac}: opened, so whole"),
        }
    }
    assert!(
        truncations_refused >= 2,
        "only {truncations_refused} of the truncations were noticed"
    );
}

#[tokio::test]
async fn the_seal_refuses_a_store_that_lost_durable_writes_and_follows_clean_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    sealed_store(&dir).await;
    let sealed = seal::sidecar_epoch(&dir).unwrap().unwrap();
    // Each open and each clean stop moves the epoch on.
    {
        let store = Store::open(&dir).unwrap();
        assert_eq!(seal::sidecar_epoch(&dir).unwrap(), Some(sealed + 1));
        store.seal().await.unwrap();
        assert_eq!(seal::sidecar_epoch(&dir).unwrap(), Some(sealed + 2));
    }
    // The store's files replaced by older ones (or by nothing): refused.
    let older = tmp.path().join("older");
    sealed_store(&older).await;
    std::fs::copy(dir.join(SEAL_FILE), older.join(SEAL_FILE)).unwrap();
    let e = Store::open(&older).unwrap_err();
    assert!(matches!(e, StoreError::Damaged(_)), "{e}");
    assert!(e.to_string().contains(SEAL_FILE), "{e}");

    let emptied = tmp.path().join("emptied");
    std::fs::create_dir_all(&emptied).unwrap();
    std::fs::copy(dir.join(SEAL_FILE), emptied.join(SEAL_FILE)).unwrap();
    let e = Store::open(&emptied).unwrap_err();
    assert!(
        matches!(e, StoreError::Damaged(_)),
        "an empty store with a seal: {e}"
    );

    // A seal file that is not one is damage too, not silence.
    std::fs::write(dir.join(SEAL_FILE), "garbage").unwrap();
    let e = Store::open(&dir).unwrap_err();
    assert!(e.is_damage(), "{e}");
}
