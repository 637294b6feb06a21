//! Programs and packages from outside the workspace that some tests need, set
//! up by the tests themselves, so `cargo test --workspace` passes on a fresh
//! machine with only the Rust toolchain and `python3` (and, for PostgreSQL,
//! either its server package or root with apt-get to install it).
//!
//! Each external need has one `ensure_…` function (today: [`ensure_python_grpc`],
//! a Python virtual environment with the stock gRPC client's packages; and
//! [`postgres`], a private PostgreSQL server, in `crate::postgres`). Each is
//! built on [`prepare_once`] or its lock, which guarantees:
//! - the set-up is built once per target directory and then reused, keyed by a
//!   *stamp* (the pinned versions): a different stamp builds it again;
//! - two test processes (or threads) never build it at the same time: the
//!   builder holds an exclusive `flock` on `<target>/<name>.lock`, the others
//!   wait for it (bounded) and then reuse its result;
//! - a half-built set-up is never used: it is built in `<name>.tmp-<pid>`, the
//!   stamp is written last, and only then is it renamed to `<name>`; a failed or
//!   killed build leaves nothing that looks ready;
//! - a failure says what was missing and what to do, in the panic message.
//!
//! A new need (a Debian package such as PostgreSQL, Prometheus or Chromium)
//! gets its own `ensure_…` with its own name and stamp (the package versions)
//! on the same primitive.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::postgres::{
    Postgres, ensure_server_binaries, postgres, postgres_durable, postgres_with_tls,
};

/// The file inside a prepared directory that says it is complete, and for what.
const STAMP_FILE: &str = ".portwatch-stamp";

/// The Python packages of the stock-client test (`tests/tests/stock_client.py`),
/// pinned: the versions the test was written and checked against.
pub const PYTHON_GRPC_PACKAGES: &[&str] = &[
    "grpcio==1.85.1",
    "grpcio-reflection==1.85.1",
    "protobuf==7.36.2",
];

/// How long one set-up may take (a pip install downloads ≈ 10 MB), and how long
/// another process waits for one in progress.
pub(crate) const PREPARE_LIMIT: Duration = Duration::from_secs(600);

/// Cargo's target directory of the running test: the ancestor of the test
/// executable that holds `CACHEDIR.TAG` (cargo writes it at the target root),
/// whatever the profile or `--target` triple.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    if let Some(dir) = exe
        .ancestors()
        .skip(1)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        return dir.to_path_buf();
    }
    // target/<profile>/deps/<test>
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("the test runs from target/<profile>/deps")
}

/// `<base>/<name>`, built by `build` (given an empty directory) unless it is
/// already there with the same `stamp`. See the module doc for the guarantees.
pub fn prepare_once(
    base: &Path,
    name: &str,
    stamp: &str,
    build: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let dir = base.join(name);
    if is_ready(&dir, stamp) {
        return Ok(dir);
    }
    std::fs::create_dir_all(base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    let lock_path = base.join(format!("{name}.lock"));
    let _lock = Lock::acquire(&lock_path, PREPARE_LIMIT)?;
    // Whoever held the lock before us may have built it.
    if is_ready(&dir, stamp) {
        return Ok(dir);
    }
    // Under the lock nobody else is building: anything here is stale (an older
    // stamp, or the leftovers of a build that was killed).
    let tmp_prefix = format!("{name}.tmp-");
    let stale = std::fs::read_dir(base)
        .map_err(|e| format!("reading {}: {e}", base.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&tmp_prefix))
        .map(|e| e.path())
        .chain(dir.exists().then(|| dir.clone()));
    for path in stale {
        std::fs::remove_dir_all(&path)
            .map_err(|e| format!("removing the stale {}: {e}", path.display()))?;
    }
    let tmp = base.join(format!("{tmp_prefix}{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let built = build(&tmp)
        .and_then(|()| {
            std::fs::write(tmp.join(STAMP_FILE), stamp)
                .map_err(|e| format!("writing the stamp in {}: {e}", tmp.display()))
        })
        .and_then(|()| {
            std::fs::rename(&tmp, &dir)
                .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), dir.display()))
        });
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built.map(|()| dir)
}

fn is_ready(dir: &Path, stamp: &str) -> bool {
    std::fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == stamp)
}

/// An exclusive `flock` on a file, released when dropped (or when the process
/// dies: the kernel drops it with the descriptor, so a killed test never leaves
/// a lock behind).
pub(crate) struct Lock(File);

impl Lock {
    pub(crate) fn acquire(path: &Path, limit: Duration) -> Result<Lock, String> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let deadline = Instant::now() + limit;
        loop {
            // SAFETY: flock on a descriptor we own, for as long as `file` lives.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Lock(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(format!("locking {}: {err}", path.display()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "another test process has been preparing {} for more than {}s; \
                     if none is running, delete the lock file",
                    path.display(),
                    limit.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor; closing it would unlock too.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// A Python interpreter whose environment has the stock client's packages.
#[derive(Clone, Debug)]
pub struct PythonEnv {
    /// `<target>/pyenv/bin/python3`: run scripts with it.
    pub python: PathBuf,
}

/// A virtual environment under `<target>/pyenv` with [`PYTHON_GRPC_PACKAGES`]
/// installed from the package registry (PyPI, or the index pip is configured
/// with), made once and reused. Needs `python3` with its `venv` module on
/// `PATH`; panics with what to do when it is missing or the registry cannot be
/// reached.
pub fn ensure_python_grpc() -> PythonEnv {
    let stamp = PYTHON_GRPC_PACKAGES.join("\n");
    let dir = prepare_once(&target_dir(), "pyenv", &stamp, |tmp| {
        run_bounded(
            Command::new("python3").args(["-m", "venv"]).arg(tmp),
            "python3 -m venv",
        )
        .map_err(|e| {
            format!(
                "cannot create a Python virtual environment with `python3 -m venv`: {e}\n\
                 The stock-client tests need python3 with its venv module on PATH \
                 (Debian/Ubuntu: apt-get install python3 python3-venv)."
            )
        })?;
        let python = tmp.join("bin/python3");
        let mut pip = Command::new(&python);
        pip.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--timeout",
            "30",
            "--retries",
            "2",
        ])
        .args(PYTHON_GRPC_PACKAGES);
        run_bounded(&mut pip, "pip install").map_err(|e| {
            let unreachable = [
                "NewConnectionError",
                "Temporary failure in name resolution",
                "ConnectTimeout",
                "ReadTimeout",
                "Network is unreachable",
                "No matching distribution found",
                "Could not find a version",
            ]
            .iter()
            .any(|needle| e.contains(needle));
            let why = if unreachable {
                "the package registry could not be reached (or does not have these versions)"
            } else {
                "pip failed"
            };
            format!(
                "cannot install {} into a virtual environment under target/: {why}.\n\
                 These tests need the Python package registry (PyPI, or the index in \
                 PIP_INDEX_URL / pip.conf) once; the environment is then reused.\n{e}",
                PYTHON_GRPC_PACKAGES.join(" ")
            )
        })
    })
    .unwrap_or_else(|e| panic!("setting up the Python gRPC client: {e}"));
    PythonEnv {
        python: dir.join("bin/python3"),
    }
}

/// Runs `cmd` to completion within [`PREPARE_LIMIT`]; Err carries the exit
/// status and the end of its output.
fn run_bounded(cmd: &mut Command, what: &str) -> Result<(), String> {
    run_within(cmd, what, PREPARE_LIMIT).map(drop)
}

/// Runs `cmd` to completion within `limit` (killed past it); Ok carries its
/// output (stdout then stderr), Err the exit status and the end of the output.
pub(crate) fn run_within(cmd: &mut Command, what: &str, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start it: {e}"))?;
    let mut readers = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        readers.push(std::thread::spawn(move || {
            let mut text = String::new();
            let mut stream = stream;
            let _ = stream.read_to_string(&mut text);
            text
        }));
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let output: String = readers
        .into_iter()
        .filter_map(|r| r.join().ok())
        .collect::<Vec<_>>()
        .join("");
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(format!(
            "{what} failed ({s}); its last lines:\n{}",
            tail(&output, 15)
        )),
        None => Err(format!(
            "{what} did not finish within {}s; its last lines:\n{}",
            limit.as_secs(),
            tail(&output, 15)
        )),
    }
}

pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn concurrent_callers_build_once_and_share_the_result() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("target");
        let builds = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let base = base.clone();
                let builds = builds.clone();
                std::thread::spawn(move || {
                    prepare_once(&base, "thing", "v1", |dir| {
                        builds.fetch_add(1, Ordering::SeqCst);
                        // Slow enough that the others find it in progress.
                        std::thread::sleep(Duration::from_millis(300));
                        std::fs::write(dir.join("payload"), "built").map_err(|e| e.to_string())
                    })
                })
            })
            .collect();
        for c in callers {
            let dir = c.join().expect("no panic").expect("prepared");
            assert_eq!(
                std::fs::read_to_string(dir.join("payload")).unwrap(),
                "built"
            );
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1, "built exactly once");
        // Reused later; a new stamp rebuilds.
        prepare_once(&base, "thing", "v1", |_| Err("must not build again".into())).unwrap();
        let dir = prepare_once(&base, "thing", "v2", |dir| {
            std::fs::write(dir.join("payload"), "v2").map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("payload")).unwrap(), "v2");
    }

    #[test]
    fn a_failed_build_leaves_nothing_that_looks_ready() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("target");
        let e = prepare_once(&base, "thing", "v1", |dir| {
            std::fs::write(dir.join("half"), "x").unwrap();
            Err("the registry is unreachable".into())
        })
        .unwrap_err();
        assert_eq!(e, "the registry is unreachable");
        let left: Vec<String> = std::fs::read_dir(&base)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        // The next caller tries again.
        let dir = prepare_once(&base, "thing", "v1", |_| Ok(())).unwrap();
        assert!(is_ready(&dir, "v1"));
    }
}
