use super::*;

fn result(i: usize) -> v1::CheckResult {
    v1::CheckResult {
        monitor_id: format!("mon-{i}"),
        ..Default::default()
    }
}

type Channel = (
    mpsc::Sender<v1::CheckResult>,
    mpsc::Receiver<v1::CheckResult>,
);

/// A spool in a temp dir and a result channel for its writer.
fn spool_and_channel() -> (tempfile::TempDir, Spool, Channel) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 10_000).unwrap();
    (dir, spool, mpsc::channel(4_096))
}

/// The writer under test, in batches of 500.
fn spawn_writer(
    rx: mpsc::Receiver<v1::CheckResult>,
    spool: &Spool,
    batch_wait: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(spool_writer(
        rx,
        spool.clone(),
        Arc::new(Notify::new()),
        500,
        batch_wait,
    ))
}

/// Drops the sender and waits (bounded) for the writer to finish.
async fn finish(tx: mpsc::Sender<v1::CheckResult>, task: tokio::task::JoinHandle<()>) {
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// Spooled count, polled until `n` or `limit` (bounded).
async fn spooled_within(spool: &Spool, n: u64, limit: Duration) -> u64 {
    let until = Instant::now() + limit;
    while spool.depth() < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    spool.depth()
}

#[tokio::test]
async fn full_batches_are_written_without_waiting_out_the_batch_wait() {
    let (_dir, spool, (tx, rx)) = spool_and_channel();
    // A burst of exactly three full batches, queued before the writer runs.
    for i in 0..1_500 {
        tx.send(result(i)).await.unwrap();
    }
    let task = spawn_writer(rx, &spool, Duration::from_secs(60));
    // Were the writer to wait out its minute per batch, none would be spooled yet.
    assert_eq!(
        spooled_within(&spool, 1_500, Duration::from_secs(10)).await,
        1_500
    );
    finish(tx, task).await;
}

#[tokio::test]
async fn a_partial_batch_is_written_after_the_batch_wait_and_at_shutdown() {
    let (_dir, spool, (tx, rx)) = spool_and_channel();
    let task = spawn_writer(rx, &spool, Duration::from_millis(100));
    for i in 0..3 {
        tx.send(result(i)).await.unwrap();
    }
    assert_eq!(spooled_within(&spool, 3, Duration::from_secs(10)).await, 3);
    // The last results are written when the senders are gone.
    tx.send(result(3)).await.unwrap();
    finish(tx, task).await;
    assert_eq!(spool.depth(), 4);
    // All of it durable, so all of it may be sent.
    assert_eq!(spool.pending(0, 10).unwrap().len(), 4);
}

fn writer_for(spool: &Spool) -> Writer {
    Writer::new(
        spool.clone(),
        Arc::new(Notify::new()),
        500,
        Duration::from_millis(10),
    )
}

#[tokio::test]
async fn while_failing_the_newest_results_are_held_up_to_spool_max_and_the_rest_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 100).unwrap();
    let mut w = writer_for(&spool);
    assert_eq!(w.hold_max, 100, "bounded by spool_max");
    for i in 0..130 {
        w.held.push_back(result(i));
        w.trim_held();
    }
    assert_eq!(w.held.len(), 100);
    assert_eq!(
        w.held.front().unwrap().monitor_id,
        "mon-30",
        "the oldest go"
    );
    assert_eq!(spool.unstored_total(), 30);
    // Stopping while the spool still fails: what is held is counted too.
    w.give_up();
    assert!(w.held.is_empty());
    assert_eq!(spool.unstored_total(), 130);
}

#[tokio::test]
async fn held_results_that_reached_the_disk_before_the_failure_are_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1_000).unwrap();
    // Stored and known durable before the failure.
    spool.append(&[result(0)]).unwrap();
    spool.flush().await.unwrap();
    let since = spool.durable_seq();
    // Appended as the failure began, and on disk after all (the writer
    // could not know: its flush failed).
    spool.append(&[result(1), result(2)]).unwrap();
    spool.flush().await.unwrap();
    let mut w = writer_for(&spool);
    w.held.extend([result(1), result(2), result(3)]);
    w.forget_stored(since).unwrap();
    let left: Vec<&str> = w.held.iter().map(|r| r.monitor_id.as_str()).collect();
    assert_eq!(left, vec!["mon-3"]);
}
