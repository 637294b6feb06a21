//! Giving freed memory back to the machine.
//!
//! Applying an assignment snapshot allocates and frees a lot at once: the
//! decoded message, its encoded chunks, the scheduler's rebuilt index. glibc's
//! allocator keeps freed pages of its arenas mapped, so without help the
//! agent's resident size would stay at that peak for as long as it runs (for
//! 100k assignments, several hundred MB more than the ≈ 70 MB it keeps using;
//! see BENCHMARKS.md, figure 3).

/// Returns the allocator's free pages to the kernel. Call after a large,
/// short-lived allocation peak; a no-op where the allocator is not glibc's.
pub fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists; it
        // takes no pointers from us and is safe to call from any thread.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// How often [`release_periodically`] gives free pages back.
pub const RELEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives free pages back every `every` until `stop`, on a blocking thread
/// (a trim after a burst of 100k checks takes ≈ 35 ms; later ones less).
/// Bursts — every monitor due at once after a snapshot, a backlog sent after a
/// reconnect — otherwise leave the resident size at their peak. A failed trim
/// is logged and counted (`loops`); the loop goes on.
pub async fn release_periodically(
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    crate::loops::running(crate::loops::Loop::MemoryTrim);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        // A failed trim (its blocking task died) costs memory, not the loop.
        if let Err(e) = tokio::task::spawn_blocking(release_free_pages).await {
            crate::loops::step_failed(crate::loops::Loop::MemoryTrim, &e);
        }
    }
}
