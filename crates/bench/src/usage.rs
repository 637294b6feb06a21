//! What a process costs: CPU time, resident memory, disk, and the machine's load.
//!
//! CPU is read with `getrusage(RUSAGE_SELF)` (user + system, every thread of this
//! process) for the bench itself, and from `/proc/<pid>/stat` for a child such as
//! the coordinator; memory is `VmRSS` from `/proc/<pid>/status`. Both are what the
//! kernel charged, so a figure includes the kernel work a check causes.

use std::path::Path;
use std::time::Duration;

/// User + system CPU time of this whole process so far.
pub fn cpu_self() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// User + system CPU time of the calling thread so far.
pub fn cpu_thread() -> Duration {
    rusage_cpu(libc::RUSAGE_THREAD)
}

/// User + system CPU time of `who` (`RUSAGE_SELF` or `RUSAGE_THREAD`).
fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the zeroed struct we own; both `who` values are valid on Linux.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    timeval(ru.ru_utime) + timeval(ru.ru_stime)
}

fn timeval(t: libc::timeval) -> Duration {
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u32::try_from(t.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
}

/// `VmRSS` of this process, KiB.
pub fn rss_self_kib() -> Option<u64> {
    rss_from(Path::new("/proc/self/status"))
}

/// `VmRSS` of another process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    rss_from(&Path::new("/proc").join(pid.to_string()).join("status"))
}

fn rss_from(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Bytes the allocator has handed out and not had back (all arenas, mmap'd
/// blocks included): unlike RSS, unaffected by pages an earlier figure freed.
pub fn heap_bytes() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// User + system CPU time of another process (all its threads), from `/proc/<pid>/stat`.
pub fn cpu_of(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields we want follow its closing ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / hz))
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` gives them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Space a directory tree takes: (allocated bytes, apparent bytes).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: a store directory holds a handful of files.
    let mut budget = 100_000usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return (allocated, apparent);
            }
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                allocated += md.blocks() * 512;
                apparent += md.len();
            }
        }
    }
    (allocated, apparent)
}

/// Raises the soft descriptor limit to the hard one (1024 checks in flight need it).
pub fn raise_nofile() -> Option<u64> {
    portwatch_agent::daemon::raise_nofile()
}
