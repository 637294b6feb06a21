//! The background loops' supervision: a failing or panicking step does not
//! end its loop, a panicking loop is started again, a silent one is stalled.

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

#[tokio::test]
async fn a_failing_or_panicking_step_does_not_end_the_loop() {
    let failed: Option<()> = step("t", "fails", async { Err::<(), _>("disk on fire") }).await;
    assert!(failed.is_none());
    let panicked: Option<u32> = infallible_step("t", "panics", async {
        let v: Vec<u32> = Vec::new();
        v[3]
    })
    .await;
    assert!(panicked.is_none());
    assert_eq!(
        step("t", "works", async { Ok::<_, String>(7) }).await,
        Some(7)
    );
}

#[tokio::test]
async fn a_loop_that_panics_is_started_again_and_its_stall_is_seen() {
    let loops = Loops::default();
    let runs = Arc::new(AtomicU32::new(0));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (loops, runs, shutdown) = (loops.clone(), runs.clone(), shutdown.clone());
        supervise(
            loops,
            "flaky",
            Duration::from_millis(10),
            shutdown,
            move |beat| {
                let runs = runs.clone();
                async move {
                    beat.tick();
                    if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("a bug");
                    }
                    // Third run: healthy, ticking until the test ends.
                    loop {
                        beat.tick();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            },
        )
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while runs.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3, "restarted after each panic");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(loops.stalled().is_empty(), "running and ticking");
    shutdown.cancel();
    task.abort();
    let _ = task.await;
    assert_eq!(
        loops.stalled(),
        ["flaky"],
        "a loop that is gone is reported"
    );
}

#[test]
fn a_loop_without_rounds_for_too_long_is_stalled() {
    let loops = Loops::default();
    let beat = loops.start("slow", Duration::ZERO);
    assert!(loops.stalled().is_empty());
    loops.with(|m| {
        if let Some(s) = m.get_mut("slow") {
            s.last_round = Instant::now() - STALL_SLACK - Duration::from_secs(1);
        }
    });
    assert_eq!(loops.stalled(), ["slow"]);
    beat.tick();
    assert!(loops.stalled().is_empty());
}
